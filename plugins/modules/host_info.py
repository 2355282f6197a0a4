#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: host_info
short_description: Show a libvirt host as Nova's hypervisor-show does, capacity and usage included
version_added: 0.1.0
description:
  - Returns the host's capacity and usage (vCPUs, memory, instance pool disk), capacity after allocation ratios and
    reservations, the host record (enabled or disabled with its reason, ratios, reservations, availability zone,
    aggregates, traits), the hypervisor type and version, the CPU model with its flags and the traits they give,
    the NUMA cells, the instance pool's real space, and the managed servers of the host.
  - Usage counts every domain of the host, running or not, managed or not. A managed server counts its flavor
    snapshot (vCPUs and RAM as defined, root + ephemeral + swap disk as its flavor has them); any other domain its
    vCPUs, its memory and the virtual size of its writable disks.
  - Disk usage also counts the volumes this collection made on the host (data volumes, disks saved by a shelve
    offload, rescue disks, base images copied for a migration) by capacity, on the filesystem they are on.
  - C(*_used) figures do not include reservations; reservations are taken off the capacity instead, as placement
    does (the capacity is total minus reserved, times the allocation ratio).
  - The result is the host record the scheduler lookup and the inventory plugin consume.
  - A host whose libvirt daemon cannot be reached does not make the module fail; it is returned with
    C(up=false), C(state=down) and the reason in C(error), so a loop over many hosts sees which ones are down.
author:
  - virtfleet.compute developers (@virtfleet)
extends_documentation_fragment:
  - virtfleet.compute.connection
attributes:
  check_mode:
    support: full
    description: Reads only; runs in check mode too.
  diff_mode:
    support: none
    description: Reads or checks only; there is nothing to diff.
  idempotent:
    support: full
    description: Never changes anything.
options:
  name:
    description: The name to report the host under (e.g. its inventory name). Omitted, libvirt's host name.
    type: str
  instance_pool:
    description: The storage pool whose space is the host's local disk (C(local_gb)).
    type: str
    default: virtfleet-instances
seealso:
  - module: virtfleet.compute.host
  - module: virtfleet.compute.flavor_info
"""

EXAMPLES = r"""
- name: Capacity and usage of this host
  virtfleet.compute.host_info:
  register: hv

- name: Free RAM after overcommit and reservations
  ansible.builtin.debug:
    msg: "{{ hv.host.capacity.memory_mb.free }} MB free of {{ hv.host.capacity.memory_mb.capacity }} MB"

- name: Every hypervisor of the inventory, from the controller
  virtfleet.compute.host_info:
    uri: "qemu+ssh://root@{{ item }}/system"
    name: "{{ item }}"
  loop: "{{ groups['compute'] }}"
  register: hypervisors
  delegate_to: localhost

- name: The ones that are down
  ansible.builtin.debug:
    msg: "{{ hypervisors.results | map(attribute='host') | rejectattr('up') | map(attribute='name') | list }}"
"""

RETURN = r"""
host:
  description: The host as Nova's hypervisor-show would describe it.
  returned: always
  type: dict
  contains:
    name:
      description: The name given in O(name), or libvirt's host name.
      type: str
      sample: compute-1
    hypervisor_hostname:
      description: libvirt's host name.
      type: str
    uri:
      description: The libvirt URI.
      type: str
      sample: "qemu:///system"
    up:
      description: Whether the libvirt daemon answered.
      type: bool
      sample: true
    state:
      description: V(up) or V(down).
      type: str
      sample: up
    error:
      description: Why the host is down.
      type: str
      returned: when the host is down
    enabled:
      description: Whether the host takes new servers.
      type: bool
      sample: true
    status:
      description: V(enabled) or V(disabled) (V(unknown) when down).
      type: str
      sample: enabled
    disabled_reason:
      description: Why it is disabled.
      type: str
    availability_zone:
      description: Availability zone.
      type: str
      sample: nova
    aggregates:
      description: Aggregate name to metadata.
      type: dict
    traits:
      description: Custom traits and the CPU's traits.
      type: list
      elements: str
    virt_type:
      description: The recorded KVM verdict (kvm, qemu or null).
      type: str
    record_stored:
      description: Whether the host has a stored record (else every value is a default).
      type: bool
    vcpus:
      description: Host CPUs.
      type: int
      sample: 8
    vcpus_used:
      description: vCPUs of all domains (a dedicated server's vCPUs included).
      type: int
      sample: 6
    pcpus_used:
      description:
        - Host CPUs held by servers whose flavor has C(hw:cpu_policy=dedicated), one per vCPU; they are never
          overcommitted (placement's PCPU resource class). A shelved server keeps its dedicated CPUs.
      type: int
      sample: 2
    pinned_cpus:
      description: The host CPUs dedicated servers are pinned to (the union of their C(pinned_cpus)).
      type: list
      elements: int
      sample: [2, 3]
    memory_mb:
      description: Host memory in MiB.
      type: int
      sample: 32000
    memory_mb_used:
      description: Memory of all domains in MiB (reservation not included).
      type: int
    local_gb:
      description: Size of the instance pool in GiB.
      type: int
    local_gb_used:
      description:
        - Disk claimed on the instance pool's filesystem in GiB (reservation not included) - every domain's disks
          and the volumes this collection made there (see RV(host.local_disk)).
      type: int
    local_disk:
      description: What takes the instance pool's filesystem, in GiB.
      type: dict
      contains:
        servers_gb:
          description: What managed servers claim (their flavors' root + ephemeral + swap).
          type: int
        volumes_gb:
          description: What the volumes this collection made claim there (RV(host.local_volumes), by capacity).
          type: int
        unmanaged_gb:
          description: The writable disks of domains this collection did not make, by virtual size.
          type: int
        used_gb:
          description: The sum, C(local_gb_used).
          type: int
        allocation_gb:
          description: What the instance pool's filesystem really holds now (libvirt's pool allocation).
          type: int
    local_volumes:
      description:
        - Every volume this collection made on the host outside servers' flavor disks, claimed by its capacity
          (whole GiB, rounded up) on the filesystem it is on.
      type: list
      elements: dict
      contains:
        kind:
          description: V(volume) (a data volume), V(shelved) (a disk a shelve offload saved), V(rescue) (a rescue
            disk) or V(image_copy) (a base image copied to this host for a migration).
          type: str
        owner:
          description: The volume or server it belongs to (null for an image copy).
          type: str
        pool:
          description: Its storage pool.
          type: str
        name:
          description: Its volume name.
          type: str
        capacity:
          description: What it may grow to, in bytes.
          type: int
        capacity_gb:
          description: What it claims, in whole GiB.
          type: int
        allocation:
          description: What it holds now, in bytes.
          type: int
        filesystem:
          description: Its index in RV(host.filesystems).
          type: int
    filesystems:
      description:
        - The filesystems the instance pool and the volumes are on; the first is the instance pool's. A pool on
          another filesystem is a capacity of its own, told apart by the capacity libvirt reports for the pool.
      type: list
      elements: dict
      contains:
        instance:
          description: Whether this is the instance pool's filesystem.
          type: bool
        pools:
          description: The pools on it that hold volumes of this collection (and the instance pool).
          type: list
          elements: str
        capacity_bytes:
          description: The pools' capacity as libvirt reports it.
          type: int
        total_gb:
          description: Its size in GiB.
          type: int
        reserved_gb:
          description: Reserved for the host (C(reserved_host_disk_mb)); on the instance filesystem only.
          type: int
        allocation_ratio:
          description: The disk allocation ratio.
          type: float
        capacity_gb:
          description: C((total_gb - reserved_gb) * allocation_ratio).
          type: float
        used_gb:
          description: What is claimed on it.
          type: int
        volumes_gb:
          description: What the volumes on it claim.
          type: int
        free_gb:
          description: C(capacity_gb - used_gb).
          type: float
        allocation_gb:
          description: What it really holds now.
          type: int
    free_ram_mb:
      description: C(memory_mb - memory_mb_used).
      type: int
    free_disk_gb:
      description: C(local_gb - local_gb_used).
      type: int
    disk_available_least:
      description: Space really free in the instance pool, in GiB.
      type: int
    cpu_allocation_ratio:
      description: CPU allocation ratio.
      type: float
    ram_allocation_ratio:
      description: RAM allocation ratio.
      type: float
    disk_allocation_ratio:
      description: Disk allocation ratio.
      type: float
    reserved_host_memory_mb:
      description: Reserved memory in MiB.
      type: int
    reserved_host_cpus:
      description: Reserved CPUs.
      type: int
    reserved_host_disk_mb:
      description: Reserved disk in MiB.
      type: int
    capacity:
      description:
        - Per resource (C(vcpus), C(memory_mb), C(disk_gb), C(pcpus)) the total, reserved, allocation_ratio,
          capacity (after reservation and ratio), used, free (capacity - used, negative when over) and max_unit (the
          largest single server).
        - C(pcpus) are the host CPUs dedicated servers can have, the host's CPUs less C(reserved_host_cpus), at
          ratio 1.0.
      type: dict
    running_vms:
      description: Running domains of any kind.
      type: int
      sample: 3
    servers:
      description: The managed servers of the host (running or not).
      type: list
      elements: dict
      contains:
        name:
          description: Server name.
          type: str
        uuid:
          description: Domain UUID.
          type: str
        state:
          description: V(running) or V(stopped).
          type: str
        flavor:
          description: Name of its flavor snapshot.
          type: str
        vcpus:
          description: vCPUs it takes.
          type: int
        memory_mb:
          description: Memory it takes, in MiB.
          type: int
        disk_gb:
          description: Disk it takes, in GiB.
          type: int
        pcpus:
          description: Host CPUs it holds alone (C(hw:cpu_policy=dedicated)), else 0.
          type: int
        pinned_cpus:
          description: The host CPUs its vCPUs are pinned to, sorted (dedicated servers only; empty otherwise).
          type: list
          elements: int
        server_group:
          description: Its server group, when it has one.
          type: str
    unmanaged_domains:
      description: Domains not made by this collection, with what they take (name, uuid, state, vcpus, memory_mb,
        disk_gb).
      type: list
      elements: dict
    instance_pool:
      description: The instance pool (name, found, capacity, allocation, available in bytes and in whole GiB).
      type: dict
    hypervisor_type:
      description: libvirt's driver type.
      type: str
      sample: QEMU
    hypervisor_version:
      description: Hypervisor version.
      type: str
      sample: 7.2.0
    libvirt_version:
      description: libvirt version.
      type: str
      sample: 9.0.0
    host_uuid:
      description: libvirt's host UUID.
      type: str
    cpu:
      description: The host CPU - arch, model, vendor, topology, flags (the model's features and the extra ones) and
        the traits Nova derives from them.
      type: dict
    numa_cells:
      description: NUMA cells - id, memory_mb, cpus (host CPU ids) and pages (size_kb, count).
      type: list
      elements: dict
    features:
      description:
        - What the host can do for flavor extra specs that need a host feature. The server module refuses such a
          flavor while planning (check mode too), naming the extra spec and what the host lacks, and the
          scheduler's C(HostFeaturesFilter) leaves the host out.
        - C(huge_pages) - per huge page size (C(size_kb)), the C(total) and C(free) pages summed over the NUMA cells;
          C(hw:mem_page_size) needs RAM / size free pages of its size (C(large) - the smallest huge page size).
        - C(bandwidth_shaping) - C(supported) true, false or null (unknown) and a C(reason). C(quota:vif_*) extra
          specs need the htb, sfq and ingress queueing disciplines libvirt shapes NIC traffic with. It is probed
          (in a throw-away network namespace) only when the host is the machine the module runs on and the module
          runs as root; otherwise it is null and nothing is refused for it.
      type: dict
      sample:
        huge_pages: [{size_kb: 2048, total: 512, free: 384}, {size_kb: 1048576, total: 0, free: 0}]
        bandwidth_shaping: {supported: false, reason: the kernel lacks the sfq queueing discipline libvirt shapes
          NIC traffic with (Error - Specified qdisc kind is unknown.)}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtfleet.compute.plugins.module_utils._host_info import host_info
from ansible_collections.virtfleet.compute.plugins.module_utils._module import CONNECTION_ARGS, run_module


def main():
    argument_spec = dict(
        name=dict(type="str"),
        instance_pool=dict(type="str", default="virtfleet-instances"),
    )
    argument_spec.update(CONNECTION_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    run_module(module, lambda client: {
        "changed": False,
        "host": host_info(client, name=module.params["name"], instance_pool=module.params["instance_pool"]),
    })


if __name__ == "__main__":
    main()
