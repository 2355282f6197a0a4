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
import os
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET

from ansible_collections.virtfleet.compute.plugins.module_utils._disk_usage import IMAGES_RECORD
from ansible_collections.virtfleet.compute.plugins.module_utils._domain import Domain
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import (
    ConflictError,
    NotFoundError,
    ValidationError,
    VirtfleetError,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._image_inspect import Inspector, inspect_file
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
            if self.src and not os.path.isfile(self.src):
                raise NotFoundError("no such file where the module runs: %s" % self.src, field="src")


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

    def cleanup(self):
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
                plan.add("forget image %s/%s in the image records" % (req.pool, req.name),
                         lambda: self._write_record(None))
            plan.after = {}
            return plan

        # Recognise an unchanged image by its checksum, without reading it, whenever a checksum is declared.
        if record is not None and req.checksum is not None:
            if record.get(req.checksum[0]) == req.checksum[1]:
                plan.after = plan.before
                return plan
        if req.url and check_mode:
            plan.warnings.append("check mode does not download %s: it cannot tell whether the image is safe; the real "
                                 "run inspects it before importing" % req.url)
            plan.add("download %s, verify its %s and inspect it" % (req.url, req.checksum[0]), lambda: None)
            self._plan_import(plan, pool, vol, None)
            return plan

        path = self._fetch() if req.url else req.src
        report = self.report or inspect_file(path, declared_format=req.disk_format, field="src" if req.src else "url",
                                             hash_algorithms=(req.checksum[0],) if req.checksum else ("sha256",))
        self.report = report
        if req.checksum is not None and report.digests[req.checksum[0]] != req.checksum[1]:
            raise ValidationError("the image's %s is %s, not the declared %s; nothing was imported"
                                  % (req.checksum[0], report.digests[req.checksum[0]], req.checksum[1]),
                                  field="checksum")
        if record is not None and record.get("sha256") == report.sha256:
            plan.after = plan.before
            return plan
        self._plan_import(plan, pool, vol, path)
        return plan

    def _plan_import(self, plan, pool, vol, path):
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
            holder["vol"] = client.create_volume(pool, _volume_xml(req.name, os.path.getsize(path), fmt))

        def delete_created():
            created = holder.get("vol") or client.lookup_volume(pool, req.name)
            if created is not None:
                client.delete_volume(created)

        plan.add("create volume %s/%s (%s)" % (req.pool, req.name, fmt), create, undo=delete_created)
        plan.add("upload %s to %s/%s" % (req.src or req.url, req.pool, req.name),
                 lambda: client.upload_file(holder["vol"], path))
        plan.add("record image %s/%s" % (req.pool, req.name), lambda: self._write_record(self._new_record()))
        plan.after = _view(self._new_record()) if report else {"name": req.name, "pool": req.pool}

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
        try:
            response = open_url(req.url, validate_certs=req.validate_certs, timeout=req.timeout)
            with open(path, "wb") as out:
                while True:
                    chunk = response.read(_DOWNLOAD_CHUNK)
                    if not chunk:
                        break
                    inspector.feed(chunk)
                    out.write(chunk)
        except VirtfleetError:
            raise
        except Exception as exc:  # pylint: disable=broad-except
            raise VirtfleetError("cannot download %s: %s" % (req.url, exc), field="url")
        self.report = inspector.finish()
        return path


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
