"""server_action on the real libvirtd (one host): every single-host action on servers of the OS-less halt image.

Each action runs in check mode first, which must change nothing on the host and list exactly the steps the real run
then takes, with the same diff; actions that reach a state run again (unchanged) and in check mode again
(unchanged). What the action must have done is then checked on the domain itself: its live and inactive XML, its
volumes, and for the console a real VNC login against QEMU with the password handed out, before and after it
expires.

About 40 s on 2 cores (the soft reboot and the shutdowns wait out the halt image, which ignores ACPI).
"""
import datetime
import os
import socket
import struct
import time
import xml.etree.ElementTree as ET

import pytest

from tests.integration.conftest import IMAGE_POOL, INSTANCE_POOL, make_halt_image

PREFIX = "vf-t6-"
FLAVOR = {"vcpus": 1, "ram_mb": 64, "disk_gb": 1, "name": "t6.tiny"}
BIGGER = {"vcpus": 2, "ram_mb": 96, "disk_gb": 2, "swap_mb": 16, "name": "t6.small"}
# The halt guest never answers ACPI: every graceful stop ends in a power off after this.
SHUTDOWN = 1


def _modules():
    from ansible_collections.virtfleet.compute.plugins.module_utils import _server, _server_action

    return _server, _server_action


def _create(client, name, halt_image, networks=("default",)):
    _server, _action = _modules()
    return _server.converge_server(client, dict(
        name=name, flavor=dict(FLAVOR), image=halt_image, networks=[{"network": n} for n in networks],
        virt_type="qemu", wait=False))


def _delete(client, name):
    _server, _action = _modules()
    from ansible_collections.virtfleet.compute.plugins.module_utils._records import RecordStore

    if client.lookup_domain(name) is not None:
        _action.run_action(client, dict(name=name, action="unlock", wait=False))  # a test failed while locked
        _server.converge_server(client, dict(name=name, state="absent"))
    # A server left shelved-offloaded by a failed test: its saved disks and record.
    store = RecordStore(client)
    store.delete("shelved-" + name)
    pool = client.lookup_pool(IMAGE_POOL)
    for vol in client.list_volumes(pool):
        if vol.name().startswith(name + "-shelved-"):
            client.delete_volume(vol)


def _local_volumes(client, owner):
    """``{volume name: (kind, pool, GB claimed)}`` of what host_info counts for ``owner`` besides its flavor."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._host_info import host_info

    return dict((v["name"], (v["kind"], v["pool"], v["capacity_gb"]))
                for v in host_info(client, details=False)["local_volumes"] if v["owner"] == owner)


def host_state(client, name):
    """What an action could change: the server's definition (with secrets), power state and saved state, and every
    volume named after it with its capacity and backing file."""
    state = {}
    dom = client.lookup_domain(name)
    if dom is not None:
        import libvirt

        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
        state["domain"] = (xml, client.domain_state(dom), client.domain_has_managed_save(dom))
    for pool_name in (IMAGE_POOL, INSTANCE_POOL, "virtfleet-records"):
        pool = client.lookup_pool(pool_name)
        client.refresh_pool(pool)
        for vol in client.list_volumes(pool):
            if vol.name().startswith(name + "-") or vol.name() == "shelved-%s.json" % name:
                backing = ET.fromstring(client.volume_xml(vol)).findtext("backingStore/path")
                state["%s/%s" % (pool_name, vol.name())] = (client.volume_info(vol)["capacity"], backing)
    return state


def act(client, name, action, idempotent=True, **params):
    """Check mode, the real run, and for an action that reaches a state: again, and check mode again."""
    _server, _action = _modules()
    args = dict(name=name, action=action, shutdown_timeout=SHUTDOWN, wait=False, **params)
    before = host_state(client, name)
    check = _action.run_action(client, args, check_mode=True, diff_mode=True)
    assert host_state(client, name) == before, "check mode of %s changed the host" % action
    started = time.monotonic()
    real = _action.run_action(client, args, diff_mode=True)
    real["seconds"] = round(time.monotonic() - started, 1)
    assert check["actions"] == real["actions"], (check["actions"], real["actions"])
    assert check["changed"] == real["changed"]
    assert check["diff"] == real["diff"]
    if idempotent:
        settled = host_state(client, name)
        again = _action.run_action(client, args, diff_mode=True)
        assert not again["changed"], again["actions"]
        assert again["diff"]["before"] == again["diff"]["after"]
        check_again = _action.run_action(client, args, check_mode=True)
        assert not check_again["changed"], check_again["actions"]
        assert host_state(client, name) == settled
    return real


def _secure_xml(client, name, inactive=True):
    import libvirt

    flags = libvirt.VIR_DOMAIN_XML_SECURE | (libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0)
    return ET.fromstring(client.lookup_domain(name).XMLDesc(flags))


def _disks(root):
    return dict((d.findtext("serial"), (d.find("target").get("dev"), d.find("source").get("volume"),
                                        d.find("boot").get("order") if d.find("boot") is not None else None))
                for d in root.findall("devices/disk"))


def _record(client, name):
    _server, _action = _modules()
    return _server.read_server(client, name).record


def _comparable(root):
    """A definition without what changes by itself or on purpose (our metadata, the console's lock password)."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._domain import NAMESPACE, canonical

    root = ET.fromstring(ET.tostring(root))
    metadata = root.find("metadata")
    for elem in metadata.findall("{%s}instance" % NAMESPACE):
        metadata.remove(elem)
    for graphics in root.findall("devices/graphics"):
        graphics.attrib.pop("passwd", None)
        graphics.attrib.pop("passwdValidTo", None)
    return canonical(root)


@pytest.fixture
def server(client, pools, halt_image, default_network, request):
    name = PREFIX + request.node.name.replace("test_", "").replace("_", "-")[:30].rstrip("-")
    _delete(client, name)
    _create(client, name, halt_image)
    try:
        yield name
    finally:
        _delete(client, name)
    assert client.lookup_domain(name) is None


def test_pause_unpause_suspend_resume(client, server):
    name = server
    dom = client.lookup_domain(name)
    paused = act(client, name, "pause")
    assert paused["actions"] == ["pause %s" % name]
    assert client.domain_state(dom) == "paused" and paused["server"]["state"] == "paused"
    assert act(client, name, "unpause")["server"]["state"] == "running"
    assert client.domain_state(dom) == "running"

    suspended = act(client, name, "suspend")
    assert suspended["diff"]["after"]["state"] == "suspended"
    assert client.domain_state(dom) == "shutoff" and client.domain_has_managed_save(dom)
    resumed = act(client, name, "resume")
    assert resumed["server"]["state"] == "running"
    assert client.domain_state(dom) == "running" and not client.domain_has_managed_save(dom)

    # Refusals change nothing: a running server cannot be resumed from a saved state it does not have.
    from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ConflictError

    before = host_state(client, name)
    act(client, name, "pause")
    with pytest.raises(ConflictError):
        _modules()[1].run_action(client, dict(name=name, action="resume"))
    act(client, name, "unpause")
    assert host_state(client, name) == before


def test_reboot_soft_falls_back_to_hard_and_hard_restarts(client, server):
    name = server
    dom = client.lookup_domain(name)
    first_id = dom.ID()
    # The halt guest ignores the ACPI button: the soft reboot must end in a power off after the timeout.
    soft = act(client, name, "reboot", idempotent=False, reboot_type="soft")
    assert soft["reboot"] == {"type": "soft", "shutdown": "forced"}
    assert SHUTDOWN <= soft["seconds"] < SHUTDOWN + 15
    second_id = client.lookup_domain(name).ID()
    assert second_id != first_id and client.domain_state(dom) == "running"  # a new QEMU process
    hard = act(client, name, "reboot", idempotent=False, reboot_type="hard")
    assert hard["actions"] == ["power off %s" % name, "start %s" % name]
    assert client.lookup_domain(name).ID() not in (first_id, second_id)


def test_resize_revert_and_confirm(client, server):
    name = server
    before = _secure_xml(client, name)
    root_vol = client.lookup_volume(client.lookup_pool(INSTANCE_POOL), _record(client, name).volumes["root"]["name"])

    resized = act(client, name, "resize", flavor=dict(BIGGER))
    assert resized["diff"]["after"]["vm_state"] == "resized"
    assert any(a.startswith("claim 2 vCPU") for a in resized["actions"]), resized["actions"]
    live = ET.fromstring(client.domain_xml(client.lookup_domain(name), inactive=False))
    assert live.findtext("vcpu") == "2" and int(live.findtext("memory")) == 96 * 1024
    assert client.volume_info(root_vol)["capacity"] == 2 * 1024 ** 3
    record = _record(client, name)
    assert record.flavor.name == "t6.small" and record.extra["vm_state"] == "resized"
    assert "swap" in record.volumes and record.extra["resize_created_volumes"] == "swap"

    # While the resize waits, another resize is refused; a shrink is refused at any time.
    from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ConflictError

    with pytest.raises(ConflictError):
        _modules()[1].run_action(client, dict(name=name, action="resize", flavor=dict(FLAVOR)))

    reverted = act(client, name, "revert_resize")
    assert reverted["diff"]["after"]["flavor"]["vcpus"] == 1
    assert any("a disk never shrinks" in w for w in reverted["warnings"]), reverted["warnings"]
    after = _secure_xml(client, name)
    # The old definition exactly (the swap disk the resize added is gone too)...
    assert _comparable(after) == _comparable(before)
    assert "swap" not in _record(client, name).volumes
    assert _record(client, name).flavor.name == "t6.tiny"
    # ... but the root disk keeps the size the resize gave it.
    assert client.volume_info(root_vol)["capacity"] == 2 * 1024 ** 3

    act(client, name, "resize", flavor=dict(BIGGER, swap_mb=0))
    confirmed = act(client, name, "confirm_resize")
    assert confirmed["diff"]["after"]["vm_state"] == "active"
    record = _record(client, name)
    assert "resize_old_flavor" not in record.extra and "vm_state" not in record.extra
    assert record.flavor.vcpus == 2
    # Resizing to the flavor it has is no change; to a smaller disk is refused.
    assert not _modules()[1].run_action(client, dict(name=name, action="resize",
                                                     flavor=dict(BIGGER, swap_mb=0)))["changed"]
    with pytest.raises(ConflictError) as refused:
        _modules()[1].run_action(client, dict(name=name, action="resize", flavor=dict(BIGGER, disk_gb=1,
                                                                                      swap_mb=0)))
    assert "never shrinks" in str(refused.value)


def _second_halt_image(client, tmp_path):
    """Another OS-less image, different content: proof that a rebuild really used the image it was given."""
    from tests.integration.conftest import import_image

    path = make_halt_image(str(tmp_path / "halt2.qcow2"))
    import_image(client, PREFIX + "halt2", path, "qcow2")
    return PREFIX + "halt2"


def test_rebuild_keeps_name_uuid_macs(client, server, tmp_path):
    from ansible_collections.virtfleet.compute.plugins.module_utils._image import converge_image

    name = server
    dom = client.lookup_domain(name)
    before = _secure_xml(client, name)
    uuid = dom.UUIDString()
    macs = [i.find("mac").get("address") for i in before.findall("devices/interface")]
    record = _record(client, name)
    root_ref = record.volumes["root"]
    image = _second_halt_image(client, tmp_path)
    try:
        # With no cloud-init option the config drive is written again with the content it had.
        same = act(client, name, "rebuild", idempotent=False)
        assert "rewrite config drive %s" % record.volumes["config"]["name"] in same["actions"]
        assert _record(client, name).config_drive_hash == record.config_drive_hash

        rebuilt = act(client, name, "rebuild", idempotent=False, image=image, user_data="#cloud-config\n{}\n# v2\n")
        assert rebuilt["diff"]["after"]["image"] == "%s/%s" % (IMAGE_POOL, image)
        after = _secure_xml(client, name)
        assert client.lookup_domain(name).UUIDString() == uuid
        assert [i.find("mac").get("address") for i in after.findall("devices/interface")] == macs
        assert after.findtext("name") == name
        new_record = _record(client, name)
        assert new_record.image == {"pool": IMAGE_POOL, "name": image}
        assert new_record.config_drive_hash != record.config_drive_hash
        # A new root disk, on the new image.
        vol = client.lookup_volume(client.lookup_pool(INSTANCE_POOL), root_ref["name"])
        assert ET.fromstring(client.volume_xml(vol)).findtext("backingStore/path").endswith("/" + image)
        # The config drive holds the new user data.
        from ansible_collections.virtfleet.compute.plugins.module_utils._server_action import read_config_drive

        drive = read_config_drive(client, new_record.volumes["config"], uuid)
        assert drive["user_data"].endswith(b"# v2\n") and drive["hostname"] == name
        assert client.domain_state(client.lookup_domain(name)) == "running"
    finally:
        _delete(client, name)
        converge_image(client, {"name": image, "state": "absent"})


def test_rescue_and_unrescue(client, server):
    name = server
    before = _secure_xml(client, name)
    rescued = act(client, name, "rescue")
    assert rescued["diff"]["after"] == dict(rescued["diff"]["before"], vm_state="rescued", state="running")
    live = ET.fromstring(client.domain_xml(client.lookup_domain(name), inactive=False))
    disks = _disks(live)
    rescue_volume = "%s-rescue-%s.qcow2" % (name, before.findtext("uuid").split("-")[0])
    # The rescue disk boots as vda; the server's own root disk is the second disk.
    assert disks["rescue"] == ("vda", rescue_volume, "1")
    assert disks["root"][0] == "vdb" and disks["root"][2] is None
    assert client.lookup_volume(client.lookup_pool(INSTANCE_POOL), rescue_volume) is not None
    assert _record(client, name).extra["vm_state"] == "rescued"
    # The rescue disk takes the host's disk next to the server's flavor (issue 23).
    assert _local_volumes(client, name) == {rescue_volume: ("rescue", INSTANCE_POOL, 1)}
    # Other actions wait for the unrescue.
    from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ConflictError

    with pytest.raises(ConflictError):
        _modules()[1].run_action(client, dict(name=name, action="shelve"))

    unrescued = act(client, name, "unrescue")
    assert unrescued["server"]["vm_state"] == "active"
    assert _comparable(_secure_xml(client, name)) == _comparable(before)
    assert client.lookup_volume(client.lookup_pool(INSTANCE_POOL), rescue_volume) is None
    assert client.domain_state(client.lookup_domain(name)) == "running"


def _des_response(password, challenge):
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    # VNC authentication: DES of the challenge, the key being the password with each byte's bits reversed.
    key = bytes(int("{:08b}".format(c)[::-1], 2) for c in password.encode()[:8].ljust(8, b"\0"))
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


def vnc_login(host, port, password):
    """A minimal RFB 3.8 client: True if QEMU accepts ``password`` (VNC authentication), False if it refuses it."""
    with socket.create_connection((host, port), timeout=5) as sock:
        assert sock.recv(12).startswith(b"RFB ")
        sock.sendall(b"RFB 003.008\n")
        count = sock.recv(1)[0]
        types = sock.recv(count)
        assert 2 in types, "the display does not ask for VNC authentication: %r" % (types,)
        sock.sendall(b"\x02")
        challenge = b""
        while len(challenge) < 16:
            challenge += sock.recv(16 - len(challenge))
        sock.sendall(_des_response(password, challenge))
        (result,) = struct.unpack(">I", sock.recv(4))
        return result == 0


def test_console_password_works_then_expires(client, server):
    _server, _action = _modules()
    from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ConflictError

    name = server
    graphics = _secure_xml(client, name).find("devices/graphics")
    if graphics.get("passwd") is None:
        # Started by the server module without VNC password authentication: QEMU cannot take a password now.
        with pytest.raises(ConflictError) as refused:
            _action.run_action(client, dict(name=name, action="console"))
        assert "reboot_type: hard" in str(refused.value)
        locked = act(client, name, "reboot", idempotent=False, reboot_type="hard")
        assert locked["actions"][0].startswith("lock the VNC console of %s" % name)
    defined = _secure_xml(client, name).find("devices/graphics")
    assert defined.get("passwdValidTo") == _action.LOCKED_UNTIL and defined.get("passwd")
    live = _secure_xml(client, name, inactive=False).find("devices/graphics")
    port = int(live.get("port"))
    # Locked: not even the definition's own password opens it.
    assert not vnc_login("127.0.0.1", port, defined.get("passwd"))

    console = act(client, name, "console", idempotent=False, console_ttl=4)["console"]
    assert console["type"] == "vnc" and console["port"] == port and console["host"] == "127.0.0.1"
    expires = datetime.datetime.strptime(console["expires"], "%Y-%m-%dT%H:%M:%SZ")
    # libvirt shows the validity on the running domain; the password itself never reaches the definition.
    live = ET.fromstring(client.domain_xml(client.lookup_domain(name), inactive=False)).find("devices/graphics")
    assert live.get("passwdValidTo") == expires.strftime("%Y-%m-%dT%H:%M:%S")
    assert _secure_xml(client, name).find("devices/graphics").attrib == defined.attrib
    assert vnc_login("127.0.0.1", port, console["password"])
    assert not vnc_login("127.0.0.1", port, console["password"][::-1])
    while datetime.datetime.utcnow() <= expires + datetime.timedelta(seconds=1):
        time.sleep(0.5)
    # QEMU itself refuses the expired password.
    assert not vnc_login("127.0.0.1", port, console["password"])

    serial = act(client, name, "console", console_type="serial")["console"]
    assert serial["type"] == "serial" and os.path.exists(serial["pty"])
    assert serial["command"].endswith("console %s" % name)


def test_shelve_unshelve_and_offload(client, server):
    name = server
    record = _record(client, name)
    uuid = client.lookup_domain(name).UUIDString()
    macs = [n.mac for n in _modules()[0].read_server(client, name).domain.managed_nics()]
    shelved = act(client, name, "shelve")
    assert shelved["server"]["state"] == "stopped" and shelved["server"]["vm_state"] == "shelved"
    assert _record(client, name).extra["vm_state"] == "shelved"
    unshelved = act(client, name, "unshelve")
    assert unshelved["server"]["state"] == "running" and "vm_state" not in _record(client, name).extra

    # Offload: the root disk is flattened into the image pool, the definition recorded, the domain gone.
    offloaded = act(client, name, "shelve_offload")
    assert offloaded["server"]["state"] == "shelved_offloaded" and offloaded["host"] is None
    assert client.lookup_domain(name) is None
    instance_pool = client.lookup_pool(INSTANCE_POOL)
    assert not [v for v in client.list_volumes(instance_pool) if v.name().startswith(name + "-")]
    saved = offloaded["server"]["saved"]
    image_pool = client.lookup_pool(IMAGE_POOL)
    root_image = client.lookup_volume(image_pool, saved["root"].split("/", 1)[1])
    assert ET.fromstring(client.volume_xml(root_image)).find("backingStore/path") is None  # standalone
    # The saved disks take the host's disk while the server has no domain to claim it (issue 23).
    assert _local_volumes(client, name) == dict(
        (ref.split("/", 1)[1], ("shelved", ref.split("/", 1)[0], 1)) for ref in saved.values())

    back = act(client, name, "unshelve")
    assert back["server"]["state"] == "running" and back["server"]["uuid"] == uuid
    assert [n["mac"] for n in back["server"]["networks"]] == macs
    new_root = client.lookup_volume(instance_pool, record.volumes["root"]["name"])
    assert ET.fromstring(client.volume_xml(new_root)).find("backingStore/path") is None
    assert client.volume_info(new_root)["capacity"] == 1024 ** 3
    # The saved disks and the record are gone once the server runs again.
    assert client.lookup_volume(image_pool, saved["root"].split("/", 1)[1]) is None
    from ansible_collections.virtfleet.compute.plugins.module_utils._records import RecordStore

    assert RecordStore(client).read("shelved-" + name) is None


def test_lock_refuses_every_change_until_unlock(client, server, halt_image):
    """Nova's lock on a real libvirtd: four steps for lock and unlock, the server and server_action modules refuse
    a locked server's changes and change nothing, and the lock survives in the domain's metadata."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ConflictError

    name = server
    _server, _action = _modules()
    locked = act(client, name, "lock", lock_reason="kernel panic under investigation", locked_by="ops-bot")
    assert locked["actions"] == ["lock %s (kernel panic under investigation)" % name]
    shown = _server.list_servers(client, [name])[0]["locked"]
    assert shown["by"] == "ops-bot" and shown["reason"] == "kernel panic under investigation"

    before = host_state(client, name)
    with pytest.raises(ConflictError) as stop:
        _server.converge_server(client, dict(name=name, state="stopped", shutdown_timeout=SHUTDOWN))
    assert "is locked (by ops-bot" in str(stop.value)
    with pytest.raises(ConflictError):
        _server.converge_server(client, dict(name=name, state="absent"))
    for action in ("reboot", "pause", "migrate"):
        with pytest.raises(ConflictError) as refused:
            _action.run_action(client, dict(name=name, action=action, shutdown_timeout=SHUTDOWN,
                                            target_uri=client.uri))
        assert "is locked" in str(refused.value), (action, str(refused.value))
    assert host_state(client, name) == before
    assert client.domain_state(client.lookup_domain(name)) == "running"

    unlocked = act(client, name, "unlock")
    assert unlocked["diff"]["after"]["locked"] is None
    assert act(client, name, "pause")["server"]["state"] == "paused"
