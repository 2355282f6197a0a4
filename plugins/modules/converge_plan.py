#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: converge_plan
short_description: Decide a converge of the declared servers - requests, placements, each host's list
version_added: 0.1.0
description:
  - What C(site.yml) decides before it converges anything, on the controller, in one task for all hosts (use
    C(run_once)). The declared servers become the scheduler's requests (flavors and server groups given by name
    are looked up in O(flavors) and O(server_groups)); the P(virtfleet.compute.scheduler#lookup) lookup places the
    new ones as one batch on the hosts of the play, as their C(host_info) results describe them now, while existing
    servers stay where they are; each host gets the list of servers to converge (with their cloud-init data,
    including the controller's key) and the servers declared absent that it holds.
  - A compute host that is not in the play (down, or failed earlier) may hold servers nobody can see now, so a
    declared server found on no host of the play waits until every host answers, unless O(place_when_hosts_down).
    Such hosts stay in the scheduler's input as down, with the inventory's record of them (C(virtfleet_host)).
  - "Drift: a server whose root disk is larger than its declared flavor's (resized by C(server_action) and not
    declared since) cannot follow the declared state, since a disk never shrinks. It is left out of its host's list
    and reported in RV(drift) with the line Git must say."
  - In check mode, what the earlier tasks of the same run would create is carried forward, as Terraform's plan does -
    the host record the host task would write replaces the host's for the scheduler, and the pools, flavors, images
    and networks they would create are returned per host (RV(hosts)) for the C(pending) option of
    M(virtfleet.compute.servers).
  - An action that runs on the controller only and changes nothing.
author:
  - virtfleet.compute developers (@virtfleet)
attributes:
  action:
    support: full
    description: Runs on the controller as an action plugin; no module is sent to the host.
  check_mode:
    support: full
    description: Plans the same in check mode, carrying forward what earlier tasks would create.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to show.
  idempotent:
    support: full
    description: Never changes anything.
options:
  servers:
    description: The declared servers, as in C(virtfleet_servers).
    type: list
    elements: dict
    default: []
  flavors:
    description: The declared flavors (C(virtfleet_flavors)), for servers that name theirs.
    type: list
    elements: dict
    default: []
  server_groups:
    description: The declared server groups (C(virtfleet_server_groups)), for servers that name theirs.
    type: list
    elements: dict
    default: []
  controller_key:
    description:
      - The controller's public SSH key, added before each server's declared C(ssh_authorized_keys).
      - Required outside check mode (a server without it could not be logged into by the playbook).
    type: str
  scheduler_options:
    description: Options of the P(virtfleet.compute.scheduler#lookup) lookup (C(seed), weight multipliers...).
    type: dict
    default: {}
  place_when_hosts_down:
    description: Place the servers found on no host of the play even when a compute host is left out.
    type: bool
    default: false
  compute_group:
    description: The inventory group of the compute hosts; those not in the play are left out.
    type: str
    default: compute
  registered:
    description:
      - Names of the variables each host of the play registered the results in. Only O(registered.host_info) is
        required; the others are read in check mode only, and may be undefined (a run limited with C(--tags)).
    type: dict
    required: true
    suboptions:
      host_info:
        description: The result of M(virtfleet.compute.host_info) for the host (with C(name) its inventory name).
        type: str
        required: true
      host_record:
        description: The result of M(virtfleet.compute.host).
        type: str
      pools:
        description: The looped results of M(virtfleet.compute.pool).
        type: str
      flavors:
        description: The looped results of M(virtfleet.compute.flavor).
        type: str
      images:
        description: The looped results of M(virtfleet.compute.image).
        type: str
      networks:
        description: The looped results of M(virtfleet.compute.network).
        type: str
notes:
  - The logic is C(plugins/plugin_utils/_cloud_plan.py) in the collection, unit-tested on its own.
seealso:
  - module: virtfleet.compute.servers
  - plugin: virtfleet.compute.scheduler
    plugin_type: lookup
"""

EXAMPLES = r"""
- name: Read the host's capacity, usage and servers
  virtfleet.compute.host_info:
    name: "{{ inventory_hostname }}"
  register: host_now

- name: Plan the converge
  virtfleet.compute.converge_plan:
    servers: "{{ virtfleet_servers }}"
    flavors: "{{ virtfleet_flavors | default([]) }}"
    controller_key: "{{ lookup('ansible.builtin.file', '~/.ssh/id_ed25519.pub') }}"
    registered:
      host_info: host_now
  run_once: true
  register: plan

- name: Converge this host's servers
  virtfleet.compute.servers:
    servers: "{{ plan.hosts[inventory_hostname].servers }}"
    declared_names: "{{ plan.declared_names }}"
"""

RETURN = r"""
placements:
  description: The scheduler's answer for every server of the batch, as the lookup returns it.
  returned: always
  type: list
  elements: dict
  sample: [{"name": "web-1", "host": "kvm-02", "existing": false, "alternates": ["kvm-01"], "reasons": {}}]
hosts:
  description:
    - Per host of the play, C(servers) (the items for M(virtfleet.compute.servers)) and C(pending) (in check mode,
      what earlier tasks would create there; empty otherwise).
  returned: always
  type: dict
declared_names:
  description: The names of every declared server, for the C(declared_names) option of the servers module.
  returned: always
  type: list
  elements: str
waiting:
  description: Declared servers found on no host of the play, not placed while a compute host is left out.
  returned: always
  type: list
  elements: str
left_out:
  description: The compute hosts not in the play.
  returned: always
  type: list
  elements: str
drift:
  description: Servers left alone because they cannot follow the declared state; each with C(name), C(host),
    C(field), C(declared), C(actual), C(line) (what Git must say) and C(msg).
  returned: always
  type: list
  elements: dict
lines:
  description: What the plan decided, one line each (C(web-1 kvm-02 placed), C(db-1 kvm-01 stays), ...).
  returned: always
  type: list
  elements: str
"""
