# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run Nova's own scheduler code on the differential test's cases; a script for the Nova virtualenv's Python.

Reads a JSON list of cases on stdin, writes a JSON list of answers on stdout. Nothing of this collection is
imported: the only code deciding here is Nova's (``SchedulerManager._schedule`` with its host manager, filter
and weight handlers, ``HostState.consume_from_request``, the filter and weigher classes). What Nova gets from
elsewhere is stood in for, plainly:

* placement: allocation candidates are the hosts whose inventory ``(total - reserved) * ratio`` (and
  ``max_unit = total``) holds one server of the request, with its required/forbidden traits and its zone's
  aggregate (Nova's request filters); a claim re-checks and consumes that inventory;
* the database: each host's ``HostState`` is filled from its record the way the resource tracker reports a
  compute node (reservations counted as used), server groups list their members and their hosts;
* the service group API: a host is up when its record says so.

A case: ``{"hosts": [...host records...], "requests": [{"servers": [names], "flavor": {...}, "group": {...},
"availability_zone", "hints", "host", "image_properties"}], "config": {...}}``. An answer: ``{"placed":
[[host, ...] per request], "failed": index of the request that raised NoValidHost or null}``.
"""

import json
import math
import random
import sys
import uuid
import warnings

warnings.simplefilter("ignore")

from nova import objects  # noqa: E402

objects.register_all()

import nova.conf  # noqa: E402
from nova import context as nova_context  # noqa: E402
from nova import exception  # noqa: E402
from nova.scheduler import filters as nova_filters  # noqa: E402
from nova.scheduler import host_manager  # noqa: E402
from nova.scheduler import manager as scheduler_manager  # noqa: E402
from nova.scheduler import weights as nova_weights  # noqa: E402

CONF = nova.conf.CONF
CONF([], project="nova", default_config_files=[])

# Our weigher order (see module_utils/_scheduler/weighers.py): Nova's own follows a directory listing.
WEIGHERS = ["RAMWeigher", "CPUWeigher", "DiskWeigher", "IoOpsWeigher", "NumInstancesWeigher",
            "HypervisorVersionWeigher", "BuildFailureWeigher", "ServerGroupSoftAffinityWeigher",
            "ServerGroupSoftAntiAffinityWeigher"]
NS = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")


def uid(kind, name):
    return str(uuid.uuid5(NS, "%s:%s" % (kind, name)))


class _ServiceGroup:
    @staticmethod
    def service_is_up(service):
        return service["up"]


class _Manager(scheduler_manager.SchedulerManager):
    placement_client = None  # never used: claims are answered by _Placement


def _number(record, key, default=0):
    value = record.get(key)
    return default if value is None else value


class _Placement:
    """Placement's inventories and usages, and its allocation candidates."""

    def __init__(self, hosts):
        self.inv = {}
        self.used = {}
        self.traits = {}
        self.zone = {}
        for h in hosts:
            hid = uid("host", h["name"])
            reserved_disk = int(math.ceil(_number(h, "reserved_host_disk_mb") / 1024.0))
            self.inv[hid] = {
                "VCPU": (h["vcpus"], _number(h, "reserved_host_cpus"), _number(h, "cpu_allocation_ratio", 16.0)),
                "MEMORY_MB": (h["memory_mb"], _number(h, "reserved_host_memory_mb", 512),
                              _number(h, "ram_allocation_ratio", 1.5)),
                "DISK_GB": (h["local_gb"], reserved_disk, _number(h, "disk_allocation_ratio", 1.0)),
            }
            self.used[hid] = {"VCPU": _number(h, "vcpus_used"), "MEMORY_MB": _number(h, "memory_mb_used"),
                              "DISK_GB": _number(h, "local_gb_used")}
            self.traits[hid] = set(h.get("traits") or ())
            self.zone[hid] = h.get("availability_zone")

    def fits(self, hid, resources):
        for rc, amount in resources.items():
            if not amount:
                continue
            total, reserved, ratio = self.inv[hid][rc]
            if amount > total or self.used[hid][rc] + amount > max(total - reserved, 0) * ratio:
                return False
        return True

    def candidates(self, hosts, resources, required, forbidden, zone):
        zones = set(self.zone.values())
        out = []
        for h in hosts:
            hid = uid("host", h["name"])
            if zone is not None and zone in zones and self.zone[hid] != zone:
                continue  # Nova's map_az_to_placement_aggregate: member_of the zone's aggregate, when there is one
            if required - self.traits[hid] or forbidden & self.traits[hid]:
                continue
            if self.fits(hid, resources):
                out.append(hid)
        return out

    def claim(self, hid, resources):
        if not self.fits(hid, resources):
            return False
        for rc, amount in resources.items():
            self.used[hid][rc] += amount
        return True


def _host_state(h, placement_used, instances):
    hs = host_manager.HostState(h["name"], h["name"], uid("cell", "cell1"))
    hs.uuid = uid("host", h["name"])
    reserved_mem = _number(h, "reserved_host_memory_mb", 512)
    reserved_cpus = _number(h, "reserved_host_cpus")
    # The resource tracker counts the reservations as used; free RAM may be negative.
    hs.free_ram_mb = h["memory_mb"] - (reserved_mem + _number(h, "memory_mb_used"))
    hs.total_usable_ram_mb = h["memory_mb"]
    free_disk_mb = (h["local_gb"] - _number(h, "local_gb_used")) * 1024 - _number(h, "reserved_host_disk_mb")
    if h.get("disk_available_least") is not None:
        free_disk_mb = min(h["disk_available_least"] * 1024, free_disk_mb)
    hs.free_disk_mb = free_disk_mb
    hs.total_usable_disk_gb = h["local_gb"]
    hs.vcpus_total = h["vcpus"]
    hs.vcpus_used = _number(h, "vcpus_used") + reserved_cpus
    hs.cpu_allocation_ratio = _number(h, "cpu_allocation_ratio", 16.0)
    hs.ram_allocation_ratio = _number(h, "ram_allocation_ratio", 1.5)
    hs.disk_allocation_ratio = _number(h, "disk_allocation_ratio", 1.0)
    hs.num_instances = max(_number(h, "running_vms"), len(h.get("servers") or ()))
    hs.num_io_ops = _number(h, "io_ops")
    hs.failed_builds = _number(h, "failed_builds")
    hs.hypervisor_type = h.get("hypervisor_type")
    hs.hypervisor_version = h.get("hypervisor_version")
    hs.hypervisor_hostname = h["name"]
    hs.cpu_info = json.dumps(h["cpu_info"]) if h.get("cpu_info") is not None else None
    hs.supported_instances = [list(x) for x in h.get("supported_instances") or ()]
    hs.stats = dict(h.get("stats") or {})
    hs.limits = {}
    hs.pci_stats = None
    hs.numa_topology = None
    aggregates = []
    for n, (name, metadata) in enumerate(sorted((h.get("aggregates") or {}).items())):
        aggregates.append(objects.Aggregate(id=n + 1, name=name, metadata={k: str(v) for k, v in metadata.items()}))
    if h.get("availability_zone"):
        aggregates.append(objects.Aggregate(id=1000, name="zone-" + h["availability_zone"],
                                            metadata={"availability_zone": h["availability_zone"]}))
    hs.aggregates = aggregates
    hs.instances = instances
    hs.service = host_manager.ReadOnlyDict({"disabled": not h.get("enabled", True), "up": h.get("up", True),
                                            "disabled_reason": h.get("disabled_reason")})
    return hs


def _configure(config):
    CONF.set_override("enabled_filters", config["enabled_filters"], "filter_scheduler")
    CONF.set_override("host_subset_size", 1, "filter_scheduler")
    CONF.set_override("shuffle_best_same_weighed_hosts", False, "filter_scheduler")
    CONF.set_override("max_instances_per_host", config["max_instances_per_host"], "filter_scheduler")
    CONF.set_override("max_io_ops_per_host", config["max_io_ops_per_host"], "filter_scheduler")
    for name, value in config["weights"].items():
        CONF.set_override(name + "_weight_multiplier", value, "filter_scheduler")
    CONF.set_override("max_attempts", 3, "scheduler")


def _handlers():
    hm = host_manager.HostManager.__new__(host_manager.HostManager)
    hm.filter_handler = nova_filters.HostFilterHandler()
    hm.filter_cls_map = {cls.__name__: cls for cls in hm.filter_handler.get_all_classes()}
    hm.filter_obj_map = {}
    hm.enabled_filters = hm._choose_host_filters(CONF.filter_scheduler.enabled_filters)
    for f in hm.enabled_filters:
        if hasattr(f, "servicegroup_api"):
            f.servicegroup_api = _ServiceGroup()
    hm.weight_handler = nova_weights.HostWeightHandler()
    by_name = {cls.__name__: cls for cls in hm.weight_handler.get_all_classes()}
    hm.weighers = [by_name[name]() for name in WEIGHERS]
    return hm


def run_case(case):
    _configure(case["config"])
    random.seed(0)
    hosts = case["hosts"]
    placement = _Placement(hosts)
    instances = {h["name"]: {} for h in hosts}
    groups = {}  # name -> {"members": [uuid], "hosts": [host]}
    for h in hosts:
        for server in h.get("servers") or ():
            iid = uid("server", server["name"])
            instances[h["name"]][iid] = objects.Instance(uuid=iid)
            if server.get("server_group"):
                g = groups.setdefault(server["server_group"], {"members": [], "hosts": []})
                g["members"].append(iid)
                if h["name"] not in g["hosts"]:
                    g["hosts"].append(h["name"])
    states = [_host_state(h, placement, instances[h["name"]]) for h in hosts]
    manager = _Manager.__new__(_Manager)
    manager.host_manager = _handlers()
    manager._cleanup_allocations = lambda context, uuids: None
    ctx = nova_context.RequestContext("admin", "admin", is_admin=True)

    def claim(_ctx, _client, spec_obj, instance_uuid, alloc_req, allocation_request_version=None):
        (hid, alloc), = alloc_req["allocations"].items()
        return placement.claim(hid, alloc["resources"])

    scheduler_manager.utils.claim_resources = claim
    answer = {"placed": [], "failed": None}
    for r, request in enumerate(case["requests"]):
        f = request["flavor"]
        resources = {"VCPU": f["vcpus"], "MEMORY_MB": f["ram_mb"],
                     "DISK_GB": f.get("disk_gb", 0) + f.get("ephemeral_gb", 0) + int(
                         math.ceil(f.get("swap_mb", 0) / 1024.0))}
        specs = f.get("extra_specs") or {}
        required = {k[6:] for k, v in specs.items() if k.startswith("trait:") and v == "required"}
        forbidden = {k[6:] for k, v in specs.items() if k.startswith("trait:") and v == "forbidden"}
        flavor = objects.Flavor(name=f["name"], flavorid=f["name"], vcpus=f["vcpus"], memory_mb=f["ram_mb"],
                                root_gb=f.get("disk_gb", 0), ephemeral_gb=f.get("ephemeral_gb", 0),
                                swap=f.get("swap_mb", 0), extra_specs={k: str(v) for k, v in specs.items()})
        iids = [uid("server", name) for name in request["servers"]]
        group = None
        if request.get("group"):
            g = groups.setdefault(request["group"]["name"], {"members": [], "hosts": []})
            g["members"].extend(iids)  # the API adds every server of the request before scheduling
            rules = request["group"].get("rules") or {}
            group = objects.InstanceGroup(
                uuid=uid("group", request["group"]["name"]), name=request["group"]["name"],
                policy=request["group"]["policy"], policies=[request["group"]["policy"]],
                rules={k: str(v) for k, v in rules.items()}, members=list(g["members"]), hosts=list(g["hosts"]))
        hints = {k: [uid("server", n) for n in v] for k, v in (request.get("hints") or {}).items() if v}
        image = objects.ImageMeta.from_dict({"properties": request.get("image_properties") or {}})
        destination = objects.Destination(host=request["host"], node=None) if request.get("host") else None
        spec = objects.RequestSpec(
            flavor=flavor, num_instances=len(iids), instance_uuid=iids[0], instance_group=group,
            scheduler_hints=hints, image=image, requested_destination=destination, ignore_hosts=None,
            force_hosts=None, force_nodes=None, requested_resources=[], availability_zone=request.get(
                "availability_zone"), project_id="p", user_id="u", numa_topology=None,
            pci_requests=objects.InstancePCIRequests(requests=[]))
        zone = request.get("availability_zone")
        rp_uuids = placement.candidates(hosts, resources, required, forbidden, zone)
        alloc_reqs = {rp: [{"allocations": {rp: {"resources": resources}}, "mappings": {}}] for rp in rp_uuids}
        summaries = {rp: {} for rp in rp_uuids}
        manager._get_all_host_states = lambda context, spec_obj, ps: iter(
            [hs for hs in states if hs.uuid in ps])
        try:
            selections = manager._schedule(ctx, spec, iids, alloc_reqs, summaries, "1.36", return_alternates=True)
        except exception.NoValidHost:
            answer["failed"] = r
            break
        chosen = [sel[0].service_host for sel in selections]
        answer["placed"].append(chosen)
        if group is not None:
            g = groups[request["group"]["name"]]
            for host in chosen:
                if host not in g["hosts"]:
                    g["hosts"].append(host)
    return answer


def main():
    cases = json.load(sys.stdin)
    json.dump([run_case(case) for case in cases], sys.stdout)


if __name__ == "__main__":
    main()
