#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: evacuate_plan
short_description: Decide which servers of a dead host are rebuilt, where, and with what cloud-init data
version_added: 0.1.0
description:
  - What C(evacuate_host.yml) decides before it rebuilds anything. The servers the dead host held come from
    O(evacuate_servers) when given, else from O(last_known) (the inventory's last answer from that host, kept by
    the C(virtfleet.compute.libvirt) inventory's cache); RV(source) says which, and how old the list is.
  - Servers of the list that run on a host that answers now are left alone (they moved after the list was
    written); declared servers found on no host and not in the list are named in RV(unknown).
  - Each server is placed by the P(virtfleet.compute.scheduler#lookup) lookup on the hosts that answer, and gets
    the cloud-init data of its declaration (user data, network configuration, its SSH keys after the controller's
    O(controller_key)), the same that C(site.yml) gives it, so the next converge finds the config drive it expects.
  - Refuses while the host answers, and when nothing says which servers it held.
  - An action that runs on the controller only and changes nothing.
author:
  - virtfleet.compute developers (@virtfleet)
attributes:
  action:
    support: full
    description: Runs on the controller as an action plugin; no module is sent to the host.
  check_mode:
    support: full
    description: Plans the same in check mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to show.
  idempotent:
    support: full
    description: Never changes anything.
options:
  evacuate_host:
    description: The dead host, one of the C(name)s of O(hosts).
    type: str
    required: true
  hosts:
    description: Every compute host as M(virtfleet.compute.host_info) returns it, read now.
    type: list
    elements: dict
    required: true
  evacuate_servers:
    description: The servers of the dead host as M(virtfleet.compute.server_info) returned them earlier.
    type: list
    elements: dict
  last_known:
    description: The inventory's last answer from the dead host (C(virtfleet_host.last_known) - C(read_at), C(servers)).
    type: dict
  servers:
    description: The declared servers (cloud-init data, and which are declared absent).
    type: list
    elements: dict
    default: []
  server_groups:
    description: The declared server groups, whose policies the placements respect.
    type: list
    elements: dict
    default: []
  controller_key:
    description: The controller's public SSH key, added before each server's declared keys.
    type: str
  scheduler_options:
    description: Options of the scheduler lookup (C(seed), weight multipliers...).
    type: dict
    default: {}
notes:
  - The logic is C(plugins/plugin_utils/_cloud_plan.py) in the collection, unit-tested on its own.
seealso:
  - module: virtfleet.compute.server_action
  - plugin: virtfleet.compute.libvirt
    plugin_type: inventory
"""

EXAMPLES = r"""
- name: Plan the evacuation of kvm-02 from the inventory's last answer from it
  virtfleet.compute.evacuate_plan:
    evacuate_host: kvm-02
    hosts: "{{ hosts_now.results | map(attribute='host') | list }}"
    last_known: "{{ hostvars['kvm-02'].virtfleet_host.last_known }}"
    servers: "{{ virtfleet_servers }}"
    controller_key: "{{ lookup('ansible.builtin.file', '~/.ssh/id_ed25519.pub') }}"
  register: evacuation
"""

RETURN = r"""
rebuilds:
  description: Each server to rebuild, with C(name), C(host) (the target), C(server) (its last known view),
    C(server_group) and its cloud-init options (C(ssh_authorized_keys), C(user_data), C(network_config), C(hostname)).
  returned: success
  type: list
  elements: dict
moved:
  description: Servers of the list found on a host that answers, with C(name) and C(host); left alone.
  returned: success
  type: list
  elements: dict
unknown:
  description: Declared servers found on no host that answers and not in the list.
  returned: success
  type: list
  elements: str
source:
  description: Where the list came from, and how old it is.
  returned: success
  type: str
  sample: the inventory cache (kvm-02 answered last at 2026-12-07T11:25:00Z, 35 min ago)
lines:
  description: The plan, one line each.
  returned: success
  type: list
  elements: str
"""
