#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: network
short_description: Declare a libvirt network (NAT, routed, isolated or bridged) with DHCP and fixed addresses
version_added: 0.1.0
description:
  - Defines, starts, changes, stops and deletes one libvirt network from its declared state, the basic job Neutron
    does for Nova - a subnet, a DHCP server, reservations for fixed IPs - through the libvirt API.
  - Modes are V(nat) (a private subnet with DHCP, NAT to the host's uplink), V(route) (routed, no NAT), V(isolated)
    (guests and host only) and V(bridge) (guests attached to an existing Linux bridge of the host, on its LAN).
  - DHCP reservations (O(hosts)), the DHCP range and autostart are changed in place, on the running network and in
    its persistent definition, without disturbing the guests on it.
  - Any other change (mode, subnet, gateway, bridge, DHCP on or off) means stopping the network, redefining and
    starting it. That is done only when no domain has an interface on the network; otherwise the module fails,
    names the domains and changes nothing.
  - The M(virtfleet.compute.server) module reserves a server's C(fixed_ip) in the network as well; those
    reservations are kept unless O(purge_hosts=true).
author:
  - virtfleet.compute developers (@virtfleet)
extends_documentation_fragment:
  - virtfleet.compute.connection
attributes:
  check_mode:
    support: full
    description: Check mode reports exactly the steps the real run takes, in C(actions).
  diff_mode:
    support: full
    description: The declared fields (state, autostart, mode, bridge, subnet, gateway, DHCP range, reservations)
      before and after.
  idempotent:
    support: full
    description: A second run with the same arguments reports no change.
options:
  name:
    description: Name of the libvirt network.
    type: str
    required: true
  state:
    description:
      - V(started) defines the network if needed and starts it.
      - V(stopped) defines the network if needed and stops it; refused while running domains use it.
      - V(present) defines the network if needed; a new network is started, an existing one keeps its state.
      - V(absent) stops and deletes the network; refused while any domain has an interface on it.
    type: str
    choices: [started, stopped, present, absent]
    default: started
  mode:
    description:
      - How the network reaches the outside. Required to create a network of another mode than V(nat).
      - Omitted, an existing network keeps its mode.
    type: str
    choices: [nat, route, isolated, bridge]
  cidr:
    description:
      - The IPv4 subnet, such as C(10.20.0.0/24), without host bits. Required to create a V(nat), V(route) or
        V(isolated) network; not allowed for V(bridge) (the bridge's LAN has its own addressing).
      - Omitted, an existing network keeps its subnet.
    type: str
  gateway:
    description:
      - The host's address on the network, which guests use as their gateway and DNS server.
      - Defaults to the first address of O(cidr) (or the existing gateway when the subnet does not change).
    type: str
  bridge:
    description:
      - For O(mode=bridge), the existing Linux bridge guests are attached to (required).
      - For the other modes, the name of the bridge libvirt creates for the network; libvirt picks C(virbrN) when
        omitted.
    type: str
  forward_dev:
    description: For V(nat) and V(route), the host interface traffic leaves through; any interface when omitted.
    type: str
  dhcp:
    description:
      - Run a DHCP server on the network. Defaults to V(true) for a new V(nat), V(route) or V(isolated) network.
    type: bool
  dhcp_start:
    description:
      - First address of the dynamic DHCP range; with O(dhcp_end).
      - Defaults to the third address of the subnet (the range libvirt itself uses); reserved addresses may lie
        inside or outside the range.
    type: str
  dhcp_end:
    description: Last address of the dynamic DHCP range; defaults to the address before the broadcast address.
    type: str
  hosts:
    description:
      - Static DHCP reservations; each guest with the MAC gets the address (a fixed IP).
      - The address must be inside O(cidr) and not its network, broadcast or gateway address; MACs, addresses and
        names are unique.
      - Reservations not listed here (made by a server's C(fixed_ip), say) are kept, unless O(purge_hosts=true).
    type: list
    elements: dict
    default: []
    suboptions:
      mac:
        description: MAC address of the guest's NIC.
        type: str
        required: true
      ip:
        description: The address reserved for it.
        type: str
        required: true
      name:
        description: Host name given with the lease (and resolvable on the network's DNS).
        type: str
  purge_hosts:
    description:
      - Remove the reservations not listed in O(hosts). A reservation whose MAC belongs to a NIC of a domain on
        this network is kept all the same, with a warning.
    type: bool
    default: false
  autostart:
    description: Start the network when libvirtd starts. Defaults to V(true) for a new network; omitted, an existing
      network keeps its setting.
    type: bool
notes:
  - Only the first IPv4 subnet of a network is managed; IPv6 addresses of an existing network are left as they are
    when nothing structural changes.
seealso:
  - module: virtfleet.compute.network_info
  - module: virtfleet.compute.server
"""

EXAMPLES = r"""
- name: A NAT network with DHCP and a reservation
  virtfleet.compute.network:
    name: tenant-a
    cidr: 10.20.0.0/24
    dhcp_start: 10.20.0.100
    dhcp_end: 10.20.0.199
    hosts:
      - mac: "52:54:00:12:34:56"
        ip: 10.20.0.10
        name: db-1

- name: An isolated network (guests and host only), not started at boot
  virtfleet.compute.network:
    name: backend
    mode: isolated
    cidr: 172.30.5.0/24
    autostart: false

- name: Guests on the host's LAN, through the bridge br-lan
  virtfleet.compute.network:
    name: lan
    mode: bridge
    bridge: br-lan

- name: Delete a network (refused while domains are attached to it)
  virtfleet.compute.network:
    name: backend
    state: absent
"""

RETURN = r"""
network:
  description: The network after the run (predicted in check mode); empty after O(state=absent).
  returned: always
  type: dict
  contains:
    name:
      description: Network name.
      type: str
      sample: tenant-a
    uuid:
      description: libvirt network UUID (absent in check mode for a new network).
      type: str
    state:
      description: started or stopped.
      type: str
      sample: started
    active:
      description: Whether the network runs.
      type: bool
    autostart:
      description: Whether libvirtd starts it at boot.
      type: bool
    mode:
      description: nat, route, isolated or bridge.
      type: str
      sample: nat
    bridge:
      description: The Linux bridge of the network.
      type: str
      sample: virbr1
    forward_dev:
      description: The uplink interface, if one was set.
      type: str
    cidr:
      description: The IPv4 subnet.
      type: str
      sample: 10.20.0.0/24
    gateway:
      description: The host's address on the network.
      type: str
      sample: 10.20.0.1
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
      description: DHCP reservations (mac, ip, name), by address.
      type: list
      elements: dict
actions:
  description: The steps taken (or, in check mode, that would be taken), in order.
  returned: always
  type: list
  elements: str
  sample: ["define network tenant-a (nat 10.20.0.0/24, DHCP 10.20.0.100-10.20.0.199)", "start network tenant-a",
           "enable autostart of network tenant-a"]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtfleet.compute.plugins.module_utils._module import CONNECTION_ARGS, run_module
from ansible_collections.virtfleet.compute.plugins.module_utils._network import converge_network


def main():
    argument_spec = dict(
        name=dict(type="str", required=True),
        state=dict(type="str", default="started", choices=["started", "stopped", "present", "absent"]),
        mode=dict(type="str", choices=["nat", "route", "isolated", "bridge"]),
        cidr=dict(type="str"),
        gateway=dict(type="str"),
        bridge=dict(type="str"),
        forward_dev=dict(type="str"),
        dhcp=dict(type="bool"),
        dhcp_start=dict(type="str"),
        dhcp_end=dict(type="str"),
        hosts=dict(type="list", elements="dict", default=[], options=dict(
            mac=dict(type="str", required=True),
            ip=dict(type="str", required=True),
            name=dict(type="str"),
        )),
        purge_hosts=dict(type="bool", default=False),
        autostart=dict(type="bool"),
    )
    argument_spec.update(CONNECTION_ARGS)
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        required_together=[("dhcp_start", "dhcp_end")],
    )
    run_module(module, lambda client: converge_network(client, module.params, module.check_mode, module._diff))


if __name__ == "__main__":
    main()
