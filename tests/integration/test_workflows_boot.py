"""A real guest through the operator workflows of issue 12: plan with a running server, evacuate with fresh knowledge.

Two lab hosts (tests/lab); the inventory caches each host's last answer (cache: true). site.yml boots a Debian
guest and a halt server on wb-1 and logs into the guest; the plan (check mode) with that running server exits 0
and logs into nothing. A server_action run moves the halt server to wb-2 (its inventory read is the last answer
from wb-1), then wb-1 dies with its guests. evacuate_host.yml takes wb-1's servers from the inventory's last answer,
leaves the moved one alone and rebuilds the Debian guest elsewhere with the controller's key: the test logs into
it, and the next site.yml logs into it too, with nothing to rewrite.

Two boots of the Debian image under TCG; about four minutes on 2 cores.
"""
import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.integration.conftest import BOOT_IMAGE_FILE, PlaybookRun, _recap, ansible_env, ssh
from tests.lab.conftest import running_lab
from tests.lab.lab import HostSpec

pytestmark = [pytest.mark.lab, pytest.mark.boot]

SPECS = [HostSpec("wb-1", memory_mb=2048, vcpus=2, disk_gb=20), HostSpec("wb-2", memory_mb=2048, vcpus=2, disk_gb=20)]
PLAYBOOKS = os.path.join(REPO_ROOT, "playbooks")
CALLBACKS = os.path.join(REPO_ROOT, "tests", "integration", "targets", "workflows", "callback_plugins")


@pytest.fixture(scope="module")
def lab():
    if not os.path.exists(BOOT_IMAGE_FILE):
        pytest.fail("the cloud image %s is missing: run `make image` first" % BOOT_IMAGE_FILE)
    with running_lab(SPECS, "workflows-boot") as lab:
        yield lab


@pytest.fixture(scope="module")
def workdir(lab, tmp_path_factory):
    directory = tmp_path_factory.mktemp("workflows-boot")
    lab.inventory_config(str(directory / "lab.virtfleet.yml"), add_servers=True, timeout=10, cache=True,
                         cache_plugin="ansible.builtin.jsonfile", cache_connection=str(directory / "cache"),
                         cache_timeout=0)
    # With their checksums declared, images already imported are recognised without reading them again.
    (directory / "cloud.json").write_text(json.dumps({
        "virtfleet_images": [{"name": "debian-12", "src": BOOT_IMAGE_FILE, "disk_format": "qcow2",
                              "checksum": "sha256:" + sha256(BOOT_IMAGE_FILE)},
                             {"name": "halt", "src": lab.halt_image, "disk_format": "qcow2",
                              "checksum": "sha256:" + sha256(lab.halt_image)}],
        "virtfleet_networks": [{"name": "default"}],
        "virtfleet_flavors": [{"name": "m1.tiny", "vcpus": 1, "ram_mb": 64, "disk_gb": 1}],
        # site.yml creates the key pair on its first run.
        "virtfleet_ssh_key": str(directory / "controller_ed25519"),
        "virtfleet_login_user": "debian",
        "virtfleet_servers": [
            {"name": "deb-1", "host": "wb-1", "flavor": {"vcpus": 1, "ram_mb": 512, "disk_gb": 3},
             "image": "debian-12", "networks": ["default"], "user_data": "#cloud-config\nfinal_message: deb-1 up\n"},
            {"name": "halt-1", "host": "wb-1", "flavor": "m1.tiny", "image": "halt"},
        ],
    }))
    return directory


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run(workdir, playbook, *args, **extravars):
    """ansible-playbook on the lab; the run's ``messages`` are every task's msg, one per line (the terminal output
    folds long lines)."""
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), os.path.join(PLAYBOOKS, playbook),
           "-i", str(workdir / "lab.virtfleet.yml"), "-e", "@" + str(workdir / "cloud.json")]
    if extravars:
        cmd += ["-e", json.dumps(extravars)]
    cmd += list(args)
    record = workdir / "record.jsonl"
    if record.exists():
        record.unlink()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, check=False, env=ansible_env({
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default", "ANSIBLE_CALLBACK_PLUGINS": CALLBACKS,
        "ANSIBLE_CALLBACKS_ENABLED": "record_results", "VIRTFLEET_TEST_RECORD": str(record)}))
    result = PlaybookRun(proc, _recap(proc.stdout))
    lines = []
    for line in record.read_text().splitlines() if record.exists() else []:
        msg = json.loads(line)["result"].get("msg")
        lines.extend(m for m in (msg if isinstance(msg, list) else [msg]) if isinstance(m, str))
    result.messages = "\n".join(lines)
    return result


def where(lab):
    import libvirt

    out = {}
    for name in lab.names:
        if lab.alive(name):
            conn = libvirt.open(lab.uri(name))
            try:
                out.update((d.name(), name) for d in conn.listAllDomains(0))
            finally:
                conn.close()
    return out


def address(lab, host, server):
    import libvirt

    conn = libvirt.open(lab.uri(host))
    try:
        ifaces = conn.lookupByName(server).interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0)
    finally:
        conn.close()
    return [a["addr"] for i in ifaces.values() for a in i.get("addrs") or []][0]


def test_converge_boots_and_logs_in(lab, workdir):
    run(workdir, "site.yml").assert_ok()


def test_the_plan_with_a_running_server_exits_0_and_contacts_no_server(lab, workdir):
    plan = run(workdir, "site.yml", "--check", "--diff").assert_ok()
    assert "check mode: a real run logs into deb-1 at" in plan.messages
    assert "check mode, nothing was changed: 0 created, 0 changed, 0 deleted (0 pruned), 2 unchanged" in plan.messages
    assert not any(stats["changed"] for stats in plan.stats.values()), plan.stdout[-4000:]


def test_evacuate_uses_the_last_answer_of_the_dead_host_and_keeps_the_controllers_key(lab, workdir):
    # Reading the inventory for this action is the last answer from wb-1; then halt-1 leaves it.
    run(workdir, "server_action.yml", server_action_server="halt-1", server_action="migrate",
        server_action_target_host="wb-2", server_action_shutdown_timeout=2).assert_ok()
    assert where(lab)["halt-1"] == "wb-2"
    lab.crash("wb-1")

    evacuated = run(workdir, "evacuate_host.yml", evacuate_host="wb-1").assert_ok()
    assert re.search(r"the servers of wb-1 come from the inventory cache \(wb-1 answered last at \S+Z, \d+ (s|min) "
                     r"ago\)", evacuated.messages), evacuated.messages
    assert "halt-1 runs on wb-2 now (moved after the list was written): left alone" in evacuated.messages
    placed = where(lab)
    assert placed == {"halt-1": "wb-2", "deb-1": "wb-2"}

    # The rebuilt guest has the controller's key: log in with it.
    ip = address(lab, placed["deb-1"], "deb-1")
    assert ssh(ip, str(workdir / "controller_ed25519"), "hostname", timeout=480).strip() == "deb-1"

    # The next converge finds the config drive it would write, and logs in as well (wb-1 is left out, down).
    again = run(workdir, "site.yml").assert_ok()
    assert "left out (down or failed): wb-1" in again.messages
    assert "deb-1 is up: ssh -i" in again.messages and "is not logged into" not in again.messages
    assert not any(stats["changed"] for stats in again.stats.values()), again.stdout[-4000:]
