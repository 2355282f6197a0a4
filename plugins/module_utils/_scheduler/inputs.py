# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The scheduler's inputs, checked and turned into plain data: server requests and the table of hosts.

Every malformed value raises :class:`SchedulerInputError` naming its path (``servers[3].flavor.vcpus``,
``hosts[0].aggregates.fast.ram_weight_multiplier``) before anything is placed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from ansible_collections.virtfleet.compute.plugins.module_utils import _capacity, _host_features
from ansible_collections.virtfleet.compute.plugins.module_utils._scheduler import weighers as W
from ansible_collections.virtfleet.compute.plugins.module_utils._scheduler.errors import SchedulerInputError

POLICIES = ("affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity")
RESOURCES = _capacity.RESOURCES  # index 0 vcpus, 1 memory_mb, 2 disk_gb, 3 pcpus

AGG_SCOPE = "aggregate_instance_extra_specs"
CAPS_SCOPE = "capabilities"
TRAIT_SCOPE = "trait:"
# The image properties Nova's ImagePropertiesFilter reads.
IMAGE_PROPERTIES = ("hw_architecture", "img_hv_type", "hw_vm_mode", "img_hv_requested_version")


@dataclass
class Request:
    """One server to place, parsed. ``key`` says which multi-create request it belongs to (see ``schedule``)."""

    name: str
    flavor_name: str
    res: tuple  # (vcpus, memory_mb, disk_gb, pcpus): what placement (and the claim) takes
    weigh_use: tuple  # what a placement takes from each weigher value in ``weighers.ORDER`` terms: (ram, cpu, disk)
    az: str | None = None
    agg_specs: tuple = ()  # ((key, requirement), ...)
    caps_specs: tuple = ()  # ((scope tuple, requirement), ...)
    required_traits: frozenset = frozenset()
    forbidden_traits: frozenset = frozenset()
    image: tuple = ()  # ((property, value), ...) of IMAGE_PROPERTIES
    features: tuple = ()  # ((extra spec, value), ...) that need a host feature (huge pages, NIC shaping)
    group: str | None = None
    policy: str | None = None
    max_per_host: int = 1
    same_host: tuple = ()
    different_host: tuple = ()
    host: str | None = None
    key: object = None

    def static_key(self):
        return (self.az, self.agg_specs, self.caps_specs, self.required_traits, self.forbidden_traits, self.image,
                self.features, self.res[1] if self.features else None)


def text(value):
    # YAML turns "true" into a bool; Nova stores metadata and extra specs as strings, compare them as such.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def as_bool(value, where):
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.strip().lower() in ("true", "yes", "on", "1")
    raise SchedulerInputError("must be a boolean, got %r" % (value,), where)


def _names(value, where):
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple, set, frozenset)):
        return tuple(str(v) for v in value)
    raise SchedulerInputError("must be a server name or a list of names", where)


def group_name(value):
    if value is None or value == "":
        return None
    if isinstance(value, Mapping):
        return str(value["name"]) if value.get("name") else None
    return str(value)


def parse_flavor(flavor, where, match_unscoped, resource_weighers):
    if not isinstance(flavor, Mapping):
        raise SchedulerInputError("must be a flavor dict (vcpus, ram_mb, disk_gb, ...)", where)
    for key in ("vcpus", "ram_mb"):
        if key not in flavor:
            raise SchedulerInputError("is required", "%s.%s" % (where, key))
    try:
        res = _capacity.resources_from_flavor(flavor)
    except ValueError as exc:
        raise SchedulerInputError(str(exc), where)
    specs = flavor.get("extra_specs") or {}
    if not isinstance(specs, Mapping):
        raise SchedulerInputError("must be a dict", where + ".extra_specs")
    agg, caps, required, forbidden = [], [], set(), set()
    for key, value in specs.items():
        key = str(key)
        if key.startswith(TRAIT_SCOPE):
            want = text(value).lower()
            if want == "required":
                required.add(key[len(TRAIT_SCOPE):])
            elif want == "forbidden":
                forbidden.add(key[len(TRAIT_SCOPE):])
            else:
                raise SchedulerInputError("must be 'required' or 'forbidden'", "%s.extra_specs.%s" % (where, key))
            continue
        # Nova's filters split differently: the aggregate filter on the first colon, the capabilities filter on
        # every colon (capabilities:cpu_info:arch walks into cpu_info).
        agg_scope = key.split(":", 1)
        if len(agg_scope) > 1 and agg_scope[0] == AGG_SCOPE:
            agg.append((agg_scope[1], text(value)))
        elif len(agg_scope) == 1 and match_unscoped:
            agg.append((key, text(value)))
        scope = key.split(":")
        if len(scope) > 1 and scope[0] == CAPS_SCOPE:
            caps.append((tuple(scope[1:]), text(value)))
        elif len(scope) == 1 and match_unscoped:
            caps.append(((key,), text(value)))
    if flavor.get("extra_specs") and "hw:maxphysaddr_bits" in specs:
        # Nova turns this spec into a capabilities requirement on the host CPU.
        caps.append((("cpu_info", "maxphysaddr", "bits"), ">= " + text(specs["hw:maxphysaddr_bits"])))
    disk_gb = _capacity._number(flavor, "disk_gb", 0, "flavor")
    ephemeral = _capacity._number(flavor, "ephemeral_gb", 0, "flavor")
    if resource_weighers == "nova":
        # Nova's HostState.consume_from_request: RAM and vCPUs, and (root + ephemeral) * 1024 MB of disk.
        weigh_use = (res["memory_mb"], res["vcpus"], (disk_gb + ephemeral) * 1024)
    else:
        weigh_use = (res["memory_mb"], res["vcpus"], res["disk_gb"])
    return (
        str(flavor.get("name") or ""),
        (res["vcpus"], res["memory_mb"], res["disk_gb"], res["pcpus"]),
        weigh_use,
        tuple(sorted(agg)),
        tuple(sorted(caps)),
        frozenset(required),
        frozenset(forbidden),
        tuple(sorted(_host_features.feature_specs(dict((str(k), text(v)) for k, v in specs.items())).items())),
    )


def parse_server(server, where, options, flavor_cache):
    if not isinstance(server, Mapping):
        raise SchedulerInputError("must be a server request dict", where)
    name = server.get("name")
    if not name or not isinstance(name, str):
        raise SchedulerInputError("is required and must be a string", where + ".name")
    flavor = server.get("flavor")
    # Batches reuse a handful of flavor dicts; parse each once.
    parsed = flavor_cache.get(id(flavor))
    if parsed is None or parsed[0] is not flavor:
        parsed = (flavor, parse_flavor(flavor, where + ".flavor", options.match_unscoped_extra_specs,
                                       options.resource_weighers))
        flavor_cache[id(flavor)] = parsed
    flavor_name, res, weigh_use, agg, caps, required, forbidden, features = parsed[1]
    req = Request(name=name, flavor_name=flavor_name, res=res, weigh_use=weigh_use, agg_specs=agg, caps_specs=caps,
                  required_traits=required, forbidden_traits=forbidden, features=features)
    az = server.get("availability_zone")
    req.az = str(az) if az not in (None, "") else None
    group = server.get("server_group")
    if group not in (None, "", {}):
        if not isinstance(group, Mapping) or not group.get("name"):
            raise SchedulerInputError("must be a dict with name and policy", where + ".server_group")
        policy = group.get("policy")
        if policy not in POLICIES:
            raise SchedulerInputError("must be one of %s, got %r" % (", ".join(POLICIES), policy),
                                      where + ".server_group.policy")
        req.group, req.policy = str(group["name"]), policy
        rules = group.get("rules") or {}
        if rules.get("max_server_per_host") is not None:
            if policy != "anti-affinity":
                raise SchedulerInputError("only applies to the anti-affinity policy",
                                          where + ".server_group.rules.max_server_per_host")
            try:
                req.max_per_host = int(rules["max_server_per_host"])
            except (TypeError, ValueError):
                req.max_per_host = 0
            if req.max_per_host < 1:
                raise SchedulerInputError("must be an integer >= 1", where + ".server_group.rules.max_server_per_host")
    hints = server.get("hints") or {}
    if not isinstance(hints, Mapping):
        raise SchedulerInputError("must be a dict", where + ".hints")
    req.same_host = _names(hints.get("same_host"), where + ".hints.same_host")
    req.different_host = _names(hints.get("different_host"), where + ".hints.different_host")
    host = server.get("host")
    req.host = str(host) if host not in (None, "") else None
    image = server.get("image_properties")
    if image is None and isinstance(server.get("image"), Mapping):
        image = server["image"].get("properties")
    if image not in (None, {}):
        if not isinstance(image, Mapping):
            raise SchedulerInputError("must be a dict of image properties", where + ".image_properties")
        req.image = tuple(sorted((k, text(image[k])) for k in IMAGE_PROPERTIES if image.get(k) not in (None, "")))
    explicit = server.get("request")
    shape = (flavor_name, res, agg, caps, required, forbidden, req.az, req.group, req.policy, req.max_per_host,
             req.same_host, req.different_host, req.host, req.image)
    # Consecutive servers with the same key form one multi-create request (Nova's ``--min-count``): an explicit
    # ``request`` id, else everything that would make up a Nova request.
    req.key = ("id", text(explicit)) if explicit not in (None, "") else ("shape", shape)
    return req


@dataclass
class HostTable:
    """Every host's facts as parallel lists indexed by the host's position in the input."""

    names: list = field(default_factory=list)
    index: dict = field(default_factory=dict)
    compute_reason: list = field(default_factory=list)
    az: list = field(default_factory=list)
    agg: list = field(default_factory=list)  # metadata key -> set of values (over all the host's aggregates)
    traits: list = field(default_factory=list)
    caps: list = field(default_factory=list)  # the view ComputeCapabilitiesFilter walks
    supported: list = field(default_factory=list)  # [(arch, hv_type, vm_mode)]
    features: list = field(default_factory=list)  # host_info's features (huge pages, NIC shaping), or None
    cap: tuple = ()  # per resource: capacity after reservation and ratio
    maxu: tuple = ()
    used: tuple = ()
    ninst: list = field(default_factory=list)
    io_ops: list = field(default_factory=list)
    cpu_total: list = field(default_factory=list)  # the vCPU weigher's value is cpu_total - cpu_used
    cpu_used: list = field(default_factory=list)
    wraw: tuple = ()  # per weigher slot in weighers.ORDER, the raw (unclamped) value
    mult: tuple = ()  # per weigher slot, the host's multiplier
    soft_mult: list = field(default_factory=list)  # per host, (soft-affinity, soft-anti-affinity) multipliers
    loc: dict = field(default_factory=dict)  # server name -> host index
    groups: dict = field(default_factory=dict)  # group name -> {host index: members there}


def _caps_view(host, name):
    cpu_info = host.get("cpu_info")
    if cpu_info is None:
        cpu_info = host.get("cpu")
    view = {
        "host": name,
        "hypervisor_type": host.get("hypervisor_type"),
        "hypervisor_version": host.get("hypervisor_version"),
        "hypervisor_hostname": host.get("hypervisor_hostname"),
        "cpu_info": cpu_info,
        "vcpus_total": host.get("vcpus"),
        "total_usable_ram_mb": host.get("memory_mb"),
        "total_usable_disk_gb": host.get("local_gb"),
    }
    stats = dict(host.get("stats") or {})
    # Nova's HostState has a stats attribute too: capabilities:stats:KEY walks into it.
    view["stats"] = stats
    return {"attrs": {k: v for k, v in view.items() if v is not None}, "stats": stats}


def _supported_instances(host, where):
    given = host.get("supported_instances")
    if given is not None:
        if not isinstance(given, (list, tuple)):
            raise SchedulerInputError("must be a list of [architecture, hypervisor type, vm mode]",
                                      where + ".supported_instances")
        out = []
        for j, entry in enumerate(given):
            if not isinstance(entry, (list, tuple)) or len(entry) != 3:
                raise SchedulerInputError("must be [architecture, hypervisor type, vm mode]",
                                          "%s.supported_instances[%d]" % (where, j))
            out.append(tuple(None if v is None else str(v).lower() for v in entry))
        return out
    # What Nova's libvirt driver advertises: the host architecture with every domain type it can run, hvm guests.
    cpu = host.get("cpu_info") if isinstance(host.get("cpu_info"), Mapping) else host.get("cpu")
    arch = cpu.get("arch") if isinstance(cpu, Mapping) else None
    if not arch:
        return []
    virt = str(host.get("virt_type") or "kvm").lower()
    return [(str(arch).lower(), hv, "hvm") for hv in ((virt, "qemu") if virt == "kvm" else (virt,))]


def load_hosts(hosts, options, weights):
    if isinstance(hosts, Mapping) or isinstance(hosts, (str, bytes)):
        raise SchedulerInputError("must be a list of host records", "hosts")
    t = HostTable()
    n_res = len(RESOURCES)
    cap = tuple([] for _r in range(n_res))
    maxu = tuple([] for _r in range(n_res))
    used = tuple([] for _r in range(n_res))
    wraw = tuple([] for _w in W.ORDER)
    mult = tuple([] for _w in W.ORDER)
    allocation = options.resource_weighers == "allocation"
    for i, host in enumerate(hosts):
        where = "hosts[%d]" % i
        if not isinstance(host, Mapping):
            raise SchedulerInputError("must be a host record dict", where)
        name = host.get("name")
        if not name or not isinstance(name, str):
            raise SchedulerInputError("is required and must be a string", where + ".name")
        if name in t.index:
            raise SchedulerInputError("host %r appears twice" % name, where + ".name")
        idx = len(t.names)
        t.index[name] = idx
        t.names.append(name)
        enabled = as_bool(host.get("enabled", True), where + ".enabled")
        up = as_bool(host.get("up", True), where + ".up")
        if not enabled:
            why = host.get("disabled_reason")
            t.compute_reason.append("host is disabled" + (" (%s)" % why if why else ""))
        elif not up:
            t.compute_reason.append("host is down (its libvirt daemon did not answer)")
        else:
            t.compute_reason.append(None)
        zone = host.get("availability_zone")
        t.az.append(str(zone) if zone not in (None, "") else None)
        aggregates = host.get("aggregates") or {}
        if isinstance(aggregates, Mapping):
            items = list(aggregates.items())
        elif isinstance(aggregates, (list, tuple)):
            items = [(a, {}) for a in aggregates]
        else:
            raise SchedulerInputError("must be a dict of aggregate name -> metadata", where + ".aggregates")
        meta = {}
        for agg_name, metadata in items:
            if not isinstance(metadata, Mapping):
                raise SchedulerInputError("must be a metadata dict", "%s.aggregates.%s" % (where, agg_name))
            for key, value in metadata.items():
                # Nova: a metadata value may list several values separated by commas.
                meta.setdefault(str(key), set()).update(v.strip() for v in text(value).split(","))
        t.agg.append(meta)
        t.traits.append(frozenset(str(x) for x in host.get("traits") or ()))
        t.caps.append(_caps_view(host, name))
        t.supported.append(_supported_instances(host, where))
        t.features.append(host.get("features") if isinstance(host.get("features"), Mapping) else None)
        try:
            caps = _capacity.capacity(host)
        except ValueError as exc:
            raise SchedulerInputError(str(exc), where)
        for r, resource in enumerate(RESOURCES):
            c = caps[resource]
            cap[r].append(c["capacity"])
            maxu[r].append(c["max_unit"])
            used[r].append(c["used"])
        servers = host.get("servers") or []
        if not isinstance(servers, (list, tuple)):
            raise SchedulerInputError("must be a list", where + ".servers")
        for j, server in enumerate(servers):
            sname = server.get("name") if isinstance(server, Mapping) else server
            if not sname:
                raise SchedulerInputError("must have a name", "%s.servers[%d]" % (where, j))
            # A server listed on two hosts (a migration caught half way) stays where it was seen first.
            t.loc.setdefault(str(sname), idx)
            group = group_name(server.get("server_group")) if isinstance(server, Mapping) else None
            if group:
                counts = t.groups.setdefault(group, {})
                counts[idx] = counts.get(idx, 0) + 1
        try:
            running = int(host.get("running_vms") or 0)
        except (TypeError, ValueError):
            raise SchedulerInputError("must be an integer", where + ".running_vms")
        # running_vms counts running domains of any kind, servers also the stopped managed ones.
        t.ninst.append(max(running, len(servers)))
        t.io_ops.append(W.io_ops_of(host, where))
        vcpu, ram, disk = caps["vcpus"], caps["memory_mb"], caps["disk_gb"]
        if allocation:
            t.cpu_total.append(vcpu["capacity"])
            t.cpu_used.append(vcpu["used"])
            wraw[W.RAM].append(ram["capacity"] - ram["used"])
            wraw[W.DISK].append(disk["capacity"] - disk["used"])
        else:
            # Nova's resource tracker counts the reservations as used; free RAM and disk may go below 0.
            t.cpu_total.append(vcpu["total"] * vcpu["allocation_ratio"])
            t.cpu_used.append(vcpu["used"] + vcpu["reserved"])
            wraw[W.RAM].append(ram["total"] - (ram["reserved"] + ram["used"]))
            reserved_mb = _capacity._number(host, "reserved_host_disk_mb", 0, "host %s" % name)
            free_mb = (disk["total"] - disk["used"]) * 1024 - reserved_mb
            least = host.get("disk_available_least")
            if least is not None:
                try:
                    least = float(least)
                except (TypeError, ValueError):
                    raise SchedulerInputError("must be a number", where + ".disk_available_least")
                # Nova's libvirt driver: the disk a host really has left, when that is less than the books say.
                free_mb = min(least * 1024, free_mb)
            wraw[W.DISK].append(free_mb)
        wraw[W.CPU].append(t.cpu_total[-1] - t.cpu_used[-1])
        wraw[W.IO_OPS].append(t.io_ops[-1])
        wraw[W.NUM_INSTANCES].append(t.ninst[-1])
        wraw[W.HYPERVISOR_VERSION].append(W.version_to_int(host.get("hypervisor_version"),
                                                           where + ".hypervisor_version"))
        wraw[W.BUILD_FAILURE].append(W.count(host.get("failed_builds"), where + ".failed_builds"))
        per_host, soft = W.host_multipliers(weights, W.aggregate_multipliers(items, where))
        for slot in W.ORDER:
            mult[slot].append(per_host[slot])
        t.soft_mult.append(soft)
    t.cap, t.maxu, t.used, t.wraw, t.mult = cap, maxu, used, wraw, mult
    return t


def load_json(value):
    """A capability that is a JSON string (Nova's cpu_info) as data, or None when it is not JSON."""
    try:
        return json.loads(value)
    except ValueError:
        return None
