# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The limits on user input, in one place (documented in docs/limits.md; keep both in step).

Every check raises ValidationError naming the field, before anything is read from or written to a host, so check
mode refuses what the real run would refuse. The numbers follow Nova where Nova has one (user data, metadata,
flavor descriptions and sizes) and what libvirt and QEMU accept elsewhere.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import traceback

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import MissingLibraryError, ValidationError

try:
    import netaddr

    HAS_NETADDR = True
    NETADDR_IMPORT_ERROR = None
except ImportError:
    HAS_NETADDR = False
    NETADDR_IMPORT_ERROR = traceback.format_exc()

# Names of pools and flavors: what libvirt, file names, inventory group names and people all read the same way. A
# letter or digit first, then letters, digits and ``_ . : + -``; no ``..``; no spaces, slashes, markup, control or
# bidirectional-override characters (a name that displays differently from what it is).
NAME_MAX = 128
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]*$")

# Nova: a flavor description is at most 65535 characters (API microversion 2.55).
DESCRIPTION_MAX = 65535
# Nova's defaults: 128 metadata items per server (quota metadata_items), keys and values of at most 255 characters.
METADATA_ITEMS_MAX = 128
METADATA_KEY_MAX = 255
METADATA_VALUE_MAX = 255
# Nova refuses user data larger than 65535 bytes (it counts the base64 text; we count the text itself, in UTF-8).
USER_DATA_MAX = 65535

# Sizes. A flavor's numbers are bounded by Nova's (a signed 32-bit integer). Volumes: 64 TiB, the largest disk
# QEMU's qcow2 with default 64 KiB clusters addresses comfortably and far beyond any host's pool here.
FLAVOR_INT_MAX = 2147483647
VOLUME_SIZE_MAX = 64 * 1024 ** 4

# Extra specs rendered into the domain XML, in the ranges libvirt and QEMU accept (formatdomain.html#cpu-tuning):
# cputune period in microseconds; quota in microseconds per period, or negative for "no limit" (bounded like the
# positive side, so a typo of twenty digits is refused rather than failing at define); shares a relative weight
# (cgroup v1 allows up to 262144).
CPU_PERIOD_RANGE = (1000, 1000000)
CPU_QUOTA_RANGE = (1000, 17592186044415)
CPU_SHARES_MAX = 262144
# quota:disk_*: QEMU's largest throttling value (THROTTLE_VALUE_MAX, 10^15 bytes or I/O per second).
DISK_QUOTA_MAX = 10 ** 15
# quota:vif_*: libvirt's bandwidth rates in KiB/s and bursts in KiB; the kernel's tc takes 32-bit values.
VIF_QUOTA_MAX = 4294967295


def validate_name(value, field, what="name"):
    """A pool or flavor name by the rules above; returns it."""
    if not isinstance(value, str) or not value:
        raise ValidationError("a %s is required, got %r" % (what, value), field=field)
    if len(value) > NAME_MAX:
        raise ValidationError("is %d characters long; a %s has at most %d" % (len(value), what, NAME_MAX),
                              field=field)
    if not _NAME_RE.match(value) or ".." in value:
        raise ValidationError(
            "%r is not a valid %s: start with a letter or digit, then only letters, digits and _ . : + - (no "
            "spaces, slashes, '..', markup, control or bidirectional characters)" % (value, what), field=field)
    return value


def validate_text(value, field, maximum, what="text"):
    """A string of at most ``maximum`` characters (None passes); returns it."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError("must be a string", field=field)
    if len(value) > maximum:
        raise ValidationError("is %d characters long; a %s has at most %d" % (len(value), what, maximum),
                              field=field)
    return value


def validate_user_data(value, field="user_data"):
    """cloud-init user data of at most USER_DATA_MAX bytes (UTF-8); None passes."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError("must be a string", field=field)
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > USER_DATA_MAX:
        raise ValidationError("is %d bytes; user data is at most %d bytes (64 KiB, as in Nova)"
                              % (size, USER_DATA_MAX), field=field)
    return value


def validate_metadata_size(metadata, field="metadata"):
    """A ``{key: value}`` dict of strings within Nova's metadata limits; returns it."""
    if not metadata:
        return metadata
    if len(metadata) > METADATA_ITEMS_MAX:
        raise ValidationError("has %d items; at most %d are allowed (Nova's default metadata quota)"
                              % (len(metadata), METADATA_ITEMS_MAX), field=field)
    for key, value in metadata.items():
        if len(key) > METADATA_KEY_MAX:
            raise ValidationError("key %s... is %d characters long; at most %d"
                                  % (key[:20], len(key), METADATA_KEY_MAX), field=field)
        if isinstance(value, str) and len(value) > METADATA_VALUE_MAX:
            raise ValidationError("is %d characters long; a metadata value has at most %d"
                                  % (len(value), METADATA_VALUE_MAX), field="%s.%s" % (field, key))
    return metadata


def validate_volume_size(size, field="size"):
    """A volume size in bytes, at most VOLUME_SIZE_MAX; returns it."""
    if size is not None and size > VOLUME_SIZE_MAX:
        raise ValidationError("%d bytes is more than the largest volume this collection makes (%d TiB)"
                              % (size, VOLUME_SIZE_MAX // 1024 ** 4), field=field)
    return size


def validate_mac(value, field):
    """A unicast, non-zero 48-bit MAC address, as lower-case ``aa:bb:cc:dd:ee:ff``.

    Refused: anything netaddr does not read as a 48-bit EUI, multicast addresses (the broadcast address
    ff:ff:ff:ff:ff:ff among them: the low bit of the first byte is set) and 00:00:00:00:00:00, which no NIC may
    carry and which libvirt would silently replace.
    """
    if not HAS_NETADDR:
        raise MissingLibraryError("netaddr is needed to validate MAC addresses where this module runs "
                                  "(pip install netaddr)", traceback=NETADDR_IMPORT_ERROR)
    if not isinstance(value, str) or not value:
        raise ValidationError("a MAC address such as 52:54:00:12:34:56 is required, got %r" % (value,), field=field)
    try:
        eui = netaddr.EUI(value)
    except (netaddr.AddrFormatError, TypeError, ValueError):
        eui = None
    if eui is None or eui.version != 48:
        raise ValidationError("%r is not a MAC address (6 bytes such as 52:54:00:12:34:56)" % (value,), field=field)
    text = str(eui.format(netaddr.mac_unix_expanded)).lower()
    if int(eui) == 0:
        raise ValidationError("%s is the all-zero MAC address; a NIC needs a real unicast one" % text, field=field)
    if int(eui) & (1 << 40):
        kind = "the broadcast" if int(eui) == (1 << 48) - 1 else "a multicast"
        raise ValidationError("%s is %s MAC address; a NIC needs a unicast one (the first byte even)"
                              % (text, kind), field=field)
    return text
