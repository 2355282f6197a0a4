"""server_action's plans against libvirt's test driver (a private host per test), and its pure helpers.

Every action runs in check mode first, which must change nothing on the host (the whole host compared: every
domain's definition, power state and saved state, every volume with its capacity, backing file and content) and
list exactly the steps the real run takes, with the same diff. Actions that reach a state run a second time and
report no change. Moves between hosts are planned here (check mode, on two test-driver hosts) since the test
driver cannot migrate; tests/integration/test_migration.py runs them for real.
"""
import json
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils._domain import NAMESPACE, Domain, canonical
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import (
    CapacityError,
    ConflictError,
    NotFoundError,
    ValidationError,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._flavor import Flavor
from ansible_collections.virtfleet.compute.plugins.module_utils._server_action import (
    ACTIONS,
    LOCKED_UNTIL,
    ActionRequest,
    _lock_console,
    _progress_sample,
    _thin,
    migration_dest_xml,
    needs_restart,
    rescue_xml,
    root_size,
    run_action,
    same_flavor,
    unrescue_xml,
)
from tests.unit.plugins.module_utils.conftest import BASE_IMAGE, MemoryClient, volume_xml
from tests.unit.plugins.module_utils.test_server_plan import host_state, make_server, record_of

GIB = 1024 ** 3
NAME = "web1"


class ActionClient(MemoryClient):
    """MemoryClient plus what the test driver lacks for the actions: copying a volume across pools (the test
    driver looks the source up in the target pool) and changing a device of a running domain."""

    def __init__(self, uri):
        super(ActionClient, self).__init__(uri)
        self.live_updates = []

    def clone_volume(self, pool, xml, source_vol):
        vol = self.create_volume(pool, xml)
        self.contents[vol.key()] = self.contents.get(source_vol.key(), b"")
        return vol

    def update_device_live(self, dom, xml):
        self.live_updates.append((dom.name(), xml))

    def network_xml(self, net, inactive=True):
        # The test driver refuses VIR_NETWORK_XML_INACTIVE; its networks have one definition anyway.
        return self._call("read network %s" % net.name(), net.XMLDesc, 0)

    def volume_physical(self, vol):
        # The test driver has no virStorageVolGetInfoFlags; a file's size is what the volume holds here.
        return len(self.contents.get(vol.key(), b"")) or self.volume_info(vol)["allocation"]


@pytest.fixture
def make_action_client():
    opened = []

    def make(path):
        client = ActionClient("test://" + path)
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


@pytest.fixture
def client(node_xml, make_action_client):
    return make_action_client(node_xml)


def action(client, name, what, idempotent=True, **params):
    """Check mode (exact, changes nothing), the real run, and for an action that reaches a state: again."""
    args = dict(name=name, action=what, wait=False, shutdown_timeout=1, **params)
    before = host_state(client)
    check = run_action(client, args, check_mode=True, diff_mode=True)
    assert host_state(client) == before, "check mode of %s changed the host" % what
    real = run_action(client, args, diff_mode=True)
    assert check["actions"] == real["actions"]
    assert check["changed"] == real["changed"]
    assert check["diff"] == real["diff"]
    if idempotent:
        settled = host_state(client)
        again = run_action(client, args, diff_mode=True)
        assert not again["changed"], again["actions"]
        assert run_action(client, args, check_mode=True)["actions"] == []
        assert host_state(client) == settled
    return real


def refused(client, what, error, **params):
    before = host_state(client)
    for check_mode in (True, False):
        with pytest.raises(error) as info:
            run_action(client, dict(name=NAME, action=what, wait=False, shutdown_timeout=1, **params),
                       check_mode=check_mode)
        assert host_state(client) == before
    return info.value


def power(client, name=NAME):
    dom = client.lookup_domain(name)
    if client.domain_has_managed_save(dom):
        return "suspended"
    return {"running": "running", "paused": "paused", "shutoff": "stopped"}[client.domain_state(dom)]


# -- the request ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("params, field", [
    (dict(action="fly"), "action"),
    (dict(action="resize"), "flavor"),
    (dict(action="evacuate", target_uri="test:///default"), "server"),
    (dict(action="migrate"), "target_uri"),
    (dict(action="live_migrate"), "target_uri"),
    (dict(action="cleanup_evacuated"), "target_uri"),
    (dict(action="reboot", reboot_type="gentle"), "reboot_type"),
    (dict(action="migrate", target_uri="x", storage="magic"), "storage"),
    (dict(action="console", console_type="spice"), "console_type"),
    (dict(action="console", console_ttl=0), "console_ttl"),
    (dict(action="reboot", shutdown_timeout=-1), "shutdown_timeout"),
    (dict(action="migrate", hosts=[{"name": "h"}]), "hosts[0]"),
])
def test_bad_requests_name_the_field(params, field):
    with pytest.raises(ValidationError) as refused_:
        ActionRequest(dict(name=NAME, **params))
    assert refused_.value.field == field


def test_every_action_has_a_planner():
    from ansible_collections.virtfleet.compute.plugins.module_utils._server_action import ActionRunner

    assert all(hasattr(ActionRunner, "_plan_" + name) for name in ACTIONS)


# -- pure helpers ---------------------------------------------------------------------------------------------------

def _flavor(**kwargs):
    data = dict(vcpus=1, ram_mb=512, disk_gb=2)
    data.update(kwargs)
    return Flavor(**data)


def test_same_flavor_ignores_the_description_only():
    assert same_flavor(_flavor(description="a"), _flavor(description="b"))
    assert not same_flavor(_flavor(name="m1"), _flavor(name="m2"))
    assert not same_flavor(_flavor(extra_specs={"hw:watchdog_action": "reset"}), _flavor())


@pytest.mark.parametrize("change, restart", [
    (dict(vcpus=2), True), (dict(ram_mb=1024), True), (dict(extra_specs={"quota:cpu_shares": "100"}), True),
    (dict(disk_gb=5), False), (dict(swap_mb=64), False), (dict(name="bigger"), False),
])
def test_only_vcpus_ram_and_extra_specs_need_a_restart(change, restart):
    assert needs_restart(_flavor(), _flavor(**change)) is restart


def test_root_size_is_the_flavors_or_the_images_and_never_smaller_than_the_image():
    image = {"name": "img", "virtual_size": 3 * GIB}
    assert root_size(_flavor(disk_gb=0), image) == 3 * GIB
    assert root_size(_flavor(disk_gb=5), image) == 5 * GIB
    with pytest.raises(ValidationError):
        root_size(_flavor(disk_gb=2), image)


def test_the_console_lock_is_an_expired_password_set_once():
    root = ET.fromstring("<domain><devices><graphics type='vnc' port='-1'/><graphics type='spice'/></devices>"
                         "</domain>")
    assert _lock_console(root)
    vnc, spice = root.findall("devices/graphics")
    assert vnc.get("passwdValidTo") == LOCKED_UNTIL and len(vnc.get("passwd")) == 8
    assert spice.get("passwd") is None
    password = vnc.get("passwd")
    assert not _lock_console(root) and vnc.get("passwd") == password


def test_rescue_and_unrescue_definitions_round_trip(client, base_image):
    make_server(client, power="stopped", flavor={"vcpus": 1, "ram_mb": 512, "disk_gb": 2, "swap_mb": 64})
    xml = client.domain_xml_secure(client.lookup_domain(NAME))
    record = Domain(xml).record
    rescued = ET.fromstring(rescue_xml(xml, record, {"pool": "virtfleet-instances", "name": "web1-rescue.qcow2"}))
    disks = dict((d.findtext("serial"), (d.find("target").get("dev"), d.find("boot") is not None))
                 for d in rescued.findall("devices/disk"))
    assert disks == {"rescue": ("vda", True), "root": ("vdb", False), "config-drive": ("vdc", False),
                     "swap0": ("vde", False)}
    assert rescued.findall("devices/disk")[0].findtext("serial") == "rescue"
    # libvirt accepts the rescue definition, and the way back is the definition as it was.
    client.define_domain(ET.tostring(rescued, encoding="unicode"))
    back = unrescue_xml(client.domain_xml_secure(client.lookup_domain(NAME)), record)
    client.define_domain(back)
    after = client.domain_xml_secure(client.lookup_domain(NAME))
    assert canonical(_without_console(after)) == canonical(_without_console(xml))


def _without_console(xml):
    root = ET.fromstring(xml)
    for graphics in root.findall("devices/graphics"):
        graphics.attrib.pop("passwd", None)
        graphics.attrib.pop("passwdValidTo", None)
    return root


class _Pool:
    def __init__(self, name):
        self._name = name


class _FakeDest:
    uri = "test:///dest"

    def lookup_pool(self, name):
        return _Pool(name)

    def lookup_volume(self, pool, name):
        return None if name == "missing" else (pool._name, name)

    def volume_path(self, vol):
        return "/dest/%s/%s" % vol


def test_the_migration_destination_sees_pool_volumes_as_their_files():
    xml = ("<domain><devices><disk type='volume' device='disk'><source pool='p' volume='root.qcow2'/>"
           "<target dev='vda'/></disk><disk type='file' device='disk'><source file='/x.img'/><target dev='vdb'/>"
           "</disk></devices></domain>")
    root = ET.fromstring(migration_dest_xml(xml, _FakeDest()))
    first, second = root.findall("devices/disk")
    assert first.get("type") == "file" and first.find("source").attrib == {"file": "/dest/p/root.qcow2"}
    assert second.find("source").attrib == {"file": "/x.img"}
    with pytest.raises(NotFoundError):
        migration_dest_xml(xml.replace("root.qcow2", "missing"), _FakeDest())


def test_progress_samples_are_in_mib_with_a_percentage_and_thinned_evenly():
    sample = _progress_sample({"data_total": 400 * 1024 ** 2, "data_remaining": 100 * 1024 ** 2,
                               "data_processed": 300 * 1024 ** 2, "disk_total": 1, "disk_remaining": 0}, 1.234)
    assert sample == {"seconds": 1.2, "data_processed_mib": 300, "data_remaining_mib": 100, "percent": 75.0,
                      "disk_remaining_mib": 0}
    samples = list(range(100))
    thinned = _thin(samples, 5)
    assert len(thinned) == 5 and thinned[0] == 0 and thinned[-1] == 99
    assert _thin([1, 2], 5) == [1, 2]


# -- power actions --------------------------------------------------------------------------------------------------

def test_pause_unpause_suspend_resume_are_idempotent(client, base_image):
    make_server(client)
    assert action(client, NAME, "pause")["actions"] == ["pause web1"]
    assert power(client) == "paused"
    assert action(client, NAME, "unpause")["actions"] == ["unpause web1"]
    assert action(client, NAME, "suspend")["diff"]["after"]["state"] == "suspended"
    assert power(client) == "suspended"
    assert action(client, NAME, "resume")["diff"]["after"]["state"] == "running"
    assert power(client) == "running"


@pytest.mark.parametrize("start, what", [
    ("stopped", "pause"), ("stopped", "unpause"), ("stopped", "suspend"), ("running", "resume"),
    ("stopped", "resume"), ("suspended", "pause"), ("stopped", "console"),
])
def test_power_actions_from_the_wrong_state_are_refused(client, base_image, start, what):
    make_server(client, power=start)
    if (start, what) == ("running", "resume"):
        assert not run_action(client, dict(name=NAME, action=what, wait=False))["changed"]
        return
    refused(client, what, ConflictError)


def test_a_missing_or_foreign_server_is_refused(client, base_image):
    refused(client, "pause", NotFoundError)
    with pytest.raises(ConflictError) as info:
        run_action(client, dict(name="test", action="pause"))  # the test driver's own domain: not ours
    assert "not created by virtfleet.compute" in str(info.value)


def test_soft_reboot_needs_a_running_server_and_a_hard_one_starts_a_stopped_one(client, base_image):
    make_server(client, power="stopped")
    refused(client, "reboot", ConflictError, reboot_type="soft")
    rebooted = action(client, NAME, "reboot", idempotent=False, reboot_type="hard")
    # The first restart through server_action locks the console (the server module does not, yet).
    assert rebooted["actions"][-1] == "start web1"
    assert power(client) == "running"
    soft = action(client, NAME, "reboot", idempotent=False, reboot_type="soft")
    assert soft["actions"] == ["reboot web1: shutdown (guest agent, else ACPI), power off after 1 s if the guest has "
                               "not stopped (Nova's fallback to a hard reboot), then start"]
    assert soft["reboot"]["type"] == "soft" and client.shutdowns >= 1


# -- resize ---------------------------------------------------------------------------------------------------------

BIG = {"vcpus": 2, "ram_mb": 1024, "disk_gb": 3, "swap_mb": 256, "name": "m1.big"}


def test_resize_then_revert_restores_the_old_definition_but_never_shrinks_a_disk(client, base_image):
    make_server(client)
    before = client.domain_xml_secure(client.lookup_domain(NAME))
    resized = action(client, NAME, "resize", flavor=dict(BIG))
    assert resized["diff"]["after"]["flavor"]["vcpus"] == 2 and resized["diff"]["after"]["vm_state"] == "resized"
    record = record_of(client)
    assert record.extra["vm_state"] == "resized" and record.extra["resize_created_volumes"] == "swap"
    assert json.loads(record.extra["resize_old_flavor"])["vcpus"] == 1
    assert Domain(client.domain_xml(client.lookup_domain(NAME))).vcpus == 2
    assert power(client) == "running"

    refused(client, "resize", ConflictError, flavor={"vcpus": 4, "ram_mb": 512, "disk_gb": 3})
    reverted = action(client, NAME, "revert_resize")
    assert any("root disk keeps the size" in w for w in reverted["warnings"]), reverted["warnings"]
    after = client.domain_xml_secure(client.lookup_domain(NAME))
    assert canonical(_without_meta(after)) == canonical(_without_meta(before))
    record = record_of(client)
    assert "vm_state" not in record.extra and "swap" not in record.volumes and record.flavor.vcpus == 1
    swaps = [v.name() for v in client.list_volumes(client.lookup_pool("virtfleet-instances")) if "swap" in v.name()]
    assert swaps == []


def with_numa_cells(client, cells):
    """The host's own capabilities with a NUMA topology added: the test driver loaded from a node file has 16 CPUs
    but lists no cells."""
    real = client.capabilities

    def capabilities():
        caps = real()
        topology = ET.SubElement(caps.find("host"), "topology")
        cells_elem = ET.SubElement(topology, "cells", {"num": str(len(cells))})
        for index, cpus in enumerate(cells):
            cell = ET.SubElement(cells_elem, "cell", {"id": str(index)})
            ET.SubElement(cell, "memory", {"unit": "KiB"}).text = "1572864"
            cpus_elem = ET.SubElement(cell, "cpus", {"num": str(len(cpus))})
            for cpu in cpus:
                ET.SubElement(cpus_elem, "cpu", {"id": str(cpu)})
        return caps

    client.capabilities = capabilities


def test_dedicated_servers_pin_within_a_numa_cell_and_a_resize_keeps_the_pins(client, base_image):
    with_numa_cells(client, [list(range(8)), list(range(8, 16))])
    dedicated = {"vcpus": 4, "ram_mb": 256, "disk_gb": 2, "extra_specs": {"hw:cpu_policy": "dedicated"}}
    make_server(client, flavor=dict(dedicated))
    make_server(client, name="web2", flavor=dict(dedicated))

    def pins(name):
        return Domain(client.domain_xml(client.lookup_domain(name))).pinned_cpus

    first, second = pins(NAME), pins("web2")
    assert len(first) == 4 and len(set(cpu // 8 for cpu in first)) == 1, first
    assert len(second) == 4 and len(set(cpu // 8 for cpu in second)) == 1 and not set(first) & set(second)
    action(client, NAME, "resize", flavor=dict(dedicated, vcpus=6), confirm=True)
    grown = pins(NAME)
    assert set(first) <= set(grown) and len(grown) == 6 and not set(grown) & set(second)
    # Six free CPUs are left in the first server's cell unless the second took that cell too.
    if second[0] // 8 != first[0] // 8:
        assert len(set(cpu // 8 for cpu in grown)) == 1, grown


def _without_meta(xml):
    root = _without_console(xml)
    metadata = root.find("metadata")
    for elem in metadata.findall("{%s}instance" % NAMESPACE):
        metadata.remove(elem)
    return root


def test_resize_confirmed_at_once_or_later(client, base_image):
    make_server(client)
    action(client, NAME, "resize", flavor=dict(BIG))
    confirmed = action(client, NAME, "confirm_resize")
    assert confirmed["actions"] == ["confirm the resize of web1 to flavor m1.big (forget flavor (unnamed))"]
    assert "resize_old_flavor" not in record_of(client).extra
    # confirm: true resizes without a window; the same flavor again is no change.
    at_once = action(client, NAME, "resize", flavor=dict(BIG, vcpus=3), confirm=True)
    assert at_once["diff"]["after"]["vm_state"] == "active" and "vm_state" not in record_of(client).extra


@pytest.mark.parametrize("flavor, field", [
    (dict(BIG, disk_gb=1), "flavor.disk_gb"),
    ({"vcpus": 1, "ram_mb": 512, "disk_gb": 2, "swap_mb": 0, "ephemeral_gb": 0}, None),
])
def test_resize_never_shrinks_or_removes_a_disk(client, base_image, flavor, field):
    make_server(client, flavor={"vcpus": 1, "ram_mb": 512, "disk_gb": 2, "swap_mb": 64})
    if field is None:
        error = refused(client, "resize", ConflictError, flavor=flavor)
        assert "never deletes a disk" in str(error)
        return
    error = refused(client, "resize", ConflictError, flavor=flavor)
    assert error.field == field


def test_resize_beyond_the_hosts_capacity_is_refused_with_the_numbers(client, base_image):
    make_server(client)
    error = refused(client, "resize", CapacityError, flavor={"vcpus": 1, "ram_mb": 10 ** 7, "disk_gb": 2})
    assert "RAM" in str(error)


def test_resize_to_a_catalog_flavor_by_name(client, base_image):
    from ansible_collections.virtfleet.compute.plugins.module_utils._flavor_catalog import put_flavor

    make_server(client)
    put_flavor(client, Flavor(name="m1.small", vcpus=2, ram_mb=512, disk_gb=2))
    resized = action(client, NAME, "resize", flavor="m1.small")
    assert resized["diff"]["after"]["flavor"]["name"] == "m1.small"
    refused(client, "resize", NotFoundError, flavor="m1.nope")


# -- rebuild, rescue ------------------------------------------------------------------------------------------------

def test_rebuild_replaces_the_root_disk_and_keeps_identity(client, base_image, make_volume):
    make_volume("virtfleet-images", "other.qcow2", GIB)
    make_server(client)
    dom = client.lookup_domain(NAME)
    uuid, macs = dom.UUIDString(), [n.mac for n in Domain(client.domain_xml(dom)).managed_nics()]
    drive_hash = record_of(client).config_drive_hash
    rebuilt = action(client, NAME, "rebuild", idempotent=False, image="other.qcow2")
    assert rebuilt["actions"][0] == "power off web1" and rebuilt["actions"][-1] == "start web1"
    dom = client.lookup_domain(NAME)
    assert dom.UUIDString() == uuid and [n.mac for n in Domain(client.domain_xml(dom)).managed_nics()] == macs
    record = record_of(client)
    assert record.image == {"pool": "virtfleet-images", "name": "other.qcow2"}
    # The drive was read back and written again: same content, same hash.
    assert record.config_drive_hash == drive_hash
    root = client.lookup_volume(client.lookup_pool("virtfleet-instances"), record.volumes["root"]["name"])
    assert ET.fromstring(client.volume_xml(root)).findtext("backingStore/path").endswith("/other.qcow2")
    keys = action(client, NAME, "rebuild", idempotent=False, ssh_authorized_keys=["ssh-ed25519 AAAAC3Nz test"])
    assert record_of(client).config_drive_hash != drive_hash
    # The new root disk boots with the new keys: the drive is what the guest reads first.
    assert record_of(client).config_drive_built_hash == record_of(client).config_drive_hash
    assert keys["diff"]["after"]["image"] == "virtfleet-images/other.qcow2"
    refused(client, "rebuild", NotFoundError, image="nope.qcow2")


def test_rebuild_applies_a_rewritten_config_drive(client, base_image):
    from ansible_collections.virtfleet.compute.plugins.module_utils._server import converge_server

    make_server(client)
    changed = converge_server(client, dict(name=NAME, ssh_authorized_keys=["ssh-ed25519 AAAAC3Nz new@key"],
                                           wait=False))
    assert changed["server"]["config_drive_rewritten"] is True
    rebuilt = action(client, NAME, "rebuild", idempotent=False)
    assert any(step.startswith("rewrite config drive") for step in rebuilt["actions"])
    assert rebuilt["server"]["config_drive_rewritten"] is False


def test_rescue_boots_from_a_new_disk_and_unrescue_removes_it(client, base_image):
    make_server(client)
    rescued = action(client, NAME, "rescue")
    assert rescued["diff"]["after"]["vm_state"] == "rescued"
    record = record_of(client)
    assert record.extra["vm_state"] == "rescued" and "rescue" in record.volumes
    for what in ("resize", "rebuild", "shelve", "migrate"):
        refused(client, what, ConflictError, flavor=dict(BIG), target_uri="test:///default")
    action(client, NAME, "unrescue")
    record = record_of(client)
    assert "rescue" not in record.volumes and "vm_state" not in record.extra
    names = [v.name() for v in client.list_volumes(client.lookup_pool("virtfleet-instances"))]
    assert not [n for n in names if "rescue" in n]


# -- console --------------------------------------------------------------------------------------------------------

def test_console_sets_a_live_only_password_once_the_display_is_locked(client, base_image):
    make_server(client)
    action(client, NAME, "reboot", idempotent=False, reboot_type="hard")  # locks the display
    console = action(client, NAME, "console", idempotent=False, console_ttl=60)["console"]
    assert console["type"] == "vnc" and len(console["password"]) == 8 and console["expires"].endswith("Z")
    (name, xml), = client.live_updates
    graphics = ET.fromstring(xml)
    assert name == NAME and graphics.get("passwd") == console["password"]
    assert graphics.get("passwdValidTo") == console["expires"][:-1]
    # The definition keeps its lock: the password was for the running domain only.
    defined = ET.fromstring(client.domain_xml_secure(client.lookup_domain(NAME))).find("devices/graphics")
    assert defined.get("passwdValidTo") == LOCKED_UNTIL
    check = run_action(client, dict(name=NAME, action="console"), check_mode=True)
    assert check["console"]["password"] is None and len(client.live_updates) == 1


# -- shelve ---------------------------------------------------------------------------------------------------------

def test_shelve_and_unshelve_on_the_same_host(client, base_image):
    make_server(client)
    shelved = action(client, NAME, "shelve")
    assert shelved["diff"]["after"] == dict(shelved["diff"]["before"], state="stopped", vm_state="shelved")
    assert record_of(client).extra["vm_state"] == "shelved" and power(client) == "stopped"
    unshelved = action(client, NAME, "unshelve")
    assert unshelved["actions"][-1] == "start web1" and power(client) == "running"
    assert "vm_state" not in record_of(client).extra


def test_shelve_offload_and_unshelve_restore_the_server(client, base_image):
    from ansible_collections.virtfleet.compute.plugins.module_utils._records import RecordStore

    make_server(client, flavor={"vcpus": 1, "ram_mb": 512, "disk_gb": 2, "swap_mb": 64})
    dom = client.lookup_domain(NAME)
    uuid = dom.UUIDString()
    root_ref = record_of(client).volumes["root"]
    root = client.lookup_volume(client.lookup_pool("virtfleet-instances"), root_ref["name"])
    client.contents[root.key()] = b"the server's data"
    offloaded = action(client, NAME, "shelve_offload")
    assert offloaded["server"]["state"] == "shelved_offloaded" and offloaded["host"] is None
    assert client.lookup_domain(NAME) is None
    document = RecordStore(client).read("shelved-" + NAME)
    assert document["uuid"] == uuid and set(document["saved"]) == {"root", "config"}
    saved = client.lookup_volume(client.lookup_pool("virtfleet-images"), document["saved"]["root"]["name"])
    assert client.download_bytes(saved) == b"the server's data"

    back = action(client, NAME, "unshelve")
    assert any(a.startswith("create swap disk") and "blank" in a for a in back["actions"]), back["actions"]
    dom = client.lookup_domain(NAME)
    assert dom.UUIDString() == uuid and power(client) == "running"
    root = client.lookup_volume(client.lookup_pool("virtfleet-instances"), root_ref["name"])
    assert client.download_bytes(root) == b"the server's data"
    assert RecordStore(client).read("shelved-" + NAME) is None
    assert client.lookup_volume(client.lookup_pool("virtfleet-images"), document["saved"]["root"]["name"]) is None


# -- moves, planned on two test-driver hosts ------------------------------------------------------------------------

@pytest.fixture
def second(node_factory, make_action_client):
    return make_action_client(node_factory("second", with_unmanaged_domain=False))


@pytest.fixture
def third(node_factory, make_action_client):
    return make_action_client(node_factory("third", with_unmanaged_domain=False))


def _plan_only(client, **params):
    before = host_state(client)
    result = run_action(client, dict(name=NAME, wait=False, shutdown_timeout=1, **params), check_mode=True,
                        diff_mode=True, connect=_connector(params))
    assert host_state(client) == before
    return result


_OPEN = {}


def _connector(params):
    return lambda uri: _OPEN[uri]


def test_a_live_migration_plan_copies_image_and_disks_then_claims_and_releases(client, second, base_image):
    _OPEN.clear()
    _OPEN[second.uri] = second
    make_server(client)
    before = host_state(second)
    plan = _plan_only(client, action="live_migrate", target_uri=second.uri)
    assert host_state(second) == before
    steps = [a.split(" (")[0] for a in plan["actions"]]
    assert steps[0] == "copy base image virtfleet-images/base.qcow2"
    assert steps[1].startswith("create root overlay web1-root-") and steps[2].startswith("copy config volume")
    assert steps[3].startswith("claim 1 vCPU, 512 MB RAM")
    assert steps[4] == "define web1 on %s" % second.uri
    assert steps[5].startswith("verify the claim") and steps[6].startswith("live-migrate web1 to %s" % second.uri)
    assert steps[7] == "undefine web1 on %s" % client.uri
    assert plan["diff"]["after"]["host"] == second.uri and plan["migration"]["storage"] == "copy"
    # Stopped: a live migration is refused.
    client.destroy_domain(client.lookup_domain(NAME))
    with pytest.raises(ConflictError):
        _plan_only(client, action="live_migrate", target_uri=second.uri)
    # A cold migration copies the overlay as it is: the base image must have the same path on the target, and
    # the test driver's hosts keep their pools in directories of their own.
    with pytest.raises(ConflictError) as info:
        _plan_only(client, action="migrate", target_uri=second.uri)
    assert "same paths on both hosts" in str(info.value)


def test_a_volume_already_on_the_target_is_never_overwritten(client, second, base_image):
    _OPEN.clear()
    _OPEN[second.uri] = second
    make_server(client)
    root = record_of(client).volumes["root"]["name"]
    second.create_volume(second.lookup_pool("virtfleet-instances"),
                         "<volume><name>%s</name><capacity>1</capacity></volume>" % root)
    with pytest.raises(ConflictError) as info:
        _plan_only(client, action="live_migrate", target_uri=second.uri)
    assert info.value.field == "storage" and root in str(info.value)


def test_the_scheduler_picks_the_target_and_respects_anti_affinity(client, second, third, base_image):
    from ansible_collections.virtfleet.compute.plugins.module_utils._server_action import _record_with, _with_record

    _OPEN.clear()
    _OPEN.update({client.uri: client, second.uri: second, third.uri: third})
    hosts = [{"name": n, "uri": c.uri} for n, c in (("one", client), ("two", second), ("three", third))]
    make_server(client)
    # A member of the group on "two": the anti-affinity policy leaves "three".
    second.create_volume(second.lookup_pool("virtfleet-images"), volume_xml(BASE_IMAGE, GIB))
    make_server(second, name="web2")
    dom = second.lookup_domain("web2")
    record = Domain(second.domain_xml(dom)).record
    second.define_domain(_with_record(second.domain_xml_secure(dom),
                                      _record_with(record, extra=dict(record.extra, server_group="web"))))
    group = {"name": "web", "policy": "anti-affinity"}
    plan = _plan_only(client, action="live_migrate", hosts=hosts, server_group=group, uri=client.uri)
    assert plan["scheduled"]["host"] == "three" and plan["migration"]["chosen_by"] == "scheduler"
    assert plan["diff"]["after"]["host"] == third.uri
    # Without the group both fit; the scheduler still never picks the server's own host.
    free = _plan_only(client, action="live_migrate", hosts=hosts, uri=client.uri)
    assert free["scheduled"]["host"] in ("two", "three")
    # A group the record names without a policy must be given.
    with pytest.raises(ValidationError) as info:
        dom = client.lookup_domain(NAME)
        record = record_of(client)
        client.define_domain(_with_record(client.domain_xml_secure(dom),
                                          _record_with(record, extra=dict(record.extra, server_group="web"))))
        _plan_only(client, action="live_migrate", hosts=hosts, uri=client.uri)
    assert info.value.field == "server_group"


def test_evacuate_is_refused_while_the_host_answers(client, second, base_image):
    from ansible_collections.virtfleet.compute.plugins.module_utils._server import read_server, server_view

    _OPEN.clear()
    _OPEN[second.uri] = second
    make_server(client)
    last = server_view(read_server(client, NAME))
    with pytest.raises(ConflictError) as info:
        _plan_only(client, action="evacuate", server=last, target_uri=second.uri)
    assert "answers" in str(info.value)


# -- the server module after an action --------------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [
    [("pause", {})],
    [("resize", {"flavor": dict(BIG)})],
    [("resize", {"flavor": dict(BIG)}), ("confirm_resize", {})],
    [("resize", {"flavor": dict(BIG)}), ("revert_resize", {})],
    [("rescue", {})],
    [("rescue", {}), ("unrescue", {})],
    [("rebuild", {"ssh_authorized_keys": ["ssh-ed25519 AAAAC3Nz test"]})],
    [("shelve", {})],
    [("shelve_offload", {}), ("unshelve", {})],
    [("reboot", {"reboot_type": "hard"})],
])
def test_the_server_module_sees_no_change_after_an_action(client, base_image, steps):
    """An action rewrites the record the way the server module would (spec hash included): a ``server`` run that
    declares nothing but the name finds nothing to do."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._server import converge_server

    make_server(client)
    for what, params in steps:
        run_action(client, dict(name=NAME, action=what, wait=False, shutdown_timeout=1, **params))
    result = converge_server(client, dict(name=NAME, state="present", wait=False), check_mode=True)
    assert result["actions"] == []
