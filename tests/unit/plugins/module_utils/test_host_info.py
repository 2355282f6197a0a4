# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""host_info (Nova's hypervisor-show) and the host record, against an in-memory libvirt host.

``FakeHost`` stands in for LibvirtClient: domains, pools, volumes with content, and a lock-safe atomic volume
create, so test_claims and test_flavor use it too.
"""

import threading
import uuid as uuidlib
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils import _capacity
from ansible_collections.virtfleet.compute.plugins.module_utils._domain import (
    DomainSpec,
    ServerRecord,
    render_domain,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import (
    HostUnavailableError,
    LibvirtOperationError,
    NotFoundError,
    ValidationError,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._flavor import Flavor
from ansible_collections.virtfleet.compute.plugins.module_utils._host_info import (
    SCHEDULER_KEYS,
    host_info,
    numa_cpu_cells,
    taken_cpus,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._host_record import (
    DEFAULTS,
    converge_host,
    read_host_record,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._records import RecordStore
from ansible_collections.virtfleet.compute.plugins.module_utils._scheduler import scheduler as _scheduler

GIB = 1024 ** 3


# -- an in-memory libvirt host ------------------------------------------------------------------------------------

class FakeVolume:
    def __init__(self, name, capacity):
        self._name = name
        self.capacity = capacity
        self.data = b""
        self.deleted = False

    def name(self):
        return self._name


class FakePool:
    def __init__(self, name, capacity=100 * GIB, available=80 * GIB, active=True):
        self._name = name
        self.capacity = capacity
        self.available = available
        self.active = active
        self.volumes = {}

    def name(self):
        return self._name

    def isActive(self):  # noqa: N802 - libvirt's spelling
        return self.active


class FakeDomain:
    def __init__(self, xml, active=False, disk_capacity=None):
        self.xml = xml
        self.active = active
        self.disk_capacity = disk_capacity or {}
        root = ET.fromstring(xml)
        self._name = root.findtext("name")
        self._uuid = root.findtext("uuid") or str(uuidlib.uuid4())
        self.undefined = False

    def name(self):
        return self._name

    def UUIDString(self):  # noqa: N802 - libvirt's spelling
        return self._uuid


class FakeHost:
    """Just enough of LibvirtClient for host_info, records, claims and the flavor catalog."""

    def __init__(self, cpus=4, memory_mb=8192, uri="fake:///host", hostname="fake-host", down=False):
        self.uri = uri
        self.name = hostname
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.down = down
        self.domains = []
        self.pools = {"virtfleet-instances": FakePool("virtfleet-instances")}
        self.mutex = threading.Lock()
        self.calls = []
        self.free_huge = {}  # {cell: {page size KiB: free pages}}, as libvirt's getFreePages answers

    # helpers for tests
    def add_domain(self, xml, active=False, disk_capacity=None):
        dom = FakeDomain(xml, active, disk_capacity)
        with self.mutex:
            self.domains.append(dom)
        return dom

    def remove_domain(self, name):
        with self.mutex:
            for dom in list(self.domains):
                if dom.name() == name:
                    dom.undefined = True
                    self.domains.remove(dom)

    def _check_up(self):
        if self.down:
            raise HostUnavailableError("cannot connect to libvirt at %s: no route to host" % self.uri, field="uri")

    # connection
    def hostname(self):
        self._check_up()
        return self.name

    def node_info(self):
        self._check_up()
        return ["x86_64", self.memory_mb, self.cpus, 2600, 1, 1, self.cpus, 1]

    def versions(self):
        return {"libvirt": "9.0.0", "hypervisor": "7.2.0", "hypervisor_type": "QEMU"}

    def capabilities(self):
        return ET.fromstring(CAPABILITIES)

    def free_pages(self, sizes_kib, cells):
        return dict((cell, dict((size, self.free_huge.get(cell, {}).get(size, 0)) for size in sizes_kib))
                    for cell in cells)

    def expanded_cpu_features(self, cpu_xml):
        return sorted(["sse", "sse2", "pni", "avx2", "vmx", "fpu"])

    # domains
    def list_domains(self):
        with self.mutex:
            return list(self.domains)

    def list_active_domains(self):
        with self.mutex:
            return [d for d in self.domains if d.active]

    def domain_uuid(self, dom):
        return dom.UUIDString()

    def domain_xml_if_exists(self, dom, inactive=True):
        return None if dom.undefined else dom.xml

    def domain_disk_capacity(self, dom, target):
        return dom.disk_capacity.get(target)

    def domain_disk_size(self, dom, disk):
        return self.domain_disk_capacity(dom, disk["target"])

    def define_domain(self, xml):
        return self.add_domain(xml)

    # pools and volumes
    def find_pool(self, name):
        return self.pools.get(name)

    def lookup_pool(self, name, field=None):
        pool = self.pools.get(name)
        if pool is None or not pool.active:
            raise NotFoundError("storage pool '%s' does not exist" % name, field=field)
        return pool

    def pool_active(self, pool):
        self._check_up()
        return pool.active

    def pool_name(self, pool):
        return pool.name()

    def pool_info(self, pool):
        return {"active": pool.active, "capacity": pool.capacity, "allocation": pool.capacity - pool.available,
                "available": pool.available}

    def define_pool(self, xml):
        name = ET.fromstring(xml).findtext("name")
        with self.mutex:
            if name in self.pools:
                raise LibvirtOperationError("pool %s already exists" % name)
            self.pools[name] = FakePool(name, active=False)
            return self.pools[name]

    def build_pool(self, pool):
        pass

    def start_pool(self, pool):
        pool.active = True

    def set_pool_autostart(self, pool, enabled):
        pass

    def lookup_volume(self, pool, name):
        with self.mutex:
            return pool.volumes.get(name)

    def list_volumes(self, pool):
        with self.mutex:
            return list(pool.volumes.values())

    def create_volume_unless_exists(self, pool, xml):
        root = ET.fromstring(xml)
        name = root.findtext("name")
        with self.mutex:  # libvirt checks the name and adds the volume under the pool's lock
            if name in pool.volumes:
                return None
            vol = FakeVolume(name, int(root.findtext("capacity")))
            pool.volumes[name] = vol
            self.calls.append(("create", name))
            return vol

    def create_volume(self, pool, xml):
        vol = self.create_volume_unless_exists(pool, xml)
        if vol is None:
            raise LibvirtOperationError("volume exists")
        return vol

    def delete_volume_if_exists(self, vol):
        with self.mutex:
            for pool in self.pools.values():
                if pool.volumes.get(vol.name()) is vol:
                    del pool.volumes[vol.name()]
                    vol.deleted = True
                    self.calls.append(("delete", vol.name()))
                    return True
            return False

    def delete_volume(self, vol):
        if not self.delete_volume_if_exists(vol):
            raise LibvirtOperationError("no volume %s" % vol.name())

    def volume_info(self, vol):
        return {"capacity": vol.capacity, "allocation": len(vol.data)}

    def resize_volume(self, vol, capacity):
        vol.capacity = capacity

    def upload_bytes(self, vol, data):
        if vol.deleted:
            raise LibvirtOperationError("volume %s is gone" % vol.name())
        if len(data) > vol.capacity:
            raise LibvirtOperationError("too much data for %s" % vol.name())
        vol.data = bytes(data)

    def download_bytes(self, vol, length=0):
        if vol.deleted:
            raise LibvirtOperationError("volume %s is gone" % vol.name())
        return vol.data + b"\0" * (vol.capacity - len(vol.data))


CAPABILITIES = """<capabilities><host><uuid>11111111-2222-3333-4444-555555555555</uuid>
<cpu><arch>x86_64</arch><model>Haswell</model><vendor>Intel</vendor>
<topology sockets='1' dies='1' cores='4' threads='1'/><feature name='vmx'/></cpu>
<topology><cells num='2'>
<cell id='0'><memory unit='KiB'>4194304</memory><pages unit='KiB' size='4'>1048576</pages>
<pages unit='KiB' size='2048'>16</pages><cpus num='2'><cpu id='0'/><cpu id='1'/></cpus></cell>
<cell id='1'><memory unit='KiB'>4194304</memory><cpus num='2'><cpu id='2'/><cpu id='3'/></cpus></cell>
</cells></topology></host></capabilities>"""


def managed_xml(name, vcpus=1, ram_mb=512, disk_gb=10, swap_mb=0, ephemeral_gb=0, flavor_name="m1.small",
                extra=None, extra_specs=None, host_cpus=None, taken_cpus=(), more_volumes=None):
    flavor = Flavor(vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb, swap_mb=swap_mb, ephemeral_gb=ephemeral_gb,
                    name=flavor_name, extra_specs=extra_specs)
    record = ServerRecord(created="2026-01-01T00:00:00Z", spec_hash="x", flavor=flavor,
                          image={"pool": "virtfleet-images", "name": "img"},
                          volumes=dict({"root": {"pool": "virtfleet-instances", "name": "%s-root-1.qcow2" % name}},
                                       **(more_volumes or {})),
                          extra=extra)
    spec = DomainSpec(name, str(uuidlib.uuid4()), "qemu", flavor, [],
                      {"root": {"pool": "virtfleet-instances", "name": "%s-root-1.qcow2" % name}}, record,
                      host_cpus=host_cpus, taken_cpus=taken_cpus)
    return render_domain(spec)


def unmanaged_xml(name, vcpus=2, memory_kib=1048576, disks=(("vda", "disk", False),)):
    devices = "".join(
        "<disk type='file' device='%s'><source file='/x/%s-%s'/><target dev='%s' bus='virtio'/>%s</disk>"
        % (device, name, target, target, "<readonly/>" if readonly else "") for target, device, readonly in disks)
    return ("<domain type='qemu'><name>%s</name><uuid>%s</uuid><memory unit='KiB'>%d</memory><vcpu>%d</vcpu>"
            "<os><type>hvm</type></os><devices>%s</devices></domain>" % (name, uuidlib.uuid4(), memory_kib, vcpus,
                                                                         devices))


@pytest.fixture
def fake():
    return FakeHost()


# -- usage ----------------------------------------------------------------------------------------------------------

def test_empty_host_has_capacity_after_nova_defaults(fake):
    host = host_info(fake)
    assert host["up"] is True and host["enabled"] is True and host["state"] == "up"
    assert host["vcpus"] == 4 and host["vcpus_used"] == 0
    assert host["memory_mb"] == 8192 and host["memory_mb_used"] == 0
    assert host["local_gb"] == 100 and host["local_gb_used"] == 0 and host["disk_available_least"] == 80
    assert host["capacity"]["vcpus"]["capacity"] == 4 * 16.0
    assert host["capacity"]["memory_mb"]["capacity"] == (8192 - 512) * 1.5
    assert host["record_stored"] is False
    assert host["availability_zone"] == "nova"


def test_managed_servers_count_their_flavor_snapshot(fake):
    fake.add_domain(managed_xml("a", vcpus=2, ram_mb=1024, disk_gb=10, swap_mb=512, ephemeral_gb=5), active=True)
    fake.add_domain(managed_xml("b", vcpus=1, ram_mb=256, disk_gb=0, flavor_name="tiny",
                                extra={"server_group": "web"}))
    host = host_info(fake)
    # Disk: root + ephemeral + swap rounded up to whole GiB, as Nova claims it; disk_gb 0 claims nothing.
    assert host["vcpus_used"] == 3
    assert host["memory_mb_used"] == 1280
    assert host["local_gb_used"] == 10 + 5 + 1
    assert host["running_vms"] == 1
    assert [s["name"] for s in host["servers"]] == ["a", "b"]
    assert host["servers"][0]["state"] == "running" and host["servers"][1]["state"] == "stopped"
    assert host["servers"][1]["server_group"] == "web"
    assert "server_group" not in host["servers"][0]
    assert host["servers"][0]["flavor"] == "m1.small"
    assert host["unmanaged_domains"] == []


def _volume(pool, name, size):
    vol = FakeVolume(name, size)
    pool.volumes[name] = vol
    return vol


def test_volumes_we_made_count_by_capacity_next_to_the_servers(fake):
    """Data volumes, offloaded shelved disks, rescue disks and images copied for a migration all take disk on the
    host; images the operator imported and volumes nobody recorded do not (issue 23)."""
    instances = fake.pools["virtfleet-instances"]
    for name in ("virtfleet-volumes", "virtfleet-images"):
        fake.pools[name] = FakePool(name)  # same size as the instance pool: the same filesystem
    records = RecordStore(fake)
    records.ensure_pool()
    _volume(fake.pools["virtfleet-volumes"], "data", 2 * GIB + 1)  # a partial GiB takes a whole one: 3
    records.write("volume@virtfleet-volumes@data", {"pool": "virtfleet-volumes", "name": "data"})
    _volume(fake.pools["virtfleet-volumes"], "by-hand", 50 * GIB)  # not ours: not counted as a volume
    _volume(fake.pools["virtfleet-images"], "web-shelved-1.qcow2", 5 * GIB)
    records.write("shelved-web", {"name": "web", "saved": {
        "root": {"pool": "virtfleet-images", "name": "web-shelved-1.qcow2"}}})
    _volume(fake.pools["virtfleet-images"], "copied.raw", GIB)
    _volume(fake.pools["virtfleet-images"], "imported.qcow2", 7 * GIB)
    records.write("images", {"virtfleet-images/copied.raw": {"source": "copied from qemu+ssh://other/system"},
                             "virtfleet-images/imported.qcow2": {"source": "/srv/imported.qcow2"}})
    _volume(instances, "db-rescue-1.qcow2", 2 * GIB)
    fake.add_domain(managed_xml("db", disk_gb=10, more_volumes={
        "rescue": {"pool": "virtfleet-instances", "name": "db-rescue-1.qcow2"}}))
    host = host_info(fake)
    kinds = dict(((v["pool"], v["name"]), (v["kind"], v["owner"], v["capacity_gb"], v["filesystem"]))
                 for v in host["local_volumes"])
    assert kinds == {
        ("virtfleet-volumes", "data"): ("volume", "data", 3, 0),
        ("virtfleet-images", "web-shelved-1.qcow2"): ("shelved", "web", 5, 0),
        ("virtfleet-images", "copied.raw"): ("image_copy", None, 1, 0),
        ("virtfleet-instances", "db-rescue-1.qcow2"): ("rescue", "db", 2, 0),
    }
    assert host["local_disk"] == {"servers_gb": 10, "unmanaged_gb": 0, "volumes_gb": 3 + 5 + 1 + 2,
                                  "used_gb": 21, "allocation_gb": 20}
    assert host["local_gb_used"] == 21 and host["capacity"]["disk_gb"]["used"] == 21
    assert [fs["pools"] for fs in host["filesystems"]] == [
        ["virtfleet-images", "virtfleet-instances", "virtfleet-volumes"]]
    # The scheduler gets the same figure: 100 GB less 21 leaves room for a 79 GB server, not an 80 GB one.
    assert not _capacity.check_fit(host, {"vcpus": 1, "ram_mb": 1, "disk_gb": 79})
    assert _capacity.check_fit(host, {"vcpus": 1, "ram_mb": 1, "disk_gb": 80})
    with pytest.raises(_scheduler.NoValidHost) as err:
        _scheduler.Scheduler([host], seed=1).place({"name": "big", "flavor": {"vcpus": 1, "ram_mb": 1, "disk_gb": 80}})
    assert "DiskFilter" in err.value.reasons["fake-host"]
    assert _scheduler.Scheduler([host], seed=1).place(
        {"name": "fits", "flavor": {"vcpus": 1, "ram_mb": 1, "disk_gb": 79}}).host == "fake-host"


def test_a_pool_on_another_filesystem_is_a_capacity_of_its_own(fake):
    fake.pools["vf-ssd"] = FakePool("vf-ssd", capacity=30 * GIB, available=29 * GIB)
    records = RecordStore(fake)
    records.ensure_pool()
    _volume(fake.pools["vf-ssd"], "fast", 12 * GIB)
    records.write("volume@vf-ssd@fast", {"pool": "vf-ssd", "name": "fast"})
    converge_host(fake, {"disk_allocation_ratio": 2.0, "reserved_host_disk_mb": 10240})
    host = host_info(fake)
    assert host["local_gb_used"] == 0 and host["local_disk"]["volumes_gb"] == 0
    other = host["filesystems"][1]
    # The instance filesystem's reservation is not taken off another disk; the ratio applies to every disk.
    assert (other["instance"], other["pools"], other["total_gb"], other["reserved_gb"], other["capacity_gb"],
            other["used_gb"], other["free_gb"], other["allocation_gb"]) == (False, ["vf-ssd"], 30, 0, 60.0, 12, 48.0,
                                                                            1)
    assert host["filesystems"][0]["capacity_gb"] == (100 - 10) * 2.0
    assert [v["filesystem"] for v in host["local_volumes"]] == [1]


def test_dedicated_servers_take_host_cpus_and_list_their_pins(fake):
    fake.add_domain(managed_xml("pinned", vcpus=2, extra_specs={"hw:cpu_policy": "dedicated"}, host_cpus=4),
                    active=True)
    fake.add_domain(managed_xml("floating", vcpus=3))
    fake.add_domain(unmanaged_xml("legacy", vcpus=1), disk_capacity={"vda": 0})
    host = host_info(fake)
    pinned = next(s for s in host["servers"] if s["name"] == "pinned")
    assert host["vcpus_used"] == 2 + 3 + 1  # dedicated vCPUs still count in the shared vCPU capacity
    assert host["pcpus_used"] == 2 and pinned["pcpus"] == 2
    assert len(pinned["pinned_cpus"]) == 2 and host["pinned_cpus"] == pinned["pinned_cpus"]
    assert host["capacity"]["pcpus"]["free"] == 4 - 2
    assert taken_cpus(fake, "other") == set(pinned["pinned_cpus"]) and taken_cpus(fake, "pinned") == set()


def test_numa_cpu_cells_come_from_the_capabilities(fake):
    assert numa_cpu_cells(fake) == [[0, 1], [2, 3]]


def test_a_shelved_dedicated_server_keeps_its_host_cpus(fake):
    fake.add_domain(managed_xml("shelved", vcpus=2, extra_specs={"hw:cpu_policy": "dedicated"}, host_cpus=4,
                                extra={"vm_state": "shelved"}))
    host = host_info(fake)
    assert host["vcpus_used"] == 0 and host["memory_mb_used"] == 0
    assert host["pcpus_used"] == 2 and len(host["pinned_cpus"]) == 2


def test_unmanaged_domains_count_their_actual_allocation(fake):
    fake.add_domain(unmanaged_xml("legacy", vcpus=3, memory_kib=2 * 1048576,
                                  disks=(("vda", "disk", False), ("vdb", "disk", False), ("sda", "cdrom", True),
                                         ("vdc", "disk", True))),
                    active=True, disk_capacity={"vda": 20 * GIB, "vdb": GIB // 2, "sda": 4 * GIB, "vdc": 50 * GIB})
    host = host_info(fake)
    # The CD-ROM and the read-only disk never grow: left out. 20 GiB + 0.5 GiB rounds up to 21 GiB.
    assert host["vcpus_used"] == 3
    assert host["memory_mb_used"] == 2048
    assert host["local_gb_used"] == 21
    assert host["unmanaged_domains"] == [{"name": "legacy", "uuid": host["unmanaged_domains"][0]["uuid"],
                                          "state": "running", "vcpus": 3, "memory_mb": 2048, "disk_gb": 21}]
    assert host["servers"] == []


def test_unknown_disk_size_counts_nothing_rather_than_failing(fake):
    fake.add_domain(unmanaged_xml("odd"), disk_capacity={})
    assert host_info(fake)["local_gb_used"] == 0


def test_a_domain_undefined_during_the_scan_is_skipped(fake):
    dom = fake.add_domain(managed_xml("gone"))
    fake.add_domain(managed_xml("stays"))
    dom.undefined = True  # listed, then undefined before its XML was read
    assert [s["name"] for s in host_info(fake)["servers"]] == ["stays"]


def test_missing_instance_pool_means_no_local_disk(fake):
    host = host_info(fake, instance_pool="nope")
    assert host["local_gb"] == 0 and host["instance_pool"]["found"] is False


def test_record_values_reach_the_capacity(fake):
    converge_host(fake, {"cpu_allocation_ratio": 2.0, "ram_allocation_ratio": 1.0, "reserved_host_memory_mb": 1024,
                         "reserved_host_cpus": 1, "reserved_host_disk_mb": 1500, "availability_zone": "az1",
                         "aggregates": {"ssd": {"ssd": True}}, "traits": ["CUSTOM_GPU"]})
    host = host_info(fake)
    assert host["capacity"]["vcpus"]["capacity"] == (4 - 1) * 2.0
    assert host["capacity"]["memory_mb"]["capacity"] == 8192 - 1024
    assert host["capacity"]["disk_gb"]["capacity"] == 100 - 2  # 1500 MiB reserved rounds up to 2 GiB
    assert host["availability_zone"] == "az1"
    assert host["aggregates"] == {"ssd": {"ssd": "true"}}
    assert "CUSTOM_GPU" in host["traits"]
    assert host["record_stored"] is True


def test_hypervisor_details(fake):
    host = host_info(fake)
    assert host["hypervisor_type"] == "QEMU" and host["hypervisor_version"] == "7.2.0"
    assert host["cpu"]["model"] == "Haswell" and host["cpu"]["topology"]["cores"] == 4
    assert host["cpu"]["traits"] == ["HW_CPU_X86_AVX2", "HW_CPU_X86_SSE", "HW_CPU_X86_SSE2", "HW_CPU_X86_SSE3",
                                     "HW_CPU_X86_VMX"]
    assert set(host["cpu"]["traits"]) <= set(host["traits"])
    assert host["numa_cells"][0] == {"id": 0, "memory_mb": 4096, "cpus": [0, 1],
                                     "pages": [{"size_kb": 4, "count": 1048576}, {"size_kb": 2048, "count": 16}]}
    assert host["numa_cells"][1]["cpus"] == [2, 3]
    assert "cpu" not in host_info(fake, details=False)


def test_name_defaults_to_libvirt_hostname(fake):
    assert host_info(fake)["name"] == "fake-host"
    assert host_info(fake, name="compute-1")["name"] == "compute-1"


def test_unreachable_host_is_down_not_a_failure():
    host = host_info(FakeHost(down=True), name="h9")
    assert host["up"] is False and host["state"] == "down" and "no route to host" in host["error"]
    assert set(SCHEDULER_KEYS) <= set(host)


def test_every_key_the_scheduler_reads_is_there(fake):
    fake.add_domain(managed_xml("a"))
    assert set(SCHEDULER_KEYS) <= set(host_info(fake))


def test_scheduler_accepts_host_info_and_agrees_with_capacity(fake):
    converge_host(fake, {"ram_allocation_ratio": 1.0, "reserved_host_memory_mb": 8192 - 1024})
    fake.add_domain(managed_xml("a", ram_mb=512, extra={"server_group": "g"}))
    up = host_info(fake, name="up-host")
    down = host_info(FakeHost(down=True), name="down-host")
    scheduler = _scheduler.Scheduler([up, down], seed=1)
    fits = scheduler.place({"name": "b", "flavor": {"vcpus": 1, "ram_mb": 512, "disk_gb": 1}})
    assert fits.host == "up-host"
    with pytest.raises(_scheduler.NoValidHost) as err:
        scheduler.place({"name": "c", "flavor": {"vcpus": 1, "ram_mb": 512, "disk_gb": 1}})
    reasons = err.value.reasons
    assert "down" in reasons["down-host"] and "RamFilter" in reasons["up-host"]
    # The existing server stays where it is.
    assert scheduler.place({"name": "a", "flavor": {"vcpus": 1, "ram_mb": 512, "disk_gb": 10}}).existing


def test_disabled_host_is_skipped_by_the_scheduler(fake):
    converge_host(fake, {"enabled": False, "disabled_reason": "maintenance"})
    host = host_info(fake)
    assert host["enabled"] is False and host["status"] == "disabled" and host["disabled_reason"] == "maintenance"
    with pytest.raises(_scheduler.NoValidHost) as err:
        _scheduler.Scheduler([host]).place({"name": "x", "flavor": {"vcpus": 1, "ram_mb": 64, "disk_gb": 1}})
    assert "maintenance" in str(err.value)


def test_capacity_module_is_the_only_arithmetic(fake):
    fake.add_domain(managed_xml("a", vcpus=2, ram_mb=1024))
    host = host_info(fake)
    assert host["capacity"] == _capacity.capacity(host)


# -- host record ----------------------------------------------------------------------------------------------------

def test_record_defaults_are_novas(fake):
    record, stored = read_host_record(fake)
    assert stored is False
    assert record["cpu_allocation_ratio"] == 16.0 and record["ram_allocation_ratio"] == 1.5
    assert record["disk_allocation_ratio"] == 1.0 and record["reserved_host_memory_mb"] == 512
    assert record["availability_zone"] == "nova" and record["enabled"] is True and record["virt_type"] is None


def test_host_record_four_steps(fake):
    params = {"cpu_allocation_ratio": 4.0, "reserved_host_memory_mb": 2048, "traits": ["CUSTOM_B", "CUSTOM_A"]}
    check = converge_host(fake, params, check_mode=True, diff_mode=True)
    assert check["changed"] is True
    assert check["actions"][0].startswith("create storage pool virtfleet-records")
    assert "cpu_allocation_ratio 16.0 -> 4.0" in check["actions"][1]
    assert check["diff"]["before"]["cpu_allocation_ratio"] == 16.0
    assert check["diff"]["after"]["cpu_allocation_ratio"] == 4.0
    assert "virtfleet-records" not in fake.pools  # check mode changed nothing
    applied = converge_host(fake, params)
    assert applied["changed"] is True and applied["host"] == check["host"]
    assert applied["host"]["traits"] == ["CUSTOM_A", "CUSTOM_B"]
    again = converge_host(fake, params)
    assert again["changed"] is False and again["actions"] == []
    assert converge_host(fake, params, check_mode=True)["changed"] is False


def test_omitted_fields_keep_their_values(fake):
    converge_host(fake, {"cpu_allocation_ratio": 4.0})
    converge_host(fake, {"ram_allocation_ratio": 1.0})
    record, _stored = read_host_record(fake)
    assert record["cpu_allocation_ratio"] == 4.0 and record["ram_allocation_ratio"] == 1.0


def test_unknown_keys_of_a_newer_collection_are_kept(fake):
    RecordStore(fake).ensure_pool()
    RecordStore(fake).write("host", {"kvm_reasons": ["a"], "virt_type": "qemu"})
    converge_host(fake, {"cpu_allocation_ratio": 2.0})
    stored = RecordStore(fake).read("host")
    assert stored["kvm_reasons"] == ["a"] and stored["virt_type"] == "qemu"


def test_virt_type_verdict_is_what_the_server_module_reads(fake):
    converge_host(fake, {"virt_type": "qemu"})
    assert RecordStore(fake).read("host").get("virt_type") == "qemu"
    converge_host(fake, {"virt_type": "auto"})
    assert RecordStore(fake).read("host").get("virt_type") is None


def test_enable_clears_the_reason_as_nova_does(fake):
    converge_host(fake, {"enabled": False, "disabled_reason": "maintenance"})
    assert read_host_record(fake)[0]["disabled_reason"] == "maintenance"
    # Disabled again without a reason: the reason stays.
    assert converge_host(fake, {"enabled": False})["changed"] is False
    result = converge_host(fake, {"enabled": True}, diff_mode=True)
    assert result["host"]["disabled_reason"] is None
    assert result["diff"]["before"]["disabled_reason"] == "maintenance"


@pytest.mark.parametrize("params, field", [
    ({"cpu_allocation_ratio": 0}, "cpu_allocation_ratio"),
    ({"ram_allocation_ratio": -1.5}, "ram_allocation_ratio"),
    ({"disk_allocation_ratio": "lots"}, "disk_allocation_ratio"),
    ({"reserved_host_memory_mb": -1}, "reserved_host_memory_mb"),
    ({"reserved_host_cpus": 1.5}, "reserved_host_cpus"),
    ({"availability_zone": " az"}, "availability_zone"),
    ({"aggregates": {"a": ["x"]}}, "aggregates.a"),
    ({"aggregates": "ssd"}, "aggregates"),
    ({"traits": ["lower_case"]}, "traits[0]"),
    ({"virt_type": "xen"}, "virt_type"),
    ({"enabled": True, "disabled_reason": "why"}, "disabled_reason"),
    ({"disabled_reason": "host is enabled"}, "disabled_reason"),
])
def test_bad_host_records_are_refused_with_the_field(fake, params, field):
    with pytest.raises(ValidationError) as err:
        converge_host(fake, params)
    assert err.value.field == field
    assert "virtfleet-records" not in fake.pools


def test_record_defaults_cover_every_capacity_default():
    for key, value in _capacity.DEFAULTS.items():
        assert DEFAULTS[key] == value
