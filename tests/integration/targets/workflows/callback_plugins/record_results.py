# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test helper: every task result of a playbook run, one JSON line each, into the file $VIRTFLEET_TEST_RECORD.

The workflow tests run the guides' commands as written; this callback (enabled through the environment, alongside
the default output) lets them compare what check mode predicted with what the real run did, server by server.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: record_results
type: aggregate
short_description: Write every task result as a JSON line (tests only)
description:
  - Appends C(task), C(host), C(status) and C(result) of every task to the file named by C(VIRTFLEET_TEST_RECORD).
"""

import json  # noqa: E402
import os  # noqa: E402

from ansible.plugins.callback import CallbackBase  # noqa: E402


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "record_results"
    CALLBACK_NEEDS_ENABLED = True

    def _record(self, status, result):
        path = os.environ.get("VIRTFLEET_TEST_RECORD")
        if not path:
            return
        entry = {"task": result.task_name, "host": result._host.get_name(), "status": status,
                 "result": result._result}
        with open(path, "a") as handle:
            handle.write(json.dumps(entry, default=str) + "\n")

    def v2_runner_on_ok(self, result):
        self._record("ok", result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record("failed", result)

    def v2_runner_on_skipped(self, result):
        self._record("skipped", result)
