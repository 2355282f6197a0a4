#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: network_info
short_description: Read libvirt networks, their DHCP reservations, leases and users
version_added: 0.1.0
description:
  - Lists the libvirt networks of a host (or the one named) with their declared fields in the shape
    M(virtfleet.compute.network) takes, the domains with an interface on each, and the current DHCP leases.
  - Never fails because a network is missing; the list is empty instead.
author:
  - virtfleet.compute developers (@virtfleet)
extends_documentation_fragment:
  - virtfleet.compute.connection
attributes:
  check_mode:
    support: full
    description: Reads only; the same in check mode.
  diff_mode:
    support: none
    description: Reads or checks only; there is nothing to diff.
  idempotent:
    support: full
    description: Never changes anything.
options:
  name:
    description: Only this network. All networks when omitted.
    type: str
seealso:
  - module: virtfleet.compute.network
"""

EXAMPLES = r"""
- name: Read one network
  virtfleet.compute.network_info:
    name: tenant-a
  register: tenant_a

- name: Show who got which address
  ansible.builtin.debug:
    msg: "{{ tenant_a.networks[0].leases | map(attribute='ip') | list }}"
"""

RETURN = r"""
networks:
  description: The networks, sorted by name (just the one named, or none if it does not exist).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Network name.
      type: str
    uuid:
      description: libvirt network UUID.
      type: str
    state:
      description: started or stopped.
      type: str
    active:
      description: Whether the network runs.
      type: bool
    autostart:
      description: Whether libvirtd starts it at boot.
      type: bool
    mode:
      description: nat, route, isolated or bridge (or libvirt's other forward modes, as they are).
      type: str
    bridge:
      description: The Linux bridge of the network.
      type: str
    forward_dev:
      description: The uplink interface, if one was set.
      type: str
    cidr:
      description: The first IPv4 subnet.
      type: str
    gateway:
      description: The host's address on it.
      type: str
    dhcp:
      description: Whether a DHCP server runs on it.
      type: bool
    dhcp_start:
      description: First address of the DHCP range.
      type: str
    dhcp_end:
      description: Last address of the DHCP range.
      type: str
    hosts:
      description: DHCP reservations (mac, ip, name).
      type: list
      elements: dict
    users:
      description: Domains with an interface on the network.
      type: list
      elements: str
    leases:
      description: Current IPv4 DHCP leases (mac, ip, hostname, expiry as epoch seconds).
      type: list
      elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtfleet.compute.plugins.module_utils._module import CONNECTION_ARGS, run_module
from ansible_collections.virtfleet.compute.plugins.module_utils._network import network_info


def main():
    argument_spec = dict(
        name=dict(type="str"),
    )
    argument_spec.update(CONNECTION_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    run_module(module, lambda client: network_info(client, module.params))


if __name__ == "__main__":
    main()
