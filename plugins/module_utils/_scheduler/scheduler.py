# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Nova's filter scheduler as a pure function: filters, normalized weighers, host_subset_size, alternates.

No Ansible import: the lookup plugin ``virtfleet.compute.scheduler`` and server_action (a migration target) are
thin callers, and this package is tested on its own, and against Nova's own filter and weigher classes
(tests/unit/plugins/module_utils/_scheduler/test_nova_differential.py). Capacity arithmetic comes from
``module_utils/_capacity.py`` so the scheduler and the host-side claims never disagree about whether a server fits.

Semantics (Nova 34's ``SchedulerManager._schedule``, with the differences listed in :data:`DEVIATIONS`):

* A batch is a sequence of requests. Consecutive servers of the same shape (flavor, group, zone, hints, host,
  image) or with the same ``request`` id form one request, as ``openstack server create --min N`` does.
* For a request, placement's answer comes first: the hosts that pass the static filters and can hold one server
  of the flavor (capacity after ratios and reservations). Then, for each server of the request in turn, the
  filters run on those hosts, every weigher is normalized over the hosts that passed and the totals are sorted.
  A random host among the ``host_subset_size`` best is put first and the first host of that list that can still
  hold the server is claimed: like Nova, a host filled by earlier servers of the same request is still weighed
  (it can set the maximum others are normalized against) but never claimed.
* Ties keep the order of the previous server's sorted list (the host list for a request's first server).
* Each placement consumes capacity, counts one more instance and one more I/O operation on its host (Nova's
  IoOpsWeigher then spreads a request), and counts for server groups and hints of the servers after it.
* A server already on a host keeps it and is not placed again. When a server cannot be placed the whole batch
  fails (:class:`NoValidHost`), unless ``allow_unplaced`` asks for a report of the unplaced servers instead.

How it stays fast: see ``ranking.py``. ``fast=False`` evaluates every candidate for every server, literally as
Nova does (its sorted list carried from server to server); it gives the same answers and is what the tests
compare the fast path against.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.virtfleet.compute.plugins.module_utils import _capacity
from ansible_collections.virtfleet.compute.plugins.module_utils._scheduler import filters as F
from ansible_collections.virtfleet.compute.plugins.module_utils._scheduler import inputs, ranking
from ansible_collections.virtfleet.compute.plugins.module_utils._scheduler import weighers as W
from ansible_collections.virtfleet.compute.plugins.module_utils._scheduler.errors import (
    NoValidHost,
    SchedulerError,
    SchedulerInputError,
)

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

ALL_FILTERS = F.ALL_FILTERS
DEFAULT_FILTERS = F.DEFAULT_FILTERS
POLICIES = inputs.POLICIES
Weights = W.Weights
RESOURCE_WEIGHERS = W.RESOURCE_WEIGHERS

# Every known difference from Nova 34 with the same filters and weighers enabled. ``option`` names the switch
# that gives Nova's behaviour where one makes sense; the differential test proves each switch is the only cause
# of its differences.
DEVIATIONS = (
    {"name": "default-zone",
     "option": "restrict_default_availability_zone=false",
     "text": "Asking for the default availability zone (nova) keeps only hosts without a zone. Nova 34 has no "
             "AvailabilityZoneFilter; its request filter finds no aggregate for the default zone and restricts "
             "nothing, so hosts of every zone stay candidates. Keeping to the zone the user named is the "
             "saner reading of the request."},
    {"name": "unscoped-extra-specs",
     "option": "match_unscoped_extra_specs=true",
     "text": "Only flavor extra specs scoped aggregate_instance_extra_specs: (or capabilities:) are matched "
             "against aggregate metadata (or host capabilities). Nova also matches unscoped keys, which collide "
             "with other uses of extra specs."},
    {"name": "resource-weighers",
     "option": "resource_weighers=allocation",
     "text": "None by default: the RAM, vCPU and disk weighers weigh what Nova's HostState reports (reservations "
             "count as used, RAM and disk physical, vCPUs times the ratio). resource_weighers=allocation weighs "
             "free capacity after ratio and reservation instead (placement's view, this collection's former "
             "default), which ranks hosts differently whenever a ratio is not 1.0 or reservations differ."},
    {"name": "num-instances-filter",
     "option": "enabled_filters",
     "text": "The default filter list adds placement's checks (RamFilter, CoreFilter, DiskFilter, "
             "DedicatedCpuFilter, TraitsFilter), AvailabilityZoneFilter (Nova's zone request filter), "
             "AggregateInstanceExtraSpecsFilter, NumInstancesFilter (Nova's max_instances_per_host of 50), "
             "SameHostFilter and DifferentHostFilter to Nova's ComputeFilter, ComputeCapabilitiesFilter, "
             "ImagePropertiesFilter and the server group filters. IoOpsFilter is opt-in, as in Nova."},
    {"name": "requested-host",
     "option": None,
     "text": "An explicit host (server 'host') runs through every filter, like Nova's requested host (API 2.74), "
             "not the legacy forced host that skipped them."},
    {"name": "traits-and-pcpus",
     "option": None,
     "text": "TraitsFilter stands in for placement's required/forbidden traits (flavor extra specs trait:NAME="
             "required|forbidden). DedicatedCpuFilter stands in for placement's PCPU resource class: a flavor "
             "with hw:cpu_policy=dedicated needs as many host CPUs that no other dedicated server holds; without "
             "Nova's cpu_shared_set/cpu_dedicated_set split such a server also counts its vCPUs in the shared "
             "vCPU capacity (CoreFilter), as Nova did before the split."},
    {"name": "alternates",
     "option": None,
     "text": "Alternates are, per server, the next best hosts that could still hold it when it was placed. Nova "
             "takes them for every server of a request from the list sorted for its last server, leaving out "
             "every host chosen in the request, whether they still fit or not."},
    {"name": "unplaced",
     "option": None,
     "text": "With allow_unplaced a server that fits nowhere is reported and the rest of its request is still "
             "placed; Nova fails a multi-create request as a whole. Without allow_unplaced the batch fails."},
    {"name": "capabilities",
     "option": None,
     "text": "ComputeCapabilitiesFilter sees the host's static facts (hypervisor_type, hypervisor_version, "
             "hypervisor_hostname, cpu_info, vcpus_total, total_usable_ram_mb, total_usable_disk_gb and the "
             "record's stats), not Nova's changing usage figures (free_ram_mb and the like)."},
    {"name": "io-ops-source",
     "option": None,
     "text": "A host's in-flight I/O operations are its record's io_ops, or its servers whose vm_state is "
             "building or whose task_state is an I/O-heavy one (Nova's io_workload); host_info reports neither "
             "today, because this collection's operations finish within the run that starts them, so in practice "
             "the count is the placements of the batch."},
    {"name": "shuffle-ties",
     "option": None,
     "text": "With shuffle_best_same_weighed_hosts the best equal hosts are drawn at random as in Nova, but the "
             "later ties of the same request are broken as if the unchosen best hosts had kept their order."},
    {"name": "host-features-filter",
     "option": "enabled_filters",
     "text": "HostFeaturesFilter (on by default) leaves out a host without enough free huge pages for "
             "hw:mem_page_size, counted over the whole host (libvirt takes them from any cell when the guest has no "
             "NUMA topology of its own), and a host whose kernel cannot shape NIC traffic for quota:vif_* (which "
             "Nova does not check; the start fails there). Nova's NUMATopologyFilter fits the pages in one cell. "
             "Pages that earlier servers of the same run will hold are not taken away; the server module refuses "
             "on the host if they run out."},
    {"name": "weighers-not-modelled",
     "option": None,
     "text": "MetricsWeigher, PCIWeigher, CrossCellWeigher and ImagePropertiesWeigher (off by default in Nova) "
             "are not implemented: there are no compute metrics, PCI pools, cells or per-server image "
             "properties to weigh."},
)


@dataclass(frozen=True)
class Options:
    host_subset_size: int = 1
    alternates: int = 2
    max_instances_per_host: int = 50
    max_io_ops_per_host: int = 8
    default_availability_zone: str = "nova"
    restrict_default_availability_zone: bool = True
    match_unscoped_extra_specs: bool = False
    resource_weighers: str = "nova"
    shuffle_best_same_weighed_hosts: bool = False


@dataclass
class Placement:
    """Where one server goes. ``host`` is None only for unplaced servers (``allow_unplaced``)."""

    name: str
    host: str | None
    alternates: list = field(default_factory=list)
    existing: bool = False
    reasons: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "host": self.host,
            "alternates": list(self.alternates),
            "existing": self.existing,
            "reasons": dict(self.reasons),
        }


class Scheduler:
    """Place servers on hosts; the hosts' usage is updated by every placement.

    :param hosts: host records (see the collection's ``host_info``): name, up, enabled, disabled_reason,
        availability_zone, aggregates (name -> metadata dict), traits, vcpus/memory_mb/local_gb with ``*_used``,
        allocation ratios, reservations, servers (managed servers already there), running_vms, and optionally
        hypervisor_type, hypervisor_version, cpu (or cpu_info), virt_type, supported_instances, stats,
        disk_available_least, io_ops, failed_builds.
    :param weights: weigher multipliers (:class:`Weights` or a dict of its fields).
    :param enabled_filters: filter names from :data:`ALL_FILTERS`, run in that order for the rejection reasons.
    :param host_subset_size: the choice is random among this many best hosts (1: always the best).
    :param seed: seeds ``random.Random``; None draws a fresh seed. Same seed and input, same answer.
    :param alternates: how many next-best hosts to return with each choice.
    :param max_instances_per_host: NumInstancesFilter's limit.
    :param max_io_ops_per_host: IoOpsFilter's limit.
    :param default_availability_zone: the zone of hosts that name none (Nova's ``default_availability_zone``).
    :param restrict_default_availability_zone: see :data:`DEVIATIONS` (false: Nova's behaviour).
    :param match_unscoped_extra_specs: see :data:`DEVIATIONS` (true: Nova's behaviour).
    :param resource_weighers: ``nova`` (Nova's HostState figures) or ``allocation`` (free capacity after ratios).
    :param shuffle_best_same_weighed_hosts: Nova's option: choose at random among the hosts of equal best weight.
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
        max_io_ops_per_host: int = 8,
        default_availability_zone: str = "nova",
        restrict_default_availability_zone: bool = True,
        match_unscoped_extra_specs: bool = False,
        resource_weighers: str = "nova",
        shuffle_best_same_weighed_hosts: bool = False,
        fast: bool = True,
    ):
        self.weights = Weights.of(weights)
        filters = list(DEFAULT_FILTERS if enabled_filters is None else enabled_filters)
        unknown = [f for f in filters if f not in ALL_FILTERS]
        if unknown:
            raise SchedulerInputError(
                "unknown filter(s) %s; known: %s" % (", ".join(map(str, unknown)), ", ".join(ALL_FILTERS)),
                "enabled_filters")
        self.filters = tuple(dict.fromkeys(filters))
        self.enabled = frozenset(self.filters)
        for value, name, low in ((host_subset_size, "host_subset_size", 1), (alternates, "alternates", 0),
                                 (max_instances_per_host, "max_instances_per_host", 0),
                                 (max_io_ops_per_host, "max_io_ops_per_host", 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SchedulerInputError("must be an integer >= %d, got %r" % (low, value), name)
        if resource_weighers not in RESOURCE_WEIGHERS:
            raise SchedulerInputError("must be one of %s, got %r" % (", ".join(RESOURCE_WEIGHERS), resource_weighers),
                                      "resource_weighers")
        self.options = Options(
            host_subset_size=host_subset_size, alternates=alternates, max_instances_per_host=max_instances_per_host,
            max_io_ops_per_host=max_io_ops_per_host, default_availability_zone=str(default_availability_zone),
            restrict_default_availability_zone=inputs.as_bool(restrict_default_availability_zone,
                                                              "restrict_default_availability_zone"),
            match_unscoped_extra_specs=inputs.as_bool(match_unscoped_extra_specs, "match_unscoped_extra_specs"),
            resource_weighers=resource_weighers,
            shuffle_best_same_weighed_hosts=inputs.as_bool(shuffle_best_same_weighed_hosts,
                                                           "shuffle_best_same_weighed_hosts"))
        self.host_subset_size = host_subset_size
        self.alternates = alternates
        self.fast = fast
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, str, bytes))):
            # random.Random only accepts a few seed types; any other value still seeds reproducibly by its text.
            seed = str(seed)
        self.rng = random.Random(seed)
        self.t = inputs.load_hosts(hosts, self.options, self.weights)
        t = self.t
        self.groups, self.loc = t.groups, t.loc
        n = len(t.names)
        self.res_filters = tuple(r for f, r in F.RESOURCE.items() if f in self.enabled)
        self.ninst_filter = "NumInstancesFilter" in self.enabled
        self.io_filter = "IoOpsFilter" in self.enabled
        self.chain = tuple((name, F.METHODS[name]) for name in self.filters)
        # Weigher inputs as Nova's weighers see them: minval-0 weighers count negative values as 0.
        self.xv = [None] * len(W.ORDER)
        for slot in W.ORDER:
            raw = t.wraw[slot]
            self.xv[slot] = [v if v > 0 else 0 for v in raw] if slot in W.MINVAL_ZERO else list(raw)
        # A weigher adds something only with a multiplier somewhere and values that can differ; hypervisor
        # versions and build failures do not change within a batch.
        self.slots = tuple(
            slot for slot in W.ORDER
            if any(t.mult[slot]) and (slot not in (W.HYPERVISOR_VERSION, W.BUILD_FAILURE)
                                      or len(set(t.wraw[slot])) > 1))
        # A weigher's multiplier when every host has the same (no aggregate overrides it), else None.
        self.uniform = {slot: (t.mult[slot][0] if t.mult[slot] and len(set(t.mult[slot])) == 1 else None)
                        for slot in W.ORDER}
        self.mabs = {slot: max((abs(m) for m in t.mult[slot]), default=0.0) for slot in W.ORDER}
        self.smax = tuple(max((sm[w] for sm in t.soft_mult), default=0.0) for w in (0, 1))
        self.soft_active = tuple(any(sm[w] for sm in t.soft_mult) for w in (0, 1))
        # The range scores can span: the scan's margin and the drift that makes ranking afresh worth it scale with it.
        self.span = sum(self.mabs[slot] for slot in self.slots) + sum(abs(x) for x in self.smax) or 1.0
        # Scores are sums of at most these magnitudes; rounding errors stay far below this margin.
        self.eps = 1e-9 * (1.0 + sum(self.mabs[slot] for slot in self.slots) + sum(abs(x) for x in self.smax))
        self.pools: dict = {}
        self.static: dict = {}
        self.reason_cache: dict = {}
        self.log: list = []
        self.flavor_cache: dict = {}
        self.groups_policy: dict = {}
        self.n = n
        self._end_run()

    # -- hosts ---------------------------------------------------------------------------------------------------

    @property
    def hosts(self) -> list:
        return list(self.t.names)

    def usage(self) -> dict:
        """Each host's usage now, placements of this scheduler included; capacities after ratio and reservation."""
        t = self.t
        out = {}
        for i, name in enumerate(t.names):
            entry = {"num_instances": t.ninst[i], "io_ops": t.io_ops[i]}
            for r, resource in enumerate(inputs.RESOURCES):
                entry[resource] = {"used": t.used[r][i], "capacity": t.cap[r][i], "max_unit": t.maxu[r][i]}
            out[name] = entry
        return out

    # -- what the filters and the ranking ask ---------------------------------------------------------------------

    def fits(self, i, res, before=None):
        """Placement's check of ``res`` on host ``i`` now (or with the usage ``before``).

        ``_capacity.resource_fits`` (what claims use) inlined: this runs a few times per placement and host.
        tests/unit/plugins/module_utils/_scheduler/test_scheduler.py checks that both always agree.
        """
        t = self.t
        for r in self.res_filters:
            amount = res[r]
            if amount and (amount > t.maxu[r][i]
                           or (t.used[r][i] if before is None else before[r]) + amount > t.cap[r][i]):
                return False
        return True

    def fits_at_start(self, i, res):
        """Whether host ``i`` could hold ``res`` when the current request started (placement's candidates)."""
        before = self.run_start_used.get(i)
        return self.fits(i, res) if before is None else self.fits(i, res, before)

    def counts_pass(self, i):
        t = self.t
        if self.ninst_filter and t.ninst[i] >= self.options.max_instances_per_host:
            return False
        return not (self.io_filter and t.io_ops[i] >= self.options.max_io_ops_per_host)

    def static_candidates(self, req):
        key = req.static_key()
        found = self.static.get(key)
        if found is None:
            checks = [method for name, method in self.chain if name in F.STATIC]
            found = [i for i in range(self.n) if all(method(self, i, req) is None for method in checks)]
            self.static[key] = found
        return found

    def group_count(self, i):
        return self.groups.get(self.run_group, {}).get(i, 0) if self.run_group else 0

    def vector(self, i):
        return tuple(self.xv[slot][i] for slot in W.ORDER) + (self.group_count(i),)

    def vector_at(self, i, step):
        for at, vec in self.run_snap.get(i, ()):
            if at >= step:
                return vec
        return self.vector(i)

    def last_event(self, i, step):
        last = -1
        for at in self.run_events.get(i, ()):
            if last < at < step:
                last = at
        return last

    def same_multipliers(self, g, h):
        mult = self.t.mult
        return all(mult[slot][g] == mult[slot][h] for slot in self.slots) and \
            self.t.soft_mult[g] == self.t.soft_mult[h]

    # -- one request at a time ------------------------------------------------------------------------------------

    def _end_run(self):
        self.run_steps = []
        self.run_snap = {}
        self.run_events = {}
        self.run_group = None
        self.run_start_used = {}
        self.run_prev = None
        self.run_excluded = frozenset()
        self.run_same = None

    def _start_run(self, req):
        self._end_run()
        self.run_group = req.group
        if "DifferentHostFilter" in self.enabled and req.different_host:
            # Nova runs the hint filters once per request.
            self.run_excluded = {self.loc[n] for n in req.different_host if n in self.loc}
        if "SameHostFilter" in self.enabled and req.same_host:
            self.run_same = sorted({self.loc[n] for n in req.same_host if n in self.loc})
        if not self.fast:
            if req.host is not None:
                candidates = [self.t.index[req.host]] if req.host in self.t.index else []
            else:
                candidates = range(self.n)
            static = set(self.static_candidates(req))
            self.run_prev = [i for i in candidates if i in static and self.fits(i, req.res)]

    def _soft(self, req):
        """(which multiplier, sign) of the soft weigher the request's group uses, or None."""
        if req.policy == "soft-affinity" and self.soft_active[0]:
            return 0, 1
        if req.policy == "soft-anti-affinity" and self.soft_active[1]:
            return 1, -1
        return None

    def _passes_step(self, i, req):
        """Filters Nova runs for every server of a request: counts and server groups."""
        if not self.counts_pass(i):
            return False
        if "ServerGroupAntiAffinityFilter" in self.enabled and F.anti_affinity_filter(self, i, req) is not None:
            return False
        if "ServerGroupAffinityFilter" in self.enabled and F.affinity_filter(self, i, req) is not None:
            return False
        if i in self.run_excluded:
            return False
        return self.run_same is None or i in self.run_same

    def _narrowed(self, req):
        """The few hosts a request is restricted to (explicit host, affinity, same_host), or None."""
        if req.host is not None:
            idx = self.t.index.get(req.host)
            return [] if idx is None else [idx]
        if req.policy == "affinity" and "ServerGroupAffinityFilter" in self.enabled and self.groups.get(req.group):
            return sorted(self.groups[req.group])
        if self.run_same is not None:
            return self.run_same
        return None

    def _excluded(self, req):
        if req.policy == "anti-affinity" and "ServerGroupAntiAffinityFilter" in self.enabled:
            out = set(self.run_excluded)
            out.update(i for i, c in self.groups.get(req.group, {}).items() if c >= req.max_per_host)
            return out
        return self.run_excluded

    def _order_reference(self, req):
        """Nova's loop, literally: filter the previous list, weigh, stable-sort."""
        passing = [i for i in self.run_prev if self._passes_step(i, req)]
        if not passing:
            return None, None, []
        params, soft = ranking.params_over(self, passing, self._soft(req))
        scores = {i: ranking.score(self, params, soft, i) for i in passing}
        order = sorted(passing, key=lambda i: -scores[i])
        return params, soft, [(scores[i], i) for i in order]

    def _order_narrowed(self, req, narrowed):
        static = set(self.static_candidates(req))
        passing = [i for i in narrowed if i in static and self.fits_at_start(i, req.res) and self._passes_step(i, req)]
        if not passing:
            return None, None, []
        params, soft = ranking.params_over(self, passing, self._soft(req))
        return params, soft, ranking.ordered(self, [(ranking.score(self, params, soft, i), i) for i in passing])

    def _order_fast(self, req, first):
        pool = ranking.get_pool(self, req, at_start=first)
        members = pool.members
        excluded = self._excluded(req)
        if excluded:
            excluded = excluded & members
        n_passing = len(members) - len(excluded)
        if n_passing <= 0:
            return None, None, []
        params, ends = ranking.pool_params(self, pool, excluded)
        soft_info = self._soft(req)
        soft, group_on = None, {}
        if soft_info is not None:
            which, sign = soft_info
            counts = self.groups.get(req.group, {})
            group_on = {i: sign * c for i, c in counts.items() if c and i in members and i not in excluded}
            values = list(group_on.values())
            if n_passing > len(group_on):
                values.append(0)  # a passing host without group members
            lo, hi = min(values), max(values)
            if hi != lo:
                soft = (which, sign, float(lo), float(hi) - float(lo))
        need = 1 + self.alternates
        k = max(self.host_subset_size, need)
        while True:
            scored = ranking.top(self, pool, excluded, params, soft, group_on, k, ends)
            order = ranking.ordered(self, scored)
            if len(order) >= n_passing or not pool.unfit:
                return params, soft, order  # everything there is, or every member fits
            fitting = 0
            for _score, i in order:
                if i not in pool.unfit or self.fits(i, req.res):
                    fitting += 1
                    if fitting >= need:
                        return params, soft, order
            k *= 2

    def _place_in_run(self, req, first, more=True):
        if first:
            self._start_run(req)
        narrowed = None if not self.fast else self._narrowed(req)
        if not self.fast:
            params, soft, order = self._order_reference(req)
        elif narrowed is not None:
            params, soft, order = self._order_narrowed(req, narrowed)
        else:
            params, soft, order = self._order_fast(req, first)
        if not order:
            raise NoValidHost(req.name, self._reasons(req), self._summary(req))
        ids = [i for _score, i in order]
        if self.options.shuffle_best_same_weighed_hosts:
            best = [i for value, i in order if value == order[0][0]]
            self.rng.shuffle(best)
            ids = best + ids[len(best):]
        if self.host_subset_size > 1:
            front = self.rng.choice(ids[:self.host_subset_size])
            listed = [front] + [i for i in ids if i != front]
        else:
            front, listed = ids[0], ids
        # Nova claims the first host of the list that still has room; the next ones that do are the alternates.
        chosen, alternates = None, []
        for i in listed:
            if self.fits(i, req.res):
                if chosen is None:
                    chosen = i
                elif len(alternates) < self.alternates:
                    alternates.append(i)
                else:
                    break
        if chosen is None:
            raise NoValidHost(req.name, self._reasons(req), self._summary(req))
        if more:
            # What the tie-breaking of the request's later servers needs (ranking.tie_order).
            step = len(self.run_steps)
            self.run_steps.append(ranking.Step(params, soft, front))
            self.run_events.setdefault(front, []).append(step)
            self.run_events.setdefault(chosen, []).append(step)
            self.run_snap.setdefault(chosen, []).append((step, self.vector(chosen)))
        if not self.fast:
            self.run_prev = listed
        self._consume(chosen, req)
        return Placement(req.name, self.t.names[chosen], [self.t.names[i] for i in alternates], False, {})

    def _consume(self, idx, req):
        t = self.t
        if idx not in self.run_start_used:
            self.run_start_used[idx] = tuple(t.used[r][idx] for r in range(len(inputs.RESOURCES)))
        for r in range(len(inputs.RESOURCES)):
            t.used[r][idx] += req.res[r]
        ram, vcpus, disk = req.weigh_use
        raw = t.wraw
        raw[W.RAM][idx] -= ram
        t.cpu_used[idx] += vcpus
        raw[W.CPU][idx] = t.cpu_total[idx] - t.cpu_used[idx]
        raw[W.DISK][idx] -= disk
        t.io_ops[idx] += 1
        t.ninst[idx] += 1
        raw[W.IO_OPS][idx] = t.io_ops[idx]
        raw[W.NUM_INSTANCES][idx] = t.ninst[idx]
        for slot in (W.RAM, W.CPU, W.DISK, W.IO_OPS):
            value = raw[slot][idx]
            self.xv[slot][idx] = value if value > 0 else 0
        self.xv[W.NUM_INSTANCES][idx] = t.ninst[idx]
        self.loc[req.name] = idx
        if req.group:
            counts = self.groups.setdefault(req.group, {})
            counts[idx] = counts.get(idx, 0) + 1
        self.log.append(idx)

    # -- reasons --------------------------------------------------------------------------------------------------

    def first_rejection(self, i, req):
        """(filter name, why) of the first enabled filter rejecting host ``i`` for ``req`` now, or None."""
        for name, method in self.chain:
            why = method(self, i, req)
            if why is not None:
                return name, why
        return None

    def _reasons(self, req) -> dict:
        """``{host: "Filter: why"}`` for every host (only the requested one when the server names a host).

        Called for every unplaced server, so it must not cost hosts x filters each time: the rejections by filters
        that depend only on the request's shape and size are kept and redone only for hosts a placement changed
        since; the per-server filters are cheap checks on top.
        """
        names = self.t.names
        if req.host is not None:
            idx = self.t.index.get(req.host)
            if idx is None:
                return {req.host: "RequestedHost: no such host among the %d candidates" % len(names)}
            rejected = self.first_rejection(idx, req)
            return {req.host: "%s: %s" % rejected if rejected else "passes the filters"}
        # The flavor name is part of the key because the aggregate filter's message quotes it.
        key = (req.static_key(), req.res, req.flavor_name)
        cached = self.reason_cache.get(key)
        if cached is None:
            todo = range(len(names))
            cached = self.reason_cache[key] = [0, {}]
        else:
            todo = set(self.log[cached[0]:])
        cached[0] = len(self.log)
        by_pool = cached[1]
        pool_chain = [(pos, name, method) for pos, (name, method) in enumerate(self.chain)
                      if name not in F.PER_SERVER]
        for idx in todo:
            for pos, name, method in pool_chain:
                why = method(self, idx, req)
                if why is not None:
                    by_pool[idx] = (pos, "%s: %s" % (name, why))
                    break
            else:
                by_pool.pop(idx, None)
        server_chain = [(pos, name, method) for pos, (name, method) in enumerate(self.chain)
                        if name in F.PER_SERVER and F.PER_SERVER[name](req)]
        none = (len(self.chain), "passes the filters")
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

    def _summary(self, req) -> str:
        vcpus, ram, disk, _pcpus = (_capacity.format_amount(v) for v in req.res)
        return " (flavor %s: %s vCPUs%s, %s MB RAM, %s GB disk)" % (
            req.flavor_name or "(unnamed)", vcpus, " dedicated" if req.res[3] else "", ram, disk)

    # -- the public calls -----------------------------------------------------------------------------------------

    def _check_group(self, req, where):
        if not req.group:
            return
        known = self.groups_policy.setdefault(req.group, (req.policy, req.max_per_host, where))
        if known[:2] != (req.policy, req.max_per_host):
            raise SchedulerInputError(
                "server group '%s' has policy %s (max %d per host) in %s but %s (max %d per host) here" % (
                    req.group, known[0], known[1], known[2], req.policy, req.max_per_host), where + ".server_group")

    def place(self, server: Mapping[str, Any]) -> Placement:
        """Place one server, a request of its own (or report where it already is); raises :class:`NoValidHost`."""
        req = inputs.parse_server(server, "server", self.options, self.flavor_cache)
        self._check_group(req, "server")
        return self.place_request(req)

    def place_request(self, req) -> Placement:
        """Place one parsed request (``inputs.parse_server``) as a request of its own."""
        existing = self.loc.get(req.name)
        if existing is not None:
            return Placement(req.name, self.t.names[existing], [], True, {})
        try:
            return self._place_in_run(req, True, more=False)
        finally:
            self._end_run()

    def schedule(self, servers: Iterable[Mapping[str, Any]], allow_unplaced: bool = False) -> list:
        """Place a batch in order. Every request is validated before anything is placed.

        With ``allow_unplaced`` a server that fits nowhere comes back with ``host`` None and its ``reasons`` and
        the batch goes on; otherwise the first such server raises :class:`NoValidHost` for the whole batch.
        """
        if isinstance(servers, (Mapping, str, bytes)):
            raise SchedulerInputError("must be a list of server requests", "servers")
        requests, names = [], set()
        for i, server in enumerate(servers):
            where = "servers[%d]" % i
            req = inputs.parse_server(server, where, self.options, self.flavor_cache)
            if req.name in names:
                raise SchedulerInputError("server %r appears twice in the batch" % req.name, where + ".name")
            names.add(req.name)
            self._check_group(req, where)
            requests.append(req)
        placements: list = []
        run_key = None
        # Which servers are placed, and whether the next placed one goes on the same request.
        placed = [req for req in requests if req.name not in self.loc]
        goes_on = {id(a): a.key == b.key for a, b in zip(placed, placed[1:])}
        try:
            for req in requests:
                existing = self.loc.get(req.name)
                if existing is not None:
                    placements.append(Placement(req.name, self.t.names[existing], [], True, {}))
                    continue
                first = req.key != run_key
                run_key = req.key
                try:
                    placements.append(self._place_in_run(req, first, goes_on.get(id(req), False)))
                except NoValidHost as exc:
                    if not allow_unplaced:
                        exc.placed = placements
                        raise
                    placements.append(Placement(req.name, None, [], False, exc.reasons))
        finally:
            self._end_run()
        return placements


def schedule(
    servers: Iterable[Mapping[str, Any]],
    hosts: Iterable[Mapping[str, Any]],
    *,
    allow_unplaced: bool = False,
    **options: Any,
) -> list:
    """Place ``servers`` on ``hosts`` in one batch; ``options`` are :class:`Scheduler`'s keyword arguments."""
    return Scheduler(hosts, **options).schedule(servers, allow_unplaced=allow_unplaced)
