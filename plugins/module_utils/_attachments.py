# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Data volumes attached to servers (Nova's volume attachments): declared by volume, never by position.

The pure part validates a server's ``volumes:`` option, reads the attachments a domain has, assigns disk targets
and renders ``<disk>`` elements. ``plan_attachments()`` then looks the volumes up (their records, secrets and other
users) and returns the attach and detach steps; ``attachment_steps()`` makes them hot-plug when the domain runs and
change only the persistent definition when it does not.

An attachment is keyed by its volume (pool and name). The list's order means nothing, so reordering it changes
nothing; a target, once assigned, stays with the attachment until it is detached. New attachments take the lowest
free target in the order of their volume's name, so the same declaration gives the same targets on every host.
The server's own disks keep vda to vdd (``_domain.DISK_ROLES``); data volumes start at vde (virtio) or sda (scsi).
Inside the guest a volume is found by its serial, whatever the kernel names it:
``/dev/disk/by-id/virtio-<serial>`` or ``/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_<serial>``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import xml.etree.ElementTree as ET

from ansible_collections.virtfleet.compute.plugins.module_utils._domain import DISK_ROLES
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import (
    ConflictError,
    LibvirtOperationError,
    ValidationError,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._wait import WaitTimeout, wait_for

DEFAULT_VOLUME_POOL = "virtfleet-volumes"
BUSES = ("virtio", "scsi")
_PREFIX = {"virtio": "vd", "scsi": "sd"}
# The first target a data volume may take on each bus: vda..vdd belong to the server's own disks.
_FIRST_INDEX = {"virtio": len(DISK_ROLES), "scsi": 0}
_ROLE_TARGETS = frozenset(target for _role, target, _s, _f, _r in DISK_ROLES)
_ROLE_SERIALS = frozenset(serial for _role, _t, serial, _f, _r in DISK_ROLES)
_TARGET_RE = re.compile(r"^(vd|sd)([a-z]{1,3})$")
_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
_FIELDS = ("name", "pool", "bus", "device", "read_only")
# How long a running guest may take to release a hot-unplugged virtio disk (it must answer the ACPI eject request;
# a TCG guest busy booting can take a while). libvirt itself gives up after 5 s and leaves the removal pending.
DETACH_TIMEOUT = 60


class Attachment:
    """One declared attachment, validated; ``device`` None means "any free target, kept once assigned"."""

    __slots__ = ("name", "pool", "bus", "device", "read_only")

    def __init__(self, name, pool, bus="virtio", device=None, read_only=False):
        self.name = name
        self.pool = pool
        self.bus = bus
        self.device = device
        self.read_only = bool(read_only)

    @property
    def key(self):
        return (self.pool, self.name)

    def __repr__(self):
        return "Attachment(%s/%s %s %s%s)" % (self.pool, self.name, self.bus, self.device or "auto",
                                              " ro" if self.read_only else "")


def validate_attachments(value, default_pool=DEFAULT_VOLUME_POOL, field="volumes"):
    """The ``volumes:`` option of a server → [Attachment], sorted by volume; refuses what cannot work.

    Entries are dicts (``name`` required) or plain volume names.
    """
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValidationError("must be a list of volumes to attach", field=field)
    out = []
    seen = {}
    devices = {}
    for index, entry in enumerate(value):
        where = "%s[%d]" % (field, index)
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict):
            raise ValidationError("must be a dict with at least name (a volume of the volume module)", field=where)
        unknown = sorted(k for k, v in entry.items() if k not in _FIELDS and v is not None)
        if unknown:
            raise ValidationError("unknown field(s) %s" % ", ".join(unknown), field=where)
        name = entry.get("name")
        if not isinstance(name, str) or not _VOLUME_NAME.match(name):
            raise ValidationError("must be a volume name (letters, digits and _.+-, at most 128 characters)",
                                  field=where + ".name")
        pool = entry.get("pool") or default_pool
        bus = entry.get("bus") or "virtio"
        if bus not in BUSES:
            raise ValidationError("must be one of %s" % ", ".join(BUSES), field=where + ".bus")
        device = entry.get("device")
        if device is not None:
            match = _TARGET_RE.match(device) if isinstance(device, str) else None
            if match is None:
                raise ValidationError("%r is not a disk target name (vde, vdf, ... or sda, sdb, ...)" % (device,),
                                      field=where + ".device")
            if match.group(1) != _PREFIX[bus]:
                raise ValidationError("a %s disk is named %sX, not %s" % (bus, _PREFIX[bus], device),
                                      field=where + ".device")
            if device in _ROLE_TARGETS:
                raise ValidationError("%s belongs to the server's own disks (vda root, vdb config drive, vdc "
                                      "ephemeral, vdd swap); data volumes start at vde" % device,
                                      field=where + ".device")
            if device in devices:
                raise ValidationError("%s is also asked for by %s" % (device, devices[device]),
                                      field=where + ".device")
            devices[device] = where
        attachment = Attachment(name, pool, bus, device, entry.get("read_only"))
        if attachment.key in seen:
            raise ValidationError("volume %s/%s is listed twice (first at %s)" % (pool, name, seen[attachment.key]),
                                  field=where)
        seen[attachment.key] = where
        out.append(attachment)
    return sorted(out, key=lambda a: a.key)


# -- targets ----------------------------------------------------------------------------------------------------------

def target_index(target):
    """vda → 0, vdz → 25, vdaa → 26: the kernel's naming, which libvirt follows for target names."""
    letters = _TARGET_RE.match(target).group(2)
    index = 0
    for char in letters:
        index = index * 26 + (ord(char) - ord("a") + 1)
    return index - 1


def target_name(bus, index):
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return _PREFIX[bus] + letters


def assign_targets(desired, attached, used):
    """{volume key: target} for the desired attachments (``validate_attachments``' result).

    ``attached``: the managed attachments the domain has now (``attached_volumes``), ``used``: every target the
    domain uses (its own disks, unmanaged disks, targets still live while a detach is pending). An attachment keeps
    its target while its bus is unchanged and no explicit device says otherwise; new ones take the lowest free
    target in the order of their keys, so the result does not depend on the order of the declaration.
    """
    current = dict((a["key"], a) for a in attached)
    out = {}
    for att in desired:
        if att.device:
            out[att.key] = att.device
    explicit = set(out.values())
    for att in desired:
        now = current.get(att.key)
        if att.key not in out and now is not None and now["bus"] == att.bus and now["target"] not in explicit:
            out[att.key] = now["target"]
    # Targets of attachments that go away or move are free again; everything else the domain uses is not.
    released = set(a["target"] for a in attached if out.get(a["key"]) != a["target"])
    taken = (set(used) - released) | set(out.values())
    for att in desired:
        if att.key in out:
            continue
        index = _FIRST_INDEX[att.bus]
        while target_name(att.bus, index) in taken:
            index += 1
        out[att.key] = target_name(att.bus, index)
        taken.add(out[att.key])
    return out


# -- reading and rendering disks --------------------------------------------------------------------------------------

def attached_volumes(domain_xml):
    """The data-volume disks of a domain (XML text or an Element): every ``type='volume'`` disk that is not one of the
    server's own disks, as dicts with key, name, pool, target, bus, read_only, shareable, serial, format, secret."""
    root = ET.fromstring(domain_xml) if isinstance(domain_xml, str) else domain_xml
    out = []
    for disk in root.findall("devices/disk"):
        if disk.get("type") != "volume" or disk.get("device", "disk") != "disk":
            continue
        source = disk.find("source")
        target = disk.find("target")
        if source is None or target is None:
            continue
        serial = (disk.findtext("serial") or "").strip()
        if serial in _ROLE_SERIALS or target.get("dev") in _ROLE_TARGETS:
            continue
        driver = disk.find("driver")
        secret = disk.find("source/encryption/secret")
        if secret is None:
            secret = disk.find("encryption/secret")  # where libvirt before 5.10 kept it
        out.append({
            "key": (source.get("pool"), source.get("volume")),
            "pool": source.get("pool"),
            "name": source.get("volume"),
            "target": target.get("dev"),
            "bus": target.get("bus") or "virtio",
            "read_only": disk.find("readonly") is not None,
            "shareable": disk.find("shareable") is not None,
            "serial": serial or None,
            "format": driver.get("type") if driver is not None else None,
            "secret": secret.get("uuid") if secret is not None else None,
        })
    return sorted(out, key=lambda a: a["key"])


def disk_targets(domain_xml):
    """Every disk target of a domain (XML text or an Element), whatever its kind."""
    root = ET.fromstring(domain_xml) if isinstance(domain_xml, str) else domain_xml
    return set(t.get("dev") for t in root.findall("devices/disk/target") if t.get("dev"))


def view(attachment):
    """How a server shows one attachment (server_info, the server result, ``--diff``)."""
    return dict((k, attachment[k]) for k in ("name", "pool", "device", "bus", "read_only", "serial"))


def attached_view(domain_xml):
    """The ``attachments`` of a server's view: its data volumes, sorted by pool and name."""
    return [view(dict(a, device=a["target"])) for a in attached_volumes(domain_xml)]


def disk_element(spec):
    """The ``<disk>`` for a resolved attachment (see ``Resolved``): the same element for the definition and for
    hot-plug, so what a live attach adds is exactly what the persistent definition gets."""
    disk = ET.Element("disk", {"type": "volume", "device": "disk"})
    driver = {"name": "qemu", "type": spec["format"]}
    if spec["shareable"]:
        # Two guests writing one image must bypass the host page cache, or each sees a stale copy of the other's
        # writes; libvirt warns about shareable disks with any other cache mode.
        driver["cache"] = "none"
    ET.SubElement(disk, "driver", driver)
    source = ET.SubElement(disk, "source", {"pool": spec["pool"], "volume": spec["name"]})
    if spec["secret"]:
        encryption = ET.SubElement(source, "encryption", {"format": "luks"})
        ET.SubElement(encryption, "secret", {"type": "passphrase", "uuid": spec["secret"]})
    ET.SubElement(disk, "target", {"dev": spec["target"], "bus": spec["bus"]})
    ET.SubElement(disk, "serial").text = spec["serial"]
    if spec["read_only"]:
        ET.SubElement(disk, "readonly")
    if spec["shareable"]:
        ET.SubElement(disk, "shareable")
    return disk


def scsi_controller_element():
    # libvirt would add an lsilogic controller for the first SCSI disk; the cloud kernels guests run (Debian's
    # linux-image-cloud-amd64 among them) only carry the virtio-scsi driver.
    return ET.Element("controller", {"type": "scsi", "index": "0", "model": "virtio-scsi"})


def has_scsi_controller(domain_xml):
    root = ET.fromstring(domain_xml) if isinstance(domain_xml, str) else domain_xml
    return any(c.get("type") == "scsi" for c in root.findall("devices/controller"))


def render_attachments(domain_xml, specs, remove=()):
    """The domain XML with the ``specs`` disks added (and the keys in ``remove`` taken out): for a definition
    written in one go, a new server's first one among them."""
    root = ET.fromstring(domain_xml) if isinstance(domain_xml, str) else domain_xml
    devices = root.find("devices")
    if devices is None:
        devices = ET.SubElement(root, "devices")
    for disk in list(devices.findall("disk")):
        source = disk.find("source")
        if source is not None and disk.get("type") == "volume" and (source.get("pool"), source.get("volume")) in \
                set(remove):
            devices.remove(disk)
    anchor = 0
    for index, child in enumerate(devices):
        if child.tag == "disk":
            anchor = index + 1
    for spec in specs:
        devices.insert(anchor, disk_element(spec))
        anchor += 1
    if any(s["bus"] == "scsi" for s in specs) and not has_scsi_controller(root):
        devices.insert(anchor, scsi_controller_element())
    return ET.tostring(root, encoding="unicode")


def _xml(elem):
    return ET.tostring(elem, encoding="unicode")


# -- resolving and planning (these read the host) ---------------------------------------------------------------------

class AttachmentPlan:
    """What ``plan_attachments`` decided: the desired attachments resolved, and what must change."""

    def __init__(self, server, desired, attached, detach, attach, add_controller, unmanaged):
        self.server = server
        self.desired = desired  # [spec dict], sorted by key
        self.attached = attached  # what the domain has now
        self.detach = detach  # [attached dict]
        self.attach = attach  # [spec dict]
        self.add_controller = add_controller
        self.unmanaged = unmanaged  # attached disks of volumes this collection does not manage: left alone

    @property
    def changed(self):
        return bool(self.detach or self.attach or self.add_controller)

    def view(self):
        """The server's ``attachments`` after the plan has run."""
        out = [view(dict(s, device=s["target"])) for s in self.desired]
        out += [view(dict(a, device=a["target"])) for a in self.unmanaged]
        return sorted(out, key=lambda a: (a["pool"], a["name"]))

    def render(self, domain_xml):
        """The definition with the desired disks: for a server defined in one go (a new one)."""
        return render_attachments(domain_xml, self.attach, remove=[a["key"] for a in self.detach])

    def steps(self, client, get_dom):
        """[(label, run, undo)] that take the domain from what it has to what is declared, live when it runs."""
        return attachment_steps(client, self.server, get_dom, self.detach, self.attach, self.add_controller)


def plan_attachments(client, server, declared, domain_xml=None, live_xml=None):
    """Resolve the ``declared`` attachments (``validate_attachments``' result) of ``server`` against its domain.

    ``domain_xml`` is the inactive definition (None for a server about to be created), ``live_xml`` the running one
    when the domain runs. Refuses, before anything changes: a volume that does not exist or that the volume module
    did not create, an encrypted volume whose secret is gone, and a volume another server has, unless it is
    shareable (the other server is named).
    """
    from ansible_collections.virtfleet.compute.plugins.module_utils import _volume

    attached = attached_volumes(domain_xml) if domain_xml else []
    used = disk_targets(domain_xml) if domain_xml else set()
    if live_xml:
        used |= disk_targets(live_xml)
    store = _volume.VolumeStore(client)
    managed = []
    unmanaged = []
    for att in attached:
        (managed if store.read(att["pool"], att["name"]) is not None else unmanaged).append(att)
    declared_keys = set(a.key for a in declared)
    # A disk of a volume the collection does not manage is never detached; declaring one is refused below.
    targets = assign_targets(declared, managed, used)
    current = dict((a["key"], a) for a in managed)

    desired = []
    users = None
    for index, att in enumerate(declared):
        field = "volumes[%d]" % index
        now = current.get(att.key)
        spec = _volume.attachment_facts(client, store, att.pool, att.name, field)
        spec.update(name=att.name, pool=att.pool, bus=att.bus, target=targets[att.key], read_only=att.read_only)
        if now is None or _differs(now, spec):
            if users is None:
                users = _volume.volume_users(client)
            others = [u for u in users.get(att.key, []) if u["server"] != server]
            pending = [u for u in others if u.get("live_only")]
            if pending and not spec["shareable"]:
                raise ConflictError(
                    "volume %s/%s is still held by the running guest of %s: its detach was not acknowledged by the "
                    "guest. Wait for it, or stop that server" % (att.pool, att.name, _names(pending)),
                    field=field + ".name")
            if others and not spec["shareable"]:
                raise ConflictError(
                    "volume %s/%s is attached to %s; a volume is attached to one server at a time unless the volume "
                    "module declared it shareable. Detach it there first" % (att.pool, att.name, _names(others)),
                    field=field + ".name")
        desired.append(spec)
    detach = [a for a in managed if a["key"] not in declared_keys or _differs(a, _spec_of(desired, a["key"]))]
    attach = [s for s in desired if s["key"] not in current or _differs(current[s["key"]], s)]
    for spec in attach:
        if spec["target"] in used and spec["target"] not in set(a["target"] for a in detach):
            raise ConflictError("target %s of server %s is taken by a disk that is not a data volume; choose another "
                                "device for volume %s/%s" % (spec["target"], server, spec["pool"], spec["name"]),
                                field="volumes")
    add_controller = any(s["bus"] == "scsi" for s in attach) and domain_xml is not None and not (
        has_scsi_controller(domain_xml) or (live_xml and has_scsi_controller(live_xml)))
    return AttachmentPlan(server, desired, attached, detach, attach, add_controller, unmanaged)


def _spec_of(desired, key):
    for spec in desired:
        if spec["key"] == key:
            return spec
    return None


def _differs(attached, spec):
    if spec is None:
        return True
    return any(attached.get(k) != spec.get(k)
               for k in ("target", "bus", "read_only", "shareable", "serial", "format", "secret"))


def _names(users):
    return ", ".join(sorted(set(u["server"] for u in users)))


def attachment_steps(client, server, get_dom, detach, attach, add_controller):
    """Detach, then attach: [(label, run, undo)].

    Each step looks at the domain when it runs, not when it was planned: a server the same plan stops or starts
    gets the hot-plug it needs at that moment (LIVE and CONFIG when it runs, CONFIG alone when it is off).
    """
    steps = []
    for att in detach:
        label = "detach volume %s/%s (%s) from %s" % (att["pool"], att["name"], att["target"], server)
        element = _current_disk(att)
        steps.append((label, _detach_run(client, get_dom, server, att["target"], element),
                      _attach_run(client, get_dom, element)))
    if add_controller:
        steps.append(("add a virtio-scsi controller to %s" % server,
                      _attach_run(client, get_dom, scsi_controller_element()), None))
    for spec in attach:
        extras = [spec["bus"]]
        if spec["read_only"]:
            extras.append("read-only")
        if spec["shareable"]:
            extras.append("shareable")
        if spec["secret"]:
            extras.append("LUKS")
        label = "attach volume %s/%s to %s as %s (%s)" % (spec["pool"], spec["name"], server, spec["target"],
                                                          ", ".join(extras))
        element = disk_element(spec)
        steps.append((label, _attach_run(client, get_dom, element),
                      _detach_run(client, get_dom, server, spec["target"], element)))
    return steps


def _current_disk(att):
    # libvirt finds the disk to detach by its target; the rest only has to be a well-formed disk.
    return disk_element(dict(att, format=att["format"] or "raw", serial=att["serial"] or "",
                             secret=att["secret"]))


def _attach_run(client, get_dom, element):
    xml = _xml(element)

    def run():
        dom = get_dom()
        client.attach_device(dom, xml, client.domain_active(dom))
    return run


def _detach_run(client, get_dom, server, target, element):
    xml = _xml(element)

    def run():
        dom = get_dom()
        live = client.domain_active(dom) and target in disk_targets(client.domain_xml(dom, inactive=False))
        client.detach_device(dom, xml, live)
        if live:
            try:
                wait_for(lambda: target not in disk_targets(client.domain_xml(dom, inactive=False)),
                         DETACH_TIMEOUT, "the guest of %s to release disk %s" % (server, target))
            except WaitTimeout as exc:
                raise LibvirtOperationError(
                    "%s: the guest has not acknowledged the unplug (an OS must answer the ACPI eject request; one "
                    "still booting, paused or without hot-plug support does not). The disk is gone from the "
                    "definition and leaves the guest at its next power off" % exc.message)
    return run


def delete_attached_steps(client, server, domain_xml):
    """[(label, run)] deleting the data volumes attached to ``server`` (its delete with ``delete_volumes``).

    Refuses, before anything changes, when one of them is attached to another server too (a shareable volume).
    Volumes the volume module did not create are left alone, as always.
    """
    from ansible_collections.virtfleet.compute.plugins.module_utils import _volume

    store = _volume.VolumeStore(client)
    mine = [a for a in attached_volumes(domain_xml) if store.read(a["pool"], a["name"]) is not None]
    if not mine:
        return []
    users = _volume.volume_users(client)
    steps = []
    for att in mine:
        others = [u for u in users.get(att["key"], []) if u["server"] != server]
        if others:
            raise ConflictError("volume %s/%s is attached to %s as well; it cannot be deleted with %s. Detach it "
                                "there, or delete %s without delete_volumes"
                                % (att["pool"], att["name"], _names(others), server, server), field="delete_volumes")
        steps.append(("delete volume %s/%s (was attached to %s)" % (att["pool"], att["name"], server),
                      _volume.delete_volume_run(client, store, att["pool"], att["name"])))
    return steps
