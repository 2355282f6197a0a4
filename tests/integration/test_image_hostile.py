"""The image module against hostile input on a real libvirtd (issue 14): swapped files, truncated headers of other
formats, drift between the records and the pool, and sources that are not regular files.

Every test works in its own storage pool (``vf-hostile-images``), never in the shared image pool: some of these
attacks, when they succeed, break the refresh of the whole pool they land in.
"""
import hashlib
import os
import shutil
import socket
import stat
import subprocess
import xml.etree.ElementTree as ET

import pytest

POOL = "vf-hostile-images"
POOL_PATH = "/var/lib/libvirt/virtfleet/vf-hostile-images"
CANARY = "vf-hostile-canary"


def _converge(client, check_mode=False, **params):
    from ansible_collections.virtfleet.compute.plugins.module_utils._image import converge_image

    params.setdefault("state", "present")
    params.setdefault("pool", POOL)
    return converge_image(client, params, check_mode=check_mode, diff_mode=True)


def _qemu_img(*args):
    subprocess.check_call(["qemu-img"] + [str(a) for a in args], stdout=subprocess.DEVNULL)


def _sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def _records(client):
    from ansible_collections.virtfleet.compute.plugins.module_utils._image import list_images

    return list_images(client)


def _listed(client, pool):
    """Volume names the pool lists after a refresh (a failed refresh lists nothing: that is the harm)."""
    try:
        pool.refresh(0)
    except Exception:  # noqa: BLE001 - a pool that fails to refresh is what the assertions look for
        return None
    return sorted(v.name() for v in client.list_volumes(pool))


def _restore_pool(client):
    """Start the test pool again, removing by hand whatever file keeps it from refreshing."""
    pool = client.find_pool(POOL)
    if pool is None:
        return
    if not pool.isActive():
        for entry in os.listdir(POOL_PATH):
            if entry != CANARY:
                os.unlink(os.path.join(POOL_PATH, entry))
        pool.create(0)


@pytest.fixture
def hostile_pool(client, pools):
    """A dir pool of our own, holding one canary volume that must stay listed whatever an attack does."""
    if os.path.isdir(POOL_PATH):
        shutil.rmtree(POOL_PATH)
    root = ET.Element("pool", {"type": "dir"})
    ET.SubElement(root, "name").text = POOL
    ET.SubElement(ET.SubElement(root, "target"), "path").text = POOL_PATH
    old = client.find_pool(POOL)
    if old is not None:
        if old.isActive():
            old.destroy()
        old.undefine()
    pool = client.define_pool(ET.tostring(root, encoding="unicode"))
    pool.build(0)
    pool.create(0)
    client.create_volume(pool, "<volume><name>%s</name><capacity unit='K'>64</capacity>"
                               "<target><format type='raw'/></target></volume>" % CANARY)
    yield pool
    _restore_pool(client)
    for key in [k for k in _records(client) if k.startswith(POOL + "/")]:
        _converge(client, name=key.split("/", 1)[1], state="absent")
    if pool.isActive():
        pool.destroy()
    pool.undefine()
    shutil.rmtree(POOL_PATH, ignore_errors=True)


@pytest.fixture
def good(tmp_path):
    _qemu_img("create", "-q", "-f", "qcow2", tmp_path / "good.qcow2", "64M")
    return tmp_path / "good.qcow2"


def _evil_data_file(tmp_path):
    """A qcow2 whose external data file is a host file: what inspection refuses, and what a swap tries to slip in."""
    # qemu-img creates the data file itself: point it into the test's directory, never at a real host file.
    _qemu_img("create", "-q", "-f", "qcow2", "-o", "data_file=%s,data_file_raw=on" % (tmp_path / "evil-data.raw"),
              tmp_path / "evil.qcow2", "16M")
    return tmp_path / "evil.qcow2"


def _stored(client, pool, name):
    vol = client.lookup_volume(pool, name)
    assert vol is not None
    return client.download_bytes(vol)


# -- High 1: the file is swapped between inspection and upload ----------------------------------------------------

def _swap_after_inspection(monkeypatch, client, action):
    """Run ``action`` at the first libvirt change the import makes: after the inspection, before the upload."""
    original = type(client).create_volume
    fired = []

    def create_volume(self, pool, xml):
        if not fired:
            fired.append(True)
            action()
        return original(self, pool, xml)

    monkeypatch.setattr(type(client), "create_volume", create_volume)
    return fired


def test_file_renamed_over_after_inspection_imports_only_the_inspected_bytes(client, hostile_pool, tmp_path,
                                                                             good, monkeypatch):
    evil = _evil_data_file(tmp_path)
    inspected = good.read_bytes()
    fired = _swap_after_inspection(monkeypatch, client, lambda: os.rename(evil, good))
    result = _converge(client, name="vf-hostile-swap", src=str(good))
    assert fired
    assert result["image"]["sha256"] == _sha256_bytes(inspected)
    stored = _stored(client, hostile_pool, "vf-hostile-swap")
    assert _sha256_bytes(stored[:len(inspected)]) == _sha256_bytes(inspected)
    assert b"evil-data.raw" not in stored


def test_file_rewritten_in_place_after_inspection_is_refused_and_removed(client, hostile_pool, tmp_path, good,
                                                                         monkeypatch):
    from ansible_collections.virtfleet.compute.plugins.module_utils._errors import VirtfleetError

    evil = _evil_data_file(tmp_path).read_bytes()

    def rewrite():
        with open(good, "r+b") as handle:
            handle.write(evil)
            handle.truncate(len(evil))

    _swap_after_inspection(monkeypatch, client, rewrite)
    with pytest.raises(VirtfleetError) as refused:
        _converge(client, name="vf-hostile-rewrite", src=str(good))
    message = str(refused.value)
    assert "changed while" in message and "deleted" in message
    assert client.lookup_volume(hostile_pool, "vf-hostile-rewrite") is None
    assert POOL + "/vf-hostile-rewrite" not in _records(client)


def test_stored_volume_that_no_longer_passes_is_deleted(client, hostile_pool, tmp_path, good, monkeypatch):
    """Whatever reaches the pool is read back through libvirt and inspected again: here the transport is made to
    deliver other bytes than the ones read from the file."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._errors import VirtfleetError

    evil = _evil_data_file(tmp_path).read_bytes()
    original = type(client).upload_stream

    def upload_stream(self, vol, size, read):
        remaining = size
        while remaining:
            remaining -= len(read(min(remaining, 1024 * 1024)))
        chunks = [evil[:size].ljust(size, b"\0")]
        return original(self, vol, size, lambda n: chunks.pop() if chunks else b"")

    monkeypatch.setattr(type(client), "upload_stream", upload_stream)
    with pytest.raises(VirtfleetError) as refused:
        _converge(client, name="vf-hostile-transport", src=str(good))
    message = str(refused.value)
    assert "read back" in message and "deleted" in message
    assert client.lookup_volume(hostile_pool, "vf-hostile-transport") is None
    assert POOL + "/vf-hostile-transport" not in _records(client)


# -- High 2: a truncated header of another format breaks the whole pool --------------------------------------------

def _head(craft, length):
    def make(tmp_path):
        return craft(tmp_path)[:length]
    return make


def _created(fmt, *options):
    def make(tmp_path):
        path = tmp_path / ("src." + fmt)
        _qemu_img("create", "-q", "-f", fmt, *options, path, "16M")
        return path.read_bytes()
    return make


def _literal(data):
    return lambda tmp_path: data


def _iso_head(tmp_path):
    data = bytearray(32 * 1024 + 8)
    data[32769:32774] = b"CD001"
    return bytes(data)


TRUNCATED = {
    "qcow2-48-bytes": _head(_created("qcow2"), 48),
    "qcow1-header": _literal(b"QFI\xfb\x00\x00\x00\x01" + b"\0" * 40),
    "qed-48-bytes": _head(_created("qed"), 48),
    "vdi-128-bytes": _head(_created("vdi"), 128),
    "vmdk-48-bytes": _head(_created("vmdk"), 48),
    "vhdx-48-bytes": _head(_created("vhdx"), 48),
    "vpc-48-bytes": _head(_created("vpc"), 48),
    "parallels": _created("parallels"),
    "cow-header": _literal(b"OOOM\x00\x00\x00\x02" + b"\0" * 40),
    "luks-48-bytes": _literal(b"LUKS\xba\xbe\x00\x01" + b"\0" * 40),
    "iso-signature": _iso_head,
}


@pytest.mark.parametrize("declared", ["raw", None], ids=["declared-raw", "no-format"])
@pytest.mark.parametrize("craft", list(TRUNCATED.values()), ids=list(TRUNCATED))
def test_truncated_header_of_another_format_is_refused(client, hostile_pool, tmp_path, craft, declared):
    from ansible_collections.virtfleet.compute.plugins.module_utils._errors import UnsafeImageError

    path = tmp_path / "disk.img"
    path.write_bytes(craft(tmp_path))
    for check_mode in (True, False):
        with pytest.raises(UnsafeImageError) as refused:
            _converge(client, check_mode=check_mode, name="vf-hostile-trunc", src=str(path), disk_format=declared)
        assert "src" in str(refused.value)
    # Nothing was created, and the pool still refreshes and lists its volumes.
    assert _listed(client, hostile_pool) == [CANARY]


def test_pool_that_fails_to_refresh_after_upload_is_reported_and_nothing_recorded(
        client, hostile_pool, tmp_path, monkeypatch):
    """Content that the inspection lets through but libvirt cannot read (simulated by switching off the check for
    other formats' signatures) makes the pool's refresh fail: the import is refused, says so, and records nothing."""
    from ansible_collections.virtfleet.compute.plugins.module_utils import _image_inspect
    from ansible_collections.virtfleet.compute.plugins.module_utils._errors import VirtfleetError

    monkeypatch.setattr(_image_inspect, "FOREIGN_SIGNATURES", ())
    path = tmp_path / "disk.img"
    path.write_bytes(TRUNCATED["qcow2-48-bytes"](tmp_path))
    try:
        with pytest.raises(VirtfleetError) as refused:
            _converge(client, name="vf-hostile-norefresh", src=str(path), disk_format="raw")
        message = str(refused.value)
        assert "refresh" in message and POOL in message
        assert os.path.join(POOL_PATH, "vf-hostile-norefresh") in message
        assert POOL + "/vf-hostile-norefresh" not in _records(client)
    finally:
        _restore_pool(client)
    assert _listed(client, hostile_pool) == [CANARY]


# -- Medium 3: drift between the records and the pool --------------------------------------------------------------

@pytest.mark.parametrize("with_checksum", [False, True], ids=["by-file", "by-checksum"])
def test_image_deleted_outside_the_module_is_imported_again(client, hostile_pool, good, with_checksum):
    name = "vf-hostile-drift"
    params = dict(name=name, src=str(good), disk_format="qcow2")
    first = _converge(client, **params)
    if with_checksum:
        params["checksum"] = "sha256:" + first["image"]["sha256"]
    client.delete_volume(client.lookup_volume(hostile_pool, name))
    predicted = _converge(client, check_mode=True, **params)
    applied = _converge(client, **params)
    again = _converge(client, **params)
    assert predicted["changed"] and applied["changed"] and not again["changed"]
    assert predicted["actions"] == applied["actions"]
    assert client.lookup_volume(hostile_pool, name) is not None
    assert _sha256_bytes(_stored(client, hostile_pool, name)) == first["image"]["sha256"]


def test_image_replaced_outside_the_module_is_imported_again(client, hostile_pool, good, tmp_path):
    name = "vf-hostile-replaced"
    params = dict(name=name, src=str(good), disk_format="qcow2")
    first = _converge(client, **params)
    client.delete_volume(client.lookup_volume(hostile_pool, name))
    client.create_volume(hostile_pool, "<volume><name>%s</name><capacity unit='K'>64</capacity>"
                                       "<target><format type='raw'/></target></volume>" % name)
    applied = _converge(client, checksum=first["image"]["sha256"], **params)
    assert applied["changed"]
    assert _sha256_bytes(_stored(client, hostile_pool, name)) == first["image"]["sha256"]


def test_absent_forgets_the_record_of_a_volume_deleted_outside(client, hostile_pool, good):
    name = "vf-hostile-forget"
    _converge(client, name=name, src=str(good))
    client.delete_volume(client.lookup_volume(hostile_pool, name))
    predicted = _converge(client, check_mode=True, name=name, state="absent")
    applied = _converge(client, name=name, state="absent")
    assert predicted["changed"] and applied["changed"]
    assert predicted["actions"] == applied["actions"]
    assert POOL + "/" + name not in _records(client)
    assert not _converge(client, name=name, state="absent")["changed"]


# -- Medium 5: sources that are not regular files ------------------------------------------------------------------

def _symlink(tmp_path, good):
    link = tmp_path / "link.qcow2"
    link.symlink_to(good)
    return link, "symbolic link"


def _directory(tmp_path, good):
    return tmp_path, "directory"


def _fifo(tmp_path, good):
    os.mkfifo(tmp_path / "fifo")
    return tmp_path / "fifo", "FIFO"


def _char_device(tmp_path, good):
    assert stat.S_ISCHR(os.stat("/dev/zero").st_mode)
    return "/dev/zero", "character device"


def _socket(tmp_path, good):
    path = str(tmp_path / "sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    return path, "socket"


@pytest.mark.parametrize("craft", [_symlink, _directory, _fifo, _char_device, _socket],
                         ids=["symlink", "directory", "fifo", "char-device", "socket"])
def test_source_that_is_not_a_regular_file_is_refused_by_kind(client, hostile_pool, tmp_path, good, craft):
    from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ValidationError

    path, kind = craft(tmp_path, good)
    for check_mode in (True, False):
        with pytest.raises(ValidationError) as refused:
            _converge(client, check_mode=check_mode, name="vf-hostile-kind", src=str(path))
        message = str(refused.value)
        assert kind in message and "src" in message
        assert "no such file" not in message
    assert _listed(client, hostile_pool) == [CANARY]
