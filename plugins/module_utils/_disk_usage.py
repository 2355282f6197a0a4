# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The disk this collection takes on a host besides its servers' flavors, and which filesystem each piece is on.

Nova keeps volumes on Cinder's storage and saved images in Glance, so its compute host claims only flavor disks.
Here data volumes, the disks a shelve offload saves, rescue disks and the base images copied to a host for a
migration all live on the host itself, usually on the same filesystem as the servers' disks. Each counts by its
capacity (what a sparse file may grow to: the same measure as a flavor's disk, rounded up to whole GiB as Nova
rounds swap), so a host whose disk is fully claimed can never have its sparse files fill the filesystem.

Filesystems: a pool whose storage is another filesystem than the instance pool's has a capacity of its own. libvirt
gives no device id for a pool, and ``os.stat`` of the pool paths works only on the host itself (not over
``qemu+ssh://``, nor from another mount namespace), so pools are told apart by what libvirt does report: the
pool's capacity in bytes, which for a directory pool is the size of the filesystem under it (statvfs). Two pools on
one filesystem always report the same capacity. Two filesystems of exactly the same size would be taken for one:
that errs on the safe side (their volumes are claimed against one capacity, never counted twice as free).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import LibvirtOperationError
from ansible_collections.virtfleet.compute.plugins.module_utils._records import RecordStore

GIB = 1024 ** 3
# Where the records of what this collection made live (keys of the records pool); the modules that write them
# import these names from here, so the accounting cannot miss a renamed kind.
VOLUME_RECORD_PREFIX = "volume@"
OFFLOAD_RECORD_PREFIX = "shelved-"
IMAGES_RECORD = "images"
IMAGE_COPY_SOURCE = "copied from "

# What each kind is, for host_info's ``local_volumes``.
KINDS = ("volume", "shelved", "rescue", "image_copy")


def ceil_gb(size_bytes):
    """Bytes to whole GiB, rounded up: a partial GiB of a volume takes a GiB of the claim."""
    return int(math.ceil(size_bytes / float(GIB)))


def _read(store, key):
    try:
        return store.read(key)
    except LibvirtOperationError:
        return None  # deleted while read, or not JSON: not something this collection can account for


def _refs(client, usages):
    """``(kind, owner, pool, name)`` of every volume this collection made outside a server's flavor disks."""
    store = RecordStore(client)
    records = client.find_pool(store.pool_name)
    keys = []
    if records is not None and records.isActive():
        keys = sorted(v.name()[:-len(".json")] for v in client.list_volumes(records) if v.name().endswith(".json"))
    refs = []
    for key in keys:
        if key.startswith(VOLUME_RECORD_PREFIX):
            record = _read(store, key) or {}
            if record.get("pool") and record.get("name"):
                refs.append(("volume", record["name"], record["pool"], record["name"]))
                rotation = record.get("rotation") or {}
                if rotation.get("tmp"):
                    # A passphrase rotation's copy holds the same data again until the rotation finishes.
                    refs.append(("volume", record["name"], record["pool"], rotation["tmp"]))
        elif key.startswith(OFFLOAD_RECORD_PREFIX):
            document = _read(store, key) or {}
            for _role, ref in sorted((document.get("saved") or {}).items()):
                refs.append(("shelved", document.get("name"), ref["pool"], ref["name"]))
    catalog = _read(store, IMAGES_RECORD) if IMAGES_RECORD in keys else None
    for key, entry in sorted((catalog or {}).items()):
        # Images the operator imported are the operator's to plan for (Glance's cache in Nova, not claimed); a copy
        # a migration brought along was asked for by nobody, so it is claimed like any other disk we made.
        if "/" in key and str((entry or {}).get("source") or "").startswith(IMAGE_COPY_SOURCE):
            pool_name, name = key.split("/", 1)
            refs.append(("image_copy", None, pool_name, name))
    for usage in usages:
        rescue = usage.volumes.get("rescue") if usage.managed else None
        if rescue:
            refs.append(("rescue", usage.name, rescue["pool"], rescue["name"]))
    return refs


def local_volumes(client, usages):
    """The volumes of ``_refs`` that exist: dicts of kind, owner, pool, name, capacity, allocation (bytes) and
    capacity_gb (what the claim counts)."""
    pools = {}
    seen = set()
    out = []
    for kind, owner, pool_name, name in _refs(client, usages):
        if (pool_name, name) in seen:
            continue
        seen.add((pool_name, name))
        if pool_name not in pools:
            pool = client.find_pool(pool_name)
            pools[pool_name] = pool if pool is not None and pool.isActive() else None
        pool = pools[pool_name]
        vol = client.lookup_volume(pool, name) if pool is not None else None
        if vol is None:
            continue
        try:
            info = client.volume_info(vol)
        except LibvirtOperationError:
            continue  # deleted since it was looked up
        out.append({"kind": kind, "owner": owner, "pool": pool_name, "name": name, "capacity": info["capacity"],
                    "allocation": info["allocation"], "capacity_gb": ceil_gb(info["capacity"])})
    return out


class Filesystems:
    """Pools grouped by the filesystem they are on (see the module docstring); index 0 is the instance pool's."""

    def __init__(self, client, instance_pool, instance_figures):
        self.client = client
        self.entries = [{"instance": True, "pools": [instance_pool], "capacity_bytes": instance_figures["capacity"],
                         "allocation_gb": instance_figures["allocation_gb"]}]
        self._index = {instance_pool: 0}

    def index_of(self, pool_name):
        """The filesystem index of ``pool_name``, adding a filesystem when it is on none seen yet; None when the
        pool is missing or inactive."""
        if pool_name in self._index:
            return self._index[pool_name]
        pool = self.client.find_pool(pool_name)
        if pool is None or not pool.isActive():
            return None
        info = self.client.pool_info(pool)
        same = [i for i, entry in enumerate(self.entries)
                if entry["capacity_bytes"] and entry["capacity_bytes"] == info["capacity"]]
        if same:
            index = same[0]
            self.entries[index]["pools"].append(pool_name)
        else:
            index = len(self.entries)
            self.entries.append({"instance": False, "pools": [pool_name], "capacity_bytes": info["capacity"],
                                 "allocation_gb": int(info["allocation"] // GIB)})
        self._index[pool_name] = index
        return index


def filesystem_figures(entry, volumes_gb, ratio, instance_capacity=None):
    """A filesystem's claim figures. The instance filesystem's are the host's disk_gb capacity (reservation and
    ratio of the host record); another filesystem's are its whole size at the disk allocation ratio: the host's
    reserved_host_disk_mb is the room kept on the instance filesystem (Nova's instances_path), not on every disk."""
    if instance_capacity is not None:
        total, reserved, capacity, used = (instance_capacity["total"], instance_capacity["reserved"],
                                           instance_capacity["capacity"], instance_capacity["used"])
    else:
        total = int(entry["capacity_bytes"] // GIB)
        reserved = 0
        capacity = total * ratio
        used = volumes_gb
    return {
        "instance": entry["instance"],
        "pools": sorted(entry["pools"]),
        "capacity_bytes": entry["capacity_bytes"],
        "total_gb": total,
        "reserved_gb": reserved,
        "allocation_ratio": ratio,
        "capacity_gb": capacity,
        "used_gb": used,
        "volumes_gb": volumes_gb,
        "free_gb": capacity - used,
        "allocation_gb": entry["allocation_gb"],
    }
