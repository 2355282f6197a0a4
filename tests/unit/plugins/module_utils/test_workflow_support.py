# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the module side gives the playbooks' workflows (issue 12): check-mode predictions carried forward
(_pending.py), the declared state an action must be followed by, and progress written while a module waits."""

import json
import os

import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils import _wait
from ansible_collections.virtfleet.compute.plugins.module_utils._domain import GIB
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import NotFoundError
from ansible_collections.virtfleet.compute.plugins.module_utils._flavor_catalog import converge_flavor
from ansible_collections.virtfleet.compute.plugins.module_utils._pending import Pending
from ansible_collections.virtfleet.compute.plugins.module_utils._plan import Plan
from ansible_collections.virtfleet.compute.plugins.module_utils._server import converge_server
from ansible_collections.virtfleet.compute.plugins.module_utils._server_action import declared_state_change
from ansible_collections.virtfleet.compute.plugins.module_utils._server_batch import converge_servers
from ansible_collections.virtfleet.compute.plugins.plugin_utils._progress import describe, read_state
from tests.unit.plugins.module_utils.conftest import BASE_IMAGE, volume_xml

TINY = {"name": "m1.tiny", "vcpus": 1, "ram_mb": 256, "disk_gb": 2}


def server(**overrides):
    out = {"name": "web1", "flavor": "m1.tiny", "image": BASE_IMAGE, "networks": [{"network": "default"}],
           "wait": False, "shutdown_timeout": 2}
    out.update(overrides)
    return out


def pending_image(virtual_size=GIB):
    return {"name": BASE_IMAGE, "pool": "virtfleet-images", "format": "qcow2", "virtual_size": virtual_size}


def test_check_mode_plans_against_what_earlier_tasks_would_create_exactly_as_the_run_does(client):
    """The fresh host of issue 12: no image, no flavor in the catalog. Check mode with them pending predicts the very
    steps the real run takes once the image task and the flavor task have run."""
    pending = {"images": [pending_image()], "flavors": [TINY]}
    with pytest.raises(NotFoundError):
        converge_server(client, server(), check_mode=True)  # what site.yml's check mode did before
    check = converge_server(client, server(), check_mode=True, diff_mode=True, pending=pending)
    assert check["changed"] and check["actions"][0] == \
        "create root disk (2 GiB qcow2 overlay on virtfleet-images/%s)" % BASE_IMAGE
    assert client.lookup_domain("web1") is None

    # What the earlier tasks of the real run do, then the real converge (pending is not consulted outside check mode).
    client.create_volume(client.lookup_pool("virtfleet-images"), volume_xml(BASE_IMAGE, GIB))
    converge_flavor(client, dict(TINY, state="present"))
    real = converge_server(client, server(), diff_mode=True, pending={"images": [pending_image(5 * GIB)]})
    assert real["actions"] == check["actions"]
    assert real["diff"]["after"]["flavor"] == check["diff"]["after"]["flavor"]


def test_a_pending_network_and_a_pending_pool(client):
    pending = {"images": [pending_image()], "networks": [{"name": "net-new", "active": True}]}
    check = converge_server(client, server(flavor=dict(TINY), networks=[{"network": "net-new"}]), check_mode=True,
                            pending=pending)
    assert check["changed"]
    with pytest.raises(NotFoundError, match="libvirt network net-new does not exist"):
        converge_server(client, server(flavor=dict(TINY), networks=[{"network": "net-new"}]), check_mode=True,
                        pending={"images": [pending_image()]})
    # A pool the run would create: the server is predicted as created after it, without disk steps.
    check = converge_server(client, server(flavor=dict(TINY), instance_pool="new-pool"), check_mode=True,
                            pending={"images": [pending_image()], "pools": ["new-pool"]})
    assert check["actions"] == ["create web1 after the storage pool creation above (new-pool); its disks and claim "
                                "are planned once the pool exists"]


def test_the_servers_batch_passes_pending_on(client):
    pending = {"images": [pending_image()], "flavors": [TINY]}
    result = converge_servers(client, {"servers": [server()], "pending": pending}, check_mode=True)
    assert result["summary"]["created"] == ["web1"] and not result.get("failed")


def test_pending_ignores_what_exists_and_refuses_unbootable_formats(client):
    pending = Pending({"images": [dict(pending_image(), format="vmdk")], "pools": ["virtfleet-images", "x"]})
    with pytest.raises(Exception, match="servers boot from raw or qcow2 images only"):
        pending.image("virtfleet-images", BASE_IMAGE)
    assert pending.missing_pools(client, ["virtfleet-images", "x", "y"]) == ["x"]
    assert not Pending() and Pending({"pools": ["x"]})


@pytest.mark.parametrize("before, after, expected", [
    ({"flavor": {"name": "m1.tiny", "vcpus": 1}}, {"flavor": {"name": "m1.small", "vcpus": 1}},
     ("flavor", "m1.small", "flavor: m1.small")),
    ({"flavor": {"name": None, "vcpus": 1}}, {"flavor": {"name": None, "vcpus": 2, "ram_mb": 512, "disk_gb": 4,
                                                         "swap_mb": 0, "ephemeral_gb": 0}},
     ("flavor", {"vcpus": 2, "ram_mb": 512, "disk_gb": 4}, "flavor: {vcpus: 2, ram_mb: 512, disk_gb: 4}")),
    ({"image": "virtfleet-images/a"}, {"image": "virtfleet-images/b"}, ("image", "b", "image: b")),
    ({"image": "virtfleet-images/a", "state": "running"}, {"image": "virtfleet-images/a", "state": "stopped"}, None),
])
def test_the_declared_state_an_action_must_be_followed_by(before, after, expected):
    plan = Plan()
    plan.before, plan.after = before, after
    assert declared_state_change(plan) == expected


def test_waits_write_their_progress_only_when_a_controller_watches(tmp_path, monkeypatch):
    path = str(tmp_path / "progress")
    deadline = _wait.Deadline(30)
    _wait.progress("the guest to shut down", deadline, force=True)
    assert not os.path.exists(path)
    monkeypatch.setenv(_wait.PROGRESS_ENV, path)
    _wait.progress("the guest to shut down", deadline, detail="forced off at the limit", force=True)
    state = read_state(path)
    assert state["what"] == "the guest to shut down" and state["limit"] == 30 and state["elapsed"] < 5
    with pytest.raises(Exception, match="timed out"):
        _wait.wait_for(lambda: False, 0.2, "an address", interval=0.05)
    assert json.load(open(path))["what"] in ("an address", "the guest to shut down")


def test_the_progress_line_says_what_how_long_and_the_limit():
    state = {"what": "the guest to shut down (ACPI power button)", "elapsed": 12.4, "limit": 120,
             "detail": "a guest that ignores it is forced off at the limit (shutdown_timeout)"}
    assert describe("virtfleet.compute.server_action", {"name": "web-1", "action": "resize"}, 15.2, state) == (
        "server_action resize web-1: running for 15 s; waiting for the guest to shut down (ACPI power button), 12 s of "
        "120 s (a guest that ignores it is forced off at the limit (shutdown_timeout))")
    assert describe("virtfleet.compute.servers", {"servers": [1, 2]}, 7, None) == "servers (2 servers): running for 7 s"
