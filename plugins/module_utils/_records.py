# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small JSON documents kept on the host itself, as volumes of a dedicated libvirt storage pool.

The host record and the flavor catalog live here (DESIGN.md principle 2), read and written through libvirt's volume
streams so a controller reaches them over any URI, with no file access on the host and no database.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import xml.etree.ElementTree as ET

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import LibvirtOperationError, NotFoundError

RECORDS_POOL = "virtfleet-records"
RECORDS_PATH = "/var/lib/libvirt/virtfleet/records"
# A volume's capacity is fixed when it is created; documents grow by whole blocks of this size.
_BLOCK = 4096


class RecordStore:
    """JSON documents by key in one libvirt pool; a missing pool reads as "no documents"."""

    def __init__(self, client, pool_name=RECORDS_POOL):
        self.client = client
        self.pool_name = pool_name
        self._pool = None

    def _find_pool(self):
        if self._pool is None:
            pool = self.client.find_pool(self.pool_name)
            if pool is not None and self.client.pool_active(pool):
                self._pool = pool
        return self._pool

    def exists(self):
        return self._find_pool() is not None

    def ensure_pool(self, path=RECORDS_PATH):
        """Create, build, start and autostart the records pool if it is missing. Returns True if it changed."""
        if self._find_pool() is not None:
            return False
        pool = self.client.find_pool(self.pool_name)
        if pool is None:
            root = ET.Element("pool", {"type": "dir"})
            ET.SubElement(root, "name").text = self.pool_name
            target = ET.SubElement(root, "target")
            ET.SubElement(target, "path").text = path
            pool = self.client.define_pool(ET.tostring(root, encoding="unicode"))
            self.client.build_pool(pool)
        if not self.client.pool_active(pool):
            self.client.start_pool(pool)
        self.client.set_pool_autostart(pool, True)
        self._pool = pool
        return True

    def read(self, key):
        """The document stored under ``key``, or None."""
        pool = self._find_pool()
        if pool is None:
            return None
        vol = self.client.lookup_volume(pool, _volume(key))
        if vol is None:
            return None
        raw = self.client.download_bytes(vol)
        # Documents are padded with spaces up to the volume's capacity: JSON ignores trailing whitespace.
        text = raw.rstrip(b" \n\x00").decode("utf-8")
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise LibvirtOperationError("record %s in pool %s is not valid JSON: %s" % (key, self.pool_name, exc))

    def write(self, key, document):
        pool = self._find_pool()
        if pool is None:
            raise NotFoundError(
                "storage pool '%s' for host records does not exist on %s" % (self.pool_name, self.client.uri)
            )
        data = (json.dumps(document, sort_keys=True, indent=1) + "\n").encode("utf-8")
        size = ((len(data) // _BLOCK) + 1) * _BLOCK
        vol = self.client.lookup_volume(pool, _volume(key))
        if vol is None:
            root = ET.Element("volume")
            ET.SubElement(root, "name").text = _volume(key)
            ET.SubElement(root, "capacity", {"unit": "bytes"}).text = str(size)
            target = ET.SubElement(root, "target")
            ET.SubElement(target, "format", {"type": "raw"})
            vol = self.client.create_volume(pool, ET.tostring(root, encoding="unicode"))
        else:
            capacity = self.client.volume_info(vol)["capacity"]
            if capacity < size:
                self.client.resize_volume(vol, size)
            size = max(size, capacity)
        self.client.upload_bytes(vol, data + b" " * (size - len(data)))

    def delete(self, key):
        pool = self._find_pool()
        if pool is None:
            return False
        vol = self.client.lookup_volume(pool, _volume(key))
        if vol is None:
            return False
        self.client.delete_volume(vol)
        return True


def _volume(key):
    return "%s.json" % key
