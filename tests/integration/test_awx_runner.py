"""Playbooks run through ansible-runner, the engine AWX and Automation Controller run job templates with.

A private data directory laid out as AWX prepares one for a job (``project/`` with the playbooks of the user's Git
repository, ``inventory/`` with its group_vars), two lab hosts (tests/lab), and the runner's artifacts checked the
way AWX reads them: the status and return code, per-host stats, the events of each task, and the set_stats data of
the report (AWX's job artifacts).
"""
import json
import os
import shutil
import sys
import tempfile

import pytest
import yaml

from tests.conftest import COLLECTIONS_PATH, REPO_ROOT
from tests.lab.conftest import running_lab
from tests.lab.lab import HostSpec

PREFIX = "vf-t7-"
HOSTS = (PREFIX + "h1", PREFIX + "h2")
HALT = PREFIX + "halt"
BIN = os.path.dirname(sys.executable)
CONVERGE_TASK = "Converge the servers declared for this host"


@pytest.fixture(scope="module")
def lab():
    # The job imports the image and writes the flavor catalog itself.
    with running_lab([HostSpec(name) for name in HOSTS], "awx-runner") as lab:
        yield lab


def _servers():
    flavor = {"vcpus": 1, "ram_mb": 64, "disk_gb": 1}
    return [{"name": PREFIX + "%s-%d" % (host[-2:], i), "flavor": "tiny" if i else dict(flavor), "image": HALT,
             "virt_type": "qemu", "host": host, "tags": ["vf-t7"]} for host in HOSTS for i in range(2)]


def _state(lab, servers):
    return {
        "virtfleet_flavors": [{"name": "tiny", "vcpus": 1, "ram_mb": 64, "disk_gb": 1}],
        "virtfleet_images": [{"name": HALT, "src": lab.halt_image, "disk_format": "qcow2"}],
        "virtfleet_servers": servers,
    }


@pytest.fixture
def job(lab, tmp_path):
    """A private data directory as AWX makes one for a job: the project, the inventory and its group_vars."""
    project = tmp_path / "project"
    project.mkdir()
    # The user's repository holds thin playbooks importing the collection's (AWX lists playbooks of the project).
    (project / "validate.yml").write_text("---\n- name: Validate\n  ansible.builtin.import_playbook: "
                                          "virtfleet.compute.validate\n")
    (project / "converge.yml").write_text("---\n- name: Converge\n  ansible.builtin.import_playbook: %s\n"
                                          % os.path.join(REPO_ROOT, "tests/integration/targets/servers/converge.yml"))
    (project / "server_action.yml").write_text("---\n- name: Server action\n  ansible.builtin.import_playbook: "
                                               "virtfleet.compute.server_action\n")
    inventory = tmp_path / "inventory"
    (inventory / "group_vars").mkdir(parents=True)
    hosts = dict((name, {"virtfleet_uri": lab.uri(name), "ansible_connection": "local",
                         "ansible_python_interpreter": sys.executable}) for name in HOSTS)
    (inventory / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {"compute": {"hosts": hosts}}}}))

    def declare(servers):
        (inventory / "group_vars" / "all.yml").write_text(yaml.safe_dump(_state(lab, servers)))

    declare(_servers())
    return tmp_path, declare


def run(job_dir, playbook, **kwargs):
    """One job: like AWX, a fresh private data directory each time (ansible-runner keeps a job's extra vars and
    command line in it, and a later job in the same directory would inherit them)."""
    import ansible_runner

    private_data_dir = tempfile.mkdtemp(prefix="job-", dir=str(job_dir))
    for sub in ("project", "inventory"):
        shutil.copytree(os.path.join(str(job_dir), sub), os.path.join(private_data_dir, sub))

    envvars = {
        "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS_PATH,
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_NOCOLOR": "1",
        # ansible-playbook of this virtualenv, as an execution environment has its own.
        "PATH": "%s:%s" % (BIN, os.environ.get("PATH", "/usr/bin:/bin")),
    }
    return ansible_runner.run(private_data_dir=str(private_data_dir), playbook=playbook, envvars=envvars, quiet=True,
                              **kwargs)


def _events(runner, event, task=None):
    return [e["event_data"] for e in runner.events
            if e.get("event") == event and (task is None or e["event_data"].get("task") == task)]


def _report(runner):
    """The set_stats data of the run (AWX shows it as the job's artifacts)."""
    (stats,) = _events(runner, "playbook_on_stats")
    return stats["artifact_data"]["virtfleet_report"]


def _fail_text(runner):
    return runner.stdout.read()[-6000:]


def test_converge_job_status_stats_events_and_artifacts(job, lab):
    private, declare = job
    first = run(private, "converge.yml")
    assert (first.status, first.rc) == ("successful", 0), _fail_text(first)
    assert sorted(first.stats["changed"]) == sorted(HOSTS)
    for host in HOSTS:
        # Flavor, image, servers: the catalog and the image are there before the servers that use them.
        changed = [e["task"] for e in _events(first, "runner_on_ok") if e["host"] == host and e["res"].get("changed")]
        assert changed == ["Flavors in the catalog of every host", "Images on every host", CONVERGE_TASK]
    assert first.stats["failures"] == {} and first.stats["dark"] == {}
    converged = dict((e["host"], e["res"]) for e in _events(first, "runner_on_ok", CONVERGE_TASK))
    assert sorted(converged) == sorted(HOSTS)
    for host in HOSTS:
        assert converged[host]["summary"]["created"] == sorted(s["name"] for s in _servers() if s["host"] == host)
    report = _report(first)
    assert sorted(report["created"]) == sorted(s["name"] for s in _servers())
    assert report["placement"] == dict((s["name"], s["host"]) for s in _servers())
    assert report["failed"] == [] and report["hosts_not_converged"] == []
    # The runner keeps the job's artifacts on disk, as AWX stores them.
    artifacts = first.config.artifact_dir
    assert open(os.path.join(artifacts, "status")).read() == "successful"
    assert open(os.path.join(artifacts, "rc")).read() == "0"
    assert os.listdir(os.path.join(artifacts, "job_events"))

    again = run(private, "converge.yml")
    assert (again.status, again.rc) == ("successful", 0), _fail_text(again)
    assert again.stats["changed"] == {}
    assert sorted(_report(again)["unchanged"]) == sorted(s["name"] for s in _servers())

    # One host only (--limit), as a job template that asks for the limit on launch.
    limited = run(private, "converge.yml", limit=HOSTS[0])
    assert limited.status == "successful"
    assert sorted(limited.stats["ok"]) == [HOSTS[0]]

    # A server leaves the declared state: check mode shows exactly what a prune would delete, the real run does it.
    gone = _servers()[1]["name"]
    declare([s for s in _servers() if s["name"] != gone])
    preview = run(private, "converge.yml", cmdline="--check", extravars={"virtfleet_prune": True})
    assert preview.status == "successful", _fail_text(preview)
    assert _report(preview)["pruned"] == [gone] and _report(preview)["check_mode"] is True
    pruned = run(private, "converge.yml", extravars={"virtfleet_prune": True})
    assert pruned.status == "successful", _fail_text(pruned)
    assert _report(pruned)["pruned"] == [gone]
    assert sorted(pruned.stats["changed"]) == [HOSTS[0]]

    declare([dict(s, state="absent") for s in _servers()])
    cleaned = run(private, "converge.yml")
    assert cleaned.status == "successful", _fail_text(cleaned)
    assert sorted(_report(cleaned)["deleted"]) == sorted(s["name"] for s in _servers() if s["name"] != gone)


def test_a_failing_server_fails_the_job_after_the_report(job, lab):
    private, declare = job
    # Valid as declared, but too big for the host's capacity: its claim fails on the host, the others go on.
    huge = dict(_servers()[2], name=PREFIX + "huge", flavor={"vcpus": 1, "ram_mb": 1024 * 1024, "disk_gb": 1})
    servers = _servers()[:1] + [huge]
    declare(servers)
    try:
        failed = run(private, "converge.yml")
        assert (failed.status, failed.rc) == ("failed", 2)
        report = _report(failed)
        assert report["failed"] == [PREFIX + "huge"]
        assert report["created"] == [servers[0]["name"]]
        # The converge task's own failure shows in the job (ignored, so that the report runs); the job fails on
        # the report's last step.
        failures = _events(failed, "runner_on_failed")
        assert [e["task"] for e in failures if e.get("ignore_errors")] == [CONVERGE_TASK]
        (failure,) = [e for e in failures if not e.get("ignore_errors")]
        assert failure["task"] == "Fail the run if a server or a host's converge failed"
    finally:
        declare([dict(s, state="absent") for s in servers])
        assert run(private, "converge.yml").status == "successful"


def test_validate_job_fails_with_every_error_and_changes_nothing(job, lab):
    private, _declare = job
    bad = [dict(_servers()[0], flavor="tiny-x"), dict(_servers()[1], host=PREFIX + "h9")]
    failed = run(private, "validate.yml", extravars={"virtfleet_servers": bad})
    assert (failed.status, failed.rc) == ("failed", 2)
    (event,) = _events(failed, "runner_on_failed")
    assert [e["path"] for e in event["res"]["errors"]] == ["servers[0].flavor", "servers[1].host"]
    assert "servers[0].flavor: 'tiny-x' is not a defined flavor (did you mean 'tiny'?)" in event["res"]["msg"]
    assert failed.stats["changed"] == {}

    passed = run(private, "validate.yml")
    assert (passed.status, passed.rc) == ("successful", 0), _fail_text(passed)
    (ok,) = _events(passed, "runner_on_ok", "Validate the declared cloud state")
    assert ok["res"]["summary"]["servers"] == len(_servers())
    assert json.loads(json.dumps(ok["res"]["errors"])) == []


def test_server_action_job_with_its_survey_answers(job, lab):
    private, declare = job
    server = _servers()[2]  # on the second host: the playbook must find it there
    declare([server])
    assert run(private, "converge.yml").status == "successful"
    try:
        # The survey's answers arrive as extra variables, strings as AWX sends them.
        answers = {"server_action_server": server["name"], "server_action": "reboot",
                   "server_action_reboot_type": "hard", "server_action_flavor": "", "server_action_confirm": "false",
                   "server_action_image": "", "server_action_target_host": "", "server_action_console_type": "vnc"}
        rebooted = run(private, "server_action.yml", extravars=answers)
        assert (rebooted.status, rebooted.rc) == ("successful", 0), _fail_text(rebooted)
        (event,) = _events(rebooted, "runner_on_ok", "Run the action on the server")
        assert event["res"]["changed"] and event["res"]["actions"]
        assert event["res"]["host"] == lab.uri(HOSTS[1])

        paused = run(private, "server_action.yml", extravars=dict(answers, server_action="pause"))
        assert paused.status == "successful", _fail_text(paused)
        (event,) = _events(paused, "runner_on_ok", "Run the action on the server")
        assert event["res"]["server"]["state"] == "paused"

        wrong = run(private, "server_action.yml", extravars=dict(answers, server_action="explode"))
        assert (wrong.status, wrong.rc) == ("failed", 2)
        (failure,) = _events(wrong, "runner_on_failed")
        assert failure["task"] == "Check the request"
        missing = run(private, "server_action.yml", extravars=dict(answers, server_action_server=PREFIX + "nope"))
        assert missing.status == "failed"
        assert _events(missing, "runner_on_failed")[-1]["task"] == "Fail unless exactly one host holds the server"
    finally:
        declare([dict(server, state="absent")])
        assert run(private, "converge.yml").status == "successful"
