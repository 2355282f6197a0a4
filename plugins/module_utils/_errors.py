# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Typed errors raised by the lower layers; only a module's ``main()`` turns them into ``fail_json``."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class VirtfleetError(Exception):
    """Base of every error this collection raises on purpose.

    ``field`` names the option (dotted path for nested ones) the error is about, so a person knows what to fix.
    """

    def __init__(self, message, field=None, **details):
        super(VirtfleetError, self).__init__(message)
        self.message = message
        self.field = field
        self.details = details

    def __str__(self):
        if self.field:
            return "%s: %s" % (self.field, self.message)
        return self.message

    def to_result(self):
        """The keyword arguments for ``fail_json``."""
        result = {"msg": str(self)}
        if self.field:
            result["field"] = self.field
        if self.details:
            result["details"] = self.details
        return result


class ValidationError(VirtfleetError):
    """The input is wrong; nothing was changed."""


class UnsafeImageError(ValidationError):
    """An image failed the safety inspection (backing file, data file, flat extents, format mismatch...)."""


class NotFoundError(VirtfleetError):
    """Something the input refers to (pool, image, network, flavor) does not exist on the host."""


class ConflictError(VirtfleetError):
    """The change is refused because of the current state (in use, would shrink, needs a rebuild...)."""


class CapacityError(ConflictError):
    """A claim does not fit the host's capacity after allocation ratios and reservations."""


class HostUnavailableError(VirtfleetError):
    """The libvirt daemon cannot be reached or the host is disabled."""


class LibvirtOperationError(VirtfleetError):
    """libvirt refused or failed an operation we asked for."""


class WaitTimeout(VirtfleetError):
    """A wait for a condition (running, an IP, shut off, gone) ran out of time."""


class MissingLibraryError(VirtfleetError):
    """A Python library the module needs is not installed where the module runs."""
