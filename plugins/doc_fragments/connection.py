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
