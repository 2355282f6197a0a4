#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: flavor
short_description: Declare a flavor in a libvirt host's flavor catalog, as Nova's flavors
version_added: 0.1.0
description:
  - Adds, changes or deletes one flavor of the flavor catalog kept on the host itself (a JSON document in the
    C(virtfleet-records) storage pool, read and written through libvirt, so it works over remote URIs too).
  - Servers name a catalog flavor by its name in their C(flavor) option (see M(virtfleet.compute.server)); inline
    flavor dicts keep working.
  - A server keeps a snapshot of its flavor. Changing a flavor never changes a server; the module warns about the
    servers whose snapshot no longer matches, and they converge to the new flavor only when their declared spec asks
    for it.
  - Deleting a flavor that servers use is refused, naming them, unless O(force=true).
  - Extra specs are validated; an unknown C(hw:) or C(quota:) key or a bad value fails with the key named. The
    supported ones map onto libvirt as Nova's libvirt driver maps them; keys with other prefixes
    (C(aggregate_instance_extra_specs:), C(trait:), your own) are kept as free-form strings.
author:
  - virtfleet.compute developers (@virtfleet)
extends_documentation_fragment:
  - virtfleet.compute.connection
attributes:
  check_mode:
    support: full
    description: Check mode reports exactly the change the real run makes, in C(actions).
  diff_mode:
    support: full
    description: The flavor's fields before and after.
  idempotent:
    support: full
    description: A second run with the same arguments reports no change.
options:
  name:
    description:
      - Name of the flavor, e.g. C(m1.small).
      - A letter or digit, then letters, digits and C(_.:+-); at most 128 characters; no C(..). No slashes,
        spaces, markup or bidirectional characters (the name is a record key and an inventory group name).
    type: str
    required: true
  state:
    description:
      - V(present) adds the flavor or changes the fields given.
      - V(absent) deletes it from the catalog (servers keep their snapshot).
    type: str
    choices: [present, absent]
    default: present
  vcpus:
    description: Number of vCPUs. Required to add a flavor; omitted, an existing flavor keeps its value.
    type: int
  ram_mb:
    description: Memory in MiB (at least 16). Required to add a flavor; omitted, kept.
    type: int
  disk_gb:
    description:
      - Root disk size in GiB. V(0) means as large as the image (as in Nova). Required to add a flavor; omitted,
        kept.
    type: int
  swap_mb:
    description: Swap disk in MiB (0 for none). Omitted, kept (0 for a new flavor).
    type: int
  ephemeral_gb:
    description: Ephemeral disk in GiB (0 for none). Omitted, kept (0 for a new flavor).
    type: int
  description:
    description: Free text of at most 65535 characters (as in Nova). Omitted, kept; an empty string removes it.
    type: str
  extra_specs:
    description:
      - Extra specs (string keys and values). Given, they replace the flavor's extra specs entirely; omitted, kept.
      - C(hw:cpu_policy) V(shared) or V(dedicated). Dedicated pins each vCPU to a host CPU that no other dedicated
        server on the host holds (emulator threads to the same CPUs) and claims those host CPUs 1:1, never
        overcommitted, on top of the vCPUs (see host_info's C(pcpus_used)). On a host with several NUMA cells the
        pins come from one cell when one has room. A server keeps its pins from run to run and when resized; a move
        pins it again on the target. Servers without the policy are not pinned and may run
        on any host CPU, as in Nova without C(cpu_shared_set); keep them apart from dedicated ones with aggregates
        when that matters.
      - C(hw:mem_page_size) V(small), V(large) (the host's default huge pages), V(any) (rendered as small pages) or
        a size such as V(2048) (KiB), V(2MB), V(1GB). A server needs RAM / size free huge pages of that size on its
        host; where they are missing it is refused while planning, before anything is made (see
        C(virtfleet.compute.host_info)'s C(features)).
      - C(hw:watchdog_action) V(disabled), V(reset), V(poweroff), V(pause) or V(none) (an i6300esb watchdog).
      - C(quota:cpu_shares), C(quota:cpu_period) (microseconds, 1000 to 1000000), C(quota:cpu_quota)
        (microseconds per period, at least 1000, or negative for no limit); not with V(dedicated).
      - C(quota:disk_{read,write,total}_{bytes,iops}_sec) on the server's root, ephemeral and swap disks; a total
        limit excludes the read and write limits of the same kind.
      - C(quota:vif_{inbound,outbound}_{average,peak,burst}) (KiB/s, burst in KiB) on every NIC; peak and burst need
        the average of the same direction. A host whose kernel cannot shape traffic (no C(sfq) queueing discipline)
        refuses them while planning.
      - C(aggregate_instance_extra_specs:KEY) is matched by the scheduler against host aggregate metadata.
    type: dict
  force:
    description: With O(state=absent), delete the flavor even if servers use it.
    type: bool
    default: false
seealso:
  - module: virtfleet.compute.flavor_info
  - module: virtfleet.compute.server
"""

EXAMPLES = r"""
- name: A small general-purpose flavor
  virtfleet.compute.flavor:
    name: m1.small
    vcpus: 1
    ram_mb: 2048
    disk_gb: 20
    description: General purpose

- name: A pinned flavor on 2 MiB huge pages, with a watchdog and disk limits
  virtfleet.compute.flavor:
    name: c1.pinned
    vcpus: 2
    ram_mb: 4096
    disk_gb: 40
    extra_specs:
      hw:cpu_policy: dedicated
      hw:mem_page_size: 2MB
      hw:watchdog_action: reset
      quota:disk_total_iops_sec: "2000"
      aggregate_instance_extra_specs:ssd: "true"

- name: Every flavor of a catalog file on every compute host
  virtfleet.compute.flavor:
    uri: "{{ virtfleet_uri }}"
    name: "{{ item.name }}"
    vcpus: "{{ item.vcpus }}"
    ram_mb: "{{ item.ram_mb }}"
    disk_gb: "{{ item.disk_gb }}"
    extra_specs: "{{ item.extra_specs | default({}) }}"
  loop: "{{ flavors }}"

- name: Retire a flavor nobody uses any more
  virtfleet.compute.flavor:
    name: m1.tiny
    state: absent
"""

RETURN = r"""
flavor:
  description: The flavor after the run (predicted in check mode); empty after O(state=absent).
  returned: always
  type: dict
  contains:
    name:
      description: Flavor name.
      type: str
      sample: m1.small
    vcpus:
      description: vCPUs.
      type: int
      sample: 1
    ram_mb:
      description: Memory in MiB.
      type: int
      sample: 2048
    disk_gb:
      description: Root disk in GiB (0 = the image's size).
      type: int
      sample: 20
    swap_mb:
      description: Swap in MiB.
      type: int
      sample: 0
    ephemeral_gb:
      description: Ephemeral disk in GiB.
      type: int
      sample: 0
    description:
      description: Free text.
      type: str
    extra_specs:
      description: Extra specs.
      type: dict
      sample: {"hw:watchdog_action": "reset"}
actions:
  description: The change made (or, in check mode, that would be made).
  returned: always
  type: list
  elements: str
  sample: ["update flavor m1.small (ram_mb 1024 -> 2048)"]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtfleet.compute.plugins.module_utils._flavor_catalog import converge_flavor
from ansible_collections.virtfleet.compute.plugins.module_utils._module import CONNECTION_ARGS, run_module


def main():
    argument_spec = dict(
        name=dict(type="str", required=True),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        vcpus=dict(type="int"),
        ram_mb=dict(type="int"),
        disk_gb=dict(type="int"),
        swap_mb=dict(type="int"),
        ephemeral_gb=dict(type="int"),
        description=dict(type="str"),
        extra_specs=dict(type="dict"),
        force=dict(type="bool", default=False),
    )
    argument_spec.update(CONNECTION_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    run_module(module, lambda client: converge_flavor(client, module.params, module.check_mode, module._diff))


if __name__ == "__main__":
    main()
