# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: scheduler
author:
  - virtfleet.compute developers (@virtfleet)
version_added: 0.1.0
short_description: Choose a hypervisor for each server, the way Nova's filter scheduler does
description:
  - Places a batch of servers on libvirt hosts with OpenStack Nova's semantics (Nova 34, checked against Nova's own
    filter and weigher code by a differential test). Filters remove the hosts that cannot take a server; weighers
    rank the others; the best host (or a random one of the O(host_subset_size) best) is chosen, with
    O(alternates) next-best hosts.
  - "Filters: C(ComputeFilter) (host enabled and up), C(AvailabilityZoneFilter) (Nova's zone request filter),
    C(AggregateInstanceExtraSpecsFilter) (flavor extra specs C(aggregate_instance_extra_specs:KEY) against the
    metadata of the host's aggregates, with Nova's operators such as C(<in>), C(<or>), C(>=), C(s==)),
    C(ComputeCapabilitiesFilter) (extra specs C(capabilities:KEY[:SUBKEY]) against the host's
    C(hypervisor_type), C(hypervisor_version), C(cpu_info) and C(stats)), C(ImagePropertiesFilter) (the server's
    image properties C(hw_architecture), C(img_hv_type), C(hw_vm_mode), C(img_hv_requested_version) against the
    host's supported instance types and hypervisor version), C(TraitsFilter) (flavor extra specs
    C(trait:NAME=required|forbidden)), C(HostFeaturesFilter) (C(hw:mem_page_size) needs enough free huge pages of
    its size, C(quota:vif_*) a kernel that can shape NIC traffic, as the host's C(features) report them; a host that
    does not report them passes), C(RamFilter), C(CoreFilter) and C(DiskFilter) (placement's capacity after
    allocation ratios and reservations), C(DedicatedCpuFilter) (a flavor with C(hw:cpu_policy=dedicated) needs
    that many host CPUs no other dedicated server holds, never overcommitted; placement's PCPU resource class),
    C(NumInstancesFilter), C(IoOpsFilter) (opt-in, as in Nova), C(ServerGroupAntiAffinityFilter),
    C(ServerGroupAffinityFilter), C(SameHostFilter) and C(DifferentHostFilter)."
  - Capacity is placement's, per resource C(total - reserved) times C(allocation_ratio), and no server may be
    larger than its host's physical total. A flavor needs C(disk_gb + ephemeral_gb) GB of disk plus its swap,
    C(swap_mb / 1024) rounded up. Missing host fields default to this collection's ratios, CPU 16.0, RAM 1.5,
    disk 1.0 (Nova's defaults until 2023.1; Nova 2023.1 and later start new compute nodes at 4.0, 1.0, 1.0), 512 MB
    reserved memory, everything else 0. Dedicated CPUs are C(vcpus - reserved_host_cpus) per host, used
    C(pcpus_used) (as host_info reports it).
  - "Weighers, as Nova's: RAM (free RAM as Nova's HostState reports it: C(memory_mb - reserved - used), physical),
    vCPU (C(vcpus * ratio - (used + reserved))), disk (free disk, at most C(disk_available_least)), I/O operations
    in flight (each placement of the batch counts one, so the default -1.0 spreads the servers of a request),
    instance count, hypervisor version (newer preferred), recent build failures (C(failed_builds)), soft affinity
    and soft anti-affinity. Each is normalized to 0..1 over the hosts that passed the filters, multiplied by its
    multiplier and summed. An aggregate's metadata C(<weigher>_weight_multiplier) overrides a multiplier for its
    hosts (the smallest value wins when several aggregates set it)."
  - Servers are placed in order. Consecutive servers with the same request shape (flavor, server group, zone,
    hints, host, image properties), or with the same C(request) id, form one request, as a Nova multi-create
    does. Like Nova, the hosts of a request are the ones that could hold one server when the request started;
    later servers of the request are weighed over them all (a host filled by the request still counts for the
    normalization but is not chosen), and equal weights keep the order of the previous server's ranking.
  - Each placement consumes capacity and counts for server groups, hints, instance and I/O counts of the servers
    that follow. A server whose name is already in a host's C(servers) keeps that host (RV(_list[].existing) is
    true) and is not placed again; it still counts for its group.
  - When a server cannot be placed the lookup fails, naming for every host the filter that rejected it and why,
    with the numbers. Like a Nova multi-create request, the whole batch fails; set O(allow_unplaced) to get the
    unplaced servers back with their reasons instead.
  - The lookup only computes. It changes nothing on any host; the claim made when a server is built re-checks the
    capacity on the host itself.
options:
  _terms:
    description:
      - Server requests, as an alternative to O(servers). Each is a dict or a list of dicts.
    type: list
    elements: raw
    required: false
  allow_unplaced:
    description:
      - When true, servers that cannot be placed are returned with RV(_list[].host) null and their
        RV(_list[].reasons), and the rest of the batch is still placed.
      - When false, the first server that cannot be placed fails the lookup, and with it the whole batch.
    type: bool
    default: false
  alternates:
    description:
      - How many next-best hosts to return with each placement, for a retry when the claim on the chosen host fails.
    type: int
    default: 2
  build_failure_weight_multiplier:
    description:
      - Multiplier of Nova's BuildFailureWeigher, subtracted per recent failed build on a host (its record's
        C(failed_builds)). Nova's default puts any host with a failure behind every host without one.
    type: float
    default: 1000000.0
  cpu_weight_multiplier:
    description:
      - Multiplier of the vCPU weigher. Positive spreads, negative stacks.
    type: float
    default: 1.0
  default_availability_zone:
    description:
      - The availability zone of hosts that do not name one.
    type: str
    default: nova
  disk_weight_multiplier:
    description:
      - Multiplier of the disk weigher. Positive spreads, negative stacks.
    type: float
    default: 1.0
  enabled_filters:
    description:
      - The filters to run, in order. The order only decides which filter a rejected host is reported under.
    type: list
    elements: str
    default:
      - ComputeFilter
      - AvailabilityZoneFilter
      - AggregateInstanceExtraSpecsFilter
      - ComputeCapabilitiesFilter
      - ImagePropertiesFilter
      - TraitsFilter
      - HostFeaturesFilter
      - RamFilter
      - CoreFilter
      - DiskFilter
      - DedicatedCpuFilter
      - NumInstancesFilter
      - ServerGroupAntiAffinityFilter
      - ServerGroupAffinityFilter
      - SameHostFilter
      - DifferentHostFilter
  host_subset_size:
    description:
      - Choose at random among this many best-weighed hosts. C(1) always takes the best one. Larger values reduce
        collisions when several runs schedule at the same time.
    type: int
    default: 1
  hosts:
    description:
      - The candidate hosts. Either a list of host records as C(virtfleet.compute.host_info) returns them, or a
        dict of host variables keyed by inventory hostname, such as C(hostvars) or C(hostvars) restricted to a
        group.
      - "A host record: C(name), C(up), C(enabled), C(disabled_reason), C(availability_zone), C(aggregates)
        (aggregate name to metadata dict), C(traits), C(vcpus), C(vcpus_used), C(memory_mb), C(memory_mb_used),
        C(local_gb), C(local_gb_used), C(cpu_allocation_ratio), C(ram_allocation_ratio), C(disk_allocation_ratio),
        C(reserved_host_memory_mb), C(reserved_host_cpus), C(reserved_host_disk_mb), C(servers) (the managed
        servers already there, each with C(name) and C(server_group)) and C(running_vms). The C(*_used) numbers
        count every domain on the host, managed or not."
      - "Optional: C(hypervisor_type), C(hypervisor_version) (an integer such as C(7002000) or C(7.2.0)),
        C(cpu) or C(cpu_info) (C(arch), C(vendor), ...), C(virt_type), C(supported_instances) (a list of
        C([architecture, hypervisor type, vm mode]); derived from C(cpu.arch) and C(virt_type) when missing),
        C(stats), C(disk_available_least), C(io_ops) (I/O operations in flight) and C(failed_builds)."
      - With a dict, its keys are the host names. Entries without a host record (none of C(vcpus), C(memory_mb),
        C(local_gb), or no O(hostvar) variable) are not hypervisors and are skipped, so C(hostvars) can be passed
        whole.
    type: raw
    required: true
  hostvar:
    description:
      - When O(hosts) is a dict of host variables, the name of the variable holding each host's record.
      - When not set, the host variables themselves are the record.
    type: str
  hypervisor_version_weight_multiplier:
    description:
      - Multiplier of Nova's HypervisorVersionWeigher (the host's C(hypervisor_version)). Positive prefers newer
        hypervisors, negative older ones.
    type: float
    default: 1.0
  io_ops_weight_multiplier:
    description:
      - Multiplier of Nova's IoOpsWeigher (I/O operations in flight; every placement of the batch counts one).
        Negative prefers quiet hosts and spreads the servers of a request; C(0) leaves it out.
    type: float
    default: -1.0
  match_unscoped_extra_specs:
    description:
      - When true, flavor extra specs without a scope are matched against aggregate metadata and host
        capabilities, as Nova does. When false, only C(aggregate_instance_extra_specs:) and C(capabilities:)
        scoped keys are, so extra specs meant for other things never filter hosts by accident.
    type: bool
    default: false
  max_instances_per_host:
    description:
      - The limit of C(NumInstancesFilter). A host's count is the larger of C(running_vms) and its number of managed
        servers, plus the servers placed on it in this batch.
    type: int
    default: 50
  max_io_ops_per_host:
    description:
      - The limit of C(IoOpsFilter) (Nova's default 8).
    type: int
    default: 8
  num_instances_weight_multiplier:
    description:
      - Multiplier of the instance-count weigher. Negative prefers hosts with fewer servers, positive hosts with
        more. C(0), Nova's default, leaves the count out.
    type: float
    default: 0.0
  ram_weight_multiplier:
    description:
      - Multiplier of the RAM weigher. Positive spreads, negative stacks.
    type: float
    default: 1.0
  resource_weighers:
    description:
      - What the RAM, vCPU and disk weighers weigh. C(nova) is what Nova's HostState reports (reservations count as
        used, RAM and disk physical, vCPUs times the allocation ratio). C(allocation) is free capacity after
        allocation ratios and reservations, placement's view, which ranks hosts differently when ratios are not 1.0
        or reservations differ.
    type: str
    choices: [nova, allocation]
    default: nova
  restrict_default_availability_zone:
    description:
      - When true, a server asking for the default zone (O(default_availability_zone)) goes only to hosts without
        a zone. When false it may go anywhere, as in Nova 34, whose zone request filter finds no aggregate for the
        default zone and restricts nothing.
    type: bool
    default: true
  seed:
    description:
      - Seed of the random choice among the O(host_subset_size) best hosts. The same seed and the same input give
        the same answer. Unset, every run draws a new seed.
    type: raw
  servers:
    description:
      - "The servers to place, in order. Each is a dict: C(name) (required); C(flavor) (required: C(name),
        C(vcpus), C(ram_mb), C(disk_gb), C(swap_mb), C(ephemeral_gb), C(extra_specs)); C(server_group) (null or
        C(name) and C(policy), one of C(affinity), C(anti-affinity), C(soft-affinity), C(soft-anti-affinity), and for
        C(anti-affinity) optional C(rules.max_server_per_host)); C(availability_zone); C(hints) (C(same_host) and
        C(different_host), lists of server names); C(host) (run the server on this host if it passes the filters);
        C(image_properties) (C(hw_architecture), C(img_hv_type), C(hw_vm_mode), C(img_hv_requested_version));
        C(request) (an id: consecutive servers with the same id form one multi-server request)."
    type: list
    elements: dict
  shuffle_best_same_weighed_hosts:
    description:
      - Nova's option of the same name. When true, the choice is random among the hosts that share the best weight,
        which lowers collisions between runs scheduling at the same time on identical hosts.
    type: bool
    default: false
  soft_affinity_weight_multiplier:
    description:
      - Multiplier of the weigher that draws servers of a C(soft-affinity) group to the hosts holding members.
        Must not be negative.
    type: float
    default: 1.0
  soft_anti_affinity_weight_multiplier:
    description:
      - Multiplier of the weigher that keeps servers of a C(soft-anti-affinity) group away from the hosts holding
        members. Must not be negative.
    type: float
    default: 1.0
notes:
  - Use C(query()) or C(lookup(..., wantlist=true)) so a batch of one still comes back as a list.
  - Scheduling 10,000 servers on 1,000 hosts takes under a second on two cores (bench/results/scheduler.md).
  - "Differences from Nova 34, each with the option that gives Nova's behaviour where there is one: asking for the
    default zone keeps to hosts without a zone (O(restrict_default_availability_zone)); only scoped extra specs
    are matched against aggregates and capabilities (O(match_unscoped_extra_specs)); the default filter list adds
    placement's checks, the zone, aggregate, instance-count and hint filters (O(enabled_filters)); a requested
    host runs through the filters (Nova's API 2.74); alternates are per server the next best hosts that still fit;
    with O(allow_unplaced) the rest of a request is still placed. The full list with reasons is C(DEVIATIONS) in
    plugins/module_utils/_scheduler/scheduler.py and docs/design.md."
  - "To stack servers (fill one host before the next) set the RAM, vCPU and disk multipliers negative and
    O(io_ops_weight_multiplier) to C(0): Nova's I/O weigher spreads the servers of one request."
seealso:
  - name: Nova filter scheduler
    description: The filters and weighers this lookup follows.
    link: https://docs.openstack.org/nova/latest/admin/scheduling.html
"""

EXAMPLES = r"""
- name: Place the web tier, three servers kept on different hosts
  ansible.builtin.set_fact:
    placements: >-
      {{ query('virtfleet.compute.scheduler',
               servers=web_servers,
               hosts=hostvars | dict2items | selectattr('key', 'in', groups['hypervisors']) | items2dict,
               seed=42) }}
  vars:
    web_servers:
      - name: web-1
        flavor: {name: m1.small, vcpus: 1, ram_mb: 2048, disk_gb: 20}
        server_group: {name: web, policy: anti-affinity}
      - name: web-2
        flavor: {name: m1.small, vcpus: 1, ram_mb: 2048, disk_gb: 20}
        server_group: {name: web, policy: anti-affinity}
      - name: web-3
        flavor: {name: m1.small, vcpus: 1, ram_mb: 2048, disk_gb: 20}
        server_group: {name: web, policy: anti-affinity}

- name: Report where each server goes
  ansible.builtin.debug:
    msg: "{{ item.name }} -> {{ item.host }} (alternates {{ item.alternates | join(', ') }})"
  loop: "{{ placements }}"

- name: Stack servers on as few hosts as possible, from host_info records
  ansible.builtin.set_fact:
    placements: >-
      {{ query('virtfleet.compute.scheduler', servers=batch, hosts=host_records,
               ram_weight_multiplier=-1.0, cpu_weight_multiplier=-1.0, disk_weight_multiplier=-1.0,
               io_ops_weight_multiplier=0.0) }}

- name: Place what fits, list what does not
  ansible.builtin.set_fact:
    placements: "{{ query('virtfleet.compute.scheduler', servers=batch, hosts=host_records, allow_unplaced=true) }}"

- name: Fail with the reasons if anything was left out
  ansible.builtin.assert:
    that: placements | selectattr('host', 'none') | list | length == 0
    fail_msg: "{{ placements | selectattr('host', 'none') | map(attribute='reasons') | list }}"
"""

RETURN = r"""
_list:
  description: One placement per server, in the order of the request.
  type: list
  elements: dict
  contains:
    name:
      description: The server's name.
      type: str
      sample: web-1
    host:
      description: The chosen host; null when the server could not be placed (only with O(allow_unplaced)).
      type: str
      sample: kvm-02
    alternates:
      description: The next-best hosts that also passed the filters, best first.
      type: list
      elements: str
      sample: [kvm-05, kvm-01]
    existing:
      description: True when the server already exists on RV(_list[].host) and was not placed again.
      type: bool
      sample: false
    reasons:
      description: For an unplaced server, each host's rejecting filter and why; empty otherwise.
      type: dict
      sample:
        kvm-01: "RamFilter: requested 4096 MB, free 1024 MB of capacity 23808 MB (used 22784 MB)"
        kvm-02: "ComputeFilter: host is disabled (maintenance)"
"""

# Ansible's plugin layout puts the documentation first, the imports after it.
from collections.abc import Mapping  # noqa: E402

from ansible.errors import AnsibleLookupError  # noqa: E402
from ansible.plugins.lookup import LookupBase  # noqa: E402

from ansible_collections.virtfleet.compute.plugins.module_utils._scheduler import scheduler as _scheduler  # noqa: E402

# Only these variables are read from each host: the rest of hostvars is never touched (nor templated).
HOST_KEYS = (
    "name", "up", "enabled", "disabled_reason", "availability_zone", "aggregates", "traits",
    "vcpus", "vcpus_used", "memory_mb", "memory_mb_used", "local_gb", "local_gb_used", "pcpus_used",
    "cpu_allocation_ratio", "ram_allocation_ratio", "disk_allocation_ratio",
    "reserved_host_memory_mb", "reserved_host_cpus", "reserved_host_disk_mb",
    "servers", "running_vms",
    "hypervisor_type", "hypervisor_version", "hypervisor_hostname", "cpu", "cpu_info", "virt_type",
    "supported_instances", "stats", "disk_available_least", "io_ops", "failed_builds",
)
_CAPACITY_KEYS = ("vcpus", "memory_mb", "local_gb")


def host_records(hosts, hostvar=None):
    """Host records from a list of records or from a dict of host variables keyed by inventory hostname."""
    if isinstance(hosts, Mapping):
        records = []
        for name in hosts:
            variables = hosts[name]
            record = variables.get(hostvar) if hostvar and isinstance(variables, Mapping) else variables
            if not isinstance(record, Mapping) or not any(key in record for key in _CAPACITY_KEYS):
                continue
            entry = {key: record[key] for key in HOST_KEYS if key in record}
            entry["name"] = str(name)
            records.append(entry)
        return records
    if isinstance(hosts, (list, tuple)):
        return list(hosts)
    raise AnsibleLookupError("hosts must be a list of host records or a dict of host variables, got %s"
                             % type(hosts).__name__)


class LookupModule(LookupBase):

    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        servers = self.get_option("servers")
        from_terms = []
        for term in terms or []:
            from_terms.extend(term if isinstance(term, (list, tuple)) else [term])
        if from_terms and servers:
            raise AnsibleLookupError("give the servers either as terms or as the servers option, not both")
        servers = from_terms or servers or []

        weights = {name: self.get_option(name + "_weight_multiplier")
                   for name in _scheduler.Weights.__dataclass_fields__}
        try:
            placements = _scheduler.schedule(
                servers,
                host_records(self.get_option("hosts"), self.get_option("hostvar")),
                weights=weights,
                enabled_filters=self.get_option("enabled_filters"),
                host_subset_size=self.get_option("host_subset_size"),
                seed=self.get_option("seed"),
                alternates=self.get_option("alternates"),
                max_instances_per_host=self.get_option("max_instances_per_host"),
                max_io_ops_per_host=self.get_option("max_io_ops_per_host"),
                default_availability_zone=self.get_option("default_availability_zone"),
                restrict_default_availability_zone=self.get_option("restrict_default_availability_zone"),
                match_unscoped_extra_specs=self.get_option("match_unscoped_extra_specs"),
                resource_weighers=self.get_option("resource_weighers"),
                shuffle_best_same_weighed_hosts=self.get_option("shuffle_best_same_weighed_hosts"),
                allow_unplaced=self.get_option("allow_unplaced"),
            )
        except _scheduler.NoValidHost as exc:
            raise AnsibleLookupError(str(exc)) from exc
        except _scheduler.SchedulerInputError as exc:
            raise AnsibleLookupError("invalid scheduler input: %s" % exc) from exc
        return [placement.to_dict() for placement in placements]
