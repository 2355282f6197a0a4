# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The libvirt connection, shared by every module.
    DOCUMENTATION = r"""
options:
  uri:
    description:
      - libvirt connection URI of the compute host.
      - Every effect goes through the libvirt API, so the module works the same on the host itself
        (C(qemu:///system)) and from a controller or an AWX execution environment with a remote URI such as
        C(qemu+ssh://root@host/system) or C(qemu+tls://host/system). Nothing is copied to the host over SSH and no
        command is run there.
    type: str
    default: qemu:///system
  connect_timeout:
    description:
      - Seconds the connection to O(uri) may take to open. After that the module fails with the URI and the time
        waited, whatever the transport is doing (an SSH port that accepts the connection and never answers, a TLS
        handshake that stalls, a daemon that does not respond).
      - For C(qemu+ssh://) URIs ssh is also given C(-o ConnectTimeout) (this value plus 5 seconds), so the ssh
        process stops by itself too. libvirt has no URI parameter for ssh options; its C(command) parameter names
        the program it runs instead of ssh, and the module points it, while the connection opens, at a small
        wrapper in a private temporary directory that runs the real ssh (or the C(command) the URI gave) with
        that option.
      - Only the opening is bounded; operations with a duration of their own have their own timeouts
        (O(ignore:wait_timeout), O(ignore:shutdown_timeout)).
    type: int
    default: 30
  allow_insecure_tcp:
    description:
      - Accept a C(qemu+tcp://) URI. libvirt's plain TCP transport has no encryption and, unless the daemon is set
        up with SASL, no authentication, so anyone who can reach the port controls the host; such URIs are refused
        by default. Use C(qemu+tls://) or C(qemu+ssh://), or set this on a network you trust.
    type: bool
    default: false
requirements:
  - libvirt-python (the C(libvirt) Python bindings) where the module runs
"""

    # Waiting for long operations.
    WAIT = r"""
options:
  wait:
    description:
      - Wait until the operation has finished and the server has reached the state asked for (running, with an
        IP address on every NIC attached to a libvirt network).
      - With C(false) the module returns as soon as libvirt has accepted the request; poll with
        M(virtfleet.compute.server_info) and C(until:) to show progress in the playbook output.
      - Never waits in check mode.
    type: bool
    default: true
  wait_timeout:
    description:
      - Seconds to wait before failing. Under software emulation (TCG) a Linux guest needs 20 to 40 seconds to get
        an address, under KVM a few seconds.
    type: int
    default: 600
"""
