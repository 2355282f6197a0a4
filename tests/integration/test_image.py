"""The image module on a real libvirtd: import, idempotency by checksum, unsafe images refused, URL downloads."""
import functools
import hashlib
import http.server
import os
import subprocess
import threading

import pytest

from tests.integration.conftest import IMAGE_POOL

MIB = 1024 * 1024


def _converge(client, check_mode=False, **params):
    from ansible_collections.virtfleet.compute.plugins.module_utils._image import converge_image

    params.setdefault("state", "present")
    return converge_image(client, params, check_mode=check_mode, diff_mode=True)


def _qemu_img(*args):
    subprocess.check_call(["qemu-img"] + [str(a) for a in args], stdout=subprocess.DEVNULL)


def _sha256(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _image_volumes(client, pools):
    return sorted(v.name() for v in client.list_volumes(pools[IMAGE_POOL]))


@pytest.fixture
def image_dir(tmp_path):
    _qemu_img("create", "-q", "-f", "qcow2", tmp_path / "good.qcow2", "64M")
    return tmp_path


def test_import_four_steps_and_delete(client, pools, image_dir):
    name = "vf-it-image-good"
    params = dict(name=name, src=str(image_dir / "good.qcow2"), disk_format="qcow2")
    try:
        predicted = _converge(client, check_mode=True, **params)
        applied = _converge(client, **params)
        again = _converge(client, **params)
        checked = _converge(client, check_mode=True, **params)
        assert predicted["changed"] and applied["changed"]
        assert predicted["actions"] == applied["actions"]
        assert predicted["diff"]["after"] == applied["diff"]["after"]
        assert not again["changed"] and not checked["changed"]
        assert applied["image"]["format"] == "qcow2"
        assert applied["image"]["virtual_size"] == 64 * MIB
        assert applied["image"]["sha256"] == _sha256(image_dir / "good.qcow2")
        # A declared checksum is enough to recognise the image: the file is not even needed.
        by_checksum = _converge(client, name=name, src=str(image_dir / "good.qcow2"),
                                checksum="sha256:" + applied["image"]["sha256"])
        assert not by_checksum["changed"]
    finally:
        deleted = _converge(client, name=name, state="absent")
    assert deleted["changed"]
    assert name not in _image_volumes(client, pools)
    assert not _converge(client, name=name, state="absent")["changed"]


def _backing_file(tmp):
    _qemu_img("create", "-q", "-f", "qcow2", tmp / "base.qcow2", "16M")
    _qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", tmp / "base.qcow2", tmp / "bad.qcow2")
    return tmp / "bad.qcow2", "qcow2", "backing"


def _data_file(tmp):
    _qemu_img("create", "-q", "-f", "qcow2", "-o", "data_file=%s" % (tmp / "data.raw"), tmp / "bad.qcow2", "16M")
    return tmp / "bad.qcow2", "qcow2", "data"


def _vmdk_flat(tmp):
    (tmp / "bad-flat.vmdk").write_bytes(b"\0" * MIB)
    (tmp / "bad.vmdk").write_text(
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n'
        '# Extent description\nRW 2048 FLAT "/etc/shadow" 0\n\n'
        '# The Disk Data Base\n#DDB\nddb.virtualHWVersion = "4"\n')
    return tmp / "bad.vmdk", None, "vmdk"


def _qcow2_named_raw(tmp):
    _qemu_img("create", "-q", "-f", "qcow2", tmp / "bad.raw", "16M")
    return tmp / "bad.raw", "raw", "qcow2"


@pytest.mark.parametrize("craft", [_backing_file, _data_file, _vmdk_flat, _qcow2_named_raw],
                         ids=["qcow2-backing-file", "qcow2-data-file", "vmdk-flat-extent", "qcow2-declared-raw"])
def test_unsafe_images_are_refused_and_nothing_is_created(client, pools, tmp_path, craft):
    from ansible_collections.virtfleet.compute.plugins.module_utils._errors import UnsafeImageError

    path, declared, evidence = craft(tmp_path)
    before = _image_volumes(client, pools)
    for check_mode in (True, False):
        with pytest.raises(UnsafeImageError) as refused:
            _converge(client, check_mode=check_mode, name="vf-it-image-bad", src=str(path), disk_format=declared)
        assert evidence in str(refused.value).lower()
    assert _image_volumes(client, pools) == before


@pytest.fixture
def http_server(image_dir):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(image_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d" % server.server_address[1]
    server.shutdown()


def test_url_import_needs_the_right_checksum(client, pools, image_dir, http_server):
    from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ValidationError

    name = "vf-it-image-url"
    url = http_server + "/good.qcow2"
    digest = _sha256(image_dir / "good.qcow2")
    before = _image_volumes(client, pools)
    with pytest.raises(ValidationError) as wrong:
        _converge(client, name=name, url=url, checksum="sha256:" + "0" * 64)
    assert "checksum" in str(wrong.value)
    assert _image_volumes(client, pools) == before
    try:
        imported = _converge(client, name=name, url=url, checksum="sha256:" + digest, disk_format="qcow2")
        assert imported["changed"] and imported["image"]["source"] == url
        again = _converge(client, name=name, url=url, checksum=digest)
        assert not again["changed"]
    finally:
        _converge(client, name=name, state="absent")


def test_image_in_use_cannot_be_deleted(client, pools, halt_image):
    from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ConflictError
    from ansible_collections.virtfleet.compute.plugins.module_utils._server import converge_server

    server = dict(name="vf-it-image-user", flavor={"vcpus": 1, "ram_mb": 64, "disk_gb": 1}, image=halt_image,
                  virt_type="qemu", state="present")
    converge_server(client, server)
    try:
        with pytest.raises(ConflictError) as refused:
            _converge(client, name=halt_image, state="absent")
        assert "vf-it-image-user" in str(refused.value)
        assert halt_image in _image_volumes(client, pools)
    finally:
        converge_server(client, dict(name="vf-it-image-user", state="absent"))


def test_volume_not_imported_by_us_is_never_replaced(client, pools, image_dir):
    from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ConflictError

    pool = pools[IMAGE_POOL]
    name = "vf-it-image-foreign"
    vol = client.create_volume(pool, "<volume><name>%s</name><capacity unit='M'>1</capacity>"
                                     "<target><format type='raw'/></target></volume>" % name)
    try:
        with pytest.raises(ConflictError):
            _converge(client, name=name, src=str(image_dir / "good.qcow2"))
        with pytest.raises(ConflictError):
            _converge(client, name=name, state="absent")
        assert client.lookup_volume(pool, name) is not None
    finally:
        client.delete_volume(vol)
    assert os.path.exists(image_dir / "good.qcow2")
