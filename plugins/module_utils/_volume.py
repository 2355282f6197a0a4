# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Data volumes (Cinder's job on one host): declared volumes in a libvirt pool, outliving the servers they serve.

A volume is a libvirt storage volume of the volume pool (``virtfleet-volumes`` by default), empty or a full copy of
an image or of another volume. libvirt volumes have no metadata element, so what this collection knows about one
(its id, format, encryption, metadata, whether it may be shared) is a JSON record per volume in the records pool,
next to the host record. Only recorded volumes are ever changed, attached or deleted: a volume someone made by hand
is refused by name, as a foreign domain is.

Encrypted volumes are LUKS inside the file (qcow2 with LUKS, or a raw LUKS image) with the passphrase in a private
libvirt secret; QEMU decrypts for the guest, the file on the host holds ciphertext only. The passphrase comes from
the playbook and goes to libvirt's secret API only: it is never in a result, a diff, an action or a record. To tell
a changed passphrase from the same one, a record keeps a salted PBKDF2 check value (see ``passphrase_check``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import datetime
import hashlib
import hmac
import os
import re
import uuid as uuidlib
import xml.etree.ElementTree as ET

from ansible_collections.virtfleet.compute.plugins.module_utils import _limits
from ansible_collections.virtfleet.compute.plugins.module_utils._attachments import DEFAULT_VOLUME_POOL
from ansible_collections.virtfleet.compute.plugins.module_utils._claims import VolumeClaim
from ansible_collections.virtfleet.compute.plugins.module_utils._disk_usage import VOLUME_RECORD_PREFIX, ceil_gb
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import (
    ConflictError,
    NotFoundError,
    ValidationError,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._plan import Plan
from ansible_collections.virtfleet.compute.plugins.module_utils._records import RecordStore

DEFAULT_VOLUME_POOL_PATH = "/var/lib/libvirt/virtfleet/volumes"
DEFAULT_IMAGE_POOL = "virtfleet-images"
FORMATS = ("qcow2", "raw")
STATES = ("present", "absent")
RECORD_PREFIX = VOLUME_RECORD_PREFIX
# A rotation re-encrypts into a temporary volume of this name; user volumes may not end with it.
ROTATING_SUFFIX = ".vf-rotating"
SERIAL_LENGTH = 20  # what a virtio-blk serial holds; the guest sees /dev/disk/by-id/virtio-<serial>
# OWASP's 2023 figure for PBKDF2-HMAC-SHA256; the record keeps the count, so raising it later breaks nothing.
KDF_ITERATIONS = 600000
_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
_KEY_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,255}$")
_SIZE_RE = re.compile(r"^\s*([0-9]+)\s*([A-Za-z]*)\s*$")
_UNITS = {
    "": 1024 ** 3, "b": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024 ** 2, "mib": 1024 ** 2, "mb": 1000 ** 2,
    "g": 1024 ** 3, "gib": 1024 ** 3, "gb": 1000 ** 3, "t": 1024 ** 4, "tib": 1024 ** 4, "tb": 1000 ** 4,
}
GIB = 1024 ** 3
MIB = 1024 ** 2


def parse_size(value, field="size"):
    """``10`` (GiB, as Cinder counts), ``"512M"``, ``"10GiB"``, ``"1TB"`` → bytes. Binary units unless the unit says
    decimal (MB, GB, TB), as libvirt reads them."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValidationError("must be a size such as 10 (GiB), 512M or 20GiB", field=field)
    match = _SIZE_RE.match(str(value))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValidationError("%r is not a size; use a number of GiB or a number with a unit (512M, 20GiB, 1T)"
                              % (value,), field=field)
    size = int(match.group(1)) * _UNITS[unit]
    if size <= 0 or size % 512:
        raise ValidationError("must be a positive multiple of 512 bytes, got %d bytes" % size, field=field)
    return _limits.validate_volume_size(size, field)


def size_text(size):
    if size is None:
        return "?"
    if size % GIB == 0:
        return "%d GiB" % (size // GIB)
    if size % MIB == 0:
        return "%d MiB" % (size // MIB)
    return "%d bytes" % size


# -- the passphrase check value ---------------------------------------------------------------------------------------

def passphrase_check(passphrase, salt=None, iterations=KDF_ITERATIONS):
    """A salted PBKDF2-SHA256 value that tells whether a passphrase is the one a volume was encrypted with.

    libvirt never hands a private secret back, so without it a changed passphrase could not be told from the same
    one. It is no easier a target than what is already on the host: the volume's own LUKS header holds PBKDF2
    digests of the same passphrase, and libvirt keeps the passphrase itself under /etc/libvirt/secrets.
    """
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", passphrase.encode("utf-8"), salt, iterations)
    return {"kdf": "pbkdf2-sha256", "iterations": iterations, "salt": _b64(salt), "digest": _b64(digest)}


def passphrase_matches(passphrase, check):
    if not check or check.get("kdf") != "pbkdf2-sha256":
        return False
    salt = base64.b64decode(check["salt"])
    digest = hashlib.pbkdf2_hmac("sha256", passphrase.encode("utf-8"), salt, int(check["iterations"]))
    return hmac.compare_digest(_b64(digest), check["digest"])


def _b64(data):
    return base64.b64encode(data).decode("ascii")


# -- records --------------------------------------------------------------------------------------------------------

class VolumeStore:
    """The volume records: one JSON document per volume in the records pool.

    One document per volume, not one for all: two runs creating different volumes at the same time (two playbooks,
    a loop with async) each write their own, so neither can lose the other's record.
    """

    def __init__(self, client):
        self.client = client
        self.records = RecordStore(client)
        self._cache = {}

    @staticmethod
    def key(pool, name):
        # Volume names cannot hold "@" (see _VOLUME_NAME), so the key splits back unambiguously.
        return "%s%s@%s" % (RECORD_PREFIX, pool, name)

    def read(self, pool, name):
        key = self.key(pool, name)
        if key not in self._cache:
            self._cache[key] = self.records.read(key)
        return self._cache[key]

    def write(self, record):
        self.records.ensure_pool()
        key = self.key(record["pool"], record["name"])
        self.records.write(key, record)
        self._cache[key] = record

    def delete(self, pool, name):
        key = self.key(pool, name)
        self._cache.pop(key, None)
        return self.records.delete(key)

    def list(self):
        pool = self.client.find_pool(self.records.pool_name)
        if pool is None or not self.client.pool_active(pool):
            return []
        out = []
        for vol in self.client.list_volumes(pool):
            name = vol.name()
            if name.startswith(RECORD_PREFIX) and name.endswith(".json"):
                record = self.records.read(name[:-len(".json")])
                if record:
                    out.append(record)
        return sorted(out, key=lambda r: (r["pool"], r["name"]))


# -- the request ----------------------------------------------------------------------------------------------------

class VolumeRequest:
    """A volume as declared. Options left out (None) keep what an existing volume has."""

    def __init__(self, params):
        self.name = params.get("name")
        if not isinstance(self.name, str) or not _VOLUME_NAME.match(self.name):
            raise ValidationError("must start with a letter or digit and hold only letters, digits and _.+- (at "
                                  "most 128 characters)", field="name")
        if self.name.endswith(ROTATING_SUFFIX):
            raise ValidationError("names ending in %s are kept for the copies a passphrase rotation makes"
                                  % ROTATING_SUFFIX, field="name")
        self.pool = params.get("pool") or DEFAULT_VOLUME_POOL
        self.state = params.get("state") or "present"
        if self.state not in STATES:
            raise ValidationError("must be one of %s" % ", ".join(STATES), field="state")
        self.size = parse_size(params.get("size"))
        self.format = params.get("format")
        if self.format is not None and self.format not in FORMATS:
            raise ValidationError("must be one of %s" % ", ".join(FORMATS), field="format")
        self.source = _source(params.get("source"), self.pool)
        metadata = params.get("metadata")
        self.metadata = None if metadata is None else _limits.validate_metadata_size(_string_map(metadata, "metadata"))
        self.passphrase = params.get("passphrase")
        self.encrypted = params.get("encrypted")
        if self.passphrase is not None:
            if not isinstance(self.passphrase, str) or not self.passphrase:
                raise ValidationError("must be a non-empty string", field="passphrase")
            if self.encrypted is False:
                raise ValidationError("is only for encrypted volumes; leave it out or set encrypted: true",
                                      field="passphrase")
            self.encrypted = True
        self.rotate = bool(params.get("rotate"))
        self.shareable = params.get("shareable")
        if self.shareable and self.format == "qcow2":
            raise ValidationError("a shareable volume must be raw: two guests writing one qcow2 image corrupt its "
                                  "metadata", field="shareable")
        if self.shareable and self.encrypted:
            raise ValidationError("shareable encrypted volumes are not supported", field="shareable")


def _source(value, pool):
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValidationError("must be a dict with image or volume", field="source")
    unknown = sorted(k for k, v in value.items() if k not in ("image", "volume", "pool") and v is not None)
    if unknown:
        raise ValidationError("unknown field(s) %s" % ", ".join(unknown), field="source")
    kinds = [k for k in ("image", "volume") if value.get(k)]
    if len(kinds) != 1:
        raise ValidationError("give exactly one of image (a base image to copy) or volume (a volume to copy)",
                              field="source")
    kind = kinds[0]
    default = DEFAULT_IMAGE_POOL if kind == "image" else pool
    return {kind: value[kind], "pool": value.get("pool") or default}


def _string_map(value, field):
    if not isinstance(value, dict):
        raise ValidationError("must be a dict of strings", field=field)
    out = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise ValidationError("key %r must be 1-255 letters, digits or _.:-" % (key,), field=field)
        if isinstance(item, (dict, list)):
            raise ValidationError("value of %s must be a string, number or boolean" % key, field="%s.%s" % (field, key))
        out[key] = item if isinstance(item, str) else str(item).lower() if isinstance(item, bool) else str(item)
    return out


# -- reading the host -----------------------------------------------------------------------------------------------

def volume_facts(client, vol):
    """What libvirt says about a volume: format, sizes, path, LUKS or not, backing file."""
    root = ET.fromstring(client.volume_xml(vol))
    fmt = root.find("target/format")
    encryption = root.find("target/encryption")
    info = client.volume_info(vol)
    return {
        "format": fmt.get("type") if fmt is not None else "raw",
        "capacity": info["capacity"],
        "allocation": info["allocation"],
        "path": client.volume_path(vol),
        "encryption": encryption.get("format") if encryption is not None else None,
        "backing": root.findtext("backingStore/path"),
    }


def pool_path(client, pool):
    root = ET.fromstring(client.pool_xml(pool))
    return (root.findtext("target/path") or "").rstrip("/")


def volume_users(client):
    """Who uses which volume: {(pool, name) or ("path", file): [{server, device, bus, read_only, running, dom,
    live_only}]}, from every domain's definition and, for running ones, their live XML too.

    The live XML counts: a disk whose hot-unplug the guest has not acknowledged yet is gone from the definition but
    still open in QEMU, and QEMU's image lock would refuse it to anyone else.
    """
    from ansible_collections.virtfleet.compute.plugins.module_utils._attachments import attached_volumes

    users = {}
    for dom in client.list_domains():
        name = client.domain_name(dom)
        running = client.domain_active(dom)
        seen = set()
        documents = [(client.domain_xml(dom, inactive=True), False)]
        if running:
            documents.append((client.domain_xml(dom, inactive=False), True))
        for xml, live in documents:
            root = ET.fromstring(xml)
            entries = [(a["key"], a) for a in attached_volumes(root)]
            for disk in root.findall("devices/disk"):
                source = disk.find("source")
                target = disk.find("target")
                if disk.get("type") == "file" and source is not None and source.get("file"):
                    entries.append((("path", source.get("file")), {
                        "target": target.get("dev") if target is not None else None,
                        "bus": target.get("bus") if target is not None else None,
                        "read_only": disk.find("readonly") is not None}))
            for key, disk in entries:
                if key in seen:
                    continue
                seen.add(key)
                users.setdefault(key, []).append({
                    "server": name, "device": disk["target"], "bus": disk["bus"], "read_only": disk["read_only"],
                    "running": running, "live_only": live, "dom": dom})
    return users


def users_of(users, pool, name, path=None):
    found = list(users.get((pool, name), []))
    if path:
        found += [u for u in users.get(("path", path), []) if u["server"] not in set(f["server"] for f in found)]
    return sorted(found, key=lambda u: u["server"])


def _names(users):
    return ", ".join(sorted(set(u["server"] for u in users)))


def serial_of(record):
    return (record.get("id") or "")[:SERIAL_LENGTH] or None


def attachment_facts(client, store, pool_name, name, field):
    """What an attachment of this volume needs (format, serial, secret, shareable); refuses a volume that cannot be
    attached: missing, not created by the volume module, mid-rotation, or encrypted with its secret gone."""
    pool = client.find_pool(pool_name)
    if pool is None or not client.pool_active(pool):
        raise NotFoundError("storage pool '%s' does not exist or is not active on %s" % (pool_name, client.uri),
                            field=field + ".pool")
    record = store.read(pool_name, name)
    if record is not None and record.get("rotation"):
        raise ConflictError("volume %s/%s is in the middle of a passphrase rotation; finish it with the volume module "
                            "first" % (pool_name, name), field=field + ".name")
    vol = client.lookup_volume(pool, name)
    if vol is None:
        raise NotFoundError("volume %s does not exist in storage pool %s (create it with the volume module)"
                            % (name, pool_name), field=field + ".name")
    if record is None:
        raise ConflictError("volume %s/%s was not created by virtfleet.compute's volume module; only its volumes are "
                            "attached" % (pool_name, name), field=field + ".name")
    facts = volume_facts(client, vol)
    secret = None
    if record.get("encrypted"):
        secret = record.get("secret_uuid")
        if client.lookup_secret(secret) is None:
            raise ConflictError("the libvirt secret of encrypted volume %s/%s is gone, so QEMU cannot open it; run the "
                                "volume module with its passphrase to restore the secret" % (pool_name, name),
                                field=field + ".name")
    return {"key": (pool_name, name), "format": facts["format"], "serial": serial_of(record),
            "shareable": bool(record.get("shareable")), "secret": secret}


# -- views ----------------------------------------------------------------------------------------------------------

def volume_view(client, record, vol=None, users=None):
    """What a user sees of a volume (the module's ``volume`` result and volume_info)."""
    view = {
        "name": record["name"],
        "pool": record["pool"],
        "id": record.get("id"),
        "serial": serial_of(record),
        "format": record.get("format"),
        "size": None,
        "allocation": None,
        "path": None,
        "encrypted": bool(record.get("encrypted")),
        "shareable": bool(record.get("shareable")),
        "metadata": dict(record.get("metadata") or {}),
        "source": record.get("source"),
        "created": record.get("created"),
        "attachments": [],
    }
    if record.get("encrypted"):
        view["passphrase_version"] = record.get("passphrase_version", 1)
        view["secret"] = "present" if client.lookup_secret(record.get("secret_uuid")) is not None else "missing"
    if vol is None:
        view["status"] = "rotating" if record.get("rotation") else "missing"
        return view
    facts = volume_facts(client, vol)
    view.update(format=facts["format"], size=facts["capacity"], allocation=facts["allocation"], path=facts["path"])
    for user in users_of(users or {}, record["pool"], record["name"], facts["path"]):
        view["attachments"].append(dict((k, user[k]) for k in ("server", "device", "bus", "read_only")))
    view["status"] = "rotating" if record.get("rotation") else "in-use" if view["attachments"] else "available"
    return view


def _diff_view(view):
    if not view:
        return {}
    keep = ("name", "pool", "format", "size", "encrypted", "shareable", "metadata", "secret", "passphrase_version")
    return dict((k, view[k]) for k in keep if k in view)


# -- planning -------------------------------------------------------------------------------------------------------

class VolumePlanner:
    def __init__(self, client, request, now=None):
        self.client = client
        self.request = request
        self.store = VolumeStore(client)
        self.now = now or datetime.datetime.utcnow().replace(microsecond=0).isoformat() + "Z"
        self._users = None

    @property
    def users(self):
        if self._users is None:
            self._users = volume_users(self.client)
        return self._users

    def plan(self):
        req = self.request
        client = self.client
        pool = client.lookup_pool(req.pool, field="pool")
        vol = client.lookup_volume(pool, req.name)
        record = self.store.read(req.pool, req.name)
        plan = Plan()
        plan.record = record
        if vol is not None and record is None:
            raise ConflictError("volume %s already exists in pool %s but was not created by virtfleet.compute; it is "
                                "never changed or deleted. Choose another name" % (req.name, req.pool), field="name")
        plan.before = _diff_view(volume_view(client, record, vol, {})) if vol is not None else {}
        if req.state == "absent":
            self._plan_delete(plan, pool, vol, record)
        elif vol is None and record and record.get("rotation") and self._tmp_volume(pool) is not None:
            self._plan_resume_rotation(plan, pool, record)
        elif vol is None:
            if record is not None:
                plan.warnings.append("volume %s/%s was recorded but is missing (deleted outside virtfleet.compute); "
                                     "it is created again, empty" % (req.pool, req.name))
            self._plan_create(plan, pool, record)
        else:
            self._plan_update(plan, pool, vol, record)
        return plan

    # -- delete -----------------------------------------------------------------------------------------------------

    def _plan_delete(self, plan, pool, vol, record):
        req = self.request
        client = self.client
        plan.after = {}
        if record is None:
            return
        if vol is not None:
            users = users_of(self.users, req.pool, req.name, client.volume_path(vol))
            if users:
                raise ConflictError("volume %s/%s is attached to %s; detach it first (the server module's volumes "
                                    "option), then delete it" % (req.pool, req.name, _names(users)), field="name")
        tmp = self._tmp_volume(pool) if record.get("rotation") else None
        if tmp is not None:
            plan.add("delete %s/%s (left by an interrupted passphrase rotation)" % (req.pool, client.volume_name(tmp)),
                     lambda: client.delete_volume(tmp))
        if vol is not None:
            plan.add("delete volume %s/%s" % (req.pool, req.name), lambda: client.delete_volume(vol))
        for uuid in _secret_uuids(record):
            secret = client.lookup_secret(uuid)
            if secret is not None:
                plan.add("undefine libvirt secret %s of volume %s/%s" % (uuid, req.pool, req.name),
                         _bind(client.undefine_secret, secret))
        plan.add("forget volume %s/%s in the volume records" % (req.pool, req.name),
                 lambda: self.store.delete(req.pool, req.name))

    # -- create -----------------------------------------------------------------------------------------------------

    def _plan_create(self, plan, pool, stale):
        req = self.request
        client = self.client
        fmt = req.format or "qcow2"
        if req.shareable and fmt != "raw":
            raise ValidationError("a shareable volume must be raw (format: raw)", field="format")
        source, source_vol, capacity = self._resolve_source(fmt)
        size = req.size if req.size is not None else capacity
        if size is None:
            raise ValidationError("is required to create volume %s (or give a source to copy)" % req.name,
                                  field="size")
        if capacity is not None and size < capacity:
            raise ValidationError("%s is smaller than the source (%s); a copy is at least as large as what it copies"
                                  % (size_text(size), size_text(capacity)), field="size")
        if req.encrypted and not req.passphrase:
            raise ValidationError("is required to create encrypted volume %s" % req.name, field="passphrase")
        record = {
            "id": str(uuidlib.uuid4()), "name": req.name, "pool": req.pool, "format": fmt,
            "encrypted": bool(req.encrypted), "shareable": bool(req.shareable), "metadata": req.metadata or {},
            "source": source, "created": self.now,
        }
        path = "%s/%s" % (pool_path(client, pool), req.name)
        secret_holder = {}
        if req.encrypted:
            record["secret_uuid"] = self._secret_uuid_for(path, stale)
            record["passphrase_check"] = passphrase_check(req.passphrase)
            record["passphrase_version"] = 1
            plan.add("define libvirt secret for volume %s/%s" % (req.pool, req.name),
                     self._define_secret_run(record["secret_uuid"], path, req.pool, req.name, req.passphrase,
                                             secret_holder),
                     undo=lambda: secret_holder.get("secret") and client.undefine_secret(secret_holder["secret"]))
        xml = volume_xml(req.name, size, fmt, record.get("secret_uuid"))
        holder = {}
        # The volume counts against its filesystem by its capacity from the moment it is recorded (_disk_usage): it
        # is claimed under the host's claim lock, the servers' lock, so a server and a volume never both take the
        # last free GB. Planning (check mode too) already refuses what does not fit.
        claim = VolumeClaim(client, req.pool, req.name, ceil_gb(size))
        plan.add(claim.acquire_label, claim.acquire, undo=claim.release)

        def create():
            holder["vol"] = client.build_volume(pool, xml, source_vol)
            if source_vol is not None and size > client.volume_info(holder["vol"])["capacity"]:
                # libvirt copies at the source's size whatever capacity the new volume asks for.
                client.resize_volume(holder["vol"], size)

        def undo_create():
            created = holder.get("vol") or client.lookup_volume(pool, req.name)
            if created is not None:
                client.delete_volume(created)

        what = "%s %s%s" % (size_text(size), fmt, ", LUKS-encrypted" if req.encrypted else "")
        if source is None:
            label = "create volume %s/%s (%s)" % (req.pool, req.name, what)
        else:
            kind = "image" if "image" in source else "volume"
            label = "copy %s %s/%s into new volume %s/%s (%s)" % (
                kind, source["pool"], source[kind], req.pool, req.name, what)
        plan.add(label, create, undo=undo_create)
        plan.add("record volume %s/%s" % (req.pool, req.name), lambda: self.store.write(record),
                 undo=lambda: self.store.delete(req.pool, req.name))
        plan.add(claim.verify_label, claim.verify_and_release, undo=claim.release)
        predicted = dict(record)
        view = volume_view(client, predicted, None, {})
        # The id is drawn when the volume is made; check mode cannot know it.
        view.update(size=size, status="available", path=path, id=None, serial=None)
        if req.encrypted:
            view["secret"] = "present"
        plan.predicted = view
        plan.after = _diff_view(view)

    def _resolve_source(self, fmt):
        """(source as recorded, the libvirt volume to copy, its size) for the declared source, or Nones."""
        req = self.request
        client = self.client
        source = req.source
        if source is None:
            return None, None, None
        kind = "image" if "image" in source else "volume"
        pool = client.lookup_pool(source["pool"], field="source.pool")
        vol = client.lookup_volume(pool, source[kind])
        if vol is None:
            raise NotFoundError("%s %s not found in storage pool %s" % (kind, source[kind], source["pool"]),
                                field="source.%s" % kind)
        facts = volume_facts(client, vol)
        if facts["backing"]:
            raise ValidationError("%s %s/%s has a backing file; only self-contained images are copied"
                                  % (kind, source["pool"], source[kind]), field="source.%s" % kind)
        if facts["format"] not in FORMATS:
            raise ValidationError("%s %s/%s is %s; copies are made of raw or qcow2 only"
                                  % (kind, source["pool"], source[kind], facts["format"]), field="source.%s" % kind)
        if kind == "volume":
            record = self.store.read(source["pool"], source["volume"])
            if record is None:
                raise ConflictError("volume %s/%s was not created by virtfleet.compute; only its volumes are copied"
                                    % (source["pool"], source["volume"]), field="source.volume")
            if record.get("encrypted"):
                if not req.encrypted:
                    raise ValidationError("a copy of encrypted volume %s/%s must be encrypted too: give it a "
                                          "passphrase" % (source["pool"], source["volume"]), field="passphrase")
                if client.lookup_secret(record.get("secret_uuid")) is None:
                    raise ConflictError("the libvirt secret of volume %s/%s is gone, so it cannot be read; restore it "
                                        "first" % (source["pool"], source["volume"]), field="source.volume")
            running = [u for u in users_of(self.users, source["pool"], source["volume"], facts["path"])
                       if u["running"]]
            if running:
                raise ConflictError("volume %s/%s is in use by running server %s; a copy of a disk being written is "
                                    "not consistent. Stop the server or detach the volume first"
                                    % (source["pool"], source["volume"], _names(running)), field="source.volume")
        return source, vol, facts["capacity"]

    def _secret_uuid_for(self, path, stale):
        """The UUID for a new volume's secret. libvirt allows one secret per volume path: one left from a recorded
        volume of the same name is reused; anybody else's is refused, never overwritten."""
        existing = self.client.lookup_volume_secret(path)
        if existing is None:
            return str(uuidlib.uuid4())
        uuid = self.client.secret_uuid(existing)
        if stale is not None and stale.get("secret_uuid") == uuid:
            return uuid
        raise ConflictError("libvirt secret %s already belongs to volume path %s and was not created for this volume; "
                            "it is never overwritten. Remove it (virsh secret-undefine) or choose another name"
                            % (uuid, path), field="name")

    def _define_secret_run(self, uuid, path, pool, name, passphrase, holder):
        client = self.client

        def run():
            holder["secret"] = client.define_secret(secret_xml(uuid, path, pool, name))
            client.set_secret_value(holder["secret"], passphrase.encode("utf-8"))
        return run

    # -- update -----------------------------------------------------------------------------------------------------

    def _plan_update(self, plan, pool, vol, record):
        req = self.request
        client = self.client
        facts = volume_facts(client, vol)
        new = dict(record)
        changed_fields = []
        if req.format is not None and req.format != facts["format"]:
            raise ConflictError("volume %s/%s is %s; a volume's format never changes. Copy it into a new volume "
                                "(source: {volume: %s}) to convert it"
                                % (req.pool, req.name, facts["format"], req.name), field="format")
        encrypted = bool(record.get("encrypted"))
        if req.encrypted is not None and bool(req.encrypted) != encrypted:
            raise ConflictError(
                "volume %s/%s is %s; encryption cannot be %s in place. Copy it into a new volume (source: "
                "{volume: %s}) %s" % (req.pool, req.name, "encrypted" if encrypted else "not encrypted",
                                      "removed" if encrypted else "added", req.name,
                                      "without a passphrase" if encrypted else "with a passphrase"),
                field="encrypted" if req.passphrase is None else "passphrase")
        if req.size is not None and req.size < facts["capacity"]:
            raise ConflictError("volume %s/%s is %s and a volume never shrinks (its data would be cut off); declare "
                                "at least %s" % (req.pool, req.name, size_text(facts["capacity"]),
                                                 size_text(facts["capacity"])), field="size")
        if req.shareable is not None and bool(req.shareable) != bool(record.get("shareable")):
            users = users_of(self.users, req.pool, req.name, facts["path"])
            if users:
                raise ConflictError("volume %s/%s is attached to %s; shareable changes only while it is detached"
                                    % (req.pool, req.name, _names(users)), field="shareable")
            if req.shareable and facts["format"] != "raw":
                raise ValidationError("a shareable volume must be raw; %s/%s is %s"
                                      % (req.pool, req.name, facts["format"]), field="shareable")
            if req.shareable and encrypted:
                raise ValidationError("shareable encrypted volumes are not supported", field="shareable")
            new["shareable"] = bool(req.shareable)
            changed_fields.append("shareable")
        if req.metadata is not None and req.metadata != (record.get("metadata") or {}):
            new["metadata"] = req.metadata
            changed_fields.append("metadata")

        if record.get("rotation"):
            self._plan_cleanup_rotation(plan, pool, record, new)
            changed_fields.append("rotation")
        if encrypted and req.passphrase is not None:
            changed_fields += self._plan_passphrase(plan, pool, vol, facts, record, new)
        elif encrypted and client.lookup_secret(record.get("secret_uuid")) is None:
            plan.warnings.append("the libvirt secret of encrypted volume %s/%s is gone: no server can open it until "
                                 "the volume module restores it from the passphrase" % (req.pool, req.name))

        if req.size is not None and req.size > facts["capacity"]:
            self._plan_grow(plan, vol, facts)

        if changed_fields:
            plan.add("update the record of volume %s/%s (%s)" % (req.pool, req.name, ", ".join(changed_fields)),
                     lambda: self.store.write(new))
        view = volume_view(client, new, None, {})
        view.update(format=facts["format"], size=max(req.size or 0, facts["capacity"]))
        if encrypted:
            view["secret"] = "present" if (req.passphrase is not None or view["secret"] == "present") else "missing"
        plan.after = _diff_view(view)

    def _plan_grow(self, plan, vol, facts):
        req = self.request
        client = self.client
        running = [u for u in users_of(self.users, req.pool, req.name, facts["path"]) if u["running"]]
        if len(running) > 1:
            raise ConflictError("volume %s/%s is in use by several running servers (%s); grow it while at most one "
                                "of them runs" % (req.pool, req.name, _names(running)), field="size")
        label = "grow volume %s/%s from %s to %s" % (req.pool, req.name, size_text(facts["capacity"]),
                                                     size_text(req.size))
        claim = VolumeClaim(client, req.pool, req.name, ceil_gb(req.size) - ceil_gb(facts["capacity"]), verify=False)
        if claim.needed:
            plan.add(claim.acquire_label, claim.acquire, undo=claim.release)
        if running:
            # The running guest holds the image: QEMU resizes it and tells the guest, which sees the new size live.
            user = running[0]
            plan.add(label + " (live, in %s)" % user["server"],
                     lambda: client.resize_disk_live(user["dom"], user["device"], req.size))
        else:
            plan.add(label, lambda: client.resize_volume(vol, req.size))
        if claim.needed:
            plan.add(claim.verify_label, claim.verify_and_release)

    def _plan_passphrase(self, plan, pool, vol, facts, record, new):
        """A passphrase given for an existing encrypted volume: nothing, restore a lost secret, or rotate."""
        req = self.request
        client = self.client
        secret = client.lookup_secret(record.get("secret_uuid"))
        if passphrase_matches(req.passphrase, record.get("passphrase_check")):
            if secret is not None:
                return []
            path = facts["path"]
            plan.add("restore libvirt secret %s of volume %s/%s from the passphrase"
                     % (record["secret_uuid"], req.pool, req.name),
                     self._define_secret_run(record["secret_uuid"], path, req.pool, req.name, req.passphrase, {}))
            return []
        if secret is None:
            raise ConflictError(
                "the libvirt secret of volume %s/%s is gone and this passphrase is not the one the volume was "
                "encrypted with. Only that passphrase opens it: without it the data is unreadable (rotation needs the "
                "old key too)" % (req.pool, req.name), field="passphrase")
        if not req.rotate:
            raise ConflictError(
                "the passphrase differs from the one volume %s/%s was encrypted with. Set rotate: true to re-encrypt "
                "it with the new one (it must not be in use by a running server), or give the current passphrase"
                % (req.pool, req.name), field="passphrase")
        running = [u for u in users_of(self.users, req.pool, req.name, facts["path"]) if u["running"]]
        if running:
            raise ConflictError(
                "volume %s/%s is in use by running server %s; a rotation copies the volume, which needs it closed. "
                "Stop the server or detach the volume first" % (req.pool, req.name, _names(running)),
                field="rotate")
        self._plan_rotation(plan, pool, vol, facts, record, new)
        return ["passphrase"]

    def _plan_rotation(self, plan, pool, vol, facts, record, new):
        """Re-encrypt under the new passphrase by copying, twice.

        libvirt has no call to add or remove LUKS key slots (qemu-img amend, QMP x-blockdev-amend are not in its
        API), and no volume rename. So the volume is copied into a temporary volume encrypted with the new
        passphrase (a new LUKS master key as well), the original deleted, and the copy copied back under the original
        name and secret. The record notes the rotation before the original goes, so a run that fails after that
        point can be finished by running again with the new passphrase: the data is then in the temporary volume.
        """
        req = self.request
        client = self.client
        tmp_name = req.name + ROTATING_SUFFIX
        directory = os.path.dirname(facts["path"])
        tmp_path = "%s/%s" % (directory, tmp_name)
        tmp_uuid = str(uuidlib.uuid4())
        check = passphrase_check(req.passphrase)
        capacity = facts["capacity"]
        fmt = facts["format"]
        tmp_secret = {}
        tmp_vol = {}
        secret = client.lookup_secret(record["secret_uuid"])

        def original_gone():
            return client.lookup_volume(pool, req.name) is None

        def keep_if_original_gone(what):
            def undo():
                if original_gone():
                    raise ConflictError("kept %s: the data of %s/%s is only in %s/%s now; run again with the new "
                                        "passphrase and rotate: true to finish"
                                        % (what, req.pool, req.name, req.pool, tmp_name))
            return undo

        def undo_secret():
            keep_if_original_gone("the temporary secret")()
            if tmp_secret.get("secret") is not None:
                client.undefine_secret(tmp_secret["secret"])

        def undo_copy():
            keep_if_original_gone("the re-encrypted copy")()
            created = tmp_vol.get("vol") or client.lookup_volume(pool, tmp_name)
            if created is not None:
                client.delete_volume(created)

        def copy_to_tmp():
            tmp_vol["vol"] = client.build_volume(pool, volume_xml(tmp_name, capacity, fmt, tmp_uuid), vol)

        marked = dict(record, rotation={"tmp": tmp_name, "secret_uuid": tmp_uuid, "passphrase_check": check})

        def undo_mark():
            keep_if_original_gone("the rotation note in the record")()
            self.store.write(record)

        plan.add("define a temporary libvirt secret for %s/%s" % (req.pool, tmp_name),
                 self._define_secret_run(tmp_uuid, tmp_path, req.pool, tmp_name, req.passphrase, tmp_secret),
                 undo=undo_secret)
        plan.add("re-encrypt volume %s/%s into %s/%s with the new passphrase (copy 1 of 2)"
                 % (req.pool, req.name, req.pool, tmp_name), copy_to_tmp, undo=undo_copy)
        plan.add("note the rotation of volume %s/%s in its record" % (req.pool, req.name),
                 lambda: self.store.write(marked), undo=undo_mark)
        plan.add("replace volume %s/%s by its re-encrypted copy (copy 2 of 2)" % (req.pool, req.name),
                 self._copy_back_run(pool, secret, record["secret_uuid"], facts["path"], capacity, fmt, tmp_name,
                                     delete_original=vol))
        plan.add("delete %s/%s and its temporary secret" % (req.pool, tmp_name),
                 self._drop_tmp_run(pool, tmp_name, tmp_uuid))
        new.update(passphrase_check=check, passphrase_version=int(record.get("passphrase_version", 1)) + 1)
        new.pop("rotation", None)

    def _copy_back_run(self, pool, secret, secret_uuid, path, capacity, fmt, tmp_name, delete_original=None):
        req = self.request
        client = self.client

        def run():
            if delete_original is not None:
                client.delete_volume(delete_original)
            current = secret or client.lookup_secret(secret_uuid)
            if current is None:
                current = client.define_secret(secret_xml(secret_uuid, path, req.pool, req.name))
            client.set_secret_value(current, req.passphrase.encode("utf-8"))
            source = client.lookup_volume(pool, tmp_name)
            client.build_volume(pool, volume_xml(req.name, capacity, fmt, secret_uuid), source)
        return run

    def _drop_tmp_run(self, pool, tmp_name, tmp_uuid):
        client = self.client

        def run():
            tmp = client.lookup_volume(pool, tmp_name)
            if tmp is not None:
                client.delete_volume(tmp)
            secret = client.lookup_secret(tmp_uuid)
            if secret is not None:
                client.undefine_secret(secret)
        return run

    def _tmp_volume(self, pool):
        return self.client.lookup_volume(pool, self.request.name + ROTATING_SUFFIX)

    def _plan_cleanup_rotation(self, plan, pool, record, new):
        """A rotation failed before the original was deleted: drop its copy and start again if asked."""
        req = self.request
        rotation = record["rotation"]
        plan.add("clean up the interrupted passphrase rotation of %s/%s" % (req.pool, req.name),
                 self._drop_tmp_run(pool, rotation["tmp"], rotation["secret_uuid"]))
        new.pop("rotation", None)

    def _plan_resume_rotation(self, plan, pool, record):
        """The original was deleted mid-rotation: its data is in the temporary copy, under the new passphrase."""
        req = self.request
        client = self.client
        rotation = record["rotation"]
        if req.passphrase is None or not passphrase_matches(req.passphrase, rotation.get("passphrase_check")):
            raise ConflictError(
                "a passphrase rotation of volume %s/%s was interrupted: its data is in %s/%s, encrypted with the new "
                "passphrase. Run again with that passphrase (and rotate: true) to finish it"
                % (req.pool, req.name, req.pool, rotation["tmp"]), field="passphrase")
        tmp = client.lookup_volume(pool, rotation["tmp"])
        facts = volume_facts(client, tmp)
        path = "%s/%s" % (os.path.dirname(facts["path"]), req.name)
        plan.add("restore volume %s/%s from its re-encrypted copy %s (finishing the rotation)"
                 % (req.pool, req.name, rotation["tmp"]),
                 self._copy_back_run(pool, None, record["secret_uuid"], path, facts["capacity"], facts["format"],
                                     rotation["tmp"]))
        plan.add("delete %s/%s and its temporary secret" % (req.pool, rotation["tmp"]),
                 self._drop_tmp_run(pool, rotation["tmp"], rotation["secret_uuid"]))
        new = dict(record, passphrase_check=rotation["passphrase_check"],
                   passphrase_version=int(record.get("passphrase_version", 1)) + 1)
        new.pop("rotation", None)
        plan.add("update the record of volume %s/%s (passphrase)" % (req.pool, req.name),
                 lambda: self.store.write(new))
        view = volume_view(client, new, None, {})
        view.update(size=facts["capacity"], secret="present")
        plan.after = _diff_view(view)


def _secret_uuids(record):
    out = []
    if record.get("encrypted") and record.get("secret_uuid"):
        out.append(record["secret_uuid"])
    if record.get("rotation"):
        out.append(record["rotation"]["secret_uuid"])
    return out


def _bind(func, *args):
    return lambda: func(*args)


def volume_xml(name, capacity, fmt, secret_uuid=None):
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", {"unit": "bytes"}).text = str(capacity)
    # Allocation 0: a sparse file. Without it libvirt allocates a raw volume in full, up front.
    ET.SubElement(root, "allocation", {"unit": "bytes"}).text = "0"
    target = ET.SubElement(root, "target")
    ET.SubElement(target, "format", {"type": fmt})
    if secret_uuid:
        encryption = ET.SubElement(target, "encryption", {"format": "luks"})
        ET.SubElement(encryption, "secret", {"type": "passphrase", "uuid": secret_uuid})
    return ET.tostring(root, encoding="unicode")


def secret_xml(uuid, path, pool, name):
    # Private: libvirt never returns the value through its API. Persistent: servers must open the volume after a
    # host reboot without the playbook. The usage names the volume's file, as libvirt's storage encryption expects.
    root = ET.Element("secret", {"ephemeral": "no", "private": "yes"})
    ET.SubElement(root, "uuid").text = uuid
    ET.SubElement(root, "description").text = "virtfleet.compute volume %s/%s" % (pool, name)
    usage = ET.SubElement(root, "usage", {"type": "volume"})
    ET.SubElement(usage, "volume").text = path
    return ET.tostring(root, encoding="unicode")


def delete_volume_run(client, store, pool_name, name):
    """Delete a recorded volume, its secret and its record (a server's delete with ``delete_volumes``)."""

    def run():
        record = store.read(pool_name, name)
        if record is None:
            return
        pool = client.find_pool(pool_name)
        vol = client.lookup_volume(pool, name) if pool is not None else None
        if vol is not None:
            client.delete_volume(vol)
        for uuid in _secret_uuids(record):
            secret = client.lookup_secret(uuid)
            if secret is not None:
                client.undefine_secret(secret)
        store.delete(pool_name, name)
    return run


# -- entry points ---------------------------------------------------------------------------------------------------

def converge_volume(client, params, check_mode=False, diff_mode=False):
    """The ``volume`` module's whole job: plan, execute (unless check mode), describe the result."""
    request = VolumeRequest(params)
    planner = VolumePlanner(client, request)
    plan = planner.plan()
    plan.execute(check_mode)
    result = {"changed": plan.changed, "actions": plan.actions, "warnings": list(plan.warnings)}
    if diff_mode:
        result["diff"] = plan.diff()
    if request.state == "absent":
        result["volume"] = {}
    elif check_mode:
        predicted = getattr(plan, "predicted", None)
        if predicted is None:
            predicted = volume_view(client, plan.record, _lookup(client, request.pool, request.name),
                                    volume_users(client))
        predicted.update(plan.after)
        result["volume"] = predicted
    else:
        result["volume"] = read_volume(client, request.pool, request.name)
    return result


def _lookup(client, pool_name, name):
    pool = client.find_pool(pool_name)
    if pool is None or not client.pool_active(pool):
        return None
    return client.lookup_volume(pool, name)


def read_volume(client, pool_name, name):
    record = VolumeStore(client).read(pool_name, name)
    if record is None:
        return {}
    return volume_view(client, record, _lookup(client, pool_name, name), volume_users(client))


def list_volumes(client, names=None, pool=None):
    """Views of the recorded volumes of the host (all, or those of ``pool`` and/or called ``names``), with the
    servers each is attached to. Names that do not exist are skipped."""
    users = volume_users(client)
    out = []
    for record in VolumeStore(client).list():
        if pool and record["pool"] != pool:
            continue
        if names and record["name"] not in names:
            continue
        out.append(volume_view(client, record, _lookup(client, record["pool"], record["name"]), users))
    return out
