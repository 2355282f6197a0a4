# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Flavor extra specs rendered into a domain definition, the way Nova's libvirt driver renders them.

``apply_extra_specs()`` edits a parsed ``<domain>`` element in place. It owns exactly these parts of a managed
server's definition and nothing else:

=====================================  ==================================================================
extra spec                             domain XML
=====================================  ==================================================================
``quota:cpu_shares/period/quota``      ``<cputune><shares>``, ``<period>``, ``<quota>``
``hw:cpu_policy=dedicated``            ``<cputune><vcpupin>`` for every vCPU and ``<emulatorpin>``
``hw:mem_page_size``                   ``<memoryBacking><hugepages>`` (with a ``<page>`` for a given size)
``hw:watchdog_action``                 ``<watchdog model='i6300esb' action=...>``
``quota:disk_*``                       ``<iotune>`` of every disk whose serial is root, ephemeral0 or swap0
``quota:vif_*``                        ``<bandwidth>`` of every ``<interface>``
=====================================  ==================================================================

Rendering is idempotent: an element that exists is changed in place (libvirt's addresses and the order libvirt
writes elements in are kept), so applying the same flavor to libvirt's own XML changes nothing. Removing a spec
removes what it rendered, and a container (``cputune``, ``memoryBacking``, ``iotune``, ``bandwidth``) left empty
is removed too. New elements are inserted where libvirt itself writes them, so a definition libvirt reads back
compares equal to the one rendered.

Pinning (``hw:cpu_policy=dedicated``): each vCPU of a server gets a host CPU of its own, one that no other dedicated
server on the host is pinned to (``taken_cpus``). A server that is already pinned keeps every pin that is still
free, so a second run is unchanged and a resize moves as few vCPUs as possible; the others are taken in turn from
a start that comes from a hash of the server's name, so servers spread over the host's CPUs instead of all starting
at CPU 0. On a host with several NUMA cells the new pins come from one cell when one has room (see ``pinning``).
The emulator threads are pinned to the same CPUs, as Nova does by default. When too few CPUs are free the render
fails with the numbers; the claim (``pcpus`` in _capacity) normally refuses such a server earlier.
Servers without a dedicated policy are not pinned and may float over every host CPU, as they do in Nova when no
``cpu_shared_set`` is configured: keep pinned and floating servers on different hosts (aggregates) when that matters.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import xml.etree.ElementTree as ET

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import CapacityError, ValidationError
from ansible_collections.virtfleet.compute.plugins.module_utils._flavor import (
    DISK_QUOTA_KEYS,
    page_size_kib,
)

# The disks whose I/O the flavor limits: the server's own disks, found by the serial _domain gives them. The config
# drive is read once at boot and is left unlimited.
THROTTLED_SERIALS = ("root", "ephemeral0", "swap0")
WATCHDOG_MODEL = "i6300esb"

# The order libvirt writes elements in (virDomainDefFormat and friends, libvirt 9). Only the relative order of the
# tags listed matters; others are left where they are.
_DOMAIN_ORDER = (
    "name", "uuid", "genid", "title", "description", "metadata", "maxMemory", "memory", "currentMemory",
    "blkiotune", "memtune", "memoryBacking", "vcpu", "vcpus", "iothreads", "iothreadids", "defaultiothread",
    "cputune", "numatune", "resource", "sysinfo", "bootloader", "bootloader_args", "os", "idmap", "features", "cpu",
    "clock", "on_poweroff", "on_reboot", "on_crash", "pm", "perf", "devices",
)
_CPUTUNE_ORDER = (
    "shares", "global_period", "global_quota", "period", "quota", "emulator_period", "emulator_quota",
    "iothread_period", "iothread_quota", "vcpupin", "emulatorpin", "iothreadpin", "vcpusched", "iothreadsched",
    "emulatorsched", "cachetune", "memorytune",
)
_MEMORY_BACKING_ORDER = ("hugepages", "nosharepages", "locked", "source", "access", "allocation", "discard")
_DISK_ORDER = (
    "driver", "auth", "source", "backingStore", "backenddomain", "target", "iotune", "blockio", "geometry",
    "readonly", "shareable", "transient", "serial", "wwn", "vendor", "product", "encryption", "boot", "alias",
    "address",
)
_IOTUNE_ORDER = tuple(key[len("quota:disk_"):] for key in (
    "quota:disk_total_bytes_sec", "quota:disk_read_bytes_sec", "quota:disk_write_bytes_sec",
    "quota:disk_total_iops_sec", "quota:disk_read_iops_sec", "quota:disk_write_iops_sec",
)) + ("total_bytes_sec_max", "read_bytes_sec_max", "write_bytes_sec_max", "total_iops_sec_max",
      "read_iops_sec_max", "write_iops_sec_max", "size_iops_sec", "group_name")
_INTERFACE_ORDER = (
    "mac", "source", "vlan", "virtualport", "bandwidth", "portForward", "ip", "route", "script", "downscript",
    "backenddomain", "target", "guest", "model", "driver", "backend", "filterref", "tune", "teaming", "link", "mtu",
    "coalesce", "rom", "alias", "address", "acpi", "boot",
)
_BANDWIDTH_ORDER = ("inbound", "outbound")
# Devices libvirt writes after the watchdog; a new watchdog goes before the first of them.
_AFTER_WATCHDOG = ("memballoon", "rng", "tpm", "shmem", "memory", "iommu", "vsock", "crypto", "panic")
_VIF_ATTRIBUTES = ("average", "peak", "burst")


def apply_extra_specs(domain_root, flavor, host_cpus=None, taken_cpus=(), cells=None):
    """Render ``flavor.extra_specs`` into ``domain_root`` (an ElementTree ``<domain>``), in place.

    ``host_cpus`` is the host's number of CPUs (``client.node_info()[2]``), ``taken_cpus`` the host CPUs other
    dedicated servers are pinned to and ``cells`` the CPU ids of each NUMA cell; they matter only when the flavor
    asks for ``hw:cpu_policy=dedicated``.
    Raises ValidationError when the flavor cannot be rendered on this host (more dedicated vCPUs than host CPUs) and
    CapacityError when too few host CPUs are free of other dedicated servers.
    """
    specs = flavor.extra_specs or {}
    _apply_cputune(domain_root, specs, flavor.vcpus, host_cpus, taken_cpus, cells)
    _apply_memory_backing(domain_root, specs)
    devices = domain_root.find("devices")
    if devices is None:
        devices = _insert_in_order(domain_root, ET.Element("devices"), _DOMAIN_ORDER)
    _apply_watchdog(devices, specs)
    _apply_iotune(devices, specs)
    _apply_bandwidth(devices, specs)
    return domain_root


def apply_pinning(domain_root, flavor, host_cpus=None, taken_cpus=(), cells=None):
    """Pin a dedicated flavor's vCPUs again, for another host (a move): only ``<cputune>`` is rendered."""
    _apply_cputune(domain_root, flavor.extra_specs or {}, flavor.vcpus, host_cpus, taken_cpus, cells)
    return domain_root


def pinning(server_name, vcpus, host_cpus, taken_cpus=(), current=(), cells=None):
    """The host CPU of each vCPU for hw:cpu_policy=dedicated: a list, index = vCPU number.

    ``current`` is the server's pinning now (host CPU per vCPU, None where a vCPU is not pinned to exactly one CPU):
    every pin that is on the host and not in ``taken_cpus`` is kept. The other vCPUs take free CPUs in turn from a
    start derived from the server's name. With the host's NUMA ``cells`` (lists of CPU ids), the CPUs come from one
    cell when one has enough free (the cell of the kept pins first, else the first such cell from the start), so a
    server's vCPUs share their caches and local memory; only a server that fits in no single cell spans cells (Nova
    would refuse it a host without a NUMA topology of its own in the flavor). CapacityError when fewer than
    ``vcpus`` host CPUs are free.
    """
    taken = set(taken_cpus)
    pins = [None] * vcpus
    used = set()
    for index, cpu in enumerate(list(current)[:vcpus]):
        if cpu is not None and 0 <= cpu < host_cpus and cpu not in taken and cpu not in used:
            pins[index] = cpu
            used.add(cpu)
    digest = hashlib.sha256((server_name or "").encode("utf-8")).digest()
    start = int.from_bytes(digest[:4], "big") % host_cpus
    free = [cpu for cpu in ((start + offset) % host_cpus for offset in range(host_cpus))
            if cpu not in taken and cpu not in used]
    missing = [index for index, cpu in enumerate(pins) if cpu is None]
    if len(missing) > len(free):
        raise CapacityError(
            "hw:cpu_policy=dedicated: %d vCPUs need a host CPU each that no other dedicated server is pinned to; the "
            "host has %d CPUs and other dedicated servers are pinned to %d of them (%s)"
            % (vcpus, host_cpus, len(taken & set(range(host_cpus))), format_cpuset(taken) or "none"),
            field="flavor.extra_specs.hw:cpu_policy")
    if missing and cells and len(cells) > 1:
        free = _one_cell_first(free, len(missing), used, cells)
    for index, cpu in zip(missing, free):
        pins[index] = cpu
    return pins


def _one_cell_first(free, count, used, cells):
    """``free`` (CPUs in the server's turn order) with the ``count`` CPUs to take moved to the front: all from one
    NUMA cell if a cell has that many free, preferring the cell that holds most of the server's kept pins."""
    cell_of = dict((cpu, index) for index, cell in enumerate(cells) for cpu in cell)
    free_in = {}
    for cpu in free:
        free_in.setdefault(cell_of.get(cpu), []).append(cpu)
    kept = {}
    for cpu in used:
        kept[cell_of.get(cpu)] = kept.get(cell_of.get(cpu), 0) + 1
    # Candidate cells in the order their first free CPU comes in the server's turn (stable, name-derived).
    order = []
    for cpu in free:
        cell = cell_of.get(cpu)
        if cell not in order:
            order.append(cell)
    fitting = [cell for cell in order if cell is not None and len(free_in[cell]) >= count]
    if not fitting:
        return free
    best = max(fitting, key=lambda cell: (kept.get(cell, 0), -order.index(cell)))
    chosen = free_in[best][:count]
    return chosen + [cpu for cpu in free if cpu not in chosen]


def parse_cpuset(text):
    """The CPUs of a libvirt cpuset (``0-3,^2,6``) as a set of ints; ValueError for text that is not one."""
    cpus = set()
    excluded = set()
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        target = cpus
        if part.startswith("^"):
            target, part = excluded, part[1:]
        if "-" in part:
            low, high = part.split("-", 1)
            target.update(range(int(low), int(high) + 1))
        else:
            target.add(int(part))
    return cpus - excluded


def current_pins(domain_root):
    """A domain's pinning: host CPU per vCPU (None for a vCPU not pinned to exactly one CPU), index = vCPU."""
    pins = {}
    for pin in domain_root.findall("cputune/vcpupin"):
        try:
            vcpu = int(pin.get("vcpu"))
            cpus = parse_cpuset(pin.get("cpuset"))
        except (TypeError, ValueError):
            continue
        pins[vcpu] = cpus.pop() if len(cpus) == 1 else None
    if not pins:
        return []
    return [pins.get(index) for index in range(max(pins) + 1)]


def format_cpuset(cpus):
    """A CPU list in libvirt's own notation (``0-3,6``): libvirt rewrites any other spelling to this one."""
    cpus = sorted(set(cpus))
    parts = []
    index = 0
    while index < len(cpus):
        end = index
        while end + 1 < len(cpus) and cpus[end + 1] == cpus[end] + 1:
            end += 1
        parts.append(str(cpus[index]) if end == index else "%d-%d" % (cpus[index], cpus[end]))
        index = end + 1
    return ",".join(parts)


# -- cputune ---------------------------------------------------------------------------------------------------------

def _apply_cputune(root, specs, vcpus, host_cpus, taken_cpus=(), cells=None):
    wanted = {}
    for tag in ("shares", "period", "quota"):
        value = specs.get("quota:cpu_%s" % tag)
        if value is not None:
            wanted[tag] = str(int(value.strip()))
    pins = None
    if specs.get("hw:cpu_policy") == "dedicated":
        field = "flavor.extra_specs.hw:cpu_policy"
        if not host_cpus:
            raise ValidationError("dedicated CPUs need the host's CPU count to pin vCPUs", field=field)
        if vcpus > host_cpus:
            raise ValidationError("dedicated: %d vCPUs cannot be pinned to distinct CPUs of a host with %d CPUs"
                                  % (vcpus, host_cpus), field=field)
        pins = pinning(root.findtext("name"), vcpus, host_cpus, taken_cpus, current_pins(root), cells)

    cputune = root.find("cputune")
    if cputune is None:
        if not wanted and pins is None:
            return
        cputune = _insert_in_order(root, ET.Element("cputune"), _DOMAIN_ORDER)
    for tag in ("shares", "period", "quota"):
        elem = cputune.find(tag)
        if tag not in wanted:
            if elem is not None:
                cputune.remove(elem)
            continue
        if elem is None:
            elem = _insert_in_order(cputune, ET.Element(tag), _CPUTUNE_ORDER)
        elem.text = wanted[tag]

    existing = dict((pin.get("vcpu"), pin) for pin in cputune.findall("vcpupin"))
    wanted_pins = dict((str(vcpu), str(cpu)) for vcpu, cpu in enumerate(pins or []))
    for vcpu, pin in existing.items():
        if vcpu not in wanted_pins:
            cputune.remove(pin)
    for vcpu in sorted(wanted_pins, key=int):
        pin = existing.get(vcpu)
        if pin is None:
            pin = _insert_vcpupin(cputune, vcpu)
        pin.set("cpuset", wanted_pins[vcpu])
    emulator = cputune.find("emulatorpin")
    if pins is None:
        if emulator is not None:
            cputune.remove(emulator)
    else:
        if emulator is None:
            emulator = _insert_in_order(cputune, ET.Element("emulatorpin"), _CPUTUNE_ORDER)
        emulator.set("cpuset", format_cpuset(pins))
    _drop_if_empty(root, cputune)


def _insert_vcpupin(cputune, vcpu):
    """A new <vcpupin> after the pins of lower vCPUs: libvirt lists them by vCPU number."""
    pin = ET.Element("vcpupin", {"vcpu": vcpu})
    pins = cputune.findall("vcpupin")
    lower = [p for p in pins if int(p.get("vcpu", "0")) < int(vcpu)]
    if lower:
        cputune.insert(list(cputune).index(lower[-1]) + 1, pin)
    elif pins:
        cputune.insert(list(cputune).index(pins[0]), pin)
    else:
        _insert_in_order(cputune, pin, _CPUTUNE_ORDER)
    return pin


# -- memoryBacking ----------------------------------------------------------------------------------------------------

def _apply_memory_backing(root, specs):
    value = specs.get("hw:mem_page_size")
    # "small" is the default; "any" lets Nova's driver pick huge pages if the host has them free, a choice libvirt
    # cannot make at start time (a guest asking for huge pages the host lacks fails to start), so it renders as small.
    large = value is not None and value not in ("small", "any")
    backing = root.find("memoryBacking")
    if backing is None:
        if not large:
            return
        backing = _insert_in_order(root, ET.Element("memoryBacking"), _DOMAIN_ORDER)
    hugepages = backing.find("hugepages")
    if not large:
        if hugepages is not None:
            backing.remove(hugepages)
        _drop_if_empty(root, backing)
        return
    if hugepages is None:
        hugepages = _insert_in_order(backing, ET.Element("hugepages"), _MEMORY_BACKING_ORDER)
    size = page_size_kib(value)
    pages = hugepages.findall("page")
    if size is None:  # "large": the host's default huge page size, which is what an empty <hugepages/> means
        for page in pages:
            hugepages.remove(page)
        return
    keep = pages[0] if pages else ET.SubElement(hugepages, "page")
    for page in pages[1:]:
        hugepages.remove(page)
    keep.attrib.clear()
    keep.set("size", str(size))
    keep.set("unit", "KiB")


# -- devices ----------------------------------------------------------------------------------------------------------

def _apply_watchdog(devices, specs):
    action = specs.get("hw:watchdog_action")
    ours = [w for w in devices.findall("watchdog") if w.get("model") == WATCHDOG_MODEL]
    if action is None or action == "disabled":
        for watchdog in ours:
            devices.remove(watchdog)
        return
    if ours:
        watchdog = ours[0]
        for extra in ours[1:]:
            devices.remove(extra)
    else:
        watchdog = ET.Element("watchdog", {"model": WATCHDOG_MODEL})
        _insert_before_first(devices, watchdog, _AFTER_WATCHDOG)
    watchdog.set("action", action)


def _apply_iotune(devices, specs):
    wanted = {}
    for key in DISK_QUOTA_KEYS:
        if key in specs:
            wanted[key[len("quota:disk_"):]] = str(int(specs[key].strip()))
    ours = set(key[len("quota:disk_"):] for key in DISK_QUOTA_KEYS)
    for disk in devices.findall("disk"):
        if (disk.findtext("serial") or "").strip() not in THROTTLED_SERIALS:
            continue
        iotune = disk.find("iotune")
        if iotune is None:
            if not wanted:
                continue
            iotune = _insert_in_order(disk, ET.Element("iotune"), _DISK_ORDER)
        for tag in ours:
            elem = iotune.find(tag)
            if tag not in wanted:
                if elem is not None:
                    iotune.remove(elem)
                continue
            if elem is None:
                elem = _insert_in_order(iotune, ET.Element(tag), _IOTUNE_ORDER)
            elem.text = wanted[tag]
        _drop_if_empty(disk, iotune)


def _apply_bandwidth(devices, specs):
    wanted = {}
    for direction in ("inbound", "outbound"):
        attrs = {}
        for attr in _VIF_ATTRIBUTES:
            value = specs.get("quota:vif_%s_%s" % (direction, attr))
            if value is not None:
                attrs[attr] = str(int(value.strip()))
        if attrs:
            wanted[direction] = attrs
    for iface in devices.findall("interface"):
        bandwidth = iface.find("bandwidth")
        if bandwidth is None:
            if not wanted:
                continue
            bandwidth = _insert_in_order(iface, ET.Element("bandwidth"), _INTERFACE_ORDER)
        for direction in ("inbound", "outbound"):
            elem = bandwidth.find(direction)
            attrs = wanted.get(direction)
            if attrs is None:
                if elem is not None:
                    # An operator's guaranteed minimum (floor) is not ours to remove; our rates are.
                    for attr in _VIF_ATTRIBUTES:
                        elem.attrib.pop(attr, None)
                    if not elem.attrib:
                        bandwidth.remove(elem)
                continue
            if elem is None:
                elem = _insert_in_order(bandwidth, ET.Element(direction), _BANDWIDTH_ORDER)
            for attr in _VIF_ATTRIBUTES:
                if attr in attrs:
                    elem.set(attr, attrs[attr])
                else:
                    elem.attrib.pop(attr, None)
        _drop_if_empty(iface, bandwidth)


# -- helpers ----------------------------------------------------------------------------------------------------------

def _insert_in_order(parent, elem, order):
    """Insert ``elem`` before the first child that libvirt writes after it; returns ``elem``."""
    position = order.index(elem.tag)
    later = set(order[position + 1:])
    for index, child in enumerate(parent):
        if child.tag in later:
            parent.insert(index, elem)
            return elem
    parent.append(elem)
    return elem


def _insert_before_first(parent, elem, tags):
    for index, child in enumerate(parent):
        if child.tag in tags:
            parent.insert(index, elem)
            return elem
    parent.append(elem)
    return elem


def _drop_if_empty(parent, elem):
    if len(elem) == 0 and not elem.attrib and not (elem.text or "").strip():
        parent.remove(elem)
