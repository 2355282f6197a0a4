# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Flavors: the size of a server (Nova's flavor), a first-class value shared by servers, claims and the scheduler.

Extra specs are validated here, once, for every way a flavor arrives (inline in a server, from the catalog, from
the ``flavor`` module): the ``hw:`` and ``quota:`` keys this collection renders into the domain XML must be known
and well-formed, because libvirt would otherwise refuse the definition (or worse, accept it and ignore the value)
long after the flavor was declared. Keys of any other prefix (``aggregate_instance_extra_specs:``, ``trait:``,
site-specific ones) are kept as free-form strings for the scheduler and for people.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.virtfleet.compute.plugins.module_utils import _limits
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ValidationError

# name -> (minimum, required). Order is the order users read them in.
_SIZE_FIELDS = (
    ("vcpus", 1, True),
    ("ram_mb", 16, True),
    ("disk_gb", 0, True),
    ("swap_mb", 0, False),
    ("ephemeral_gb", 0, False),
)
FLAVOR_FIELDS = tuple(name for name, _min, _req in _SIZE_FIELDS) + ("name", "description", "extra_specs")


class Flavor:
    """An immutable server size. ``disk_gb`` 0 means "as large as the image", as in Nova."""

    __slots__ = ("name", "vcpus", "ram_mb", "disk_gb", "swap_mb", "ephemeral_gb", "description", "extra_specs")

    def __init__(self, vcpus, ram_mb, disk_gb, swap_mb=0, ephemeral_gb=0, name=None, description=None,
                 extra_specs=None):
        self.name = name
        self.vcpus = vcpus
        self.ram_mb = ram_mb
        self.disk_gb = disk_gb
        self.swap_mb = swap_mb
        self.ephemeral_gb = ephemeral_gb
        self.description = description
        self.extra_specs = dict(extra_specs or {})

    @classmethod
    def from_dict(cls, data, field="flavor"):
        """Validate a flavor given as a dict (inline in a server, or from the catalog).

        ``field`` prefixes the names in error messages (``flavor.ram_mb``); an empty one names the fields alone,
        for the ``flavor`` module whose options they are.
        """
        if not isinstance(data, dict):
            raise ValidationError("must be a dict with vcpus, ram_mb and disk_gb, or a flavor name", field=field)
        unknown = sorted(set(data) - set(FLAVOR_FIELDS))
        if unknown:
            raise ValidationError(
                "unknown field(s) %s; a flavor has %s" % (", ".join(unknown), ", ".join(FLAVOR_FIELDS)), field=field
            )
        values = {}
        for name, minimum, required in _SIZE_FIELDS:
            raw = data.get(name)
            if raw is None:
                if required:
                    raise ValidationError("is required", field=_sub(field, name))
                raw = 0
            values[name] = _as_int(raw, minimum, _sub(field, name))
        extra_specs = validate_extra_specs(data.get("extra_specs"), _sub(field, "extra_specs"))
        description = _as_optional_str(data.get("description"), _sub(field, "description"))
        _limits.validate_text(description, _sub(field, "description"), _limits.DESCRIPTION_MAX, "flavor description")
        return cls(
            name=_as_optional_str(data.get("name"), _sub(field, "name")),
            description=description,
            extra_specs=extra_specs,
            **values
        )

    def to_dict(self):
        return {
            "name": self.name,
            "vcpus": self.vcpus,
            "ram_mb": self.ram_mb,
            "disk_gb": self.disk_gb,
            "swap_mb": self.swap_mb,
            "ephemeral_gb": self.ephemeral_gb,
            "description": self.description,
            "extra_specs": dict(self.extra_specs),
        }

    def size(self):
        """The fields that decide how big a server is: what a resize or a claim looks at."""
        return dict((name, getattr(self, name)) for name, _min, _req in _SIZE_FIELDS)

    def __eq__(self, other):
        return isinstance(other, Flavor) and self.to_dict() == other.to_dict()

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash(tuple(sorted(self.size().items())))

    def __repr__(self):
        return "Flavor(%s)" % ", ".join("%s=%r" % item for item in sorted(self.to_dict().items()))


# -- extra specs ----------------------------------------------------------------------------------------------------

CPU_POLICIES = ("shared", "dedicated")
# Nova's hw:mem_page_size: "small" (no hugepages), "large" (the host's default huge page size), "any" (Nova lets the
# driver choose; see _extra_specs), or an explicit size: a number of KiB or a number with a unit (2MB, 1GiB).
MEM_PAGE_SIZE_WORDS = ("small", "large", "any")
# Nova's hw:watchdog_action values; "disabled" means no watchdog device at all.
WATCHDOG_ACTIONS = ("disabled", "reset", "poweroff", "pause", "none")
DISK_QUOTA_KEYS = tuple("quota:disk_%s_%s_sec" % (op, what)
                        for what in ("bytes", "iops") for op in ("total", "read", "write"))
VIF_QUOTA_KEYS = tuple("quota:vif_%s_%s" % (direction, what)
                       for direction in ("inbound", "outbound") for what in ("average", "peak", "burst"))
CPU_QUOTA_KEYS = ("quota:cpu_shares", "quota:cpu_period", "quota:cpu_quota")
AGGREGATE_SCOPE = "aggregate_instance_extra_specs:"

# The ranges libvirt accepts for <cputune> and the quotas live with every other limit, in _limits.
_CPU_PERIOD_RANGE = _limits.CPU_PERIOD_RANGE
_CPU_QUOTA_RANGE = _limits.CPU_QUOTA_RANGE
_CPU_SHARES_MAX = _limits.CPU_SHARES_MAX
_PAGE_SIZE_RE = re.compile(r"^([0-9]+)\s*(|b|k|kb|kib|m|mb|mib|g|gb|gib)$", re.IGNORECASE)
_PAGE_UNITS_KIB = {"": 1, "k": 1, "kb": 1, "kib": 1, "m": 1024, "mb": 1024, "mib": 1024,
                   "g": 1024 * 1024, "gb": 1024 * 1024, "gib": 1024 * 1024}


def _known_hw_quota_keys():
    return ("hw:cpu_policy", "hw:mem_page_size", "hw:watchdog_action") + CPU_QUOTA_KEYS + DISK_QUOTA_KEYS \
        + VIF_QUOTA_KEYS


KNOWN_KEYS = _known_hw_quota_keys()


def validate_extra_specs(specs, field="extra_specs"):
    """The extra specs as a ``{str: str}`` dict, or ValidationError naming the offending key.

    ``hw:`` and ``quota:`` keys must be among :data:`KNOWN_KEYS` with a valid value; every other key is kept as a
    free-form string. Values are compared and stored as strings, like Nova's; a YAML boolean becomes ``"true"`` or
    ``"false"`` (the scheduler compares aggregate metadata the same way), never Python's ``"True"``.
    """
    if specs is None:
        return {}
    if not isinstance(specs, dict):
        raise ValidationError("must be a dict of strings", field=field)
    out = {}
    for key, value in specs.items():
        if not isinstance(key, str) or not key.strip() or key != key.strip():
            raise ValidationError("key %r must be a non-empty string without surrounding spaces" % (key,),
                                  field=field)
        if isinstance(value, (dict, list, tuple)) or value is None:
            raise ValidationError("must be a string or a number", field="%s.%s" % (field, key))
        out[key] = _spec_text(value)
    for key in sorted(out):
        _validate_spec(key, out[key], "%s.%s" % (field, key))
    _validate_combinations(out, field)
    return out


def page_size_kib(value):
    """hw:mem_page_size as KiB, or None for the words small/large/any."""
    if value in MEM_PAGE_SIZE_WORDS:
        return None
    match = _PAGE_SIZE_RE.match(value.strip())
    if match is None:
        raise ValueError(value)
    unit = match.group(2).lower()
    if unit == "b":
        number = int(match.group(1))
        if number % 1024:
            raise ValueError(value)
        return number // 1024
    return int(match.group(1)) * _PAGE_UNITS_KIB[unit]


def _spec_text(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _validate_spec(key, value, field):
    prefix = key.split(":", 1)[0] + ":" if ":" in key else ""
    if prefix not in ("hw:", "quota:"):
        if prefix == AGGREGATE_SCOPE and key == AGGREGATE_SCOPE:
            raise ValidationError("needs a metadata key after %s" % AGGREGATE_SCOPE, field=field)
        return  # free-form: the scheduler or the people reading it know what it means
    if key not in KNOWN_KEYS:
        known = sorted(k for k in KNOWN_KEYS if k.startswith(prefix))
        raise ValidationError("unknown extra spec %s; the %s keys this collection renders are %s"
                              % (key, prefix, ", ".join(known)), field=field)
    if key == "hw:cpu_policy":
        _one_of(value, CPU_POLICIES, field)
    elif key == "hw:watchdog_action":
        _one_of(value, WATCHDOG_ACTIONS, field)
    elif key == "hw:mem_page_size":
        try:
            size = page_size_kib(value)
        except ValueError:
            raise ValidationError("must be small, large, any or a page size such as 2048 (KiB), 2MB or 1GB; got %r"
                                  % value, field=field)
        # Page sizes are powers of two of at least the base page (4 KiB on x86); anything else is a typo.
        if size is not None and (size < 4 or size & (size - 1)):
            raise ValidationError("%r is not a page size (a power of two of at least 4 KiB)" % value, field=field)
    elif key == "quota:cpu_shares":
        _integer(value, 0, _CPU_SHARES_MAX, field)
    elif key == "quota:cpu_period":
        _integer(value, _CPU_PERIOD_RANGE[0], _CPU_PERIOD_RANGE[1], field)
    elif key == "quota:cpu_quota":
        number = _integer(value, -_CPU_QUOTA_RANGE[1], _CPU_QUOTA_RANGE[1], field)
        if 0 <= number < _CPU_QUOTA_RANGE[0]:
            raise ValidationError("must be at least %d microseconds, or negative for no limit; got %d"
                                  % (_CPU_QUOTA_RANGE[0], number), field=field)
    elif key in DISK_QUOTA_KEYS:
        _integer(value, 0, _limits.DISK_QUOTA_MAX, field)
    else:  # vif quotas: rates and bursts
        _integer(value, 0, _limits.VIF_QUOTA_MAX, field)


def _validate_combinations(specs, field):
    for what in ("bytes", "iops"):
        total = "quota:disk_total_%s_sec" % what
        for op in ("read", "write"):
            other = "quota:disk_%s_%s_sec" % (op, what)
            # libvirt refuses a total limit together with a read or write limit of the same kind.
            if total in specs and other in specs:
                raise ValidationError("cannot be combined with %s: QEMU limits either the total or reads and writes "
                                      "separately" % total, field="%s.%s" % (field, other))
    for direction in ("inbound", "outbound"):
        average = "quota:vif_%s_average" % direction
        for what in ("peak", "burst"):
            key = "quota:vif_%s_%s" % (direction, what)
            if key in specs and average not in specs:
                raise ValidationError("needs %s too: libvirt shapes traffic from an average rate" % average,
                                      field="%s.%s" % (field, key))
    if specs.get("hw:cpu_policy") == "dedicated":
        # Nova refuses CPU quotas on pinned CPUs: a pinned vCPU owns its host CPU, a quota would throttle it anyway.
        for key in CPU_QUOTA_KEYS:
            if key in specs:
                raise ValidationError("cannot be used with hw:cpu_policy=dedicated (pinned vCPUs are not throttled, "
                                      "as in Nova)", field="%s.%s" % (field, key))


def _one_of(value, choices, field):
    if value not in choices:
        raise ValidationError("must be one of %s; got %r" % (", ".join(choices), value), field=field)


def _integer(value, minimum, maximum, field):
    try:
        number = int(value.strip())
    except ValueError:
        raise ValidationError("must be an integer; got %r" % value, field=field)
    if minimum is not None and number < minimum:
        raise ValidationError("must be at least %d; got %d" % (minimum, number), field=field)
    if maximum is not None and number > maximum:
        raise ValidationError("must be at most %d; got %d" % (maximum, number), field=field)
    return number


# -- flavor names ---------------------------------------------------------------------------------------------------

def validate_flavor_name(name, field="name"):
    """A catalog flavor name, by the name rules of _limits (m1.tiny, gp2.large, c5:xlarge...).

    Stricter than Nova's (printable characters): the name is also a record's key, an inventory group's name
    (flavor_<name>) and text in reports, where a slash, markup or a right-to-left override would mislead.
    """
    return _limits.validate_name(name, field, "flavor name")


def _sub(field, name):
    return "%s.%s" % (field, name) if field else name


def _as_int(value, minimum, field):
    if isinstance(value, bool):
        raise ValidationError("must be an integer, got %r" % (value,), field=field)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValidationError("must be an integer, got %r" % (value,), field=field)
    if isinstance(value, float) and value != number:
        raise ValidationError("must be a whole number, got %r" % (value,), field=field)
    if number < minimum:
        raise ValidationError("must be at least %d, got %d" % (minimum, number), field=field)
    if number > _limits.FLAVOR_INT_MAX:
        raise ValidationError("must be at most %d (Nova's limit), got %d" % (_limits.FLAVOR_INT_MAX, number),
                              field=field)
    return number


def _as_optional_str(value, field):
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError("must be a string", field=field)
    return value
