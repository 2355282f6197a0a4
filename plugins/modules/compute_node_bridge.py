#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: compute_node_bridge
short_description: Apply Linux bridges now, with iproute2
version_added: 0.1.0
description:
  - A helper of the C(virtfleet.compute.compute_node) role, run on the host itself. It is the one module of the
    collection that works outside libvirt, since host bridges are not libvirt objects.
  - The role persists the same bridges in the host's network configuration (ifupdown, systemd-networkd or
    NetworkManager); this module makes the running host match at once.
  - Creates each bridge, sets STP and MTU, attaches its ports, adds its addresses and brings it all up. Ports and
    addresses that are not declared are left alone (guest tap devices are ports too).
  - Refuses to attach a port that carries a global IP address, since the host would lose that address's connectivity.
    Move the address to the bridge (O(bridges[].addresses)) and off the port first.
author:
  - virtfleet.compute developers (@virtfleet)
attributes:
  check_mode:
    support: full
    description: Reports the commands the real run would take, in C(actions).
  diff_mode:
    support: none
    description: Reads or checks only; there is nothing to diff.
  idempotent:
    support: full
    description: A second run reports no change.
options:
  bridges:
    description: The bridges.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Bridge name.
        type: str
        required: true
      ports:
        description: Interfaces attached to the bridge.
        type: list
        elements: str
        default: []
      stp:
        description: Spanning tree protocol.
        type: bool
        default: false
      mtu:
        description: MTU of the bridge.
        type: int
      addresses:
        description: IP addresses (CIDR) of the host on the bridge.
        type: list
        elements: str
        default: []
      state:
        description: V(absent) deletes the bridge.
        type: str
        default: present
        choices: [present, absent]
  persisted:
    description: Whether the role persisted the bridges; if not, the module warns that they will not survive a reboot.
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: Bridge eth1 for guests on the LAN
  virtfleet.compute.compute_node_bridge:
    bridges:
      - name: br-lan
        ports: [eth1]
"""

RETURN = r"""
actions:
  description: The iproute2 commands run (or, in check mode, that would run).
  returned: always
  type: list
  elements: str
  sample: ["ip link add br-lan type bridge stp_state 0", "ip link set eth1 master br-lan", "ip link set br-lan up"]
bridges:
  description: Per bridge, its ports and addresses after the run (as predicted in check mode).
  returned: always
  type: dict
"""


import json

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ConflictError
from ansible_collections.virtfleet.compute.plugins.module_utils._host_bridge import plan_bridges


def _ip_json(module, *args):
    rc, out, err = module.run_command(["ip", "-j"] + list(args), check_rc=False)
    if rc != 0:
        module.fail_json(msg="ip -j %s failed: %s" % (" ".join(args), err.strip()))
    return json.loads(out or "[]")


def main():
    module = AnsibleModule(
        argument_spec=dict(
            bridges=dict(type="list", elements="dict", required=True, options=dict(
                name=dict(type="str", required=True),
                ports=dict(type="list", elements="str", default=[]),
                stp=dict(type="bool", default=False),
                mtu=dict(type="int"),
                addresses=dict(type="list", elements="str", default=[]),
                state=dict(type="str", default="present", choices=["present", "absent"]),
            )),
            persisted=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    links = _ip_json(module, "-d", "link", "show")
    addresses = _ip_json(module, "addr", "show")
    try:
        commands, view = plan_bridges(module.params["bridges"], links, addresses)
    except ConflictError as exc:
        module.fail_json(**exc.to_result())
    if not module.check_mode:
        for cmd in commands:
            rc, _out, err = module.run_command(cmd, check_rc=False)
            if rc != 0:
                module.fail_json(msg="%s failed: %s" % (" ".join(cmd), err.strip()),
                                 actions=[" ".join(c) for c in commands])
    if view and not module.params["persisted"]:
        module.warn("bridges %s were applied now but not persisted: no network configuration system (ifupdown, "
                    "systemd-networkd, NetworkManager) was found, so they will not survive a reboot"
                    % ", ".join(sorted(view)))
    module.exit_json(changed=bool(commands), actions=[" ".join(c) for c in commands], bridges=view)


if __name__ == "__main__":
    main()
