"""Data volumes on a real libvirtd: states and attachments in four steps, hot-plug into booted guests over SSH,
encryption at rest, and refusals that change nothing.

Everything runs in a pool of its own (vf-t8-volumes), so the host's own volumes are never in the way, and is
removed at the end: volumes, their secrets, their records and the pool.
"""
import os
import shutil
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET

import pytest

from tests.integration.conftest import ensure_pool, machine_load, run_playbook, ssh

TARGETS = "tests/integration/targets/volume"
POOL = "vf-t8-volumes"
POOL_PATH = "/var/lib/libvirt/virtfleet/vf-t8-volumes"
PASSPHRASE = "vf-t8 passphrase %s" % uuidlib.uuid4().hex


def _m(name):
    import importlib

    return importlib.import_module("ansible_collections.virtfleet.compute.plugins.module_utils.%s" % name)


def _cleanup_pool(client):
    """Remove what the tests made in the pool: recorded volumes (with secrets and records), stray ones, the pool."""
    volume = _m("_volume")
    store = volume.VolumeStore(client)
    for record in store.list():
        if record["pool"] == POOL:
            volume.delete_volume_run(client, store, POOL, record["name"])()
    pool = client.find_pool(POOL)
    if pool is not None:
        if pool.isActive():
            for vol in client.list_volumes(pool):
                client.delete_volume(vol)
            client.stop_pool(pool)
        client.undefine_pool(pool)
    for secret in client.conn.listAllSecrets(0):
        if (secret.usageID() or "").startswith(POOL_PATH + "/"):
            secret.undefine()
    shutil.rmtree(POOL_PATH, ignore_errors=True)


@pytest.fixture(scope="module")
def volume_pool(client, pools):
    _cleanup_pool(client)
    ensure_pool(client, POOL, POOL_PATH)
    yield POOL
    _cleanup_pool(client)


def test_volume_states_in_four_steps(uri, volume_pool):
    started = time.monotonic()
    run = run_playbook(TARGETS + "/states.yml", extra_args=("-v",), volume_pool=volume_pool,
                       passphrase=PASSPHRASE).assert_ok()
    # With -v every result is printed: the passphrase is in none of them (no_log, and nowhere in our results).
    assert PASSPHRASE not in run.stdout and PASSPHRASE not in run.stderr
    print("volume states: %.1f s" % (time.monotonic() - started))


def test_attachments_in_four_steps(uri, volume_pool, halt_image):
    started = time.monotonic()
    run_playbook(TARGETS + "/attachments.yml", volume_pool=volume_pool, halt_image=halt_image).assert_ok()
    print("attachments: %.1f s" % (time.monotonic() - started))


# -- real guests ------------------------------------------------------------------------------------------------------

def _server(client, check_mode=False, **params):
    params.setdefault("virt_type", "qemu")
    return _m("_server").converge_server(client, params, check_mode=check_mode, diff_mode=True)


def _volume(client, check_mode=False, **params):
    params.setdefault("pool", POOL)
    return _m("_volume").converge_volume(client, params, check_mode=check_mode, diff_mode=True)


def _both(converge, client, **params):
    """Check mode, then the real run: the prediction must be exactly what the run does."""
    check = converge(client, check_mode=True, **params)
    real = converge(client, **params)
    assert (check["changed"], check["actions"], check["diff"]) == (real["changed"], real["actions"], real["diff"])
    return real


def _live_targets(client, name):
    root = ET.fromstring(client.domain_xml(client.lookup_domain(name), inactive=False))
    return set(t.get("dev") for t in root.findall("devices/disk/target"))


def _vol(client, name):
    return client.lookup_volume(client.lookup_pool(POOL), name)


def _attach(names, **extra):
    return [dict({"name": name, "pool": POOL}, **extra) for name in names]


def _reachable_ip(client, name, key_path, timeout=600):
    """The address of ``name`` that answers SSH. libvirt's lease list can still hold an older lease of the same
    (name-derived) MAC from an earlier run of this test, so the first address listed is not always the live one."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._server import list_servers

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ip in reversed(list_servers(client, [name])[0]["ips"]):
            try:
                ssh(ip, key_path, "true", timeout=5)
                return ip
            except AssertionError:
                continue
        time.sleep(2)
    raise AssertionError("no address of %s (%s) answered SSH within %d s; %s"
                         % (name, ", ".join(list_servers(client, [name])[0]["ips"]), timeout, machine_load()))


@pytest.mark.boot
def test_hot_plug_into_booted_guests_with_encryption_at_rest(
        client, volume_pool, boot_image, default_network, ssh_key):
    """Two real Debian guests (the only two boots): data written in one is read back in the other after a detach and
    an attach, the encrypted volume's file holds no plaintext of it, a rotation keeps it readable."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ConflictError
    from ansible_collections.virtfleet.compute.plugins.module_utils._server import wait_until_ready

    key_path, public_key = ssh_key
    a, b = "vf-t8-boot-a", "vf-t8-boot-b"
    common = dict(image=boot_image, networks=[{"network": default_network}], ssh_authorized_keys=[public_key],
                  flavor={"vcpus": 1, "ram_mb": 512, "disk_gb": 0}, wait_timeout=300)
    marker = "vf-t8-marker-%s" % uuidlib.uuid4().hex
    timings = {}
    started = time.monotonic()
    try:
        # Both guests boot at once: under TCG that is the cost of this test.
        for name in (a, b):
            _server(client, name=name, wait=False, **common)
        for name in (a, b):
            wait_until_ready(client, name, _m("_domain").Domain(client.domain_xml(client.lookup_domain(name)))
                             .managed_nics(), 600)
        ips = dict((name, _reachable_ip(client, name, key_path)) for name in (a, b))
        timings["boot two guests to SSH"] = time.monotonic() - started

        data = _both(_volume, client, name="vf-t8-data", size="64M")["volume"]
        secret = _both(_volume, client, name="vf-t8-secret", size="64M", passphrase=PASSPHRASE)["volume"]
        dev = {"data": "/dev/disk/by-id/virtio-%s" % data["serial"],
               "secret": "/dev/disk/by-id/virtio-%s" % secret["serial"]}

        # Hot-plug both into the running guest A: check mode predicts it exactly.
        step = time.monotonic()
        plugged = _both(_server, client, name=a, volumes=_attach(["vf-t8-data", "vf-t8-secret"]))
        assert plugged["actions"] == [
            "attach volume %s/vf-t8-data to %s as vde (virtio)" % (POOL, a),
            "attach volume %s/vf-t8-secret to %s as vdf (virtio, LUKS)" % (POOL, a),
        ]
        assert [v["device"] for v in plugged["server"]["attachments"]] == ["vde", "vdf"]
        assert {"vde", "vdf"} <= _live_targets(client, a)
        assert not _server(client, name=a, volumes=_attach(["vf-t8-secret", "vf-t8-data"]))["changed"]
        timings["hot-plug into A"] = time.monotonic() - step
        step = time.monotonic()
        waited = "for i in $(seq 60); do [ -e %s ] && [ -e %s ] && break; sleep 1; done; " % (
            dev["data"], dev["secret"])
        write = "; ".join("yes %s | head -c 1048576 | sudo dd of=%s bs=1M seek=1 oflag=direct conv=fsync status=none"
                          % (marker, path) for path in dev.values())
        ssh(ips[a], key_path, waited + write)
        for path in dev.values():
            assert marker in ssh(ips[a], key_path, "sudo dd if=%s bs=1M skip=1 count=1 status=none | head -c 200"
                                 % path)
        timings["write in A"] = time.monotonic() - step

        # Refusals change nothing: a second server for a volume A has, and deleting a volume A has.
        b_xml = client.domain_xml(client.lookup_domain(b))
        with pytest.raises(ConflictError) as double:
            _server(client, name=b, volumes=_attach(["vf-t8-data"]))
        assert "attached to %s" % a in str(double.value)
        with pytest.raises(ConflictError) as attached:
            _volume(client, name="vf-t8-data", state="absent")
        assert a in str(attached.value)
        assert client.domain_xml(client.lookup_domain(b)) == b_xml
        assert _vol(client, "vf-t8-data") is not None

        # Detach from A: the guest releases both disks.
        step = time.monotonic()
        unplugged = _both(_server, client, name=a, volumes=[])
        assert [x.split(" (")[0] for x in unplugged["actions"]] == ["detach volume %s/vf-t8-data" % POOL,
                                                                    "detach volume %s/vf-t8-secret" % POOL]
        assert not {"vde", "vdf"} & _live_targets(client, a)
        assert "virtio-%s" % data["serial"] not in ssh(ips[a], key_path, "ls /dev/disk/by-id/")
        timings["hot-unplug from A"] = time.monotonic() - step

        # At rest, through the API and straight from the file: the plain volume holds the marker (the check can
        # see it), the encrypted one does not.
        assert marker.encode() in client.download_bytes(_vol(client, "vf-t8-data"))
        ciphertext = client.download_bytes(_vol(client, "vf-t8-secret"))
        assert len(ciphertext) > 1024 * 1024 and marker.encode() not in ciphertext
        with open(os.path.join(POOL_PATH, "vf-t8-secret"), "rb") as handle:
            assert marker.encode() not in handle.read()

        # A is done with: deleting it leaves the volumes alone (attachments.yml checks that with volumes attached),
        # and frees a CPU for the LUKS work ahead (its key derivation is timed to take seconds on purpose).
        _server(client, name=a, state="absent")
        assert _vol(client, "vf-t8-data") is not None and _vol(client, "vf-t8-secret") is not None

        # Attach both to B: the same data, the encrypted one decrypted by QEMU with its secret.
        step = time.monotonic()
        _both(_server, client, name=b, volumes=_attach(["vf-t8-data", "vf-t8-secret"]))
        ssh(ips[b], key_path, waited)
        for path in dev.values():
            assert marker in ssh(ips[b], key_path, "sudo dd if=%s bs=1M skip=1 count=1 status=none | head -c 200"
                                 % path)
        timings["attach to B and read back"] = time.monotonic() - step

        # Grow the plain volume while B runs: QEMU resizes it live and the guest sees the new size.
        grown = _both(_volume, client, name="vf-t8-data", size="96M")
        assert grown["actions"] == ["grow volume %s/vf-t8-data from 64 MiB to 96 MiB (live, in %s)" % (POOL, b)]
        size = ssh(ips[b], key_path, "for i in $(seq 30); do s=$(lsblk -bndo SIZE %s); [ $s = %d ] && break; "
                                     "sleep 1; done; echo $s" % (dev["data"], 96 * 1024 ** 2))
        assert int(size.strip()) == 96 * 1024 ** 2

        # Rotate the passphrase: refused while B runs with the volume; detached, it is re-encrypted (two copies)
        # and B reads the same data with the new key.
        step = time.monotonic()
        new_passphrase = PASSPHRASE + " rotated"
        with pytest.raises(ConflictError) as busy:
            _volume(client, name="vf-t8-secret", passphrase=new_passphrase, rotate=True)
        assert busy.value.field == "rotate" and b in str(busy.value)
        _server(client, name=b, volumes=_attach(["vf-t8-data"]))
        rotated = _both(_volume, client, name="vf-t8-secret", passphrase=new_passphrase, rotate=True)
        assert rotated["volume"]["passphrase_version"] == 2 and rotated["volume"]["id"] == secret["id"]
        assert not _volume(client, name="vf-t8-secret", passphrase=new_passphrase)["changed"]
        _server(client, name=b, volumes=_attach(["vf-t8-data", "vf-t8-secret"]))
        ssh(ips[b], key_path, waited)
        assert marker in ssh(ips[b], key_path, "sudo dd if=%s bs=1M skip=1 count=1 status=none | head -c 200"
                             % dev["secret"])
        assert marker.encode() not in client.download_bytes(_vol(client, "vf-t8-secret"))
        timings["rotate and read back in B"] = time.monotonic() - step

        # Deleting B with delete_volumes takes its data volumes and their secret along.
        deleted = _server(client, name=b, state="absent", delete_volumes=True)
        assert deleted["actions"][-2:] == ["delete volume %s/vf-t8-data (was attached to %s)" % (POOL, b),
                                           "delete volume %s/vf-t8-secret (was attached to %s)" % (POOL, b)]
        assert _vol(client, "vf-t8-data") is None and _vol(client, "vf-t8-secret") is None
        assert client.lookup_volume_secret(os.path.join(POOL_PATH, "vf-t8-secret")) is None
    finally:
        for name in (a, b):
            _server(client, name=name, state="absent")
        for name in ("vf-t8-data", "vf-t8-secret"):
            _volume(client, name=name, state="absent")
        timings["total"] = time.monotonic() - started
        print("hot-plug test timings: %s" % ", ".join("%s %.1f s" % kv for kv in timings.items()))
