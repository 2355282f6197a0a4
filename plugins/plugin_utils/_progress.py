# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Progress of long module runs, shown while they run: in a terminal and in AWX's job output alike.

A module that waits (a guest's ACPI shutdown, a DHCP lease after a boot, a live migration) says what it waits for
through module_utils/_wait.progress(), into a file named by the environment variable VIRTFLEET_PROGRESS_FILE. The
action plugins of the server, servers and server_action modules run the module in a thread, and every
VIRTFLEET_PROGRESS_INTERVAL seconds (10 by default; the first line after 5) print a line through Ansible's display:

    [lab-2] server_action resize web-1: waiting for the guest to shut down (ACPI power button), 10 s of 30 s; ...

Ansible's display in a worker process goes to the controller's output at once, and ansible-runner (AWX) records
it as a job event, so the line shows in both. Ansible's own async polling was the alternative: it shows only a job
id and "finished=0", not what is waited for, and it needs an async directory on the host.

The file is read only when the module runs on the controller (connection local, as every playbook of the collection
runs it: the module reaches its host through the libvirt URI); over another connection only the elapsed time shows.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time

from ansible.plugins.action import ActionBase

ENV = "VIRTFLEET_PROGRESS_FILE"
INTERVAL_ENV = "VIRTFLEET_PROGRESS_INTERVAL"
FIRST_AFTER = 5.0


def describe(task, args, elapsed, state):
    """The progress line: the task's gist, how long it runs, and what the module says it waits for."""
    action = task.split(".")[-1]
    subject = action
    if args.get("action"):
        subject += " %s" % args["action"]
    if args.get("name"):
        subject += " %s" % args["name"]
    elif isinstance(args.get("servers"), list):
        subject += " (%d server%s)" % (len(args["servers"]), "" if len(args["servers"]) == 1 else "s")
    line = "%s: running for %d s" % (subject, elapsed)
    if state and state.get("what"):
        line += "; waiting for %s, %d s of %d s" % (state["what"], state.get("elapsed") or 0, state.get("limit") or 0)
        if state.get("detail"):
            line += " (%s)" % state["detail"]
    return line


def read_state(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


class ProgressAction(ActionBase):
    """Runs the module of the same name, printing what it waits for while it runs."""

    _supports_check_mode = True
    _supports_async = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        task_vars = task_vars or {}
        if self._task.async_val:
            # Ansible's own async: the module runs detached and is polled; nothing to add.
            result.update(self._execute_module(task_vars=task_vars, wrap_async=True))
            return result
        local = getattr(self._connection, "transport", "") == "local" or \
            getattr(self._connection, "_load_name", "").endswith("local")
        handle, path = tempfile.mkstemp(prefix="virtfleet-progress-")
        os.close(handle)
        os.unlink(path)  # the module creates it when it first waits
        env_index = None
        if local:
            env_index = len(self._task.environment or [])
            self._task.environment = list(self._task.environment or []) + [{ENV: path}]
        box = {}

        def work():
            try:
                box["result"] = self._execute_module(task_vars=task_vars)
            # Whatever it is, it is raised again in the task's own thread below.
            except BaseException as exc:  # pylint: disable=broad-except
                box["error"] = exc

        interval = float(os.environ.get(INTERVAL_ENV) or 10)
        started = time.monotonic()
        next_line = started + min(FIRST_AFTER, interval)
        thread = threading.Thread(target=work, name="virtfleet-module", daemon=True)
        thread.start()
        host = task_vars.get("inventory_hostname") or "localhost"
        try:
            while thread.is_alive():
                thread.join(0.5)
                now = time.monotonic()
                if thread.is_alive() and now >= next_line:
                    line = describe(self._task.action, self._task.args, now - started,
                                    read_state(path) if local else None)
                    self._display.display("  [%s] %s" % (host, line))
                    next_line = now + interval
        finally:
            if env_index is not None:
                self._task.environment = self._task.environment[:env_index]
            for leftover in (path,):
                if os.path.exists(leftover):
                    os.unlink(leftover)
        if "error" in box:
            raise box["error"]
        result.update(box["result"])
        return result
