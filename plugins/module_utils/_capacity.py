# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Capacity arithmetic shared by the scheduler (controller side) and by claims (host side).

The numbers follow Nova's placement service, so a server the scheduler placed is a server the host's claim accepts:

* ``capacity = (total - reserved) * allocation_ratio`` per resource class;
* a request of ``amount`` fits when ``used + amount <= capacity`` **and** ``amount <= max_unit``, where ``max_unit``
  is the host's physical total: overcommit shares a host between servers, it never makes one server larger than
  its host (that is what Nova's libvirt driver reports to placement);
* a resource the request does not ask for (amount 0) is not checked at all, as placement does, so a flavor with no
  disk still fits on a host whose disk is overcommitted.

Resources and their units: ``vcpus`` (vCPUs), ``memory_mb`` (MiB), ``disk_gb`` (GiB).

Only the standard library is imported: module_utils also run on the managed hosts, with Python 3.8 and later.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math

# ``pcpus`` are host CPUs given to one server alone (flavor extra spec hw:cpu_policy=dedicated), placement's PCPU
# resource class. This collection keeps no separate sets of shared and dedicated host CPUs (Nova's cpu_shared_set and
# cpu_dedicated_set), so, as in Nova before those sets existed, a dedicated server takes its vCPUs from the shared vCPU
# capacity (at the CPU allocation ratio) and as many host CPUs from the dedicated capacity (never overcommitted).
RESOURCES = ("vcpus", "memory_mb", "disk_gb", "pcpus")

UNITS = {"vcpus": "vCPUs", "memory_mb": "MB", "disk_gb": "GB", "pcpus": "dedicated CPUs"}

# The host fields each resource is computed from: total, used, reserved, allocation ratio (None: never overcommitted).
HOST_FIELDS = {
    "vcpus": ("vcpus", "vcpus_used", "reserved_host_cpus", "cpu_allocation_ratio"),
    "memory_mb": ("memory_mb", "memory_mb_used", "reserved_host_memory_mb", "ram_allocation_ratio"),
    "disk_gb": ("local_gb", "local_gb_used", "reserved_host_disk_mb", "disk_allocation_ratio"),
    "pcpus": ("vcpus", "pcpus_used", "reserved_host_cpus", None),
}

# This collection's defaults: the ratios are the overcommit it was built for and Nova's defaults until 2023.1 (Nova
# 2023.1 and later start new compute nodes at 4.0 / 1.0 / 1.0); 512 MiB reserved is Nova's. Every other number is 0.
DEFAULTS = {
    "cpu_allocation_ratio": 16.0,
    "ram_allocation_ratio": 1.5,
    "disk_allocation_ratio": 1.0,
    "reserved_host_memory_mb": 512,
    "reserved_host_cpus": 0,
    "reserved_host_disk_mb": 0,
}


def mb_to_ceil_gb(mb):
    """MiB to whole GiB, rounded up, as Nova does for swap and reserved disk: a partial GiB still takes a GiB."""
    return int(math.ceil(mb / 1024.0))


def _number(record, key, default, what):
    value = record.get(key)
    if value is None:
        return default
    # bool is an int subclass; "enabled: true" landing in a numeric field is a mistake worth reporting.
    if isinstance(value, bool):
        raise ValueError("%s.%s must be a number, got %r" % (what, key, value))
    if not isinstance(value, (int, float)):
        # Inventory sources (INI, extra vars) hand numbers over as strings.
        try:
            value = int(value)
        except (TypeError, ValueError):
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ValueError("%s.%s must be a number, got %r" % (what, key, value))
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise ValueError("%s.%s must be a finite number >= 0, got %r" % (what, key, value))
    return value


def is_dedicated(flavor):
    """Whether a flavor dict pins its vCPUs to host CPUs of their own (hw:cpu_policy=dedicated)."""
    specs = flavor.get("extra_specs") or {}
    return hasattr(specs, "get") and str(specs.get("hw:cpu_policy", "")).strip() == "dedicated"


def resources_from_flavor(flavor):
    """The resources a server of ``flavor`` consumes: ``{"vcpus", "memory_mb", "disk_gb", "pcpus"}``.

    Disk is ``disk_gb + ephemeral_gb + ceil(swap_mb / 1024)``: swap and ephemeral disks are local files on the host
    just like the root disk, and Nova's request to placement counts them the same way (swap rounded up to GiB).
    ``pcpus`` is the vCPU count of a dedicated flavor, else 0.
    """
    what = "flavor %s" % flavor.get("name") if flavor.get("name") else "flavor"
    vcpus = _number(flavor, "vcpus", 0, what)
    ram = _number(flavor, "ram_mb", 0, what)
    disk = _number(flavor, "disk_gb", 0, what)
    ephemeral = _number(flavor, "ephemeral_gb", 0, what)
    swap = _number(flavor, "swap_mb", 0, what)
    return {"vcpus": vcpus, "memory_mb": ram, "disk_gb": disk + ephemeral + mb_to_ceil_gb(swap),
            "pcpus": vcpus if is_dedicated(flavor) else 0}


def sum_resources(requests):
    """Add up resource dicts (e.g. several servers claimed on one host in one call)."""
    total = dict.fromkeys(RESOURCES, 0)
    for request in requests:
        for resource in RESOURCES:
            total[resource] += request.get(resource, 0)
    return total


def capacity(host):
    """Per resource: total, reserved, allocation_ratio, capacity, used, free, max_unit.

    ``capacity`` is after reservation and ratio; ``free = capacity - used`` and is negative when a host is already
    over its capacity (ratios lowered after servers were placed, or unmanaged domains). Reserved disk is in the
    host record in MiB (Nova's option) and reported here in whole GiB, rounded up.
    """
    what = "host %s" % host.get("name") if host.get("name") else "host"
    result = {}
    for resource in RESOURCES:
        total_key, used_key, reserved_key, ratio_key = HOST_FIELDS[resource]
        total = _number(host, total_key, 0, what)
        used = _number(host, used_key, 0, what)
        reserved = _number(host, reserved_key, DEFAULTS[reserved_key], what)
        if resource == "disk_gb":
            reserved = mb_to_ceil_gb(reserved)
        ratio = float(_number(host, ratio_key, DEFAULTS[ratio_key], what)) if ratio_key else 1.0
        # A reservation larger than the host leaves nothing, not a negative capacity that would read as "free".
        cap = max(total - reserved, 0) * ratio
        result[resource] = {
            "total": total,
            "reserved": reserved,
            "allocation_ratio": ratio,
            "capacity": cap,
            "used": used,
            "free": cap - used,
            "max_unit": total,
        }
    return result


def resource_fits(requested, used, cap, max_unit):
    """Placement's test for one resource class; the scheduler and claims both call this one function."""
    if not requested:
        return True
    return requested <= max_unit and used + requested <= cap


def format_amount(value):
    """Render a resource amount without float noise: ``23808.0`` -> ``23808``, ``1.25`` -> ``1.25``."""
    if isinstance(value, float):
        if value == int(value):
            return str(int(value))
        return ("%.2f" % value).rstrip("0").rstrip(".")
    return str(value)


def describe_shortfall(shortfall):
    """One line a person can act on, e.g. ``requested 4096 MB, free 1024 MB of capacity 23808 MB (used 22784 MB)``."""
    unit = UNITS[shortfall["resource"]]
    fmt = format_amount
    if shortfall["kind"] == "max_unit":
        return "requested %s %s, more than the host's total of %s %s (overcommit never makes one server larger than " \
               "its host)" % (fmt(shortfall["requested"]), unit, fmt(shortfall["max_unit"]), unit)
    return "requested %s %s, free %s %s of capacity %s %s (used %s %s)" % (
        fmt(shortfall["requested"]), unit, fmt(shortfall["free"]), unit, fmt(shortfall["capacity"]), unit,
        fmt(shortfall["used"]), unit)


def check_fit(host, request, resources=None):
    """What stops ``request`` from fitting on ``host``: a list of shortfalls, empty when it fits.

    ``request`` is a flavor (``vcpus``, ``ram_mb``, ``disk_gb``, ``swap_mb``, ``ephemeral_gb``) or a resource dict
    (``vcpus``, ``memory_mb``, ``disk_gb``). ``resources`` limits the check to some resource classes (the
    scheduler's RAM/vCPU/disk filters can be enabled one by one).

    Each shortfall is a dict: ``resource``, ``kind`` (``capacity`` or ``max_unit``), ``requested``, ``used``,
    ``capacity``, ``free``, ``max_unit`` and ``message`` (see :func:`describe_shortfall`).
    """
    if "memory_mb" in request:
        wanted = dict((r, request.get(r, 0)) for r in RESOURCES)
    else:
        wanted = resources_from_flavor(request)
    caps = capacity(host)
    shortfalls = []
    for resource in resources or RESOURCES:
        amount = wanted[resource]
        c = caps[resource]
        if resource_fits(amount, c["used"], c["capacity"], c["max_unit"]):
            continue
        shortfall = {
            "resource": resource,
            # max_unit first: no amount of freeing capacity would make such a request fit.
            "kind": "max_unit" if amount > c["max_unit"] else "capacity",
            "requested": amount,
            "used": c["used"],
            "capacity": c["capacity"],
            "free": c["free"],
            "max_unit": c["max_unit"],
        }
        shortfall["message"] = describe_shortfall(shortfall)
        shortfalls.append(shortfall)
    return shortfalls
