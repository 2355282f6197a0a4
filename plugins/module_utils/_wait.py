# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Waiting, done once: a monotonic deadline, a predicate, and a typed timeout naming what was awaited.

Every wait also tells a watching controller what it waits for: when the module runs under one of the collection's
progress action plugins (plugins/action/server.py, servers.py, server_action.py), the environment names a file, and
:func:`progress` writes into it what is awaited, for how long so far, and the limit; the action plugin prints that
while the module runs, in the terminal and in AWX's job output. Without the variable nothing is written.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import time

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import WaitTimeout

PROGRESS_ENV = "VIRTFLEET_PROGRESS_FILE"
_PROGRESS_EVERY = 1.0  # seconds between writes: the controller reads it every few seconds
_last_progress = [0.0]


def progress(what, deadline, detail=None, force=False):
    """Record that the module is waiting for ``what`` (a phrase: "web-1 to shut down"), since ``deadline`` began."""
    path = os.environ.get(PROGRESS_ENV)
    if not path:
        return
    now = time.monotonic()
    if not force and now - _last_progress[0] < _PROGRESS_EVERY:
        return
    _last_progress[0] = now
    data = {"what": what, "elapsed": round(deadline.elapsed(), 1), "limit": deadline.seconds, "detail": detail}
    try:
        tmp = "%s.%d.tmp" % (path, os.getpid())
        with open(tmp, "w") as handle:
            json.dump(data, handle)
        os.replace(tmp, path)
    except (OSError, ValueError):
        pass  # progress is a courtesy: never let it fail the work


class Deadline:
    """A point in time that wall-clock changes (NTP steps in a booting lab) cannot move."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.start = time.monotonic()
        self.end = self.start + seconds

    def remaining(self):
        return max(0.0, self.end - time.monotonic())

    def expired(self):
        return time.monotonic() >= self.end

    def elapsed(self):
        return time.monotonic() - self.start


def wait_for(predicate, timeout, what, interval=0.5, max_interval=3.0, deadline=None):
    """Call ``predicate()`` until it returns something truthy; return that value.

    The poll interval grows from ``interval`` to ``max_interval`` so a quick condition is seen quickly and a slow
    one (a TCG guest booting for 30 s) does not cost hundreds of libvirt calls.
    """
    deadline = deadline or Deadline(timeout)
    delay = interval
    while True:
        value = predicate()
        if value:
            return value
        progress(what, deadline)
        if deadline.expired():
            raise WaitTimeout("timed out after %.0f s waiting for %s" % (deadline.elapsed(), what))
        time.sleep(min(delay, max(0.05, deadline.remaining())))
        delay = min(max_interval, delay * 1.5)
