"""Nova's server lock: who, when and why in the record; every change from every module refused until unlock."""
import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ConflictError, ValidationError
from ansible_collections.virtfleet.compute.plugins.module_utils._server import converge_server, list_servers
from ansible_collections.virtfleet.compute.plugins.module_utils._server_action import run_action
from tests.unit.plugins.module_utils.test_server_action import action, refused
from tests.unit.plugins.module_utils.test_server_plan import host_state, make_server, params, power_of

REASON = "disk errors under investigation, OPS-1234"


def lock(client, **extra):
    return action(client, "web1", "lock", lock_reason=REASON, locked_by="alice", **extra)


def test_lock_is_recorded_and_shown_and_idempotent(client, base_image):
    make_server(client, "running")
    done = lock(client)
    assert done["actions"] == ["lock web1 (%s)" % REASON]
    assert done["diff"]["before"]["locked"] is None
    shown = list_servers(client, ["web1"])[0]["locked"]
    assert shown["by"] == "alice" and shown["reason"] == REASON and shown["at"].endswith("Z")
    assert done["diff"]["after"]["locked"] == shown
    # Locking again changes nothing, even with another reason: unlock first.
    assert not run_action(client, dict(name="web1", action="lock", lock_reason="other"))["changed"]
    assert list_servers(client, ["web1"])[0]["locked"] == shown


def test_a_locked_server_refuses_every_change_from_every_module(client, base_image):
    make_server(client, "running")
    lock(client)
    # The server module: a change and a delete are refused, naming who locked it and why; nothing changes.
    for change in (dict(state="stopped"), dict(state="absent"), dict(metadata={"role": "db"})):
        before = host_state(client)
        for check_mode in (True, False):
            with pytest.raises(ConflictError) as info:
                converge_server(client, params(**change), check_mode=check_mode)
            assert "web1 is locked (by alice at " in str(info.value) and REASON in str(info.value)
        assert host_state(client) == before
    # As declared: simply unchanged.
    assert not converge_server(client, params(state="running"))["changed"]
    # Actions are refused too, in check mode as well.
    info = refused(client, "reboot", ConflictError)
    assert "action reboot is refused until it is unlocked" in str(info)
    refused(client, "pause", ConflictError)
    assert power_of(client) == "running"


def test_unlock_lets_changes_through_again(client, base_image):
    make_server(client, "running")
    lock(client)
    done = action(client, "web1", "unlock")
    assert done["actions"][0].startswith("unlock web1 (locked by alice at ")
    assert list_servers(client, ["web1"])[0]["locked"] is None
    action(client, "web1", "pause")
    assert power_of(client) == "paused"


def test_lock_defaults_to_the_user_running_the_module(client, base_image):
    import getpass

    make_server(client, "running")
    run_action(client, dict(name="web1", action="lock"))
    assert list_servers(client, ["web1"])[0]["locked"]["by"] == getpass.getuser()
    assert list_servers(client, ["web1"])[0]["locked"]["reason"] is None


@pytest.mark.parametrize("field, value", [("lock_reason", "two\nlines"), ("locked_by", "x" * 256)])
def test_lock_fields_are_one_bounded_line(client, base_image, field, value):
    make_server(client, "running")
    with pytest.raises(ValidationError) as info:
        run_action(client, {"name": "web1", "action": "lock", field: value})
    assert info.value.field == field
