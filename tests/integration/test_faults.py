"""Faults injected into real converges (issue 13): a run that did not do its work never passes for success.

Every test runs the real ``ansible-playbook playbooks/site.yml`` (or the module code) on a lab host of its own
(tests/lab: a private libvirtd in its own mount namespace), so killing its daemon disturbs no other test. Servers
boot the OS-less halt image (no guest OS, no network, no wait). Each test asserts the run's exit status and the
message naming what failed, that nothing is left half-made (no volume without its domain, no domain without its
volumes, no claim lock left), that the rerun converges, and that a second rerun reports changed=0.
"""
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import REPO_ROOT
from tests.integration.conftest import PlaybookRun, _recap, ansible_env
from tests.lab.conftest import running_lab
from tests.lab.lab import HostSpec

pytestmark = pytest.mark.lab

PREFIX = "vf-flt-"
HOST = PREFIX + "host"
SITE = os.path.join(REPO_ROOT, "playbooks", "site.yml")
BIN = os.path.dirname(sys.executable)
TINY = {"name": "m1.flt", "vcpus": 1, "ram_mb": 64, "disk_gb": 1}


@pytest.fixture(scope="module")
def lab():
    # 2 vCPUs (32 at the default 16:1 ratio), 10 GB of disk at 1:1: ten 1 GB servers fit, an eleventh does not.
    with running_lab([HostSpec(HOST, memory_mb=2048, vcpus=2, disk_gb=10)], "faults") as lab:
        yield lab


@pytest.fixture()
def cloud(lab, tmp_path):
    """Writes the inventory and the declared state of a test; returns a function running site.yml on them."""
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(json.dumps({"all": {"children": {"compute": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "virtfleet_uri": lab.uri(HOST)}}}}}}))

    def declare(servers, **more):
        state = {
            "virtfleet_images": [{"name": PREFIX + "halt", "src": lab.halt_image, "disk_format": "qcow2"}],
            "virtfleet_flavors": [TINY],
            "virtfleet_ssh_key": str(tmp_path / "id_ed25519"),
            "virtfleet_login_user": "debian",
            "virtfleet_servers": servers,
        }
        state.update(more)
        path = tmp_path / "cloud.json"
        path.write_text(json.dumps(state))
        return [SITE, "-i", str(inventory), "-e", "@" + str(path)]

    return declare


def servers(count, first=1, **extra):
    return [dict({"name": "%s%d" % (PREFIX, i), "flavor": TINY["name"], "image": PREFIX + "halt"}, **extra)
            for i in range(first, first + count)]


def flat(text):
    """Output with every run of white space made one space: the callback wraps long lines of the report."""
    return " ".join(text.split())


def run(cmd, timeout=600):
    proc = subprocess.run([os.path.join(BIN, "ansible-playbook")] + cmd, capture_output=True, text=True,
                          timeout=timeout, check=False,
                          env=ansible_env({"ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default"}))
    return PlaybookRun(proc, _recap(proc.stdout))


def start(cmd):
    """ansible-playbook in the background (a session of its own, so a signal reaches only it and its workers)."""
    return subprocess.Popen([os.path.join(BIN, "ansible-playbook")] + cmd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=ansible_env({"ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default"}))


def finish(proc, timeout=600):
    stdout, stderr = proc.communicate(timeout=timeout)
    return PlaybookRun(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), _recap(stdout))


def host_state(lab):
    """What the lab host holds: {domain: (active, [volume names of its disks])}, the instance pool's volume names
    and the records pool's volume names (where the claim lock lives)."""
    import xml.etree.ElementTree as ET

    import libvirt

    conn = libvirt.open(lab.uri(HOST))
    try:
        domains = {}
        for dom in conn.listAllDomains(0):
            root = ET.fromstring(dom.XMLDesc(0))
            # Disks are pool volumes (<source pool= volume=/>); a file disk under the pool's directory counts too.
            disks = [s.get("volume") if s.get("volume") else os.path.basename(s.get("file") or "")
                     for s in root.findall("devices/disk/source")]
            domains[dom.name()] = (bool(dom.isActive()), disks)
        pool = conn.storagePoolLookupByName("virtfleet-instances")
        pool.refresh(0)
        volumes = sorted(v.name() for v in pool.listAllVolumes(0))
        records = conn.storagePoolLookupByName("virtfleet-records")
        records.refresh(0)
        record_names = sorted(v.name() for v in records.listAllVolumes(0))
    finally:
        conn.close()
    return domains, volumes, record_names


def assert_nothing_half_made(lab, expected=None, foreign=()):
    """Every instance volume belongs to a domain, every domain's disks exist, no claim lock is held; with
    ``expected``, exactly those servers exist and run. ``foreign``: files the test itself put in the pool."""
    domains, volumes, records = host_state(lab)
    volumes = [v for v in volumes if v not in foreign]
    used = set(path for _active, disks in domains.values() for path in disks)
    assert sorted(set(volumes) - used) == [], "orphan volumes: %s" % (set(volumes) - used)
    for name, (_active, disks) in domains.items():
        missing = [vol for vol in disks if vol.startswith(name + "-") and vol not in volumes]
        assert not missing, "%s lacks its volumes %s" % (name, missing)
    assert not [r for r in records if r.endswith(".lock")], "a lock is left: %s" % records
    if expected is not None:
        assert sorted(domains) == sorted(expected), domains
        assert all(active for active, _disks in domains.values()), domains
    return domains


def converge_again(cmd, names, lab):
    """The rerun converges, and the one after it changes nothing."""
    rerun = run(cmd).assert_ok()
    assert_nothing_half_made(lab, names)
    again = run(cmd).assert_ok()
    assert again.stats["localhost"]["changed"] == 0, again.stdout[-4000:]
    assert "0 created, 0 changed, 0 deleted (0 pruned), %d unchanged, 0 failed" % len(names) in again.stdout
    return rerun


def delete_all(cmd_for, lab):
    domains, _volumes, _records = host_state(lab)
    gone = [{"name": name, "state": "absent"} for name in domains if name.startswith(PREFIX)]
    if gone:
        run(cmd_for(gone)).assert_ok()
    assert_nothing_half_made(lab, [])


def test_libvirtd_killed_mid_converge_fails_the_run_and_the_rerun_converges(lab, cloud):
    """Fault 1: libvirtd SIGKILLed once some servers of a batch exist, then restarted."""
    declared = servers(8)
    names = [s["name"] for s in declared]
    cmd = cloud(declared)
    killed = threading.Event()
    done = threading.Event()

    def kill_when_some_exist():
        import libvirt

        conn = libvirt.open(lab.uri(HOST))
        try:
            while not done.is_set():
                if len([d for d in conn.listAllDomains(0) if d.name().startswith(PREFIX)]) >= 2:
                    lab.kill(HOST)
                    killed.set()
                    return
                time.sleep(0.05)
        finally:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass

    killer = threading.Thread(target=kill_when_some_exist, daemon=True)
    killer.start()
    try:
        first = run(cmd)
    finally:
        done.set()
        killer.join(30)
        lab.revive(HOST)
    assert killed.is_set(), "the converge ended before libvirtd could be killed:\n" + first.stdout[-3000:]
    out = flat(first.stdout)
    assert first.rc != 0, out[-6000:]
    # The host is named as failed with the module's own words, and the run's last step says so.
    assert "host localhost: the converge failed: cannot " in out, out[-6000:]
    assert "was not converged" not in out, out[-6000:]
    assert "Fail the run if a server or a host's converge failed" in out
    assert "the converge of localhost failed" in out, out[-6000:]
    assert first.stats["localhost"]["failed"] >= 1, first.stats
    try:
        converge_again(cmd, names, lab)
    finally:
        delete_all(cloud, lab)


# The shapes a registered `servers` result takes on each path: what Ansible registers when the module fails with a
# message, when it dies (a traceback: a raw exception, a killed process), when the host is unreachable, when
# servers fail one by one, and when everything worked.
REPORT_PATHS = {
    "module failure": ({"failed": True, "changed": False,
                        "msg": "cannot get the host name on qemu:///system: End of file while reading data"},
                       "host h1: the converge failed: cannot get the host name on qemu:///system: End of file"),
    "module died": ({"failed": True, "changed": False, "rc": 1,
                     "msg": "MODULE FAILURE: No start of json char found\nSee stdout/stderr for the exact error",
                     "module_stdout": "",
                     "module_stderr": "Traceback (most recent call last):\n  File \"x\", line 1\n"
                                      "libvirt.libvirtError: internal error: client socket is closed\n"},
                    "(libvirt.libvirtError: internal error: client socket is closed)"),
    "unreachable": ({"unreachable": True, "changed": False,
                     "msg": "Failed to connect to the host via ssh: Connection refused"},
                    "host h1: the converge failed: Failed to connect to the host via ssh: Connection refused"),
    "servers failed": ({"failed": True, "changed": True, "msg": "1 of 2 servers failed: b: no",
                        "results": [{"name": "a", "result": "created", "state": "running", "pruned": False,
                                     "server": {"state": "running"}},
                                    {"name": "b", "result": "failed", "state": "running", "pruned": False,
                                     "msg": "no"}]},
                       "1 server(s) failed: b"),
}


@pytest.mark.parametrize("path", sorted(REPORT_PATHS) + ["success"])
def test_the_report_fails_the_run_on_every_failure_path(tmp_path, path):
    """tasks/report.yml, given each kind of result the servers task can register: every failure fails the run
    after the table, naming the host and the error; success passes."""
    if path == "success":
        result, expected = {"changed": False, "msg": "1 unchanged", "results": [
            {"name": "a", "result": "unchanged", "state": "running", "pruned": False,
             "server": {"state": "running"}}]}, "0 failed, 0 skipped; 1 servers on 2 hosts"
    else:
        result, expected = REPORT_PATHS[path]
    playbook = tmp_path / "report.yml"
    playbook.write_text(json.dumps([{
        "name": "report", "hosts": "all", "gather_facts": False,
        "tasks": [
            {"name": "Stand in for the converge", "ansible.builtin.set_fact": {
                "virtfleet_converge": "{{ converge_results[inventory_hostname] }}"}},
            {"ansible.builtin.import_tasks": os.path.join(REPO_ROOT, "playbooks", "tasks", "report.yml")},
        ]}]))
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {h: {"ansible_connection": "local",
                                                           "ansible_python_interpreter": sys.executable}
                                                       for h in ("h1", "h2")}}}))
    ok = {"changed": False, "msg": "no servers", "results": []}
    extra = {"converge_results": {"h1": result, "h2": ok}}
    done = run([str(playbook), "-i", str(inventory), "-e", json.dumps(extra)], timeout=300)
    assert expected in flat(done.stdout), done.stdout[-4000:]
    if path == "success":
        done.assert_ok()
        assert "was not converged" not in done.stdout
    else:
        assert done.rc == 2, done.stdout[-4000:]
        assert "was not converged" not in done.stdout, done.stdout[-4000:]
        assert "Fail the run if a server or a host's converge failed" in done.stdout
        assert ("the converge of h1 failed" if path != "servers failed" else "1 server(s) failed: b") \
            in done.stdout.split("TASK [Fail the run")[1], done.stdout[-4000:]
        assert done.stats["h1"]["failed"] == 1, done.stats


def test_server_action_names_the_hosts_that_did_not_answer(lab, tmp_path):
    """server_action.yml searches every compute host for the server: one whose libvirt does not answer is named,
    with its error, instead of the run saying only that no host has the server."""
    inventory = tmp_path / "hosts.yml"
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory.write_text(json.dumps({"all": {"children": {"compute": {"hosts": {
        "up": dict(local, virtfleet_uri=lab.uri(HOST)),
        "down": dict(local, virtfleet_uri="qemu+unix:///system?socket=%s" % (tmp_path / "no-such-sock"))},
    }}, "hosts": {"localhost": local}}}))
    done = run([os.path.join(REPO_ROOT, "playbooks", "server_action.yml"), "-i", str(inventory),
                "-e", json.dumps({"server_action_server": PREFIX + "nowhere", "server_action": "reboot"})],
               timeout=300)
    assert done.rc == 2, done.stdout[-4000:]
    out = flat(done.stdout.split("TASK [Fail unless exactly one host holds the server]")[1])
    assert "%snowhere is on no compute host that answered; these hosts did not answer and were not searched: " \
           "down: uri: cannot connect to libvirt" % PREFIX in out, out[-4000:]
    assert "up:" not in out.split("were not searched")[1]


def failed_rows(out):
    """{server: message} of the report table's failed rows (the callback wraps a long row onto indented lines)."""
    table = out.split("TASK [Servers of this run, where they run and what happened]")[1].split("TASK [")[0]
    entries = []
    for line in table.splitlines()[2:]:
        if line.strip().startswith("- "):
            entries.append(line.strip()[2:])
        elif entries and line.strip():
            entries[-1] += " " + line.strip()
    rows = {}
    for entry in entries:
        # A row the callback prints as a block scalar ("|-" then the text) or quoted.
        parts = entry.lstrip("|->").strip().strip("'").split(None, 3)
        if len(parts) == 4 and parts[0].startswith(PREFIX) and parts[3].startswith("failed"):
            rows[parts[0]] = parts[3]
    return rows


def _fail_starts_of(lab, name):
    """A QEMU hook on the lab host that refuses to start domain ``name`` while a flag file exists: a start failure
    no planning can foresee (libvirt runs /etc/libvirt/hooks/qemu before it prepares a domain, and gives up when
    the hook fails). libvirt looks for hook scripts when it starts, so the host's daemon is restarted. Returns the
    flag file; removing it lets the domain start again."""
    root = lab.host_dir(HOST)
    flag = os.path.join(root, "fail-start-" + name)
    hooks = os.path.join(root, "etc", "hooks")
    os.makedirs(hooks, exist_ok=True)
    hook = os.path.join(hooks, "qemu")
    with open(hook, "w") as handle:
        handle.write("#!/bin/sh\n"
                     "if [ \"$1\" = \"%s\" ] && [ \"$2\" = prepare ] && [ -e %s ]; then\n"
                     "  echo 'injected start failure' >&2; exit 1\n"
                     "fi\n"
                     "exit 0\n" % (name, flag))
    os.chmod(hook, 0o755)
    open(flag, "w").close()
    lab.kill(HOST)
    lab.revive(HOST)
    return flag


def test_a_build_that_cannot_start_is_rolled_back(lab, cloud):
    """Fault 5: the domain is defined but cannot start (a hook on the host refuses it): everything this run made
    for the server is removed, its claim released; the other servers of the batch are built."""
    name = PREFIX + "nostart"
    flag = _fail_starts_of(lab, name)
    declared = servers(2) + [{"name": name, "flavor": TINY["name"], "image": PREFIX + "halt"}]
    try:
        first = run(cloud(declared))
        out = flat(first.stdout)
        assert first.rc == 2, first.stdout[-6000:]
        assert "1 server(s) failed: %s" % name in out, first.stdout[-6000:]
        rows = failed_rows(first.stdout)
        assert list(rows) == [name], first.stdout[-6000:]
        assert "cannot start %s" % name in rows[name], rows
        assert "injected start failure" in rows[name], rows
        # Nothing of it is left: no domain, no volume, no lock; the two others run.
        assert_nothing_half_made(lab, [PREFIX + "1", PREFIX + "2"])
        _domains, volumes, _records = host_state(lab)
        assert not [v for v in volumes if v.startswith(name)], volumes
        # Once the host starts it again, it is built, and the run after that changes nothing.
        os.unlink(flag)
        converge_again(cloud(declared), [s["name"] for s in declared], lab)
    finally:
        if os.path.exists(flag):
            os.unlink(flag)
        delete_all(cloud, lab)


def test_concurrent_converges_of_one_state_make_each_server_once(lab, cloud):
    """Fault 7a: two ansible-playbook runs of the same declared state at once: each server exists once, nothing is
    orphaned, and a run that lost a race says which server and why."""
    declared = servers(4)
    names = [s["name"] for s in declared]
    cmd = cloud(declared)
    try:
        runs = [finish(p) for p in [start(cmd), start(cmd)]]
        for one in runs:
            assert one.rc in (0, 2), one.stdout[-4000:]
            if one.rc == 2:
                rows = failed_rows(one.stdout)
                assert rows, one.stdout[-6000:]
                for name, msg in rows.items():
                    assert name in names and len(msg) > len("failed: "), rows
        assert_nothing_half_made(lab, names)
        converge_again(cmd, names, lab)
    finally:
        delete_all(cloud, lab)


def test_concurrent_converges_racing_for_the_last_capacity_never_oversubscribe(lab, cloud, tmp_path):
    """Fault 7b: two different states whose servers fit the host only in part (10 GB of disk, 1 GB each, six
    servers each): exactly ten are built, each server that did not fit fails with the capacity it lacked."""
    first = servers(6)
    second = servers(6, first=11)
    cmd_a = cloud(first)
    # A second state file (cloud() writes one per test): the same cloud with the other servers.
    state_b = tmp_path / "cloud-b.json"
    state_b.write_text(json.dumps(dict(json.loads((tmp_path / "cloud.json").read_text()), virtfleet_servers=second)))
    cmd_b = cmd_a[:-1] + ["@" + str(state_b)]
    try:
        runs = [finish(p) for p in [start(cmd_a), start(cmd_b)]]
        domains = assert_nothing_half_made(lab)
        mine = sorted(d for d in domains if d.startswith(PREFIX))
        assert len(mine) == 10, (mine, [r.stdout[-3000:] for r in runs])
        failed = {}
        for one in runs:
            failed.update(failed_rows(one.stdout))
        assert len(failed) == 2 and not set(failed) & set(mine), (failed, mine)
        for name, msg in failed.items():
            assert "does not fit on host" in msg and "disk" in msg, (name, msg)
        assert sorted(r.rc for r in runs) in ([0, 2], [2, 2]), [r.rc for r in runs]
        # The rerun of either state changes nothing more: what did not fit still does not, and says so.
        again = run(cmd_a)
        assert_nothing_half_made(lab, mine)
        assert again.stats["localhost"]["changed"] == 0
    finally:
        delete_all(cloud, lab)


HOLDER = """
import sys, time
sys.path.insert(0, %(collections)r)
from ansible_collections.virtfleet.compute.plugins.module_utils._claims import ClaimLock
from ansible_collections.virtfleet.compute.plugins.module_utils._libvirt_client import LibvirtClient
lock = ClaimLock(LibvirtClient(%(uri)r))
lock.acquire()
print("held", flush=True)
time.sleep(3600)
"""


def hold_lock_and_die(lab):
    """A claimant that takes the host's claim lock and is SIGKILLed holding it (a killed ansible-playbook)."""
    from tests.conftest import COLLECTIONS_PATH

    proc = subprocess.Popen([sys.executable, "-c", HOLDER % {"collections": COLLECTIONS_PATH, "uri": lab.uri(HOST)}],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
    finally:
        proc.kill()
        proc.wait(10)
    _domains, _volumes, records = host_state(lab)
    assert "claim.lock" in records, records


def test_a_stale_lock_is_taken_over_by_one_waiter_at_a_time(lab):
    """Fault 8a: two claimants wait on a lock left by a killed process; after the lock's ttl one breaks it, and
    the two then hold it one after the other, never both at once."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._claims import ClaimLock
    from ansible_collections.virtfleet.compute.plugins.module_utils._libvirt_client import LibvirtClient

    hold_lock_and_die(lab)
    held = []
    errors = []

    def claimant():
        client = LibvirtClient(lab.uri(HOST))
        lock = ClaimLock(client, ttl=2.0, timeout=30.0)
        try:
            lock.acquire()
            start = time.monotonic()
            time.sleep(1.0)
            held.append((start, time.monotonic(), list(lock.broken)))
            lock.release()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=claimant) for _index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert len(held) == 2, held
    (start_a, end_a, broken_a), (start_b, end_b, broken_b) = sorted(held)
    assert end_a <= start_b, "two holders at once: %s" % held
    # The dead claimant's lock was broken once, and it named its owner (host:pid) for the record.
    assert len(broken_a + broken_b) == 1 and ":" in (broken_a + broken_b)[0], held
    assert_nothing_half_made(lab)


def test_a_converge_takes_over_a_stale_lock_after_its_ttl(lab, cloud):
    """Fault 8b: site.yml finds the claim lock of a killed run; it waits the lock's ttl (60 s), breaks it, and
    converges; the run after changes nothing."""
    declared = servers(1)
    cmd = cloud(declared)
    hold_lock_and_die(lab)
    began = time.monotonic()
    try:
        converge_again(cmd, [s["name"] for s in declared], lab)
        assert time.monotonic() - began >= 55, "the lock was broken before its ttl"
    finally:
        delete_all(cloud, lab)


@pytest.mark.parametrize("signals", [("SIGINT",), ("SIGINT", "SIGTERM")])
def test_an_interrupted_converge_leaves_the_next_run_free_to_proceed(lab, cloud, signals):
    """Fault 3: ansible-playbook interrupted (Ctrl-C: SIGINT to its process group, then SIGTERM if it still
    runs) once some servers of a batch exist: the run fails, the lock is released or expires, and the next run
    converges with nothing orphaned."""
    import signal

    declared = servers(8)
    names = [s["name"] for s in declared]
    cmd = cloud(declared)
    proc = start(cmd)
    try:
        import libvirt

        conn = libvirt.open(lab.uri(HOST))
        try:
            deadline = time.monotonic() + 300
            while len([d for d in conn.listAllDomains(0) if d.name().startswith(PREFIX)]) < 2:
                assert proc.poll() is None and time.monotonic() < deadline, "the converge ended before the signal"
                time.sleep(0.05)
        finally:
            conn.close()
        for name in signals:
            os.killpg(proc.pid, getattr(signal, name))
            try:
                proc.wait(5)
                break
            except subprocess.TimeoutExpired:
                continue
        interrupted = finish(proc, timeout=120)
        assert interrupted.rc != 0, interrupted.stdout[-3000:]
        converge_again(cmd, names, lab)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        delete_all(cloud, lab)


def in_host(lab, *cmd):
    """Run a command in the lab host's mount namespace (where its /var/lib/libvirt is)."""
    pid = lab.state["hosts"][HOST]["libvirtd_pid"]
    return subprocess.run(["nsenter", "-t", str(pid), "-m", "--"] + list(cmd), check=True, capture_output=True,
                          text=True).stdout


def test_a_full_instance_pool_fails_the_build_and_leaves_nothing(lab, cloud):
    """Fault 6: the instance pool's filesystem is full (a loop-mounted ext4 of 1.5 GiB, filled but for 64 KiB):
    the claim passes (the pool's capacity is 1 GB, the host reserves none), the first volume cannot be written;
    the error says so, the build is undone, nothing is orphaned. With the space back, the rerun converges."""
    pool_dir = "/var/lib/libvirt/virtfleet/instances"
    assert_nothing_half_made(lab, [])
    image = os.path.join(lab.dir, "flt-pool.img")
    subprocess.check_call(["truncate", "-s", "1536M", image])
    subprocess.check_call(["mkfs.ext4", "-q", "-F", "-m", "0", image])
    declared = servers(1)
    names = [s["name"] for s in declared]
    mounted = False
    try:
        in_host(lab, "mount", "-o", "loop", image, pool_dir)
        mounted = True
        in_host(lab, "rmdir", pool_dir + "/lost+found")
        in_host(lab, "chmod", "0755", pool_dir)
        blocks, size = in_host(lab, "stat", "-f", "-c", "%a %S", pool_dir).split()
        free = int(blocks) * int(size)
        in_host(lab, "fallocate", "-l", str(free - 64 * 1024), pool_dir + "/flt-filler")
        first = run(cloud(declared, virtfleet_hosts=[{"name": "localhost", "reserved_host_disk_mb": 0}]))
        assert first.rc == 2, first.stdout[-6000:]
        rows = failed_rows(first.stdout)
        assert list(rows) == names, first.stdout[-6000:]
        assert "No space left on device" in rows[names[0]], rows
        assert_nothing_half_made(lab, [], foreign={"flt-filler"})
    finally:
        if mounted:
            in_host(lab, "umount", pool_dir)
        os.unlink(image)
        import libvirt

        conn = libvirt.open(lab.uri(HOST))
        try:
            conn.storagePoolLookupByName("virtfleet-instances").refresh(0)
        finally:
            conn.close()
        lab.set_host_record(HOST)
    try:
        converge_again(cloud(declared), names, lab)
    finally:
        delete_all(cloud, lab)


def test_site_yml_refuses_to_change_a_locked_server_and_converges_the_rest(lab, cloud):
    """A locked server (issue 18's lock) through the playbook users run: the plan and the converge both fail on
    the change to it, naming the lock, while the rest of the cloud converges; once unlocked, the change is made."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._libvirt_client import LibvirtClient
    from ansible_collections.virtfleet.compute.plugins.module_utils._server_action import run_action

    declared = servers(2)
    cmd = cloud(declared)
    try:
        run(cmd).assert_ok()
        client = LibvirtClient(lab.uri(HOST))
        try:
            run_action(client, dict(name=PREFIX + "1", action="lock", lock_reason="audit", locked_by="tester",
                                    wait=False))
        finally:
            client.close()
        changed = cloud([dict(declared[0], metadata={"role": "db"}), declared[1],
                         dict(servers(1, first=3)[0])])
        plan = run(changed + ["--check", "--diff"])
        assert plan.rc != 0, plan.stdout[-4000:]
        assert "is locked (by tester" in flat(plan.stdout), plan.stdout[-6000:]
        real = run(changed)
        assert real.rc == 2, real.stdout[-4000:]
        rows = failed_rows(real.stdout)
        assert list(rows) == [PREFIX + "1"] and "is locked (by tester" in rows[PREFIX + "1"], rows
        assert_nothing_half_made(lab, [PREFIX + "1", PREFIX + "2", PREFIX + "3"])
        client = LibvirtClient(lab.uri(HOST))
        try:
            run_action(client, dict(name=PREFIX + "1", action="unlock", wait=False))
        finally:
            client.close()
        converge_again(changed, [PREFIX + "1", PREFIX + "2", PREFIX + "3"], lab)
    finally:
        delete_all(cloud, lab)
