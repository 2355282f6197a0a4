"""Declarative dir pools through converge_pool, on a private libvirt test driver per test."""
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ConflictError, ValidationError
from ansible_collections.virtfleet.compute.plugins.module_utils._plan import StepFailed
from ansible_collections.virtfleet.compute.plugins.module_utils._pool import converge_pool


def pools(client):
    """{name: (active, autostart, path)} of every pool on the host."""
    return dict((pool.name(), (bool(pool.isActive()), client.pool_autostart(pool),
                               ET.fromstring(client.pool_xml(pool)).findtext("target/path")))
                for pool in client.list_pools())


def converge(client, params):
    before = pools(client)
    check = converge_pool(client, params, check_mode=True, diff_mode=True)
    assert pools(client) == before, "check mode changed the host"
    real = converge_pool(client, params, diff_mode=True)
    assert (check["changed"], check["actions"], check["diff"]) == (real["changed"], real["actions"], real["diff"])
    return real


@pytest.fixture
def scratch(tmp_path):
    return {"name": "scratch", "path": str(tmp_path / "scratch")}


@pytest.mark.parametrize("autostart, expected", [
    (True, ["define", "build", "start", "enable"]),
    (False, ["define", "build", "start"]),
])
def test_a_new_pool_is_defined_built_started_then_unchanged(client, scratch, autostart, expected):
    args = dict(scratch, autostart=autostart)

    created = converge(client, args)

    assert [a.split(" ")[0] for a in created["actions"]] == expected
    assert created["diff"] == {"before": {}, "after": {"name": "scratch", "type": "dir", "path": scratch["path"],
                                                       "active": True, "autostart": autostart}}
    assert pools(client)["scratch"] == (True, autostart, scratch["path"])
    assert created["pool"]["volumes"] == 0 and created["pool"]["capacity"] > 0

    again = converge(client, args)
    assert (again["changed"], again["actions"]) == (False, [])
    assert again["diff"]["before"] == again["diff"]["after"] == created["diff"]["after"]


@pytest.mark.parametrize("path", ["{p}/", "{p}/./", "{p}/sub/.."])
def test_the_same_path_spelled_differently_is_no_change(client, scratch, path):
    converge(client, scratch)
    result = converge(client, dict(scratch, path=path.format(p=scratch["path"])))
    assert not result["changed"]


def test_an_existing_pool_gets_autostart_and_is_started(client):
    pool = client.lookup_pool("virtfleet-images")
    client.stop_pool(pool)
    assert not client.pool_autostart(pool)

    result = converge(client, {"name": "virtfleet-images"})

    assert [a.split(" ")[0] for a in result["actions"]] == ["start", "enable"]
    assert pool.isActive() and client.pool_autostart(pool)
    assert not converge(client, {"name": "virtfleet-images"})["changed"]
    result = converge(client, {"name": "virtfleet-images", "autostart": False})
    assert [a.split(" ")[0] for a in result["actions"]] == ["disable"]
    assert not client.pool_autostart(pool)


@pytest.mark.parametrize("params, error, field", [
    ({"name": "virtfleet-images", "path": "/elsewhere"}, ConflictError, "path"),
    ({"name": "virtfleet-images", "type": "logical"}, ValidationError, "type"),
    ({"name": "scratch", "path": "relative/dir"}, ValidationError, "path"),
    ({"name": "scratch"}, ValidationError, "path"),
])
def test_refusals_name_the_field_and_change_nothing(client, params, error, field):
    before = pools(client)
    for check_mode in (True, False):
        with pytest.raises(error) as info:
            converge_pool(client, params, check_mode=check_mode)
        assert info.value.field == field
    assert pools(client) == before


@pytest.mark.parametrize("active, expected", [(True, ["stop", "undefine"]), (False, ["undefine"])])
def test_absent_stops_and_undefines_then_is_unchanged(client, scratch, active, expected):
    converge(client, scratch)
    if not active:
        client.stop_pool(client.find_pool("scratch"))

    result = converge(client, {"name": "scratch", "state": "absent"})

    assert [a.split(" ")[0] for a in result["actions"]] == expected
    assert client.find_pool("scratch") is None
    assert result["pool"] == {}
    assert not converge(client, {"name": "scratch", "state": "absent"})["changed"]


def test_a_pool_that_fails_to_start_is_undefined_again(client, scratch, monkeypatch):
    def refuse(pool):
        raise RuntimeError("no such directory")

    monkeypatch.setattr(client, "start_pool", refuse)
    with pytest.raises(StepFailed) as info:
        converge_pool(client, scratch)

    assert client.find_pool("scratch") is None
    assert [a.split(" ")[0] for a in info.value.details["rolled_back"]] == ["define"]
