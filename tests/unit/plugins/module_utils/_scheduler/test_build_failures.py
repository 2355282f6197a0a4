# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A host's recent build failures: counted in its record, cleared by a good build, optionally disabling the host
(Nova's consecutive_build_service_disable_threshold), and weighed by the scheduler's BuildFailureWeigher."""

import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils import _server
from ansible_collections.virtfleet.compute.plugins.module_utils._host_info import host_info
from ansible_collections.virtfleet.compute.plugins.module_utils._host_record import (
    converge_host,
    read_host_record,
    record_build_result,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._records import RecordStore
from ansible_collections.virtfleet.compute.plugins.module_utils._scheduler.scheduler import schedule

SMALL = {"name": "m1.small", "vcpus": 1, "ram_mb": 512, "disk_gb": 1}


def test_a_host_without_a_record_is_not_written_to(client):
    assert record_build_result(client, failed=True) is None
    assert RecordStore(client).read("host") is None


def test_failures_count_up_and_a_good_build_clears_them(client):
    converge_host(client, {"cpu_allocation_ratio": 4.0})
    assert record_build_result(client, failed=False) is None  # nothing to clear: no write
    record_build_result(client, failed=True)
    record_build_result(client, failed=True)
    record, _stored = read_host_record(client)
    assert record["failed_builds"] == 2 and record["enabled"] is True
    record_build_result(client, failed=False)
    assert read_host_record(client)[0]["failed_builds"] == 0


def test_reaching_the_threshold_disables_the_host_with_novas_reason(client):
    converge_host(client, {"disable_after_failed_builds": 2})
    record_build_result(client, failed=True)
    assert read_host_record(client)[0]["enabled"] is True
    record_build_result(client, failed=True)
    record = read_host_record(client)[0]
    assert record["enabled"] is False
    assert record["disabled_reason"] == "Auto-disabled due to 2 build failures"
    # The host module's own settings survive: it is still the operator who enables the host again.
    converge_host(client, {"enabled": True})
    assert read_host_record(client)[0]["enabled"] is True


def test_the_threshold_is_validated_by_the_host_module(client):
    with pytest.raises(Exception, match="disable_after_failed_builds"):
        converge_host(client, {"disable_after_failed_builds": -1})


class _FailingPlan:
    actual = None
    powers_on = False

    def execute(self, check_mode):
        raise RuntimeError("define failed")


def test_a_failed_build_of_a_new_server_is_counted(client, monkeypatch):
    converge_host(client, {"cpu_allocation_ratio": 4.0})
    monkeypatch.setattr(_server.ServerPlanner, "plan", lambda self: _FailingPlan())
    monkeypatch.setattr(_server, "ServerRequest", lambda params: type("R", (), {
        "wait": False, "state": "running", "name": "x"})())
    with pytest.raises(RuntimeError, match="define failed"):
        _server.converge_server(client, {"name": "x"})
    assert read_host_record(client)[0]["failed_builds"] == 1
    # Check mode builds nothing and counts nothing.
    with pytest.raises(RuntimeError):
        _server.converge_server(client, {"name": "x"}, check_mode=True)
    assert read_host_record(client)[0]["failed_builds"] == 1


def test_the_scheduler_puts_a_host_with_failures_last(client):
    converge_host(client, {"cpu_allocation_ratio": 4.0})
    record_build_result(client, failed=True)
    failing = host_info(client, name="failing", details=False)
    failing["failed_builds"] = read_host_record(client)[0]["failed_builds"]
    fine = dict(failing, name="fine", failed_builds=0, memory_mb_used=failing["memory_mb_used"] + 1024)
    assert [p.host for p in schedule([{"name": "s", "flavor": SMALL}], [failing, fine])] == ["fine"]
