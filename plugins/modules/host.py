#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: host
short_description: Declare a compute host's record (Nova's compute service and hypervisor settings)
version_added: 0.1.0
description:
  - Sets the record of a libvirt host that claims and the scheduler read, kept on the host itself (a JSON document
    in the C(virtfleet-records) storage pool, created if missing, read and written through libvirt).
  - Enabled or disabled with a reason, as Nova's C(openstack compute service set --disable --disable-reason). A
    disabled host takes no new server and no growing one; its servers keep running.
  - Allocation ratios and reservations, as nova.conf's C(*_allocation_ratio) and C(reserved_host_*) options.
    Capacity is total minus reserved, times the allocation ratio, per resource, as placement computes it.
  - Availability zone, host aggregates with their metadata, and custom traits, for the scheduler.
  - "Options left out keep the host's current value; a host without a record has this collection's defaults: CPU
    16.0, RAM 1.5, disk 1.0, 512 MiB of memory reserved, zone C(nova). Those ratios are the overcommit this
    collection was built for and Nova's defaults until 2023.1; Nova 2023.1 and later start new compute nodes at CPU
    4.0, RAM 1.0, disk 1.0 (C(initial_*_allocation_ratio)): set O(cpu_allocation_ratio=4.0) and
    O(ram_allocation_ratio=1.0) for Nova's current behaviour."
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
    description: The record's fields before and after.
  idempotent:
    support: full
    description: A second run with the same arguments reports no change.
options:
  enabled:
    description:
      - Whether the host takes new servers. Enabling a host clears its disabled reason.
    type: bool
  disabled_reason:
    description: Why the host is disabled (only with O(enabled=false), or for a host already disabled).
    type: str
  cpu_allocation_ratio:
    description:
      - vCPUs per host CPU (after O(reserved_host_cpus)); greater than 0. Default for a new record 16.0 (Nova's
        default until 2023.1; Nova 2023.1 and later start at 4.0).
    type: float
  ram_allocation_ratio:
    description:
      - Guest RAM per MiB of host RAM (after O(reserved_host_memory_mb)); greater than 0. Default for a new record
        1.5 (Nova's default until 2023.1; Nova 2023.1 and later start at 1.0).
    type: float
  disk_allocation_ratio:
    description: Guest disk per GiB of the instance pool (after O(reserved_host_disk_mb)); greater than 0. Default 1.0.
    type: float
  reserved_host_memory_mb:
    description: Memory kept for the host itself, in MiB. Default 512.
    type: int
  reserved_host_cpus:
    description: Host CPUs kept for the host itself. Default 0.
    type: int
  reserved_host_disk_mb:
    description: Instance pool space kept free, in MiB (rounded up to whole GiB, as Nova does). Default 0.
    type: int
  disable_after_failed_builds:
    description:
      - Disable the host after this many consecutive failed builds of new servers on it, with the reason
        C(Auto-disabled due to N build failures) (Nova's C(consecutive_build_service_disable_threshold)). C(0), the
        default, never does. The count itself (the record's C(failed_builds), cleared by a good build) is what the
        scheduler's build failure weigher reads.
    type: int
  availability_zone:
    description: The host's availability zone. Default C(nova).
    type: str
  aggregates:
    description:
      - The host aggregates the host belongs to, as a dict of aggregate name to metadata (string keys and values).
        Given, it replaces the host's aggregates entirely.
      - The scheduler matches flavor extra specs C(aggregate_instance_extra_specs:KEY) against the metadata.
    type: dict
  traits:
    description:
      - Custom traits of the host (upper case, e.g. C(CUSTOM_SSD)); given, they replace the host's custom traits.
      - CPU traits (C(HW_CPU_X86_AVX2)...) are reported by M(virtfleet.compute.host_info) from the hardware and need
        not be declared.
    type: list
    elements: str
  virt_type:
    description:
      - The host's verdict on hardware virtualization, used by servers with C(virt_type=auto). V(kvm) or V(qemu)
        (software emulation); V(auto) forgets the verdict so servers guess again. Set by the C(compute_node) role
        after it has booted a test guest.
    type: str
    choices: [auto, kvm, qemu]
  virt_type_reasons:
    description:
      - Why the host got its O(virt_type) verdict (the checks the C(compute_node) role ran), kept with it so
        M(virtfleet.compute.host_info) can say why a host runs servers under software emulation.
    type: list
    elements: str
seealso:
  - module: virtfleet.compute.host_info
  - module: virtfleet.compute.flavor
"""

EXAMPLES = r"""
- name: Overcommit CPU 4:1, keep 2 GiB for the host, put it in an SSD aggregate
  virtfleet.compute.host:
    cpu_allocation_ratio: 4.0
    ram_allocation_ratio: 1.0
    reserved_host_memory_mb: 2048
    availability_zone: zone-a
    aggregates:
      ssd-hosts: {ssd: "true"}
    traits: [CUSTOM_SSD]

- name: Drain a host for maintenance (running servers keep running)
  virtfleet.compute.host:
    uri: qemu+ssh://root@compute-3.example.com/system
    enabled: false
    disabled_reason: "disk replacement, ticket 4711"

- name: Back in service
  virtfleet.compute.host:
    uri: qemu+ssh://root@compute-3.example.com/system
    enabled: true
"""

RETURN = r"""
host:
  description: The host record after the run (predicted in check mode), every field with its effective value.
  returned: always
  type: dict
  contains:
    enabled:
      description: Whether the host takes new servers.
      type: bool
      sample: true
    disabled_reason:
      description: Why it is disabled.
      type: str
    cpu_allocation_ratio:
      description: CPU allocation ratio.
      type: float
      sample: 16.0
    ram_allocation_ratio:
      description: RAM allocation ratio.
      type: float
      sample: 1.5
    disk_allocation_ratio:
      description: Disk allocation ratio.
      type: float
      sample: 1.0
    reserved_host_memory_mb:
      description: Reserved memory in MiB.
      type: int
      sample: 512
    reserved_host_cpus:
      description: Reserved CPUs.
      type: int
      sample: 0
    reserved_host_disk_mb:
      description: Reserved disk in MiB.
      type: int
      sample: 0
    disable_after_failed_builds:
      description: Consecutive failed builds that disable the host (0 never).
      type: int
      sample: 0
    availability_zone:
      description: Availability zone.
      type: str
      sample: nova
    aggregates:
      description: Aggregate name to metadata.
      type: dict
      sample: {"ssd-hosts": {"ssd": "true"}}
    traits:
      description: Custom traits.
      type: list
      elements: str
      sample: [CUSTOM_SSD]
    virt_type:
      description: The recorded KVM verdict (kvm, qemu or null).
      type: str
    virt_type_reasons:
      description: Why the host got that verdict.
      type: list
      elements: str
actions:
  description: The change made (or, in check mode, that would be made).
  returned: always
  type: list
  elements: str
  sample: ["update host record (enabled True -> False, disabled_reason None -> maintenance)"]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtfleet.compute.plugins.module_utils._host_record import converge_host
from ansible_collections.virtfleet.compute.plugins.module_utils._module import CONNECTION_ARGS, run_module


def main():
    argument_spec = dict(
        enabled=dict(type="bool"),
        disabled_reason=dict(type="str"),
        cpu_allocation_ratio=dict(type="float"),
        ram_allocation_ratio=dict(type="float"),
        disk_allocation_ratio=dict(type="float"),
        reserved_host_memory_mb=dict(type="int"),
        reserved_host_cpus=dict(type="int"),
        reserved_host_disk_mb=dict(type="int"),
        availability_zone=dict(type="str"),
        aggregates=dict(type="dict"),
        traits=dict(type="list", elements="str"),
        virt_type=dict(type="str", choices=["auto", "kvm", "qemu"]),
        virt_type_reasons=dict(type="list", elements="str"),
        disable_after_failed_builds=dict(type="int"),
    )
    argument_spec.update(CONNECTION_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    run_module(module, lambda client: converge_host(client, module.params, module.check_mode, module._diff))


if __name__ == "__main__":
    main()
