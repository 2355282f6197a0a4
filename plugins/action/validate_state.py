# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The validate_state action: validation of the declared state on the controller, no module shipped to any host.

An action plugin rather than a module because validation needs no host at all: it reads the collection's
``schemas/`` next to this file, needs no libvirt, no interpreter on a managed host and no connection, so it works in
a Git CI job whose inventory hosts cannot be reached, and in an AWX execution environment as is.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.plugins.action import ActionBase

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import MissingLibraryError
from ansible_collections.virtfleet.compute.plugins.module_utils._state_validation import KINDS, validate_state

ARGUMENT_SPEC = dict(
    state=dict(type="dict", required=True),
    compute_hosts=dict(type="list", elements="str"),
    host_facts=dict(type="dict"),
    fail_on_error=dict(type="bool", default=True),
)


def _plain(value):
    """Plain Python data (dict, list, str, int, float, bool, None) from templated task arguments."""
    if isinstance(value, dict):
        return dict((_plain(k), _plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    # Anything else (a date YAML parsed, bytes) is kept, and the schema reports its type.
    return value


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        _validation, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        state = _plain(args["state"])
        unknown = sorted(set(state) - set(KINDS))
        if unknown:
            result.update(failed=True, msg="state: unknown kind(s) %s; the kinds are %s"
                          % (", ".join(unknown), ", ".join(KINDS)))
            return result
        try:
            report = validate_state(state, compute_hosts=_plain(args["compute_hosts"]),
                                    host_facts=_plain(args["host_facts"]))
        except MissingLibraryError as exc:
            result.update(failed=True, msg=str(exc))
            return result
        result.update(report.to_result())
        # The lines are in msg already; the structured errors stay for playbooks that register the result.
        result.pop("messages", None)
        result["changed"] = False
        if report.warnings:
            result["warnings"] = list(report.warnings)
        if not report.valid:
            header = "%d error%s in the declared state (servers[3] is the fourth entry of virtfleet_servers, and so " \
                     "on); nothing was changed:" % (len(report.errors), "" if len(report.errors) == 1 else "s")
            result["msg"] = "\n".join([header] + report.messages)
            result["failed"] = bool(args["fail_on_error"])
        else:
            result["msg"] = "the declared state is valid: %s" % ", ".join(
                "%d %s" % (report.summary[kind], kind.replace("_", " ")) for kind in KINDS)
        return result
