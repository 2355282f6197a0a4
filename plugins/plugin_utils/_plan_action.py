# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the planning actions (converge_plan, drain_plan, evacuate_plan) share: plain data from templated arguments,
the scheduler lookup as a callable, and the turning of a PlanError into a failed result.

They run on the controller only: no module is sent anywhere, nothing is changed, so they behave the same in check
mode, and a plan that cannot be made fails before the first task that changes something.
"""

from __future__ import annotations

from collections.abc import Mapping

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase

from ansible_collections.virtfleet.compute.plugins.plugin_utils._cloud_plan import PlanError

SCHEDULER = "virtfleet.compute.scheduler"


def plain(value):
    """Plain Python data (dict, list, str, int, float, bool, None) from templated values and host variables."""
    if isinstance(value, Mapping):
        return dict((plain(k), plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


class PlanAction(ActionBase):
    """Base of the planning actions: ``plan(args, task_vars)`` returns the result dict or raises PlanError."""

    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = False
    ARGUMENT_SPEC = {}

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        _validation, args = self.validate_argument_spec(argument_spec=self.ARGUMENT_SPEC)
        try:
            result.update(self.plan(plain(args), task_vars or {}))
        except PlanError as exc:
            result.update(failed=True, msg=exc.message)
            if exc.field:
                result["field"] = exc.field
            result.update(exc.details)
        result["changed"] = False
        return result

    def plan(self, args, task_vars):
        raise NotImplementedError

    @property
    def check_mode(self):
        return bool(self._task.check_mode or self._play_context.check_mode)

    def scheduler(self, task_vars, options, allow_unplaced=False):
        """``schedule(requests, hosts)`` through the scheduler lookup, with the user's options (seed, weights...)."""
        lookup = self._shared_loader_obj.lookup_loader.get(SCHEDULER, loader=self._loader, templar=self._templar)
        if lookup is None:
            raise PlanError("the lookup plugin %s cannot be loaded" % SCHEDULER)
        options = dict(options or {})
        if allow_unplaced:
            options["allow_unplaced"] = True

        def schedule(requests, hosts):
            try:
                return plain(lookup.run([], variables=task_vars, servers=requests, hosts=hosts, **options))
            except AnsibleError as exc:
                raise PlanError(str(exc.message if hasattr(exc, "message") else exc))

        return schedule

    @staticmethod
    def hostvar(task_vars, host, name, default=None):
        """One variable of another host, templated, as plain data; ``default`` when it is not set."""
        try:
            variables = task_vars["hostvars"][host]
        except KeyError:
            return default
        try:
            value = variables[name]
        except (KeyError, AnsibleError):
            return default
        return plain(value)
