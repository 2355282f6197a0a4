"""Moves between hosts on the lab (tests/lab): migrate, live_migrate, the scheduler's choice, evacuate, drain.

Three libvirtd "hosts" on this machine, each with its own pools (no shared storage), so every move copies disks
through libvirt: the base image when the target lacks it, the volumes of a cold migration as streams, the top
layers of a live migration over NBD. Servers boot the OS-less halt image, except one real Debian guest that proves
a live-migrated server keeps running (same boot, same files) and stays reachable over SSH at the same address:
its NIC is on a Linux bridge every lab host shares (the lab's NAT networks are per host, as two real hosts' would
be), with a static address from its config drive.

Every action runs in check mode first: nothing may change on any host, and the real run must take exactly the
steps check mode listed.

About 2 minutes on 2 cores, of which the Debian boot and its live migration take about one.
"""
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

from tests.conftest import REPO_ROOT
from tests.integration.conftest import BOOT_IMAGE_FILE, PlaybookRun, _recap, ansible_env, import_image, ssh
from tests.lab.conftest import running_lab
from tests.lab.lab import HostSpec, _stop_pids

pytestmark = pytest.mark.lab

HOSTS = ("t6-1", "t6-2", "t6-3")
SPECS = [HostSpec(name, memory_mb=2048, vcpus=2, disk_gb=20) for name in HOSTS]
HALT = "halt"
FLAVOR = {"vcpus": 1, "ram_mb": 64, "disk_gb": 1, "name": "t6.tiny"}
BRIDGE = "vft6br0"
BRIDGE_NET = "10.218.6"  # /24: the machine is .1, the Debian guest .10
MIGRATION_URI = "tcp://127.0.0.1"  # the lab's hosts share this machine's network stack


def _action():
    from ansible_collections.virtfleet.compute.plugins.module_utils import _server_action

    return _server_action


def _server():
    from ansible_collections.virtfleet.compute.plugins.module_utils import _server

    return _server


@pytest.fixture(scope="module")
def lab():
    with running_lab(SPECS, "t6-migration") as lab:
        yield lab


@pytest.fixture(scope="module")
def clients(lab):
    from ansible_collections.virtfleet.compute.plugins.module_utils._libvirt_client import LibvirtClient

    out = dict((name, LibvirtClient(lab.uri(name))) for name in HOSTS)
    # The halt image on the first two hosts only: moves to the third must copy it.
    for name in HOSTS[:2]:
        import_image(out[name], HALT, lab.halt_image, "qcow2")
    yield out
    for client in out.values():
        client.close()


def everything(clients):
    """Every domain (definition, state) and volume (capacity, backing) of every host that answers."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._errors import HostUnavailableError

    state = {}
    for host, client in clients.items():
        try:
            client.hostname()
        except HostUnavailableError:
            state[host] = "down"
            continue
        for dom in client.list_domains():
            state["%s:%s" % (host, dom.name())] = (client.domain_xml(dom), client.domain_state(dom))
        for pool in client.list_pools():
            client.refresh_pool(pool)
            for vol in client.list_volumes(pool):
                if vol.name().endswith(".lock"):
                    continue
                backing = ET.fromstring(client.volume_xml(vol)).findtext("backingStore/path")
                state["%s:%s/%s" % (host, pool.name(), vol.name())] = (client.volume_info(vol)["capacity"], backing)
    return state


def act(clients, source, name, action, idempotent=False, **params):
    """Check mode (changes nothing anywhere, predicts the steps), then the real run; for an action that reaches
    a state, again (unchanged)."""
    args = dict(name=name, action=action, uri=clients[source].uri, shutdown_timeout=1, wait=False,
                migration_uri=MIGRATION_URI, **params)
    before = everything(clients)
    check = _action().run_action(clients[source], args, check_mode=True, diff_mode=True)
    assert everything(clients) == before, "check mode of %s changed a host" % action
    started = time.monotonic()
    real = _action().run_action(clients[source], args, diff_mode=True)
    real["seconds"] = round(time.monotonic() - started, 1)
    assert check["actions"] == real["actions"], (check["actions"], real["actions"])
    assert check["diff"] == real["diff"]
    if idempotent:
        again = _action().run_action(clients[source], args, diff_mode=True)
        assert not again["changed"], again["actions"]
    return real


def create(client, name, image=HALT, **params):
    args = dict(name=name, flavor=dict(FLAVOR), image=image, wait=False)
    args.update(params)
    return _server().converge_server(client, args)


def delete(clients, name):
    for client in clients.values():
        try:
            if client.lookup_domain(name) is not None:
                _server().converge_server(client, dict(name=name, state="absent"))
        except Exception:  # noqa: BLE001 - a host that is down has nothing to delete now
            pass


def volumes_of(client, name):
    pool = client.lookup_pool("virtfleet-instances")
    client.refresh_pool(pool)
    return sorted(v.name() for v in client.list_volumes(pool) if v.name().startswith(name + "-"))


def set_group(client, name, group):
    """Record a server group in a server's metadata (as the server module will), so host_info lists it."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._server_action import _record_with, _with_record

    actual = _server().read_server(client, name)
    record = _record_with(actual.record, extra=dict(actual.record.extra, server_group=group))
    client.define_domain(_with_record(client.domain_xml_secure(actual.dom), record))


def test_cold_migration_copies_the_disks_and_the_image(clients):
    name = "vf-t6-cold"
    src, dst = clients["t6-1"], clients["t6-3"]
    try:
        create(src, name)
        before = _server().read_server(src, name)
        volumes = volumes_of(src, name)
        moved = act(clients, "t6-1", name, "migrate", target_uri=dst.uri)
        actions = moved["actions"]
        assert actions[0].startswith("shut down %s" % name)
        assert any(a.startswith("copy base image virtfleet-images/%s" % HALT) for a in actions), actions
        assert any(a.startswith("copy root volume") for a in actions), actions
        assert actions[-1] == "start %s on %s" % (name, dst.uri)
        assert moved["migration"]["live"] is False and moved["migration"]["storage"] == "copy"
        assert moved["host"] == dst.uri and moved["diff"]["after"]["host"] == dst.uri
        # The same server on the target, nothing left on the source.
        after = _server().read_server(dst, name)
        assert after.power == "running" and after.domain.uuid == before.domain.uuid
        assert [n.mac for n in after.domain.managed_nics()] == [n.mac for n in before.domain.managed_nics()]
        assert src.lookup_domain(name) is None and volumes_of(src, name) == []
        assert volumes_of(dst, name) == volumes
        # The copied base image is recorded on the target like an imported one.
        from ansible_collections.virtfleet.compute.plugins.module_utils._image import list_images

        assert list_images(dst)["virtfleet-images/%s" % HALT]["sha256"] == \
            list_images(src)["virtfleet-images/%s" % HALT]["sha256"]
        # The claim moved with it.
        from ansible_collections.virtfleet.compute.plugins.module_utils._host_info import host_info

        assert name in [s["name"] for s in host_info(dst, details=False)["servers"]]
        assert name not in [s["name"] for s in host_info(src, details=False)["servers"]]
        # The base image the migration copied takes the target's disk; the source's, imported, is the operator's.
        assert [(v["pool"], v["name"], v["capacity_gb"]) for v in host_info(dst, details=False)["local_volumes"]
                if v["kind"] == "image_copy"] == [("virtfleet-images", HALT, 1)]
        assert [v for v in host_info(src, details=False)["local_volumes"] if v["kind"] == "image_copy"] == []
    finally:
        delete(clients, name)


def test_live_migration_to_the_scheduler_choice_respects_anti_affinity(clients):
    """web-a and web-b are in an anti-affinity group; web-b is on t6-2, so web-a (on t6-1) must go to t6-3."""
    a, b = "vf-t6-web-a", "vf-t6-web-b"
    group = {"name": "vf-t6-web", "policy": "anti-affinity"}
    hosts = [{"name": name, "uri": clients[name].uri} for name in HOSTS]
    try:
        create(clients["t6-1"], a)
        create(clients["t6-2"], b)
        set_group(clients["t6-1"], a, group["name"])
        set_group(clients["t6-2"], b, group["name"])
        moved = act(clients, "t6-1", a, "live_migrate", hosts=hosts, server_group=group)
        assert moved["scheduled"]["host"] == "t6-3", moved["scheduled"]
        assert moved["migration"]["chosen_by"] == "scheduler" and moved["migration"]["live"] is True
        assert any("live-migrate %s" % a in step for step in moved["actions"])
        assert clients["t6-3"].domain_state(clients["t6-3"].lookup_domain(a)) == "running"
        assert clients["t6-1"].lookup_domain(a) is None and volumes_of(clients["t6-1"], a) == []
        assert moved["migration"]["seconds"] < 60
        # With every other host taken by the group, there is nowhere to go: refused, nothing changed.
        from ansible_collections.virtfleet.compute.plugins.module_utils._errors import CapacityError

        create(clients["t6-1"], "vf-t6-web-c")
        set_group(clients["t6-1"], "vf-t6-web-c", group["name"])
        before = everything(clients)
        with pytest.raises(CapacityError) as refused:
            _action().run_action(clients["t6-3"], dict(name=a, action="live_migrate", uri=clients["t6-3"].uri,
                                                       hosts=hosts, server_group=group))
        assert "ServerGroupAntiAffinityFilter" in str(refused.value)
        assert everything(clients) == before
    finally:
        for name in (a, b, "vf-t6-web-c"):
            delete(clients, name)


def _pins(client, name):
    from ansible_collections.virtfleet.compute.plugins.module_utils._domain import Domain

    return Domain(client.domain_xml(client.lookup_domain(name))).pinned_cpus


def _name_pinned_to(cpu, host_cpus, prefix):
    """A server name whose first choice of host CPU (from the hash of its name) is ``cpu``."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._extra_specs import pinning

    return next(name for name in ("%s%d" % (prefix, i) for i in range(1000)) if pinning(name, 1, host_cpus)[0] == cpu)


def test_a_moved_dedicated_server_is_pinned_again_on_its_target(clients):
    """Cold and live migration re-pin a dedicated server to CPUs no dedicated server holds on the target."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._host_info import host_info

    pinned = dict(FLAVOR, name="t6.pinned", extra_specs={"hw:cpu_policy": "dedicated"})
    host_cpus = clients["t6-2"].node_info()[2]
    if host_cpus < 2:
        pytest.fail("the lab hosts need 2 CPUs for this test (a pin held on the target and a free one)")
    name = "vf-t6-pin"
    holders = []
    try:
        create(clients["t6-1"], name, flavor=pinned)
        (cpu,) = _pins(clients["t6-1"], name)
        # On t6-2 another dedicated server holds that very CPU.
        holders.append(_name_pinned_to(cpu, host_cpus, "vf-t6-hold-a"))
        create(clients["t6-2"], holders[-1], flavor=pinned)
        assert _pins(clients["t6-2"], holders[-1]) == [cpu]

        moved = act(clients, "t6-1", name, "migrate", target_uri=clients["t6-2"].uri)
        (cold_cpu,) = _pins(clients["t6-2"], name)
        assert cold_cpu != cpu and moved["host"] == clients["t6-2"].uri
        assert clients["t6-2"].domain_state(clients["t6-2"].lookup_domain(name)) == "running"
        assert host_info(clients["t6-2"], details=False)["pinned_cpus"] == sorted([cpu, cold_cpu])

        # Back to t6-1, live, where a dedicated server now holds the CPU the guest runs on.
        holders.append(_name_pinned_to(cold_cpu, host_cpus, "vf-t6-hold-b"))
        create(clients["t6-1"], holders[-1], flavor=pinned)
        act(clients, "t6-2", name, "live_migrate", target_uri=clients["t6-1"].uri)
        dom = clients["t6-1"].lookup_domain(name)
        assert clients["t6-1"].domain_state(dom) == "running"
        (live_cpu,) = _pins(clients["t6-1"], name)
        assert live_cpu != cold_cpu
        # The guest runs with those pins, not only its persistent definition.
        live = ET.fromstring(clients["t6-1"].domain_xml(dom, inactive=False))
        assert [p.get("cpuset") for p in live.findall("cputune/vcpupin")] == [str(live_cpu)]
    finally:
        for server in [name] + holders:
            delete(clients, server)


def _bridge(up):
    if up:
        subprocess.call(["ip", "link", "delete", BRIDGE], stderr=subprocess.DEVNULL)
        subprocess.check_call(["ip", "link", "add", BRIDGE, "type", "bridge"])
        subprocess.check_call(["ip", "addr", "add", "%s.1/24" % BRIDGE_NET, "dev", BRIDGE])
        subprocess.check_call(["ip", "link", "set", BRIDGE, "up"])
    else:
        subprocess.call(["ip", "link", "delete", BRIDGE], stderr=subprocess.DEVNULL)


@pytest.mark.boot
def test_live_migrated_guest_keeps_running_and_reachable(clients, ssh_key):
    """One real boot: the guest survives the live migration (same boot id, same files, same address)."""
    if not os.path.exists(BOOT_IMAGE_FILE):
        pytest.fail("the cloud image %s is missing: run `make image` first" % BOOT_IMAGE_FILE)
    key_path, public_key = ssh_key
    name = "vf-t6-live"
    src, dst = clients["t6-1"], clients["t6-2"]
    ip = "%s.10" % BRIDGE_NET
    from ansible_collections.virtfleet.compute.plugins.module_utils._domain import derive_mac

    mac = derive_mac(name, 0)
    timings = {}
    _bridge(True)
    try:
        started = time.monotonic()
        import_image(src, "debian-12", BOOT_IMAGE_FILE, "qcow2")  # on the source only: the move copies it
        create(src, name, image="debian-12", flavor={"vcpus": 1, "ram_mb": 512, "disk_gb": 3},
               networks=[{"bridge": BRIDGE}], ssh_authorized_keys=[public_key],
               network_config={"version": 2, "ethernets": {"eth0": {
                   "match": {"macaddress": mac}, "set-name": "eth0", "addresses": ["%s/24" % ip]}}})
        # Generous timeouts: a TCG guest slows down a lot when the machine's two cores are busy.
        boot_id = ssh(ip, key_path, "cat /proc/sys/kernel/random/boot_id", timeout=480).strip()
        ssh(ip, key_path, "echo before-the-move > ~/marker")
        timings["boot to ssh"] = round(time.monotonic() - started, 1)

        moved = act(clients, "t6-1", name, "live_migrate", target_uri=dst.uri)
        timings["live migration (action)"] = moved["seconds"]
        timings["live migration (libvirt)"] = moved["migration"]["seconds"]
        assert any(a.startswith("copy base image virtfleet-images/debian-12") for a in moved["actions"])
        assert dst.domain_state(dst.lookup_domain(name)) == "running" and src.lookup_domain(name) is None
        # The same boot of the same guest, with what it wrote, at the same address.
        try:
            after = ssh(ip, key_path, "cat /proc/sys/kernel/random/boot_id", timeout=240).strip()
        except AssertionError:
            _diagnose(dst, name)
            raise
        assert after == boot_id
        assert ssh(ip, key_path, "cat ~/marker").strip() == "before-the-move"
        assert ssh(ip, key_path, "echo after-the-move > ~/marker2 && sync && cat ~/marker2").strip() == \
            "after-the-move"
        print("\ntimings: %s" % json.dumps(timings))
    finally:
        delete(clients, name)
        _bridge(False)


def test_unshelve_on_another_host_shelved_or_offloaded(clients):
    """A shelved server unshelved elsewhere moves cold first; an offloaded one is rebuilt there from its saved disks
    (streamed from the host that offloaded it), and the saved disks are deleted."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._records import RecordStore

    name = "vf-t6-shelf"
    one, two, three = (clients[h] for h in HOSTS)
    try:
        create(one, name)
        uuid = one.lookup_domain(name).UUIDString()
        act(clients, "t6-1", name, "shelve", idempotent=True)
        moved = act(clients, "t6-1", name, "unshelve", target_uri=two.uri)
        assert moved["host"] == two.uri and moved["server"]["state"] == "running"
        assert moved["server"]["vm_state"] == "active" and one.lookup_domain(name) is None

        offloaded = act(clients, "t6-2", name, "shelve_offload", idempotent=True)
        assert offloaded["host"] is None and two.lookup_domain(name) is None
        assert RecordStore(two).read("shelved-" + name)["uuid"] == uuid
        back = act(clients, "t6-2", name, "unshelve", target_uri=three.uri)
        assert back["host"] == three.uri and back["server"]["uuid"] == uuid
        assert any(a.startswith("restore the root disk of %s" % name) and a.endswith("on %s" % two.uri)
                   for a in back["actions"]), back["actions"]
        assert three.domain_state(three.lookup_domain(name)) == "running"
        assert RecordStore(two).read("shelved-" + name) is None
        images = [v.name() for v in two.list_volumes(two.lookup_pool("virtfleet-images"))]
        assert not [v for v in images if v.startswith(name)]
    finally:
        delete(clients, name)


def _diagnose(client, name):
    """What the guest and the host's network say, printed when the guest cannot be reached."""
    import libvirt_qemu

    dom = client.lookup_domain(name)
    print("\nstate %s, info %s" % (client.domain_state(dom), dom.info()))
    time.sleep(2)
    print("info 2 s later %s" % (dom.info(),))
    commands = (["ip", "neigh"], ["bridge", "link"], ["bridge", "fdb", "show", "br", BRIDGE],
                ["ip", "addr", "show", BRIDGE])
    for cmd in commands:
        print("$ %s\n%s" % (" ".join(cmd), subprocess.run(cmd, capture_output=True, text=True, check=False).stdout))
    for command in ("info status", "info registers", "info block", "info migrate", "info registers"):
        try:
            reply = libvirt_qemu.qemuMonitorCommand(dom, command, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
        except Exception as exc:  # noqa: BLE001 - diagnostics only
            reply = "failed: %s" % exc
        print("(qemu) %s\n%s" % (command, reply[:2000]))
    live = ET.fromstring(client.domain_xml(dom, inactive=False))
    print(ET.tostring(live.find("devices/interface"), encoding="unicode"))
    pty = live.find("devices/console").get("tty")
    subprocess.run(["sh", "-c", "printf '\\r\\n' > %s" % pty], check=False)
    out = subprocess.run(["timeout", "10", "cat", pty], capture_output=True, check=False)
    print("console:\n%s" % out.stdout.decode("utf-8", "replace")[-3000:])


def _kill_host(lab, clients, name):
    """A host that dies: its libvirtd killed, and its guests with it (by the pids libvirt recorded)."""
    lab.kill(name)
    _stop_pids(lab._leftover_guests(lab.state["hosts"][name]), timeout=10)
    clients[name].close()  # a module run would open a new connection, and find nobody answering


def test_evacuate_a_dead_host_then_clean_up_when_it_returns(lab, clients):
    from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ConflictError

    name = "vf-t6-evac"
    src, dst = clients["t6-1"], clients["t6-2"]
    hosts = [{"name": h, "uri": clients[h].uri} for h in HOSTS]
    try:
        create(src, name, networks=[{"network": "default"}], metadata={"role": "test"}, tags=["t6"])
        last = _server().server_view(_server().read_server(src, name))  # what server_info said last
        # Refused while the host answers: nothing changes.
        before = everything(clients)
        with pytest.raises(ConflictError) as refused:
            _action().run_action(src, dict(name=name, action="evacuate", uri=src.uri, server=last,
                                           target_uri=dst.uri))
        assert "answers" in str(refused.value) and everything(clients) == before

        _kill_host(lab, clients, "t6-1")
        evacuated = act(clients, "t6-1", name, "evacuate", idempotent=True, server=last, target_uri=dst.uri)
        assert evacuated["host"] == dst.uri and evacuated["server"]["state"] == "running"
        view = _server().server_view(_server().read_server(dst, name))
        for key in ("name", "uuid", "flavor", "image", "metadata", "tags", "hostname"):
            assert view[key] == last[key], key
        assert [n["mac"] for n in view["networks"]] == [n["mac"] for n in last["networks"]]
        assert view["evacuated_from"] == src.uri
        assert any("the config drive of %s died with its host" % name in w for w in evacuated["warnings"])

        # The host comes back with its stale copy, powered off; cleanup_evacuated removes exactly that.
        lab.revive("t6-1")
        src.close()
        stale = src.lookup_domain(name)
        assert stale is not None and src.domain_state(stale) == "shutoff"
        cleaned = act(clients, "t6-1", name, "cleanup_evacuated", idempotent=True, hosts=hosts)
        assert cleaned["actions"][0] == "undefine the stale copy of %s" % name
        assert src.lookup_domain(name) is None and volumes_of(src, name) == []
        assert dst.domain_state(dst.lookup_domain(name)) == "running"
        # On the host it was evacuated to, the server is no stale copy: refused.
        with pytest.raises(ConflictError):
            _action().run_action(dst, dict(name=name, action="cleanup_evacuated", uri=dst.uri,
                                           target_uri=clients["t6-3"].uri))
    finally:
        if not lab.alive("t6-1"):
            lab.revive("t6-1")
            clients["t6-1"].close()
        delete(clients, name)


def _playbook(lab, tmp_path, playbook, **extravars):
    inventory = lab.inventory_config(str(tmp_path / "lab.virtfleet.yml"), timeout=10)
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
           os.path.join(REPO_ROOT, "playbooks", playbook), "-i", inventory, "-e", json.dumps(extravars)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False,
                          env=ansible_env({"ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default"}))
    return PlaybookRun(proc, _recap(proc.stdout))


def test_drain_host_playbook_moves_every_server_off(lab, clients, tmp_path):
    names = ("vf-t6-drain-a", "vf-t6-drain-b")
    try:
        for name in names:
            create(clients["t6-2"], name)
        _server().converge_server(clients["t6-2"], dict(name=names[1], state="stopped", shutdown_timeout=1))
        started = time.monotonic()
        _playbook(lab, tmp_path, "drain_host.yml", drain_host="t6-2", drain_reason="vf-t6 test").assert_ok()
        print("\ndrain_host.yml: %.1f s" % (time.monotonic() - started))
        from ansible_collections.virtfleet.compute.plugins.module_utils._host_record import read_host_record

        record, _stored = read_host_record(clients["t6-2"])
        assert record["enabled"] is False and record["disabled_reason"] == "vf-t6 test"
        assert [n for n in names if clients["t6-2"].lookup_domain(n) is not None] == []
        states = {}
        for host in ("t6-1", "t6-3"):
            for name in names:
                dom = clients[host].lookup_domain(name)
                if dom is not None:
                    states[name] = clients[host].domain_state(dom)
        # The running one was live-migrated (still running), the stopped one migrated cold (still stopped).
        assert states == {names[0]: "running", names[1]: "shutoff"}
    finally:
        for name in names:
            delete(clients, name)
        lab.set_host_record("t6-2", enabled=True, disabled_reason=None)


def test_evacuate_host_playbook_both_phases(lab, clients, tmp_path):
    name = "vf-t6-evpb"
    try:
        create(clients["t6-2"], name)
        last = [_server().server_view(_server().read_server(clients["t6-2"], name))]
        _kill_host(lab, clients, "t6-2")
        _playbook(lab, tmp_path, "evacuate_host.yml", evacuate_host="t6-2", evacuate_servers=last).assert_ok()
        found = [h for h in ("t6-1", "t6-3") if clients[h].lookup_domain(name) is not None]
        assert len(found) == 1
        lab.revive("t6-2")
        clients["t6-2"].close()
        assert clients["t6-2"].lookup_domain(name) is not None
        _playbook(lab, tmp_path, "evacuate_host.yml", evacuate_host="t6-2", evacuate_phase="cleanup").assert_ok()
        assert clients["t6-2"].lookup_domain(name) is None
        assert clients[found[0]].domain_state(clients[found[0]].lookup_domain(name)) == "running"
    finally:
        if not lab.alive("t6-2"):
            lab.revive("t6-2")
            clients["t6-2"].close()
        delete(clients, name)
