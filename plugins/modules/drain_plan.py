#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: drain_plan
short_description: Decide the moves that empty a compute host, or refuse before anything changes
version_added: 0.1.0
description:
  - What C(drain_host.yml) decides before it disables a host - every server of O(drain_host) (but the shelved ones)
    is placed on the other hosts by the P(virtfleet.compute.scheduler#lookup) lookup as one batch, with its size,
    its server group's policy and its availability zone. Running servers move live, stopped ones cold.
  - When a server has nowhere to go, the task fails naming it and each host's reason, and nothing has changed; with
    O(partial) it succeeds with the moves that can be made and RV(stays).
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
  drain_host:
    description: The host to drain, one of the C(name)s of O(hosts).
    type: str
    required: true
  hosts:
    description:
      - Every compute host as M(virtfleet.compute.host_info) returns it (RV(virtfleet.compute.host_info#module:host)),
        read now.
    type: list
    elements: dict
    required: true
  server_groups:
    description: The declared server groups, whose policies the moves respect.
    type: list
    elements: dict
    default: []
  servers:
    description: The declared servers; groups declared inline with a server count too.
    type: list
    elements: dict
    default: []
  scheduler_options:
    description: Options of the scheduler lookup (C(seed), weight multipliers...).
    type: dict
    default: {}
  partial:
    description: Succeed with the moves that can be made when some servers cannot move.
    type: bool
    default: false
notes:
  - The logic is C(plugins/plugin_utils/_cloud_plan.py) in the collection, unit-tested on its own.
seealso:
  - module: virtfleet.compute.server_action
"""

EXAMPLES = r"""
- name: Read every compute host
  virtfleet.compute.host_info:
    uri: "{{ hostvars[item].virtfleet_uri }}"
    name: "{{ item }}"
  loop: "{{ groups['compute'] }}"
  register: hosts_now

- name: Plan the drain of kvm-02
  virtfleet.compute.drain_plan:
    drain_host: kvm-02
    hosts: "{{ hosts_now.results | map(attribute='host') | list }}"
  register: drain
"""

RETURN = r"""
moves:
  description: The moves, each with C(name), C(host) (the target), C(action) (live_migrate or migrate) and the
    C(server_group) to record.
  returned: success
  type: list
  elements: dict
stays:
  description: The servers that cannot move, each with C(name) and C(reasons) (per host, why not).
  returned: success
  type: list
  elements: dict
shelved:
  description: Shelved servers of the host; they stay.
  returned: success
  type: list
  elements: str
complete:
  description: Whether every server can move.
  returned: success
  type: bool
lines:
  description: The plan, one line per server.
  returned: success
  type: list
  elements: str
"""
