# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Base images (Glance's job): inspected, checksummed volumes in a host's image pool.

Every image is inspected before it reaches the host, the way Nova does it since CVE-2024-32498: a qcow2 with a
backing or data file, a VMDK with flat extents, or a file whose content is not the declared format is refused
before anything is created. What was imported (checksum, format, sizes, source) is recorded in the host's records
pool, so a second run recognises the image by its checksum without reading it again.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import hashlib
import os
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET

from ansible_collections.virtfleet.compute.plugins.module_utils._disk_usage import IMAGES_RECORD
from ansible_collections.virtfleet.compute.plugins.module_utils._domain import Domain
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import (
    ConflictError,
    LibvirtOperationError,
    UnsafeImageError,
    ValidationError,
    VirtfleetError,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._image_inspect import (
    Inspector,
    check_image_path,
    inspect_fd,
    open_image_file,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._plan import Plan
from ansible_collections.virtfleet.compute.plugins.module_utils._records import RecordStore

CHECKSUM_ALGORITHMS = ("sha256", "sha512")
_HEX = re.compile(r"^[0-9a-f]+$")
_DIGEST_LENGTHS = {"sha256": 64, "sha512": 128}
_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
_DOWNLOAD_CHUNK = 1024 * 1024


def parse_checksum(value, field="checksum"):
    """``sha256:HEX``, ``sha512:HEX`` or a bare 64-digit sha256 → (algorithm, hex)."""
    if value is None:
        return None
    text = value.strip().lower()
    algorithm, _sep, digest = text.rpartition(":")
    algorithm = algorithm or "sha256"
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise ValidationError("algorithm %r is not supported; use %s" % (algorithm, " or ".join(CHECKSUM_ALGORITHMS)),
                              field=field)
    if not _HEX.match(digest) or len(digest) != _DIGEST_LENGTHS[algorithm]:
        raise ValidationError(
            "%r is not a %s digest (%d hex digits)" % (digest, algorithm, _DIGEST_LENGTHS[algorithm]), field=field
        )
    return algorithm, digest


class ImageRequest:
    def __init__(self, params):
        self.name = params["name"]
        if not _VOLUME_NAME.match(self.name or ""):
            raise ValidationError("must start with a letter or digit and hold only letters, digits and _.+- "
                                  "(at most 128 characters)", field="name")
        self.pool = params.get("pool") or "virtfleet-images"
        self.state = params.get("state") or "present"
        self.src = params.get("src")
        self.url = params.get("url")
        self.checksum = parse_checksum(params.get("checksum"))
        self.disk_format = params.get("disk_format")
        self.validate_certs = params.get("validate_certs", True)
        self.timeout = params.get("timeout") or 60
        if self.state == "present":
            if bool(self.src) == bool(self.url):
                raise ValidationError("give exactly one of src (a local file) or url", field="src")
            if self.url and self.checksum is None:
                raise ValidationError("is required with url: an image from the network is only trusted when its "
                                      "checksum is known in advance", field="checksum")
            if self.src:
                check_image_path(self.src, field="src")


def _record_key(pool, name):
    return "%s/%s" % (pool, name)


def image_users(client, pool_name, volume_name, volume_path):
    """Names of domains whose disks use the image: managed servers by their record, any domain by its disks."""
    users = []
    for dom in client.list_domains():
        domain = Domain(client.domain_xml(dom))
        record_image = (domain.record.image or {}) if domain.managed else {}
        if record_image.get("pool") == pool_name and record_image.get("name") == volume_name:
            users.append(domain.name)
            continue
        for disk in domain.disks:
            if (disk["pool"] == pool_name and disk["volume"] == volume_name) or (
                    volume_path and disk["path"] == volume_path):
                users.append(domain.name)
                break
    return sorted(set(users))


class ImagePlanner:
    def __init__(self, client, request):
        self.client = client
        self.request = request
        self.records = RecordStore(client)
        self.report = None
        self._tmpdir = None
        # The one open descriptor of the image: inspected, hashed and uploaded from, never reopened by path.
        self._fd = None

    def cleanup(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def plan(self, check_mode):
        req = self.request
        client = self.client
        pool = client.lookup_pool(req.pool, field="pool")
        vol = client.lookup_volume(pool, req.name)
        catalog = self.records.read(IMAGES_RECORD) or {}
        record = catalog.get(_record_key(req.pool, req.name))
        plan = Plan()
        plan.before = _view(record) if vol is not None and record else {}
        plan.record = record

        if vol is not None and record is None:
            raise ConflictError("volume %s already exists in pool %s but was not imported by virtfleet.compute; it "
                                "is never replaced or deleted. Choose another name" % (req.name, req.pool),
                                field="name")
        if req.state == "absent":
            if vol is not None:
                users = image_users(client, req.pool, req.name, client.volume_path(vol))
                if users:
                    raise ConflictError("image %s is the base of server(s) %s; delete or rebuild them first"
                                        % (req.name, ", ".join(users)), field="name")
                plan.add("delete image %s/%s" % (req.pool, req.name), lambda: client.delete_volume(vol))
            if record is not None:
                # Also when the volume is already gone (deleted outside the module): a record without its volume
                # would make the next import believe the image is there.
                plan.add("forget image %s/%s in the image records" % (req.pool, req.name),
                         lambda: self._write_record(None))
            plan.after = {}
            return plan

        # The record is never trusted over the pool: an image is unchanged only while its volume is there and still
        # looks like what was recorded (format and size); otherwise it is imported again.
        intact = record is not None and vol is not None and self._matches_record(vol, record)
        if vol is not None and not intact:
            plan.warnings.append("volume %s/%s no longer matches its image record (format or size changed outside "
                                 "virtfleet.compute): it is imported again" % (req.pool, req.name))
        # Recognise an unchanged image by its checksum, without reading it, whenever a checksum is declared.
        if intact and req.checksum is not None and record.get(req.checksum[0]) == req.checksum[1]:
            plan.after = plan.before
            return plan
        if req.url and check_mode:
            plan.warnings.append("check mode does not download %s: it cannot tell whether the image is safe; the real "
                                 "run inspects it before importing" % req.url)
            plan.add("download %s, verify its %s and inspect it" % (req.url, req.checksum[0]), lambda: None)
            self._plan_import(plan, pool, vol)
            return plan

        report = self.report
        if report is None:
            if req.url:
                report = self._fetch()
            else:
                self._fd = open_image_file(req.src, field="src")
                report = inspect_fd(self._fd, declared_format=req.disk_format, field="src",
                                    hash_algorithms=(req.checksum[0],) if req.checksum else ("sha256",),
                                    name=req.src)
        self.report = report
        if req.checksum is not None and report.digests[req.checksum[0]] != req.checksum[1]:
            raise ValidationError("the image's %s is %s, not the declared %s; nothing was imported"
                                  % (req.checksum[0], report.digests[req.checksum[0]], req.checksum[1]),
                                  field="checksum")
        if intact and record.get("sha256") == report.sha256:
            plan.after = plan.before
            return plan
        self._plan_import(plan, pool, vol)
        return plan

    def _matches_record(self, vol, record):
        fmt = ET.fromstring(self.client.volume_xml(vol)).find("target/format")
        if fmt is None or fmt.get("type") != record.get("format"):
            return False
        return self.client.volume_info(vol)["capacity"] == record.get("virtual_size")

    def _plan_import(self, plan, pool, vol):
        req = self.request
        client = self.client
        report = self.report
        if vol is not None:
            users = image_users(client, req.pool, req.name, client.volume_path(vol))
            if users:
                raise ConflictError("image %s has new content but is the base of server(s) %s: replacing a base image "
                                    "under running disks corrupts them. Import the new content under another name "
                                    "and rebuild the servers onto it" % (req.name, ", ".join(users)), field="name")
            plan.add("delete the old content of image %s/%s" % (req.pool, req.name), lambda: client.delete_volume(vol))
        fmt = report.format if report else (req.disk_format or "?")
        holder = {}

        def create():
            holder["vol"] = client.create_volume(pool, _volume_xml(req.name, report.actual_size, fmt))
            # Known now: once a failed refresh has hidden the volume, libvirt cannot tell its path any more.
            holder["path"] = client.volume_path(holder["vol"])

        def delete_created():
            created = holder.get("vol") or client.lookup_volume(pool, req.name)
            if created is not None:
                client.delete_volume(created)

        plan.add("create volume %s/%s (%s)" % (req.pool, req.name, fmt), create, undo=delete_created)
        plan.add("upload %s to %s/%s" % (req.src or req.url, req.pool, req.name),
                 lambda: self._upload(holder["vol"]))
        plan.add("read back %s/%s and inspect it again" % (req.pool, req.name),
                 lambda: self._verify_stored(pool, holder["path"]))
        plan.add("record image %s/%s" % (req.pool, req.name), lambda: self._write_record(self._new_record()))
        plan.after = _view(self._new_record()) if report else {"name": req.name, "pool": req.pool}

    def _upload(self, vol):
        """Upload the inspected bytes from the descriptor they were inspected from, hashing them again on the way:
        a rename over the path changes nothing, and a rewrite of the same file in place is caught."""
        report = self.report
        fd = self._fd
        digest = hashlib.sha256()
        os.lseek(fd, 0, os.SEEK_SET)

        def changed():
            return UnsafeImageError(
                "the image file changed while it was uploaded (its sha256 is no longer the inspected %s): something "
                "rewrote it after the inspection. The uploaded volume is deleted and nothing is recorded"
                % report.sha256, field=self._field())

        def read(size):
            chunk = os.read(fd, size)
            if not chunk:
                raise changed()  # shorter than when it was inspected
            digest.update(chunk)
            return chunk

        self.client.upload_stream(vol, report.actual_size, read)
        if digest.hexdigest() != report.sha256:
            raise changed()

    def _verify_stored(self, pool, path):
        """Check what the pool now holds, through libvirt, as QEMU will see it."""
        req = self.request
        client = self.client
        report = self.report
        # libvirt refreshes the pool after an upload and probes every file; a file it cannot parse makes the refresh
        # fail and the pool list no volume at all. Learn it now, not at the next server build. A refresh refused for
        # another reason (another volume being built) is harmless as long as our volume is still listed.
        reason = "volume %s is not listed after the refresh" % req.name
        try:
            client.refresh_pool_or_fail(pool)
        except LibvirtOperationError as exc:
            reason = exc.message
        try:
            stored = client.lookup_volume(pool, req.name)
        except LibvirtOperationError:
            stored = None  # the failed refresh stopped the pool
        if stored is None:
            raise LibvirtOperationError(
                "storage pool %s failed to refresh after the upload of %s (%s): libvirt cannot read the uploaded "
                "file, and the pool lists none of its volumes while that file is there. Nothing was recorded. "
                "libvirt can no longer delete it: remove %s on the host, then start or refresh the pool again "
                "(virsh pool-start %s, or virsh pool-refresh %s)" % (req.pool, req.name, reason, path, req.pool,
                                                                     req.pool), field=self._field())
        inspector = Inspector(declared_format=report.format, field=self._field())
        client.download_stream(stored, inspector.feed, report.actual_size)
        try:
            again = inspector.finish()
        except VirtfleetError as exc:
            raise UnsafeImageError("the volume as read back from %s no longer passes the inspection (%s); it is "
                                   "deleted and nothing is recorded" % (req.pool, exc.message), field=self._field())
        if again.sha256 != report.sha256:
            raise UnsafeImageError("the volume as read back from %s is not the inspected content (sha256 %s, "
                                   "inspected %s); it is deleted and nothing is recorded"
                                   % (req.pool, again.sha256, report.sha256), field=self._field())

    def _field(self):
        return "src" if self.request.src else "url"

    def _new_record(self):
        req = self.request
        report = self.report
        record = {
            "name": req.name,
            "pool": req.pool,
            "format": report.format,
            "sha256": report.sha256,
            "virtual_size": report.virtual_size,
            "size": report.actual_size,
            "source": req.url or os.path.abspath(req.src),
            "imported": datetime.datetime.utcnow().replace(microsecond=0).isoformat() + "Z",
        }
        for algorithm, digest in report.digests.items():
            record[algorithm] = digest
        return record

    def _write_record(self, record):
        self.records.ensure_pool()
        catalog = self.records.read(IMAGES_RECORD) or {}
        key = _record_key(self.request.pool, self.request.name)
        if record is None:
            catalog.pop(key, None)
        else:
            catalog[key] = record
        self.records.write(IMAGES_RECORD, catalog)

    def _fetch(self):
        """Download the URL into a temporary file, hashing and inspecting it in the same pass."""
        from ansible.module_utils.urls import open_url

        req = self.request
        self._tmpdir = tempfile.mkdtemp(prefix="virtfleet-image-")
        path = os.path.join(self._tmpdir, "image")
        inspector = Inspector(declared_format=req.disk_format, field="url", hash_algorithms=(req.checksum[0],))
        # Written, inspected and later uploaded through this one descriptor, like a local file.
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            response = open_url(req.url, validate_certs=req.validate_certs, timeout=req.timeout)
            while True:
                chunk = response.read(_DOWNLOAD_CHUNK)
                if not chunk:
                    break
                inspector.feed(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self._fd, view):]
        except VirtfleetError:
            raise
        except Exception as exc:  # pylint: disable=broad-except
            raise VirtfleetError("cannot download %s: %s" % (req.url, exc), field="url")
        return inspector.finish()


def _view(record):
    if not record:
        return {}
    return dict((k, record.get(k)) for k in ("name", "pool", "format", "sha256", "virtual_size", "size", "source"))


def _volume_xml(name, size, fmt):
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", {"unit": "bytes"}).text = str(size)
    ET.SubElement(ET.SubElement(root, "target"), "format", {"type": fmt})
    return ET.tostring(root, encoding="unicode")


def converge_image(client, params, check_mode=False, diff_mode=False):
    request = ImageRequest(params)
    planner = ImagePlanner(client, request)
    try:
        plan = planner.plan(check_mode)
        plan.execute(check_mode)
    finally:
        planner.cleanup()
    result = {"changed": plan.changed, "actions": plan.actions, "warnings": plan.warnings,
              "image": plan.after}
    if diff_mode:
        result["diff"] = plan.diff()
    return result


def list_images(client):
    """Imported images of this host, from the records (for server_info and the inventory)."""
    return RecordStore(client).read(IMAGES_RECORD) or {}
