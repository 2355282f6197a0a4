# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Waiting, done once: a monotonic deadline, a predicate, and a typed timeout naming what was awaited."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import WaitTimeout


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
        if deadline.expired():
            raise WaitTimeout("timed out after %.0f s waiting for %s" % (deadline.elapsed(), what))
        time.sleep(min(delay, max(0.05, deadline.remaining())))
        delay = min(max_interval, delay * 1.5)
