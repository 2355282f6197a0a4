# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A plan of steps and the one place where steps are carried out.

Planning code adds labelled steps; check mode reports the labels, the real run executes the same steps in order
(the mutation chokepoint). If a step fails, the undo actions of the steps that already ran are played backwards, so
a failed build leaves nothing half-made behind (DESIGN.md principle 6).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import VirtfleetError


class Step:
    __slots__ = ("label", "run", "undo")

    def __init__(self, label, run, undo=None):
        self.label = label
        self.run = run
        self.undo = undo


class StepFailed(VirtfleetError):
    """A step failed; ``done`` lists what ran, ``rolled_back`` what was undone, ``rollback_errors`` what was not."""


class Plan:
    def __init__(self):
        self.steps = []
        self.before = {}
        self.after = {}
        self.warnings = []
        self.actual = None
        self.created = False

    def add(self, label, run, undo=None):
        self.steps.append(Step(label, run, undo))

    @property
    def changed(self):
        return bool(self.steps)

    @property
    def actions(self):
        return [step.label for step in self.steps]

    def diff(self):
        return {"before": self.before, "after": self.after}

    def execute(self, check_mode=False):
        """Run every step (none in check mode); on failure undo what ran and raise StepFailed."""
        if check_mode:
            return []
        done = []
        for step in self.steps:
            try:
                step.run()
            except Exception as exc:  # pylint: disable=broad-except
                rolled_back, errors = _roll_back(done)
                reason = exc.message if isinstance(exc, VirtfleetError) else str(exc)
                message = "%s failed: %s" % (step.label, reason)
                if rolled_back:
                    message += " (undone: %s)" % "; ".join(rolled_back)
                if errors:
                    message += " (could not undo: %s)" % "; ".join(errors)
                raise StepFailed(message, field=getattr(exc, "field", None), done=[s.label for s in done],
                                 failed=step.label, rolled_back=rolled_back, rollback_errors=errors)
            done.append(step)
        return [s.label for s in done]


def _roll_back(done):
    rolled_back = []
    errors = []
    for step in reversed(done):
        if step.undo is None:
            continue
        try:
            step.undo()
            rolled_back.append(step.label)
        except Exception as exc:  # pylint: disable=broad-except
            errors.append("%s: %s" % (step.label, exc))
    return rolled_back, errors
