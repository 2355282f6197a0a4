"""Many hosts: the libvirt inventory plugin, the scheduler lookup and playbooks/site.yml on the lab's five hosts.

The lab (tests/lab/lab.py) runs five libvirtd "hosts" on this machine, their capacities made different by the
reservations in their host records (see targets/multihost/cloud.yml for the layout). The tests run in order on one
lab: converge the declared cloud and check where every server went, converge again (unchanged), read the
inventory, refuse a server that fits nowhere without changing anything, then kill a host's libvirtd and check it
is reported down and skipped. Servers boot the OS-less halt image; one test boots a real cloud image.

About two minutes without the boot test, three and a half with it (2 cores, TCG).
"""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.integration.conftest import BOOT_IMAGE_FILE, PlaybookRun, _recap, ansible_env, ssh
from tests.lab.conftest import running_lab
from tests.lab.lab import HostSpec

pytestmark = pytest.mark.lab

TARGETS = os.path.join(REPO_ROOT, "tests", "integration", "targets", "multihost")
SITE = os.path.join(REPO_ROOT, "playbooks", "site.yml")
BIN = os.path.dirname(sys.executable)

SPECS = [
    HostSpec("mh-1", memory_mb=2048, vcpus=2, disk_gb=20, aggregates={"fast": {"ssd": "true"}}),
    HostSpec("mh-2", memory_mb=1024, vcpus=2, disk_gb=10),
    HostSpec("mh-3", memory_mb=1024, vcpus=1, disk_gb=10, availability_zone="az-b"),
    HostSpec("mh-4", memory_mb=512, vcpus=1, disk_gb=2),
    HostSpec("mh-5", memory_mb=4096, vcpus=2, disk_gb=40, enabled=False, disabled_reason="maintenance"),
]
USABLE = {"mh-1", "mh-2", "mh-3"}  # mh-4 is filled by `filler`, mh-5 is disabled


@pytest.fixture(scope="module")
def lab():
    with running_lab(SPECS, "multihost") as lab:
        yield lab


@pytest.fixture(scope="module")
def workdir(lab, tmp_path_factory):
    """Scratch directory with the inventory source for the lab and the SSH key site.yml injects."""
    directory = tmp_path_factory.mktemp("multihost")
    lab.inventory_config(str(directory / "lab.virtfleet.yml"), add_servers=True, timeout=10)
    subprocess.check_call(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / "id_ed25519")])
    return directory


def _run(playbook, inventory, *var_files, **extravars):
    """ansible-playbook with an inventory of its own (conftest's run_playbook pins virtfleet_uri for all hosts)."""
    cmd = [os.path.join(BIN, "ansible-playbook"), playbook, "-i", inventory]
    for path in var_files:
        cmd += ["-e", "@" + path]
    cmd += ["-e", json.dumps(extravars)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False,
                          env=ansible_env({"ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default"}))
    return PlaybookRun(proc, _recap(proc.stdout))


def _converge(lab, workdir, *more_vars):
    return _run(SITE, str(workdir / "lab.virtfleet.yml"), os.path.join(TARGETS, "cloud.yml"), *more_vars,
                multihost_dir=str(workdir), multihost_halt_image=lab.halt_image)


def _inventory(workdir):
    proc = subprocess.run([os.path.join(BIN, "ansible-inventory"), "-i", str(workdir / "lab.virtfleet.yml"), "--list"],
                          capture_output=True, text=True, timeout=300, check=False, env=ansible_env())
    assert proc.returncode == 0, proc.stderr
    return _plain(json.loads(proc.stdout))


def _plain(data):
    """ansible-inventory's JSON without its {"__ansible_unsafe": value} wrapping of untrusted (plugin) strings."""
    if isinstance(data, dict):
        if set(data) == {"__ansible_unsafe"}:
            return data["__ansible_unsafe"]
        return dict((k, _plain(v)) for k, v in data.items())
    if isinstance(data, list):
        return [_plain(v) for v in data]
    return data


def _domains(lab):
    """{host: {domain name: running?}} read straight from each lab host's libvirtd."""
    import libvirt

    out = {}
    for name in lab.names:
        if not lab.alive(name):
            continue
        conn = libvirt.open(lab.uri(name))
        try:
            out[name] = dict((d.name(), bool(d.isActive())) for d in conn.listAllDomains(0))
        finally:
            conn.close()
    return out


def _addresses(lab, host, server):
    import libvirt

    conn = libvirt.open(lab.uri(host))
    try:
        ifaces = conn.lookupByName(server).interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0)
    finally:
        conn.close()
    return [a["addr"] for i in ifaces.values() for a in i.get("addrs") or []]


def _servers_plus(path, extra):
    """A vars file declaring cloud.yml's servers plus ``extra`` (YAML list items, which may use its anchors)."""
    with open(os.path.join(TARGETS, "cloud.yml")) as handle:
        servers = handle.read().split("virtfleet_servers:", 1)[1]
    path.write_text("virtfleet_servers:" + servers + extra)
    return str(path)


def _where(domains):
    return dict((server, host) for host, servers in domains.items() for server in servers)


def test_site_converges_servers_without_host_across_the_lab(lab, workdir):
    _converge(lab, workdir).assert_ok()
    domains = _domains(lab)
    where = _where(domains)
    assert all(all(running.values()) for running in domains.values()), domains

    # anti-affinity spreads the group over three hosts: the only three that can take a server
    web_hosts = [where.get("web-%d" % i) for i in (1, 2, 3)]
    assert set(web_hosts) == USABLE, domains
    # affinity packs the group on one host
    assert where.get("db-1") and where.get("db-1") == where.get("db-2"), domains
    # the availability zone and the aggregate extra spec are honoured
    assert where.get("zoned-1") == "mh-3", domains
    assert where.get("fast-1") == "mh-1", domains
    # the full host takes nothing more than what filled it, the disabled host (most free memory of all) nothing
    assert set(domains["mh-4"]) == {"filler"}, domains
    assert domains["mh-5"] == {}, domains


def test_site_second_converge_changes_nothing(lab, workdir):
    run = _converge(lab, workdir).assert_ok()
    changed = dict((host, stats["changed"]) for host, stats in run.stats.items() if stats["changed"])
    assert not changed, run.stdout[-6000:]


def test_inventory_reports_hosts_capacity_groups_and_servers(lab, workdir):
    inv = _inventory(workdir)
    hostvars = inv["_meta"]["hostvars"]
    assert sorted(inv["compute"]["hosts"]) == lab.names
    assert inv["disabled"]["hosts"] == ["mh-5"]
    assert inv["az_az_b"]["hosts"] == ["mh-3"]
    assert inv["aggregate_fast"]["hosts"] == ["mh-1"]
    assert "down" not in inv or not inv["down"].get("hosts")
    for spec in SPECS:
        host = hostvars[spec.name]
        assert host["virtfleet_up"] is True
        assert host["virtfleet_uri"] == lab.uri(spec.name)
        record = host["virtfleet_host"]
        assert record["enabled"] is spec.enabled
        # The reservations give each host what its spec offers, times Nova's default ratios. This machine's
        # memory total grows as it brings memory online: the reservation is what was left of it at lab start.
        totals = lab.state["hosts"][spec.name]["totals"]
        assert record["reserved_host_memory_mb"] == totals["memory_mb"] - spec.memory_mb
        assert record["capacity"]["vcpus"]["capacity"] == spec.vcpus * 16
        assert record["capacity"]["disk_gb"]["capacity"] == spec.disk_gb
    # add_servers: every managed server is a host, grouped by hypervisor, flavor and tag
    where = _where(_domains(lab))
    assert sorted(inv["servers"]["hosts"]) == sorted(where)
    for server, host in where.items():
        assert hostvars[server]["virtfleet_hypervisor"] == host
        assert server in inv["hypervisor_%s" % host.replace("-", "_")]["hosts"]
    assert sorted(inv["tag_web"]["hosts"]) == ["web-1", "web-2", "web-3"]
    assert sorted(inv["flavor_m1_small"]["hosts"]) == ["db-1", "db-2"]
    # the usage the inventory reports is the servers' flavors
    assert hostvars["mh-4"]["virtfleet_host"]["local_gb_used"] == 2
    assert hostvars["mh-1"]["virtfleet_host"]["memory_mb_used"] == sum(
        512 if server.startswith("db-") else 256 for server, host in where.items() if host == "mh-1")


def test_a_server_that_fits_nowhere_fails_the_batch_and_changes_nothing(lab, workdir, tmp_path):
    """web-4 joins the anti-affinity group whose members already hold the three usable hosts (placed in an earlier
    run: the group count of existing servers must come through), so no host is left for it."""
    before = _domains(lab)
    extra = _servers_plus(tmp_path / "web4.yml",
                          "  - name: web-4\n    flavor: *tiny\n    image: halt\n    server_group: *web\n")
    run = _converge(lab, workdir, extra)
    assert run.rc != 0
    for reason in ("No valid host for server 'web-4'",
                   "ServerGroupAntiAffinityFilter: host already has 1 server(s) of anti-affinity group 'web'",
                   "mh-4: DiskFilter", "mh-5: ComputeFilter: host is disabled (maintenance)"):
        assert reason in run.stdout, run.stdout[-6000:]
    assert _domains(lab) == before


@pytest.mark.boot
def test_one_host_static_inventory_boots_and_logs_in(lab, workdir, tmp_path):
    """The one-host demo's path (a static inventory, no inventory plugin): the scheduler places the server on the
    only host, it boots the cloud image on the host's NAT network, and site.yml logs into it over SSH."""
    if not os.path.exists(BOOT_IMAGE_FILE):
        pytest.fail("the cloud image %s is missing: run `make image` first" % BOOT_IMAGE_FILE)
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(json.dumps({"all": {"children": {"compute": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "virtfleet_uri": lab.uri("mh-1")}}}}}}))
    cloud = tmp_path / "demo.yml"
    cloud.write_text(json.dumps({
        "virtfleet_images": [{"name": "debian-12", "src": BOOT_IMAGE_FILE, "disk_format": "qcow2"}],
        "virtfleet_networks": [{"name": "default"}],
        "virtfleet_ssh_key": str(workdir / "id_ed25519"),
        "virtfleet_login_user": "debian",
        "virtfleet_servers": [{"name": "vf-t4-demo", "flavor": {"vcpus": 1, "ram_mb": 512, "disk_gb": 4},
                               "image": "debian-12", "networks": [{"network": "default"}], "tags": ["demo"]}],
    }))
    run = _run(SITE, str(inventory), str(cloud)).assert_ok()
    assert "vf-t4-demo localhost placed" in run.stdout
    assert "vf-t4-demo is up: ssh -i" in run.stdout, run.stdout[-4000:]
    assert _where(_domains(lab))["vf-t4-demo"] == "mh-1"
    ip = _addresses(lab, "mh-1", "vf-t4-demo")[0]
    assert ssh(ip, str(workdir / "id_ed25519"), "hostname").strip() == "vf-t4-demo"
    # Gone again, so the later tests see the lab as before; a declared absent server is deleted wherever it is.
    gone = tmp_path / "gone.yml"
    gone.write_text(json.dumps({"virtfleet_servers": [{"name": "vf-t4-demo", "state": "absent"}]}))
    _run(SITE, str(inventory), str(cloud), str(gone)).assert_ok()
    assert "vf-t4-demo" not in _where(_domains(lab))


def test_a_host_that_is_down_is_reported_and_skipped(lab, workdir, tmp_path):
    before = _domains(lab)
    on_mh2 = sorted(before["mh-2"])
    assert on_mh2
    lab.kill("mh-2")
    try:
        # the inventory still answers, with mh-2 down and the reason
        inv = _inventory(workdir)
        assert inv["down"]["hosts"] == ["mh-2"]
        mh2 = inv["_meta"]["hostvars"]["mh-2"]
        assert mh2["virtfleet_up"] is False
        assert "cannot connect to libvirt" in mh2["virtfleet_host"]["error"]
        assert not any(v.get("virtfleet_hypervisor") == "mh-2" for v in inv["_meta"]["hostvars"].values())

        # the scheduler lookup over the inventory's hostvars skips it, and says so for what fits nowhere
        out = tmp_path / "placements.json"
        _run(os.path.join(TARGETS, "place.yml"), str(workdir / "lab.virtfleet.yml"),
             multihost_out=str(out)).assert_ok()
        result = json.loads(out.read_text())
        placements = dict((p["name"], p) for p in result["placements"])
        placed = [placements["late-%d" % i]["host"] for i in (1, 2, 3)]
        assert sorted(h for h in placed if h) == ["mh-1", "mh-3"], placements
        unplaced = next(p for p in placements.values() if p["host"] is None)
        assert unplaced["reasons"]["mh-2"].startswith("ComputeFilter: host is down"), unplaced
        assert unplaced["reasons"]["mh-5"] == "ComputeFilter: host is disabled (maintenance)", unplaced
        assert unplaced["reasons"]["mh-4"].startswith("DiskFilter: requested 1 GB, free 0 GB"), unplaced

        # site.yml leaves mh-2 out, changes nothing elsewhere, and does not recreate mh-2's servers (nor place a
        # new server) while it cannot see what mh-2 holds
        late = _servers_plus(tmp_path / "late.yml", "  - name: late-web\n    flavor: *tiny\n    image: halt\n")
        run = _converge(lab, workdir, late).assert_ok()
        assert "mh-2" not in run.stats
        assert not any(stats["changed"] for stats in run.stats.values()), run.stdout[-6000:]
        assert "left out (down or failed): mh-2" in run.stdout
        for name in on_mh2 + ["late-web"]:
            assert "waiting until every host answers: %s" % name in run.stdout
        after = _domains(lab)
        assert dict((h, d) for h, d in after.items()) == dict((h, d) for h, d in before.items() if h != "mh-2")
    finally:
        lab.revive("mh-2")
    # back up: its servers are where they were, still running
    assert _domains(lab)["mh-2"] == before["mh-2"]
