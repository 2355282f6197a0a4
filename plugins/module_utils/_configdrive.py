# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cloud-init NoCloud config drive, built in memory (Nova's config drive, minus the OpenStack layout).

The drive is an ISO 9660 image labelled ``cidata`` holding ``meta-data``, ``user-data`` and, when given,
``network-config`` and ``vendor-data``. cloud-init's NoCloud datasource finds it by that label. The server module
uploads the bytes into a libvirt volume, so nothing here touches a file system.

Every YAML document is written as JSON: JSON is valid YAML, and managed hosts have no PyYAML.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import io
import json
import re
import sys
import threading
import time
import traceback

from ansible_collections.virtfleet.compute.plugins.module_utils import _limits
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import (
    MissingLibraryError,
    ValidationError,
)

try:
    import pycdlib

    HAS_PYCDLIB = True
    PYCDLIB_IMPORT_ERROR = None
except ImportError:
    HAS_PYCDLIB = False
    PYCDLIB_IMPORT_ERROR = traceback.format_exc()

try:
    import netaddr

    HAS_NETADDR = True
    NETADDR_IMPORT_ERROR = None
except ImportError:
    HAS_NETADDR = False
    NETADDR_IMPORT_ERROR = traceback.format_exc()

VOLUME_LABEL = "cidata"

# Part of content_hash(): bump it whenever the rendered files change for the same inputs, so every drive built by
# an older release is rewritten once.
LAYOUT_VERSION = 1

# Every date pycdlib writes (volume descriptors, directory records, Rock Ridge TF entries) is pinned to this
# instant, in UTC, so the same inputs give byte-identical drives on any host, at any time, in any time zone.
FIXED_EPOCH = 946684800  # 2000-01-01T00:00:00Z

DEFAULT_USER_DATA = b"#cloud-config\n{}\n"

# (ISO 9660 level-3 name, Rock Ridge / Joliet name). Linux mounts with Rock Ridge names, so the guest sees the
# lower-case names cloud-init looks for; the 8.3 names only matter to readers without Rock Ridge or Joliet.
_FILES = (
    ("META_DATA", "meta-data"),
    ("USER_DATA", "user-data"),
    ("NETWORK_CONFIG", "network-config"),
    ("VENDOR_DATA", "vendor-data"),
)
_ISO_NAMES = {rr: iso for iso, rr in _FILES}

_RESERVED_META_KEYS = ("instance-id", "local-hostname", "public-keys")

_LABEL_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")

# PyYAML (what cloud-init parses with) rejects C1 control characters, BOMs and surrogates in a document, and reads
# U+0085/U+2028/U+2029 as line breaks that fold inside a quoted scalar. json.dumps already escapes C0 controls
# inside strings but leaves these raw; since JSON escapes are valid YAML escapes, they are written as \uXXXX.
_YAML_UNSAFE_RE = re.compile("[\u007f-\u009f\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff]")
_CONTROL_RE = re.compile("[\u0000-\u001f\u007f-\u009f\u2028\u2029]")

_BUILD_LOCK = threading.Lock()


def validate_hostname(name, field="hostname"):
    """Check an RFC 1123 host name (one or more dot-separated labels); return it unchanged.

    :raises ValidationError: naming ``field`` and what is wrong with the name.
    """
    if not isinstance(name, str) or not name:
        raise ValidationError("a host name is required, got %r" % (name,), field=field)
    if len(name) > 253:
        raise ValidationError("%r is %d characters long; a host name has at most 253" % (name, len(name)), field=field)
    for label in name.split("."):
        if not label:
            raise ValidationError("%r has an empty label (leading, trailing or doubled dot)" % name, field=field)
        if len(label) > 63:
            raise ValidationError("label %r of %r is longer than 63 characters" % (label, name), field=field)
        if not _LABEL_RE.match(label):
            raise ValidationError(
                "label %r of %r may only hold letters, digits and inner hyphens (RFC 1123)" % (label, name),
                field=field,
            )
    return name


def network_config_v2(interfaces, field="interfaces"):
    """cloud-init network config version 2 for the given NICs, as a dict.

    ``interfaces`` is a list of dicts: ``mac`` (required), ``ip`` (``None`` for DHCP, else an address with its
    prefix length such as ``10.0.0.5/24`` or ``2001:db8::5/64``), ``gateway``, ``dns`` (a list of addresses) and
    ``mtu``. Other keys are ignored, so a server's NIC specs can be passed as they are.

    The NIC at index N becomes ``ethN``, matched by MAC address, so the guest's names follow the declared order
    whatever its kernel calls the devices. Default routes use ``gateway4``/``gateway6``: deprecated in netplan but
    the only form every cloud-init renderer (ENI, networkd, sysconfig, netplan 0.99) understands.
    """
    _require_netaddr()
    if isinstance(interfaces, dict) or not isinstance(interfaces, (list, tuple)):
        raise ValidationError("must be a list of interfaces, got %s" % type(interfaces).__name__, field=field)
    ethernets = {}
    seen_macs = {}
    for index, nic in enumerate(interfaces):
        where = "%s[%d]" % (field, index)
        if not isinstance(nic, dict):
            raise ValidationError("must be a dict with at least 'mac', got %r" % (nic,), field=where)
        mac = _normalize_mac(nic.get("mac"), where + ".mac")
        if mac in seen_macs:
            raise ValidationError(
                "MAC address %s is also used by %s[%d]" % (mac, field, seen_macs[mac]), field=where + ".mac"
            )
        seen_macs[mac] = index
        name = "eth%d" % index
        entry = {"match": {"macaddress": mac}, "set-name": name}

        ip = nic.get("ip")
        gateway = nic.get("gateway")
        if ip is None:
            if gateway is not None:
                raise ValidationError(
                    "a gateway was given without an ip; with DHCP the gateway comes from the DHCP server",
                    field=where + ".gateway",
                )
            entry["dhcp4"] = True
        else:
            network = _parse_interface_address(ip, where + ".ip")
            entry["dhcp4"] = False
            entry["addresses"] = [str(network)]
            if gateway is not None:
                gw = _parse_gateway(gateway, network, where + ".gateway")
                entry["gateway%d" % network.version] = str(gw)

        dns = nic.get("dns")
        if dns:
            if isinstance(dns, str) or not isinstance(dns, (list, tuple)):
                raise ValidationError("must be a list of addresses, got %r" % (dns,), field=where + ".dns")
            entry["nameservers"] = {
                "addresses": [str(_parse_ip(d, "%s.dns[%d]" % (where, i))) for i, d in enumerate(dns)]
            }

        mtu = nic.get("mtu")
        if mtu is not None:
            if isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535:
                raise ValidationError("must be an integer between 68 and 65535, got %r" % (mtu,), field=where + ".mtu")
            entry["mtu"] = mtu
        ethernets[name] = entry
    return {"version": 2, "ethernets": ethernets}


def render_files(instance_id, hostname, user_data=None, ssh_authorized_keys=(), network_config=None,
                 vendor_data=None, extra_meta=None):
    """The drive's files as an ordered list of ``(name, bytes)``, after validating every input.

    ``build_nocloud_iso()`` and ``content_hash()`` both start from this, so the hash describes exactly what the
    drive holds.
    """
    instance_id = _validate_instance_id(instance_id)
    validate_hostname(hostname)
    keys = _validate_keys(ssh_authorized_keys)

    meta = {}
    if extra_meta is not None:
        if not isinstance(extra_meta, dict):
            raise ValidationError("must be a dict, got %s" % type(extra_meta).__name__, field="extra_meta")
        for key in extra_meta:
            if not isinstance(key, str):
                raise ValidationError("keys must be strings, got %r" % (key,), field="extra_meta")
            if key in _RESERVED_META_KEYS:
                raise ValidationError(
                    "%r is set by the config drive itself; use the dedicated option instead" % key,
                    field="extra_meta",
                )
        meta.update(extra_meta)
    # cloud-init's base DataSource reads SSH keys from meta-data 'public-keys', so user-data (which may be a shell
    # script or a MIME multipart) never has to be rewritten to carry them.
    meta.update({"instance-id": instance_id, "local-hostname": hostname, "public-keys": keys})

    files = [("meta-data", _yaml_bytes(meta, "extra_meta"))]
    files.append(("user-data", DEFAULT_USER_DATA if user_data is None else _blob(user_data, "user_data")))
    if network_config is not None:
        if isinstance(network_config, dict):
            files.append(("network-config", _yaml_bytes(network_config, "network_config")))
        else:
            files.append(("network-config", _blob(network_config, "network_config")))
    if vendor_data is not None:
        files.append(("vendor-data", _blob(vendor_data, "vendor_data")))
    return files


def content_hash(instance_id, hostname, user_data=None, ssh_authorized_keys=(), network_config=None,
                 vendor_data=None, extra_meta=None):
    """sha256 (hex) of what a drive built from these inputs holds; needs neither pycdlib nor the drive itself.

    Store it next to the drive (the server's metadata) and rebuild when it changes. It covers the files'
    names and bytes plus LAYOUT_VERSION, not the ISO bytes, so a pycdlib upgrade does not force a rewrite.
    """
    files = render_files(instance_id, hostname, user_data=user_data, ssh_authorized_keys=ssh_authorized_keys,
                         network_config=network_config, vendor_data=vendor_data, extra_meta=extra_meta)
    digest = hashlib.sha256()
    digest.update(("virtfleet-nocloud-v%d\0" % LAYOUT_VERSION).encode("ascii"))
    for name, data in files:
        # Length-prefixed, so no choice of contents can make two different drives hash alike.
        digest.update(("%s\0%d\0" % (name, len(data))).encode("ascii"))
        digest.update(data)
    return digest.hexdigest()


def build_nocloud_iso(instance_id, hostname, user_data=None, ssh_authorized_keys=(), network_config=None,
                      vendor_data=None, extra_meta=None):
    """The NoCloud config drive as ISO 9660 bytes (Joliet + Rock Ridge, label ``cidata``), byte-for-byte
    reproducible from the same inputs.

    ``user_data`` and ``vendor_data`` (str or bytes) are written untouched; without user data a valid empty
    ``#cloud-config`` is written. ``network_config`` is a dict (see ``network_config_v2()``) or a ready document.

    :raises ValidationError: for bad inputs, naming the option.
    :raises MissingLibraryError: when pycdlib is not installed where this runs.
    """
    files = render_files(instance_id, hostname, user_data=user_data, ssh_authorized_keys=ssh_authorized_keys,
                         network_config=network_config, vendor_data=vendor_data, extra_meta=extra_meta)
    if not HAS_PYCDLIB:
        raise MissingLibraryError(
            "pycdlib is needed to build the cloud-init config drive where this module runs (pip install pycdlib)",
            traceback=PYCDLIB_IMPORT_ERROR,
        )
    with _BUILD_LOCK, _pinned_pycdlib_clock():
        iso = pycdlib.PyCdlib()
        iso.new(interchange_level=3, vol_ident=VOLUME_LABEL, sys_ident="LINUX", app_ident_str="virtfleet.compute",
                joliet=3, rock_ridge="1.09")
        try:
            for name, data in files:
                iso.add_fp(io.BytesIO(data), len(data), "/%s.;1" % _ISO_NAMES[name], rr_name=name,
                           joliet_path="/" + name)
            out = io.BytesIO()
            iso.write_fp(out)
        finally:
            iso.close()
    return out.getvalue()


class _PinnedClock:
    """Stands in for the ``time`` module inside pycdlib while a drive is built.

    pycdlib stamps ``time.time()`` into every volume descriptor, directory record and Rock Ridge entry, and
    converts it with ``time.localtime()``, so the bytes would depend on the clock and the host's time zone. It has
    no option to set them (no SOURCE_DATE_EPOCH support), hence this substitution.
    """

    def __init__(self, real, epoch):
        self._real = real
        self._epoch = float(epoch)

    def time(self):
        return self._epoch

    def localtime(self, secs=None):
        return self._real.gmtime(self._epoch if secs is None else secs)

    def __getattr__(self, name):
        return getattr(self._real, name)


class _pinned_pycdlib_clock:
    """Context manager: every pycdlib submodule sees a clock stopped at FIXED_EPOCH, in UTC."""

    def __enter__(self):
        clock = _PinnedClock(time, FIXED_EPOCH)
        self._patched = []
        for mod_name, module in list(sys.modules.items()):
            if (mod_name == "pycdlib" or mod_name.startswith("pycdlib.")) and getattr(module, "time", None) is time:
                module.time = clock
                self._patched.append(module)
        return self

    def __exit__(self, *exc):
        for module in self._patched:
            module.time = time
        return False


def _require_netaddr():
    if not HAS_NETADDR:
        raise MissingLibraryError(
            "netaddr is needed to validate network settings where this module runs (pip install netaddr)",
            traceback=NETADDR_IMPORT_ERROR,
        )


def _normalize_mac(value, field):
    # One rule for every MAC the collection takes (unicast, not all-zero): see _limits.
    return _limits.validate_mac(value, field)


def _parse_ip(value, field):
    if not isinstance(value, str) or not value:
        raise ValidationError("an IP address is required, got %r" % (value,), field=field)
    try:
        return netaddr.IPAddress(value)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise ValidationError("%r is not an IPv4 or IPv6 address" % value, field=field)


def _parse_interface_address(value, field):
    if not isinstance(value, str) or value.count("/") != 1:
        raise ValidationError(
            "%r needs a prefix length, such as 10.0.0.5/24 (or null for DHCP)" % (value,), field=field
        )
    addr, prefix = value.split("/")
    # INET_PTON: netaddr would otherwise read shorthand such as "10.5" (inet_aton rules) as 10.0.0.5, turning a
    # typo into another address.
    valid = netaddr.valid_ipv4(addr, flags=netaddr.INET_PTON) or netaddr.valid_ipv6(addr)
    if not valid or not prefix.isdigit():
        raise ValidationError("%r is not an address with a prefix length such as 10.0.0.5/24" % value, field=field)
    try:
        network = netaddr.IPNetwork(value)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise ValidationError("%r has an invalid prefix length" % value, field=field)
    if network.version == 4 and network.prefixlen <= 30 and network.ip in (network.network, network.broadcast):
        which = "network" if network.ip == network.network else "broadcast"
        raise ValidationError(
            "%s is the %s address of %s; pick a host address inside it" % (network.ip, which, network.cidr),
            field=field,
        )
    if network.version == 6 and network.prefixlen <= 126 and network.ip == network.network:
        raise ValidationError(
            "%s is the subnet-router anycast address of %s; pick a host address inside it" % (network.ip, network.cidr),
            field=field,
        )
    return network


def _parse_gateway(value, network, field):
    gw = _parse_ip(value, field)
    if gw.version != network.version:
        raise ValidationError("%s is IPv%d but the address is IPv%d" % (gw, gw.version, network.version), field=field)
    if gw not in network.cidr:
        raise ValidationError("%s is outside the interface's subnet %s" % (gw, network.cidr), field=field)
    if gw == network.ip:
        raise ValidationError("%s is the interface's own address" % gw, field=field)
    return gw


def _validate_instance_id(value):
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("a non-empty string is required, got %r" % (value,), field="instance_id")
    if _CONTROL_RE.search(value) or len(value) > 255:
        raise ValidationError("must be at most 255 printable characters", field="instance_id")
    return value


def _validate_keys(keys):
    if keys is None:
        return []
    if isinstance(keys, (str, bytes)):
        keys = [keys]
    if not isinstance(keys, (list, tuple)):
        raise ValidationError("must be a list of public keys, got %s" % type(keys).__name__,
                              field="ssh_authorized_keys")
    result = []
    for index, key in enumerate(keys):
        where = "ssh_authorized_keys[%d]" % index
        if isinstance(key, bytes):
            try:
                key = key.decode("utf-8")
            except UnicodeDecodeError:
                raise ValidationError("is not UTF-8 text", field=where)
        if not isinstance(key, str) or not key.strip():
            raise ValidationError("must be a non-empty public key line, got %r" % (key,), field=where)
        key = key.strip()
        # One item is one authorized_keys line; an embedded newline would smuggle in further lines.
        if "\n" in key or "\r" in key:
            raise ValidationError("holds a line break; give each key as its own list item", field=where)
        result.append(key)
    return result


def _blob(value, field):
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise ValidationError("must be a string or bytes, got %s" % type(value).__name__, field=field)


def _yaml_bytes(obj, field):
    try:
        text = json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError("cannot be written as YAML: %s" % exc, field=field)
    text = _YAML_UNSAFE_RE.sub(lambda m: "\\u%04x" % ord(m.group(0)), text)
    return (text + "\n").encode("utf-8")
