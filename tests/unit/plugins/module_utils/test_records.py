"""RecordStore: JSON documents in volumes of the records pool, read and written through the client."""
import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import LibvirtOperationError, NotFoundError
from ansible_collections.virtfleet.compute.plugins.module_utils._records import RecordStore

BLOCK = 4096


def capacity(client, key, pool="virtfleet-records"):
    vol = client.lookup_volume(client.lookup_pool(pool), key + ".json")
    return client.volume_info(vol)["capacity"]


@pytest.mark.parametrize("document", [
    {},
    {"enabled": True, "reason": None, "ratios": {"cpu": 16.0, "ram": 1.5}},
    ["a", 1, 2.5, None, {"nested": [True, False]}],
    {"unicode": "Zürich – 東京", "spaces": "  kept  ", "newline": "a\nb"},
    "a plain string",
])
def test_a_document_reads_back_as_written(client, document):
    store = RecordStore(client)
    store.write("host", document)

    assert RecordStore(client).read("host") == document
    assert capacity(client, "host") % BLOCK == 0


def test_documents_are_kept_apart_by_key(client):
    store = RecordStore(client)
    store.write("host", {"a": 1})
    store.write("flavors", {"b": 2})
    assert (store.read("host"), store.read("flavors"), store.read("images")) == ({"a": 1}, {"b": 2}, None)


def test_a_document_grows_beyond_one_block_and_shrinks_back(client):
    store = RecordStore(client)
    store.write("images", {"x": "small"})
    assert capacity(client, "images") == BLOCK

    big = dict(("image-%03d" % i, "sha256:" + "ab" * 32) for i in range(100))
    store.write("images", big)
    grown = capacity(client, "images")
    assert grown > 2 * BLOCK and grown % BLOCK == 0
    assert store.read("images") == big

    store.write("images", {"x": "small again"})
    assert capacity(client, "images") == grown  # a volume never shrinks; the padding is ignored
    assert store.read("images") == {"x": "small again"}


@pytest.mark.parametrize("size", [BLOCK - 1, BLOCK, BLOCK + 1])
def test_a_document_at_a_block_boundary_fits_and_reads_back(client, size):
    store = RecordStore(client)
    # Written as '{\n "k": "..."\n}\n': 13 bytes around the value.
    document = {"k": "x" * (size - 13)}
    store.write("edge", document)
    assert store.read("edge") == document
    assert capacity(client, "edge") >= size


def test_a_missing_pool_reads_as_no_documents_and_refuses_writes(client):
    store = RecordStore(client, pool_name="nowhere")

    assert not store.exists()
    assert store.read("host") is None
    assert store.delete("host") is False
    with pytest.raises(NotFoundError, match="nowhere"):
        store.write("host", {})


def test_ensure_pool_creates_and_starts_a_missing_pool_once(client, tmp_path):
    store = RecordStore(client, pool_name="fresh-records")

    assert store.ensure_pool(path=str(tmp_path / "fresh")) is True
    pool = client.find_pool("fresh-records")
    assert pool.isActive() and client.pool_autostart(pool)
    assert store.ensure_pool(path=str(tmp_path / "fresh")) is False
    store.write("host", {"ok": True})
    assert RecordStore(client, pool_name="fresh-records").read("host") == {"ok": True}


def test_ensure_pool_starts_an_inactive_pool(client):
    client.stop_pool(client.find_pool("virtfleet-records"))
    store = RecordStore(client)

    assert not store.exists()
    assert store.ensure_pool() is True
    assert client.find_pool("virtfleet-records").isActive()


def test_delete_removes_the_document(client):
    store = RecordStore(client)
    store.write("host", {"a": 1})
    assert store.delete("host") is True
    assert store.read("host") is None
    assert store.delete("host") is False


def test_a_corrupt_document_is_an_error_naming_the_record(client):
    store = RecordStore(client)
    store.write("host", {"a": 1})
    vol = client.lookup_volume(client.lookup_pool("virtfleet-records"), "host.json")
    client.upload_bytes(vol, b"{not json" + b" " * (BLOCK - 9))

    with pytest.raises(LibvirtOperationError, match="record host"):
        store.read("host")


def test_an_empty_volume_reads_as_no_document(client):
    store = RecordStore(client)
    store.write("host", {"a": 1})
    vol = client.lookup_volume(client.lookup_pool("virtfleet-records"), "host.json")
    client.upload_bytes(vol, b"\0" * BLOCK)
    assert store.read("host") is None
