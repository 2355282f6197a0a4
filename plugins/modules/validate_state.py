#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: validate_state
short_description: Validate the declared cloud state (flavors, images, networks, server groups, servers, hosts)
version_added: 0.1.0
description:
  - "Checks the declared state of a cloud against the collection's JSON Schemas (C(schemas/) in the collection) and
    the cross-references between its parts, and reports every error at once with its path, such as
    C(servers[3].flavor: 'm1.hug' is not a defined flavor)."
  - "Cross-references: names unique per kind; servers naming declared flavors, images, networks, server groups,
    hosts and availability zones; scheduler hints naming declared servers; fixed IPs inside their network's declared
    subnet, not its network, broadcast or gateway address, and used once per network (servers and the network's
    DHCP reservations); explicit MAC addresses used once; hw: and quota: extra specs the flavor module accepts; an
    anti-affinity server group with more servers than its eligible hosts can take, and an affinity group whose
    servers cannot share a host."
  - An action that runs on the controller only. It contacts no host and needs no libvirt, so it works in a Git CI
    job for pre-merge checks (see the C(virtfleet.compute.validate) playbook) and before C(site.yml) changes
    anything.
  - Paths name the kind without its variable prefix, C(servers[3]) being the fourth entry of C(virtfleet_servers).
author:
  - virtfleet.compute developers (@virtfleet)
attributes:
  action:
    support: full
    description: Runs on the controller as an action plugin; no module is sent to the host.
  check_mode:
    support: full
    description: Validation changes nothing, in check mode or not.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to show.
  idempotent:
    support: full
    description: Never changes anything.
options:
  state:
    description:
      - The declared state, a dict with any of the keys C(flavors), C(images), C(networks), C(server_groups),
        C(servers) and C(hosts), each a list as in the inventory variables C(virtfleet_flavors),
        C(virtfleet_images) and so on. A key whose value is null counts as an empty list.
      - The schemas describe every field; the reference is C(docs/reference-state.md) in the collection.
    type: dict
    required: true
  compute_hosts:
    description:
      - Names of the compute hosts (usually C(groups['compute'])). A server's C(host) and a host record's C(name)
        must be one of them, and anti-affinity groups are counted on them together with the host records
        (enabled, availability zone, traits).
      - Omitted, the names of the host records in C(state.hosts) are the compute hosts; when there are none either,
        host references and group capacities are not checked and a warning says so.
    type: list
    elements: str
  host_facts:
    description:
      - What the inventory knows of the compute hosts, as a dict of host name to host record (C(enabled),
        C(disabled_reason), C(availability_zone), C(traits)); the C(virtfleet.compute.libvirt) inventory plugin sets
        it as the host variable C(virtfleet_host). Used for hosts without a record in C(state.hosts); a declared
        record wins, since the converge writes it.
      - Whether a host is up is not considered, so that validation gives the same answer in a CI job that cannot
        reach the hosts.
    type: dict
  fail_on_error:
    description:
      - Fail the task when the state has errors. With V(false) the task succeeds and reports them in
        RV(errors) and RV(valid), for a playbook that wants to decide itself.
    type: bool
    default: true
notes:
  - Needs the Python libraries jsonschema (4.18 or later) and netaddr on the controller.
  - The host capacity (RAM, vCPUs, disk) and aggregate extra specs are the scheduler's business at converge time;
    validation only knows the declared state.
seealso:
  - module: virtfleet.compute.servers
  - module: virtfleet.compute.server
"""

EXAMPLES = r"""
- name: Validate the declared state before changing anything
  virtfleet.compute.validate_state:
    state:
      flavors: "{{ virtfleet_flavors | default([]) }}"
      images: "{{ virtfleet_images | default([]) }}"
      networks: "{{ virtfleet_networks | default([]) }}"
      server_groups: "{{ virtfleet_server_groups | default([]) }}"
      servers: "{{ virtfleet_servers | default([]) }}"
      hosts: "{{ virtfleet_hosts | default([]) }}"
    compute_hosts: "{{ groups['compute'] }}"
    host_facts: >-
      {{ dict(groups['compute'] | zip(groups['compute'] | map('extract', hostvars)
                                      | map(attribute='virtfleet_host', default={}))) }}
  run_once: true

- name: Report the errors without failing
  virtfleet.compute.validate_state:
    state:
      servers: "{{ virtfleet_servers }}"
      flavors: "{{ virtfleet_flavors }}"
      images: "{{ virtfleet_images }}"
    fail_on_error: false
  register: checked

- name: Show them
  ansible.builtin.debug:
    msg: "{{ checked.errors | map(attribute='path') | list }}"
  when: not checked.valid
"""

RETURN = r"""
valid:
  description: Whether the declared state has no error.
  returned: always
  type: bool
  sample: false
errors:
  description: Every error, in document order.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: Where the error is, such as C(servers[3].networks[0].fixed_ip).
      type: str
      sample: servers[3].flavor
    message:
      description: What is wrong.
      type: str
      sample: "'m1.hug' is not a defined flavor (did you mean 'm1.huge'?)"
msg:
  description: The errors, one C(path) and message per line after a header; or a one-line summary of a valid state.
  returned: always
  type: str
  sample: |-
    1 error in the declared state (servers[3] is the fourth entry of virtfleet_servers, and so on); nothing was changed:
    servers[3].flavor: 'm1.hug' is not a defined flavor (did you mean 'm1.huge'?)
error_count:
  description: Number of errors.
  returned: always
  type: int
  sample: 1
summary:
  description: How many entries of each kind are declared, and how many servers per state.
  returned: always
  type: dict
  sample:
    flavors: 3
    images: 1
    networks: 2
    server_groups: 1
    servers: 12
    hosts: 3
    server_states:
      running: 11
      absent: 1
"""
