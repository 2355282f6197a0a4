# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plans of site.yml, drain_host.yml and evacuate_host.yml (plugins/plugin_utils/_cloud_plan.py), with the real
scheduler (through its lookup plugin, as the actions call it) on host dicts shaped like host_info's."""

import datetime

import pytest
from ansible.errors import AnsibleLookupError
from ansible.plugins.loader import lookup_loader

from ansible_collections.virtfleet.compute.plugins.lookup import scheduler as scheduler_plugin
from ansible_collections.virtfleet.compute.plugins.plugin_utils import _cloud_plan as cp

KEY = "ssh-ed25519 AAAAcontroller controller"
TINY = {"name": "m1.tiny", "vcpus": 1, "ram_mb": 256, "disk_gb": 1}
SMALL = {"name": "m1.small", "vcpus": 1, "ram_mb": 512, "disk_gb": 2}


@pytest.fixture(scope="module")
def lookup():
    path = scheduler_plugin.__file__
    lookup_loader._load_config_defs("virtfleet.compute.scheduler", scheduler_plugin, path)
    plugin = scheduler_plugin.LookupModule()
    lookup_loader._update_object(obj=plugin, name="virtfleet.compute.scheduler", path=path,
                                 resolved="virtfleet.compute.scheduler")
    return plugin


@pytest.fixture
def schedule(lookup):
    """The scheduler as the actions call it; records what it was asked."""
    calls = []

    def run(requests, hosts, **options):
        calls.append((requests, hosts))
        try:
            return lookup.run([], variables={}, servers=requests, hosts=hosts, seed=1, **options)
        except AnsibleLookupError as exc:
            raise cp.PlanError(str(exc))

    run.calls = calls
    return run


def host(name, servers=(), memory_mb=4096, up=True, **fields):
    entry = {"name": name, "up": up, "enabled": True, "availability_zone": "nova", "aggregates": {}, "traits": [],
             "vcpus": 4, "vcpus_used": 0, "memory_mb": memory_mb, "memory_mb_used": 0, "local_gb": 40,
             "local_gb_used": 0, "reserved_host_memory_mb": 0, "servers": list(servers)}
    entry.update(fields)
    return entry


def on_host(name, flavor=None, **fields):
    flavor = flavor or TINY
    entry = {"name": name, "uuid": "u-" + name, "state": "running", "flavor": flavor.get("name"),
             "vcpus": flavor["vcpus"], "memory_mb": flavor["ram_mb"], "disk_gb": flavor["disk_gb"]}
    entry.update(fields)
    return entry


# -- the declared state ----------------------------------------------------------------------------------------------

def test_requests_resolve_flavors_and_groups_by_name():
    flavors = cp.by_name([TINY])
    groups = cp.by_name([{"name": "web", "policy": "anti-affinity"}])
    wanted = cp.declared_servers([{"name": "a", "flavor": "m1.tiny", "server_group": "web"},
                                  {"name": "b", "flavor": dict(SMALL), "server_group": {"name": "x",
                                                                                        "policy": "affinity"}},
                                  {"name": "c"}, {"name": "d", "flavor": "unknown", "server_group": "nogroup"}])
    requests = cp.scheduler_requests(wanted, flavors, groups)
    assert requests[0]["flavor"] == TINY and requests[0]["server_group"] == {"name": "web", "policy": "anti-affinity"}
    assert requests[1]["flavor"] == SMALL and requests[1]["server_group"] == {"name": "x", "policy": "affinity"}
    # Without a flavor a server keeps its own: it asks for nothing.
    assert requests[2]["flavor"] == {"vcpus": 0, "ram_mb": 0} and requests[2]["server_group"] is None
    assert requests[2]["state"] == "running" and requests[2]["host"] is None
    # An unknown name is passed on, for the scheduler to refuse with its own words.
    assert requests[3]["flavor"] == "unknown" and requests[3]["server_group"] == {"name": "nogroup"}


@pytest.mark.parametrize("server, key, expected", [
    ({"name": "a"}, KEY, {"ssh_authorized_keys": [KEY]}),
    ({"name": "a", "ssh_authorized_keys": ["ssh-rsa AAAAu"]}, KEY, {"ssh_authorized_keys": [KEY, "ssh-rsa AAAAu"]}),
    ({"name": "a", "ssh_authorized_keys": ["ssh-rsa AAAAu"]}, None, {"ssh_authorized_keys": ["ssh-rsa AAAAu"]}),
    ({"name": "a", "user_data": "#cloud-config\n", "hostname": "web", "network_config": {"version": 2},
      "metadata": {"x": "1"}}, KEY,
     {"ssh_authorized_keys": [KEY], "user_data": "#cloud-config\n", "hostname": "web",
      "network_config": {"version": 2}}),
])
def test_cloud_init_is_the_declared_data_with_the_controller_key_first(server, key, expected):
    assert cp.cloud_init(server, key) == expected


# -- converge (site.yml) ---------------------------------------------------------------------------------------------

def test_converge_places_new_servers_keeps_existing_ones_and_lists_each_hosts_servers(schedule):
    servers = [
        {"name": "old", "flavor": "m1.tiny", "server_group": "web"},
        {"name": "new", "flavor": "m1.tiny", "server_group": "web", "ssh_authorized_keys": ["ssh-rsa AAAAu u"]},
        {"name": "gone", "state": "absent"},
        {"name": "gone-elsewhere", "state": "absent"},
    ]
    hosts = {"h1": host("h1", [on_host("old"), on_host("gone")]), "h2": host("h2", memory_mb=1024)}
    plan = cp.converge_plan(servers, hosts, schedule, flavors=[TINY],
                            server_groups=[{"name": "web", "policy": "anti-affinity"}], controller_key=KEY)
    assert [(p["name"], p["host"], p["existing"]) for p in plan["placements"]] == [
        ("old", "h1", True), ("new", "h2", False)]
    assert plan["lines"][:2] == ["old h1 stays", "new h2 placed"]
    h1 = plan["hosts"]["h1"]["servers"]
    assert [s["name"] for s in h1] == ["old", "gone"]
    assert h1[0]["ssh_authorized_keys"] == [KEY]
    # The group goes to the module with its policy, so the server records both.
    assert h1[0]["server_group"] == {"name": "web", "policy": "anti-affinity"}
    assert h1[0]["networks"] == [] and h1[0]["metadata"] == {} and h1[0]["tags"] == []
    assert h1[1]["state"] == "absent"
    (new,) = plan["hosts"]["h2"]["servers"]
    assert new["ssh_authorized_keys"] == [KEY, "ssh-rsa AAAAu u"]
    assert plan["declared_names"] == ["old", "new", "gone", "gone-elsewhere"]
    assert plan["waiting"] == [] and plan["drift"] == []
    # The scheduler counted "old" for its group on h1, from the declared group (h1 does not record it).
    requests, scheduler_hosts = schedule.calls[0]
    assert scheduler_hosts["h1"]["servers"][0] == {"name": "old", "server_group": "web"}
    assert [r["name"] for r in requests] == ["old", "new"]


def test_servers_not_found_wait_while_a_host_is_left_out(schedule):
    servers = [{"name": "here", "flavor": TINY}, {"name": "pinned", "flavor": TINY, "host": "h1"},
               {"name": "maybe-on-h2", "flavor": TINY}]
    hosts = {"h1": host("h1", [on_host("here")])}
    plan = cp.converge_plan(servers, hosts, schedule, left_out={"h2": None})
    assert [p["name"] for p in plan["placements"]] == ["here", "pinned"]
    assert plan["waiting"] == ["maybe-on-h2"]
    assert "left out (down or failed): h2" in plan["lines"]
    assert "waiting until every host answers: maybe-on-h2" in plan["lines"]
    # The left-out host is in the scheduler's input as down.
    assert schedule.calls[0][1]["h2"]["up"] is False
    again = cp.converge_plan(servers, hosts, schedule, left_out={"h2": host("h2")}, place_when_hosts_down=True)
    assert again["waiting"] == [] and len(again["placements"]) == 3
    assert schedule.calls[1][1]["h2"]["up"] is False


def test_check_mode_schedules_with_the_host_record_the_run_would_write(schedule):
    hosts = {"h1": host("h1", enabled=False, disabled_reason="new"), "h2": host("h2", memory_mb=512)}
    servers = [{"name": "a", "flavor": TINY}]
    plan = cp.converge_plan(servers, hosts, schedule)
    assert plan["placements"][0]["host"] == "h2"
    record = {"enabled": True, "other": 1}
    predicted = cp.converge_plan(servers, hosts, schedule, predicted={"h1": {"host_record": record}})
    assert predicted["placements"][0]["host"] == "h1"
    assert "other" not in schedule.calls[-1][1]["h1"]


def test_check_mode_places_on_a_host_whose_instance_pool_the_run_would_create(schedule):
    hosts = {"h1": host("h1", local_gb=0)}
    servers = [{"name": "a", "flavor": TINY}]
    with pytest.raises(cp.PlanError, match="DiskFilter"):
        cp.converge_plan(servers, hosts, schedule)
    plan = cp.converge_plan(servers, hosts, schedule, predicted={"h1": {"disk_unknown": True}})
    assert plan["placements"][0]["host"] == "h1"
    assert "check mode: h1's disk is unknown until its instance pool exists; placed as if the disks fit" in \
        plan["lines"]


def test_a_server_that_fits_nowhere_fails_the_plan(schedule):
    with pytest.raises(cp.PlanError, match="No valid host for server 'big'"):
        cp.converge_plan([{"name": "big", "flavor": {"vcpus": 64, "ram_mb": 1, "disk_gb": 1}}], {"h1": host("h1")},
                         schedule)


def test_drift_a_converge_cannot_follow_is_held_back(schedule):
    """A server resized by server_action to a larger disk than Git declares: reported as drift, not converged."""
    servers = [{"name": "web-1", "flavor": "m1.tiny"}, {"name": "web-2", "flavor": "m1.tiny"}]
    hosts = {"h1": host("h1", [on_host("web-1", SMALL), on_host("web-2")])}
    plan = cp.converge_plan(servers, hosts, schedule, flavors=[TINY, SMALL])
    (drift,) = plan["drift"]
    assert drift["name"] == "web-1" and drift["host"] == "h1" and drift["line"] == "flavor: m1.small"
    assert drift["msg"].startswith("drift: web-1 on h1 runs as m1.small (1 vCPU, 512 MiB, 2 GiB), but the declared "
                                   "state says m1.tiny (1 vCPU, 256 MiB, 1 GiB)")
    assert "in virtfleet_servers set web-1's `flavor: m1.small`" in drift["msg"]
    assert [s["name"] for s in plan["hosts"]["h1"]["servers"]] == ["web-2"]
    assert drift["msg"] in plan["lines"]
    # web-1 is still declared: a prune must not take it.
    assert "web-1" in plan["declared_names"]


@pytest.mark.parametrize("declared, actual", [
    (SMALL, TINY),                                              # growing: a change, not drift
    (dict(TINY, ram_mb=1024), TINY),                            # memory either way is a change the converge makes
    (dict(TINY, disk_gb=0), SMALL),                             # disk_gb 0: the image's size, nothing to compare
])
def test_changes_a_converge_can_make_are_no_drift(schedule, declared, actual):
    plan = cp.converge_plan([{"name": "a", "flavor": declared}], {"h1": host("h1", [on_host("a", actual)])}, schedule)
    assert plan["drift"] == [] and [s["name"] for s in plan["hosts"]["h1"]["servers"]] == ["a"]


def test_pending_resources_from_check_mode_results():
    results = {
        "pools": [{"changed": True, "pool": {"name": "virtfleet-volumes"}}, {"changed": False,
                                                                             "pool": {"name": "virtfleet-images"}}],
        "flavors": [{"changed": True, "flavor": dict(TINY, extra_specs={})}],
        "images": [{"changed": True, "image": {"name": "halt", "pool": "virtfleet-images", "format": "qcow2",
                                               "virtual_size": 1048576, "sha256": "x"}},
                   {"changed": True, "failed": True, "image": {"name": "bad"}}],
        "networks": [{"changed": True, "network": {"name": "net1", "active": True, "mode": "nat"}},
                     {"skipped": True, "changed": False}],
    }
    assert cp.pending_resources(results) == {
        "pools": ["virtfleet-volumes"],
        "flavors": [dict(TINY, extra_specs={})],
        "images": [{"name": "halt", "pool": "virtfleet-images", "format": "qcow2", "virtual_size": 1048576}],
        "networks": [{"name": "net1", "active": True}],
    }
    assert cp.pending_resources({}) == {}


# -- drain (drain_host.yml) ------------------------------------------------------------------------------------------

def drain_hosts():
    return {
        "h1": host("h1", [on_host("web-1", server_group="web"), on_host("app-1", state="stopped"),
                          on_host("kept", vm_state="shelved")]),
        "h2": host("h2", [on_host("web-2", server_group="web")]),
        "h3": host("h3"),
    }


def unplaced(schedule):
    def run(requests, hosts):
        return schedule(requests, hosts, allow_unplaced=True)
    return run


def test_drain_moves_running_servers_live_and_stopped_ones_cold(schedule):
    plan = cp.drain_plan("h1", drain_hosts(), unplaced(schedule),
                         server_groups=[{"name": "web", "policy": "anti-affinity"}])
    moves = dict((m["name"], m) for m in plan["moves"])
    assert moves["web-1"]["host"] == "h3" and moves["web-1"]["action"] == "live_migrate"
    assert moves["web-1"]["server_group"] == {"name": "web", "policy": "anti-affinity"}
    assert moves["app-1"]["action"] == "migrate"
    assert plan["complete"] and plan["proceed"] and plan["stays"] == [] and plan["shelved"] == ["kept"]
    assert "kept stays: shelved" in plan["lines"] and "msg" not in plan


def test_a_drain_that_cannot_complete_is_refused_unless_partial(schedule):
    hosts = drain_hosts()
    del hosts["h3"]  # web-1 has nowhere to go: h2 holds web-2 of its anti-affinity group
    groups = [{"name": "web", "policy": "anti-affinity"}]
    plan = cp.drain_plan("h1", hosts, unplaced(schedule), server_groups=groups)
    assert not plan["proceed"] and not plan["complete"]
    assert [m["name"] for m in plan["moves"]] == ["app-1"]
    assert plan["stays"][0]["name"] == "web-1"
    assert plan["msg"].startswith("cannot drain h1: no other host can take web-1 (h2: ServerGroupAntiAffinityFilter")
    assert "nothing was changed (h1 is still enabled and keeps its servers)" in plan["msg"]
    assert "-e drain_partial=true" in plan["msg"]
    partial = cp.drain_plan("h1", hosts, unplaced(schedule), server_groups=groups, partial=True)
    assert partial["proceed"] and not partial["complete"] and "msg" not in partial
    assert any(line.startswith("web-1 stays: h2: ServerGroupAntiAffinityFilter") for line in partial["lines"])


def test_groups_declared_inline_with_servers_count_for_a_drain(schedule):
    hosts = drain_hosts()
    del hosts["h3"]
    plan = cp.drain_plan("h1", hosts, unplaced(schedule),
                         servers=[{"name": "web-1", "server_group": {"name": "web", "policy": "anti-affinity"}}])
    assert not plan["proceed"]


def test_a_host_that_is_down_cannot_be_drained(schedule):
    hosts = drain_hosts()
    hosts["h1"] = host("h1", up=False, error="cannot connect")
    with pytest.raises(cp.PlanError, match="h1 does not answer .cannot connect.: a host that is down cannot be "
                                           "drained; evacuate it"):
        cp.drain_plan("h1", hosts, unplaced(schedule))
    with pytest.raises(cp.PlanError, match="h9 is not a compute host"):
        cp.drain_plan("h9", hosts, unplaced(schedule))


# -- evacuate (evacuate_host.yml) ------------------------------------------------------------------------------------

NOW = datetime.datetime(2026, 12, 7, 12, 0, 0, tzinfo=datetime.timezone.utc)


def view(name, flavor=None, **fields):
    """A server as server_info (and the inventory) shows it."""
    flavor = flavor or TINY
    entry = {"name": name, "uuid": "u-" + name, "state": "running", "flavor": dict(flavor), "image": "halt",
             "networks": [], "hostname": name}
    entry.update(fields)
    return entry


def evacuate_hosts():
    return {"dead": host("dead", up=False, error="cannot connect"), "h2": host("h2", [on_host("moved")]),
            "h3": host("h3")}


def test_evacuate_from_the_inventory_cache_skips_servers_that_moved_and_says_how_old_the_list_is(schedule):
    last_known = {"read_at": "2026-12-07T11:25:00Z",
                  "servers": [view("moved"), view("a", server_group="web"), view("b")]}
    declared = [{"name": "a", "flavor": "m1.tiny", "user_data": "#cloud-config\n",
                 "ssh_authorized_keys": ["ssh-rsa AAAAu u"]},
                {"name": "moved", "flavor": "m1.tiny"}, {"name": "later", "flavor": "m1.tiny"},
                {"name": "pinned-elsewhere", "flavor": "m1.tiny", "host": "h3"}]
    plan = cp.evacuate_plan("dead", evacuate_hosts(), schedule, last_known=last_known, servers=declared,
                            server_groups=[{"name": "web", "policy": "anti-affinity"}], controller_key=KEY, now=NOW)
    rebuilds = dict((r["name"], r) for r in plan["rebuilds"])
    assert sorted(rebuilds) == ["a", "b"]
    assert plan["moved"] == [{"name": "moved", "host": "h2"}]
    assert plan["source"] == "the inventory cache (dead answered last at 2026-12-07T11:25:00Z, 35 min ago)"
    assert "moved runs on h2 now (moved after the list was written): left alone" in plan["lines"]
    # The declared server's cloud-init data, with the controller's key: the drive the next converge expects.
    assert rebuilds["a"]["ssh_authorized_keys"] == [KEY, "ssh-rsa AAAAu u"]
    assert rebuilds["a"]["user_data"] == "#cloud-config\n"
    assert rebuilds["a"]["server_group"] == {"name": "web", "policy": "anti-affinity"}
    assert rebuilds["a"]["server"]["uuid"] == "u-a"
    # Not declared: the controller's key still, and a note.
    assert rebuilds["b"]["ssh_authorized_keys"] == [KEY]
    assert any(line.startswith("b is not declared") for line in plan["lines"])
    # Declared, found nowhere, not in the list: named, since the list cannot say whether the dead host held it.
    assert plan["unknown"] == ["later"]
    assert any("declared but found on no host that answers and not in the list: later" in line
               for line in plan["lines"])


def test_evacuate_servers_given_win_over_the_cache(schedule):
    plan = cp.evacuate_plan("dead", evacuate_hosts(), schedule, evacuate_servers=[view("x")],
                            last_known={"read_at": "2026-12-07T11:25:00Z", "servers": [view("y")]}, now=NOW)
    assert [r["name"] for r in plan["rebuilds"]] == ["x"]
    assert plan["source"].startswith("evacuate_servers")


def test_evacuate_refuses_without_knowledge_or_while_the_host_answers(schedule):
    with pytest.raises(cp.PlanError, match="nothing says which servers dead held") as refused:
        cp.evacuate_plan("dead", evacuate_hosts(), schedule, now=NOW)
    assert refused.value.field == "evacuate_servers"
    hosts = evacuate_hosts()
    hosts["dead"]["up"] = True
    with pytest.raises(cp.PlanError, match="dead is up; evacuate is for a host that is down"):
        cp.evacuate_plan("dead", hosts, schedule, evacuate_servers=[], now=NOW)


def test_declared_absent_servers_are_not_evacuated(schedule):
    plan = cp.evacuate_plan("dead", evacuate_hosts(), schedule, evacuate_servers=[view("x")],
                            servers=[{"name": "x", "state": "absent"}], now=NOW)
    assert plan["rebuilds"] == [] and "x is declared absent: not evacuated" in plan["lines"]


@pytest.mark.parametrize("seconds, text", [(5, "5 s"), (600, "10 min"), (3 * 3600, "3.0 h"), (3 * 86400, "3.0 days")])
def test_age_text(seconds, text):
    assert cp.age_text(seconds) == text
