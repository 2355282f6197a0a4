"""Server attachments of data volumes: validation, targets, the <disk> elements and the hot-plug steps (pure)."""
import itertools
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils import _attachments as att
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import (
    LibvirtOperationError,
    ValidationError,
)

POOL = "virtfleet-volumes"

# A server's own disks as _domain renders them, one unmanaged disk added by hand, and two data volumes.
DOMAIN = """
<domain type='qemu'>
  <name>web1</name>
  <devices>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/><source pool='virtfleet-instances' volume='web1-root-1.qcow2'/>
      <target dev='vda' bus='virtio'/><serial>root</serial>
    </disk>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='raw'/><source pool='virtfleet-instances' volume='web1-config-1.iso'/>
      <target dev='vdb' bus='virtio'/><serial>config-drive</serial><readonly/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/srv/tools.iso'/><target dev='hdc' bus='ide'/>
    </disk>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source pool='virtfleet-volumes' volume='data'>
        <encryption format='luks' engine='qemu'><secret type='passphrase' uuid='11111111-2222-3333-4444-555555555555'/>
        </encryption>
      </source>
      <target dev='vdf' bus='virtio'/><serial>aaaaaaaa-bbbb-cccc-d</serial>
    </disk>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='raw'/>
      <source pool='virtfleet-volumes' volume='logs'/>
      <encryption format='luks'><secret type='passphrase' uuid='99999999-2222-3333-4444-555555555555'/></encryption>
      <target dev='sda' bus='scsi'/><serial>bbbbbbbb-bbbb-cccc-d</serial><readonly/><shareable/>
    </disk>
  </devices>
</domain>
"""


def declared(*entries):
    return att.validate_attachments(list(entries))


# -- validation -----------------------------------------------------------------------------------------------------

def test_entries_are_normalised_and_sorted_by_volume():
    out = declared({"name": "b"}, "a", {"name": "c", "pool": "fast", "bus": "scsi", "device": "sdb",
                                        "read_only": True})
    assert [(a.pool, a.name, a.bus, a.device, a.read_only) for a in out] == [
        ("fast", "c", "scsi", "sdb", True), (POOL, "a", "virtio", None, False), (POOL, "b", "virtio", None, False)]


def test_none_means_keep_and_empty_means_none():
    assert att.validate_attachments(None) is None
    assert att.validate_attachments([]) == []


@pytest.mark.parametrize("entries, field, words", [
    ("data", "volumes", "must be a list"),
    ([{"name": "a", "size": 3}], "volumes[0]", "unknown field"),
    ([{"pool": POOL}], "volumes[0].name", "volume name"),
    ([{"name": "../etc"}], "volumes[0].name", "volume name"),
    ([{"name": "a", "bus": "ide"}], "volumes[0].bus", "virtio, scsi"),
    ([{"name": "a", "device": "hda"}], "volumes[0].device", "not a disk target"),
    ([{"name": "a", "device": "sdb"}], "volumes[0].device", "virtio disk is named vdX"),
    ([{"name": "a", "device": "vdc"}], "volumes[0].device", "server's own disks"),
    ([{"name": "a", "device": "vde"}, {"name": "b", "device": "vde"}], "volumes[1].device", "also asked for"),
    ([{"name": "a"}, {"name": "a", "read_only": True}], "volumes[1]", "listed twice"),
    ([42], "volumes[0]", "must be a dict"),
])
def test_bad_entries_name_the_field(entries, field, words):
    with pytest.raises(ValidationError) as info:
        att.validate_attachments(entries)
    assert info.value.field == field
    assert words in info.value.message


def test_the_same_volume_in_two_pools_is_two_attachments():
    assert len(declared({"name": "a"}, {"name": "a", "pool": "other"})) == 2


# -- targets --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bus, index, name", [
    ("virtio", 0, "vda"), ("virtio", 4, "vde"), ("virtio", 25, "vdz"), ("virtio", 26, "vdaa"), ("scsi", 27, "sdab"),
    ("scsi", 701, "sdzz"), ("scsi", 702, "sdaaa"),
])
def test_target_names_follow_the_kernel(bus, index, name):
    assert att.target_name(bus, index) == name
    assert att.target_index(name) == index


def _current(key, target, bus="virtio"):
    return {"key": key, "target": target, "bus": bus}


def test_new_attachments_start_after_the_servers_own_disks():
    targets = att.assign_targets(declared("b", "a", {"name": "c", "bus": "scsi"}), [], {"vda", "vdb"})
    assert targets == {(POOL, "a"): "vde", (POOL, "b"): "vdf", (POOL, "c"): "sda"}


def test_the_declared_order_never_changes_the_targets():
    names = ["d", "a", "c", "b"]
    seen = set()
    for order in itertools.permutations(names):
        seen.add(tuple(sorted(att.assign_targets(declared(*order), [], {"vda"}).items())))
    assert len(seen) == 1


def test_a_target_is_kept_once_assigned_and_a_freed_one_is_reused():
    attached = [_current((POOL, "a"), "vde"), _current((POOL, "b"), "vdf"), _current((POOL, "c"), "vdg")]
    # b goes, z comes: z takes the lowest free target (b's), a and c keep theirs although "z" sorts last.
    targets = att.assign_targets(declared("c", "z", "a"), attached, {"vda", "vde", "vdf", "vdg"})
    assert targets == {(POOL, "a"): "vde", (POOL, "c"): "vdg", (POOL, "z"): "vdf"}


def test_targets_other_disks_use_are_skipped():
    # vde is an unmanaged disk; vdf still live after a detach the guest has not acknowledged.
    assert att.assign_targets(declared("a"), [], {"vda", "vde", "vdf"}) == {(POOL, "a"): "vdg"}


def test_an_explicit_device_wins_and_moves_the_attachment_that_had_it():
    attached = [_current((POOL, "a"), "vde")]
    targets = att.assign_targets(declared("a", {"name": "b", "device": "vde"}), attached, {"vda", "vde"})
    assert targets == {(POOL, "b"): "vde", (POOL, "a"): "vdf"}


def test_a_bus_change_gives_a_target_on_the_new_bus():
    attached = [_current((POOL, "a"), "vde")]
    assert att.assign_targets(declared({"name": "a", "bus": "scsi"}), attached, {"vde"}) == {(POOL, "a"): "sda"}


# -- reading and rendering ------------------------------------------------------------------------------------------

def test_only_data_volume_disks_are_attachments():
    found = att.attached_volumes(DOMAIN)
    assert [(a["name"], a["target"], a["bus"], a["read_only"], a["shareable"], a["secret"]) for a in found] == [
        ("data", "vdf", "virtio", False, False, "11111111-2222-3333-4444-555555555555"),
        # libvirt before 5.10 kept <encryption> in <disk>, not in <source>: both are read.
        ("logs", "sda", "scsi", True, True, "99999999-2222-3333-4444-555555555555"),
    ]
    assert att.disk_targets(DOMAIN) == {"vda", "vdb", "hdc", "vdf", "sda"}


def test_the_view_is_what_server_info_shows():
    assert att.attached_view(DOMAIN)[0] == {"name": "data", "pool": POOL, "device": "vdf", "bus": "virtio",
                                            "read_only": False, "serial": "aaaaaaaa-bbbb-cccc-d"}


def spec(name="data", target="vde", bus="virtio", fmt="qcow2", secret=None, read_only=False, shareable=False):
    return {"key": (POOL, name), "name": name, "pool": POOL, "target": target, "bus": bus, "format": fmt,
            "secret": secret, "read_only": read_only, "shareable": shareable, "serial": "0123456789abcdef0123"}


@pytest.mark.parametrize("values", [
    {},
    {"secret": "11111111-2222-3333-4444-555555555555"},
    {"bus": "scsi", "target": "sdb", "read_only": True},
    {"fmt": "raw", "shareable": True},
])
def test_a_rendered_disk_reads_back_as_the_same_attachment(values):
    wanted = spec(**values)
    xml = att.render_attachments("<domain><devices/></domain>", [wanted])
    found = att.attached_volumes(xml)
    assert len(found) == 1
    assert not att._differs(found[0], wanted)
    disk = ET.fromstring(xml).find("devices/disk")
    assert (disk.find("driver").get("cache") == "none") == wanted["shareable"]


def test_the_first_scsi_disk_brings_a_virtio_scsi_controller():
    xml = att.render_attachments("<domain><devices/></domain>", [spec(bus="scsi", target="sda")])
    controllers = ET.fromstring(xml).findall("devices/controller")
    assert [(c.get("type"), c.get("model")) for c in controllers] == [("scsi", "virtio-scsi")]
    again = att.render_attachments(xml, [spec(name="more", bus="scsi", target="sdb")])
    assert len(ET.fromstring(again).findall("devices/controller")) == 1


def test_rendering_puts_data_disks_after_the_other_disks_and_can_remove_one():
    xml = att.render_attachments(DOMAIN, [spec(name="new", target="vde")], remove=[(POOL, "data")])
    targets = [t.get("dev") for t in ET.fromstring(xml).findall("devices/disk/target")]
    assert targets == ["vda", "vdb", "hdc", "sda", "vde"]


# -- steps ----------------------------------------------------------------------------------------------------------

class RecordingClient:
    """Just enough of the client for the steps: records attach/detach calls and keeps a live target set."""

    def __init__(self, active, release=True):
        self.active = active
        self.release = release
        self.calls = []
        self.live = {"vda", "vdf"}

    def domain_active(self, dom):
        return self.active

    def domain_xml(self, dom, inactive=True):
        disks = "".join("<disk><target dev='%s'/></disk>" % t for t in sorted(self.live))
        return "<domain><devices>%s</devices></domain>" % disks

    def attach_device(self, dom, xml, live):
        self.calls.append(("attach", ET.fromstring(xml).find("target").get("dev") if "<disk" in xml else "controller",
                           live))
        if live and "<disk" in xml:
            self.live.add(ET.fromstring(xml).find("target").get("dev"))

    def detach_device(self, dom, xml, live):
        target = ET.fromstring(xml).find("target").get("dev")
        self.calls.append(("detach", target, live))
        if live and self.release:
            self.live.discard(target)


def _steps(client, detach=(), attach=(), controller=False):
    return att.attachment_steps(client, "web1", lambda: "dom", list(detach), list(attach), controller)


@pytest.mark.parametrize("active", [True, False])
def test_steps_hot_plug_when_running_and_change_the_definition_only_when_not(active):
    client = RecordingClient(active)
    current = dict(spec(name="old", target="vdf"), serial="x")
    steps = _steps(client, detach=[current], attach=[spec(bus="scsi", target="sda")], controller=True)
    assert [label for label, _run, _undo in steps] == [
        "detach volume virtfleet-volumes/old (vdf) from web1",
        "add a virtio-scsi controller to web1",
        "attach volume virtfleet-volumes/data to web1 as sda (scsi)",
    ]
    for _label, run, _undo in steps:
        run()
    assert client.calls == [("detach", "vdf", active), ("attach", "controller", active), ("attach", "sda", active)]


def test_a_detach_of_a_disk_the_running_guest_does_not_have_is_config_only():
    client = RecordingClient(True)
    _label, run, _undo = _steps(client, detach=[dict(spec(target="vdg"), serial="x")])[0]
    run()
    assert client.calls == [("detach", "vdg", False)]


def test_a_guest_that_never_releases_the_disk_fails_the_step_with_what_to_do(monkeypatch):
    monkeypatch.setattr(att, "DETACH_TIMEOUT", 0.3)
    client = RecordingClient(True, release=False)
    _label, run, _undo = _steps(client, detach=[dict(spec(target="vdf"), serial="x")])[0]
    with pytest.raises(LibvirtOperationError) as info:
        run()
    assert "has not acknowledged the unplug" in info.value.message
    assert "gone from the definition" in info.value.message


def test_undo_of_an_attach_detaches_it_again():
    client = RecordingClient(True)
    _label, run, undo = _steps(client, attach=[spec(target="vde", read_only=True,
                                                    secret="11111111-2222-3333-4444-555555555555")])[0]
    assert _label.endswith("as vde (virtio, read-only, LUKS)")
    run()
    undo()
    assert client.calls == [("attach", "vde", True), ("detach", "vde", True)]
    assert "vde" not in client.live
