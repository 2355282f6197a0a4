# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Nova's ``hypervisor-show`` computed through libvirt: capacity, usage, the host record, the hardware.

The result is the host dict the scheduler (module_utils/_scheduler.py), claims (_claims.py) and the inventory
plugin consume. Usage counts every domain on the host (DESIGN.md principle 2):

* a managed server by its flavor snapshot (vCPUs and RAM as its definition has them, disk as its flavor has it:
  root + ephemeral + swap rounded up to GiB, as Nova claims it), read from its metadata: one XML read per server,
  no volume lookups;
* any other domain by its actual allocation: its maximum vCPUs, its memory, and the virtual size of its writable
  disks (what they may grow to, the same measure a flavor's disk is), whatever pool or path they live in.

The volumes this collection made on the host (data volumes, shelve-offloaded disks, rescue disks, base images copied
for a migration: _disk_usage) count by capacity too, in ``local_gb_used`` when they are on the instance pool's
filesystem and in their own ``filesystems`` entry otherwise; ``local_disk`` tells servers, volumes and other domains
apart, next to what the filesystem really holds.

Powered-off domains count too, as in Nova: a stopped server keeps its claim so it can always be started again.

Unlike Nova's legacy ``memory_mb_used``, the ``*_used`` figures do not include the reservations: reservations are
taken off the capacity instead (``capacity = (total - reserved) * ratio``, placement's view, see _capacity), which
is what the scheduler and the claims compare against.

A host whose libvirt daemon cannot be reached is reported with ``up: false`` and the reason in ``error``: for an
inventory of many hosts, a host that is down is a fact to schedule around, not a failure.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math
import xml.etree.ElementTree as ET

from ansible_collections.virtfleet.compute.plugins.module_utils import _capacity, _disk_usage, _host_features
from ansible_collections.virtfleet.compute.plugins.module_utils._domain import GIB, Domain
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import HostUnavailableError
from ansible_collections.virtfleet.compute.plugins.module_utils._host_record import (
    RATIO_FIELDS,
    RESERVED_FIELDS,
    read_host_record,
)

INSTANCE_POOL = "virtfleet-instances"
_KIB_PER_MIB = 1024

# Host CPU flags (libvirt's names) that Nova's libvirt driver reports to placement as traits (os-traits names),
# so flavors can require them with trait:HW_CPU_X86_AVX2=required.
CPU_TRAITS = {
    "3dnow": "HW_CPU_X86_3DNOW", "abm": "HW_CPU_X86_ABM", "aes": "HW_CPU_X86_AESNI", "avx": "HW_CPU_X86_AVX",
    "avx2": "HW_CPU_X86_AVX2", "avx512bw": "HW_CPU_X86_AVX512BW", "avx512cd": "HW_CPU_X86_AVX512CD",
    "avx512dq": "HW_CPU_X86_AVX512DQ", "avx512er": "HW_CPU_X86_AVX512ER", "avx512f": "HW_CPU_X86_AVX512F",
    "avx512pf": "HW_CPU_X86_AVX512PF", "avx512vl": "HW_CPU_X86_AVX512VL", "avx512vnni": "HW_CPU_X86_AVX512VNNI",
    "avx512vbmi": "HW_CPU_X86_AVX512VBMI", "avx512ifma": "HW_CPU_X86_AVX512IFMA",
    "avx512vbmi2": "HW_CPU_X86_AVX512VBMI2", "avx512bitalg": "HW_CPU_X86_AVX512BITALG",
    "avx512-vpopcntdq": "HW_CPU_X86_AVX512VPOPCNTDQ", "bmi1": "HW_CPU_X86_BMI", "bmi2": "HW_CPU_X86_BMI2",
    "pclmuldq": "HW_CPU_X86_CLMUL", "f16c": "HW_CPU_X86_F16C", "fma": "HW_CPU_X86_FMA3", "fma4": "HW_CPU_X86_FMA4",
    "mmx": "HW_CPU_X86_MMX", "mpx": "HW_CPU_X86_MPX", "sha-ni": "HW_CPU_X86_SHA", "sse": "HW_CPU_X86_SSE",
    "sse2": "HW_CPU_X86_SSE2", "pni": "HW_CPU_X86_SSE3", "sse4.1": "HW_CPU_X86_SSE41",
    "sse4.2": "HW_CPU_X86_SSE42", "sse4a": "HW_CPU_X86_SSE4A", "ssse3": "HW_CPU_X86_SSSE3",
    "svm": "HW_CPU_X86_SVM", "tbm": "HW_CPU_X86_TBM", "vmx": "HW_CPU_X86_VMX", "xop": "HW_CPU_X86_XOP",
}

# What the scheduler reads from a host dict; a host that is down still has every one of them.
SCHEDULER_KEYS = (
    "name", "up", "enabled", "disabled_reason", "availability_zone", "aggregates", "traits", "vcpus", "vcpus_used",
    "memory_mb", "memory_mb_used", "local_gb", "local_gb_used", "pcpus_used") + RATIO_FIELDS + RESERVED_FIELDS + (
    "servers", "running_vms")


class DomainUsage:
    """What one domain takes from its host, and (for a managed server) who it is."""

    __slots__ = ("name", "uuid", "managed", "active", "vcpus", "memory_mb", "disk_gb", "flavor", "extra", "pcpus",
                 "pinned_cpus", "volumes")

    def __init__(self, name, uuid, managed, active, vcpus, memory_mb, disk_gb, flavor=None, extra=None, pcpus=0,
                 pinned_cpus=(), volumes=None):
        self.name = name
        self.uuid = uuid
        self.managed = managed
        self.active = active
        self.vcpus = vcpus
        self.memory_mb = memory_mb
        self.disk_gb = disk_gb
        self.flavor = flavor  # the flavor snapshot (Flavor) of a managed server
        self.extra = extra or {}
        self.pcpus = pcpus  # host CPUs claimed for hw:cpu_policy=dedicated
        self.pinned_cpus = list(pinned_cpus)  # the host CPUs those are, as pinned in the definition
        self.volumes = dict(volumes or {})  # a managed server's disks by role, as its record lists them

    def resources(self):
        return {"vcpus": self.vcpus, "memory_mb": self.memory_mb, "disk_gb": self.disk_gb, "pcpus": self.pcpus}

    def server_entry(self):
        """A managed server as the host dict lists it (the scheduler reads name and server_group)."""
        entry = {
            "name": self.name,
            "uuid": self.uuid,
            "state": "running" if self.active else "stopped",
            "flavor": self.flavor.name if self.flavor is not None else None,
            "vcpus": self.vcpus,
            "memory_mb": self.memory_mb,
            "disk_gb": self.disk_gb,
            "pcpus": self.pcpus,
            "pinned_cpus": self.pinned_cpus,
        }
        for key in ("server_group", "server_group_policy", "availability_zone", "vm_state"):
            if self.extra.get(key):
                entry[key] = self.extra[key]
        return entry

    def domain_entry(self):
        return {"name": self.name, "uuid": self.uuid, "state": "running" if self.active else "stopped",
                "vcpus": self.vcpus, "memory_mb": self.memory_mb, "disk_gb": self.disk_gb}


def scan_domains(client):
    """The usage of every domain on the host: a list of DomainUsage, managed servers and others alike."""
    active = set(client.domain_uuid(dom) for dom in client.list_active_domains())
    usages = []
    for dom in client.list_domains():
        xml = client.domain_xml_if_exists(dom)
        if xml is None:
            continue  # undefined since it was listed
        usages.append(domain_usage(client, dom, Domain(xml), client.domain_uuid(dom) in active))
    return usages


def domain_usage(client, dom, domain, active):
    if domain.managed:
        snapshot = domain.record.flavor
        flavor = {"vcpus": domain.vcpus, "ram_mb": domain.ram_mb}
        if snapshot is not None:
            flavor.update(disk_gb=snapshot.disk_gb, ephemeral_gb=snapshot.ephemeral_gb, swap_mb=snapshot.swap_mb,
                          extra_specs=snapshot.extra_specs)
            if snapshot.disk_gb == 0:
                # "As large as the image": the root disk's own size is what the server takes, not the 0 of its
                # flavor (a 10 TiB-virtual image makes a 10 TiB disk).
                root = domain.disk_for_role("root")
                size = client.domain_disk_size(dom, root) if root else None
                flavor["disk_gb"] = int(math.ceil((size or 0) / float(GIB)))
        res = _capacity.resources_from_flavor(flavor)
        if domain.record.extra.get("vm_state") == "shelved" and not active:
            # Nova's shelved server: powered off, its disks still on the host, its CPU and RAM claims released
            # (server_action shelve). Unshelving claims them again. Its dedicated CPUs stay its own, so an unshelve
            # never finds its pins taken.
            res["vcpus"] = 0
            res["memory_mb"] = 0
        pinned = domain.pinned_cpus if res["pcpus"] else []
        return DomainUsage(domain.name, domain.uuid, True, active, res["vcpus"], res["memory_mb"], res["disk_gb"],
                           flavor=snapshot, extra=domain.record.extra, pcpus=res["pcpus"], pinned_cpus=pinned,
                           volumes=domain.record.volumes)
    disk_bytes = 0
    for disk in domain.disks:
        # A CD-ROM or a read-only disk never grows; writable disks may fill up to their virtual size.
        if disk["device"] not in (None, "disk") or disk["readonly"] or not disk["target"]:
            continue
        disk_bytes += client.domain_disk_size(dom, disk) or 0
    return DomainUsage(domain.name, domain.uuid, False, active, domain.vcpus, domain.ram_mb,
                       int(math.ceil(disk_bytes / float(GIB))))


def down_host(name, uri, error):
    """The host dict of a host that cannot be reached: the scheduler skips it, an inventory lists it."""
    host = {
        "name": name, "uri": uri, "up": False, "state": "down", "status": "unknown", "error": error,
        # Not known to be disabled: the scheduler reports such a host as down, which is what it is.
        "enabled": True, "disabled_reason": None, "availability_zone": None, "aggregates": {}, "traits": [],
        "servers": [], "unmanaged_domains": [], "running_vms": 0,
    }
    for key in ("vcpus", "vcpus_used", "memory_mb", "memory_mb_used", "local_gb", "local_gb_used", "pcpus_used"):
        host[key] = 0
    host["pinned_cpus"] = []
    host["local_volumes"] = []
    host["filesystems"] = []
    host["local_disk"] = {"servers_gb": 0, "unmanaged_gb": 0, "volumes_gb": 0, "used_gb": 0, "allocation_gb": 0}
    for key in RATIO_FIELDS + RESERVED_FIELDS:
        host[key] = _capacity.DEFAULTS[key]
    return host


def taken_cpus(client, server_name):
    """The host CPUs that dedicated servers other than ``server_name`` are pinned to: a set."""
    return set(cpu for usage in scan_domains(client) if usage.name != server_name for cpu in usage.pinned_cpus)


def numa_cpu_cells(client):
    """The host CPU ids of each NUMA cell, from the capabilities: a list of lists (one list on a UMA host)."""
    return [cell["cpus"] for cell in _numa_cells(client.capabilities()) if cell["cpus"]]


def host_info(client, name=None, instance_pool=INSTANCE_POOL, details=True):
    """The host dict (see the host_info module's RETURN). ``details`` adds hypervisor, CPU and NUMA facts, which
    claims do not need."""
    try:
        hostname = client.hostname()
    except HostUnavailableError as exc:
        return down_host(name or client.uri, client.uri, exc.message)
    record, stored = read_host_record(client)
    node = client.node_info()
    usages = scan_domains(client)
    pool = _pool_figures(client, instance_pool)
    volumes = _disk_usage.local_volumes(client, usages)
    filesystems = _disk_usage.Filesystems(client, instance_pool, pool)
    for volume in volumes:
        volume["filesystem"] = filesystems.index_of(volume["pool"])
    volumes_gb = [sum(v["capacity_gb"] for v in volumes if v["filesystem"] == index)
                  for index in range(len(filesystems.entries))]

    used = _capacity.sum_resources(u.resources() for u in usages)
    servers_gb = sum(u.disk_gb for u in usages if u.managed)
    host = {
        "name": name or hostname,
        "hypervisor_hostname": hostname,
        "uri": client.uri,
        "up": True,
        "state": "up",
        "enabled": bool(record["enabled"]),
        "status": "enabled" if record["enabled"] else "disabled",
        "disabled_reason": record["disabled_reason"],
        "availability_zone": record["availability_zone"],
        "aggregates": record["aggregates"],
        "traits": list(record["traits"]),
        "virt_type": record.get("virt_type"),
        "virt_type_reasons": list(record.get("virt_type_reasons") or []),
        "record_stored": stored,
        "vcpus": int(node[2]),
        "vcpus_used": used["vcpus"],
        "memory_mb": int(node[1]),
        "memory_mb_used": used["memory_mb"],
        "local_gb": pool["capacity_gb"],
        # The instance filesystem holds the servers' disks and, usually, the volumes we made: both are claimed.
        "local_gb_used": used["disk_gb"] + volumes_gb[0],
        "pcpus_used": used["pcpus"],
        "pinned_cpus": sorted(set(cpu for u in usages for cpu in u.pinned_cpus)),
        "disk_available_least": pool["available_gb"],
        "instance_pool": pool,
        "running_vms": sum(1 for u in usages if u.active),
        "servers": sorted((u.server_entry() for u in usages if u.managed), key=lambda s: s["name"]),
        "unmanaged_domains": sorted((u.domain_entry() for u in usages if not u.managed), key=lambda d: d["name"]),
    }
    for key in RATIO_FIELDS + RESERVED_FIELDS:
        host[key] = record[key]
    host["free_ram_mb"] = host["memory_mb"] - host["memory_mb_used"]
    host["free_disk_gb"] = host["local_gb"] - host["local_gb_used"]
    host["capacity"] = _capacity.capacity(host)
    ratio = host["capacity"]["disk_gb"]["allocation_ratio"]
    host["filesystems"] = [
        _disk_usage.filesystem_figures(entry, volumes_gb[index], ratio,
                                       host["capacity"]["disk_gb"] if entry["instance"] else None)
        for index, entry in enumerate(filesystems.entries)]
    host["local_disk"] = {
        "servers_gb": servers_gb,
        "unmanaged_gb": used["disk_gb"] - servers_gb,
        "volumes_gb": volumes_gb[0],
        "used_gb": host["local_gb_used"],
        "allocation_gb": pool["allocation_gb"],
    }
    host["local_volumes"] = sorted(volumes, key=lambda v: (v["pool"], v["name"]))
    if details:
        host.update(_hypervisor_details(client))
        host["features"] = _host_features.features(client, host["numa_cells"])
        # Nova reports the CPU's traits next to the operator's: a flavor can require either kind.
        host["traits"] = sorted(set(host["traits"]) | set(host["cpu"]["traits"]))
    return host


def _pool_figures(client, pool_name):
    """The instance pool's real space; every figure 0 when the pool is missing (no disk can be claimed then)."""
    figures = {"name": pool_name, "found": False, "capacity": 0, "allocation": 0, "available": 0,
               "capacity_gb": 0, "allocation_gb": 0, "available_gb": 0}
    pool = client.find_pool(pool_name)
    if pool is None or not client.pool_active(pool):
        return figures
    info = client.pool_info(pool)
    figures.update(found=True, capacity=info["capacity"], allocation=info["allocation"],
                   available=info["available"])
    # Whole GiB, rounded down: a claim must never count on a partial GiB the filesystem does not have.
    for key in ("capacity", "allocation", "available"):
        figures[key + "_gb"] = int(info[key] // GIB)
    return figures


def _hypervisor_details(client):
    versions = client.versions()
    caps = client.capabilities()
    cpu = caps.find("host/cpu")
    return {
        "host_uuid": caps.findtext("host/uuid"),
        "hypervisor_type": versions["hypervisor_type"],
        "hypervisor_version": versions["hypervisor"],
        "libvirt_version": versions["libvirt"],
        "cpu": _cpu_facts(client, cpu),
        "numa_cells": _numa_cells(caps),
    }


def host_features(client):
    """What the host can do for extra specs (huge pages, NIC shaping): see _host_features.features."""
    return _host_features.features(client, _numa_cells(client.capabilities()))


def _cpu_facts(client, cpu):
    if cpu is None:
        return {"arch": None, "model": None, "vendor": None, "topology": {}, "flags": [], "traits": []}
    topology = cpu.find("topology")
    # The capabilities list only the features beyond the named model; the model's own (sse2, avx2...) come from
    # libvirt's CPU map. Without the expansion a Haswell host would seem to lack AVX2.
    flags = client.expanded_cpu_features(ET.tostring(cpu, encoding="unicode"))
    if flags is None:
        flags = sorted(f.get("name") for f in cpu.findall("feature"))
    return {
        "arch": cpu.findtext("arch"),
        "model": cpu.findtext("model"),
        "vendor": cpu.findtext("vendor"),
        "topology": dict((k, int(v)) for k, v in (topology.attrib.items() if topology is not None else ())),
        "flags": flags,
        "traits": sorted(set(CPU_TRAITS[f] for f in flags if f in CPU_TRAITS)),
    }


def _numa_cells(caps):
    cells = []
    for cell in caps.findall("host/topology/cells/cell"):
        memory = cell.find("memory")
        kib = int(memory.text) if memory is not None and memory.text else 0
        if memory is not None and (memory.get("unit") or "KiB") != "KiB":
            kib = 0  # libvirt always writes KiB; anything else is not a figure we can trust
        cells.append({
            "id": int(cell.get("id", "0")),
            "memory_mb": kib // _KIB_PER_MIB,
            "cpus": [int(c.get("id")) for c in cell.findall("cpus/cpu")],
            "pages": [{"size_kb": int(p.get("size")), "count": int(p.text or 0)} for p in cell.findall("pages")],
        })
    return cells
