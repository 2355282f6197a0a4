"""The operator workflows of docs/maintenance.md, run as written on a fresh stock lab (issue 12).

The guide's "Try it on the lab" commands (its ``<!-- check: commands step=NAME [rc=N] -->`` blocks) run one step at
a time, in order, from a checkout whose inventory/lab points at this test's lab: the plan of a fresh cloud, then
the converge that must do exactly what it predicted; a drain that cannot complete and changes nothing, and the plan
of one that can; a migration and a resize that show their progress, the drift a converge reports until Git
follows the resize; a host that dies and its servers rebuilt from the inventory's last answer from it. Between the
steps the test reads every lab host's libvirtd itself.

The stock lab's servers boot the OS-less halt image. About three minutes on 2 cores.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.integration.conftest import ansible_env
from tests.lab.conftest import running_lab
from tests.lab.lab import DEFAULT_SPECS, Lab
from tests.unit.docs.test_docs_examples import blocks

pytestmark = pytest.mark.lab

GUIDE = "docs/maintenance.md"
STOCK_LAB_DIR = "/var/tmp/virtfleet-lab/lab"
CALLBACKS = os.path.join(REPO_ROOT, "tests", "integration", "targets", "workflows", "callback_plugins")


def guide_steps():
    """``{step: (expected rc, [command, ...])}`` from the guide, backslash continuations joined."""
    steps = {}
    for marker, _lang, body, _index in blocks(GUIDE):
        if marker and marker["kind"] == "commands":
            commands = [c.strip() for c in body.replace("\\\n", " ").splitlines() if c.strip()]
            steps[marker["step"]] = (int(marker.get("rc", 0)), commands)
    return steps


STEPS = guide_steps()


@pytest.fixture(scope="module")
def lab():
    with running_lab(list(DEFAULT_SPECS), "guide") as lab:
        try:
            yield lab
        finally:
            # The guide's `lab.py crash/revive` ran in other processes: stop what lab.json says runs now.
            lab.state = Lab.load(lab.dir).state


@pytest.fixture(scope="module")
def checkout(lab, tmp_path_factory):
    """A checkout of the collection whose stock lab inventory names this test's lab; HOME of its own."""
    root = tmp_path_factory.mktemp("checkout")
    for name in ("playbooks", "tests", "build", "roles", "schemas", "plugins", "meta", "galaxy.yml", "ansible.cfg"):
        os.symlink(os.path.join(REPO_ROOT, name), str(root / name))
    os.symlink(os.path.dirname(os.path.dirname(sys.executable)), str(root / ".venv"))
    shutil.copytree(os.path.join(REPO_ROOT, "inventory"), str(root / "inventory"))
    for path in ("inventory/lab/lab.virtfleet.yml", "inventory/lab/group_vars/all.yml"):
        text = (root / path).read_text()
        assert STOCK_LAB_DIR in text
        (root / path).write_text(text.replace(STOCK_LAB_DIR, lab.dir))
    (root / "home").mkdir()
    return root


class Step:
    def __init__(self, name, runs, records):
        self.name, self.runs, self.records = name, runs, records

    @property
    def out(self):
        """Every message of the step's tasks, one per line (the terminal output folds long lines)."""
        return "\n".join(self.messages(index) for index in range(len(self.runs)))

    def messages(self, run):
        lines = []
        for record in self.records[run]:
            msg = record["result"].get("msg")
            for item in msg if isinstance(msg, list) else [msg]:
                if isinstance(item, str) and item:
                    lines.append(item)
        return "\n".join(lines)

    def results(self, run, task):
        """{host: result} of ``task`` in the ``run``-th command of the step."""
        return dict((r["host"], r["result"]) for r in self.records[run] if r["task"] == task)


def run_step(lab, checkout, name):
    """Run the guide's step ``name`` as written; each command must exit as the guide says (the last with rc)."""
    rc, commands = STEPS[name]
    env = ansible_env({
        "HOME": str(checkout / "home"),
        "VIRTFLEET_LAB_DIR": lab.dir,
        "ANSIBLE_CONFIG": str(checkout / "ansible.cfg"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default",
        "ANSIBLE_CALLBACK_PLUGINS": CALLBACKS,
        "ANSIBLE_CALLBACKS_ENABLED": "record_results",
        "VIRTFLEET_PROGRESS_INTERVAL": "3",
        "PATH": "%s:%s" % (os.path.dirname(sys.executable), os.environ.get("PATH", "/usr/bin:/bin")),
    })
    runs, records = [], []
    for index, command in enumerate(commands):
        record = checkout / ("record-%s-%d.jsonl" % (name, index))
        env["VIRTFLEET_TEST_RECORD"] = str(record)
        run = subprocess.run(["bash", "-c", command], cwd=str(checkout), env=env, capture_output=True, text=True,
                             timeout=900, check=False)
        runs.append(run)
        (checkout / ("output-%s-%d.txt" % (name, index))).write_text(run.stdout + run.stderr)
        records.append([json.loads(line) for line in record.read_text().splitlines()] if record.exists() else [])
        expected = rc if index == len(commands) - 1 else 0
        if run.returncode != expected:
            pytest.fail("%s: `%s` exited %d, not %d\n%s\n%s" % (name, command, run.returncode, expected,
                                                                run.stdout[-8000:], run.stderr[-3000:]),
                        pytrace=False)
    lab.state = Lab.load(lab.dir).state
    return Step(name, runs, records)


def domains(lab):
    """{host: {server: (running, memory KiB)}} read from each lab host that answers."""
    import libvirt

    out = {}
    for name in lab.names:
        if not lab.alive(name):
            continue
        conn = libvirt.open(lab.uri(name))
        try:
            out[name] = dict((d.name(), (d.isActive(), d.info()[1])) for d in conn.listAllDomains(0))
        finally:
            conn.close()
    return out


def where(state):
    return dict((server, host) for host, servers in state.items() for server in servers)


def host_record(lab, name):
    from ansible_collections.virtfleet.compute.plugins.module_utils._host_record import read_host_record
    from ansible_collections.virtfleet.compute.plugins.module_utils._libvirt_client import LibvirtClient

    with LibvirtClient(lab.uri(name)) as client:
        return read_host_record(client)[0]


REPORT = "Servers of this run, where they run and what happened"


def report_rows(step, run):
    """The report's table rows (SERVER HOST STATE RESULT), without the header and the counts line."""
    (result,) = step.results(run, REPORT).values()
    return result["msg"][1:-1]


CONVERGE = "Converge the servers of this host (one call for all of them)"
SERVERS = {"web-1", "web-2", "db-1", "db-2", "batch-1", "fast-1", "app-1"}


def test_the_guide_has_the_steps_this_test_runs():
    assert list(STEPS) == ["converge", "drain-refused", "drain-plan", "actions", "drift", "followed", "evacuate"]


def test_plan_of_a_fresh_lab_then_the_converge_does_what_it_predicted(lab, checkout):
    step = run_step(lab, checkout, "converge")
    check, real = step.messages(0), step.messages(1)
    assert "lab-1's servers that need halt are planned after the image import above" in check
    assert "check mode, nothing was changed: 7 created, 0 changed" in check
    assert "7 created, 0 changed" in real
    # The plan placed every server where the run put it, and predicted each server's steps exactly.
    assert report_rows(step, 0) == report_rows(step, 1) and len(report_rows(step, 1)) == 7
    predicted, done = step.results(0, CONVERGE), step.results(1, CONVERGE)
    assert sorted(predicted) == sorted(done) == lab.names
    for host in lab.names:
        assert [(r["name"], r["result"], r["actions"]) for r in predicted[host]["results"]] == \
            [(r["name"], r["result"], r["actions"]) for r in done[host]["results"]]
    assert set(where(domains(lab))) == SERVERS
    # Claims name their host by its host name (each lab host has its own), not this machine's.
    claims = [a for r in done["lab-2"]["results"] for a in r["actions"] if a.startswith("claim")]
    assert claims and all("on host lab-2" in a for a in claims)


def test_a_drain_that_cannot_complete_changes_nothing(lab, checkout):
    before = domains(lab)
    step = run_step(lab, checkout, "drain-refused")
    assert "cannot drain lab-3: no other host can take batch-1" in step.out
    assert "AvailabilityZoneFilter" in step.out and "nothing was changed (lab-3 is still enabled" in step.out
    assert host_record(lab, "lab-3")["enabled"] is True
    assert domains(lab) == before


def test_the_plan_of_a_drain_lists_its_moves_and_changes_nothing(lab, checkout):
    before = domains(lab)
    step = run_step(lab, checkout, "drain-plan")
    assert "web-2 -> lab-3 (live migrate)" in step.out
    assert "check mode, nothing was changed: lab-2 would be disabled; 1 server(s) would move: web-2" in step.out
    (move,) = step.results(0, "Move the servers (running ones live, stopped ones cold)")["localhost"]["results"]
    assert move["actions"] and move["changed"]
    assert host_record(lab, "lab-2")["enabled"] is True
    assert domains(lab) == before


def test_actions_show_their_progress_and_say_what_git_must_follow(lab, checkout):
    step = run_step(lab, checkout, "actions")
    assert where(domains(lab))["app-1"] == "lab-2"
    for run in step.runs:
        # The halt guest ignores the power button: the wait shows, with its limit, while it lasts.
        assert re.search(r"\[localhost\] server_action (migrate|resize) app-1: running for \d+ s; waiting for the "
                         r"guest to shut down \(ACPI power button\), \d+ s of 10 s", run.stdout), run.stdout[-3000:]
    (outcome,) = step.results(0, "Outcome").values()
    assert outcome["msg"][2].endswith("on lab-2") and "qemu+unix" not in outcome["msg"][2]
    assert "in virtfleet_servers set app-1's `flavor: m1.small`" in step.messages(1)
    (result,) = step.results(1, "Run the action on the server").values()
    assert result["declared_state"] == {"flavor": "m1.small"}
    assert domains(lab)["lab-2"]["app-1"] == (1, 512 * 1024)


def test_a_converge_reports_drift_until_git_follows(lab, checkout):
    before = domains(lab)
    step = run_step(lab, checkout, "drift")
    assert ("drift: app-1 on lab-2 runs as m1.small (1 vCPU, 512 MiB, 2 GiB), but the declared state says m1.tiny "
            "(1 vCPU, 256 MiB, 1 GiB)") in step.out
    assert "in virtfleet_servers set app-1's `flavor: m1.small`" in step.out
    assert "never shrinks" in step.out and "the root disk is" not in step.out
    assert domains(lab) == before

    followed = run_step(lab, checkout, "followed")
    stats = re.findall(r"^(lab-\d)\s*:.*changed=(\d+)", followed.runs[-1].stdout, re.M)  # the recap
    assert sorted(stats) == [("lab-1", "0"), ("lab-2", "0"), ("lab-3", "0")], followed.out[-4000:]
    assert domains(lab) == before


def test_a_dead_host_is_evacuated_from_the_inventorys_last_answer(lab, checkout):
    on_lab2 = sorted(domains(lab)["lab-2"])
    assert on_lab2 == ["app-1", "web-2"]
    step = run_step(lab, checkout, "evacuate")
    evacuate, cleanup = step.messages(1), step.messages(3)
    assert re.search(r"the servers of lab-2 come from the inventory cache \(lab-2 answered last at "
                     r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ, \d+ (s|min) ago\)", evacuate), evacuate
    state = domains(lab)
    assert state["lab-2"] == {}
    placed = where(state)
    assert set(placed) == SERVERS
    assert placed["web-2"] == "lab-3" and placed["app-1"] in ("lab-1", "lab-3")
    assert state[placed["app-1"]]["app-1"] == (1, 512 * 1024)
    (removed,) = step.results(3, "Remove each server whose evacuated copy runs elsewhere").values()
    assert sorted(r["item"]["name"] for r in removed["results"]) == ["app-1", "web-2"]
    assert all("undefine the stale copy of %s" % r["item"]["name"] in r["actions"] for r in removed["results"])
    assert cleanup
