# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Nova's weighers: what each one weighs, its multiplier (per host, aggregates may override it), its normalization.

Every weigher's raw values are normalized over the hosts being weighed (Nova's ``nova.weights.normalize``): the
RAM, vCPU, disk and I/O ops weighers have ``minval = 0`` (values below 0 count as 0 and the range is ``0..max``),
the others use the observed minimum and maximum; when all values are equal the weigher adds nothing. The score
of a host is the sum of ``multiplier * normalized`` in :data:`ORDER`, the highest wins.

Values follow Nova's ``HostState`` (what the compute node reports, then what each placement of the request
consumes), unless ``resource_weighers="allocation"`` asks for this collection's former placement-style view:

=============  ====================================================  ============================================
weigher        value (Nova, the default)                             value with ``resource_weighers=allocation``
=============  ====================================================  ============================================
RAM            ``memory_mb - reserved - used`` (may go below 0)      ``(memory_mb - reserved) * ratio - used``
vCPU           ``vcpus * ratio - (used + reserved)``                 ``(vcpus - reserved) * ratio - used``
disk (MB)      ``(local_gb - reserved_mb / 1024 - used_gb) * 1024``,  ``(local_gb - reserved) * ratio - used``,
               at most ``disk_available_least``; a placement takes   GB; a placement takes what the claim takes
               ``root + ephemeral`` (Nova's HostState leaves swap
               out of what a placement consumes)
=============  ====================================================  ============================================

Only the standard library: module_utils also run on managed hosts (server_action schedules a migration target).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ansible_collections.virtfleet.compute.plugins.module_utils._scheduler.errors import SchedulerInputError

# Weigher slots; ORDER is the order the scores are summed in (Nova sums in its weigher list's order, which follows
# the directory listing of nova/scheduler/weights and so varies between installations; the differential test
# configures Nova with this order so float totals are bit-identical).
RAM, CPU, DISK, IO_OPS, NUM_INSTANCES, HYPERVISOR_VERSION, BUILD_FAILURE, SOFT = range(8)
ORDER = (RAM, CPU, DISK, IO_OPS, NUM_INSTANCES, HYPERVISOR_VERSION, BUILD_FAILURE)
# Weighers whose Nova class sets ``minval = 0``: negative values count as 0 and normalization starts at 0.
MINVAL_ZERO = frozenset((RAM, CPU, DISK, IO_OPS))

# Weights field -> (slot, Nova option / aggregate metadata key)
FIELDS = {
    "ram": (RAM, "ram_weight_multiplier"),
    "cpu": (CPU, "cpu_weight_multiplier"),
    "disk": (DISK, "disk_weight_multiplier"),
    "io_ops": (IO_OPS, "io_ops_weight_multiplier"),
    "num_instances": (NUM_INSTANCES, "num_instances_weight_multiplier"),
    "hypervisor_version": (HYPERVISOR_VERSION, "hypervisor_version_weight_multiplier"),
    "build_failure": (BUILD_FAILURE, "build_failure_weight_multiplier"),
    "soft_affinity": (SOFT, "soft_affinity_weight_multiplier"),
    "soft_anti_affinity": (SOFT, "soft_anti_affinity_weight_multiplier"),
}
AGGREGATE_KEYS = tuple(option for _slot, option in FIELDS.values())

RESOURCE_WEIGHERS = ("nova", "allocation")

# Nova's io_workload: servers building, or in one of these task states (nova/compute/stats.py).
IO_TASK_STATES = frozenset(("resize_migrating", "rebuilding", "resize_prep", "image_snapshot", "image_backup",
                            "rescuing", "unshelving", "shelving", "shelving_image_uploading"))


@dataclass(frozen=True)
class Weights:
    """Weigher multipliers: Nova's option names without ``_weight_multiplier``, with Nova's defaults.

    Positive ``ram``/``cpu``/``disk`` spread servers, negative ones stack them. ``io_ops`` weighs in-flight I/O
    operations (negative, the default, prefers quiet hosts; every placement of a batch counts as one).
    ``num_instances`` weighs the number of servers (negative prefers emptier hosts; 0, the default, ignores it).
    ``hypervisor_version`` prefers newer hypervisors when positive. ``build_failure`` is subtracted per recent
    failed build, so the default 1000000 puts any host with a failure last.
    """

    ram: float = 1.0
    cpu: float = 1.0
    disk: float = 1.0
    io_ops: float = -1.0
    num_instances: float = 0.0
    hypervisor_version: float = 1.0
    build_failure: float = 1000000.0
    soft_affinity: float = 1.0
    soft_anti_affinity: float = 1.0

    def __post_init__(self):
        for name in FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SchedulerInputError("must be a finite number, got %r" % (value,), "weights.%s" % name)
            object.__setattr__(self, name, float(value))
        # Nova warns and will refuse: a negative soft weight would turn the policy into its opposite.
        for name in ("soft_affinity", "soft_anti_affinity"):
            if getattr(self, name) < 0:
                raise SchedulerInputError("must be >= 0", "weights.%s" % name)

    @classmethod
    def of(cls, weights):
        if weights is None:
            return cls()
        if isinstance(weights, cls):
            return weights
        if not hasattr(weights, "items"):
            raise SchedulerInputError("must be a dict of weigher multipliers", "weights")
        unknown = set(weights) - set(FIELDS)
        if unknown:
            raise SchedulerInputError("unknown weigher(s) %s" % ", ".join(sorted(map(str, unknown))), "weights")
        return cls(**weights)


def aggregate_multipliers(aggregates, where):
    """``{option: multiplier}`` a host's aggregates set; Nova takes the smallest when several aggregates disagree."""
    found = {}
    for agg_name, metadata in aggregates:
        for option in AGGREGATE_KEYS:
            if option not in metadata:
                continue
            raw = metadata[option]
            try:
                value = float(raw)
            except (TypeError, ValueError):
                value = float("nan")
            if isinstance(raw, bool) or not math.isfinite(value):
                # Nova logs a warning and uses the configured value; a typo in an aggregate should not go unseen.
                raise SchedulerInputError("must be a number, got %r" % (raw,),
                                          "%s.aggregates.%s.%s" % (where, agg_name, option))
            found[option] = min(found.get(option, value), value)
    return found


def host_multipliers(weights: Weights, overrides: dict) -> tuple:
    """Per slot in ``ORDER``, and for the soft-affinity / soft-anti-affinity weighers, this host's multiplier."""
    out = []
    for name in ("ram", "cpu", "disk", "io_ops", "num_instances", "hypervisor_version", "build_failure"):
        option = FIELDS[name][1]
        value = overrides.get(option, getattr(weights, name))
        # Nova's BuildFailureWeigher negates its multiplier: more failures, lower weight.
        out.append(-value if name == "build_failure" else value)
    soft = (overrides.get("soft_affinity_weight_multiplier", weights.soft_affinity),
            overrides.get("soft_anti_affinity_weight_multiplier", weights.soft_anti_affinity))
    return tuple(out), soft


def version_to_int(value, where):
    """A hypervisor version as Nova stores it: ``major * 1000000 + minor * 1000 + micro`` (e.g. QEMU 7.2.0)."""
    if value in (None, ""):
        return 0
    if isinstance(value, bool):
        raise SchedulerInputError("must be a version, got %r" % (value,), where)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    parts = str(value).strip().split(".")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise SchedulerInputError("must be an integer or a dotted version like 7.2.0, got %r" % (value,), where)
    if len(numbers) == 1:
        return numbers[0]
    numbers = (numbers + [0, 0])[:3]
    return numbers[0] * 1000000 + numbers[1] * 1000 + numbers[2]


def count(value, where):
    if value in (None, ""):
        return 0
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = -1
    if isinstance(value, bool) or number < 0 or (isinstance(value, float) and not value.is_integer()):
        raise SchedulerInputError("must be an integer >= 0, got %r" % (value,), where)
    return number


def io_ops_of(host, where):
    """In-flight I/O operations: the record's ``io_ops``, or its servers building or in an I/O-heavy task."""
    if host.get("io_ops") is not None:
        return count(host.get("io_ops"), where + ".io_ops")
    busy = 0
    for server in host.get("servers") or ():
        if hasattr(server, "get") and (server.get("vm_state") == "building"
                                       or server.get("task_state") in IO_TASK_STATES):
            busy += 1
    return busy


def normalize_params(slot, values):
    """``(lo, range)`` Nova normalizes ``values`` with, or None when the weigher adds nothing (all equal)."""
    hi = max(values)
    if slot in MINVAL_ZERO:
        # Values were clamped at 0 already, so max >= 0; all zero means nothing to normalize.
        lo = 0.0
        if hi <= 0:
            return None
    else:
        lo = min(values)
        if hi == lo:
            return None
    return float(lo), float(hi) - float(lo)
