"""Plan.execute: steps in order, nothing in check mode, and on failure the undo of what ran, backwards."""
import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ConflictError
from ansible_collections.virtfleet.compute.plugins.module_utils._plan import Plan, StepFailed


class Recorder:
    def __init__(self):
        self.events = []

    def step(self, name, fail=False):
        def run():
            self.events.append("run " + name)
            if fail:
                raise RuntimeError("%s broke" % name)
        return run

    def undo(self, name, fail=False):
        def run():
            self.events.append("undo " + name)
            if fail:
                raise RuntimeError("undo of %s broke" % name)
        return run


def _plan(rec, names, failing=None, undo_failing=(), without_undo=()):
    plan = Plan()
    for name in names:
        undo = None if name in without_undo else rec.undo(name, fail=name in undo_failing)
        plan.add(name, rec.step(name, fail=name == failing), undo=undo)
    return plan


@pytest.mark.parametrize("names", [[], ["a"], ["a", "b", "c"], ["c", "a", "b", "d"]])
def test_steps_run_in_the_order_they_were_added_and_are_reported_as_actions(names):
    rec = Recorder()
    plan = _plan(rec, names)

    assert plan.execute() == names
    assert rec.events == ["run %s" % n for n in names]
    assert plan.actions == names
    assert plan.changed is bool(names)


def test_check_mode_runs_nothing_but_reports_the_same_actions():
    rec = Recorder()
    plan = _plan(rec, ["a", "b"], failing="b")

    assert plan.execute(check_mode=True) == []
    assert rec.events == []
    assert plan.actions == ["a", "b"]
    assert plan.changed


@pytest.mark.parametrize("failing, expected_events, rolled_back", [
    ("a", ["run a"], []),
    ("b", ["run a", "run b", "undo a"], ["a"]),
    ("d", ["run a", "run b", "run c", "run d", "undo c", "undo b", "undo a"], ["c", "b", "a"]),
])
def test_a_failure_undoes_only_the_steps_that_ran_in_reverse(failing, expected_events, rolled_back):
    rec = Recorder()
    plan = _plan(rec, ["a", "b", "c", "d", "e"], failing=failing)

    with pytest.raises(StepFailed) as info:
        plan.execute()

    assert rec.events == expected_events
    details = info.value.details
    assert details["failed"] == failing
    assert details["rolled_back"] == rolled_back
    assert details["done"] == ["a", "b", "c", "d", "e"][:["a", "b", "c", "d", "e"].index(failing)]
    assert details["rollback_errors"] == []
    assert "%s failed: %s broke" % (failing, failing) in info.value.message


def test_steps_without_undo_are_skipped_in_the_rollback():
    rec = Recorder()
    plan = _plan(rec, ["a", "b", "c"], failing="c", without_undo=("b",))

    with pytest.raises(StepFailed) as info:
        plan.execute()

    assert rec.events == ["run a", "run b", "run c", "undo a"]
    assert info.value.details["rolled_back"] == ["a"]


def test_a_failing_undo_is_reported_and_the_rest_still_undone():
    rec = Recorder()
    plan = _plan(rec, ["a", "b", "c", "d"], failing="d", undo_failing=("b",))

    with pytest.raises(StepFailed) as info:
        plan.execute()

    assert rec.events == ["run a", "run b", "run c", "run d", "undo c", "undo b", "undo a"]
    assert info.value.details["rolled_back"] == ["c", "a"]
    assert info.value.details["rollback_errors"] == ["b: undo of b broke"]
    assert "(undone: c; a)" in info.value.message
    assert "(could not undo: b: undo of b broke)" in info.value.message


def test_a_typed_error_keeps_its_message_and_field():
    plan = Plan()

    def refuse():
        raise ConflictError("it is in use", field="name")

    plan.add("delete it", refuse)
    with pytest.raises(StepFailed) as info:
        plan.execute()

    assert info.value.field == "name"
    assert info.value.message == "delete it failed: it is in use"


def test_diff_is_before_and_after():
    plan = Plan()
    plan.before, plan.after = {"state": "stopped"}, {"state": "running"}
    assert plan.diff() == {"before": {"state": "stopped"}, "after": {"state": "running"}}
