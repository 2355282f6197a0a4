# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Image safety inspection, on images crafted here with qemu-img (required: it is installed here and in CI)."""

import hashlib
import struct
import subprocess
import time

import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils import (
    _image_inspect as ii,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._configdrive import (
    build_nocloud_iso,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import (
    MissingLibraryError,
    NotFoundError,
    UnsafeImageError,
    ValidationError,
)

MIB = 1024 * 1024
ALL = ("raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi", "iso")

FLAT_DESCRIPTOR = """# Disk DescriptorFile
version=1
CID=fffffffe
parentCID=ffffffff
createType="monolithicFlat"

# Extent description
RW 20480 FLAT "disk-flat.vmdk" 0

# The Disk Data Base
#DDB

ddb.virtualHWVersion = "4"
ddb.adapterType = "ide"
"""


def qemu_img(*args):
    subprocess.run(("qemu-img",) + args, check=True, capture_output=True)


@pytest.fixture
def make(tmp_path):
    """make(name, fmt, size, *options) -> path of an image created by qemu-img."""

    def _make(name, fmt, size="10M", *options):
        path = tmp_path / name
        # qemu-img times its LUKS key derivation with the process's CPU clock and, on a loaded machine, now and
        # then gives up ("Unable to get accurate CPU usage"): that is qemu-img's flake, not the inspector's, so the
        # fixture tries again.
        for attempt in range(3):
            try:
                qemu_img("create", "-q", "-f", fmt, *options, str(path), size)
                break
            except subprocess.CalledProcessError:
                derives_a_key = any("secret" in str(option) for option in options)
                if not derives_a_key or attempt == 2:
                    raise
                time.sleep(1)
        return path

    return _make


def refused(path, *words, **kwargs):
    with pytest.raises(UnsafeImageError) as err:
        ii.inspect_file(str(path), **kwargs)
    message = str(err.value)
    assert err.value.field == kwargs.get("field", "image")
    for word in words:
        assert word in message, message
    return err.value


def mbr_disk(path, partitions, size=MIB):
    """A raw disk whose first sector holds the given (boot, type, start_lba, sectors[, chs]) MBR entries."""
    sector = bytearray(512)
    for index, entry in enumerate(partitions):
        boot, ostype, start, count = entry[:4]
        chs = entry[4] if len(entry) > 4 else (0, 2, 0)
        struct.pack_into("<B3BB3BII", sector, 446 + 16 * index, boot, chs[0], chs[1], chs[2], ostype, 0xFE, 0xFF,
                         0xFF, start, count)
    sector[510:512] = b"\x55\xaa"
    path.write_bytes(bytes(sector) + b"\0" * (size - 512))
    return path


# --- accepted ---------------------------------------------------------------------------------------------------

def test_plain_qcow2_is_accepted(make):
    path = make("disk.qcow2", "qcow2", "10M")
    report = ii.inspect_file(str(path))
    assert report.format == report.detected_format == "qcow2"
    assert report.virtual_size == 10 * MIB
    assert report.actual_size == path.stat().st_size
    assert ii.inspect_file(str(path), declared_format="qcow2") == report


def test_compressed_qcow2_with_content_is_accepted(make, tmp_path):
    raw = tmp_path / "src.raw"
    raw.write_bytes((b"virtfleet" * 120000)[:MIB])  # qemu-img rounds sizes up to whole sectors
    path = tmp_path / "disk.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", str(raw), str(path))
    report = ii.inspect_file(str(path), declared_format="qcow2")
    assert report.virtual_size == raw.stat().st_size


def test_raw_is_accepted(make):
    path = make("disk.raw", "raw", "3M")
    report = ii.inspect_file(str(path), declared_format="raw")
    assert (report.format, report.detected_format) == ("raw", "raw")
    assert report.virtual_size == report.actual_size == 3 * MIB


def test_hashes_match_hashlib(make, tmp_path):
    path = tmp_path / "random.raw"
    path.write_bytes(bytes(range(256)) * 12345)
    data = path.read_bytes()
    report = ii.inspect_file(str(path), hash_algorithms=("md5", "sha512"))
    assert report.sha256 == hashlib.sha256(data).hexdigest()
    assert report.digests == {
        "sha256": hashlib.sha256(data).hexdigest(),
        "md5": hashlib.md5(data).hexdigest(),
        "sha512": hashlib.sha512(data).hexdigest(),
    }
    qcow = make("disk.qcow2", "qcow2")
    assert ii.inspect_file(str(qcow)).sha256 == hashlib.sha256(qcow.read_bytes()).hexdigest()


def test_partitioned_whole_disk_is_raw(tmp_path):
    # A protective MBR (GPT) and a classic MBR with partitions are both raw disks, as Nova treats them.
    gpt = mbr_disk(tmp_path / "gpt.img", [(0, 0xEE, 1, 2047)])
    report = ii.inspect_file(str(gpt), declared_format="raw")
    assert (report.format, report.detected_format) == ("raw", "gpt")
    assert report.virtual_size == MIB
    mbr = mbr_disk(tmp_path / "mbr.img", [(0x80, 0x83, 2048, 4096), (0, 0x82, 6144, 2048)], size=MIB)
    assert ii.inspect_file(str(mbr)).format == "raw"


# --- refused: files that would make QEMU open other files on the host -------------------------------------------

def test_qcow2_with_backing_file_is_refused(make):
    make("base.qcow2", "qcow2")
    top = make("top.qcow2", "qcow2", "10M", "-b", "base.qcow2", "-F", "qcow2")
    err = refused(top, "backing file", "qemu-img convert")
    assert err.details["checks"] == ["backing_file"]
    refused(top, "backing file", declared_format="qcow2")


def test_qcow2_with_external_data_file_is_refused(make, tmp_path):
    path = make("df.qcow2", "qcow2", "10M", "-o", "data_file=%s" % (tmp_path / "data.raw"))
    err = refused(path, "external data file", "qemu-img convert")
    assert err.details["checks"] == ["data_file"]


def test_vmdk_flat_descriptor_is_refused_even_when_vmdk_is_allowed(tmp_path):
    desc = tmp_path / "disk.vmdk"
    desc.write_text(FLAT_DESCRIPTOR)
    (tmp_path / "disk-flat.vmdk").write_bytes(b"\0" * 20480 * 512)
    refused(desc, "monolithicFlat", "extent files", "qemu-img convert", allowed_formats=ALL)
    refused(desc, "monolithicFlat")
    refused(desc, "monolithicFlat", declared_format="raw")


def test_vmdk_flat_made_by_qemu_img_is_refused(make):
    refused(make("flat.vmdk", "vmdk", "10M", "-o", "subformat=monolithicFlat"), "monolithicFlat",
            allowed_formats=ALL)
    refused(make("split.vmdk", "vmdk", "10M", "-o", "subformat=twoGbMaxExtentSparse"), "twoGbMaxExtentSparse",
            allowed_formats=ALL)


def test_vmdk_sparse_with_an_extent_path_is_refused(make):
    path = make("sparse.vmdk", "vmdk", "10M")
    data = bytearray(path.read_bytes())
    start = data.index(b'RW 20480 SPARSE "sparse.vmdk"')
    evil = b'RW 20480 SPARSE "/etc/shadow"'
    data[start:start + len(evil) + 1] = evil + b"\0"
    path.write_bytes(bytes(data))
    refused(path, "descriptor", "Invalid extent filenames", allowed_formats=ALL)


def test_hidden_second_header_is_refused(make):
    # A qcow2 header and a valid MBR in the same sector: one reader sees qcow2, another a partitioned raw disk.
    path = make("both.qcow2", "qcow2", "1M")
    data = bytearray(path.read_bytes())
    struct.pack_into("<B3BB3BII", data, 446, 0, 0, 2, 0, 0x83, 0xFE, 0xFF, 0xFF, 2048, 2048)
    data[510:512] = b"\x55\xaa"
    path.write_bytes(bytes(data))
    refused(path, "more than one format", "gpt", "qcow2")


# --- refused: formats outside the allow-list --------------------------------------------------------------------

def test_vmdk_monolithic_sparse_is_refused_by_the_default_allow_list(make):
    path = make("sparse.vmdk", "vmdk", "10M")
    refused(path, "content is vmdk", "not allowed", "raw, qcow2", "qemu-img convert -O qcow2")
    report = ii.inspect_file(str(path), allowed_formats=ALL, declared_format="vmdk")
    assert (report.format, report.virtual_size) == ("vmdk", 10 * MIB)


def test_vmdk_stream_optimized_is_accepted_only_when_allowed(make):
    path = make("so.vmdk", "vmdk", "10M", "-o", "subformat=streamOptimized")
    refused(path, "not allowed")
    assert ii.inspect_file(str(path), allowed_formats=["vmdk"]).format == "vmdk"


def test_iso_is_refused_by_the_allow_list(tmp_path):
    path = tmp_path / "seed.iso"
    path.write_bytes(build_nocloud_iso("i-1", "web1"))
    err = refused(path, "content is iso", "not allowed")
    assert err.details["found"] == "iso"
    refused(path, "declared raw but the content is iso", "not allowed", declared_format="raw")
    assert ii.inspect_file(str(path), allowed_formats=["iso"]).format == "iso"


@pytest.mark.parametrize("fmt, detected, options", [
    ("vpc", "vhd", ()),
    ("vhdx", "vhdx", ()),
    ("vdi", "vdi", ()),
])
def test_other_formats_are_refused_by_the_allow_list(make, fmt, detected, options):
    path = make("disk." + fmt, fmt, "10M", *options)
    err = refused(path, "content is %s" % detected, "not allowed")
    assert err.details["found"] == detected


def test_luks_is_refused_by_the_allow_list(make):
    path = make("disk.luks", "luks", "10M", "--object", "secret,id=sec0,data=secret", "-o", "key-secret=sec0")
    if "luks" in ii.known_formats():
        refused(path, "content is luks", "not allowed")
    else:
        # Older oslo.utils (7.3, for one) has no LUKS inspector: the file is opaque bytes, safe to hand QEMU as raw.
        assert ii.inspect_file(str(path)).format == "raw"


def test_qed_is_always_refused(make):
    refused(make("disk.qed", "qed"), "qed images are never accepted", allowed_formats=ALL)


def test_encrypted_qcow2_is_refused(make):
    path = make("enc.qcow2", "qcow2", "10M", "--object", "secret,id=sec0,data=secret",
                "-o", "encrypt.format=luks,encrypt.key-secret=sec0")
    refused(path, "encrypted", "Decrypt")


def test_qcow2_with_unknown_incompatible_features_is_refused(make):
    refused(make("l2.qcow2", "qcow2", "10M", "-o", "extended_l2=on"), "incompatible features", "compat=1.1")


def test_malformed_partition_tables_are_refused(tmp_path):
    # A hybrid MBR: a protective GPT entry next to a real partition.
    hybrid = mbr_disk(tmp_path / "hybrid.img", [(0, 0xEE, 1, 1000), (0, 0x83, 1001, 1000)])
    refused(hybrid, "partition table is malformed", "extra partitions", declared_format="raw")
    # A boot sector with no partition at all, as Nova refuses it too: ship such a disk as qcow2.
    bare = mbr_disk(tmp_path / "bare.img", [])
    refused(bare, "partition table is malformed", "no partitions")


# --- refused: declared format does not match the content --------------------------------------------------------

def test_qcow2_renamed_raw_and_declared_raw_is_refused(make, tmp_path):
    path = make("disk.qcow2", "qcow2")
    disguised = tmp_path / "disk.raw"
    path.rename(disguised)
    err = refused(disguised, "declared raw but the content is qcow2", "declare it as qcow2", declared_format="raw")
    assert err.details == {"found": "qcow2", "declared": "raw"}


def test_raw_declared_qcow2_is_refused(make):
    refused(make("disk.raw", "raw"), "declared qcow2 but the content is raw", declared_format="qcow2")


def test_declared_format_can_be_given_at_finish(make):
    data = make("disk.qcow2", "qcow2").read_bytes()
    inspector = ii.Inspector()
    inspector.feed(data)
    with pytest.raises(UnsafeImageError):
        inspector.finish(declared_format="raw")


# --- streaming --------------------------------------------------------------------------------------------------

def _feed_in_pieces(data, sizes, **kwargs):
    inspector = ii.Inspector(**kwargs)
    pos = 0
    for size in sizes:
        inspector.feed(data[pos:pos + size])
        pos += size
    while pos < len(data):
        inspector.feed(data[pos:pos + 7919])
        pos += 7919
    assert inspector.bytes_read == len(data)
    return inspector.finish()


def test_streaming_gives_the_file_result_whatever_the_chunk_sizes(make):
    path = make("disk.qcow2", "qcow2", "10M")
    data = path.read_bytes()
    expected = ii.inspect_file(str(path))
    assert _feed_in_pieces(data, [1] * 600) == expected
    assert _feed_in_pieces(data, [len(data)]) == expected
    assert _feed_in_pieces(data, [0, 3, ii.INSPECT_CHUNK - 3, 5]) == expected


def test_streaming_in_tiny_chunks_still_finds_a_vmdk_descriptor():
    # Fed to oslo's InspectWrapper byte by byte, a flat VMDK descriptor is taken for raw; the re-chunking in
    # Inspector makes detection independent of how the bytes arrive.
    data = FLAT_DESCRIPTOR.encode()
    with pytest.raises(UnsafeImageError) as err:
        _feed_in_pieces(data, [1] * len(data), allowed_formats=ALL)
    assert "monolithicFlat" in str(err.value)


def test_streaming_large_raw_hash(tmp_path):
    data = bytes(range(256)) * (3 * MIB // 256) + b"tail"
    report = _feed_in_pieces(data, [65536] * 10, declared_format="raw")
    assert report.sha256 == hashlib.sha256(data).hexdigest()
    assert report.virtual_size == len(data)


def test_inspector_is_single_use(make):
    inspector = ii.Inspector()
    inspector.feed(b"\0" * 1024)
    inspector.finish()
    with pytest.raises(RuntimeError):
        inspector.feed(b"\0")
    with pytest.raises(RuntimeError):
        inspector.finish()


# --- arguments and environment ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, field, why", [
    ({"declared_format": "vmdk"}, "disk_format", "not allowed"),
    ({"declared_format": "qcow3"}, "disk_format", "not a known disk format"),
    ({"declared_format": "gpt"}, "disk_format", "partition table"),
    ({"declared_format": "iso", "format_field": "images[2].disk_format"}, "images[2].disk_format", "not allowed"),
    ({"allowed_formats": ["raw", "ext4"]}, "allowed_formats", "not a disk format"),
    ({"allowed_formats": []}, "allowed_formats", "at least one"),
    ({"hash_algorithms": ["nope"]}, "hash_algorithms", "not a hash algorithm"),
])
def test_bad_arguments_fail_before_any_byte_is_read(kwargs, field, why):
    with pytest.raises(ValidationError) as err:
        ii.Inspector(**kwargs)
    assert not isinstance(err.value, UnsafeImageError)
    assert err.value.field == field
    assert why in str(err.value)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.raw"
    empty.write_bytes(b"")
    with pytest.raises(ValidationError) as err:
        ii.inspect_file(str(empty), field="images[0].url")
    assert err.value.field == "images[0].url"
    assert "empty" in str(err.value)
    with pytest.raises(NotFoundError):
        ii.inspect_file(str(tmp_path / "nope.qcow2"))


def test_known_formats_hides_gpt():
    known = ii.known_formats()
    assert "raw" in known and "qcow2" in known and "vmdk" in known
    assert "gpt" not in known


def test_missing_oslo_utils_is_a_typed_error(monkeypatch):
    monkeypatch.setattr(ii, "HAS_FORMAT_INSPECTOR", False)
    with pytest.raises(MissingLibraryError) as err:
        ii.Inspector()
    assert "oslo.utils" in str(err.value)


# --- truncated headers of other formats (issue 14) ---------------------------------------------------------------

@pytest.mark.parametrize("offset, magic", [(offset, magic) for offset, magic, _name in ii.FOREIGN_SIGNATURES],
                         ids=[name for _offset, _magic, name in ii.FOREIGN_SIGNATURES])
@pytest.mark.parametrize("declared", ["raw", None])
def test_raw_content_with_another_formats_signature_is_refused(offset, magic, declared):
    data = bytearray(max(512, offset + len(magic) + 16))
    data[offset:offset + len(magic)] = magic
    # Fed in small pieces: the signature must be found whatever the reads look like.
    inspector = ii.Inspector(declared_format=declared)
    for start in range(0, len(data), 7):
        inspector.feed(bytes(data[start:start + 7]))
    # Refused either by format_inspector (it recognised an incomplete header) or by the signature check.
    with pytest.raises(UnsafeImageError):
        inspector.finish()


def test_first_48_bytes_of_a_qcow2_are_refused(make, tmp_path):
    head = tmp_path / "head.img"
    head.write_bytes(make("whole.qcow2", "qcow2").read_bytes()[:48])
    refused(head, "qcow", "signature", declared_format="raw")
    refused(head, "qcow", "signature")


def test_signature_later_in_raw_content_is_accepted():
    data = bytearray(MIB)
    data[4096:4100] = b"QFI\xfb"  # file contents inside a raw disk, not a header
    inspector = ii.Inspector(declared_format="raw")
    inspector.feed(bytes(data))
    assert inspector.finish().format == "raw"


# --- what the path is (issue 14) ---------------------------------------------------------------------------------

def test_sources_that_are_not_regular_files_are_refused_by_kind(make, tmp_path):
    import os

    image = make("good.qcow2", "qcow2")
    (tmp_path / "link").symlink_to(image)
    os.mkfifo(str(tmp_path / "fifo"))
    for path, kind in ((tmp_path / "link", "symbolic link"), (tmp_path, "directory"),
                       (tmp_path / "fifo", "FIFO"), ("/dev/null", "character device")):
        with pytest.raises(ValidationError) as err:
            ii.inspect_file(str(path), field="src")
        assert kind in str(err.value) and err.value.field == "src"
    with pytest.raises(NotFoundError):
        ii.inspect_file(str(tmp_path / "missing"))


def test_descriptor_is_inspected_from_its_start(make):
    import os

    image = make("good.qcow2", "qcow2")
    fd = ii.open_image_file(str(image))
    try:
        os.read(fd, 100)
        assert ii.inspect_fd(fd).format == "qcow2"
    finally:
        os.close(fd)
