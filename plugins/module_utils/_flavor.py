# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Flavors: the size of a server (Nova's flavor), a first-class value shared by servers, claims and the scheduler."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

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
        """Validate a flavor given as a dict (inline in a server, or from the catalog)."""
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
                    raise ValidationError("is required", field="%s.%s" % (field, name))
                raw = 0
            values[name] = _as_int(raw, minimum, "%s.%s" % (field, name))
        extra_specs = data.get("extra_specs") or {}
        if not isinstance(extra_specs, dict):
            raise ValidationError("must be a dict of strings", field="%s.extra_specs" % field)
        return cls(
            name=_as_optional_str(data.get("name"), "%s.name" % field),
            description=_as_optional_str(data.get("description"), "%s.description" % field),
            extra_specs=dict((str(k), str(v)) for k, v in extra_specs.items()),
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
    return number


def _as_optional_str(value, field):
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError("must be a string", field=field)
    return value
