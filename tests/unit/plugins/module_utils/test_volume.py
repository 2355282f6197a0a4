"""The volume module's logic and attachment planning, against a private libvirt test driver per test.

The test driver has no secrets and no device hot-plug; VolumeClient keeps both in memory and is otherwise the real
client (MemoryClient, see conftest). Every change runs in check mode first (which must change nothing and predict
the real run's actions and diff exactly), then for real, then again (nothing left to do).
"""
import hashlib
import json
import uuid as uuidlib
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils import _attachments, _limits, _volume
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import (
    ConflictError,
    LibvirtOperationError,
    NotFoundError,
    ValidationError,
    VirtfleetError,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._plan import StepFailed
from ansible_collections.virtfleet.compute.plugins.module_utils._volume import (
    VolumeStore,
    converge_volume,
    list_volumes,
    parse_size,
    passphrase_check,
    passphrase_matches,
)
from tests.unit.plugins.module_utils.conftest import MemoryClient, volume_xml

MIB = 1024 ** 2
GIB = 1024 ** 3
POOL = "virtfleet-volumes"
SECRET_WORDS = ("correct horse battery staple", "Tr0ub4dor&3")


class FakeSecret:
    def __init__(self, uuid):
        self.uuid = uuid

    def UUIDString(self):  # noqa: N802 (libvirt's name)
        return self.uuid


class VolumeClient(MemoryClient):
    """MemoryClient plus libvirt secrets and device attach/detach, in memory."""

    def __init__(self, uri):
        super(VolumeClient, self).__init__(uri)
        self.secrets = {}  # uuid -> {"usage": path, "value": bytes or None, "xml": str}
        self.copies = []  # (new volume, source volume, secret of the new one)
        self.live = {}  # domain name -> {target: <disk>} the "running guest" has
        self.fail_copy_from = None

    def lookup_secret(self, uuid):
        return FakeSecret(uuid) if uuid in self.secrets else None

    def lookup_volume_secret(self, path):
        for uuid, secret in self.secrets.items():
            if secret["usage"] == path:
                return FakeSecret(uuid)
        return None

    def define_secret(self, xml):
        root = ET.fromstring(xml)
        assert root.get("private") == "yes" and root.get("ephemeral") == "no"
        uuid = root.findtext("uuid")
        usage = root.findtext("usage/volume")
        for other, secret in self.secrets.items():
            if other != uuid and secret["usage"] == usage:
                raise LibvirtOperationError("a secret for volume %s is already defined" % usage)
        self.secrets.setdefault(uuid, {"value": None})
        self.secrets[uuid].update(usage=usage, xml=xml)
        return FakeSecret(uuid)

    def set_secret_value(self, secret, value):
        assert isinstance(value, bytes)
        self.secrets[secret.uuid]["value"] = value

    def undefine_secret(self, secret):
        del self.secrets[secret.uuid]

    def build_volume(self, pool, xml, source=None):
        if source is not None and source.name() == self.fail_copy_from:
            raise LibvirtOperationError("qemu-img convert failed (injected)")
        root = ET.fromstring(xml)
        if source is None:
            vol = self.create_volume(pool, xml)
        else:
            # libvirt copies at the source's size, whatever capacity the new volume asks for. (The test driver
            # copies only within a pool: create, then copy the content.)
            root.find("capacity").text = str(self.volume_info(source)["capacity"])
            vol = self.create_volume(pool, ET.tostring(root, encoding="unicode"))
            self.contents[vol.key()] = self.contents.get(source.key(), b"")
        secret = root.find("target/encryption/secret")
        self.copies.append((vol.name(), source.name() if source is not None else None,
                            secret.get("uuid") if secret is not None else None))
        return vol

    def domain_active(self, dom):
        return bool(dom.isActive())

    def _redefine(self, dom, change):
        root = ET.fromstring(self.domain_xml(dom, inactive=True))
        change(root.find("devices"))
        self.define_domain(ET.tostring(root, encoding="unicode"))

    def attach_device(self, dom, xml, live):
        elem = ET.fromstring(xml)
        self._redefine(dom, lambda devices: devices.append(elem))
        if live and elem.tag == "disk":
            self.live.setdefault(dom.name(), {})[elem.find("target").get("dev")] = elem

    def detach_device(self, dom, xml, live):
        target = ET.fromstring(xml).find("target").get("dev")

        def remove(devices):
            for disk in devices.findall("disk"):
                if disk.find("target").get("dev") == target:
                    devices.remove(disk)
                    return
            raise LibvirtOperationError("no disk %s" % target)

        self._redefine(dom, remove)
        if live:
            self.live.get(dom.name(), {}).pop(target, None)

    def domain_xml(self, dom, inactive=True):
        xml = super(VolumeClient, self).domain_xml(dom, inactive=inactive)
        if inactive or dom.name() not in self.live:
            return xml
        # The "running guest": the definition without its data volumes, plus the ones hot-plugged into it.
        root = ET.fromstring(super(VolumeClient, self).domain_xml(dom, inactive=True))
        devices = root.find("devices")
        for disk in devices.findall("disk"):
            if len(disk.findtext("serial") or "") == _volume.SERIAL_LENGTH:
                devices.remove(disk)
        devices.extend(self.live[dom.name()].values())
        return ET.tostring(root, encoding="unicode")


@pytest.fixture
def client(node_xml, tmp_path):
    # Our own pool next to the conftest's three, in the same node file.
    text = open(node_xml).read().replace(
        "</node>", "<pool type='dir'><name>%s</name><target><path>%s</path></target></pool></node>"
        % (POOL, tmp_path / POOL))
    with open(node_xml, "w") as handle:
        handle.write(text)
    client = VolumeClient("test://" + node_xml)
    yield client
    client.close()


def host_state(client):
    """Everything a converge could change: volumes with capacity and content, secrets, domains' definitions."""
    volumes = {}
    for pool in client.list_pools():
        for vol in client.list_volumes(pool):
            data = client.download_bytes(vol)
            volumes["%s/%s" % (pool.name(), vol.name())] = (client.volume_info(vol)["capacity"],
                                                            hashlib.sha256(data).hexdigest())
    domains = dict((d.name(), client.domain_xml(d)) for d in client.list_domains())
    return {"volumes": volumes, "secrets": json.dumps(client.secrets, sort_keys=True, default=repr),
            "domains": domains}


def params(name="data", **overrides):
    out = dict(name=name, size="64M")
    out.update(overrides)
    return out


def four_steps(client, args):
    """Check mode predicts, the run applies exactly that, a second run and a second check do nothing."""
    before = host_state(client)
    check = converge_volume(client, args, check_mode=True, diff_mode=True)
    assert host_state(client) == before, "check mode changed the host"
    real = converge_volume(client, args, diff_mode=True)
    assert (check["changed"], check["actions"], check["diff"]) == (real["changed"], real["actions"], real["diff"])
    again = converge_volume(client, args, diff_mode=True)
    assert (again["changed"], again["actions"]) == (False, []), again["actions"]
    assert again["diff"]["before"] == again["diff"]["after"] == real["diff"]["after"]
    check_again = converge_volume(client, args, check_mode=True)
    assert (check_again["changed"], check_again["actions"]) == (False, [])
    return real


def refused(client, args, error=VirtfleetError):
    before = host_state(client)
    for check_mode in (True, False):
        with pytest.raises(error) as info:
            converge_volume(client, args, check_mode=check_mode)
        assert host_state(client) == before
    return info.value


def vol_of(client, name="data", pool=POOL):
    return client.lookup_volume(client.lookup_pool(pool), name)


def record_of(client, name="data", pool=POOL):
    return VolumeStore(client).read(pool, name)


def no_passphrase_anywhere(client, result, *words):
    """The passphrase is in no result, diff, action, record or warning."""
    text = json.dumps(result, default=str)
    records = json.dumps(VolumeStore(client).list())
    for word in words:
        assert word not in text and word not in records


# -- pure helpers ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, size", [
    (10, 10 * GIB), ("10", 10 * GIB), ("512M", 512 * MIB), ("512MiB", 512 * MIB), ("20GiB", 20 * GIB),
    ("1T", 1024 * GIB), ("1GB", 10 ** 9), ("512MB", 512 * 10 ** 6), (" 64 m ", 64 * MIB), ("4096b", 4096),
])
def test_sizes(value, size):
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["", "ten", "10 parsecs", "-1G", "0", "100b", True, "1.5G", "500MB"])
def test_bad_sizes_are_refused(value):
    with pytest.raises(ValidationError) as info:
        parse_size(value)
    assert info.value.field == "size"


def test_the_passphrase_check_value_is_salted_and_verifies():
    one = passphrase_check(SECRET_WORDS[0], iterations=1000)
    two = passphrase_check(SECRET_WORDS[0], iterations=1000)
    assert one["digest"] != two["digest"]  # salted
    assert passphrase_matches(SECRET_WORDS[0], one) and passphrase_matches(SECRET_WORDS[0], two)
    assert not passphrase_matches(SECRET_WORDS[1], one)
    assert not passphrase_matches(SECRET_WORDS[0], None)
    assert SECRET_WORDS[0] not in json.dumps(one)


@pytest.fixture(autouse=True)
def cheap_kdf(monkeypatch):
    # The real count costs ~0.2 s per check; the records keep the count, so a smaller one is just as correct here.
    monkeypatch.setattr(_volume, "KDF_ITERATIONS", 1000)
    monkeypatch.setattr(_volume.passphrase_check, "__defaults__", (None, 1000))


@pytest.mark.parametrize("overrides, field", [
    (dict(name="a/b"), "name"),
    (dict(name="data" + _volume.ROTATING_SUFFIX), "name"),
    (dict(state="gone"), "state"),
    (dict(size="lots"), "size"),
    (dict(format="vmdk"), "format"),
    (dict(source={"image": "a", "volume": "b"}), "source"),
    (dict(source={"url": "http://x"}), "source"),
    (dict(metadata={"bad key": 1}), "metadata"),
    (dict(passphrase=""), "passphrase"),
    (dict(passphrase="x", encrypted=False), "passphrase"),
    (dict(shareable=True, format="qcow2"), "shareable"),
    (dict(shareable=True, format="raw", passphrase="x"), "shareable"),
])
def test_bad_input_names_the_field(client, overrides, field):
    error = refused(client, params(**overrides), ValidationError)
    assert error.field == field


# -- lifecycle ------------------------------------------------------------------------------------------------------

def claim_steps(client, name, gb):
    """The two steps around a volume's creation that claim its disk under the host's claim lock."""
    host = client.hostname()
    return ("claim %d GB disk for volume virtfleet-volumes/%s on host %s (checked again under the host's claim lock)"
            % (gb, name, host),
            "verify the claim of volume virtfleet-volumes/%s on host %s and release the claim lock" % (name, host))


def test_create_grow_change_metadata_delete_each_in_four_steps(client):
    created = four_steps(client, params(metadata={"owner": "dba", "n": 3}))
    claim, verify = claim_steps(client, "data", 1)  # 64 MiB takes a whole GB of the host's disk claim
    assert created["actions"] == [claim, "create volume virtfleet-volumes/data (64 MiB qcow2)",
                                  "record volume virtfleet-volumes/data", verify]
    volume = created["volume"]
    assert (volume["size"], volume["format"], volume["encrypted"], volume["status"]) == (64 * MIB, "qcow2", False,
                                                                                         "available")
    assert volume["metadata"] == {"owner": "dba", "n": "3"}
    assert volume["serial"] == volume["id"][:20] and str(uuidlib.UUID(volume["id"])) == volume["id"]
    assert created["diff"]["before"] == {}
    assert "secret" not in volume

    grown = four_steps(client, params(size="128M"))
    assert grown["actions"] == ["grow volume virtfleet-volumes/data from 64 MiB to 128 MiB"]
    assert client.volume_info(vol_of(client))["capacity"] == 128 * MIB
    assert grown["volume"]["id"] == volume["id"]

    # Options left out keep what the volume has.
    assert not converge_volume(client, {"name": "data"})["changed"]

    relabelled = four_steps(client, params(size="128M", metadata={"owner": "ops"}))
    assert relabelled["actions"] == ["update the record of volume virtfleet-volumes/data (metadata)"]
    assert record_of(client)["metadata"] == {"owner": "ops"}

    deleted = four_steps(client, {"name": "data", "state": "absent"})
    assert deleted["actions"] == ["delete volume virtfleet-volumes/data",
                                  "forget volume virtfleet-volumes/data in the volume records"]
    assert vol_of(client) is None and record_of(client) is None
    assert deleted["volume"] == {}


def test_check_mode_predicts_the_volume_it_would_create(client):
    check = converge_volume(client, params(format="raw", shareable=True), check_mode=True)
    assert check["volume"]["id"] is None
    assert (check["volume"]["size"], check["volume"]["format"], check["volume"]["shareable"]) == (64 * MIB, "raw", True)


@pytest.mark.parametrize("overrides, field, words", [
    (dict(size="32M"), "size", "never shrinks"),
    (dict(format="raw"), "format", "format never changes"),
    (dict(passphrase=SECRET_WORDS[0]), "passphrase", "encryption cannot be added"),
    (dict(encrypted=True), "encrypted", "encryption cannot be added"),
    (dict(shareable=True), "shareable", "must be raw"),
])
def test_refusals_change_nothing(client, overrides, field, words):
    converge_volume(client, params())
    error = refused(client, params(**overrides))
    assert error.field == field
    assert words in error.message


def test_a_volume_not_created_here_is_never_touched(client):
    client.create_volume(client.lookup_pool(POOL), volume_xml("foreign", GIB))
    for state in ("present", "absent"):
        error = refused(client, {"name": "foreign", "state": state, "size": 2}, ConflictError)
        assert "not created by virtfleet.compute" in error.message


def test_a_missing_pool_is_named(client):
    error = refused(client, params(pool="vf-no-such-pool"), NotFoundError)
    assert error.field == "pool"


def test_absent_when_there_is_nothing_is_no_change(client):
    assert four_steps if not converge_volume(client, {"name": "data", "state": "absent"})["changed"] else False


def test_a_volume_deleted_behind_our_back_is_recreated_with_a_warning(client):
    converge_volume(client, params())
    client.delete_volume(vol_of(client))
    result = converge_volume(client, params())
    assert result["actions"][1].startswith("create volume")
    assert "created again, empty" in result["warnings"][0]


# -- copies ---------------------------------------------------------------------------------------------------------

def test_copy_of_an_image_is_a_full_copy_at_least_as_large(client, base_image):
    copied = four_steps(client, params(size=None, source={"image": "base.qcow2"}, format="raw"))
    assert copied["actions"][1] == ("copy image virtfleet-images/base.qcow2 into new volume virtfleet-volumes/data "
                                    "(1 GiB raw)")
    assert client.copies == [("data", "base.qcow2", None)]
    assert copied["volume"]["source"] == {"image": "base.qcow2", "pool": "virtfleet-images"}
    assert ET.fromstring(client.volume_xml(vol_of(client))).find("backingStore/path") is None

    bigger = converge_volume(client, params(name="big", size=2, source={"image": "base.qcow2"}))
    assert bigger["volume"]["size"] == 2 * GIB  # libvirt copied 1 GiB; the step grew it

    error = refused(client, params(name="small", size="512M", source={"image": "base.qcow2"}), ValidationError)
    assert error.field == "size"
    error = refused(client, params(name="none", source={"image": "missing.qcow2"}), NotFoundError)
    assert error.field == "source.image"


def test_copy_of_a_volume(client):
    converge_volume(client, params())
    client.upload_bytes(vol_of(client), b"payload")
    copied = converge_volume(client, params(name="data-copy", size=None, source={"volume": "data"}))
    assert copied["actions"][1] == ("copy volume virtfleet-volumes/data into new volume virtfleet-volumes/data-copy "
                                    "(64 MiB qcow2)")
    assert client.download_bytes(vol_of(client, "data-copy")) == b"payload"


def test_a_copy_of_an_encrypted_volume_must_be_encrypted(client):
    converge_volume(client, params(passphrase=SECRET_WORDS[0]))
    error = refused(client, params(name="plain", size=None, source={"volume": "data"}), ValidationError)
    assert error.field == "passphrase"
    copied = converge_volume(client, params(name="enc-copy", size=None, source={"volume": "data"},
                                            passphrase=SECRET_WORDS[1]))
    assert copied["volume"]["encrypted"]
    assert client.copies[-1][2] == record_of(client, "enc-copy")["secret_uuid"]


def test_a_copy_of_an_unmanaged_volume_is_refused(client):
    client.create_volume(client.lookup_pool(POOL), volume_xml("foreign", GIB))
    error = refused(client, params(name="copy", source={"volume": "foreign"}), ConflictError)
    assert error.field == "source.volume"


# -- encryption -----------------------------------------------------------------------------------------------------

def test_an_encrypted_volume_gets_a_private_secret_and_the_passphrase_goes_nowhere_else(client):
    created = four_steps(client, params(passphrase=SECRET_WORDS[0]))
    assert created["actions"] == [
        "define libvirt secret for volume virtfleet-volumes/data",
        claim_steps(client, "data", 1)[0],
        "create volume virtfleet-volumes/data (64 MiB qcow2, LUKS-encrypted)",
        "record volume virtfleet-volumes/data",
        claim_steps(client, "data", 1)[1],
    ]
    record = record_of(client)
    secret = client.secrets[record["secret_uuid"]]
    assert secret["value"] == SECRET_WORDS[0].encode()
    assert secret["usage"] == client.volume_path(vol_of(client))
    xml = ET.fromstring(client.volume_xml(vol_of(client)))
    assert xml.find("target/encryption").get("format") == "luks"
    assert xml.find("target/encryption/secret").get("uuid") == record["secret_uuid"]
    assert (created["volume"]["secret"], created["volume"]["passphrase_version"]) == ("present", 1)
    no_passphrase_anywhere(client, created, SECRET_WORDS[0])
    # Encrypted needs a passphrase to be created at all.
    error = refused(client, params(name="other", encrypted=True), ValidationError)
    assert error.field == "passphrase"


def test_another_passphrase_is_refused_unless_rotate_and_rotation_reencrypts_twice(client):
    converge_volume(client, params(passphrase=SECRET_WORDS[0]))
    client.upload_bytes(vol_of(client), b"ciphertext of the data")
    old = record_of(client)

    error = refused(client, params(passphrase=SECRET_WORDS[1]), ConflictError)
    assert error.field == "passphrase" and "rotate: true" in error.message

    rotated = four_steps(client, params(passphrase=SECRET_WORDS[1], rotate=True))
    assert rotated["actions"] == [
        "define a temporary libvirt secret for virtfleet-volumes/data.vf-rotating",
        "re-encrypt volume virtfleet-volumes/data into virtfleet-volumes/data.vf-rotating with the new passphrase "
        "(copy 1 of 2)",
        "note the rotation of volume virtfleet-volumes/data in its record",
        "replace volume virtfleet-volumes/data by its re-encrypted copy (copy 2 of 2)",
        "delete virtfleet-volumes/data.vf-rotating and its temporary secret",
        "update the record of volume virtfleet-volumes/data (passphrase)",
    ]
    new = record_of(client)
    assert (new["id"], new["secret_uuid"]) == (old["id"], old["secret_uuid"])  # servers see the same volume
    assert list(client.secrets) == [old["secret_uuid"]]
    assert client.secrets[old["secret_uuid"]]["value"] == SECRET_WORDS[1].encode()
    assert [c[1] for c in client.copies[-2:]] == ["data", "data.vf-rotating"]
    assert client.download_bytes(vol_of(client)) == b"ciphertext of the data"
    assert vol_of(client, "data.vf-rotating") is None
    assert rotated["diff"]["after"]["passphrase_version"] == 2
    assert "rotation" not in new
    assert passphrase_matches(SECRET_WORDS[1], new["passphrase_check"])
    no_passphrase_anywhere(client, rotated, *SECRET_WORDS)
    # The old passphrase is now the "other" one.
    assert refused(client, params(passphrase=SECRET_WORDS[0]), ConflictError).field == "passphrase"


def test_a_rotation_that_fails_before_the_original_is_deleted_is_undone(client):
    converge_volume(client, params(passphrase=SECRET_WORDS[0]))
    before = host_state(client)
    client.fail_copy_from = "data"
    with pytest.raises(StepFailed) as info:
        converge_volume(client, params(passphrase=SECRET_WORDS[1], rotate=True))
    assert "copy 1 of 2" in info.value.details["failed"]
    assert host_state(client) == before


def test_a_rotation_interrupted_after_the_original_went_is_finished_by_running_again(client):
    converge_volume(client, params(passphrase=SECRET_WORDS[0]))
    client.upload_bytes(vol_of(client), b"precious")
    client.fail_copy_from = "data.vf-rotating"  # copy 2 of 2 fails: the data is only in the temporary copy now
    with pytest.raises(StepFailed) as info:
        converge_volume(client, params(passphrase=SECRET_WORDS[1], rotate=True))
    assert "kept" in " ".join(info.value.details["rollback_errors"])
    assert vol_of(client) is None and vol_of(client, "data.vf-rotating") is not None

    listed = list_volumes(client)
    assert listed[0]["status"] == "rotating"
    # The old passphrase cannot finish it; attaching is refused meanwhile.
    assert refused(client, params(passphrase=SECRET_WORDS[0], rotate=True), ConflictError).field == "passphrase"
    with pytest.raises(ConflictError):
        _attachments.plan_attachments(client, "web1", _attachments.validate_attachments(["data"]))

    client.fail_copy_from = None
    finished = four_steps(client, params(passphrase=SECRET_WORDS[1], rotate=True))
    assert finished["actions"][0].startswith("restore volume virtfleet-volumes/data from its re-encrypted copy")
    assert client.download_bytes(vol_of(client)) == b"precious"
    assert vol_of(client, "data.vf-rotating") is None and len(client.secrets) == 1
    assert record_of(client)["passphrase_version"] == 2


def test_a_lost_secret_is_reported_and_restored_only_by_the_right_passphrase(client):
    converge_volume(client, params(passphrase=SECRET_WORDS[0]))
    uuid = record_of(client)["secret_uuid"]
    client.undefine_secret(FakeSecret(uuid))

    plain = converge_volume(client, params())
    assert not plain["changed"] and "secret" in plain["warnings"][0]
    assert plain["volume"]["secret"] == "missing"

    error = refused(client, params(passphrase=SECRET_WORDS[1], rotate=True), ConflictError)
    assert "unreadable" in error.message

    restored = four_steps(client, params(passphrase=SECRET_WORDS[0]))
    assert restored["actions"] == ["restore libvirt secret %s of volume virtfleet-volumes/data from the passphrase"
                                   % uuid]
    assert client.secrets[uuid]["value"] == SECRET_WORDS[0].encode()
    assert restored["diff"]["before"]["secret"] == "missing" and restored["diff"]["after"]["secret"] == "present"


def test_a_foreign_secret_for_the_volume_path_is_never_overwritten(client):
    path = "%s/%s" % (_volume.pool_path(client, client.lookup_pool(POOL)), "data")
    client.define_secret(_volume.secret_xml(str(uuidlib.uuid4()), path, POOL, "someone-else"))
    error = refused(client, params(passphrase=SECRET_WORDS[0]), ConflictError)
    assert "never overwritten" in error.message


def test_deleting_an_encrypted_volume_undefines_its_secret(client):
    converge_volume(client, params(passphrase=SECRET_WORDS[0]))
    deleted = converge_volume(client, {"name": "data", "state": "absent"})
    assert deleted["actions"][1].startswith("undefine libvirt secret")
    assert client.secrets == {}


# -- attachments ----------------------------------------------------------------------------------------------------

def make_domain(client, name, running=False, disks=()):
    xml = ("<domain type='test'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
           "<os><type arch='x86_64'>hvm</type></os><devices>"
           "<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/>"
           "<source pool='virtfleet-instances' volume='%s-root.qcow2'/><target dev='vda' bus='virtio'/>"
           "<serial>root</serial></disk>%s</devices></domain>") % (name, name, "".join(disks))
    dom = client.define_domain(xml)
    if running:
        client.start_domain(dom)
        client.live[name] = {}
    return dom


def attach(client, server, volumes, running_xml=True):
    """Plan and run the attachment steps of ``server`` the way the server module does."""
    dom = client.lookup_domain(server)
    inactive = client.domain_xml(dom)
    live = client.domain_xml(dom, inactive=False) if client.domain_active(dom) and running_xml else None
    plan = _attachments.plan_attachments(client, server, _attachments.validate_attachments(volumes), inactive, live)
    for _label, run, _undo in plan.steps(client, lambda: dom):
        run()
    return plan


def test_attach_keys_by_volume_reorders_nothing_and_detaches_what_is_gone(client):
    for name in ("a", "b", "c"):
        converge_volume(client, params(name=name))
    make_domain(client, "web1", running=True)

    first = attach(client, "web1", ["b", "a", {"name": "c", "bus": "scsi", "read_only": True}])
    assert [(v["name"], v["device"], v["bus"], v["read_only"]) for v in first.view()] == [
        ("a", "vde", "virtio", False), ("b", "vdf", "virtio", False), ("c", "sda", "scsi", True)]
    assert set(client.live["web1"]) == {"vde", "vdf", "sda"}
    dom = client.lookup_domain("web1")
    assert _attachments.has_scsi_controller(client.domain_xml(dom))

    reordered = attach(client, "web1", [{"name": "c", "bus": "scsi", "read_only": True}, "a", "b"])
    assert not reordered.changed

    fewer = attach(client, "web1", ["b"])
    assert [s["name"] for s in fewer.attach] == [] and sorted(a["name"] for a in fewer.detach) == ["a", "c"]
    assert set(client.live["web1"]) == {"vdf"}
    assert [a["name"] for a in _attachments.attached_volumes(client.domain_xml(dom))] == ["b"]

    # What the volume side sees, both ways.
    listed = dict((v["name"], v) for v in list_volumes(client))
    assert listed["b"]["attachments"] == [{"server": "web1", "device": "vdf", "bus": "virtio", "read_only": False}]
    assert (listed["a"]["status"], listed["b"]["status"]) == ("available", "in-use")


def test_a_volume_is_attached_to_one_server_at_a_time_unless_shareable(client):
    converge_volume(client, params(name="solo"))
    converge_volume(client, params(name="shared", format="raw", shareable=True))
    make_domain(client, "web1")
    make_domain(client, "web2")
    attach(client, "web1", ["solo", "shared"])
    before = host_state(client)
    with pytest.raises(ConflictError) as info:
        attach(client, "web2", ["solo"])
    assert "attached to web1" in info.value.message and info.value.field == "volumes[0].name"
    assert host_state(client) == before

    both = attach(client, "web2", ["shared"])
    disk = ET.fromstring(client.domain_xml(client.lookup_domain("web2"))).find("devices/disk[shareable]")
    assert disk is not None and disk.find("driver").get("cache") == "none"
    assert [v["name"] for v in both.view()] == ["shared"]


def test_a_volume_still_held_by_a_running_guest_is_not_attached_elsewhere(client):
    converge_volume(client, params(name="solo"))
    make_domain(client, "web1", running=True)
    make_domain(client, "web2")
    attach(client, "web1", ["solo"])
    # The guest has not released it: gone from web1's definition, still in its live XML.
    dom = client.lookup_domain("web1")
    client._redefine(dom, lambda devices: [devices.remove(d) for d in devices.findall("disk")
                                           if d.find("target").get("dev") == "vde"])
    with pytest.raises(ConflictError) as info:
        attach(client, "web2", ["solo"])
    assert "still held by the running guest of web1" in info.value.message


def test_attaching_what_cannot_be_attached_is_refused(client):
    make_domain(client, "web1")
    client.create_volume(client.lookup_pool(POOL), volume_xml("foreign", GIB))
    with pytest.raises(NotFoundError) as missing:
        attach(client, "web1", ["nothing"])
    assert missing.value.field == "volumes[0].name"
    with pytest.raises(ConflictError) as foreign:
        attach(client, "web1", ["foreign"])
    assert "volume module" in foreign.value.message
    converge_volume(client, params(name="enc", passphrase=SECRET_WORDS[0]))
    client.undefine_secret(FakeSecret(record_of(client, "enc")["secret_uuid"]))
    with pytest.raises(ConflictError) as lost:
        attach(client, "web1", ["enc"])
    assert "secret" in lost.value.message


def test_an_encrypted_volume_is_attached_with_its_secret(client):
    converge_volume(client, params(name="enc", passphrase=SECRET_WORDS[0]))
    make_domain(client, "web1")
    plan = attach(client, "web1", ["enc"])
    assert plan.attach[0]["secret"] == record_of(client, "enc")["secret_uuid"]
    disk = ET.fromstring(client.domain_xml(client.lookup_domain("web1"))).find("devices/disk[serial]/source/..")
    found = _attachments.attached_volumes(client.domain_xml(client.lookup_domain("web1")))
    assert found[0]["secret"] == plan.attach[0]["secret"] and disk is not None


def test_an_unmanaged_disk_is_left_alone_and_its_target_skipped(client):
    converge_volume(client, params(name="a"))
    client.create_volume(client.lookup_pool(POOL), volume_xml("foreign", GIB))
    make_domain(client, "web1", disks=[
        "<disk type='volume' device='disk'><source pool='%s' volume='foreign'/><target dev='vde' bus='virtio'/>"
        "</disk>" % POOL])
    plan = attach(client, "web1", ["a"])
    assert [(s["name"], s["target"]) for s in plan.attach] == [("a", "vdf")]
    assert [v["name"] for v in plan.view()] == ["a", "foreign"]
    emptied = attach(client, "web1", [])
    assert emptied.detach[0]["name"] == "a" and len(emptied.detach) == 1


def test_deleting_an_attached_volume_is_refused_naming_the_server(client):
    converge_volume(client, params())
    make_domain(client, "web1")
    attach(client, "web1", ["data"])
    error = refused(client, {"name": "data", "state": "absent"}, ConflictError)
    assert "attached to web1" in error.message


def test_growing_a_volume_a_running_server_has_is_done_live(client):
    converge_volume(client, params())
    make_domain(client, "web1", running=True)
    attach(client, "web1", ["data"])
    grown = converge_volume(client, params(size="128M"))
    assert grown["actions"] == ["grow volume virtfleet-volumes/data from 64 MiB to 128 MiB (live, in web1)"]
    assert client.live_resizes == [("web1", "vde", 128 * MIB)]


def test_rotation_is_refused_while_a_running_server_has_the_volume(client):
    converge_volume(client, params(passphrase=SECRET_WORDS[0]))
    make_domain(client, "web1", running=True)
    attach(client, "web1", ["data"])
    error = refused(client, params(passphrase=SECRET_WORDS[1], rotate=True), ConflictError)
    assert error.field == "rotate" and "web1" in error.message


def test_delete_with_the_server_deletes_only_its_recorded_volumes_and_refuses_shared_ones(client):
    converge_volume(client, params(name="mine", passphrase=SECRET_WORDS[0]))
    converge_volume(client, params(name="shared", format="raw", shareable=True))
    make_domain(client, "web1")
    make_domain(client, "web2")
    attach(client, "web1", ["mine", "shared"])
    attach(client, "web2", ["shared"])
    xml = client.domain_xml(client.lookup_domain("web1"))
    with pytest.raises(ConflictError) as info:
        _attachments.delete_attached_steps(client, "web1", xml)
    assert "attached to web2 as well" in info.value.message and info.value.field == "delete_volumes"

    attach(client, "web1", ["mine"])
    steps = _attachments.delete_attached_steps(client, "web1", client.domain_xml(client.lookup_domain("web1")))
    assert [label for label, _run in steps] == ["delete volume virtfleet-volumes/mine (was attached to web1)"]
    for _label, run in steps:
        run()
    assert vol_of(client, "mine") is None and record_of(client, "mine") is None and client.secrets == {}
    assert vol_of(client, "shared") is not None


# -- limits (issue 14): a size libvirt cannot take, metadata without bound ---------------------------------------

def test_a_volume_of_ten_to_the_thirty_bytes_is_refused(client):
    with pytest.raises(ValidationError) as err:
        parse_size("1000000000000000000000000000000B")
    assert err.value.field == "size"
    error = refused(client, params(size="%dT" % (10 ** 18)), ValidationError)
    assert error.field == "size" and "64 TiB" in error.message
    assert parse_size("64T") == _limits.VOLUME_SIZE_MAX


def test_volume_metadata_is_bounded(client):
    metadata = dict(("k%d" % i, "v") for i in range(_limits.METADATA_ITEMS_MAX + 1))
    error = refused(client, params(metadata=metadata), ValidationError)
    assert error.field == "metadata"
