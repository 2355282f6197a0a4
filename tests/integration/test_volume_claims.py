"""Local volumes count against the host's disk, on a real libvirtd (issue 23).

A one-host lab of its own (tests/lab: its own libvirtd in a private mount namespace), so "room for one more 10 GB
server" is exact: the host record's reserved_host_disk_mb leaves just that much of the instance pool's filesystem,
as an operator would. No guest is booted: servers are defined with the halting image and left stopped.

A second filesystem is a tmpfs mounted before the lab starts (the lab's mount namespace is a copy of the machine's
at that moment); its pool is a capacity of its own.
"""
import os
import subprocess
import sys

import pytest

from tests.conftest import COLLECTIONS_PATH
from tests.integration.conftest import (
    HALT_IMAGE,
    IMAGE_POOL,
    INSTANCE_POOL,
    POOL_PATHS,
    ensure_pool,
    import_image,
    make_halt_image,
)

PREFIX = "vf-vc-"
VOLUME_POOL = "vf-vc-volumes"
VOLUME_POOL_PATH = "/var/lib/libvirt/virtfleet/vf-vc-volumes"
OTHER_POOL = "vf-vc-other"
OTHER_FS = "/tmp/vf-vc-otherfs"
OTHER_FS_GB = 8
GIB = 1024 ** 3


def _m(name):
    import importlib

    return importlib.import_module("ansible_collections.virtfleet.compute.plugins.module_utils.%s" % name)


@pytest.fixture(scope="module")
def other_fs():
    """A tmpfs of OTHER_FS_GB GiB, mounted before the lab starts so its libvirtd sees it; sparse files cost no RAM."""
    os.makedirs(OTHER_FS, exist_ok=True)
    subprocess.run(["umount", OTHER_FS], capture_output=True, check=False)
    subprocess.check_call(["mount", "-t", "tmpfs", "-o", "size=%dg" % OTHER_FS_GB, "vf-vc-otherfs", OTHER_FS])
    yield OTHER_FS
    subprocess.run(["umount", "-l", OTHER_FS], capture_output=True, check=False)


@pytest.fixture(scope="module")
def lab_uri(other_fs):
    from tests.lab.conftest import running_lab
    from tests.lab.lab import HostSpec

    with running_lab([HostSpec(PREFIX + "host", disk_gb=40)], "volume-claims") as lab:
        yield lab.uri(PREFIX + "host")


@pytest.fixture(scope="module")
def host(lab_uri, tmp_path_factory):
    client = _m("_libvirt_client").LibvirtClient(lab_uri)
    for name in (IMAGE_POOL, INSTANCE_POOL):
        ensure_pool(client, name, POOL_PATHS[name])
    ensure_pool(client, VOLUME_POOL, VOLUME_POOL_PATH)
    ensure_pool(client, OTHER_POOL, OTHER_FS + "/pool")
    path = make_halt_image(str(tmp_path_factory.mktemp("vf-vc-halt") / "halt.qcow2"))
    import_image(client, HALT_IMAGE, path, "qcow2")
    yield client
    _cleanup(client)
    client.close()


@pytest.fixture
def clean(host):
    _cleanup(host)
    yield host
    _cleanup(host)


def _cleanup(client):
    """Every vf-vc- domain, instance disk, volume (with its record) and the claim lock; the host record is reset."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._records import RecordStore

    for dom in client.list_domains():
        if client.domain_name(dom).startswith(PREFIX):
            if client.domain_active(dom):
                client.destroy_domain(dom)
            client.undefine_domain(dom)
    volume = _m("_volume")
    store = volume.VolumeStore(client)
    for record in store.list():
        if record["pool"] in (VOLUME_POOL, OTHER_POOL):
            volume.delete_volume_run(client, store, record["pool"], record["name"])()
    for name in (INSTANCE_POOL, VOLUME_POOL, OTHER_POOL):
        pool = client.find_pool(name)
        if pool is not None and pool.isActive():
            for vol in client.list_volumes(pool):
                if name != INSTANCE_POOL or vol.name().startswith(PREFIX):
                    client.delete_volume(vol)
    records = RecordStore(client)
    records.delete("host")
    pool = client.find_pool(records.pool_name)
    if pool is not None:
        vol = client.lookup_volume(pool, "claim.lock")
        if vol is not None:
            client.delete_volume(vol)
    # Back to the lab's record: 40 GB offered, ratio 1.0.
    _room(client, None)


def _room(client, free_gb):
    """Reserve the instance filesystem so exactly ``free_gb`` GB of disk is free (disk ratio 1.0); None: 40 GB."""
    info = _m("_host_info").host_info(client, details=False)
    offered = 40 if free_gb is None else info["local_gb_used"] + free_gb
    _m("_host_record").converge_host(client, {"disk_allocation_ratio": 1.0,
                                              "reserved_host_disk_mb": (info["local_gb"] - offered) * 1024})


def _flavor(gb):
    return {"name": "vf-vc.%dg" % gb, "vcpus": 1, "ram_mb": 64, "disk_gb": gb}


def _server(client, name, gb, check_mode=False):
    params = {"name": PREFIX + name, "flavor": _flavor(gb), "image": HALT_IMAGE, "virt_type": "qemu",
              "state": "stopped"}
    return _m("_server").converge_server(client, params, check_mode=check_mode, diff_mode=True)


def _volume(client, name, size, check_mode=False, pool=VOLUME_POOL):
    params = {"name": PREFIX + name, "pool": pool, "size": size, "state": "present"}
    return _m("_volume").converge_volume(client, params, check_mode=check_mode, diff_mode=True)


def _our_volumes(client, pool=VOLUME_POOL):
    return sorted(v.name() for v in client.list_volumes(client.lookup_pool(pool)))


def _refused(func, *args, **kwargs):
    from ansible_collections.virtfleet.compute.plugins.module_utils._errors import CapacityError

    with pytest.raises(CapacityError) as info:
        func(*args, **kwargs)
    return str(info.value.message if hasattr(info.value, "message") else info.value)


def test_a_volume_after_a_server_that_took_the_last_room_is_refused(clean):
    _room(clean, 10)
    _server(clean, "srv", 10)
    for check_mode in (True, False):
        message = _refused(_volume, clean, "data", 10, check_mode=check_mode)
        # Every number an operator needs: what was asked, what is free, the total and the ratio.
        for text in ("volume %s/%sdata" % (VOLUME_POOL, PREFIX), "requested 10 GB", "free 0 GB",
                     "capacity 10 GB", "total", "disk allocation ratio 1"):
            assert text in message, message
    assert _our_volumes(clean) == []
    assert _m("_volume").VolumeStore(clean).read(VOLUME_POOL, PREFIX + "data") is None
    # A smaller host record would not help either: it still fits exactly when room is made.
    _room(clean, 10)
    assert _volume(clean, "data", 10)["changed"]


def test_a_server_after_a_volume_that_took_the_last_room_is_refused(clean):
    _room(clean, 10)
    _volume(clean, "data", 10)
    for check_mode in (True, False):
        message = _refused(_server, clean, "srv", 10, check_mode=check_mode)
        assert "does not fit" in message and "requested 10 GB" in message, message
    assert not [d for d in (clean.domain_name(x) for x in clean.list_domains()) if d.startswith(PREFIX)]


def test_host_info_shows_what_servers_and_volumes_claim_and_the_pool_holds(clean):
    before = _m("_host_info").host_info(clean, details=False)
    _server(clean, "srv", 3)
    _volume(clean, "data", "2G")
    _volume(clean, "half", "512M")  # a partial GB takes a whole GB, as a flavor's swap does
    info = _m("_host_info").host_info(clean, details=False)
    disk = info["local_disk"]
    assert disk["servers_gb"] - before["local_disk"]["servers_gb"] == 3
    assert disk["volumes_gb"] - before["local_disk"]["volumes_gb"] == 3
    assert info["local_gb_used"] - before["local_gb_used"] == 6
    assert disk["used_gb"] == info["local_gb_used"] == disk["servers_gb"] + disk["volumes_gb"] + disk["unmanaged_gb"]
    assert disk["allocation_gb"] == info["instance_pool"]["allocation_gb"]
    mine = dict((v["name"], v) for v in info["local_volumes"] if v["pool"] == VOLUME_POOL)
    assert mine[PREFIX + "data"]["kind"] == "volume" and mine[PREFIX + "data"]["capacity_gb"] == 2
    assert mine[PREFIX + "half"]["capacity_gb"] == 1 and mine[PREFIX + "half"]["capacity"] == 512 * 1024 ** 2
    # Sparse: a new volume holds (almost) nothing yet, and host_info says so next to what it may grow to.
    assert mine[PREFIX + "data"]["allocation"] < 64 * 1024 ** 2
    assert mine[PREFIX + "data"]["filesystem"] == 0
    # The scheduler reads local_gb_used: it sees the volumes too.
    assert info["capacity"]["disk_gb"]["used"] == info["local_gb_used"]


def test_growing_a_volume_claims_the_growth(clean):
    _room(clean, 10)
    _volume(clean, "data", 4)
    for check_mode in (True, False):
        message = _refused(_volume, clean, "data", 15, check_mode=check_mode)
        assert "requested 11 GB" in message and "free 6 GB" in message, message
    vol = clean.lookup_volume(clean.lookup_pool(VOLUME_POOL), PREFIX + "data")
    assert clean.volume_info(vol)["capacity"] == 4 * GIB
    assert _volume(clean, "data", 10)["changed"]
    assert clean.volume_info(vol)["capacity"] == 10 * GIB
    _refused(_volume, clean, "data", 11)


def _create_in_process(uri, name, size):
    """A volume create in a process of its own: (returncode, output)."""
    script = (
        "import sys; sys.path.insert(0, %r)\n"
        "from ansible_collections.virtfleet.compute.plugins.module_utils._libvirt_client import LibvirtClient\n"
        "from ansible_collections.virtfleet.compute.plugins.module_utils._volume import converge_volume\n"
        "from ansible_collections.virtfleet.compute.plugins.module_utils import _claims\n"
        "_acquire = _claims.RecordLock.acquire\n"
        "def acquire(self):\n"
        "    print('PLANNED, TAKING THE LOCK', flush=True)\n"
        "    _acquire(self)\n"
        "_claims.RecordLock.acquire = acquire\n"
        "try:\n"
        "    converge_volume(LibvirtClient(%r), {'name': %r, 'pool': %r, 'size': %d, 'state': 'present'})\n"
        "except Exception as exc:\n"
        "    print('FAILED: %%s' %% exc); sys.exit(1)\n"
        "print('CREATED')\n" % (COLLECTIONS_PATH, uri, name, VOLUME_POOL, size))
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.mark.parametrize("hold_lock", [True, False], ids=["decided-under-the-lock", "free-for-all"])
def test_two_volume_creates_at_once_with_room_for_one(clean, lab_uri, hold_lock):
    _room(clean, 10)
    lock = _m("_claims").ClaimLock(clean)
    if hold_lock:
        # Both processes plan on a host with room (both pass the planning check) and then queue on the claim lock:
        # the race is decided under the lock, whoever started first.
        lock.acquire()
    procs = [_create_in_process(lab_uri, PREFIX + name, 10) for name in ("race-a", "race-b")]
    first = ["", ""]
    try:
        if hold_lock:
            # Both have passed the planning check and wait for the lock: each says so before it asks for it.
            for index, proc in enumerate(procs):
                first[index] = proc.stdout.readline()
            assert all(line.startswith("PLANNED") for line in first), first
    finally:
        lock.release()
    outputs = [first[i] + p.communicate(timeout=240)[0] for i, p in enumerate(procs)]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 1], outputs
    loser = outputs[codes.index(1)]
    assert "does not fit" in loser or "over its capacity" in loser, loser
    if hold_lock:
        assert "checked again under the host's claim lock" in loser, loser
    assert len(_our_volumes(clean)) == 1, _our_volumes(clean)
    assert [r["name"] for r in _m("_volume").VolumeStore(clean).list() if r["pool"] == VOLUME_POOL] == \
        _our_volumes(clean)
    assert clean.lookup_volume(clean.find_pool("virtfleet-records"), "claim.lock") is None
    info = _m("_host_info").host_info(clean, details=False)
    assert info["capacity"]["disk_gb"]["used"] <= info["capacity"]["disk_gb"]["capacity"]


def test_a_pool_on_another_filesystem_is_a_capacity_of_its_own(clean):
    _room(clean, 0)
    # The instance filesystem is full: a volume there is refused...
    _refused(_volume, clean, "data", 1)
    # ...while the pool on the tmpfs has its own OTHER_FS_GB GB, whatever the instance filesystem holds.
    _volume(clean, "far", 5, pool=OTHER_POOL)
    info = _m("_host_info").host_info(clean, details=False)
    assert info["capacity"]["disk_gb"]["free"] == 0  # the far volume is not on the instance filesystem
    others = [fs for fs in info["filesystems"] if not fs["instance"]]
    assert len(others) == 1 and others[0]["pools"] == [OTHER_POOL], info["filesystems"]
    assert others[0]["total_gb"] == OTHER_FS_GB and others[0]["used_gb"] == 5 and others[0]["free_gb"] == 3
    far = [v for v in info["local_volumes"] if v["pool"] == OTHER_POOL]
    assert [v["filesystem"] for v in far] == [info["filesystems"].index(others[0])]
    message = _refused(_volume, clean, "far2", 4, pool=OTHER_POOL)
    assert "requested 4 GB" in message and "free 3 GB" in message and "capacity %d GB" % OTHER_FS_GB in message, \
        message
    assert OTHER_POOL in message, message
    _volume(clean, "far2", 3, pool=OTHER_POOL)
