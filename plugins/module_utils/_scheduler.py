# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Nova's filter scheduler as a pure function: filters, normalized weighers, host_subset_size, alternates.

No Ansible import: the lookup plugin ``virtfleet.compute.scheduler`` is a thin wrapper, and this module is tested on
its own. Capacity arithmetic comes from ``module_utils/_capacity.py`` so the scheduler and the host-side claims
can never disagree about whether a server fits.

Semantics (Nova's, with the differences listed in :data:`DEVIATIONS`):

* Filters remove hosts; a host is reported by the first enabled filter that rejects it, with the numbers.
* Every weigher's raw values are normalized to 0..1 over the hosts that passed the filters, multiplied by the
  weigher's multiplier and summed; the highest total wins. Like Nova, the RAM, vCPU and disk weighers normalize
  against a floor of 0 (``minval = 0``: a host's value is ``free / max(free)``), the instance-count and soft
  (anti-)affinity weighers against the observed minimum; when all values are equal the weigher adds nothing.
  Equal totals keep the hosts' input order, so answers are reproducible.
* The chosen host is drawn with ``random.Random(seed)`` from the ``host_subset_size`` best; ``alternates`` are the
  next best hosts that passed, in order.
* A batch is placed in order. Each placement consumes the host's capacity and counts for server groups, hints and
  instance counts of the servers after it. A server already on a host keeps it and is not placed again.
* When a server cannot be placed the whole batch fails (:class:`NoValidHost`), as a Nova multi-create request does,
  unless ``allow_unplaced`` asks for a report of the unplaced servers instead.

How it stays fast (10,000 servers on 1,000 hosts in well under two seconds, see bench/results/scheduler.md): hosts
pass the static filters (compute, availability zone, aggregates, traits) once per distinct request shape. For each
shape and flavor size a pool keeps the hosts that still fit, sorted by each weigher's raw value (for the
normalization's min and max) and by total score under reference normalization parameters. A placement changes one
host, so only that host is re-sorted; a host that stops fitting never fits again within a batch (usage only grows)
and leaves the pool for good. Normalization parameters drift as hosts fill up, but a host's score can move by at
most a bound computed from the drift, so the best hosts are found by scanning the reference ranking from the top
until no host further down can catch up; the ranking is rebuilt once scans grow long. Requests that narrow the
choice to a few hosts (affinity, same_host, an explicit host) are evaluated directly on those.
``fast=False`` evaluates every host for every server; it gives the same answers and is what the tests compare
against.
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.virtfleet.compute.plugins.module_utils import _capacity

__all__ = [
    "ALL_FILTERS",
    "DEFAULT_FILTERS",
    "DEVIATIONS",
    "NoValidHost",
    "Placement",
    "POLICIES",
    "Scheduler",
    "SchedulerError",
    "SchedulerInputError",
    "Weights",
    "schedule",
]

ALL_FILTERS = (
    "ComputeFilter",
    "AvailabilityZoneFilter",
    "AggregateInstanceExtraSpecsFilter",
    "TraitsFilter",
    "RamFilter",
    "CoreFilter",
    "DiskFilter",
    "DedicatedCpuFilter",
    "NumInstancesFilter",
    "ServerGroupAntiAffinityFilter",
    "ServerGroupAffinityFilter",
    "SameHostFilter",
    "DifferentHostFilter",
)
DEFAULT_FILTERS = ALL_FILTERS

POLICIES = ("affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity")

DEVIATIONS = (
    "RAM and disk weighers weigh free capacity after allocation ratio and reservation (placement's view); Nova's "
    "RAMWeigher and DiskWeigher weigh physical free memory and disk. The ranking only differs between hosts with "
    "different ratios or reservations.",
    "An explicit host (server 'host') runs through every filter, like Nova's requested host (API 2.74), not the "
    "legacy forced host that skipped them.",
    "NumInstancesFilter is enabled by default (Nova: opt-in) with Nova's max_instances_per_host of 50.",
    "Only flavor extra specs with the aggregate_instance_extra_specs: scope are matched against aggregate metadata; "
    "Nova also matches unscoped keys, which collide with other uses of extra specs.",
    "TraitsFilter stands in for placement's required/forbidden traits (flavor extra specs trait:NAME=required|"
    "forbidden).",
    "DedicatedCpuFilter stands in for placement's PCPU resource class: a flavor with hw:cpu_policy=dedicated needs "
    "as many host CPUs that no other dedicated server holds. Without Nova's cpu_shared_set/cpu_dedicated_set split "
    "such a server also counts its vCPUs in the shared vCPU capacity (CoreFilter), as Nova did before the split.",
)

_AGG_SCOPE = "aggregate_instance_extra_specs:"
_TRAIT_SCOPE = "trait:"
_RES_FILTERS = {"CoreFilter": 0, "RamFilter": 1, "DiskFilter": 2, "DedicatedCpuFilter": 3}
# Filters that depend on the individual server (its group, its hints) and whether they apply to a request at all.
_SERVER_FILTERS = {
    "ServerGroupAntiAffinityFilter": lambda req: req.policy == "anti-affinity",
    "ServerGroupAffinityFilter": lambda req: req.policy == "affinity",
    "SameHostFilter": lambda req: bool(req.same_host),
    "DifferentHostFilter": lambda req: bool(req.different_host),
}
_STATIC_FILTERS = frozenset(
    ("ComputeFilter", "AvailabilityZoneFilter", "AggregateInstanceExtraSpecsFilter", "TraitsFilter"))
# Weigher slots in the order their scores are summed; the order matters for bit-identical float totals.
_W_RAM, _W_CPU, _W_DISK, _W_NINST = 1, 0, 2, 3
_REGULAR_WEIGHERS = (_W_RAM, _W_CPU, _W_DISK, _W_NINST)
_RESOURCE_NAMES = _capacity.RESOURCES  # index 0 vcpus, 1 memory_mb, 2 disk_gb, 3 pcpus (not weighed)
_MESSAGE_HOST_LINES = 50


class SchedulerError(Exception):
    """Base of the scheduler's errors."""


class SchedulerInputError(SchedulerError, ValueError):
    """A server request or host record is malformed; ``field`` is the path of the offending value."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__("%s: %s" % (field, message) if field else message)
        self.field = field


class NoValidHost(SchedulerError):
    """No host passes the filters for ``server``.

    ``reasons`` maps every host considered to ``"FilterName: why, with numbers"``; ``placed`` holds the placements
    made earlier in the batch (not committed anywhere: the batch failed).
    """

    def __init__(self, server: str, reasons: dict[str, str], summary: str = "", placed: list | None = None):
        super().__init__(server)
        self.server = server
        self.reasons = reasons
        self.summary = summary
        self.placed = placed or []
        self._message: str | None = None

    def __str__(self) -> str:
        # Built on demand: with allow_unplaced the scheduler raises and catches this for every unplaced server.
        if self._message is None:
            counts: dict[str, int] = {}
            for why in self.reasons.values():
                name = why.split(":", 1)[0]
                counts[name] = counts.get(name, 0) + 1
            tally = ", ".join("%s %d" % item for item in counts.items())
            lines = ["%s: %s" % item for item in self.reasons.items()]
            if len(lines) > _MESSAGE_HOST_LINES:
                lines = lines[:_MESSAGE_HOST_LINES] + ["... and %d more hosts" % (len(lines) - _MESSAGE_HOST_LINES)]
            head = "No valid host for server '%s'%s; hosts rejected by %s:" % (
                self.server, self.summary, tally or "nothing")
            self._message = "\n  ".join([head] + lines)
        return self._message


@dataclass(frozen=True)
class Weights:
    """Weigher multipliers; Nova's option names without ``_weight_multiplier`` and Nova's defaults.

    Positive ``ram``/``cpu``/``disk`` spread servers, negative ones stack them. ``num_instances`` weighs the number
    of servers on a host: negative prefers emptier hosts, positive fuller ones, 0 (Nova's default) ignores it.
    """

    ram: float = 1.0
    cpu: float = 1.0
    disk: float = 1.0
    num_instances: float = 0.0
    soft_affinity: float = 1.0
    soft_anti_affinity: float = 1.0

    def __post_init__(self):
        for name in ("ram", "cpu", "disk", "num_instances", "soft_affinity", "soft_anti_affinity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SchedulerInputError("must be a finite number, got %r" % (value,), "weights.%s" % name)
            object.__setattr__(self, name, float(value))
        # Nova warns and will refuse: a negative soft weight would turn the policy into its opposite.
        for name in ("soft_affinity", "soft_anti_affinity"):
            if getattr(self, name) < 0:
                raise SchedulerInputError("must be >= 0", "weights.%s" % name)


@dataclass
class Placement:
    """Where one server goes. ``host`` is None only for unplaced servers (``allow_unplaced``)."""

    name: str
    host: str | None
    alternates: list[str] = field(default_factory=list)
    existing: bool = False
    reasons: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": self.host,
            "alternates": list(self.alternates),
            "existing": self.existing,
            "reasons": dict(self.reasons),
        }


@dataclass
class _Request:
    name: str
    flavor_name: str
    res: tuple  # (vcpus, memory_mb, disk_gb, pcpus)
    az: str | None = None
    agg_specs: tuple = ()  # ((key, requirement), ...)
    required_traits: frozenset = frozenset()
    forbidden_traits: frozenset = frozenset()
    group: str | None = None
    policy: str | None = None
    max_per_host: int = 1
    same_host: tuple = ()
    different_host: tuple = ()
    host: str | None = None

    def static_key(self):
        return (self.az, self.agg_specs, self.required_traits, self.forbidden_traits)


class _Pool:
    """The hosts that pass a request shape's static filters and still fit one flavor size.

    ``lists`` keep the members sorted by each weigher's raw value, for the normalization's min and max. ``rank``
    keeps them sorted by their total score under reference normalization parameters ``ref``; as long as the current
    parameters equal ``ref`` the first members of ``rank`` are the answer, and when they drift the score of every
    host moves by at most a bound that the scan of ``rank`` takes into account.
    """

    __slots__ = ("res", "members", "order", "lists", "keys", "ref", "rank", "s0", "excess", "seen")

    def __init__(self, res):
        self.res = res
        self.members = set()
        self.order = []  # member indexes, ascending
        self.lists = []  # [(weigher, multiplier, sign, [(sign * x, idx), ...])]
        self.keys = {}  # idx -> its key in each of ``lists``, to find and remove it
        self.ref = None  # ((weigher, multiplier, lo, range), ...) that ``s0`` was computed with
        self.rank = []  # [(-s0, idx)], best first
        self.s0 = {}  # idx -> score under ``ref``
        self.excess = 0  # hosts scored beyond the k needed since ``rank`` was last rebuilt
        self.seen = 0  # position in the scheduler's change log already applied


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
    """Does an aggregate metadata value satisfy a flavor extra spec (``ssd``, ``>= 2``, ``<or> a <or> b``)?"""
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
        # A non-numeric value against a numeric operator simply does not match.
        return False


# ---------------------------------------------------------------------------------------------------------------------
# input normalization

def _text(value: Any) -> str:
    # YAML turns "true" into a bool; Nova stores metadata and extra specs as strings, compare them as such.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _as_bool(value: Any, field_: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.strip().lower() in ("true", "yes", "on", "1")
    raise SchedulerInputError("must be a boolean, got %r" % (value,), field_)


def _names(value: Any, field_: str) -> tuple:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple, set, frozenset)):
        return tuple(str(v) for v in value)
    raise SchedulerInputError("must be a server name or a list of names", field_)


def _group_name(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, Mapping):
        return str(value["name"]) if value.get("name") else None
    return str(value)


def _parse_flavor(flavor: Any, field_: str):
    if not isinstance(flavor, Mapping):
        raise SchedulerInputError("must be a flavor dict (vcpus, ram_mb, disk_gb, ...)", field_)
    for key in ("vcpus", "ram_mb"):
        if key not in flavor:
            raise SchedulerInputError("is required", "%s.%s" % (field_, key))
    try:
        res = _capacity.resources_from_flavor(flavor)
    except ValueError as exc:
        raise SchedulerInputError(str(exc), field_)
    specs = flavor.get("extra_specs") or {}
    if not isinstance(specs, Mapping):
        raise SchedulerInputError("must be a dict", field_ + ".extra_specs")
    agg, required, forbidden = [], set(), set()
    for key, value in specs.items():
        key = str(key)
        if key.startswith(_AGG_SCOPE):
            agg.append((key[len(_AGG_SCOPE):], _text(value)))
        elif key.startswith(_TRAIT_SCOPE):
            want = _text(value).lower()
            if want == "required":
                required.add(key[len(_TRAIT_SCOPE):])
            elif want == "forbidden":
                forbidden.add(key[len(_TRAIT_SCOPE):])
            else:
                raise SchedulerInputError("must be 'required' or 'forbidden'", "%s.extra_specs.%s" % (field_, key))
    return (
        str(flavor.get("name") or ""),
        (res["vcpus"], res["memory_mb"], res["disk_gb"], res["pcpus"]),
        tuple(sorted(agg)),
        frozenset(required),
        frozenset(forbidden),
    )


def _parse_server(server: Any, field_: str, flavor_cache: dict) -> _Request:
    if not isinstance(server, Mapping):
        raise SchedulerInputError("must be a server request dict", field_)
    name = server.get("name")
    if not name or not isinstance(name, str):
        raise SchedulerInputError("is required and must be a string", field_ + ".name")
    flavor = server.get("flavor")
    # Batches reuse a handful of flavor dicts; parse each once.
    parsed = flavor_cache.get(id(flavor))
    if parsed is None or parsed[0] is not flavor:
        parsed = (flavor, _parse_flavor(flavor, field_ + ".flavor"))
        flavor_cache[id(flavor)] = parsed
    flavor_name, res, agg, required, forbidden = parsed[1]
    req = _Request(name=name, flavor_name=flavor_name, res=res, agg_specs=agg,
                   required_traits=required, forbidden_traits=forbidden)
    az = server.get("availability_zone")
    req.az = str(az) if az not in (None, "") else None
    group = server.get("server_group")
    if group not in (None, "", {}):
        if not isinstance(group, Mapping) or not group.get("name"):
            raise SchedulerInputError("must be a dict with name and policy", field_ + ".server_group")
        policy = group.get("policy")
        if policy not in POLICIES:
            raise SchedulerInputError("must be one of %s, got %r" % (", ".join(POLICIES), policy),
                                      field_ + ".server_group.policy")
        req.group, req.policy = str(group["name"]), policy
        rules = group.get("rules") or {}
        if rules.get("max_server_per_host") is not None:
            if policy != "anti-affinity":
                raise SchedulerInputError("only applies to the anti-affinity policy",
                                          field_ + ".server_group.rules.max_server_per_host")
            try:
                req.max_per_host = int(rules["max_server_per_host"])
            except (TypeError, ValueError):
                req.max_per_host = 0
            if req.max_per_host < 1:
                raise SchedulerInputError("must be an integer >= 1", field_ + ".server_group.rules.max_server_per_host")
    hints = server.get("hints") or {}
    if not isinstance(hints, Mapping):
        raise SchedulerInputError("must be a dict", field_ + ".hints")
    req.same_host = _names(hints.get("same_host"), field_ + ".hints.same_host")
    req.different_host = _names(hints.get("different_host"), field_ + ".hints.different_host")
    host = server.get("host")
    req.host = str(host) if host not in (None, "") else None
    return req


# ---------------------------------------------------------------------------------------------------------------------

class Scheduler:
    """Place servers on hosts; the hosts' usage is updated by every placement.

    :param hosts: host records (see the collection's ``host_info``): name, up, enabled, disabled_reason,
        availability_zone, aggregates (name -> metadata dict), traits, vcpus/memory_mb/local_gb with ``*_used``,
        allocation ratios, reservations, servers (managed servers already there), running_vms.
    :param weights: weigher multipliers (:class:`Weights` or a dict of its fields).
    :param enabled_filters: filter names from :data:`ALL_FILTERS`, run in that order for the rejection reasons.
    :param host_subset_size: the choice is random among this many best hosts (1: always the best).
    :param seed: seeds ``random.Random``; None draws a fresh seed. Same seed and input, same answer.
    :param alternates: how many next-best hosts to return with each choice.
    :param max_instances_per_host: NumInstancesFilter's limit.
    :param default_availability_zone: the zone of hosts that name none (Nova's ``default_availability_zone``).
    :param fast: False evaluates every host for every server (slow, same answers; for tests).
    """

    def __init__(
        self,
        hosts: Iterable[Mapping[str, Any]],
        *,
        weights: Weights | Mapping[str, float] | None = None,
        enabled_filters: Sequence[str] | None = None,
        host_subset_size: int = 1,
        seed: Any = None,
        alternates: int = 2,
        max_instances_per_host: int = 50,
        default_availability_zone: str = "nova",
        fast: bool = True,
    ):
        if weights is None:
            weights = Weights()
        elif isinstance(weights, Mapping):
            unknown = set(weights) - set(Weights.__dataclass_fields__)
            if unknown:
                raise SchedulerInputError("unknown weigher(s) %s" % ", ".join(sorted(map(str, unknown))), "weights")
            weights = Weights(**weights)
        self.weights = weights
        filters = list(DEFAULT_FILTERS if enabled_filters is None else enabled_filters)
        unknown = [f for f in filters if f not in ALL_FILTERS]
        if unknown:
            raise SchedulerInputError(
                "unknown filter(s) %s; known: %s" % (", ".join(map(str, unknown)), ", ".join(ALL_FILTERS)),
                "enabled_filters")
        self.filters = tuple(dict.fromkeys(filters))
        self._enabled = frozenset(self.filters)
        for value, name, low in ((host_subset_size, "host_subset_size", 1), (alternates, "alternates", 0),
                                 (max_instances_per_host, "max_instances_per_host", 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SchedulerInputError("must be an integer >= %d, got %r" % (low, value), name)
        self.host_subset_size = host_subset_size
        self.alternates = alternates
        self.max_instances_per_host = max_instances_per_host
        self.default_availability_zone = default_availability_zone
        self.fast = fast
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, str, bytes))):
            # random.Random only accepts a few seed types; any other value still seeds reproducibly by its text.
            seed = str(seed)
        self._rng = random.Random(seed)
        self._res_filters = tuple(r for f, r in _RES_FILTERS.items() if f in self._enabled)
        self._ninst_filter = "NumInstancesFilter" in self._enabled
        self._filter_chain = tuple((name, self._FILTER_METHODS[name]) for name in self.filters)
        self._load_hosts(hosts)
        self._pools: dict = {}
        self._reason_cache: dict = {}
        self._affinity_text: tuple = (None, "")
        self._static: dict = {}
        self._log: list[int] = []
        self._flavor_cache: dict = {}
        self._groups_policy: dict = {}
        # Multipliers of the weighers kept as sorted lists, in summation order.
        mult = {_W_RAM: weights.ram, _W_CPU: weights.cpu, _W_DISK: weights.disk, _W_NINST: weights.num_instances}
        self._list_weighers = tuple((w, mult[w]) for w in _REGULAR_WEIGHERS if mult[w] != 0.0)
        # Scores are sums of at most these magnitudes; rounding errors are far below this margin.
        self._eps = 1e-9 * (1.0 + sum(abs(getattr(weights, f)) for f in Weights.__dataclass_fields__))

    # -- hosts ---------------------------------------------------------------------------------------------------

    def _load_hosts(self, hosts):
        if isinstance(hosts, Mapping) or isinstance(hosts, (str, bytes)):
            raise SchedulerInputError("must be a list of host records", "hosts")
        names, index = [], {}
        compute_reason, az, agg, traits = [], [], [], []
        cap = tuple([] for _resource in _RESOURCE_NAMES)
        maxu = tuple([] for _resource in _RESOURCE_NAMES)
        used = tuple([] for _resource in _RESOURCE_NAMES)
        ninst = []
        loc: dict[str, int] = {}
        groups: dict[str, dict[int, int]] = {}
        for i, host in enumerate(hosts):
            where = "hosts[%d]" % i
            if not isinstance(host, Mapping):
                raise SchedulerInputError("must be a host record dict", where)
            name = host.get("name")
            if not name or not isinstance(name, str):
                raise SchedulerInputError("is required and must be a string", where + ".name")
            if name in index:
                raise SchedulerInputError("host %r appears twice" % name, where + ".name")
            idx = len(names)
            index[name] = idx
            names.append(name)
            enabled = _as_bool(host.get("enabled", True), where + ".enabled")
            up = _as_bool(host.get("up", True), where + ".up")
            if not enabled:
                why = host.get("disabled_reason")
                compute_reason.append("host is disabled" + (" (%s)" % why if why else ""))
            elif not up:
                compute_reason.append("host is down (its libvirt daemon did not answer)")
            else:
                compute_reason.append(None)
            zone = host.get("availability_zone")
            az.append(str(zone) if zone not in (None, "") else self.default_availability_zone)
            meta: dict[str, set] = {}
            aggregates = host.get("aggregates") or {}
            if isinstance(aggregates, Mapping):
                items = aggregates.items()
            elif isinstance(aggregates, (list, tuple)):
                items = [(a, {}) for a in aggregates]
            else:
                raise SchedulerInputError("must be a dict of aggregate name -> metadata", where + ".aggregates")
            for agg_name, metadata in items:
                if not isinstance(metadata, Mapping):
                    raise SchedulerInputError("must be a metadata dict", "%s.aggregates.%s" % (where, agg_name))
                for key, value in metadata.items():
                    # Nova: a metadata value may list several values separated by commas.
                    meta.setdefault(str(key), set()).update(v.strip() for v in _text(value).split(","))
            agg.append(meta)
            traits.append(frozenset(str(t) for t in host.get("traits") or ()))
            try:
                caps = _capacity.capacity(host)
            except ValueError as exc:
                raise SchedulerInputError(str(exc), where)
            for r, resource in enumerate(_RESOURCE_NAMES):
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
                loc.setdefault(str(sname), idx)
                group = _group_name(server.get("server_group")) if isinstance(server, Mapping) else None
                if group:
                    counts = groups.setdefault(group, {})
                    counts[idx] = counts.get(idx, 0) + 1
            try:
                running = int(host.get("running_vms") or 0)
            except (TypeError, ValueError):
                raise SchedulerInputError("must be an integer", where + ".running_vms")
            # running_vms counts running domains of any kind, servers also the stopped managed ones.
            ninst.append(max(running, len(servers)))
        self._names, self._index = names, index
        self._compute_reason, self._az, self._agg, self._traits = compute_reason, az, agg, traits
        self._cap, self._maxu, self._used, self._ninst = cap, maxu, used, ninst
        self._loc, self._groups = loc, groups
        # Current weigher inputs per host: free capacity floored at 0 (Nova's minval) and instance counts.
        self._xv = [None] * 4
        for r in range(3):
            self._xv[r] = [max(c - u, 0.0) for c, u in zip(cap[r], used[r])]
        self._xv[_W_NINST] = ninst

    @property
    def hosts(self) -> list[str]:
        return list(self._names)

    def usage(self) -> dict[str, dict[str, Any]]:
        """Each host's usage now, placements of this scheduler included; capacities after ratio and reservation."""
        out = {}
        for i, name in enumerate(self._names):
            entry = {"num_instances": self._ninst[i]}
            for r, resource in enumerate(_RESOURCE_NAMES):
                entry[resource] = {"used": self._used[r][i], "capacity": self._cap[r][i], "max_unit": self._maxu[r][i]}
            out[name] = entry
        return out

    # -- filters -------------------------------------------------------------------------------------------------

    # Each filter: why it rejects host ``idx`` for ``req``, or None when the host passes.

    def _compute_filter(self, idx: int, req: _Request) -> str | None:
        return self._compute_reason[idx]

    def _az_filter(self, idx: int, req: _Request) -> str | None:
        if req.az is not None and self._az[idx] != req.az:
            return "host is in availability zone '%s', the server asks for '%s'" % (self._az[idx], req.az)
        return None

    def _aggregate_filter(self, idx: int, req: _Request) -> str | None:
        meta = self._agg[idx]
        for key, requirement in req.agg_specs:
            values = meta.get(key)
            if not values:
                return "flavor %s needs aggregate metadata %s=%s, no aggregate of the host has %s" % (
                    req.flavor_name or "(unnamed)", key, requirement, key)
            if not any(match_extra_spec(v, requirement) for v in values):
                return "flavor %s needs aggregate metadata %s=%s, the host's aggregates have %s=%s" % (
                    req.flavor_name or "(unnamed)", key, requirement, key, ",".join(sorted(values)))
        return None

    def _traits_filter(self, idx: int, req: _Request) -> str | None:
        have = self._traits[idx]
        missing = sorted(req.required_traits - have)
        if missing:
            return "host lacks required trait(s) %s" % ", ".join(missing)
        present = sorted(req.forbidden_traits & have)
        if present:
            return "host has forbidden trait(s) %s" % ", ".join(present)
        return None

    def _resource_filter(self, r: int, idx: int, req: _Request) -> str | None:
        amount, used, cap, maxu = req.res[r], self._used[r][idx], self._cap[r][idx], self._maxu[r][idx]
        if _capacity.resource_fits(amount, used, cap, maxu):
            return None
        return _capacity.describe_shortfall({
            "resource": _RESOURCE_NAMES[r], "kind": "max_unit" if amount > maxu else "capacity",
            "requested": amount, "used": used, "capacity": cap, "free": cap - used, "max_unit": maxu})

    def _core_filter(self, idx: int, req: _Request) -> str | None:
        return self._resource_filter(0, idx, req)

    def _ram_filter(self, idx: int, req: _Request) -> str | None:
        return self._resource_filter(1, idx, req)

    def _disk_filter(self, idx: int, req: _Request) -> str | None:
        return self._resource_filter(2, idx, req)

    def _dedicated_cpu_filter(self, idx: int, req: _Request) -> str | None:
        return self._resource_filter(3, idx, req)

    def _num_instances_filter(self, idx: int, req: _Request) -> str | None:
        if self._ninst[idx] >= self.max_instances_per_host:
            return "host has %d servers, max_instances_per_host is %d" % (self._ninst[idx], self.max_instances_per_host)
        return None

    def _anti_affinity_filter(self, idx: int, req: _Request) -> str | None:
        if req.policy == "anti-affinity":
            count = self._groups.get(req.group, {}).get(idx, 0)
            if count >= req.max_per_host:
                return "host already has %d server(s) of anti-affinity group '%s' (max %d per host)" % (
                    count, req.group, req.max_per_host)
        return None

    def _affinity_filter(self, idx: int, req: _Request) -> str | None:
        if req.policy == "affinity":
            on = self._groups.get(req.group)
            # Nova: while no member is placed any host will do, and the first placement decides for the rest.
            if on and idx not in on:
                # The same text for every other host; build it once per group and state of the batch.
                key = (req.group, len(self._log))
                if self._affinity_text[0] != key:
                    hosts = ", ".join(self._names[i] for i in sorted(on))
                    self._affinity_text = (key, "affinity group '%s' is on %s" % (req.group, hosts))
                return self._affinity_text[1]
        return None

    def _same_host_filter(self, idx: int, req: _Request) -> str | None:
        # Nova: servers that are nowhere (unknown, or later in the batch) match no host.
        if req.same_host and not any(self._loc.get(n) == idx for n in req.same_host):
            return "none of the same_host servers (%s) is on this host" % ", ".join(req.same_host)
        return None

    def _different_host_filter(self, idx: int, req: _Request) -> str | None:
        here = [n for n in req.different_host if self._loc.get(n) == idx]
        if here:
            return "different_host server(s) %s on this host" % ", ".join(here)
        return None

    _FILTER_METHODS = {
        "ComputeFilter": _compute_filter,
        "AvailabilityZoneFilter": _az_filter,
        "AggregateInstanceExtraSpecsFilter": _aggregate_filter,
        "TraitsFilter": _traits_filter,
        "RamFilter": _ram_filter,
        "CoreFilter": _core_filter,
        "DiskFilter": _disk_filter,
        "DedicatedCpuFilter": _dedicated_cpu_filter,
        "NumInstancesFilter": _num_instances_filter,
        "ServerGroupAntiAffinityFilter": _anti_affinity_filter,
        "ServerGroupAffinityFilter": _affinity_filter,
        "SameHostFilter": _same_host_filter,
        "DifferentHostFilter": _different_host_filter,
    }

    def _first_rejection(self, idx: int, req: _Request):
        """(filter name, why) of the first enabled filter rejecting host ``idx``, or None."""
        for name, method in self._filter_chain:
            why = method(self, idx, req)
            if why is not None:
                return name, why
        return None

    def _reasons(self, req: _Request) -> dict[str, str]:
        """``{host: "Filter: why"}`` for every host (only the requested one when the server names a host).

        Called for every unplaced server, so it must not cost hosts x filters each time: the rejections by filters
        that depend only on the request's pool (static, capacity, instance count) are kept per pool and redone
        only for hosts a placement changed since; the per-server filters are cheap checks on top.
        """
        names = self._names
        if req.host is not None:
            idx = self._index.get(req.host)
            if idx is None:
                return {req.host: "RequestedHost: no such host among the %d candidates" % len(names)}
            rejected = self._first_rejection(idx, req)
            return {req.host: "%s: %s" % rejected if rejected else "passes the filters"}
        # The flavor name is part of the key because the aggregate filter's message quotes it.
        key = (req.static_key(), req.res, req.flavor_name)
        cached = self._reason_cache.get(key)
        if cached is None:
            todo = range(len(names))
            cached = self._reason_cache[key] = [0, {}]
        else:
            todo = set(self._log[cached[0]:])
        cached[0] = len(self._log)
        by_pool = cached[1]
        pool_chain = [(pos, name, method) for pos, (name, method) in enumerate(self._filter_chain)
                      if name not in _SERVER_FILTERS]
        for idx in todo:
            for pos, name, method in pool_chain:
                why = method(self, idx, req)
                if why is not None:
                    by_pool[idx] = (pos, "%s: %s" % (name, why))
                    break
            else:
                by_pool.pop(idx, None)
        server_chain = [(pos, name, method) for pos, (name, method) in enumerate(self._filter_chain)
                        if name in _SERVER_FILTERS and _SERVER_FILTERS[name](req)]
        none = (len(self._filter_chain), "passes the filters")
        reasons = {}
        for idx, name in enumerate(names):
            pos, why = by_pool.get(idx, none)
            for spos, sname, method in server_chain:
                if spos > pos:
                    break
                swhy = method(self, idx, req)
                if swhy is not None:
                    why = "%s: %s" % (sname, swhy)
                    break
            reasons[name] = why
        return reasons

    def _fits(self, idx: int, res: tuple) -> bool:
        used, cap, maxu = self._used, self._cap, self._maxu
        for r in self._res_filters:
            if not _capacity.resource_fits(res[r], used[r][idx], cap[r][idx], maxu[r][idx]):
                return False
        return not (self._ninst_filter and self._ninst[idx] >= self.max_instances_per_host)

    def _static_candidates(self, req: _Request) -> list[int]:
        key = req.static_key()
        found = self._static.get(key)
        if found is None:
            checks = [method for name, method in self._filter_chain if name in _STATIC_FILTERS]
            found = [i for i in range(len(self._names)) if all(method(self, i, req) is None for method in checks)]
            self._static[key] = found
        return found

    def _narrowed(self, req: _Request) -> list[int] | None:
        """The few hosts a request is restricted to (explicit host, affinity, same_host), or None."""
        if req.host is not None:
            idx = self._index.get(req.host)
            return [] if idx is None else [idx]
        if req.policy == "affinity" and "ServerGroupAffinityFilter" in self._enabled and self._groups.get(req.group):
            return sorted(self._groups[req.group])
        if req.same_host and "SameHostFilter" in self._enabled:
            return sorted({self._loc[n] for n in req.same_host if n in self._loc})
        return None

    def _excluded(self, req: _Request) -> set[int]:
        """Hosts the per-server filters remove from a pool: anti-affinity and different_host."""
        out = set()
        if req.policy == "anti-affinity" and "ServerGroupAntiAffinityFilter" in self._enabled:
            out.update(i for i, c in self._groups.get(req.group, {}).items() if c >= req.max_per_host)
        if req.different_host and "DifferentHostFilter" in self._enabled:
            out.update(self._loc[n] for n in req.different_host if n in self._loc)
        return out

    # -- weighing ------------------------------------------------------------------------------------------------

    def _soft(self, req: _Request):
        """(multiplier, sign) of the soft weigher the request's group uses, or None."""
        if req.policy == "soft-affinity" and self.weights.soft_affinity:
            return self.weights.soft_affinity, 1
        if req.policy == "soft-anti-affinity" and self.weights.soft_anti_affinity:
            return self.weights.soft_anti_affinity, -1
        return None

    def _top_reference(self, req: _Request, passing: list[int], k: int) -> list[int]:
        """Weigh ``passing`` the plain way, as Nova's weight handler does, and return the best ``k``."""
        if not passing:
            return []
        active = []
        for w, m in self._list_weighers:
            vals = [self._xv[w][i] for i in passing]
            lo = min(vals) if w == _W_NINST else 0.0
            hi = max(vals)
            if hi != lo:
                active.append((m, lo, hi - lo, vals))
        soft = self._soft(req)
        if soft:
            counts = self._groups.get(req.group, {})
            vals = [soft[1] * counts.get(i, 0) for i in passing]
            lo, hi = min(vals), max(vals)
            if hi != lo:
                active.append((soft[0], lo, hi - lo, vals))
        ranked = []
        for j, idx in enumerate(passing):
            s = 0.0
            for m, lo, rng, vals in active:
                s += m * ((vals[j] - lo) / rng)
            ranked.append((-s, idx))
        ranked.sort()
        return [idx for _score, idx in ranked[:k]]

    @staticmethod
    def _score_with(params, xvs, i):
        # The same expression, in the same order, as _top_reference: equal inputs give bit-identical totals.
        s = 0.0
        for w, m, lo, rng in params:
            s += m * ((xvs[w][i] - lo) / rng)
        return s

    def _rebuild(self, pool: _Pool, params: tuple):
        order = pool.order
        totals = [0.0] * len(order)
        # Column by column, with the additions in _score_with's order: the same floats, a third of the time.
        for w, m, lo, rng in params:
            xv = self._xv[w]
            totals = [t + m * ((xv[i] - lo) / rng) for t, i in zip(totals, order)]
        pool.ref = params
        pool.s0 = dict(zip(order, totals))
        pool.rank = sorted(zip([-t for t in totals], order))
        pool.excess = 0

    def _pool(self, req: _Request) -> _Pool:
        key = (req.static_key(), req.res)
        pool = self._pools.get(key)
        xvs = self._xv
        if pool is None:
            pool = _Pool(req.res)
            fits = self._fits
            pool.order = [i for i in self._static_candidates(req) if fits(i, req.res)]
            pool.members = set(pool.order)
            keys = {i: [] for i in pool.order}
            for w, m in self._list_weighers:
                xv = xvs[w]
                sign = -1 if m > 0 else 1
                entries = sorted((sign * xv[i], i) for i in pool.order)
                for k, i in entries:
                    keys[i].append(k)
                pool.lists.append((w, m, sign, entries))
            pool.keys = {i: tuple(v) for i, v in keys.items()}
            pool.seen = len(self._log)
            self._pools[key] = pool
            return pool
        if pool.seen != len(self._log):
            changed = set(self._log[pool.seen:])
            pool.seen = len(self._log)
            members, ref, rank, s0 = pool.members, pool.ref, pool.rank, pool.s0
            for idx in changed:
                if idx not in members:
                    continue
                for (_w, _m, _sign, entries), k in zip(pool.lists, pool.keys[idx]):
                    del entries[bisect_left(entries, (k, idx))]
                if ref is not None:
                    del rank[bisect_left(rank, (-s0[idx], idx))]
                if self._fits(idx, pool.res):
                    new = []
                    for w, _m, sign, entries in pool.lists:
                        k = sign * xvs[w][idx]
                        insort(entries, (k, idx))
                        new.append(k)
                    pool.keys[idx] = tuple(new)
                    if ref is not None:
                        s = s0[idx] = self._score_with(ref, xvs, idx)
                        insort(rank, (-s, idx))
                else:
                    # Usage only grows within a batch: a host that no longer fits this size never will again.
                    members.discard(idx)
                    del pool.keys[idx]
                    del pool.order[bisect_left(pool.order, idx)]
                    s0.pop(idx, None)
        return pool

    def _top_fast(self, req: _Request, k: int) -> list[int]:
        """The best ``k`` hosts of the request's pool minus its per-server exclusions; same answer as the reference.

        Scores under the current normalization differ from the pool's reference scores ``s0`` by at most ``delta``
        (each term is affine in its raw value, so the gap is largest at the ends of the value range). Scanning
        ``rank`` best first, no host left can beat the k-th best once its ``s0 + delta`` falls below it. When the
        parameters are exactly the reference ones the scores are the reference scores and the scan takes the first
        k hosts. Scans that had to look far pay for a rebuild of ``rank`` under the current parameters.
        """
        pool = self._pool(req)
        members = pool.members
        excluded = self._excluded(req)
        excluded &= members
        n_passing = len(members) - len(excluded)
        if n_passing <= 0:
            return []
        xvs = self._xv
        params = []
        for w, m, sign, entries in pool.lists:
            if excluded:
                first = next(sign * key for key, idx in entries if idx not in excluded)
                last = next(sign * key for key, idx in reversed(entries) if idx not in excluded)
            else:
                first, last = sign * entries[0][0], sign * entries[-1][0]
            if w == _W_NINST:
                lo, hi = (first, last) if first < last else (last, first)
            else:
                lo, hi = 0.0, (first if first > last else last)
            if hi != lo:
                params.append((w, m, lo, hi - lo))
        params = tuple(params)

        soft = self._soft(req)
        group_on: dict[int, int] = {}
        soft_term = None
        if soft:
            counts = self._groups.get(req.group, {})
            group_on = {i: soft[1] * c for i, c in counts.items() if i in members and i not in excluded}
            vals = list(group_on.values())
            if n_passing > len(group_on):
                vals.append(0)  # a passing host without group members
            lo, hi = min(vals), max(vals)
            if hi != lo:
                soft_term = (soft[0], lo, hi - lo)

        if pool.ref is None or pool.excess > len(members):
            self._rebuild(pool, params)

        if soft_term is None and params == pool.ref:
            top = []
            for _neg, i in pool.rank:
                if i not in excluded:
                    top.append(i)
                    if len(top) == k:
                        break
            return top

        score_with = self._score_with

        def score(i):
            s = score_with(params, xvs, i)
            if soft_term is not None:
                s += soft_term[0] * ((group_on.get(i, 0) - soft_term[1]) / soft_term[2])
            return s

        cur = {p[0]: p for p in params}
        ref = {p[0]: p for p in pool.ref}
        delta = 0.0
        for w, _m, sign, entries in pool.lists:
            c, r = cur.get(w), ref.get(w)
            if c is None and r is None:
                continue
            gap = 0.0
            for x in (sign * entries[0][0], sign * entries[-1][0]):
                t = c[1] * ((x - c[2]) / c[3]) if c else 0.0
                t0 = r[1] * ((x - r[2]) / r[3]) if r else 0.0
                gap = max(gap, abs(t - t0))
            delta += gap
        # Every host the scan has not scored has a soft raw value of 0; the margin absorbs float rounding.
        limit = delta + self._eps
        heap: list = []
        seen = set(excluded)
        if soft_term is not None:
            limit += soft_term[0] * ((0 - soft_term[1]) / soft_term[2])
            for i in group_on:
                seen.add(i)
                item = (score(i), -i)
                if len(heap) < k:
                    heapq.heappush(heap, item)
                elif item > heap[0]:
                    heapq.heapreplace(heap, item)
        scored = 0
        for neg, i in pool.rank:
            if len(heap) >= k and limit - neg < heap[0][0]:
                break
            if i in seen:
                continue
            scored += 1
            item = (score(i), -i)
            if len(heap) < k:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)
        pool.excess += max(scored - k, 0)
        heap.sort(reverse=True)
        return [-neg for _score, neg in heap]

    # -- placing -------------------------------------------------------------------------------------------------

    def _consume(self, idx: int, req: _Request):
        for r in range(len(_RESOURCE_NAMES)):
            used = self._used[r][idx] + req.res[r]
            self._used[r][idx] = used
            if r < 3:  # the weighed resources: vCPU, RAM, disk
                free = self._cap[r][idx] - used
                self._xv[r][idx] = free if free > 0.0 else 0.0
        self._ninst[idx] += 1
        self._loc[req.name] = idx
        if req.group:
            counts = self._groups.setdefault(req.group, {})
            counts[idx] = counts.get(idx, 0) + 1
        self._log.append(idx)

    def _check_group(self, req: _Request, where: str):
        if not req.group:
            return
        known = self._groups_policy.setdefault(req.group, (req.policy, req.max_per_host, where))
        if known[:2] != (req.policy, req.max_per_host):
            raise SchedulerInputError(
                "server group '%s' has policy %s (max %d per host) in %s but %s (max %d per host) here" % (
                    req.group, known[0], known[1], known[2], req.policy, req.max_per_host), where + ".server_group")

    def _place(self, req: _Request) -> Placement:
        existing = self._loc.get(req.name)
        if existing is not None:
            return Placement(req.name, self._names[existing], [], True, {})
        k = self.host_subset_size + self.alternates
        narrowed = self._narrowed(req)
        if narrowed is None and self.fast:
            top = self._top_fast(req, k)
        else:
            candidates = range(len(self._names)) if narrowed is None else narrowed
            passing = [i for i in candidates if self._first_rejection(i, req) is None]
            top = self._top_reference(req, passing, k)
        if not top:
            raise NoValidHost(req.name, self._reasons(req), self._summary(req))
        chosen = self._rng.choice(top[:self.host_subset_size])
        alternates = [self._names[i] for i in top if i != chosen][:self.alternates]
        self._consume(chosen, req)
        return Placement(req.name, self._names[chosen], alternates, False, {})

    def _summary(self, req: _Request) -> str:
        vcpus, ram, disk, _pcpus = (_capacity.format_amount(v) for v in req.res)
        return " (flavor %s: %s vCPUs%s, %s MB RAM, %s GB disk)" % (
            req.flavor_name or "(unnamed)", vcpus, " dedicated" if req.res[3] else "", ram, disk)

    def place(self, server: Mapping[str, Any]) -> Placement:
        """Place one server (or report where it already is); raises :class:`NoValidHost`."""
        req = _parse_server(server, "server", self._flavor_cache)
        self._check_group(req, "server")
        return self._place(req)

    def schedule(self, servers: Iterable[Mapping[str, Any]], allow_unplaced: bool = False) -> list[Placement]:
        """Place a batch in order. Every request is validated before anything is placed.

        With ``allow_unplaced`` a server that fits nowhere comes back with ``host`` None and its ``reasons`` and
        the batch goes on; otherwise the first such server raises :class:`NoValidHost` for the whole batch.
        """
        if isinstance(servers, (Mapping, str, bytes)):
            raise SchedulerInputError("must be a list of server requests", "servers")
        requests, names = [], set()
        for i, server in enumerate(servers):
            where = "servers[%d]" % i
            req = _parse_server(server, where, self._flavor_cache)
            if req.name in names:
                raise SchedulerInputError("server %r appears twice in the batch" % req.name, where + ".name")
            names.add(req.name)
            self._check_group(req, where)
            requests.append(req)
        placements: list[Placement] = []
        for req in requests:
            try:
                placements.append(self._place(req))
            except NoValidHost as exc:
                if not allow_unplaced:
                    exc.placed = placements
                    raise
                placements.append(Placement(req.name, None, [], False, exc.reasons))
        return placements


def schedule(
    servers: Iterable[Mapping[str, Any]],
    hosts: Iterable[Mapping[str, Any]],
    *,
    allow_unplaced: bool = False,
    **options: Any,
) -> list[Placement]:
    """Place ``servers`` on ``hosts`` in one batch; ``options`` are :class:`Scheduler`'s keyword arguments."""
    return Scheduler(hosts, **options).schedule(servers, allow_unplaced=allow_unplaced)
