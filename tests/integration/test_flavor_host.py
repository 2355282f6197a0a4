"""Flavors, host records, host_info and claims on a real libvirtd.

These tests run against a libvirt daemon of their own (ENVIRONMENT.md's recipe: one libvirtd in a private mount
namespace, with its own config, state and socket). They declare a host full, disable it, and count every domain on
it; on the shared ``qemu:///system`` that would fail other runs going on at the same time, and other people's
domains would make the figures unpredictable. The private host shares this machine's CPUs and memory, so "room for
one server" is made with the host record's reserved_host_memory_mb, as a real operator would.
"""
import threading
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET

import pytest

from tests.integration.conftest import (
    HALT_IMAGE,
    IMAGE_POOL,
    INSTANCE_POOL,
    POOL_PATHS,
    ensure_pool,
    import_image,
    make_halt_image,
    run_playbook,
)

TARGETS = "tests/integration/targets/flavor_host"
PREFIX = "vf-t3-"


# -- a libvirtd of our own ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def private_uri():
    """A one-host lab (tests/lab): its own libvirtd, pools and network; the host record is reset per test."""
    from tests.lab.conftest import running_lab
    from tests.lab.lab import HostSpec

    with running_lab([HostSpec(PREFIX + "host")], "flavor-host") as lab:
        yield lab.uri(PREFIX + "host")


@pytest.fixture(scope="module")
def host(private_uri, tmp_path_factory):
    """A client of the private host, with the image and instance pools and the halt image."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._libvirt_client import LibvirtClient

    client = LibvirtClient(private_uri)
    for name in (IMAGE_POOL, INSTANCE_POOL):
        ensure_pool(client, name, POOL_PATHS[name])
    path = make_halt_image(str(tmp_path_factory.mktemp("vf-t3-halt") / "halt.qcow2"))
    import_image(client, HALT_IMAGE, path, "qcow2")
    yield client
    _cleanup(client)
    client.close()


@pytest.fixture
def clean_host(host):
    """The private host with default record and no test domains, before and after the test."""
    _cleanup(host)
    yield host
    _cleanup(host)


def _cleanup(client):
    """Remove every domain and instance volume named vf-t3-*, the host record, the flavor catalog and the locks."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._records import RecordStore

    for dom in client.list_domains():
        if client.domain_name(dom).startswith(PREFIX):
            client.destroy_domain(dom)
            client.undefine_domain(dom)
    pool = client.find_pool(INSTANCE_POOL)
    if pool is not None:
        for vol in client.list_volumes(pool):
            if vol.name().startswith(PREFIX):
                client.delete_volume(vol)
    store = RecordStore(client)
    for key in ("host", "flavors"):
        store.delete(key)
    records = client.find_pool(store.pool_name)
    if records is not None:
        for name in ("claim.lock", "flavors.lock"):
            vol = client.lookup_volume(records, name)
            if vol is not None:
                client.delete_volume(vol)


def _test_volumes(client):
    return sorted(v.name() for v in client.list_volumes(client.lookup_pool(INSTANCE_POOL)) if
                  v.name().startswith(PREFIX))


def _test_domains(client):
    return sorted(n for n in (client.domain_name(d) for d in client.list_domains()) if n.startswith(PREFIX))


# -- modules in four steps ------------------------------------------------------------------------------------------

def test_flavor_module_in_four_steps(clean_host, private_uri):
    run = run_playbook(TARGETS + "/flavor.yml", virtfleet_uri=private_uri)
    assert run.rc == 0, run
    assert run.stats["localhost"]["failed"] == 0
    from ansible_collections.virtfleet.compute.plugins.module_utils._flavor_catalog import read_catalog

    assert "vf-t3.small" not in read_catalog(clean_host)


def test_host_module_in_four_steps_and_down_hosts(clean_host, private_uri):
    run = run_playbook(TARGETS + "/host.yml", virtfleet_uri=private_uri)
    assert run.rc == 0, run
    assert run.stats["localhost"]["failed"] == 0


# -- host_info ------------------------------------------------------------------------------------------------------

def _unmanaged_xml(name, volume, image_path):
    return """<domain type='qemu'><name>%s</name><memory unit='MiB'>96</memory><vcpu>2</vcpu>
      <os><type arch='x86_64'>hvm</type></os><devices>
      <disk type='volume' device='disk'><driver name='qemu' type='qcow2'/>
        <source pool='%s' volume='%s'/><target dev='vda' bus='virtio'/></disk>
      <disk type='file' device='cdrom'><driver name='qemu' type='qcow2'/><source file='%s'/>
        <target dev='hdc' bus='ide'/><readonly/></disk>
      </devices></domain>""" % (name, INSTANCE_POOL, volume, image_path)


def _blank_volume(client, name, size):
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", {"unit": "bytes"}).text = str(size)
    ET.SubElement(ET.SubElement(root, "target"), "format", {"type": "qcow2"})
    return client.create_volume(client.lookup_pool(INSTANCE_POOL), ET.tostring(root, encoding="unicode"))


def _managed_xml(name, flavor, host_cpus):
    from ansible_collections.virtfleet.compute.plugins.module_utils._domain import (
        DomainSpec,
        ServerRecord,
        render_domain,
    )
    from ansible_collections.virtfleet.compute.plugins.module_utils._extra_specs import apply_extra_specs
    from ansible_collections.virtfleet.compute.plugins.module_utils._flavor import Flavor

    record = ServerRecord(created="2026-01-01T00:00:00Z", spec_hash="x", flavor=flavor,
                          image={"pool": IMAGE_POOL, "name": HALT_IMAGE}, volumes={})
    # The sizes only: the extra specs are applied below, whether or not render_domain applies them itself.
    sizes = Flavor(**flavor.size())
    xml = render_domain(DomainSpec(name, str(uuidlib.uuid4()), "qemu", sizes, [], {}, record))
    root = ET.fromstring(xml)
    apply_extra_specs(root, flavor, host_cpus=host_cpus)
    return ET.tostring(root, encoding="unicode")


def test_host_info_counts_every_domain(clean_host):
    from ansible_collections.virtfleet.compute.plugins.module_utils._flavor import Flavor
    from ansible_collections.virtfleet.compute.plugins.module_utils._host_info import host_info

    client = clean_host
    empty = host_info(client)
    assert empty["vcpus_used"] == 0 and empty["memory_mb_used"] == 0 and empty["servers"] == []
    gib = 1024 ** 3
    _blank_volume(client, PREFIX + "legacy-disk.qcow2", 3 * gib)
    image_path = client.volume_path(client.lookup_volume(client.lookup_pool(IMAGE_POOL), HALT_IMAGE))
    legacy = client.define_domain(_unmanaged_xml(PREFIX + "legacy", PREFIX + "legacy-disk.qcow2", image_path))
    flavor = Flavor(vcpus=3, ram_mb=128, disk_gb=4, swap_mb=100, ephemeral_gb=2, name="vf-t3.m")
    client.define_domain(_managed_xml(PREFIX + "managed", flavor, client.node_info()[2]))
    client.start_domain(legacy)
    try:
        info = host_info(client, name="private")
    finally:
        client.destroy_domain(legacy)
    # Unmanaged: 2 vCPUs, 96 MiB, its 3 GiB writable disk (the read-only CD-ROM never grows). Managed: its flavor,
    # root 4 + ephemeral 2 + swap 100 MiB rounded up to 1 GiB.
    assert info["vcpus_used"] == 2 + 3
    assert info["memory_mb_used"] == 96 + 128
    assert info["local_gb_used"] == 3 + 4 + 2 + 1
    assert info["running_vms"] == 1
    assert [s["name"] for s in info["servers"]] == [PREFIX + "managed"]
    assert info["servers"][0]["flavor"] == "vf-t3.m" and info["servers"][0]["state"] == "stopped"
    assert info["unmanaged_domains"][0]["name"] == PREFIX + "legacy"
    assert info["unmanaged_domains"][0]["disk_gb"] == 3
    assert info["instance_pool"]["found"] and info["local_gb"] > 0
    assert info["capacity"]["memory_mb"]["used"] == 224


# -- extra specs on the real daemon -------------------------------------------------------------------------------

def test_extra_specs_are_accepted_and_kept_in_libvirts_order(clean_host):
    from ansible_collections.virtfleet.compute.plugins.module_utils._domain import canonical
    from ansible_collections.virtfleet.compute.plugins.module_utils._extra_specs import apply_extra_specs
    from ansible_collections.virtfleet.compute.plugins.module_utils._flavor import Flavor

    client = clean_host
    specs = {
        "hw:cpu_policy": "dedicated", "hw:mem_page_size": "2048", "hw:watchdog_action": "reset",
        "quota:disk_read_iops_sec": "100", "quota:disk_write_bytes_sec": "1048576",
        "quota:vif_inbound_average": "1000", "quota:vif_inbound_peak": "2000", "quota:vif_outbound_average": "300",
    }
    flavor = Flavor.from_dict({"name": "vf-t3.specs", "vcpus": 2, "ram_mb": 64, "disk_gb": 1, "extra_specs": specs})
    host_cpus = client.node_info()[2]
    xml = _managed_xml(PREFIX + "specs", flavor, host_cpus)
    root = ET.fromstring(xml)
    # A disk and a NIC the way _domain renders them, so iotune and bandwidth have somewhere to go.
    devices = root.find("devices")
    disk = ET.SubElement(devices, "disk", {"type": "volume", "device": "disk"})
    ET.SubElement(disk, "driver", {"name": "qemu", "type": "qcow2"})
    ET.SubElement(disk, "source", {"pool": IMAGE_POOL, "volume": HALT_IMAGE})
    ET.SubElement(disk, "target", {"dev": "vda", "bus": "virtio"})
    ET.SubElement(disk, "serial").text = "root"
    nic = ET.SubElement(devices, "interface", {"type": "network"})
    ET.SubElement(nic, "mac", {"address": "52:54:00:aa:bb:cc"})
    ET.SubElement(nic, "source", {"network": "default"})
    ET.SubElement(nic, "model", {"type": "virtio"})
    apply_extra_specs(root, flavor, host_cpus=host_cpus)
    dom = client.define_domain(ET.tostring(root, encoding="unicode"))
    back = client.domain_xml(dom)

    # Applying the flavor to what libvirt wrote back changes nothing: a second converge is unchanged.
    again = ET.fromstring(back)
    apply_extra_specs(again, flavor, host_cpus=host_cpus)
    assert canonical(again) == canonical(back)
    # Removing every spec and rendering them again gives libvirt's own document (but for the PCI address libvirt
    # gives a new watchdog): new elements go where libvirt writes them.
    stripped = ET.fromstring(back)
    apply_extra_specs(stripped, Flavor(vcpus=2, ram_mb=64, disk_gb=1), host_cpus=host_cpus)
    assert stripped.find("cputune") is None and stripped.find("memoryBacking") is None
    assert stripped.find("devices/watchdog") is None
    apply_extra_specs(stripped, flavor, host_cpus=host_cpus)
    assert canonical(_without_addresses(stripped)) == canonical(_without_addresses(ET.fromstring(back)))
    parsed = ET.fromstring(back)
    assert len(parsed.findall("cputune/vcpupin")) == 2
    assert parsed.find("memoryBacking/hugepages/page").get("size") == "2048"
    assert [w.get("action") for w in parsed.findall("devices/watchdog")] == ["reset"]
    assert parsed.find("devices/disk/iotune/read_iops_sec").text == "100"
    assert parsed.find("devices/interface/bandwidth/inbound").get("peak") == "2000"


def _without_addresses(root):
    for parent in root.iter():
        for address in parent.findall("address"):
            parent.remove(address)
    return root


# -- claims through the server module -----------------------------------------------------------------------------

def _catalog_flavor(client, name, **sizes):
    from ansible_collections.virtfleet.compute.plugins.module_utils._flavor_catalog import converge_flavor

    params = {"name": name, "state": "present", "description": None, "extra_specs": None, "force": False,
              "swap_mb": None, "ephemeral_gb": None}
    params.update(sizes)
    converge_flavor(client, params)


def _room_for(client, ram_mb, count):
    """A host record leaving exactly ``count`` servers of ``ram_mb`` worth of RAM (ratio 1.0)."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._host_info import host_info
    from ansible_collections.virtfleet.compute.plugins.module_utils._host_record import converge_host

    info = host_info(client, details=False)
    reserved = info["memory_mb"] - info["memory_mb_used"] - ram_mb * count - ram_mb // 2
    converge_host(client, {"ram_allocation_ratio": 1.0, "reserved_host_memory_mb": reserved})


def _create(private_uri, name, flavor_name):
    return run_playbook(TARGETS + "/create.yml", virtfleet_uri=private_uri, server_name=name,
                        flavor_name=flavor_name, halt_image=HALT_IMAGE)


def test_server_from_catalog_flavor_keeps_its_snapshot(clean_host, private_uri):
    from ansible_collections.virtfleet.compute.plugins.module_utils._domain import Domain

    _catalog_flavor(clean_host, "vf-t3.wd", vcpus=1, ram_mb=64, disk_gb=1,
                    extra_specs={"hw:watchdog_action": "poweroff"})
    run = _create(private_uri, PREFIX + "wd", "vf-t3.wd")
    assert run.rc == 0, run
    domain = Domain(clean_host.domain_xml(clean_host.lookup_domain(PREFIX + "wd")))
    assert domain.record.flavor.name == "vf-t3.wd"
    assert domain.record.flavor.extra_specs == {"hw:watchdog_action": "poweroff"}
    assert [w.get("action") for w in domain.tree.findall("devices/watchdog")] == ["poweroff"]


def test_claim_refusal_leaves_nothing_behind(clean_host, private_uri):
    _catalog_flavor(clean_host, "vf-t3.big", vcpus=1, ram_mb=256, disk_gb=1)
    _room_for(clean_host, 128, 1)
    before = _test_volumes(clean_host)
    run = _create(private_uri, PREFIX + "big", "vf-t3.big")
    assert run.rc != 0, run
    assert "does not fit" in run.stdout and "requested 256 MB" in run.stdout and "capacity" in run.stdout, run
    assert _test_domains(clean_host) == [] and _test_volumes(clean_host) == before


def test_disabled_host_refuses_new_servers(clean_host, private_uri):
    from ansible_collections.virtfleet.compute.plugins.module_utils._host_record import converge_host

    _catalog_flavor(clean_host, "vf-t3.tiny", vcpus=1, ram_mb=64, disk_gb=1)
    converge_host(clean_host, {"enabled": False, "disabled_reason": "vf-t3 drain"})
    run = _create(private_uri, PREFIX + "drained", "vf-t3.tiny")
    assert run.rc != 0 and "disabled (vf-t3 drain)" in run.stdout, run
    assert _test_domains(clean_host) == [] and _test_volumes(clean_host) == []


def _race(client, private_uri, hold_lock):
    from ansible_collections.virtfleet.compute.plugins.module_utils._claims import ClaimLock

    _catalog_flavor(client, "vf-t3.race", vcpus=1, ram_mb=64, disk_gb=1)
    _room_for(client, 64, 1)
    names = [PREFIX + "race-a", PREFIX + "race-b"]
    runs = {}
    lock = ClaimLock(client)
    if hold_lock:
        # Both runs plan while the host is empty (both pass the planning check) and then queue on the claim lock:
        # the race is decided under the lock, deterministically, instead of by who started first.
        lock.acquire()
    threads = [threading.Thread(target=lambda n=n: runs.__setitem__(n, _create(private_uri, n, "vf-t3.race")))
               for n in names]
    try:
        for thread in threads:
            thread.start()
        if hold_lock:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and any(thread.is_alive() for thread in threads):
                made = _test_volumes(client)
                if all(any(v.startswith(n + "-root") for v in made) for n in names):
                    break
                time.sleep(0.2)
            time.sleep(0.5)
    finally:
        lock.release()
    for thread in threads:
        thread.join(300)
    return names, runs


@pytest.mark.parametrize("hold_lock", [True, False], ids=["decided-under-the-lock", "free-for-all"])
def test_two_creates_at_once_with_room_for_one(clean_host, private_uri, hold_lock):
    names, runs = _race(clean_host, private_uri, hold_lock)
    winners = [n for n in names if runs[n].rc == 0]
    losers = [n for n in names if runs[n].rc != 0]
    assert len(winners) == 1 and len(losers) == 1, runs
    loser = runs[losers[0]]
    assert "does not fit" in loser.stdout or "over its capacity" in loser.stdout, loser
    if hold_lock:
        # Both planned on an empty host; the loser lost under the lock and undid the disks it had made.
        assert "checked again under the host's claim lock) failed" in loser.stdout, loser
        assert "undone:" in loser.stdout and "create root disk" in loser.stdout, loser
    # Exactly one server exists; the loser left no domain, no volume, no lock.
    assert _test_domains(clean_host) == winners
    assert not [v for v in _test_volumes(clean_host) if v.startswith(losers[0] + "-")]
    records = clean_host.find_pool("virtfleet-records")
    assert clean_host.lookup_volume(records, "claim.lock") is None
    from ansible_collections.virtfleet.compute.plugins.module_utils._host_info import host_info

    info = host_info(clean_host, details=False)
    assert info["capacity"]["memory_mb"]["used"] <= info["capacity"]["memory_mb"]["capacity"]


def test_dedicated_servers_get_host_cpus_of_their_own(clean_host, private_uri):
    """As many one-vCPU dedicated servers as the host has CPUs for dedicated use, each pinned to a CPU of its own;
    one more is refused with the numbers and leaves nothing; a second run changes nothing; a pinned guest starts."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._domain import Domain
    from ansible_collections.virtfleet.compute.plugins.module_utils._host_info import host_info

    _catalog_flavor(clean_host, "vf-t3.pin", vcpus=1, ram_mb=64, disk_gb=1,
                    extra_specs={"hw:cpu_policy": "dedicated"})
    info = host_info(clean_host, details=False)
    room = info["capacity"]["pcpus"]["capacity"]
    assert room >= 1 and info["pcpus_used"] == 0
    names = [PREFIX + "pin-%d" % index for index in range(int(room))]
    for name in names:
        run = _create(private_uri, name, "vf-t3.pin")
        assert run.rc == 0, run
    pins = [Domain(clean_host.domain_xml(clean_host.lookup_domain(name))).pinned_cpus for name in names]
    assert all(len(p) == 1 for p in pins) and len(set(p[0] for p in pins)) == len(names), pins
    info = host_info(clean_host, details=False)
    assert info["pcpus_used"] == room and info["pinned_cpus"] == sorted(p[0] for p in pins)

    before = _test_volumes(clean_host)
    run = _create(private_uri, PREFIX + "pin-extra", "vf-t3.pin")
    assert run.rc != 0, run
    assert "dedicated CPUs: requested 1 dedicated CPUs, free 0 dedicated CPUs" in run.stdout, run
    assert PREFIX + "pin-extra" not in _test_domains(clean_host) and _test_volumes(clean_host) == before

    again = _create(private_uri, names[0], "vf-t3.pin")
    assert again.rc == 0 and again.stats["localhost"]["changed"] == 0, again
    # libvirt and QEMU accept the pins for a running guest (sched_setaffinity when there is no cgroup controller).
    dom = clean_host.lookup_domain(names[0])
    clean_host.start_domain(dom)
    assert clean_host.domain_state(dom) == "running"
    assert Domain(clean_host.domain_xml(dom)).pinned_cpus == pins[0]
