# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The scheduler's typed errors; callers (the lookup, server_action) turn them into their own failures."""

from __future__ import annotations

_MESSAGE_HOST_LINES = 50


class SchedulerError(Exception):
    """Base of the scheduler's errors."""


class SchedulerInputError(SchedulerError, ValueError):
    """A server request or host record is malformed; ``field`` is the path of the offending value."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__("%s: %s" % (field, message) if field else message)
        self.field = field


class NoValidHost(SchedulerError):
    """No host passes the filters for ``server`` (or none that passes can take it).

    ``reasons`` maps every host considered to ``"FilterName: why, with numbers"``; ``placed`` holds the placements
    made earlier in the batch (not committed anywhere: the batch failed).
    """

    def __init__(self, server: str, reasons: dict, summary: str = "", placed: list | None = None):
        super().__init__(server)
        self.server = server
        self.reasons = reasons
        self.summary = summary
        self.placed = placed or []
        self._message: str | None = None

    def __str__(self) -> str:
        # Built on demand: with allow_unplaced the scheduler raises and catches this for every unplaced server.
        if self._message is None:
            counts: dict = {}
            for why in self.reasons.values():
                name = why.split(":", 1)[0]
                counts[name] = counts.get(name, 0) + 1
            tally = ", ".join("%s %d" % item for item in counts.items())
            lines = ["%s: %s" % item for item in self.reasons.items()]
            if len(lines) > _MESSAGE_HOST_LINES:
                lines = lines[:_MESSAGE_HOST_LINES] + ["... and %d more hosts" % (len(lines) - _MESSAGE_HOST_LINES)]
            head = "No valid host for server '%s'%s; hosts rejected by %s:" % (
                self.server, self.summary, tally or "nothing")
            self._message = "\n  ".join([head] + lines)
        return self._message
