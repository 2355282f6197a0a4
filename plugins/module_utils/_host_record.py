# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host record: what Nova keeps about a compute service and its hypervisor, kept on the host itself.

It is the JSON document ``host`` of the records pool (see _records): enabled or disabled with a reason (Nova's
``openstack compute service set --disable``), allocation ratios and reservations (nova.conf's
``*_allocation_ratio`` and ``reserved_host_*``), availability zone, host aggregates with their metadata, custom
traits, and the KVM verdict of the ``compute_node`` role (``virt_type``, read by the ``server`` module).

A host without a record behaves as a record of defaults: Nova's initial overcommit (CPU 16.0, RAM 1.5, disk 1.0)
and 512 MiB of memory kept for the host. Keys this version does not know are kept as they are, so an older
collection never strips what a newer one wrote.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math
import re

from ansible_collections.virtfleet.compute.plugins.module_utils._capacity import DEFAULTS as _CAPACITY_DEFAULTS
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ValidationError
from ansible_collections.virtfleet.compute.plugins.module_utils._plan import Plan
from ansible_collections.virtfleet.compute.plugins.module_utils._records import RecordStore

RECORD_KEY = "host"
RATIO_FIELDS = ("cpu_allocation_ratio", "ram_allocation_ratio", "disk_allocation_ratio")
RESERVED_FIELDS = ("reserved_host_memory_mb", "reserved_host_cpus", "reserved_host_disk_mb")
VIRT_TYPES = ("kvm", "qemu")

DEFAULTS = {
    "enabled": True,
    "disabled_reason": None,
    "availability_zone": "nova",
    "aggregates": {},
    "traits": [],
    "virt_type": None,
    "virt_type_reasons": [],
    # Consecutive failed server builds (Nova's compute stat failed_builds, read by the BuildFailureWeigher), and
    # after how many the host disables itself (Nova's consecutive_build_service_disable_threshold; 0: never).
    "failed_builds": 0,
    "disable_after_failed_builds": 0,
}
for _name in RATIO_FIELDS + RESERVED_FIELDS:
    DEFAULTS[_name] = _CAPACITY_DEFAULTS[_name]
# The fields the host module declares, in the order people read them.
FIELDS = ("enabled", "disabled_reason") + RATIO_FIELDS + RESERVED_FIELDS + (
    "availability_zone", "aggregates", "traits", "virt_type", "virt_type_reasons", "disable_after_failed_builds")

# Nova's trait names (os-traits): upper case letters, digits and underscores; operators' own start with CUSTOM_.
_TRAIT_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,254}$")
_NAME_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,255}$")


def read_host_record(client):
    """The host's record with every default filled in (the record as it behaves), and whether it is stored."""
    stored = RecordStore(client).read(RECORD_KEY)
    return effective(stored), stored is not None


def record_build_result(client, failed):
    """Count a failed build of a new server on this host, or clear the count after a good one (Nova's
    _build_failed / _build_succeeded). Reaching ``disable_after_failed_builds`` disables the host with Nova's
    reason. A host without a stored record, or one that never failed, is not written to."""
    store = RecordStore(client)
    stored = store.read(RECORD_KEY)
    if stored is None or (not failed and not stored.get("failed_builds")):
        return None
    record = dict(stored, failed_builds=(int(stored.get("failed_builds") or 0) + 1) if failed else 0)
    limit = int(stored.get("disable_after_failed_builds") or 0)
    if failed and limit and record["failed_builds"] >= limit and record.get("enabled", True):
        record.update(enabled=False, disabled_reason="Auto-disabled due to %d build failures" % record["failed_builds"])
    store.write(RECORD_KEY, record)
    return record


def effective(stored):
    """A stored record (or None) with defaults for everything it leaves out."""
    record = dict(DEFAULTS)
    record["aggregates"] = {}
    record["traits"] = []
    record["virt_type_reasons"] = []
    for key, value in (stored or {}).items():
        if value is not None or key not in DEFAULTS:
            record[key] = value
    return record


def validate_changes(params, field_prefix=""):
    """The declared fields of ``params`` (None = not declared), validated and normalised; ValidationError names
    the field."""
    out = {}
    for name in FIELDS:
        value = params.get(name)
        if value is None:
            continue
        field = field_prefix + name
        if name == "enabled":
            if not isinstance(value, bool):
                raise ValidationError("must be true or false", field=field)
        elif name == "disabled_reason":
            value = _string(value, field, allow_empty=True)
        elif name in RATIO_FIELDS:
            value = _ratio(value, field)
        elif name in RESERVED_FIELDS or name == "disable_after_failed_builds":
            value = _count(value, field)
        elif name == "availability_zone":
            value = _string(value, field)
        elif name == "aggregates":
            value = _aggregates(value, field)
        elif name == "traits":
            value = _traits(value, field)
        elif name == "virt_type":
            if value == "auto":
                value = None  # forget the verdict: the server module guesses again
            elif value not in VIRT_TYPES:
                raise ValidationError("must be kvm, qemu or auto; got %r" % (value,), field=field)
        elif name == "virt_type_reasons":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValidationError("must be a list of strings", field=field)
            value = [_string(v, "%s[%d]" % (field, i)) for i, v in enumerate(value)]
        out[name] = value
    return out


def desired_record(current, changes):
    """The record after ``changes`` (from validate_changes) are applied to ``current`` (an effective record).

    Nova's semantics for the service status: enabling a host clears its disabled reason, and a reason can only be
    given to a disabled host.
    """
    record = dict(current)
    record.update(changes)
    if changes.get("enabled") is True:
        if changes.get("disabled_reason"):
            raise ValidationError("a reason is only kept for a disabled host (enabled: false)",
                                  field="disabled_reason")
        record["disabled_reason"] = None
    elif changes.get("disabled_reason") and record.get("enabled", True):
        raise ValidationError("the host is enabled; set enabled: false to disable it with this reason",
                              field="disabled_reason")
    if record.get("disabled_reason") == "":
        record["disabled_reason"] = None
    return record


def field_changes(before, after):
    """``[(field, old, new)]`` for every field that differs, in FIELDS order (then other keys, sorted)."""
    keys = list(FIELDS) + sorted(k for k in set(before) | set(after) if k not in FIELDS)
    return [(k, before.get(k), after.get(k)) for k in keys if before.get(k) != after.get(k)]


def plan_host_record(client, params):
    """The plan that makes the host record what ``params`` declare; also the before/after for ``--diff``."""
    changes = validate_changes(params)
    store = RecordStore(client)
    current, stored = read_host_record(client)
    wanted = desired_record(current, changes)
    plan = Plan()
    plan.before = _view(current)
    plan.after = _view(wanted)
    plan.actual = current
    differences = field_changes(current, wanted)
    if not differences:
        return plan, wanted
    if not store.exists():
        plan.add("create storage pool %s for host records" % store.pool_name, store.ensure_pool)
    summary = ", ".join("%s %s -> %s" % (name, _short(old), _short(new)) for name, old, new in differences)
    label = "%s host record (%s)" % ("update" if stored else "write", summary)
    plan.add(label, lambda: store.write(RECORD_KEY, wanted))
    return plan, wanted


def converge_host(client, params, check_mode=False, diff_mode=False):
    """The ``host`` module's whole job."""
    plan, wanted = plan_host_record(client, params)
    plan.execute(check_mode)
    result = {"changed": plan.changed, "actions": plan.actions, "host": _view(wanted)}
    if diff_mode:
        result["diff"] = plan.diff()
    return result


def _view(record):
    return dict((k, record.get(k)) for k in FIELDS)


def _short(value):
    if isinstance(value, dict):
        return "{%s}" % ", ".join(sorted(value))
    if isinstance(value, list):
        return "[%s]" % ", ".join(str(v) for v in value)
    return "%s" % (value,)


def _ratio(value, field):
    if isinstance(value, bool):
        raise ValidationError("must be a number", field=field)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValidationError("must be a number; got %r" % (value,), field=field)
    # Nova refuses 0 and negative ratios: a ratio of 0 would make the host's capacity vanish without saying why.
    if math.isnan(number) or math.isinf(number) or number <= 0:
        raise ValidationError("must be a number greater than 0; got %r" % (value,), field=field)
    return number


def _count(value, field):
    if isinstance(value, bool):
        raise ValidationError("must be an integer", field=field)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValidationError("must be an integer; got %r" % (value,), field=field)
    if isinstance(value, float) and value != number:
        raise ValidationError("must be a whole number; got %r" % (value,), field=field)
    if number < 0:
        raise ValidationError("must be 0 or more; got %d" % number, field=field)
    return number


def _string(value, field, allow_empty=False):
    if not isinstance(value, str):
        raise ValidationError("must be a string", field=field)
    if value == "" and allow_empty:
        return value
    if not _NAME_RE.match(value) or value != value.strip():
        raise ValidationError("must be 1 to 255 characters without control characters or surrounding spaces",
                              field=field)
    return value


def _aggregates(value, field):
    if isinstance(value, list):
        # A list of names is accepted as aggregates without metadata (the scheduler reads the same).
        value = dict((name, {}) for name in value)
    if not isinstance(value, dict):
        raise ValidationError("must be a dict of aggregate name -> metadata dict", field=field)
    out = {}
    for name, metadata in value.items():
        sub = "%s.%s" % (field, name)
        _string(name, field)
        if metadata is None:
            metadata = {}
        if not isinstance(metadata, dict):
            raise ValidationError("must be a dict of metadata (key: value)", field=sub)
        clean = {}
        for key, item in metadata.items():
            _string(key, sub)
            if isinstance(item, (dict, list)) or item is None:
                raise ValidationError("must be a string", field="%s.%s" % (sub, key))
            # Nova stores aggregate metadata as strings; YAML booleans compare as "true"/"false" (see _flavor).
            clean[key] = ("true" if item else "false") if isinstance(item, bool) else str(item)
        out[name] = clean
    return out


def _traits(value, field):
    if not isinstance(value, list):
        raise ValidationError("must be a list of trait names", field=field)
    out = set()
    for index, trait in enumerate(value):
        if not isinstance(trait, str) or not _TRAIT_RE.match(trait):
            raise ValidationError("%r is not a trait name (upper case letters, digits and _, as CUSTOM_SSD or "
                                  "HW_CPU_X86_AVX2)" % (trait,), field="%s[%d]" % (field, index))
        out.add(trait)
    return sorted(out)
