"""Base images: checksum parsing, and converge_image with real qcow2 files made by qemu-img."""
import hashlib

import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils import _image
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import (
    ConflictError,
    UnsafeImageError,
    ValidationError,
    VirtfleetError,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._image import (
    converge_image,
    image_users,
    list_images,
    parse_checksum,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._server import converge_server

HEX64 = "0123456789abcdef" * 4
HEX128 = HEX64 * 2


@pytest.mark.parametrize("value, expected", [
    (None, None),
    (HEX64, ("sha256", HEX64)),
    ("sha256:" + HEX64, ("sha256", HEX64)),
    ("sha512:" + HEX128, ("sha512", HEX128)),
    ("SHA256:" + HEX64.upper(), ("sha256", HEX64)),
    ("  sha512:%s\n" % HEX128, ("sha512", HEX128)),
])
def test_parse_checksum_accepts(value, expected):
    assert parse_checksum(value) == expected


@pytest.mark.parametrize("value, message", [
    ("md5:" + "0" * 32, "algorithm 'md5' is not supported"),
    ("sha1:" + "0" * 40, "not supported"),
    ("sha256:" + HEX128, "not a sha256 digest (64 hex digits)"),
    ("sha512:" + HEX64, "not a sha512 digest (128 hex digits)"),
    (HEX128, "not a sha256 digest"),
    (HEX64[:-1], "not a sha256 digest"),
    (HEX64[:-1] + "g", "not a sha256 digest"),
    ("sha256:", "not a sha256 digest"),
    ("", "not a sha256 digest"),
    ("sha256:sha256:" + HEX64, "not supported"),
])
def test_parse_checksum_refuses_with_the_field(value, message):
    with pytest.raises(ValidationError) as info:
        parse_checksum(value, field="images[2].checksum")
    assert info.value.field == "images[2].checksum"
    assert message in info.value.message


def _sha256(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def host_state(client):
    """Every volume of every pool with its capacity and content: what an image converge may change."""
    out = {}
    for pool in client.list_pools():
        for vol in client.list_volumes(pool):
            out["%s/%s" % (pool.name(), vol.name())] = (client.volume_info(vol)["capacity"],
                                                        hashlib.sha256(client.download_bytes(vol)).hexdigest())
    return out


def converge(client, params):
    before = host_state(client)
    check = converge_image(client, params, check_mode=True, diff_mode=True)
    assert host_state(client) == before, "check mode changed the host"
    real = converge_image(client, params, diff_mode=True)
    assert (check["changed"], check["actions"], check["diff"]) == (real["changed"], real["actions"], real["diff"])
    return real


def refused(client, params, error):
    before = host_state(client)
    for check_mode in (True, False):
        with pytest.raises(error) as info:
            converge_image(client, params, check_mode=check_mode)
        assert host_state(client) == before
    return info.value


def image_volume(client, name="tiny"):
    return client.lookup_volume(client.lookup_pool("virtfleet-images"), name)


@pytest.fixture
def tiny(qcow2_file):
    return qcow2_file("tiny.qcow2", "16M")


@pytest.mark.parametrize("with_checksum", [False, True])
def test_import_is_predicted_then_unchanged(client, tiny, with_checksum):
    args = {"name": "tiny", "src": tiny}
    if with_checksum:
        args["checksum"] = "sha256:" + _sha256(tiny)

    imported = converge(client, args)

    assert [a.split(" ")[0] for a in imported["actions"]] == ["create", "upload", "read", "record"]
    with open(tiny, "rb") as handle:
        assert client.download_bytes(image_volume(client)) == handle.read()
    record = list_images(client)["virtfleet-images/tiny"]
    assert (record["format"], record["sha256"], record["virtual_size"]) == ("qcow2", _sha256(tiny), 16 * 1024 ** 2)
    assert imported["image"] == imported["diff"]["after"]
    assert imported["diff"]["before"] == {}

    again = converge(client, args)
    assert (again["changed"], again["actions"]) == (False, [])
    assert again["diff"]["before"] == again["diff"]["after"] == imported["diff"]["after"]


def test_a_declared_checksum_recognises_the_image_without_reading_it(client, tiny, monkeypatch):
    args = {"name": "tiny", "src": tiny, "checksum": _sha256(tiny)}
    converge(client, args)

    def must_not_read(*args, **kwargs):
        raise AssertionError("the image was read again")

    monkeypatch.setattr(_image, "open_image_file", must_not_read)
    monkeypatch.setattr(_image, "inspect_fd", must_not_read)
    assert not converge(client, args)["changed"]


def test_a_wrong_checksum_is_refused_and_nothing_is_created(client, tiny):
    error = refused(client, {"name": "tiny", "src": tiny, "checksum": "sha256:" + "0" * 64}, ValidationError)
    assert error.field == "checksum"
    assert _sha256(tiny) in error.message


def test_a_qcow2_with_a_backing_file_is_refused_and_nothing_is_created(client, tiny, qcow2_file):
    overlay = qcow2_file("overlay.qcow2", "16M", backing=tiny)
    error = refused(client, {"name": "overlay", "src": overlay}, UnsafeImageError)
    assert error.field == "src"
    assert "backing" in error.message.lower()


def test_a_format_other_than_declared_is_refused(client, tiny):
    error = refused(client, {"name": "tiny", "src": tiny, "disk_format": "raw"}, UnsafeImageError)
    assert "qcow2" in error.message


@pytest.mark.parametrize("state", ["present", "absent"])
def test_a_volume_not_imported_by_us_is_never_replaced_or_deleted(client, tiny, base_image, state):
    error = refused(client, {"name": "base.qcow2", "src": tiny, "state": state}, ConflictError)
    assert error.field == "name"


def test_an_image_in_use_cannot_be_deleted_until_its_servers_are_gone(client, tiny):
    converge(client, {"name": "tiny", "src": tiny})
    converge_server(client, {"name": "vm1", "image": "tiny", "flavor": {"vcpus": 1, "ram_mb": 256, "disk_gb": 1},
                             "networks": [], "wait": False})
    path = client.volume_path(image_volume(client))
    assert image_users(client, "virtfleet-images", "tiny", path) == ["vm1"]

    error = refused(client, {"name": "tiny", "state": "absent"}, ConflictError)
    assert "vm1" in error.message

    converge_server(client, {"name": "vm1", "state": "absent"})
    result = converge(client, {"name": "tiny", "state": "absent"})
    assert [a.split(" ")[0] for a in result["actions"]] == ["delete", "forget"]
    assert image_volume(client) is None
    assert "virtfleet-images/tiny" not in list_images(client)
    assert not converge(client, {"name": "tiny", "state": "absent"})["changed"]


def test_image_users_finds_unmanaged_domains_by_their_disks(client, tiny):
    converge(client, {"name": "tiny", "src": tiny})
    path = client.volume_path(image_volume(client))
    client.define_domain("<domain type='test'><name>byhand</name><memory>65536</memory><os><type>hvm</type></os>"
                         "<devices><disk type='file' device='disk'><source file='%s'/><target dev='vda'/></disk>"
                         "</devices></domain>" % path)
    assert image_users(client, "virtfleet-images", "tiny", path) == ["byhand"]


def test_new_content_replaces_an_unused_image(client, tiny, qcow2_file):
    converge(client, {"name": "tiny", "src": tiny})
    bigger = qcow2_file("bigger.qcow2", "32M")

    result = converge(client, {"name": "tiny", "src": bigger})

    assert [a.split(" ")[0] for a in result["actions"]] == ["delete", "create", "upload", "read", "record"]
    assert list_images(client)["virtfleet-images/tiny"]["sha256"] == _sha256(bigger)
    assert result["diff"]["before"]["sha256"] == _sha256(tiny)


def test_new_content_is_refused_while_a_server_uses_the_image(client, tiny, qcow2_file):
    converge(client, {"name": "tiny", "src": tiny})
    converge_server(client, {"name": "vm1", "image": "tiny", "flavor": {"vcpus": 1, "ram_mb": 256, "disk_gb": 1},
                             "networks": [], "state": "stopped", "wait": False})
    error = refused(client, {"name": "tiny", "src": qcow2_file("bigger.qcow2", "32M")}, ConflictError)
    assert "vm1" in error.message


def test_a_failed_upload_deletes_the_new_volume(client, tiny, monkeypatch):
    before = host_state(client)

    def broken(vol, size, read, progress=None):
        raise RuntimeError("stream closed")

    monkeypatch.setattr(client, "upload_stream", broken)
    with pytest.raises(Exception, match="stream closed"):
        converge_image(client, {"name": "tiny", "src": tiny})
    assert host_state(client) == before


@pytest.mark.parametrize("params, field", [
    ({"name": "-bad"}, "name"),
    ({"name": "tiny"}, "src"),
    ({"name": "tiny", "src": "/nonexistent/file.qcow2"}, "src"),
    ({"name": "tiny", "url": "https://example.invalid/x.qcow2"}, "checksum"),
    ({"name": "tiny", "src": "{tiny}", "url": "https://example.invalid/x.qcow2"}, "src"),
    ({"name": "tiny", "src": "{tiny}", "pool": "nope"}, "pool"),
])
def test_bad_input_names_the_field(client, tiny, params, field):
    args = dict((k, v.format(tiny=tiny)) for k, v in params.items())
    with pytest.raises(VirtfleetError) as info:
        converge_image(client, args, check_mode=True)
    assert info.value.field == field
