"""The domain XML model: render → parse round trips, updates that keep what others put there, stable MACs."""
import re
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils._domain import (
    DISK_TARGETS,
    GIB,
    NAMESPACE,
    Domain,
    DomainSpec,
    Nic,
    ServerRecord,
    canonical,
    derive_mac,
    render_domain,
    spec_hash,
    volume_name,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ValidationError
from ansible_collections.virtfleet.compute.plugins.module_utils._flavor import Flavor

UUID = "8f4c2a9e-1b2c-4d5e-8f90-123456789abc"
POOL = "virtfleet-instances"


def _volumes(name, roles):
    return dict((role, {"pool": POOL, "name": volume_name(name, UUID, role)}) for role in roles)


def make_spec(name="web1", vcpus=2, ram_mb=1024, disk_gb=10, swap_mb=0, ephemeral_gb=0, nics=None,
              roles=("root", "config"), virt_type="qemu", flavor_name=None, extra_specs=None, metadata=None,
              tags=None, extra=None, hostname=None):
    flavor = Flavor(vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb, swap_mb=swap_mb, ephemeral_gb=ephemeral_gb,
                    name=flavor_name, description="a flavor" if flavor_name else None, extra_specs=extra_specs)
    if nics is None:
        nics = [Nic("network", "default", derive_mac(name, 0))]
    volumes = _volumes(name, roles)
    record = ServerRecord(created="2024-05-01T10:00:00Z", spec_hash="ab" * 32, flavor=flavor,
                          image={"pool": "virtfleet-images", "name": "debian-12"}, config_drive_hash="cd" * 32,
                          volumes=volumes, metadata=metadata or {}, tags=tags or [], hostname=hostname or name,
                          extra=extra)
    return DomainSpec(name, UUID, virt_type, flavor, nics, volumes, record)


SPECS = {
    "minimal": dict(nics=[], roles=("root",)),
    "defaults": dict(),
    "kvm-with-swap-and-ephemeral": dict(virt_type="kvm", vcpus=8, ram_mb=16384, swap_mb=512, ephemeral_gb=20,
                                        roles=("root", "config", "ephemeral", "swap")),
    "two-nics-bridge-and-e1000": dict(nics=[Nic("network", "default", "52:54:00:aa:bb:01"),
                                            Nic("bridge", "br-prod", "52:54:00:AA:BB:02", model="e1000")]),
    "named-flavor-with-facts": dict(flavor_name="m1.small", extra_specs={"hw:cpu_policy": "shared", "trait:X": "y"},
                                    metadata={"role": "web", "empty": ""}, tags=["a", "prod"],
                                    extra={"server_group": "g1", "availability_zone": "az1"},
                                    hostname="web-one"),
}


def _disks_by_serial(domain):
    return dict((d["serial"], d) for d in domain.disks)


@pytest.mark.parametrize("case", sorted(SPECS))
def test_render_then_parse_gives_back_every_managed_value(case):
    spec = make_spec(**SPECS[case])
    domain = Domain(render_domain(spec))

    assert (domain.name, domain.uuid, domain.virt_type) == (spec.name, UUID, spec.virt_type)
    assert (domain.vcpus, domain.ram_mb) == (spec.flavor.vcpus, spec.flavor.ram_mb)
    assert domain.managed_nics() == spec.nics
    assert dict((role, {"pool": domain.disk_for_role(role)["pool"], "name": domain.disk_for_role(role)["volume"]})
                for role in spec.volumes) == spec.volumes

    record, wanted = domain.record, spec.record
    assert record.flavor == spec.flavor
    for attr in ("created", "spec_hash", "image", "config_drive_hash", "volumes", "metadata", "tags", "hostname",
                 "extra"):
        assert getattr(record, attr) == getattr(wanted, attr), attr


@pytest.mark.parametrize("case", sorted(SPECS))
def test_libvirt_accepts_the_rendering_and_its_rewrite_parses_to_the_same_values(case, client):
    spec = make_spec(**SPECS[case])
    dom = client.define_domain(render_domain(spec))
    domain = Domain(client.domain_xml(dom, inactive=True))

    assert (domain.vcpus, domain.ram_mb, domain.virt_type) == (spec.flavor.vcpus, spec.flavor.ram_mb, spec.virt_type)
    assert domain.managed_nics() == spec.nics
    assert domain.record.flavor == spec.flavor
    assert domain.record.volumes == spec.volumes
    assert domain.record.metadata == spec.record.metadata


@pytest.mark.parametrize("case", sorted(SPECS))
def test_rendering_over_libvirts_own_xml_reports_no_change(case, client):
    """libvirt adds controllers, video, addresses and target names; none of that is a change of ours."""
    spec = make_spec(**SPECS[case])
    dom = client.define_domain(render_domain(spec))
    libvirt_xml = client.domain_xml(dom, inactive=True)

    assert canonical(render_domain(spec, base_xml=libvirt_xml)) == canonical(libvirt_xml)


def test_metadata_lives_in_our_namespace_and_marks_the_domain_managed():
    xml = render_domain(make_spec())
    root = ET.fromstring(xml)
    instance = root.find("metadata/{%s}instance" % NAMESPACE)

    assert instance is not None
    assert instance.findtext("{%s}managed-by" % NAMESPACE) == "virtfleet.compute"
    assert 'xmlns:virtfleet="%s"' % NAMESPACE in xml
    assert Domain(xml).managed


@pytest.mark.parametrize("metadata", [
    "",
    "<metadata/>",
    "<metadata><other:instance xmlns:other='urn:someone-else'/></metadata>",
    "<metadata><instance/></metadata>",
])
def test_a_domain_without_our_metadata_element_is_not_managed(metadata):
    xml = "<domain type='kvm'><name>x</name>%s<memory>1048576</memory><vcpu>1</vcpu></domain>" % metadata
    domain = Domain(xml)

    assert not domain.managed
    assert domain.record is None


def test_rendering_replaces_our_metadata_and_keeps_other_namespaces():
    base = render_domain(make_spec(tags=["old"]))
    root = ET.fromstring(base)
    ET.SubElement(root.find("metadata"), "{urn:other}note").text = "kept"
    updated = ET.fromstring(render_domain(make_spec(tags=["new"]), base_xml=ET.tostring(root, encoding="unicode")))

    assert len(updated.findall("metadata/{%s}instance" % NAMESPACE)) == 1
    assert updated.findtext("metadata/{urn:other}note") == "kept"
    assert Domain(ET.tostring(updated, encoding="unicode")).record.tags == ["new"]


def _with_operator_additions(xml):
    """What an operator may add by hand: a device, an attribute on a managed disk, a CPU mode, a custom NIC."""
    root = ET.fromstring(xml)
    ET.SubElement(root, "cpu", {"mode": "host-passthrough", "check": "none"})
    devices = root.find("devices")
    ET.SubElement(devices, "sound", {"model": "ich9"})
    cdrom = ET.SubElement(devices, "disk", {"type": "file", "device": "cdrom"})
    ET.SubElement(cdrom, "source", {"file": "/srv/iso/tools.iso"})
    ET.SubElement(cdrom, "target", {"dev": "sda", "bus": "sata"})
    direct = ET.SubElement(devices, "interface", {"type": "direct"})
    ET.SubElement(direct, "mac", {"address": "52:54:00:de:ad:01"})
    ET.SubElement(direct, "source", {"dev": "eth9", "mode": "bridge"})
    for disk in devices.findall("disk"):
        if disk.findtext("serial") == "root":
            disk.find("driver").set("cache", "none")
            disk.find("driver").set("discard", "unmap")
    return ET.tostring(root, encoding="unicode")


def test_unchanged_spec_over_operator_additions_is_no_change():
    spec = make_spec(roles=("root", "config", "swap"), swap_mb=256)
    base = _with_operator_additions(render_domain(spec))

    assert canonical(render_domain(spec, base_xml=base)) == canonical(base)


@pytest.mark.parametrize("change", [dict(vcpus=4), dict(ram_mb=2048), dict(tags=["x"]),
                                    dict(nics=[Nic("bridge", "br0", "52:54:00:00:00:01")])])
def test_a_managed_change_keeps_every_operator_addition(change):
    base = _with_operator_additions(render_domain(make_spec()))
    new_xml = render_domain(make_spec(**change), base_xml=base)
    root = ET.fromstring(new_xml)

    assert canonical(new_xml) != canonical(base)
    assert root.find("cpu").attrib == {"mode": "host-passthrough", "check": "none"}
    assert root.find("devices/sound").get("model") == "ich9"
    assert [d.get("device") for d in root.findall("devices/disk") if d.findtext("serial") is None] == ["cdrom"]
    assert [i.get("type") for i in root.findall("devices/interface") if i.get("type") == "direct"] == ["direct"]
    root_disk = [d for d in root.findall("devices/disk") if d.findtext("serial") == "root"][0]
    assert root_disk.find("driver").get("cache") == "none"


@pytest.mark.parametrize("xml_text", [
    ("<a x='1' y='2'><b>t</b></a>", "<a y='2' x='1'>\n  <b> t </b>\n</a>"),
])
def test_canonical_ignores_formatting_and_attribute_order(xml_text):
    assert canonical(xml_text[0]) == canonical(xml_text[1])


@pytest.mark.parametrize("other", ["<a x='1' y='3'><b>t</b></a>", "<a x='1' y='2'><b>u</b></a>",
                                   "<a x='1' y='2'><b>t</b><c/></a>", "<a x='1' y='2'><c>t</c></a>"])
def test_canonical_sees_attribute_text_and_child_changes(other):
    assert canonical("<a x='1' y='2'><b>t</b></a>") != canonical(other)


# -- NICs, keyed by MAC ------------------------------------------------------------------------------------------

MAC_A, MAC_B, MAC_C = "52:54:00:00:00:0a", "52:54:00:00:00:0b", "52:54:00:00:00:0c"


def _ifaces(xml):
    """{mac: (type, source, model, target dev)} of the network/bridge interfaces, in document order."""
    out = []
    for iface in ET.fromstring(xml).findall("devices/interface"):
        kind = iface.get("type")
        source = iface.find("source")
        target = iface.find("target")
        out.append((iface.find("mac").get("address"), kind, source.get(kind) if source is not None else None,
                    iface.find("model").get("type") if iface.find("model") is not None else None,
                    target.get("dev") if target is not None else None))
    return out


def _base_with_libvirt_targets(nics):
    """A rendered domain whose interfaces carry a <target> libvirt added: it must survive a source change."""
    root = ET.fromstring(render_domain(make_spec(nics=nics)))
    for index, iface in enumerate(root.findall("devices/interface")):
        ET.SubElement(iface, "target", {"dev": "vnet%d" % index})
    return ET.tostring(root, encoding="unicode")


@pytest.mark.parametrize("old, new, expected", [
    pytest.param([Nic("network", "default", MAC_A)],
                 [Nic("network", "default", MAC_A), Nic("bridge", "br0", MAC_B)],
                 [(MAC_A, "network", "default", "virtio", "vnet0"), (MAC_B, "bridge", "br0", "virtio", None)],
                 id="add-keeps-existing"),
    pytest.param([Nic("network", "default", MAC_A), Nic("bridge", "br0", MAC_B)],
                 [Nic("bridge", "br0", MAC_B)],
                 [(MAC_B, "bridge", "br0", "virtio", "vnet1")],
                 id="remove-by-mac"),
    pytest.param([Nic("network", "default", MAC_A), Nic("bridge", "br0", MAC_B)],
                 [Nic("network", "other", MAC_A), Nic("bridge", "br1", MAC_B, model="e1000")],
                 [(MAC_A, "network", "other", "virtio", "vnet0"), (MAC_B, "bridge", "br1", "e1000", "vnet1")],
                 id="source-and-model-change-in-place"),
    pytest.param([Nic("network", "default", MAC_A)],
                 [Nic("bridge", "br0", MAC_A)],
                 [(MAC_A, "bridge", "br0", "virtio", None)],
                 id="kind-change-replaces-interface"),
    pytest.param([Nic("network", "default", MAC_A), Nic("network", "default", MAC_B)],
                 [Nic("network", "default", MAC_C)],
                 [(MAC_C, "network", "default", "virtio", None)],
                 id="replace-all"),
])
def test_nics_are_added_removed_and_changed_by_mac(old, new, expected):
    base = _base_with_libvirt_targets(old)
    updated = render_domain(make_spec(nics=new), base_xml=base)

    assert _ifaces(updated) == expected
    assert Domain(updated).managed_nics() == new


def test_nic_macs_match_case_insensitively():
    base = render_domain(make_spec(nics=[Nic("network", "default", MAC_A.upper())]))
    assert 'address="%s"' % MAC_A in base
    assert canonical(render_domain(make_spec(nics=[Nic("network", "default", MAC_A)]), base_xml=base)) == \
        canonical(base)


def test_interfaces_of_other_types_are_not_managed_nics():
    base = _with_operator_additions(render_domain(make_spec(nics=[])))
    assert Domain(base).managed_nics() == []
    updated = render_domain(make_spec(nics=[]), base_xml=base)
    assert [i.get("type") for i in ET.fromstring(updated).findall("devices/interface")] == ["direct"]


# -- disks -------------------------------------------------------------------------------------------------------

ROLE_FACTS = {
    # role: (target, serial, format, read-only)
    "root": ("vda", "root", "qcow2", False),
    "config": ("vdb", "config-drive", "raw", True),
    "ephemeral": ("vdc", "ephemeral0", "qcow2", False),
    "swap": ("vdd", "swap0", "qcow2", False),
}


@pytest.mark.parametrize("roles", [("root",), ("root", "config"), ("root", "config", "swap"),
                                   ("root", "config", "ephemeral"), ("root", "config", "ephemeral", "swap")])
def test_every_disk_role_has_its_fixed_target_serial_format_and_mode(roles):
    spec = make_spec(roles=roles)
    root = ET.fromstring(render_domain(spec))
    domain = Domain(render_domain(spec))

    assert sorted(d["serial"] for d in domain.disks) == sorted(ROLE_FACTS[r][1] for r in roles)
    for role in roles:
        target, serial, fmt, readonly = ROLE_FACTS[role]
        disk = domain.disk_for_role(role)
        assert (disk["target"], disk["serial"], disk["format"], disk["readonly"]) == (target, serial, fmt, readonly)
        assert (disk["type"], disk["bus"], disk["pool"]) == ("volume", "virtio", POOL)
        assert DISK_TARGETS[role] == target
    boots = [d.findtext("serial") for d in root.findall("devices/disk") if d.find("boot") is not None]
    assert boots == ["root"]


def test_adding_and_removing_optional_disks_never_renames_the_others():
    base = render_domain(make_spec(roles=("root", "config", "swap")))
    grown = render_domain(make_spec(roles=("root", "config", "ephemeral", "swap")), base_xml=base)
    shrunk = render_domain(make_spec(roles=("root", "config", "ephemeral")), base_xml=grown)

    targets = [dict((d["serial"], d["target"]) for d in Domain(x).disks) for x in (base, grown, shrunk)]
    assert targets == [
        {"root": "vda", "config-drive": "vdb", "swap0": "vdd"},
        {"root": "vda", "config-drive": "vdb", "ephemeral0": "vdc", "swap0": "vdd"},
        {"root": "vda", "config-drive": "vdb", "ephemeral0": "vdc"},
    ]


def test_a_new_disk_is_placed_among_our_disks_in_role_order():
    base = render_domain(make_spec(roles=("root", "config", "swap")))
    grown = render_domain(make_spec(roles=("root", "config", "ephemeral", "swap")), base_xml=base)
    assert [d.findtext("serial") for d in ET.fromstring(grown).findall("devices/disk")] == \
        ["root", "config-drive", "ephemeral0", "swap0"]


def test_a_disk_whose_volume_changed_points_at_the_new_volume():
    base = render_domain(make_spec(roles=("root", "config")))
    spec = make_spec(roles=("root", "config"))
    spec.volumes["root"] = {"pool": "other-pool", "name": "web1-root-new.qcow2"}
    disk = Domain(render_domain(spec, base_xml=base)).disk_for_role("root")
    assert (disk["pool"], disk["volume"], disk["target"]) == ("other-pool", "web1-root-new.qcow2", "vda")


# -- MACs, names, hashes, memory ---------------------------------------------------------------------------------

NAMES = ["web1", "db-01", "a", "x" * 63, "node-%d" % 7]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("index", [0, 1, 7])
def test_derived_mac_is_stable_unicast_and_in_qemus_local_prefix(name, index):
    mac = derive_mac(name, index)
    first = int(mac.split(":")[0], 16)

    assert mac == derive_mac(name, index)
    assert re.match(r"^52:54:00(:[0-9a-f]{2}){3}$", mac)
    assert first & 1 == 0  # unicast
    assert first & 2 == 2  # locally administered


def test_derived_macs_differ_between_nics_and_servers():
    macs = set(derive_mac(name, index) for name in NAMES for index in range(4))
    assert len(macs) == len(NAMES) * 4


def test_derived_mac_is_pinned_so_upgrades_do_not_change_guest_macs():
    # A server's MAC must survive a collection upgrade: the derivation is part of the contract.
    assert derive_mac("web1", 0) == "52:54:00:d4:e9:41"


@pytest.mark.parametrize("role, name", [("root", "web1-root-8f4c2a9e.qcow2"), ("config", "web1-config-8f4c2a9e.iso"),
                                        ("ephemeral", "web1-ephemeral-8f4c2a9e.qcow2"),
                                        ("swap", "web1-swap-8f4c2a9e.qcow2")])
def test_volume_names_carry_server_role_and_uuid_prefix(role, name):
    assert volume_name("web1", UUID, role) == name


def test_spec_hash_ignores_key_order_and_sees_values():
    assert spec_hash({"a": 1, "b": [1, 2]}) == spec_hash({"b": [1, 2], "a": 1})
    assert spec_hash({"a": 1, "b": [1, 2]}) != spec_hash({"a": 1, "b": [2, 1]})
    assert re.match(r"^[0-9a-f]{64}$", spec_hash({}))


@pytest.mark.parametrize("unit, amount, ram_mb", [
    (None, 1048576, 1024),          # libvirt's default unit is KiB
    ("KiB", 2097152, 2048),
    ("k", 524288, 512),
    ("MiB", 768, 768),
    ("M", 4096, 4096),
    ("GiB", 2, 2048),
    ("G", 1, 1024),
    ("bytes", 512 * 1024 ** 2, 512),
    ("b", GIB, 1024),
    ("KB", 1048576, 1000),          # decimal units are powers of 1000
    ("MB", 2000, 1907),             # 2e9 bytes, floored to whole MiB
    ("GB", 1, 953),
    ("TiB", 1, 1024 * 1024),
])
def test_memory_units_are_parsed_to_mib(unit, amount, ram_mb):
    attr = " unit='%s'" % unit if unit else ""
    domain = Domain("<domain type='kvm'><name>m</name><memory%s>%d</memory><vcpu>1</vcpu></domain>"
                    % (attr, amount))
    assert domain.ram_mb == ram_mb


def test_an_unknown_memory_unit_is_a_validation_error():
    with pytest.raises(ValidationError, match="furlongs"):
        Domain("<domain type='kvm'><name>m</name><memory unit='furlongs'>1</memory></domain>")


def test_rendered_memory_is_in_kib_for_memory_and_current_memory():
    root = ET.fromstring(render_domain(make_spec(ram_mb=1536)))
    for tag in ("memory", "currentMemory"):
        assert (root.find(tag).get("unit"), root.find(tag).text) == ("KiB", str(1536 * 1024))


def test_rendering_over_a_vcpu_with_current_drops_the_hotplug_limit():
    base = render_domain(make_spec(vcpus=4)).replace("<vcpu placement=\"static\">4</vcpu>",
                                                     "<vcpu placement=\"static\" current=\"2\">4</vcpu>")
    assert 'current="2"' in base
    root = ET.fromstring(render_domain(make_spec(vcpus=4), base_xml=base))
    assert root.find("vcpu").attrib == {"placement": "static"}
    assert root.find("vcpu").text == "4"
