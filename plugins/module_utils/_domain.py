# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The model layer for servers: domain XML in, plain values out, and back.

Reading always starts from libvirt's *inactive* XML, parsed into values, never compared as text: libvirt rewrites
what it is given (units to KiB, PCI addresses, controllers, generated MACs), so a string comparison would report a
change on every run.

A managed server carries a ``<metadata>`` element in our own XML namespace (DESIGN.md principle 2) with its flavor
snapshot, image, creation time, volumes, user metadata, tags and a hash of the declared spec. A domain without that
element is not ours and is never changed.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import secrets
import string
import xml.etree.ElementTree as ET

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ValidationError
from ansible_collections.virtfleet.compute.plugins.module_utils._extra_specs import apply_extra_specs, current_pins
from ansible_collections.virtfleet.compute.plugins.module_utils._flavor import Flavor

NAMESPACE = "http://virtfleet.io/xmlns/compute/1.0"
NS_PREFIX = "virtfleet"
METADATA_VERSION = "1"
ET.register_namespace(NS_PREFIX, NAMESPACE)

MANAGED_BY = "virtfleet.compute"
GIB = 1024 ** 3
MIB = 1024 ** 2

# Fixed disk targets per role: a server's devices never get renamed when an optional disk appears or goes, and the
# guest finds each disk by its serial (/dev/disk/by-id/virtio-<serial>) whatever the target.
DISK_ROLES = (
    # role, target, serial, volume format, read-only
    ("root", "vda", "root", "qcow2", False),
    ("config", "vdb", "config-drive", "raw", True),
    ("ephemeral", "vdc", "ephemeral0", "qcow2", False),
    ("swap", "vdd", "swap0", "qcow2", False),
)
DISK_TARGETS = dict((role, target) for role, target, _s, _f, _r in DISK_ROLES)
_SERIALS = dict((role, serial) for role, _t, serial, _f, _r in DISK_ROLES)
_FORMATS = dict((role, fmt) for role, _t, _s, fmt, _r in DISK_ROLES)
_READONLY = dict((role, ro) for role, _t, _s, _f, ro in DISK_ROLES)
_ROLE_BY_SERIAL = dict((serial, role) for role, serial in _SERIALS.items())

_MEMORY_UNITS = {
    "b": 1, "bytes": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": MIB, "mib": MIB, "mb": 1000 ** 2,
    "g": GIB, "gib": GIB, "gb": 1000 ** 3, "t": 1024 ** 4, "tib": 1024 ** 4, "tb": 1000 ** 4,
}


def _q(tag):
    return "{%s}%s" % (NAMESPACE, tag)


def derive_mac(server_name, index):
    """A stable MAC for NIC ``index`` of ``server_name``: the same on every run, rebuild, migration or evacuation.

    52:54:00 is the prefix QEMU/libvirt use for guests; the rest comes from a hash of the name so a server keeps its
    DHCP reservations and guest interface names without anything to remember.
    """
    digest = hashlib.sha256(("%s#%d" % (server_name, index)).encode("utf-8")).digest()
    return "52:54:00:%02x:%02x:%02x" % (digest[0], digest[1], digest[2])


def volume_name(server_name, uuid, role):
    """Volumes created for a server carry its name, its role and a piece of its UUID (unique across rebuilds)."""
    ext = "iso" if role == "config" else _FORMATS[role]
    return "%s-%s-%s.%s" % (server_name, role, uuid.split("-")[0], ext)


def spec_hash(declared):
    """The hash of the declared spec (a JSON-able dict) that lets an unchanged server be recognised cheaply."""
    text = json.dumps(declared, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Nic:
    """One network interface: attached to a libvirt network or to a host bridge."""

    __slots__ = ("kind", "source", "mac", "model", "fixed_ip")

    def __init__(self, kind, source, mac, model="virtio", fixed_ip=None):
        self.kind = kind  # "network" or "bridge"
        self.source = source
        self.mac = mac.lower()
        self.model = model
        self.fixed_ip = fixed_ip

    def to_dict(self):
        data = {self.kind: self.source, "mac": self.mac, "model": self.model}
        if self.fixed_ip:
            data["fixed_ip"] = self.fixed_ip
        return data

    def __eq__(self, other):
        return isinstance(other, Nic) and self.to_dict() == other.to_dict()

    def __ne__(self, other):
        return not self == other

    def __repr__(self):
        return "Nic(%r)" % (self.to_dict(),)


class ServerRecord:
    """What we store about a server in its domain's metadata element."""

    def __init__(self, created=None, spec_hash=None, flavor=None, image=None, config_drive_hash=None, volumes=None,
                 metadata=None, tags=None, hostname=None, extra=None, fixed_ips=None, config_drive_built_hash=None):
        self.created = created
        self.spec_hash = spec_hash
        self.flavor = flavor  # Flavor
        self.image = image  # {"pool": ..., "name": ...}
        self.config_drive_hash = config_drive_hash
        # The config drive's hash when the root disk was built (created or rebuilt from its image): cloud-init reads
        # keys and user data at a root disk's first boot only, so a drive rewritten since may not reach the guest.
        # None in records of earlier versions (unknown).
        self.config_drive_built_hash = config_drive_built_hash
        self.volumes = dict(volumes or {})  # role -> {"pool": ..., "name": ...}
        self.metadata = dict(metadata or {})
        self.tags = list(tags or [])
        self.hostname = hostname
        # MAC -> fixed IP reserved for that NIC in its libvirt network's DHCP server (the domain XML has no place
        # for it).
        self.fixed_ips = dict(fixed_ips or {})
        # Further string facts later features add (server group, availability zone, ...), kept as they are.
        self.extra = dict(extra or {})

    def to_element(self):
        root = ET.Element(_q("instance"), {"version": METADATA_VERSION})
        ET.SubElement(root, _q("managed-by")).text = MANAGED_BY
        if self.created:
            ET.SubElement(root, _q("created")).text = self.created
        if self.spec_hash:
            ET.SubElement(root, _q("spec-hash")).text = self.spec_hash
        if self.hostname:
            ET.SubElement(root, _q("hostname")).text = self.hostname
        if self.flavor is not None:
            attrs = dict((k, str(v)) for k, v in self.flavor.size().items())
            if self.flavor.name:
                attrs["name"] = self.flavor.name
            flavor = ET.SubElement(root, _q("flavor"), attrs)
            if self.flavor.description:
                ET.SubElement(flavor, _q("description")).text = self.flavor.description
            for key in sorted(self.flavor.extra_specs):
                ET.SubElement(flavor, _q("extra-spec"), {"key": key}).text = self.flavor.extra_specs[key]
        if self.image:
            ET.SubElement(root, _q("image"), dict((k, str(v)) for k, v in sorted(self.image.items())))
        if self.config_drive_hash:
            drive = ET.SubElement(root, _q("config-drive"), {"hash": self.config_drive_hash})
            if self.config_drive_built_hash:
                drive.set("built", self.config_drive_built_hash)
        for role in sorted(self.volumes):
            attrs = {"role": role}
            attrs.update(self.volumes[role])
            ET.SubElement(root, _q("volume"), attrs)
        for key in sorted(self.metadata):
            ET.SubElement(root, _q("meta"), {"key": key}).text = self.metadata[key]
        for tag in self.tags:
            ET.SubElement(root, _q("tag")).text = tag
        for mac in sorted(self.fixed_ips):
            ET.SubElement(root, _q("fixed-ip"), {"mac": mac, "ip": self.fixed_ips[mac]})
        for key in sorted(self.extra):
            ET.SubElement(root, _q("fact"), {"key": key}).text = self.extra[key]
        return root

    @classmethod
    def from_element(cls, elem):
        record = cls()
        record.created = _text(elem.find(_q("created")))
        record.spec_hash = _text(elem.find(_q("spec-hash")))
        record.hostname = _text(elem.find(_q("hostname")))
        flavor = elem.find(_q("flavor"))
        if flavor is not None:
            sizes = dict((k, int(flavor.get(k, 0))) for k in ("vcpus", "ram_mb", "disk_gb", "swap_mb", "ephemeral_gb"))
            record.flavor = Flavor(
                name=flavor.get("name"),
                description=_text(flavor.find(_q("description"))),
                extra_specs=dict((e.get("key"), e.text or "") for e in flavor.findall(_q("extra-spec"))),
                **sizes
            )
        image = elem.find(_q("image"))
        if image is not None:
            record.image = dict(image.attrib)
        drive = elem.find(_q("config-drive"))
        if drive is not None:
            record.config_drive_hash = drive.get("hash")
            record.config_drive_built_hash = drive.get("built")
        for vol in elem.findall(_q("volume")):
            attrs = dict(vol.attrib)
            role = attrs.pop("role")
            record.volumes[role] = attrs
        record.metadata = dict((m.get("key"), m.text or "") for m in elem.findall(_q("meta")))
        record.tags = [t.text or "" for t in elem.findall(_q("tag"))]
        record.fixed_ips = dict((f.get("mac"), f.get("ip")) for f in elem.findall(_q("fixed-ip")))
        record.extra = dict((f.get("key"), f.text or "") for f in elem.findall(_q("fact")))
        return record


class Domain:
    """A domain as read from libvirt's inactive XML: the values we manage, plus whether it is ours."""

    def __init__(self, xml):
        self.tree = ET.fromstring(xml)
        root = self.tree
        self.name = _text(root.find("name"))
        self.uuid = _text(root.find("uuid"))
        self.virt_type = root.get("type")
        self.vcpus = int(_text(root.find("vcpu")) or 1)
        self.ram_mb = _memory_bytes(root.find("memory")) // MIB
        self.disks = []
        for disk in root.findall("devices/disk"):
            source = disk.find("source")
            target = disk.find("target")
            driver = disk.find("driver")
            self.disks.append({
                "type": disk.get("type"),
                "device": disk.get("device"),
                "pool": source.get("pool") if source is not None else None,
                "volume": source.get("volume") if source is not None else None,
                "path": (source.get("file") or source.get("dev")) if source is not None else None,
                "target": target.get("dev") if target is not None else None,
                "bus": target.get("bus") if target is not None else None,
                "format": driver.get("type") if driver is not None else None,
                "serial": _text(disk.find("serial")),
                "readonly": disk.find("readonly") is not None,
            })
        self.nics = []
        for iface in root.findall("devices/interface"):
            kind = iface.get("type")
            source = iface.find("source")
            mac = iface.find("mac")
            model = iface.find("model")
            self.nics.append({
                "kind": kind,
                "source": source.get(kind) if source is not None and kind in ("network", "bridge") else None,
                "mac": (mac.get("address") or "").lower() if mac is not None else None,
                "model": model.get("type") if model is not None else None,
            })
        elem = root.find("metadata/" + _q("instance"))
        self.record = ServerRecord.from_element(elem) if elem is not None else None

    @property
    def config_drive_rewritten(self):
        """Whether the config drive changed since the root disk was built (then the guest may not have its keys and
        user data: cloud-init applies them at a root disk's first boot)."""
        return bool(self.record and self.record.config_drive_built_hash
                    and self.record.config_drive_built_hash != self.record.config_drive_hash)

    @property
    def pinned_cpus(self):
        """The host CPUs the vCPUs are pinned to one by one (``<vcpupin>``), sorted; empty for a floating domain."""
        return sorted(set(cpu for cpu in current_pins(self.tree) if cpu is not None))

    @property
    def managed(self):
        return self.record is not None

    def disk_for_role(self, role):
        serial = _SERIALS[role]
        for disk in self.disks:
            if disk["serial"] == serial:
                return disk
        return None

    def managed_nics(self):
        """NICs as Nic values (interfaces of other types, e.g. direct/macvtap added by hand, are left out)."""
        fixed = self.record.fixed_ips if self.record else {}
        return [Nic(n["kind"], n["source"], n["mac"], n["model"] or "virtio", fixed.get(n["mac"]))
                for n in self.nics if n["kind"] in ("network", "bridge")]


class DomainSpec:
    """Everything needed to write a server's domain definition."""

    def __init__(self, name, uuid, virt_type, flavor, nics, volumes, record, machine=None, arch="x86_64",
                 graphics=True, host_cpus=None, taken_cpus=(), cells=None):
        # Needed only for hw:cpu_policy=dedicated: the host's CPU count, the CPUs other dedicated servers hold and
        # the CPUs of each NUMA cell.
        self.host_cpus = host_cpus
        self.taken_cpus = taken_cpus
        self.cells = cells
        self.name = name
        self.uuid = uuid
        self.virt_type = virt_type
        self.flavor = flavor
        self.nics = nics  # [Nic]
        self.volumes = volumes  # role -> {"pool": ..., "name": ...}
        self.record = record  # ServerRecord
        self.machine = machine
        self.arch = arch
        self.graphics = graphics


def render_domain(spec, base_xml=None):
    """The domain XML for ``spec``.

    With ``base_xml`` (the current inactive XML) only the parts we manage are rewritten and everything else libvirt
    or an operator put there (addresses, controllers, extra devices) is kept, so an update never loses a setting
    and an unchanged part never shows up as a change.
    """
    root = ET.fromstring(base_xml) if base_xml else _skeleton(spec)
    root.set("type", spec.virt_type)
    _set_child_text(root, "name", spec.name)
    _set_child_text(root, "uuid", spec.uuid)

    metadata = _ensure_child(root, "metadata", before=("memory", "vcpu"))
    for old in metadata.findall(_q("instance")):
        metadata.remove(old)
    metadata.append(spec.record.to_element())

    for tag in ("memory", "currentMemory"):
        elem = _ensure_child(root, tag, before=("vcpu", "os"))
        elem.set("unit", "KiB")
        elem.text = str(spec.flavor.ram_mb * 1024)
    vcpu = _ensure_child(root, "vcpu", before=("os",))
    vcpu.text = str(spec.flavor.vcpus)
    vcpu.attrib.pop("current", None)

    devices = _ensure_child(root, "devices")
    _render_disks(devices, spec.volumes)
    _render_nics(devices, spec.nics)
    apply_extra_specs(root, spec.flavor, host_cpus=spec.host_cpus, taken_cpus=spec.taken_cpus, cells=spec.cells)
    return ET.tostring(root, encoding="unicode")


def _skeleton(spec):
    root = ET.Element("domain", {"type": spec.virt_type})
    ET.SubElement(root, "name")
    ET.SubElement(root, "uuid")
    ET.SubElement(root, "metadata")
    ET.SubElement(root, "memory")
    ET.SubElement(root, "currentMemory")
    ET.SubElement(root, "vcpu", {"placement": "static"})
    os_elem = ET.SubElement(root, "os")
    type_attrs = {"arch": spec.arch}
    if spec.machine:
        type_attrs["machine"] = spec.machine
    ET.SubElement(os_elem, "type", type_attrs).text = "hvm"
    features = ET.SubElement(root, "features")
    # Without ACPI the guest cannot see the power button, and a graceful stop would always end in a hard one.
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    ET.SubElement(root, "clock", {"offset": "utc"})
    ET.SubElement(root, "on_poweroff").text = "destroy"
    ET.SubElement(root, "on_reboot").text = "restart"
    ET.SubElement(root, "on_crash").text = "destroy"
    devices = ET.SubElement(root, "devices")
    serial = ET.SubElement(devices, "serial", {"type": "pty"})
    ET.SubElement(serial, "target", {"port": "0"})
    console = ET.SubElement(devices, "console", {"type": "pty"})
    ET.SubElement(console, "target", {"type": "serial", "port": "0"})
    channel = ET.SubElement(devices, "channel", {"type": "unix"})
    ET.SubElement(channel, "target", {"type": "virtio", "name": "org.qemu.guest_agent.0"})
    if spec.graphics:
        # Loopback only: the console action hands out time-limited passwords; nothing listens on the outside.
        # Locked with a random password that expired at the epoch: QEMU accepts a password at run time only for a
        # display started with password authentication, and server_action's console action hands out one-time
        # passwords (passwdValidTo) on the running domain.
        ET.SubElement(devices, "graphics", {
            "type": "vnc", "autoport": "yes", "listen": "127.0.0.1",
            "passwd": "".join(secrets.choice(string.ascii_letters + string.digits) for _char in range(8)),
            "passwdValidTo": "1970-01-01T00:00:01"})
    # Under TCG a guest starved of entropy can stall for a minute generating its SSH host keys.
    rng = ET.SubElement(devices, "rng", {"model": "virtio"})
    ET.SubElement(rng, "backend", {"model": "random"}).text = "/dev/urandom"
    ET.SubElement(devices, "memballoon", {"model": "virtio"})
    return root


def _render_disks(devices, volumes):
    existing = {}
    for disk in devices.findall("disk"):
        serial = _text(disk.find("serial"))
        if serial in _ROLE_BY_SERIAL:
            existing[_ROLE_BY_SERIAL[serial]] = disk
    insert_at = _first_index(devices, ("disk",)) if devices.findall("disk") else 0
    for role, target, serial, fmt, readonly in DISK_ROLES:
        wanted = volumes.get(role)
        disk = existing.get(role)
        if wanted is None:
            if disk is not None:
                devices.remove(disk)
            continue
        if disk is None:
            disk = ET.Element("disk", {"type": "volume", "device": "disk"})
            ET.SubElement(disk, "driver", {"name": "qemu", "type": fmt})
            ET.SubElement(disk, "source", {"pool": wanted["pool"], "volume": wanted["name"]})
            ET.SubElement(disk, "target", {"dev": target, "bus": "virtio"})
            ET.SubElement(disk, "serial").text = serial
            if readonly:
                ET.SubElement(disk, "readonly")
            if role == "root":
                ET.SubElement(disk, "boot", {"order": "1"})
            devices.insert(insert_at, disk)
        else:
            source = disk.find("source")
            if source is None or source.get("pool") != wanted["pool"] or source.get("volume") != wanted["name"]:
                disk.set("type", "volume")
                if source is not None:
                    disk.remove(source)
                source = ET.Element("source", {"pool": wanted["pool"], "volume": wanted["name"]})
                disk.insert(1, source)
        insert_at = list(devices).index(disk) + 1


def _render_nics(devices, nics):
    by_mac = {}
    for iface in devices.findall("interface"):
        mac = iface.find("mac")
        if iface.get("type") in ("network", "bridge") and mac is not None:
            by_mac[(mac.get("address") or "").lower()] = iface
    wanted_macs = set(nic.mac for nic in nics)
    for mac, iface in list(by_mac.items()):
        if mac not in wanted_macs:
            devices.remove(iface)
            del by_mac[mac]
    anchor = _last_index(devices, ("disk", "controller", "interface"))
    for nic in nics:
        iface = by_mac.get(nic.mac)
        if iface is not None and iface.get("type") == nic.kind:
            source = iface.find("source")
            if source is None or source.get(nic.kind) != nic.source:
                if source is not None:
                    iface.remove(source)
                iface.insert(1, ET.Element("source", {nic.kind: nic.source}))
            model = iface.find("model")
            if model is None:
                model = ET.SubElement(iface, "model")
            model.set("type", nic.model)
            anchor = list(devices).index(iface) + 1
            continue
        if iface is not None:
            devices.remove(iface)
        iface = ET.Element("interface", {"type": nic.kind})
        ET.SubElement(iface, "mac", {"address": nic.mac})
        ET.SubElement(iface, "source", {nic.kind: nic.source})
        ET.SubElement(iface, "model", {"type": nic.model})
        devices.insert(anchor, iface)
        anchor += 1
    _order_nics(devices, [nic.mac for nic in nics])


def _order_nics(devices, macs):
    """Put the managed interfaces in declared order: the guest names them eth0, eth1... by PCI slot order."""
    managed = [i for i in devices.findall("interface")
               if i.get("type") in ("network", "bridge") and i.find("mac") is not None]
    current = [(i.find("mac").get("address") or "").lower() for i in managed]
    if current == macs or sorted(current) != sorted(macs):
        return
    position = list(devices).index(managed[0])
    by_mac = dict(zip(current, managed))
    for iface in managed:
        devices.remove(iface)
    for offset, mac in enumerate(macs):
        iface = by_mac[mac]
        # Without its old PCI address libvirt gives each interface a slot in the new order.
        for address in iface.findall("address"):
            iface.remove(address)
        devices.insert(position + offset, iface)


def _first_index(parent, tags):
    for index, child in enumerate(parent):
        if child.tag in tags:
            return index
    return len(parent)


def _last_index(parent, tags):
    last = 0
    for index, child in enumerate(parent):
        if child.tag in tags:
            last = index + 1
    return last


def _ensure_child(parent, tag, before=()):
    elem = parent.find(tag)
    if elem is None:
        elem = ET.Element(tag)
        for index, child in enumerate(parent):
            if child.tag in before:
                parent.insert(index, elem)
                break
        else:
            parent.append(elem)
    return elem


def _set_child_text(parent, tag, text):
    elem = parent.find(tag)
    if elem is None:
        elem = ET.Element(tag)
        parent.insert(0 if tag == "name" else 1, elem)
    elem.text = text


def _text(elem):
    if elem is None or elem.text is None:
        return None
    return elem.text.strip()


def _memory_bytes(elem):
    if elem is None or not elem.text:
        return 0
    unit = (elem.get("unit") or "KiB").lower()
    if unit not in _MEMORY_UNITS:
        raise ValidationError("unknown memory unit %r in domain XML" % unit)
    return int(elem.text.strip()) * _MEMORY_UNITS[unit]


def canonical(xml):
    """A comparable form of an XML document: tags, attributes and text, without formatting whitespace.

    libvirt pretty-prints what it returns; ElementTree keeps that whitespace, so documents that mean the same differ
    as strings.
    """
    return _canonical(ET.fromstring(xml) if isinstance(xml, str) else xml)


def _canonical(elem):
    return (elem.tag, tuple(sorted(elem.attrib.items())), (elem.text or "").strip(),
            tuple(_canonical(child) for child in elem))
