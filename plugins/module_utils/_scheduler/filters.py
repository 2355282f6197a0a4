# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Nova's filters. Each says why it rejects host ``i`` for a request, with the numbers, or None when it passes.

Filters come in four kinds, which decides when they run (as in Nova, where placement answers the resource
question once per request and each filter runs once per request or for every server of it):

* static: the host's facts against the request (enabled and up, zone, aggregates, capabilities, image, traits);
* resources: placement's capacity check, at the start of a request (which hosts are candidates) and again when a
  server is claimed on the chosen host;
* counts: instance and I/O-operation counts, which grow with every placement;
* per server: server groups and hints.
"""

from __future__ import annotations

from ansible_collections.virtfleet.compute.plugins.module_utils import _capacity, _host_features
from ansible_collections.virtfleet.compute.plugins.module_utils._scheduler import inputs
from ansible_collections.virtfleet.compute.plugins.module_utils._scheduler import weighers as W

ALL_FILTERS = (
    "ComputeFilter",
    "AvailabilityZoneFilter",
    "AggregateInstanceExtraSpecsFilter",
    "ComputeCapabilitiesFilter",
    "ImagePropertiesFilter",
    "TraitsFilter",
    "HostFeaturesFilter",
    "RamFilter",
    "CoreFilter",
    "DiskFilter",
    "DedicatedCpuFilter",
    "NumInstancesFilter",
    "IoOpsFilter",
    "ServerGroupAntiAffinityFilter",
    "ServerGroupAffinityFilter",
    "SameHostFilter",
    "DifferentHostFilter",
)
# IoOpsFilter is opt-in, as in Nova; NumInstancesFilter is on (see DEVIATIONS).
DEFAULT_FILTERS = tuple(f for f in ALL_FILTERS if f != "IoOpsFilter")

STATIC = frozenset(("ComputeFilter", "AvailabilityZoneFilter", "AggregateInstanceExtraSpecsFilter",
                    "ComputeCapabilitiesFilter", "ImagePropertiesFilter", "TraitsFilter", "HostFeaturesFilter"))
RESOURCE = {"CoreFilter": 0, "RamFilter": 1, "DiskFilter": 2, "DedicatedCpuFilter": 3}
COUNTS = frozenset(("NumInstancesFilter", "IoOpsFilter"))
# Filters that depend on the individual server and whether they apply to a request at all.
PER_SERVER = {
    "ServerGroupAntiAffinityFilter": lambda req: req.policy == "anti-affinity",
    "ServerGroupAffinityFilter": lambda req: req.policy == "affinity",
    "SameHostFilter": lambda req: bool(req.same_host),
    "DifferentHostFilter": lambda req: bool(req.different_host),
}


# ---------------------------------------------------------------------------------------------------------------------
# extra spec matching (Nova's extra_specs_ops): plain values compare as strings, or an operator leads the requirement.

def _f(value):
    return float(value)


_OPS = {
    "=": lambda v, r: _f(v) >= _f(r),  # Nova: "=" means "at least", for numeric capabilities
    "==": lambda v, r: _f(v) == _f(r),
    "!=": lambda v, r: _f(v) != _f(r),
    ">=": lambda v, r: _f(v) >= _f(r),
    "<=": lambda v, r: _f(v) <= _f(r),
    "s==": lambda v, r: v == r,
    "s!=": lambda v, r: v != r,
    "s<": lambda v, r: v < r,
    "s<=": lambda v, r: v <= r,
    "s>": lambda v, r: v > r,
    "s>=": lambda v, r: v >= r,
    "<in>": lambda v, r: r in v,
}


def match_extra_spec(value: str, requirement: str) -> bool:
    """Does a metadata or capability value satisfy an extra spec (``ssd``, ``>= 2``, ``<or> a <or> b``)?"""
    words = requirement.split()
    if not words:
        return value == requirement
    op, args = words[0], words[1:]
    if op == "<or>":
        # "<or> a <or> b": every other word is an alternative.
        return value in args[::2]
    if op == "<all-in>":
        return bool(args) and all(arg in value for arg in args)
    method = _OPS.get(op)
    if method is None:
        return value == requirement
    if not args:
        return False
    try:
        return bool(method(value, args[0]))
    except (TypeError, ValueError):
        # A non-numeric value against a numeric operator simply does not match (Nova's filter would raise).
        return False


# ---------------------------------------------------------------------------------------------------------------------
# image properties (Nova's ImagePropertiesFilter and the canonical names of nova.objects.fields)

def canonical_arch(name):
    if name is None:
        return None
    name = name.lower()
    if name in ("i386", "i486", "i586", "x86_32", "x86_32p"):
        return "i686"
    return "x86_64" if name == "amd64" else name


def canonical_hv(name):
    if name is None:
        return None
    name = name.lower()
    return "xen" if name == "xapi" else name


def canonical_vm_mode(name):
    if name is None:
        return None
    name = name.lower()
    return {"pv": "xen", "hv": "hvm", "baremetal": "hvm"}.get(name, name)


def _version_tuple(text):
    parts = []
    for part in str(text).strip().split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


_CMP = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b,
        ">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "!=": lambda a, b: a != b}


def version_satisfies(version_int, predicate):
    """oslo.utils' VersionPredicate (``">= 6.0, < 9"``) against a version stored as an int (7002000 is 7.2.0)."""
    have = _version_tuple("%d.%d.%d" % (version_int // 1000000, version_int // 1000 % 1000, version_int % 1000))
    for clause in predicate.split(","):
        clause = clause.strip()
        for op in ("<=", ">=", "!=", "==", "<", ">"):
            if clause.startswith(op):
                if not _CMP[op](have, _version_tuple(clause[len(op):])):
                    return False
                break
        else:
            return False
    return True


# ---------------------------------------------------------------------------------------------------------------------
# the filters; ``s`` is the Scheduler (its host table ``s.t``, options, the batch's groups and locations)

def compute_filter(s, i, req):
    return s.t.compute_reason[i]


def availability_zone_filter(s, i, req):
    if req.az is None:
        return None
    default = s.options.default_availability_zone
    if req.az == default and not s.options.restrict_default_availability_zone:
        # Nova 34: the zone request filter finds no aggregate for the default zone and restricts nothing.
        return None
    zone = s.t.az[i] if s.t.az[i] is not None else default
    if zone != req.az:
        return "host is in availability zone '%s', the server asks for '%s'" % (zone, req.az)
    return None


def aggregate_filter(s, i, req):
    meta = s.t.agg[i]
    for key, requirement in req.agg_specs:
        values = meta.get(key)
        if not values:
            return "flavor %s needs aggregate metadata %s=%s, no aggregate of the host has %s" % (
                req.flavor_name or "(unnamed)", key, requirement, key)
        if not any(match_extra_spec(v, requirement) for v in values):
            return "flavor %s needs aggregate metadata %s=%s, the host's aggregates have %s=%s" % (
                req.flavor_name or "(unnamed)", key, requirement, key, ",".join(sorted(values)))
    return None


def _capability(view, scope):
    """Nova's ComputeCapabilitiesFilter._get_capabilities over the host's view; None when a step is missing."""
    cap = view["attrs"].get(scope[0])
    if cap is None:
        cap = view["stats"].get(scope[0])
    for step in scope[1:]:
        if cap is None:
            return None
        if isinstance(cap, str):
            cap = inputs.load_json(cap)
        cap = cap.get(step) if isinstance(cap, dict) else None
    return cap


def capabilities_filter(s, i, req):
    view = s.t.caps[i]
    for scope, requirement in req.caps_specs:
        if len(scope) == 1 and scope[0] not in view["attrs"] and scope[0] not in view["stats"]:
            continue  # Nova: an unscoped spec the host has no attribute for is not a capability
        cap = _capability(view, scope)
        if cap is None:
            return "flavor %s needs capability %s=%s, the host does not report %s" % (
                req.flavor_name or "(unnamed)", ":".join(scope), requirement, ":".join(scope))
        if not match_extra_spec(str(cap), requirement):
            return "flavor %s needs capability %s=%s, the host has %s" % (
                req.flavor_name or "(unnamed)", ":".join(scope), requirement, cap)
    return None


def image_properties_filter(s, i, req):
    props = dict(req.image)
    wanted = (canonical_arch(props.get("hw_architecture")), canonical_hv(props.get("img_hv_type")),
              canonical_vm_mode(props.get("hw_vm_mode")))
    if not any(wanted):
        return None
    supported = s.t.supported[i]
    if not supported:
        return "the image asks for %s, the host advertises no supported instance types" % _image_text(wanted)
    version = s.t.wraw[W.HYPERVISOR_VERSION][i]  # as an int, 7002000 for 7.2.0
    required = props.get("img_hv_requested_version")
    for entry in supported:
        if all(w is None or w in entry for w in wanted):
            if not (version and required) or version_satisfies(version, required):
                return None
    return "the image asks for %s%s, the host supports %s%s" % (
        _image_text(wanted), " and hypervisor version %s" % required if required else "",
        ", ".join("/".join(str(x) for x in e) for e in supported),
        " (hypervisor version %d)" % version if version and required else "")


def _image_text(wanted):
    return ", ".join("%s %s" % (what, value) for what, value in zip(("architecture", "hypervisor", "vm mode"), wanted)
                     if value)


def traits_filter(s, i, req):
    have = s.t.traits[i]
    missing = sorted(req.required_traits - have)
    if missing:
        return "host lacks required trait(s) %s" % ", ".join(missing)
    present = sorted(req.forbidden_traits & have)
    if present:
        return "host has forbidden trait(s) %s" % ", ".join(present)
    return None


def host_features_filter(s, i, req):
    """Extra specs the host cannot honour: huge pages it does not have free, NIC shaping its kernel cannot do (the
    same comparison the server module refuses with). Nova checks page sizes in its NUMATopologyFilter, per NUMA cell;
    this counts the whole host, and does not take away the pages earlier servers of the same run will hold."""
    if not req.features:
        return None
    unmet = _host_features.unmet_needs(dict(req.features), req.res[1], s.t.features[i])
    return _host_features.describe_unmet(unmet, req.flavor_name or None) if unmet else None


def _resource(s, r, i, req):
    t = s.t
    amount, used, cap, maxu = req.res[r], t.used[r][i], t.cap[r][i], t.maxu[r][i]
    if _capacity.resource_fits(amount, used, cap, maxu):
        return None
    return _capacity.describe_shortfall({
        "resource": inputs.RESOURCES[r], "kind": "max_unit" if amount > maxu else "capacity",
        "requested": amount, "used": used, "capacity": cap, "free": cap - used, "max_unit": maxu})


def core_filter(s, i, req):
    return _resource(s, 0, i, req)


def ram_filter(s, i, req):
    return _resource(s, 1, i, req)


def disk_filter(s, i, req):
    return _resource(s, 2, i, req)


def dedicated_cpu_filter(s, i, req):
    return _resource(s, 3, i, req)


def num_instances_filter(s, i, req):
    if s.t.ninst[i] >= s.options.max_instances_per_host:
        return "host has %d servers, max_instances_per_host is %d" % (s.t.ninst[i], s.options.max_instances_per_host)
    return None


def io_ops_filter(s, i, req):
    if s.t.io_ops[i] >= s.options.max_io_ops_per_host:
        return "host has %d I/O operations in flight, max_io_ops_per_host is %d" % (
            s.t.io_ops[i], s.options.max_io_ops_per_host)
    return None


def anti_affinity_filter(s, i, req):
    if req.policy == "anti-affinity":
        count = s.groups.get(req.group, {}).get(i, 0)
        if count >= req.max_per_host:
            return "host already has %d server(s) of anti-affinity group '%s' (max %d per host)" % (
                count, req.group, req.max_per_host)
    return None


def affinity_filter(s, i, req):
    if req.policy == "affinity":
        on = s.groups.get(req.group)
        # Nova: while no member is placed any host will do, and the first placement decides for the rest.
        if on and i not in on:
            return "affinity group '%s' is on %s" % (req.group, ", ".join(s.t.names[j] for j in sorted(on)))
    return None


def same_host_filter(s, i, req):
    # Nova: servers that are nowhere (unknown, or later in the batch) match no host.
    if req.same_host and not any(s.t.loc.get(n) == i for n in req.same_host):
        return "none of the same_host servers (%s) is on this host" % ", ".join(req.same_host)
    return None


def different_host_filter(s, i, req):
    here = [n for n in req.different_host if s.t.loc.get(n) == i]
    if here:
        return "different_host server(s) %s on this host" % ", ".join(here)
    return None


METHODS = {
    "ComputeFilter": compute_filter,
    "AvailabilityZoneFilter": availability_zone_filter,
    "AggregateInstanceExtraSpecsFilter": aggregate_filter,
    "ComputeCapabilitiesFilter": capabilities_filter,
    "ImagePropertiesFilter": image_properties_filter,
    "TraitsFilter": traits_filter,
    "HostFeaturesFilter": host_features_filter,
    "RamFilter": ram_filter,
    "CoreFilter": core_filter,
    "DiskFilter": disk_filter,
    "DedicatedCpuFilter": dedicated_cpu_filter,
    "NumInstancesFilter": num_instances_filter,
    "IoOpsFilter": io_ops_filter,
    "ServerGroupAntiAffinityFilter": anti_affinity_filter,
    "ServerGroupAffinityFilter": affinity_filter,
    "SameHostFilter": same_host_filter,
    "DifferentHostFilter": different_host_filter,
}
