# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The server's imperative actions (Nova's server actions): one Plan per action, check mode exact.

Each action reads the server once, decides what to do as labelled steps of a Plan (the mutation chokepoint of
_plan), and predicts the server's state after them. Check mode reports the steps; the real run executes the same
steps. An action that has nothing left to do (``unpause`` on a running server, ``resize`` to the flavor it has,
``confirm_resize`` with nothing to confirm) plans no step and reports no change.

What an action leaves to be finished later is kept in the server's own metadata (DESIGN.md principle 2), as string
facts of its record (``ServerRecord.extra``):

``vm_state``
    ``resized`` (a resize waits for ``confirm_resize`` or ``revert_resize``), ``rescued`` or ``shelved``; absent
    for an active server. A shelved server is powered off and must not count in its host's vCPU and RAM usage
    (its disks still do).
``resize_old_flavor`` / ``resize_created_volumes``
    The flavor before the resize (JSON) and the roles of the disks the resize created, for ``revert_resize``.
``rescue_image``
    The image the rescue disk was made from.
``evacuated_from``
    The URI of the host the server was evacuated from; ``cleanup_evacuated`` uses it to recognise the copy left
    on that host when it comes back.

A shelved-offloaded server has no domain any more: its definition, and where its root disk and config drive were
saved, are the JSON document ``shelved-<name>`` of the records pool of the host that offloaded it.

Moves between hosts (``migrate``, ``live_migrate``, ``unshelve`` elsewhere, ``evacuate``) claim the server's flavor
on the target the way a build does (_claims: check, lock, define, verify) and release the source by undefining the
server there. Without shared storage the disks travel through libvirt only: the base image is copied from the
source's image pool to the target's (download stream to upload stream) when the target lacks it, then a live
migration copies the disks' top layers over NBD (``VIR_MIGRATE_NON_SHARED_INC``) into volumes made beforehand on
the target, and a cold migration streams the volumes themselves.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import datetime
import getpass
import io
import json
import os
import secrets
import string
import threading
import xml.etree.ElementTree as ET

from ansible_collections.virtfleet.compute.plugins.module_utils import _limits
from ansible_collections.virtfleet.compute.plugins.module_utils._claims import Claim
from ansible_collections.virtfleet.compute.plugins.module_utils._disk_usage import (
    IMAGE_COPY_SOURCE,
    IMAGES_RECORD,
    OFFLOAD_RECORD_PREFIX,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._domain import (
    DISK_ROLES,
    DISK_TARGETS,
    GIB,
    MIB,
    NAMESPACE,
    Domain,
    DomainSpec,
    Nic,
    ServerRecord,
    render_domain,
    volume_name,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import (
    CapacityError,
    ConflictError,
    HostUnavailableError,
    LibvirtOperationError,
    MissingLibraryError,
    NotFoundError,
    ValidationError,
    VirtfleetError,
    WaitTimeout,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._extra_specs import apply_pinning
from ansible_collections.virtfleet.compute.plugins.module_utils._fixed_ip import (
    _reservation,
    plan_release,
    plan_reservation,
    validate_fixed_ip,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._flavor import Flavor
from ansible_collections.virtfleet.compute.plugins.module_utils._flavor_catalog import resolve_flavor
from ansible_collections.virtfleet.compute.plugins.module_utils._host_info import down_host, host_info
from ansible_collections.virtfleet.compute.plugins.module_utils._hypervisor import resolve_virt_type
from ansible_collections.virtfleet.compute.plugins.module_utils._libvirt_client import DEFAULT_URI, LibvirtClient
from ansible_collections.virtfleet.compute.plugins.module_utils._plan import Plan
from ansible_collections.virtfleet.compute.plugins.module_utils._records import RecordStore
from ansible_collections.virtfleet.compute.plugins.module_utils._server import (
    DEFAULT_IMAGE_POOL,
    DEFAULT_INSTANCE_POOL,
    LOCK_FACTS,
    Definition,
    ServerPlanner,
    ServerRequest,
    _base_image,
    _blank_xml,
    _current_flavor,
    _delete_volume_step,
    _drive_hash,
    _grow_step,
    _overlay_xml,
    _raw_xml,
    _rebuild_root_step,
    _size_text,
    cpu_pinning,
    graceful_stop,
    lease_expiries,
    lock_view,
    read_server,
    refuse_if_locked,
    server_view,
    wait_until_ready,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._wait import Deadline, progress

# Actions that boot the guest from a new root disk: its DHCP client may ask with a new identity and get another
# address, so the wait takes only a lease renewed after the action as the server's address (the old one lingers).
FRESH_ROOT_ACTIONS = ("rebuild", "evacuate")

ACTIONS = (
    "reboot", "resize", "confirm_resize", "revert_resize", "rebuild", "migrate", "live_migrate", "evacuate",
    "cleanup_evacuated", "shelve", "shelve_offload", "unshelve", "rescue", "unrescue", "console", "suspend",
    "resume", "pause", "unpause", "lock", "unlock",
)
# Actions a locked server still takes: the lock itself, and the console (it changes nothing the user declared).
UNLOCKED_ACTIONS = ("lock", "unlock", "console")
REBOOT_TYPES = ("soft", "hard")
STORAGE_MODES = ("auto", "copy", "shared")
CONSOLE_TYPES = ("vnc", "serial")

# vm_state values kept in the record (an active server has none).
RESIZED, RESCUED, SHELVED = "resized", "rescued", "shelved"
SHELVED_OFFLOADED = "shelved_offloaded"
_ACTION_FACTS = ("vm_state", "resize_old_flavor", "resize_created_volumes", "resized_at", "rescue_image",
                 "rescued_at", "shelved_at")

# A VNC password that expired at the epoch: the console needs a password (QEMU only accepts one at run time when
# the display was started with password authentication), and nobody has one until the console action sets it.
LOCKED_UNTIL = "1970-01-01T00:00:01"
_PASSWORD_CHARS = string.ascii_letters + string.digits
# VNC authentication (DES) reads the first 8 characters of a password and ignores the rest.
_VNC_PASSWORD_LENGTH = 8

# Pool types whose volumes every host sees (same volume, same key): their disks never need copying.
SHARED_POOL_TYPES = ("netfs", "gluster", "rbd", "iscsi", "iscsi-direct", "sheepdog", "vstorage")

# Rescue: the rescue disk boots as vda, the server's own disks follow (the guest finds them by serial anyway).
RESCUE_SERIAL = "rescue"
_RESCUE_TARGETS = {"root": "vdb", "config": "vdc", "ephemeral": "vdd", "swap": "vde"}
_ROLE_BY_SERIAL = dict((serial, role) for role, _t, serial, _f, _r in DISK_ROLES)
_DISK_ORDER = dict((role, index) for index, (role, _t, _s, _f, _r) in enumerate(DISK_ROLES))

_PROGRESS_SAMPLES = 20


def _now():
    return datetime.datetime.utcnow().replace(microsecond=0).isoformat() + "Z"


def _random_password():
    return "".join(secrets.choice(_PASSWORD_CHARS) for dummy in range(_VNC_PASSWORD_LENGTH))


# -- the request ----------------------------------------------------------------------------------------------------

class ActionRequest:
    """The module's parameters, validated once; what each action needs is checked before anything is read."""

    def __init__(self, params):
        self.name = params.get("name")
        if not self.name or not isinstance(self.name, str):
            raise ValidationError("is required", field="name")
        self.action = params.get("action")
        if self.action not in ACTIONS:
            raise ValidationError("must be one of %s" % ", ".join(ACTIONS), field="action")
        self.uri = params.get("uri") or DEFAULT_URI
        self.reboot_type = params.get("reboot_type") or "soft"
        if self.reboot_type not in REBOOT_TYPES:
            raise ValidationError("must be soft or hard", field="reboot_type")
        self.shutdown_timeout = _non_negative(params.get("shutdown_timeout"), 120, "shutdown_timeout")
        self.flavor = params.get("flavor")
        self.confirm = bool(params.get("confirm"))
        self.image = params.get("image")
        self.image_pool = params.get("image_pool")
        self.instance_pool = params.get("instance_pool") or DEFAULT_INSTANCE_POOL
        self.hostname = params.get("hostname")
        self.user_data = _limits.validate_user_data(params.get("user_data"))
        self.ssh_authorized_keys = params.get("ssh_authorized_keys")
        self.network_config = params.get("network_config")
        self.target_uri = params.get("target_uri")
        self.hosts = _hosts(params.get("hosts"))
        self.server_group = params.get("server_group")
        self.storage = params.get("storage") or "auto"
        if self.storage not in STORAGE_MODES:
            raise ValidationError("must be one of %s" % ", ".join(STORAGE_MODES), field="storage")
        self.migration_uri = params.get("migration_uri")
        self.migration_timeout = _non_negative(params.get("migration_timeout"), 600, "migration_timeout")
        self.bandwidth = params.get("bandwidth")
        self.server = params.get("server")
        self.console_type = params.get("console_type") or "vnc"
        if self.console_type not in CONSOLE_TYPES:
            raise ValidationError("must be vnc or serial", field="console_type")
        self.console_ttl = _non_negative(params.get("console_ttl"), 300, "console_ttl")
        self.lock_reason = params.get("lock_reason")
        self.locked_by = params.get("locked_by")
        for field in ("lock_reason", "locked_by"):
            value = params.get(field)
            if value is not None and (not isinstance(value, str) or len(value) > 255 or "\n" in value):
                raise ValidationError("must be one line of at most 255 characters", field=field)
        if self.console_ttl < 1:
            raise ValidationError("must be at least 1 second", field="console_ttl")
        self.wait = params.get("wait", True)
        self.wait_timeout = _non_negative(params.get("wait_timeout"), 600, "wait_timeout")
        if self.action == "resize" and self.flavor in (None, "", {}):
            raise ValidationError("is required to resize (a flavor name of the host's catalog or a dict)",
                                  field="flavor")
        if self.action == "evacuate":
            if not isinstance(self.server, dict) or not self.server:
                raise ValidationError(
                    "is required to evacuate: the server as last seen (server_info's server, an inventory cache or "
                    "your declared state), because its host cannot be asked any more", field="server")
        if self.action in ("migrate", "live_migrate", "evacuate", "cleanup_evacuated") and not (
                self.target_uri or self.hosts):
            raise ValidationError("give target_uri (the host to move to) or hosts (candidates for the scheduler)",
                                  field="target_uri")

    @property
    def cloud_init_given(self):
        return any(v is not None for v in (self.hostname, self.user_data, self.ssh_authorized_keys,
                                           self.network_config))


def _non_negative(value, default, field):
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError("must be a whole number of seconds, 0 or more", field=field)
    return value


def _hosts(value):
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValidationError("must be a list of hosts (name and uri)", field="hosts")
    out = []
    for index, entry in enumerate(value):
        if isinstance(entry, str):
            entry = {"name": entry, "uri": entry}
        if not isinstance(entry, dict) or not entry.get("uri"):
            raise ValidationError("must have a uri (and a name)", field="hosts[%d]" % index)
        out.append({"name": str(entry.get("name") or entry["uri"]), "uri": str(entry["uri"])})
    return out


# -- the runner -----------------------------------------------------------------------------------------------------

class Target:
    """A host a server moves to: its client, the name the scheduler knows it by, and how it was chosen."""

    def __init__(self, client, name, chosen_by, alternates=None):
        self.client = client
        self.name = name
        self.chosen_by = chosen_by
        self.alternates = alternates or []


class ActionRunner:
    """Plans one action on one server; ``connect(uri)`` opens the other hosts a move needs."""

    def __init__(self, client, request, connect=None, now=None):
        self.client = client
        self.req = request
        # The other hosts of a move are opened with this connection's settings (timeout, transport policy).
        self._connect = connect or getattr(client, "sibling", LibvirtClient)
        self._opened = []
        self.now = now or _now()
        self.outputs = {}
        # Where the server is after the plan (a move changes it), and in which power state.
        self.final_client = client
        self.final_power = None
        self.offloaded = None  # the offload document, for a server that is (or will be) shelved-offloaded

    def connect(self, uri):
        client = self._connect(uri)
        self._opened.append(client)
        return client

    def close(self):
        for client in self._opened:
            client.close()
        self._opened = []

    def plan(self):
        plan = Plan()
        getattr(self, "_plan_" + self.req.action)(plan)
        if self.req.action not in UNLOCKED_ACTIONS and getattr(plan, "actual", None) is None:
            # An evacuation reads a dead host's server from its last view (_begin never saw a domain): the view
            # carries the lock facts too.
            refuse_if_locked(self.req.name, self.req.server or {}, "action %s" % self.req.action)
        return plan

    # -- reading --------------------------------------------------------------------------------------------------

    def _server(self, client=None, required=True):
        client = client or self.client
        actual = read_server(client, self.req.name)
        if actual is None:
            if not required:
                return None
            raise NotFoundError("server %s does not exist on %s" % (self.req.name, client.uri), field="name")
        if not actual.managed:
            raise ConflictError(
                "a domain called %s exists on %s but was not created by virtfleet.compute; it is never touched"
                % (self.req.name, client.uri), field="name")
        return actual

    def _begin(self, plan, actual, client=None):
        """Record the before view; the after view starts equal to it and each action changes what it changes."""
        if self.req.action not in UNLOCKED_ACTIONS:
            # Before anything else is checked, as Nova does: a locked server's first answer is that it is locked.
            refuse_if_locked(self.req.name, actual.domain.record.extra, "action %s" % self.req.action)
        plan.actual = actual
        plan.before = state_view(actual, (client or self.client).uri)
        plan.after = dict(plan.before)
        self.final_power = actual.power

    def _refuse(self, actual, states, doing):
        vm_state = vm_state_of(actual)
        if vm_state in states:
            hint = {
                RESIZED: "confirm it (confirm_resize) or revert it (revert_resize) first",
                RESCUED: "unrescue it first",
                SHELVED: "unshelve it first",
            }[vm_state]
            raise ConflictError("cannot %s %s: it is %s; %s" % (doing, self.req.name, vm_state, hint), field="action")

    def _secure_xml(self, actual, client=None):
        return (client or self.client).domain_xml_secure(actual.dom, inactive=True)

    # -- lock -----------------------------------------------------------------------------------------------------

    def _plan_lock(self, plan):
        actual = self._server()
        self._begin(plan, actual)
        record = actual.domain.record
        if lock_view(record.extra) is not None:
            return  # locked already: unlock first to lock again with another reason
        reason = self.req.lock_reason
        facts = dict(record.extra, locked_at=self.now, locked_by=self.req.locked_by or _controller_user())
        if reason:
            facts["locked_reason"] = reason
        xml = _with_record(self._secure_xml(actual), _record_with(record, extra=facts))
        plan.add("lock %s%s" % (self.req.name, " (%s)" % reason if reason else ""),
                 lambda: self.client.define_domain(xml))
        plan.after["locked"] = lock_view(facts)

    def _plan_unlock(self, plan):
        actual = self._server()
        self._begin(plan, actual)
        record = actual.domain.record
        lock = lock_view(record.extra)
        if lock is None:
            return
        facts = dict((k, v) for k, v in record.extra.items() if k not in LOCK_FACTS)
        xml = _with_record(self._secure_xml(actual), _record_with(record, extra=facts))
        plan.add("unlock %s (locked by %s at %s)" % (self.req.name, lock["by"] or "an unknown user", lock["at"]),
                 lambda: self.client.define_domain(xml))
        plan.after["locked"] = None

    # -- reboot ---------------------------------------------------------------------------------------------------

    def _plan_reboot(self, plan):
        client = self.client
        name = self.req.name
        actual = self._server()
        self._begin(plan, actual)
        dom = actual.dom
        power = actual.power
        timeout = self.req.shutdown_timeout
        self._plan_console_lock(plan, actual)
        if self.req.reboot_type == "soft":
            if power != "running":
                raise ConflictError("a soft reboot asks a running guest to restart; %s is %s. Use reboot_type: hard"
                                    % (name, power), field="reboot_type")

            def soft():
                how = graceful_stop(client, dom, timeout)
                client.start_domain(dom)
                self.outputs["reboot"] = {"type": "soft", "shutdown": how}

            plan.add("reboot %s: shutdown (guest agent, else ACPI), power off after %d s if the guest has not stopped "
                     "(Nova's fallback to a hard reboot), then start" % (name, timeout), soft)
        else:
            if power == "suspended":
                raise ConflictError("%s is suspended to disk; resume it (or discard its saved state with the server "
                                    "module, state: stopped) before a hard reboot" % name, field="action")
            if power in ("running", "paused"):
                plan.add("power off %s" % name, lambda: client.destroy_domain(dom))

            def hard():
                client.start_domain(dom)
                self.outputs["reboot"] = {"type": "hard"}

            plan.add("start %s" % name, hard)
        plan.after["state"] = self.final_power = "running"

    def _plan_console_lock(self, plan, actual, client=None):
        """A server whose definition has no VNC password gets one, already expired, before it starts again."""
        client = client or self.client
        root = ET.fromstring(self._secure_xml(actual, client))
        if not _lock_console(root):
            return
        xml = ET.tostring(root, encoding="unicode")
        plan.add("lock the VNC console of %s with an expired password (from its next start, the console action "
                 "hands out one-time passwords)" % self.req.name, lambda: client.define_domain(xml))

    # -- pause, suspend -------------------------------------------------------------------------------------------

    def _plan_pause(self, plan):
        self._plan_power_action(plan, "paused", ("running",), "paused", "pause %s",
                                lambda client, dom: client.suspend_domain(dom))

    def _plan_unpause(self, plan):
        self._plan_power_action(plan, "running", ("paused",), "unpaused", "unpause %s",
                                lambda client, dom: client.resume_domain(dom))

    def _plan_suspend(self, plan):
        self._plan_power_action(plan, "suspended", ("running", "paused"), "suspended",
                                "suspend %s to disk (managed save: memory saved, domain stopped)",
                                lambda client, dom: client.managed_save(dom), refuse=(RESCUED,))

    def _plan_resume(self, plan):
        self._plan_power_action(plan, "running", ("suspended",), "resumed", "resume %s from its saved state",
                                lambda client, dom: client.restore_domain(dom),
                                hint=" (start it with the server module, or unpause it)")

    def _plan_power_action(self, plan, done, allowed, verb, label, run, refuse=(), hint=""):
        """A power action that is done already when the server is in ``done``, possible only from ``allowed``."""
        actual = self._server()
        self._begin(plan, actual)
        if actual.power == done:
            return
        if actual.power not in allowed:
            raise ConflictError("only a %s server can be %s; %s is %s%s"
                                % (" or ".join(allowed), verb, self.req.name, actual.power, hint), field="action")
        if refuse:
            self._refuse(actual, refuse, label.split(" ")[0])
        plan.add(label % self.req.name, lambda: run(self.client, actual.dom))
        plan.after["state"] = self.final_power = done

    # -- resize ---------------------------------------------------------------------------------------------------

    def _plan_resize(self, plan):
        client = self.client
        req = self.req
        actual = self._server()
        self._begin(plan, actual)
        self._refuse(actual, (RESCUED, SHELVED), "resize")
        domain = actual.domain
        record = domain.record
        current = _current_flavor(domain)
        new = resolve_flavor(client, req.flavor, field="flavor")
        pending = vm_state_of(actual) == RESIZED
        if same_flavor(new, current):
            if pending and req.confirm:
                self._plan_confirm(plan, actual)
            return
        if pending:
            raise ConflictError(
                "%s has a resize waiting for confirm_resize or revert_resize (from flavor %s); confirm or revert it "
                "before another resize" % (req.name, _flavor_label(_old_flavor(record))), field="flavor")
        power = actual.power
        if power in ("paused", "suspended"):
            raise ConflictError("cannot resize %s while it is %s; %s it first"
                                % (req.name, power, "unpause" if power == "paused" else "resume"), field="action")
        restart = needs_restart(current, new)

        pool = client.lookup_pool(record.volumes["root"]["pool"], field="instance_pool")
        volumes = dict(record.volumes)
        disk_steps = []
        created = []
        self._disk_resize_steps(disk_steps, pool, actual, "root", record.volumes.get("root"),
                                new.disk_gb * GIB if new.disk_gb else 0, "flavor.disk_gb")
        for role, size, field in (("ephemeral", new.ephemeral_gb * GIB, "flavor.ephemeral_gb"),
                                  ("swap", new.swap_mb * MIB, "flavor.swap_mb")):
            ref = record.volumes.get(role)
            if ref is None and size:
                name = volume_name(req.name, domain.uuid, role)
                volumes[role] = {"pool": client.pool_name(pool), "name": name}
                created.append(role)
                disk_steps.append(("create %s disk %s (%s)" % (role, name, _size_text(size)),
                                   _create_blank(client, pool, name, size),
                                   _delete_volume_step(client, volumes[role], req.name)))
            elif ref is not None and not size:
                raise ConflictError("the flavor has no %s disk and removing %s would destroy its data; a resize "
                                    "never deletes a disk" % (role, ref["name"]), field=field)
            elif ref is not None:
                self._disk_resize_steps(disk_steps, pool, actual, role, ref, size, field)

        extra = dict(record.extra)
        if not req.confirm:
            extra.update(vm_state=RESIZED, resize_old_flavor=json.dumps(current.to_dict(), sort_keys=True),
                         resized_at=self.now)
            if created:
                extra["resize_created_volumes"] = ",".join(created)
        new_record = _record_with(record, flavor=new, volumes=volumes, extra=extra)
        xml = self._render(actual, new, new_record, volumes)
        claim = Claim(client, req.name, new, old_flavor=current, instance_pool=client.pool_name(pool))

        running = power == "running"
        if restart and running:
            self._plan_stop(plan, actual)
        if claim.needed:
            plan.add(claim.acquire_label, claim.acquire, undo=claim.release)
        for label, run, undo in disk_steps:
            plan.add(label, run, undo=undo)
        old_xml = self._secure_xml(actual)
        plan.add("redefine %s with flavor %s (%s)%s" % (req.name, _flavor_label(new), _flavor_size(new),
                                                        "" if req.confirm else
                                                        "; the old flavor is kept until confirm_resize or "
                                                        "revert_resize"),
                 lambda: client.define_domain(xml), undo=lambda: client.define_domain(old_xml))
        if claim.needed:
            plan.add(claim.verify_label, claim.verify_and_release, undo=claim.release)
        if restart and running:
            plan.add("start %s" % req.name, lambda: client.start_domain(actual.dom))
        plan.after.update(flavor=flavor_brief(new), vm_state="active" if req.confirm else RESIZED)

    def _disk_resize_steps(self, steps, pool, actual, role, ref, wanted, field):
        """Grow a disk to ``wanted`` bytes (live if the server runs); a disk never shrinks."""
        client = self.client
        vol = client.lookup_volume(pool, ref["name"])
        if vol is None:
            raise NotFoundError("the %s disk %s/%s of %s is missing"
                                % (role, client.pool_name(pool), ref["name"], self.req.name))
        current = client.volume_info(vol)["capacity"]
        if not wanted or wanted == current:
            return
        if wanted < current:
            raise ConflictError("the %s disk of %s is %s and a disk never shrinks; choose a flavor with at least "
                                "that much" % (role, self.req.name, _size_text(current)), field=field)
        steps.append(("grow %s disk %s from %s to %s" % (role, ref["name"], _size_text(current), _size_text(wanted)),
                      _grow_step(client, vol, actual.dom, DISK_TARGETS[role], wanted), None))

    def _plan_confirm_resize(self, plan):
        actual = self._server()
        self._begin(plan, actual)
        if vm_state_of(actual) != RESIZED:
            return
        self._plan_confirm(plan, actual)

    def _plan_confirm(self, plan, actual):
        record = actual.domain.record
        new_record = _record_with(record, extra=_without_facts(record.extra))
        xml = _with_record(self._secure_xml(actual), new_record)
        plan.add("confirm the resize of %s to flavor %s (forget flavor %s)"
                 % (self.req.name, _flavor_label(record.flavor), _flavor_label(_old_flavor(record))),
                 lambda: self.client.define_domain(xml))
        plan.after["vm_state"] = "active"

    def _plan_revert_resize(self, plan):
        client = self.client
        req = self.req
        actual = self._server()
        self._begin(plan, actual)
        if vm_state_of(actual) != RESIZED:
            return
        domain = actual.domain
        record = domain.record
        old = _old_flavor(record)
        current = _current_flavor(domain)
        created = [r for r in (record.extra.get("resize_created_volumes") or "").split(",") if r]
        volumes = dict((role, ref) for role, ref in record.volumes.items() if role not in created)
        new_record = _record_with(record, flavor=old, volumes=volumes, extra=_without_facts(record.extra))
        xml = self._render(actual, old, new_record, volumes)
        claim = Claim(client, req.name, old, old_flavor=current,
                      instance_pool=record.volumes["root"]["pool"])
        running = actual.power == "running"
        restart = needs_restart(current, old) or bool(created)
        if restart and actual.power in ("running", "paused"):
            self._plan_stop(plan, actual)
        if claim.needed:
            plan.add(claim.acquire_label, claim.acquire, undo=claim.release)
        plan.add("redefine %s with its old flavor %s (%s)" % (req.name, _flavor_label(old), _flavor_size(old)),
                 lambda: client.define_domain(xml))
        if claim.needed:
            plan.add(claim.verify_label, claim.verify_and_release, undo=claim.release)
        for role in created:
            ref = record.volumes[role]
            plan.add("delete %s disk %s/%s (created by the resize)" % (role, ref["pool"], ref["name"]),
                     _delete_volume_step(client, ref, req.name))
        if restart and running:
            plan.add("start %s" % req.name, lambda: client.start_domain(actual.dom))
        if restart and actual.power == "paused":
            self.final_power = "stopped"
        grown = self._grown_disks(actual, old)
        if grown:
            plan.warnings.append("a disk never shrinks: the revert of %s restores the old flavor's vCPUs and RAM, "
                                 "and its %s %s the size the resize gave"
                                 % (self.req.name, " and ".join(grown), "keeps" if len(grown) == 1 else "keep"))
        plan.after.update(flavor=flavor_brief(old), vm_state="active", state=self.final_power)

    def _grown_disks(self, actual, old):
        client = self.client
        out = []
        wanted = {"root": old.disk_gb * GIB, "ephemeral": old.ephemeral_gb * GIB, "swap": old.swap_mb * MIB}
        for role, ref in sorted(actual.domain.record.volumes.items()):
            if role not in wanted or not wanted[role]:
                continue
            pool = client.find_pool(ref["pool"])
            vol = client.lookup_volume(pool, ref["name"]) if pool is not None else None
            if vol is not None and client.volume_info(vol)["capacity"] > wanted[role]:
                out.append("%s disk" % role)
        return out

    # -- rebuild --------------------------------------------------------------------------------------------------

    def _plan_rebuild(self, plan):
        client = self.client
        req = self.req
        actual = self._server()
        self._begin(plan, actual)
        self._refuse(actual, (RESIZED, RESCUED, SHELVED), "rebuild")
        if actual.power == "suspended":
            raise ConflictError("%s is suspended to disk; its saved memory belongs to the old root disk. Resume it "
                                "or discard the saved state (server module, state: stopped) first" % req.name,
                                field="action")
        domain = actual.domain
        record = domain.record
        image_ref = self._image_ref(record)
        image = self._image(client, image_ref)
        flavor = _current_flavor(domain)
        root_bytes = root_size(flavor, image)
        root = record.volumes["root"]
        config = record.volumes.get("config")
        pool = client.lookup_pool(root["pool"], field="instance_pool")

        definition = _definition(
            flavor=flavor, image=image_ref, nics=domain.managed_nics(), metadata=record.metadata, tags=record.tags,
            hostname=req.hostname or record.hostname or req.name, cloud_init=None, facts=_without_facts(record.extra))
        drive_inputs = None
        drive_hash = record.config_drive_hash
        planner = ServerPlanner(client, ServerRequest({"name": req.name, "state": "present"}))
        if config is not None:
            if req.cloud_init_given:
                definition.cloud_init = {"hostname": definition.hostname, "user_data": req.user_data,
                                         "ssh_authorized_keys": req.ssh_authorized_keys or [],
                                         "network_config": req.network_config}
                drive_inputs = planner._config_drive_inputs(domain.uuid, definition)
            else:
                drive_inputs = read_config_drive(client, config, domain.uuid)
                drive_inputs["hostname"] = drive_inputs["hostname"] or definition.hostname
                definition.hostname = drive_inputs["hostname"]
            drive_hash = _drive_hash(drive_inputs)
        new_record = _record_with(record, image=image_ref, config_drive_hash=drive_hash, hostname=definition.hostname,
                                  config_drive_built_hash=drive_hash)
        new_record.spec_hash = definition.hash(domain.virt_type, drive_hash)
        xml = _with_record(self._secure_xml(actual), new_record, lock=True)

        if actual.power in ("running", "paused"):
            # The old root disk is thrown away: there is nothing for a graceful shutdown to save.
            plan.add("power off %s" % req.name, lambda: client.destroy_domain(actual.dom))
        plan.add("rebuild root disk %s from %s/%s (%s; its content is replaced)"
                 % (root["name"], image_ref["pool"], image_ref["name"], _size_text(root_bytes)),
                 _rebuild_root_step(client, pool, root["name"], root_bytes, image))
        if config is not None:
            plan.add("rewrite config drive %s%s" % (config["name"], " with the given cloud-init data"
                                                    if req.cloud_init_given else ""),
                     lambda: planner._write_config_drive(client.lookup_pool(config["pool"]), config["name"],
                                                         drive_inputs))
        plan.add("redefine %s with image %s (same name, UUID and MACs)" % (req.name, image_ref["name"]),
                 lambda: client.define_domain(xml))
        final = "running" if actual.power in ("running", "paused") else "stopped"
        if final == "running":
            plan.add("start %s" % req.name, lambda: client.start_domain(actual.dom))
        self.final_power = final
        plan.after.update(state=final, image="%s/%s" % (image_ref["pool"], image_ref["name"]))

    def _image_ref(self, record):
        recorded = record.image or {}
        name = self.req.image or recorded.get("name")
        if not name:
            raise ValidationError("is required: the server records no image", field="image")
        pool = self.req.image_pool or (recorded.get("pool") if not self.req.image else None) or DEFAULT_IMAGE_POOL
        return {"pool": pool, "name": name}

    def _image(self, client, ref):
        pool = client.lookup_pool(ref["pool"], field="image_pool")
        vol = client.lookup_volume(pool, ref["name"])
        if vol is None:
            raise NotFoundError("image %s not found in storage pool %s on %s (import it with the image module)"
                                % (ref["name"], ref["pool"], client.uri), field="image")
        return _base_image(client, ref, vol)

    # -- rescue ---------------------------------------------------------------------------------------------------

    def _plan_rescue(self, plan):
        client = self.client
        req = self.req
        actual = self._server()
        self._begin(plan, actual)
        if vm_state_of(actual) == RESCUED:
            return
        self._refuse(actual, (RESIZED, SHELVED), "rescue")
        if actual.power in ("paused", "suspended"):
            raise ConflictError("cannot rescue %s while it is %s; %s it first"
                                % (req.name, actual.power, "unpause" if actual.power == "paused" else "resume"),
                                field="action")
        domain = actual.domain
        record = domain.record
        image_ref = self._image_ref(record)
        image = self._image(client, image_ref)
        pool = client.lookup_pool(record.volumes["root"]["pool"], field="instance_pool")
        ref = {"pool": client.pool_name(pool), "name": "%s-rescue-%s.qcow2" % (req.name, domain.uuid.split("-")[0])}
        if client.lookup_volume(pool, ref["name"]) is not None:
            raise ConflictError("volume %s/%s already exists: left over from an earlier rescue? Delete it first"
                                % (ref["pool"], ref["name"]), field="name")
        volumes = dict(record.volumes, rescue=ref)
        extra = dict(record.extra, vm_state=RESCUED, rescue_image="%s/%s" % (image_ref["pool"], image_ref["name"]),
                     rescued_at=self.now)
        new_record = _record_with(record, volumes=volumes, extra=extra)
        xml = rescue_xml(self._secure_xml(actual), new_record, ref)
        old_xml = self._secure_xml(actual)

        if actual.power == "running":
            self._plan_stop(plan, actual)
        plan.add("create rescue disk %s (%s qcow2 overlay on %s/%s)" % (ref["name"], _size_text(image["virtual_size"]),
                                                                        image_ref["pool"], image_ref["name"]),
                 lambda: client.create_volume(pool, _overlay_xml(ref["name"], image["virtual_size"], image)),
                 undo=_delete_volume_step(client, ref, req.name))
        plan.add("redefine %s to boot from the rescue disk, with its root disk attached as the second disk (vdb)"
                 % req.name, lambda: client.define_domain(xml), undo=lambda: client.define_domain(old_xml))
        plan.add("start %s" % req.name, lambda: client.start_domain(actual.dom))
        self.final_power = "running"
        plan.after.update(state="running", vm_state=RESCUED)

    def _plan_unrescue(self, plan):
        client = self.client
        req = self.req
        actual = self._server()
        self._begin(plan, actual)
        if vm_state_of(actual) != RESCUED:
            return
        record = actual.domain.record
        volumes = dict(record.volumes)
        ref = volumes.pop("rescue", None)
        new_record = _record_with(record, volumes=volumes, extra=_without_facts(record.extra))
        xml = unrescue_xml(self._secure_xml(actual), new_record)
        if actual.power in ("running", "paused", "suspended"):
            if actual.power == "suspended":
                plan.add("discard saved state of %s" % req.name, lambda: client.remove_managed_save(actual.dom))
            else:
                plan.add("power off %s" % req.name, lambda: client.destroy_domain(actual.dom))
        plan.add("redefine %s to boot from its own root disk again" % req.name, lambda: client.define_domain(xml))
        if ref is not None:
            plan.add("delete rescue disk %s/%s" % (ref["pool"], ref["name"]),
                     _delete_volume_step(client, ref, req.name))
        plan.add("start %s" % req.name, lambda: client.start_domain(actual.dom))
        self.final_power = "running"
        plan.after.update(state="running", vm_state="active")

    # -- console --------------------------------------------------------------------------------------------------

    def _plan_console(self, plan):
        client = self.client
        req = self.req
        actual = self._server()
        self._begin(plan, actual)
        if actual.power not in ("running", "paused"):
            raise ConflictError("%s is %s; a console exists only while it runs" % (req.name, actual.power),
                                field="action")
        live = ET.fromstring(client.domain_xml_secure(actual.dom, inactive=False))
        if req.console_type == "serial":
            console = live.find("devices/console")
            if console is None:
                raise NotFoundError("%s has no serial console" % req.name, field="console_type")
            source = console.find("source")
            self.outputs["console"] = {
                "type": "serial",
                "pty": console.get("tty") or (source.get("path") if source is not None else None),
                "uri": client.uri,
                # The serial console goes through libvirt itself: whoever may open this URI may use it.
                "command": "virsh -c '%s' console %s" % (client.uri, req.name),
            }
            return
        graphics = next((g for g in live.findall("devices/graphics") if g.get("type") == "vnc"), None)
        if graphics is None:
            raise NotFoundError("%s has no VNC graphics device" % req.name, field="console_type")
        if graphics.get("passwd") is None:
            raise ConflictError(
                "%s was started without VNC password authentication, and QEMU cannot require a password afterwards. "
                "Restart it once through server_action (action: reboot, reboot_type: hard): that locks its console "
                "with an expired password, and from then on this action hands out one-time passwords" % req.name,
                field="action")
        listen = graphics.get("listen")
        listen_elem = graphics.find("listen")
        if not listen and listen_elem is not None:
            listen = listen_elem.get("address")
        port = int(graphics.get("port") or -1)
        ttl = req.console_ttl
        view = {"type": "vnc", "host": listen, "port": port, "password": None, "expires": None,
                "hypervisor_uri": client.uri}
        self.outputs["console"] = view

        def set_password():
            password = _random_password()
            until = datetime.datetime.utcnow().replace(microsecond=0) + datetime.timedelta(seconds=ttl)
            elem = copy.deepcopy(graphics)
            elem.set("passwd", password)
            elem.set("passwdValidTo", until.strftime("%Y-%m-%dT%H:%M:%S"))
            # Live only: the password must never reach the definition (nor outlive the running guest).
            client.update_device_live(actual.dom, ET.tostring(elem, encoding="unicode"))
            view.update(password=password, expires=until.isoformat() + "Z", url="vnc://%s:%d" % (listen, port))

        plan.add("set a one-time VNC console password for %s (valid for %d s)" % (req.name, ttl), set_password)

    # -- shelve ---------------------------------------------------------------------------------------------------

    def _plan_shelve(self, plan):
        actual = self._server()
        self._begin(plan, actual)
        if vm_state_of(actual) == SHELVED:
            return
        self._plan_shelve_steps(plan, actual)

    def _plan_shelve_steps(self, plan, actual):
        client = self.client
        req = self.req
        self._refuse(actual, (RESIZED, RESCUED), "shelve")
        record = actual.domain.record
        extra = dict(record.extra, vm_state=SHELVED, shelved_at=self.now)
        new_record = _record_with(record, extra=extra)
        xml = _with_record(self._secure_xml(actual), new_record, lock=True)
        if actual.power == "running":
            self._plan_stop(plan, actual)
        elif actual.power == "paused":
            plan.add("power off %s" % req.name, lambda: client.destroy_domain(actual.dom))
        elif actual.power == "suspended":
            plan.add("discard saved state of %s" % req.name, lambda: client.remove_managed_save(actual.dom))
            plan.warnings.append("%s was suspended: its saved memory was discarded by the shelve" % req.name)
        plan.add("mark %s shelved (powered off, disks kept; its vCPUs and RAM no longer count on host %s)"
                 % (req.name, client.uri), lambda: client.define_domain(xml))
        self.final_power = "stopped"
        plan.after.update(state="stopped", vm_state=SHELVED)
        return new_record, xml

    def _plan_shelve_offload(self, plan):
        client = self.client
        req = self.req
        actual = self._server(required=False)
        store = RecordStore(client)
        key = OFFLOAD_RECORD_PREFIX + req.name
        if actual is None:
            document = store.read(key)
            if document is None:
                raise NotFoundError("server %s does not exist on %s, and no shelved-offloaded server of that name "
                                    "is recorded there" % (req.name, client.uri), field="name")
            self.offloaded = document
            self.final_client = None
            plan.before = plan.after = offloaded_view(document)
            return
        self._begin(plan, actual)
        if vm_state_of(actual) == SHELVED:
            record = actual.domain.record
            xml = self._secure_xml(actual)
        else:
            record, xml = self._plan_shelve_steps(plan, actual)
        domain = actual.domain
        uuid8 = domain.uuid.split("-")[0]
        image_pool_name = self.req.image_pool or (record.image or {}).get("pool") or DEFAULT_IMAGE_POOL
        image_pool = client.lookup_pool(image_pool_name, field="image_pool")
        saved = {"root": {"pool": image_pool_name, "name": "%s-shelved-%s.qcow2" % (req.name, uuid8)}}
        if "config" in record.volumes:
            saved["config"] = {"pool": image_pool_name, "name": "%s-shelved-config-%s.iso" % (req.name, uuid8)}
        for ref in saved.values():
            if client.lookup_volume(image_pool, ref["name"]) is not None:
                raise ConflictError("volume %s/%s already exists: left over from an earlier offload? Delete it first"
                                    % (ref["pool"], ref["name"]), field="name")
        document = {
            "version": 1,
            "name": req.name,
            "uuid": domain.uuid,
            "offloaded_at": self.now,
            "offloaded_from": client.uri,
            "definition": xml,
            "saved": saved,
            "flavor": _current_flavor(domain).to_dict(),
            "image": record.image,
        }
        for role in ("root", "config"):
            if role not in saved:
                continue
            src_ref = record.volumes[role]
            dst_ref = saved[role]
            what = "root disk" if role == "root" else "config drive"
            how = " (flattened: a standalone qcow2)" if role == "root" else ""
            plan.add("save the %s of %s as %s/%s%s" % (what, req.name, dst_ref["pool"], dst_ref["name"], how),
                     self._clone_step(client, src_ref, image_pool, dst_ref, role),
                     undo=_delete_volume_step(client, dst_ref, req.name))

        def write_record():
            store.ensure_pool()
            store.write(key, document)

        plan.add("record the offloaded server in %s/%s" % (store.pool_name, key + ".json"), write_record,
                 undo=lambda: store.delete(key))
        plan.add("undefine domain %s" % req.name, lambda: client.undefine_domain(actual.dom))
        for role, ref in sorted(record.volumes.items(), key=lambda item: _DISK_ORDER.get(item[0], 99)):
            plan.add("delete %s volume %s/%s" % (role, ref["pool"], ref["name"]),
                     _delete_volume_step(client, ref, req.name))
        self.offloaded = document
        self.final_client = None
        plan.after = offloaded_view(document)

    def _clone_step(self, client, src_ref, dst_pool, dst_ref, role):
        def run():
            src_pool = client.lookup_pool(src_ref["pool"])
            src_vol = client.lookup_volume(src_pool, src_ref["name"])
            if src_vol is None:
                raise NotFoundError("volume %s/%s is missing" % (src_ref["pool"], src_ref["name"]))
            capacity = client.volume_info(src_vol)["capacity"]
            fmt = "qcow2" if role == "root" else "raw"
            client.clone_volume(dst_pool, _standalone_xml(dst_ref["name"], capacity, fmt), src_vol)
        return run

    def _plan_unshelve(self, plan):
        client = self.client
        req = self.req
        actual = self._server(required=False)
        if actual is None:
            document = RecordStore(client).read(OFFLOAD_RECORD_PREFIX + req.name)
            if document is None:
                raise NotFoundError("server %s does not exist on %s, and no shelved-offloaded server of that name "
                                    "is recorded there" % (req.name, client.uri), field="name")
            self._plan_unshelve_offloaded(plan, document)
            return
        self._begin(plan, actual)
        if vm_state_of(actual) != SHELVED:
            return
        record = actual.domain.record
        new_record = _record_with(record, extra=_without_facts(record.extra))
        xml = _with_record(self._secure_xml(actual), new_record, lock=True)
        target = self._target(actual.domain, optional=True, exclude_source=False)
        if target is not None and not _holds(target.client, req.name, actual.domain.uuid):
            self._plan_move(plan, actual, target, live=False, target_xml=xml, start=True)
            plan.after.update(vm_state="active")
            return
        claim = Claim(client, req.name, _current_flavor(actual.domain), instance_pool=record.volumes["root"]["pool"])
        if claim.needed:
            plan.add(claim.acquire_label, claim.acquire, undo=claim.release)
        plan.add("mark %s unshelved (its vCPUs and RAM count on the host again)" % req.name,
                 lambda: client.define_domain(xml), undo=lambda: client.define_domain(self._secure_xml(actual)))
        if claim.needed:
            plan.add(claim.verify_label, claim.verify_and_release, undo=claim.release)
        plan.add("start %s" % req.name, lambda: client.start_domain(actual.dom))
        self.final_power = "running"
        plan.after.update(state="running", vm_state="active")

    def _plan_unshelve_offloaded(self, plan, document):
        """Build the server again from the saved disks, on this host or another, and forget the offload."""
        origin = self.client
        req = self.req
        plan.before = offloaded_view(document)
        flavor = Flavor.from_dict(document["flavor"])
        domain = Domain(document["definition"])
        target = self._target(domain, optional=True, exclude_source=False)
        dst = target.client if target is not None else origin
        same_host = target is None or _offloaded_there(dst, document)
        if dst.lookup_domain(req.name) is not None:
            raise ConflictError("a domain called %s already exists on %s" % (req.name, dst.uri), field="name")
        record = domain.record
        new_record = _record_with(record, extra=_without_facts(record.extra))
        root = ET.fromstring(document["definition"])
        _replace_record(root, new_record)
        _lock_console(root)
        apply_pinning(root, flavor, **cpu_pinning(dst, flavor, req.name))
        xml = ET.tostring(root, encoding="unicode")
        saved = document["saved"]
        steps = []
        for role, ref in sorted(record.volumes.items(), key=lambda item: _DISK_ORDER.get(item[0], 99)):
            dst_pool = dst.lookup_pool(ref["pool"], field="instance_pool")
            if dst.lookup_volume(dst_pool, ref["name"]) is not None:
                raise ConflictError("volume %s/%s already exists on %s" % (ref["pool"], ref["name"], dst.uri),
                                    field="name")
            undo = _delete_volume_step(dst, ref, req.name)
            if role in saved:
                steps.append(("restore the %s of %s from %s/%s%s" % (
                    "root disk" if role == "root" else "config drive", req.name, saved[role]["pool"],
                    saved[role]["name"], "" if same_host else " on %s" % origin.uri),
                    self._restore_step(origin, saved[role], dst, dst_pool, ref, role, same_host), undo))
            elif role in ("ephemeral", "swap"):
                size = flavor.ephemeral_gb * GIB if role == "ephemeral" else flavor.swap_mb * MIB
                steps.append(("create %s disk %s (%s, blank: its content was not kept by the offload)"
                              % (role, ref["name"], _size_text(size)), _create_blank(dst, dst_pool, ref["name"], size),
                              undo))
        claim = Claim(dst, req.name, flavor, instance_pool=record.volumes["root"]["pool"])
        for label, run, undo in steps:
            plan.add(label, run, undo=undo)
        holder = {}
        if claim.needed:
            plan.add(claim.acquire_label, claim.acquire, undo=claim.release)

        def define():
            holder["dom"] = dst.define_domain(xml)

        plan.add("define domain %s on %s" % (req.name, dst.uri), define, undo=lambda: _undefine_inactive(dst, req.name))
        if claim.needed:
            plan.add(claim.verify_label, claim.verify_and_release, undo=claim.release)
        plan.add("start %s" % req.name, lambda: dst.start_domain(holder["dom"]))
        store = RecordStore(origin)
        plan.add("forget the offloaded server %s on %s (delete its saved disks and its record)"
                 % (req.name, origin.uri), lambda: self._forget_offload(origin, document, store, plan))
        self.final_client = dst
        self.final_power = "running"
        after = dict(plan.before)
        after.update(state="running", vm_state="active", host=dst.uri)
        plan.after = after

    def _restore_step(self, origin, saved_ref, dst, dst_pool, ref, role, same_host):
        fmt = "qcow2" if role == "root" else "raw"

        def run():
            src_pool = origin.lookup_pool(saved_ref["pool"])
            src_vol = origin.lookup_volume(src_pool, saved_ref["name"])
            if src_vol is None:
                raise NotFoundError("the saved %s %s/%s of %s is missing on %s"
                                    % (role, saved_ref["pool"], saved_ref["name"], self.req.name, origin.uri))
            if same_host:
                dst.clone_volume(dst_pool, _standalone_xml(ref["name"], origin.volume_info(src_vol)["capacity"], fmt),
                                 src_vol)
                return
            _stream_volume(origin, src_vol, dst, dst_pool, ref["name"], fmt)
        return run

    def _forget_offload(self, origin, document, store, plan):
        # Best effort: the server runs again; what is left of the offload is only disk space, never a duplicate.
        try:
            for ref in document["saved"].values():
                _delete_volume_step(origin, ref, self.req.name)()
            store.delete(OFFLOAD_RECORD_PREFIX + self.req.name)
        except VirtfleetError as exc:
            plan.warnings.append("the offload record or saved disks of %s on %s could not be deleted: %s"
                                 % (self.req.name, origin.uri, exc))

    # -- moves ----------------------------------------------------------------------------------------------------

    def _plan_migrate(self, plan):
        actual = self._server()
        self._begin(plan, actual)
        self._refuse(actual, (RESIZED, RESCUED, SHELVED), "migrate")
        if actual.power == "suspended":
            raise ConflictError("%s is suspended to disk; resume it first (a saved memory image does not move)"
                                % self.req.name, field="action")
        target = self._target(actual.domain)
        xml = ET.fromstring(self._secure_xml(actual))
        _lock_console(xml)
        self._plan_move(plan, actual, target, live=False, target_xml=ET.tostring(xml, encoding="unicode"),
                        start=actual.power in ("running", "paused"))

    def _plan_live_migrate(self, plan):
        actual = self._server()
        self._begin(plan, actual)
        self._refuse(actual, (RESIZED, RESCUED, SHELVED), "live-migrate")
        if actual.power not in ("running", "paused"):
            raise ConflictError("%s is %s; live migration moves a running guest. Use action: migrate"
                                % (self.req.name, actual.power), field="action")
        target = self._target(actual.domain)
        self._plan_move(plan, actual, target, live=True, target_xml=self._secure_xml(actual), start=False)

    def _target(self, domain, optional=False, exclude_source=True, source_down=False):
        """The host to move to: ``target_uri``, or the scheduler's choice among ``hosts``; None if neither is given
        and ``optional``."""
        req = self.req
        if req.target_uri:
            if exclude_source and req.target_uri == req.uri:
                raise ConflictError("target %s is the host %s is on" % (req.target_uri, req.name),
                                    field="target_uri")
            dst = self.connect(req.target_uri)
            dst.hostname()  # fails with HostUnavailableError, naming the URI, if the target does not answer
            # The same host under another URI holds the server itself: the move refuses it (a domain of that name).
            return Target(dst, req.target_uri, "target_uri")
        if not req.hosts:
            if optional:
                return None
            raise ValidationError("give target_uri or hosts", field="target_uri")
        return self._schedule(domain, exclude_source, source_down)

    def _schedule(self, domain, exclude_source, source_down):
        """Nova's scheduler over the candidate hosts (their live host_info), the source host left out."""
        schedule, no_valid_host = _scheduler()
        req = self.req
        candidates = []
        clients = {}
        for host in req.hosts:
            if exclude_source and host["uri"] == req.uri:
                continue
            dst = self.connect(host["uri"])
            try:
                dst.hostname()
            except HostUnavailableError as exc:
                candidates.append(down_host(host["name"], host["uri"], exc.message))
                continue
            info = host_info(dst, name=host["name"], details=False, instance_pool=req.instance_pool)
            if exclude_source and any(s.get("uuid") == domain.uuid for s in info.get("servers") or []):
                continue  # the server's own host under another URI (or a host holding a copy of it)
            # A server listed on a candidate would be "existing" there for the scheduler; it is moving, so it is not.
            info["servers"] = [s for s in info.get("servers") or [] if s.get("name") != req.name]
            candidates.append(info)
            clients[host["name"]] = dst
        if not candidates:
            raise ValidationError("no candidate host is left once the server's own host is left out", field="hosts")
        request = {"name": req.name, "flavor": _current_flavor(domain).to_dict()}
        group = self._server_group(domain)
        if group:
            request["server_group"] = group
        zone = domain.record.extra.get("availability_zone")
        if zone:
            request["availability_zone"] = zone
        try:
            placement = schedule([request], candidates, alternates=max(len(candidates) - 1, 0))[0]
        except no_valid_host as exc:
            raise CapacityError(str(exc), field="hosts", reasons=getattr(exc, "reasons", {}))
        except ValueError as exc:
            raise ValidationError(str(exc), field="hosts")
        self.outputs["scheduled"] = {"host": placement.host, "alternates": list(placement.alternates)}
        return Target(clients[placement.host], placement.host, "scheduler", placement.alternates)

    def _server_group(self, domain):
        given = self.req.server_group
        if given:
            if not isinstance(given, dict) or not given.get("name") or not given.get("policy"):
                raise ValidationError("must be a dict with name and policy", field="server_group")
            return dict(given)
        extra = domain.record.extra
        name = extra.get("server_group")
        if not name:
            return None
        policy = extra.get("server_group_policy")
        if not policy:
            raise ValidationError("%s is in server group %s, whose policy its record does not say; give server_group "
                                  "(name and policy) so the scheduler can respect it" % (self.req.name, name),
                                  field="server_group")
        return {"name": name, "policy": policy}

    def _plan_move(self, plan, actual, target, live, target_xml, start):
        """Move the server from this host to ``target``: claim there, copy what is not shared, define, (live-)
        migrate, then release the source. Steps after the guest runs on the target never roll back the move."""
        src = self.client
        dst = target.client
        req = self.req
        name = req.name
        domain = actual.domain
        record = domain.record
        if _holds(dst, name, domain.uuid):
            raise ConflictError("%s is on %s already: the target is the server's own host" % (name, dst.uri),
                                field="target_uri")
        if dst.lookup_domain(name) is not None:
            raise ConflictError("a domain called %s already exists on %s: a move never replaces a domain (left over "
                                "from an evacuation? see cleanup_evacuated)" % (name, dst.uri), field="target_uri")
        storage = self._storage_mode(actual, dst)
        flavor = _current_flavor(domain)
        volumes = sorted(record.volumes.items(), key=lambda item: _DISK_ORDER.get(item[0], 99))
        copy_steps = []
        if storage == "copy":
            resolve_image = self._plan_image_copy(copy_steps, src, dst, record.image)
            for role, ref in volumes:
                copy_steps.extend(self._volume_move_steps(src, dst, role, ref, live, resolve_image))
        ip_steps, release_steps = self._fixed_ip_moves(src, dst, domain.managed_nics(), record.hostname)
        claim = Claim(dst, name, flavor, instance_pool=record.volumes["root"]["pool"])
        # A dedicated server keeps the pins that are free on the target and takes free CPUs there for the others.
        pinning = cpu_pinning(dst, flavor, name)
        repin = None
        if pinning:
            def repin(xml):
                return ET.tostring(apply_pinning(ET.fromstring(xml), flavor, **pinning), encoding="unicode")

            target_xml = repin(target_xml)

        was = actual.power
        if not live and was in ("running", "paused"):
            stop_label = ("shut down %s (ACPI, then power off after %d s)" % (name, req.shutdown_timeout)
                          if was == "running" else "power off %s" % name)

            def stop():
                if was == "running":
                    graceful_stop(src, actual.dom, req.shutdown_timeout)
                else:
                    src.destroy_domain(actual.dom)

            plan.add(stop_label, stop, undo=lambda: src.start_domain(actual.dom))
        for label, run, undo in copy_steps:
            plan.add(label, run, undo=undo)
        for label, run, undo in ip_steps:
            plan.add(label, run, undo=undo)
        if claim.needed:
            plan.add(claim.acquire_label, claim.acquire, undo=claim.release)
        holder = {}

        def define():
            holder["dom"] = dst.define_domain(target_xml)

        plan.add("define %s on %s (its claim there)" % (name, dst.uri), define,
                 undo=lambda: _undefine_inactive(dst, name))
        if claim.needed:
            plan.add(claim.verify_label, claim.verify_and_release, undo=claim.release)
        migration = {"source": src.uri, "target": dst.uri, "target_host": target.name, "chosen_by": target.chosen_by,
                     "live": live, "storage": storage}
        self.outputs["migration"] = migration
        if live:
            plan.add("live-migrate %s to %s%s (timeout %d s)"
                     % (name, dst.uri, " copying its disks' top layers (non-shared storage)" if storage == "copy"
                        else " (shared storage)", req.migration_timeout),
                     lambda: self._live_migrate(actual.dom, dst, target_xml, storage == "copy", migration, repin))
        plan.add("undefine %s on %s (releases its claim there)" % (name, src.uri),
                 self._best_effort(plan, lambda: _undefine_inactive(src, name, required=True)))
        if storage == "copy":
            for role, ref in volumes:
                plan.add("delete %s volume %s/%s on %s" % (role, ref["pool"], ref["name"], src.uri),
                         self._best_effort(plan, _delete_volume_step(src, ref, name)))
        for label, run, _undo in release_steps:
            plan.add(label, self._best_effort(plan, run))
        if not live and start:
            plan.add("start %s on %s" % (name, dst.uri), lambda: dst.start_domain(holder["dom"]))
        self.final_client = dst
        self.final_power = ("running" if start else "stopped") if not live else was
        plan.after.update(host=dst.uri, state=self.final_power)

    def _best_effort(self, plan, run):
        """A cleanup after the server already runs elsewhere: a failure is a warning, never a rollback of the move."""
        def wrapped():
            try:
                run()
            except Exception as exc:  # pylint: disable=broad-except
                plan.warnings.append("left behind, clean up by hand: %s" % exc)
        return wrapped

    def _storage_mode(self, actual, dst):
        """"shared" when the target sees the server's very volumes, else "copy"; refuses what cannot be told."""
        src = self.client
        seen = []
        missing = []
        for role, ref in sorted(actual.domain.record.volumes.items()):
            src_pool = src.lookup_pool(ref["pool"], field="instance_pool")
            src_vol = src.lookup_volume(src_pool, ref["name"])
            if src_vol is None:
                raise NotFoundError("the %s volume %s/%s of %s is missing on %s"
                                    % (role, ref["pool"], ref["name"], self.req.name, src.uri))
            dst_pool = dst.lookup_pool(ref["pool"], field="instance_pool")
            dst.refresh_pool(dst_pool)
            dst_vol = dst.lookup_volume(dst_pool, ref["name"])
            if dst_vol is None:
                missing.append(ref["name"])
                continue
            shared = (dst.volume_key(dst_vol) == src.volume_key(src_vol)
                      and src.pool_type(src_pool) in SHARED_POOL_TYPES and dst.pool_type(dst_pool) in SHARED_POOL_TYPES)
            seen.append((ref["name"], shared))
        mode = self.req.storage
        if mode == "shared":
            if missing:
                raise ConflictError("storage: shared, but %s cannot see %s" % (dst.uri, ", ".join(missing)),
                                    field="storage")
            return "shared"
        if seen and mode == "auto" and not missing and all(shared for _n, shared in seen):
            return "shared"
        if seen:
            raise ConflictError(
                "volume(s) %s already exist on %s. If the pool is shared between the hosts, set storage: shared; if "
                "they are left over from an earlier move, delete them there first" % (
                    ", ".join(n for n, _s in seen), dst.uri), field="storage")
        return "copy"

    def _plan_image_copy(self, steps, src, dst, image_ref):
        """Make sure the server's base image is on the target; returns a function giving its details there."""
        if not image_ref:
            raise ConflictError("%s records no base image; it cannot be moved without shared storage" % self.req.name)
        ref = {"pool": image_ref["pool"], "name": image_ref["name"]}
        dst_pool = dst.lookup_pool(ref["pool"], field="image_pool")
        dst_vol = dst.lookup_volume(dst_pool, ref["name"])
        src_pool = src.lookup_pool(ref["pool"], field="image_pool")
        src_vol = src.lookup_volume(src_pool, ref["name"])
        src_record = (RecordStore(src).read(IMAGES_RECORD) or {}).get("%s/%s" % (ref["pool"], ref["name"]))

        def resolve():
            return _base_image(dst, ref, dst.lookup_volume(dst_pool, ref["name"]))

        resolve.image_ref = ref

        if dst_vol is not None:
            dst_record = (RecordStore(dst).read(IMAGES_RECORD) or {}).get("%s/%s" % (ref["pool"], ref["name"]))
            same_file = src_vol is not None and dst.volume_key(dst_vol) == src.volume_key(src_vol) and \
                src.pool_type(src_pool) in SHARED_POOL_TYPES
            if same_file or (src_record and dst_record and src_record.get("sha256")
                             and src_record.get("sha256") == dst_record.get("sha256")):
                return resolve
            raise ConflictError(
                "image %s/%s exists on %s but cannot be shown to be the same image as on %s (the image records' "
                "sha256 differ or are missing); the server's disk would sit on another base. Import the same image "
                "there with the image module" % (ref["pool"], ref["name"], dst.uri, src.uri), field="image")
        if src_vol is None:
            raise NotFoundError("the base image %s/%s of %s is missing on %s"
                                % (ref["pool"], ref["name"], self.req.name, src.uri), field="image")
        size = src.volume_physical(src_vol)

        def copy_image():
            vol = dst.create_volume(dst_pool, _raw_xml(ref["name"], size))
            src.copy_volume_to(src_vol, dst, vol, size)
            dst.refresh_pool(dst_pool)
            if src_record:
                store = RecordStore(dst)
                store.ensure_pool()
                catalog = store.read(IMAGES_RECORD) or {}
                catalog["%s/%s" % (ref["pool"], ref["name"])] = dict(src_record, source=IMAGE_COPY_SOURCE + src.uri,
                                                                     imported=_now())
                store.write(IMAGES_RECORD, catalog)

        def remove_image():
            vol = dst.lookup_volume(dst_pool, ref["name"])
            if vol is not None:
                dst.delete_volume(vol)
            store = RecordStore(dst)
            catalog = store.read(IMAGES_RECORD) or {}
            if catalog.pop("%s/%s" % (ref["pool"], ref["name"]), None) is not None:
                store.write(IMAGES_RECORD, catalog)

        label = "copy base image %s/%s (%s) from %s to %s" % (
            ref["pool"], ref["name"], _size_text(size), src.uri, dst.uri)
        steps.append((label, copy_image, remove_image))
        return resolve

    def _volume_move_steps(self, src, dst, role, ref, live, resolve_image):
        name = self.req.name
        src_pool = src.lookup_pool(ref["pool"])
        src_vol = src.lookup_volume(src_pool, ref["name"])
        dst_pool = dst.lookup_pool(ref["pool"], field="instance_pool")
        capacity = src.volume_info(src_vol)["capacity"]
        fmt = _volume_format(src, src_vol)
        undo = _delete_volume_step(dst, ref, name)
        readonly = role == "config"
        if live and not readonly:
            # NBD copies these while the guest runs; the target volume must exist first, and the root overlay must
            # already sit on the target's copy of the base image (VIR_MIGRATE_NON_SHARED_INC copies the top only).
            if role == "root":
                return [("create root overlay %s on %s (%s, on its copy of the base image)"
                         % (ref["name"], dst.uri, _size_text(capacity)),
                         lambda: dst.create_volume(dst_pool, _overlay_xml(ref["name"], capacity, resolve_image())),
                         undo)]
            return [("create %s volume %s on %s (%s)" % (role, ref["name"], dst.uri, _size_text(capacity)),
                     _create_blank(dst, dst_pool, ref["name"], capacity), undo)]
        if role == "root" and not live:
            backing = ET.fromstring(src.volume_xml(src_vol)).findtext("backingStore/path")
            target_path = _expected_image_path(dst, self.req.name, resolve_image, backing)
            if backing and target_path and backing != target_path:
                raise ConflictError(
                    "the root disk's base image is %s on %s but would be %s on %s; a cold migration copies the overlay "
                    "as it is, so the pools must have the same paths on both hosts (the compute_node role makes them "
                    "so). Use live_migrate, which re-bases the disk" % (backing, src.uri, target_path, dst.uri),
                    field="target_uri")
        size = src.volume_physical(src_vol)
        return [("copy %s volume %s (%s) to %s" % (role, ref["name"], _size_text(size), dst.uri),
                 lambda: _stream_volume(src, src_vol, dst, dst_pool, ref["name"], fmt), undo)]

    def _fixed_ip_moves(self, src, dst, nics, hostname, source_down=False):
        """DHCP reservations (fixed IPs) follow the server: made on the target's network, released on the source's.

        A NIC's fixed IP is the one its record keeps; a reservation the source's network has for its MAC counts too
        (a server made before records kept them)."""
        adds = []
        releases = []
        for index, nic in enumerate(nics):
            if nic.kind != "network":
                continue
            ip = nic.fixed_ip
            if not ip and not source_down:
                _net, host = _reservation(src, nic.source, nic.mac)
                if host is not None:
                    ip = host.get("ip")
            if not ip:
                continue
            field = "networks[%d].fixed_ip" % index
            address = validate_fixed_ip(dst, nic.source, ip, nic.mac, field, hostname=hostname)
            step = plan_reservation(dst, nic.source, nic.mac, address, hostname=hostname)
            if step is not None:
                adds.append(step)
            if not source_down:
                release = plan_release(src, nic.source, nic.mac)
                if release is not None:
                    releases.append((release[0] + " on %s" % src.uri, release[1], release[2]))
        return adds, releases

    def _live_migrate(self, dom, dst, persist_xml, copy_storage, migration, repin=None):
        """Run the migration in a thread, sample its progress, abort it at the timeout. A dedicated server runs on
        the target with the pins chosen there (``repin`` rewrites a definition's pins), not the source's."""
        src = self.client
        req = self.req
        outcome = {}

        dest_xml = migration_dest_xml(src.domain_xml_migratable(dom), dst) if copy_storage else None
        if repin is not None:
            dest_xml = repin(dest_xml or src.domain_xml_migratable(dom))

        def worker():
            try:
                src.migrate_domain(dom, dst, live=True, copy_storage=copy_storage, persist_xml=persist_xml,
                                   migration_uri=req.migration_uri, bandwidth_mib=req.bandwidth, dest_xml=dest_xml)
            except Exception as exc:  # pylint: disable=broad-except
                outcome["error"] = exc

        samples = []
        deadline = Deadline(req.migration_timeout)
        thread = threading.Thread(target=worker, name="migrate-%s" % req.name)
        thread.daemon = True
        thread.start()
        while thread.is_alive():
            thread.join(0.5)
            stats = src.domain_job_stats(dom) if thread.is_alive() else {}
            if stats:
                samples.append(_progress_sample(stats, deadline.elapsed()))
            progress("the live migration of %s" % req.name, deadline,
                     detail=_progress_detail(samples[-1]) if samples else None)
            if deadline.expired() and thread.is_alive():
                src.abort_domain_job(dom)
                thread.join(60)
                raise WaitTimeout("the live migration of %s to %s did not finish within %d s and was aborted; the "
                                  "server still runs on %s" % (req.name, dst.uri, req.migration_timeout, src.uri))
        migration["seconds"] = round(deadline.elapsed(), 1)
        migration["progress"] = _thin(samples, _PROGRESS_SAMPLES)
        if "error" in outcome:
            raise outcome["error"]

    # -- evacuate -------------------------------------------------------------------------------------------------

    def _plan_evacuate(self, plan):
        """Rebuild a server of a host that is down on another host, from its image, as the same server."""
        req = self.req
        try:
            self.client.hostname()
        except (HostUnavailableError, LibvirtOperationError):
            pass  # nobody answers: the host is down (or its connection died with its daemon)
        else:
            raise ConflictError("host %s answers: evacuate is for a host that is down (Nova refuses it too). Use "
                                "migrate or live_migrate" % req.uri, field="uri")
        last = req.server
        if last.get("name") not in (None, req.name):
            raise ValidationError("describes server %s, not %s" % (last.get("name"), req.name), field="server")
        for key in ("uuid", "flavor", "image"):
            if not last.get(key):
                raise ValidationError("needs the server's %s" % key, field="server.%s" % key)
        flavor = Flavor.from_dict(dict((k, v) for k, v in last["flavor"].items() if k in (
            "name", "vcpus", "ram_mb", "disk_gb", "swap_mb", "ephemeral_gb", "description", "extra_specs")),
            field="server.flavor")
        image_ref = {"pool": req.image_pool or last.get("image_pool") or DEFAULT_IMAGE_POOL,
                     "name": req.image or last["image"]}
        nics = _last_nics(req.name, last.get("networks") or [])
        fixed = dict((n["mac"], n["fixed_ip"]) for n in _network_list(last) if n.get("fixed_ip") and n.get("mac"))
        extra = dict((k, v) for k, v in last.items() if k not in _VIEW_KEYS and isinstance(v, str))
        for key in _ACTION_FACTS:
            extra.pop(key, None)
        extra.update(evacuated_from=req.uri, evacuated_at=self.now)
        uuid = last["uuid"]
        record = ServerRecord(created=last.get("created"), flavor=flavor, image=image_ref,
                              metadata=last.get("metadata"), tags=last.get("tags"),
                              hostname=last.get("hostname") or req.name, extra=extra)
        # Fixed IPs (kept in the record by the server module) are reserved again on the new host's networks.
        record.fixed_ips = dict(fixed)
        plan.before = {"state": "unknown", "host": req.uri, "flavor": flavor_brief(flavor),
                       "image": "%s/%s" % (image_ref["pool"], image_ref["name"]), "vm_state": "active"}

        domain_stub = _StubDomain(record, last["uuid"])
        # Evacuated already (an earlier run)? Then that copy is the server: nothing to do, wherever it went.
        target = None
        for host in ([] if req.target_uri else req.hosts):
            if host["uri"] == req.uri:
                continue
            other = self.connect(host["uri"])
            try:
                held = _holds(other, req.name, uuid)
            except (HostUnavailableError, LibvirtOperationError):
                continue
            if held:
                target = Target(other, host["name"], "earlier evacuation")
                break
        if target is None:
            target = self._target(domain_stub, source_down=True)
        dst = target.client
        existing = read_server(dst, req.name)
        if existing is not None:
            if existing.managed and existing.domain.uuid == uuid and existing.record.extra.get("evacuated_from"):
                plan.actual = existing
                plan.after = dict(plan.before, state=existing.power, host=dst.uri)
                plan.before = plan.after
                self.final_client = dst
                self.final_power = existing.power
                return
            raise ConflictError("a domain called %s already exists on %s" % (req.name, dst.uri), field="target_uri")

        image = self._image(dst, image_ref)
        root_bytes = root_size(flavor, image)
        pool = dst.lookup_pool(req.instance_pool, field="instance_pool")
        volumes = {"root": {"pool": dst.pool_name(pool), "name": volume_name(req.name, uuid, "root")},
                   "config": {"pool": dst.pool_name(pool), "name": volume_name(req.name, uuid, "config")}}
        if flavor.ephemeral_gb:
            volumes["ephemeral"] = {"pool": dst.pool_name(pool),
                                    "name": volume_name(req.name, uuid, "ephemeral")}
        if flavor.swap_mb:
            volumes["swap"] = {"pool": dst.pool_name(pool), "name": volume_name(req.name, uuid, "swap")}
        for ref in volumes.values():
            if dst.lookup_volume(pool, ref["name"]) is not None:
                raise ConflictError("volume %s/%s already exists on %s" % (ref["pool"], ref["name"], dst.uri),
                                    field="target_uri")
        virt_type = resolve_virt_type(dst, "auto", RecordStore(dst).read("host") or {})
        cloud_init = {"hostname": record.hostname, "user_data": req.user_data,
                      "ssh_authorized_keys": req.ssh_authorized_keys or [], "network_config": req.network_config}
        definition = _definition(flavor=flavor, image=image_ref, nics=nics, metadata=record.metadata,
                                 tags=record.tags, hostname=record.hostname, facts=extra, cloud_init=cloud_init)
        planner = ServerPlanner(dst, ServerRequest({"name": req.name, "state": "present"}))
        drive_inputs = planner._config_drive_inputs(uuid, definition)
        record.config_drive_hash = _drive_hash(drive_inputs)
        record.config_drive_built_hash = record.config_drive_hash  # a new root disk from the image
        record.volumes = volumes
        record.spec_hash = definition.hash(virt_type, record.config_drive_hash)
        xml = render_domain(DomainSpec(req.name, uuid, virt_type, flavor, nics, volumes, record,
                                       **cpu_pinning(dst, flavor, req.name)))
        root = ET.fromstring(xml)
        _replace_record(root, record)
        _lock_console(root)
        xml = ET.tostring(root, encoding="unicode")
        if not req.cloud_init_given:
            plan.warnings.append("the config drive of %s died with its host: the new one has its host name and "
                                 "network configuration only. Pass user_data and ssh_authorized_keys to give the "
                                 "rebuilt server its cloud-init data again" % req.name)
        ip_steps, _releases = self._fixed_ip_moves(None, dst, nics, record.hostname, source_down=True)
        claim = Claim(dst, req.name, flavor, instance_pool=dst.pool_name(pool))

        plan.add("create root disk (%s qcow2 overlay on %s/%s) on %s"
                 % (_size_text(root_bytes), image_ref["pool"], image_ref["name"], dst.uri),
                 lambda: dst.create_volume(pool, _overlay_xml(volumes["root"]["name"], root_bytes, image)),
                 undo=_delete_volume_step(dst, volumes["root"], req.name))
        plan.add("write config drive", lambda: planner._write_config_drive(pool, volumes["config"]["name"],
                                                                           drive_inputs),
                 undo=_delete_volume_step(dst, volumes["config"], req.name))
        for role, size in (("ephemeral", flavor.ephemeral_gb * GIB), ("swap", flavor.swap_mb * MIB)):
            if role in volumes:
                plan.add("create %s disk (%s)" % (role, _size_text(size)),
                         _create_blank(dst, pool, volumes[role]["name"], size),
                         undo=_delete_volume_step(dst, volumes[role], req.name))
        for label, run, undo in ip_steps:
            plan.add(label, run, undo=undo)
        if claim.needed:
            plan.add(claim.acquire_label, claim.acquire, undo=claim.release)
        holder = {}

        def define():
            holder["dom"] = dst.define_domain(xml)

        plan.add("define %s on %s (same name, UUID and MACs; evacuated from %s)" % (req.name, dst.uri, req.uri),
                 define, undo=lambda: _undefine_inactive(dst, req.name))
        if claim.needed:
            plan.add(claim.verify_label, claim.verify_and_release, undo=claim.release)
        start = last.get("state") in ("running", "paused", "suspended", None)
        if start:
            plan.add("start %s on %s" % (req.name, dst.uri), lambda: dst.start_domain(holder["dom"]))
        self.final_client = dst
        self.final_power = "running" if start else "stopped"
        self.outputs["evacuation"] = {"source": req.uri, "target": dst.uri, "target_host": target.name,
                                      "chosen_by": target.chosen_by}
        plan.after = dict(plan.before, state=self.final_power, host=dst.uri)

    def _plan_cleanup_evacuated(self, plan):
        """On a host that came back: remove the copy of a server that was evacuated from it while it was down."""
        client = self.client
        req = self.req
        actual = self._server(required=False)
        if actual is None:
            return
        plan.actual = actual
        plan.before = state_view(actual, client.uri)
        candidates = [{"name": req.target_uri, "uri": req.target_uri}] if req.target_uri else req.hosts
        copies = []
        for host in candidates:
            if host["uri"] == req.uri:
                continue
            other = self.connect(host["uri"])
            try:
                copy_ = read_server(other, req.name)
            except (HostUnavailableError, LibvirtOperationError):
                continue
            if copy_ is not None and copy_.managed and copy_.domain.uuid == actual.domain.uuid:
                copies.append((other, copy_))
        # Only a copy that was evacuated after this one came to be is the server now. That also holds when this
        # host is itself where the server was evacuated to before, or is listed again under another URI.
        mine = actual.record.extra.get("evacuated_at") or ""
        newer = [(o, c) for o, c in copies if c.record.extra.get("evacuated_from")
                 and (c.record.extra.get("evacuated_at") or "") > mine]
        if not newer:
            if copies:
                raise ConflictError(
                    "%s has the same UUID on %s but that copy was not evacuated from here (it may have been migrated "
                    "with this copy left behind); nothing is deleted, check both by hand"
                    % (req.name, ", ".join(o.uri for o, _c in copies)), field="target_uri")
            raise ConflictError("no evacuated copy of %s (UUID %s) was found on %s; the server on %s is kept"
                                % (req.name, actual.domain.uuid, ", ".join(h["uri"] for h in candidates), client.uri),
                                field="target_uri")
        other, evacuated = newer[0]
        if actual.power in ("running", "paused"):
            plan.add("power off the stale copy of %s (it runs on %s since its evacuation)" % (req.name, other.uri),
                     lambda: client.destroy_domain(actual.dom))
        plan.add("undefine the stale copy of %s" % req.name, lambda: client.undefine_domain(actual.dom))
        for role, ref in sorted(actual.record.volumes.items(), key=lambda item: _DISK_ORDER.get(item[0], 99)):
            plan.add("delete %s volume %s/%s" % (role, ref["pool"], ref["name"]),
                     _delete_volume_step(client, ref, req.name))
        for nic in actual.domain.managed_nics():
            if nic.kind == "network":
                step = plan_release(client, nic.source, nic.mac)
                if step is not None:
                    plan.add(*step)
        self.final_client = other
        self.final_power = evacuated.power
        plan.after = dict(plan.before, host=other.uri, state=evacuated.power)

    # -- helpers --------------------------------------------------------------------------------------------------

    def _plan_stop(self, plan, actual):
        client = self.client
        timeout = self.req.shutdown_timeout
        plan.add("shut down %s (ACPI, then power off after %d s)" % (self.req.name, timeout),
                 lambda: graceful_stop(client, actual.dom, timeout))

    def _render(self, actual, flavor, record, volumes):
        """The server's definition with ``flavor`` rendered the way the server module renders it."""
        domain = actual.domain
        spec = DomainSpec(self.req.name, domain.uuid, domain.virt_type, flavor, domain.managed_nics(), volumes,
                          record, **cpu_pinning(self.client, flavor, self.req.name))
        # render_domain renders the flavor's extra specs too, exactly as the server module does.
        root = ET.fromstring(render_domain(spec, base_xml=self._secure_xml(actual)))
        _replace_record(root, record)
        _lock_console(root)
        return ET.tostring(root, encoding="unicode")

    # -- result ---------------------------------------------------------------------------------------------------

    def result(self, plan, check_mode, diff_mode, leases_before=None):
        req = self.req
        result = {"changed": plan.changed, "actions": plan.actions, "warnings": list(plan.warnings),
                  "action": req.action}
        follow = declared_state_change(plan) if plan.changed else None
        if follow:
            field, value, line = follow
            result["declared_state"] = {field: value}
            result["msg"] = ("the declared state must follow, or the next converge undoes this or stops on it as "
                             "drift: in virtfleet_servers set %s's `%s`" % (req.name, line))
        if diff_mode:
            result["diff"] = plan.diff()
        result.update(self.outputs)
        if check_mode or self.final_client is None:
            if self.offloaded is not None:
                result["server"] = offloaded_view(self.offloaded)
                result["host"] = None
                return result
            server = server_view(plan.actual) if plan.actual is not None else {"name": req.name}
            server.update(state=plan.after.get("state", server.get("state")))
            if plan.after.get("vm_state"):
                server["vm_state"] = plan.after["vm_state"]
            result["server"] = server
            result["host"] = plan.after.get("host")
            return result
        client = self.final_client
        actual = read_server(client, req.name)
        if (req.wait and plan.changed and actual is not None and actual.power == "running"
                and req.action not in ("live_migrate", "console", "cleanup_evacuated", "pause", "unpause", "lock",
                                       "unlock")):
            result["waited"] = wait_until_ready(client, req.name, actual.domain.managed_nics(), req.wait_timeout,
                                                leases_before)
            actual = read_server(client, req.name)
        result["server"] = server_view(actual, hypervisor=client.hostname()) if actual is not None else {}
        if actual is not None:
            result["server"].setdefault("vm_state", "active")
        result["host"] = client.uri
        return result


def run_action(client, params, check_mode=False, diff_mode=False, connect=None):
    """The ``server_action`` module's whole job: plan, execute (unless check mode), describe the result."""
    request = ActionRequest(params)
    runner = ActionRunner(client, request, connect=connect)
    try:
        plan = runner.plan()
        leases_before = None
        if (not check_mode and request.wait and request.action in FRESH_ROOT_ACTIONS and plan.actual is not None
                and runner.final_client is not None):
            leases_before = lease_expiries(runner.final_client, plan.actual.domain.managed_nics())
        plan.execute(check_mode)
        return runner.result(plan, check_mode, diff_mode, leases_before)
    finally:
        runner.close()


# -- views ----------------------------------------------------------------------------------------------------------

def declared_state_change(plan):
    """``(field, value, YAML line)`` of the declared field an action changed (flavor, image), or None.

    Git holds the declared state: a resize or a rebuild onto another image that it does not follow is undone by the
    next converge, or, when it cannot be (a disk never shrinks), reported by site.yml as drift.
    """
    before, after = plan.before or {}, plan.after or {}
    if after.get("flavor") and after.get("flavor") != before.get("flavor"):
        flavor = after["flavor"]
        if flavor.get("name"):
            return "flavor", flavor["name"], "flavor: %s" % flavor["name"]
        inline = dict((k, flavor[k]) for k in ("vcpus", "ram_mb", "disk_gb", "swap_mb", "ephemeral_gb")
                      if flavor.get(k) or k in ("vcpus", "ram_mb", "disk_gb"))
        return "flavor", inline, "flavor: {%s}" % ", ".join("%s: %s" % item for item in inline.items())
    if after.get("image") and after.get("image") != before.get("image"):
        name = after["image"].split("/", 1)[-1]
        return "image", name, "image: %s" % name
    return None


# The keys of server_view() that are not facts of the record's ``extra``.
_VIEW_KEYS = frozenset(("name", "uuid", "state", "managed", "virt_type", "flavor", "image", "image_pool", "hostname",
                        "networks", "ips", "metadata", "tags", "created", "volumes", "config_drive", "hypervisor",
                        "config_drive_rewritten"))


def vm_state_of(actual):
    return actual.domain.record.extra.get("vm_state") or "active"


def flavor_brief(flavor):
    return {"name": flavor.name, "vcpus": flavor.vcpus, "ram_mb": flavor.ram_mb, "disk_gb": flavor.disk_gb,
            "swap_mb": flavor.swap_mb, "ephemeral_gb": flavor.ephemeral_gb}


def state_view(actual, host):
    """What ``--diff`` compares for an action: power state, host, flavor, image and Nova's vm_state."""
    record = actual.domain.record
    image = record.image or {}
    return {
        "state": actual.power,
        "host": host,
        "flavor": flavor_brief(_current_flavor(actual.domain)),
        "image": "%s/%s" % (image.get("pool"), image.get("name")) if image else None,
        "vm_state": vm_state_of(actual),
        "locked": lock_view(record.extra),
    }


def _controller_user():
    """Who runs this module, for a lock without ``locked_by``."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name for the uid (containers)
        return "uid %d" % os.getuid()


def offloaded_view(document):
    flavor = Flavor.from_dict(document["flavor"])
    image = document.get("image") or {}
    return {
        "name": document["name"],
        "uuid": document["uuid"],
        "state": SHELVED_OFFLOADED,
        "host": None,
        "flavor": flavor_brief(flavor),
        "image": "%s/%s" % (image.get("pool"), image.get("name")) if image else None,
        "vm_state": SHELVED_OFFLOADED,
        "offloaded_from": document.get("offloaded_from"),
        "saved": dict((role, "%s/%s" % (ref["pool"], ref["name"])) for role, ref in document["saved"].items()),
    }


# -- flavors --------------------------------------------------------------------------------------------------------

def same_flavor(a, b):
    """Whether a resize from ``b`` to ``a`` has nothing to do (the description is not part of a server's size)."""
    left = a.to_dict()
    right = b.to_dict()
    left.pop("description", None)
    right.pop("description", None)
    return left == right


def needs_restart(old, new):
    return old.vcpus != new.vcpus or old.ram_mb != new.ram_mb or old.extra_specs != new.extra_specs


def root_size(flavor, image):
    virtual = image["virtual_size"]
    if not flavor.disk_gb:
        return virtual
    wanted = flavor.disk_gb * GIB
    if wanted < virtual:
        raise ValidationError("image %s (%s) is larger than the flavor's %d GiB disk" % (
            image["name"], _size_text(virtual), flavor.disk_gb), field="image")
    return wanted


def _old_flavor(record):
    text = record.extra.get("resize_old_flavor")
    if not text:
        return record.flavor
    return Flavor.from_dict(json.loads(text), field="resize_old_flavor")


def _flavor_label(flavor):
    return flavor.name or "(unnamed)" if flavor is not None else "(none)"


def _flavor_size(flavor):
    text = "%d vCPU, %d MiB RAM, %d GiB disk" % (flavor.vcpus, flavor.ram_mb, flavor.disk_gb)
    if flavor.ephemeral_gb:
        text += ", %d GiB ephemeral" % flavor.ephemeral_gb
    if flavor.swap_mb:
        text += ", %d MiB swap" % flavor.swap_mb
    return text


# -- records and definitions ----------------------------------------------------------------------------------------

def _record_with(record, **changes):
    """A copy of ``record`` with some fields replaced (and every other field kept, those of later versions too)."""
    out = copy.copy(record)
    for key, value in changes.items():
        setattr(out, key, value)
    return out


def _without_facts(extra):
    return dict((k, v) for k, v in extra.items() if k not in _ACTION_FACTS)


def _replace_record(root, record):
    """Put ``record`` into the definition ``root``, with the spec hash the server module computes for it."""
    record.spec_hash = _spec_hash(root, record)
    metadata = root.find("metadata")
    if metadata is None:
        metadata = ET.Element("metadata")
        root.insert(2, metadata)
    for old in metadata.findall("{%s}instance" % NAMESPACE):
        metadata.remove(old)
    metadata.append(record.to_element())


def _spec_hash(root, record):
    """The hash of the server's spec as the server module computes it for a declaration that leaves everything to
    the server (flavor, image, NICs, metadata, tags, host name, facts as recorded). An action that changes the
    record without it would make the next ``server`` run report a change that is none."""
    domain = Domain(ET.tostring(root, encoding="unicode"))
    snapshot = record.flavor or Flavor(vcpus=domain.vcpus, ram_mb=domain.ram_mb, disk_gb=0)
    flavor = Flavor(**dict(snapshot.to_dict(), vcpus=domain.vcpus, ram_mb=domain.ram_mb))
    fixed = getattr(record, "fixed_ips", {})
    nics = [Nic(n["kind"], n["source"], n["mac"], n["model"] or "virtio", fixed.get(n["mac"]))
            for n in domain.nics if n["kind"] in ("network", "bridge")]
    definition = _definition(flavor=flavor, image=record.image or {}, nics=nics, metadata=record.metadata,
                             tags=record.tags, hostname=record.hostname, cloud_init=None, facts=record.extra)
    return definition.hash(root.get("type"), record.config_drive_hash)


def _definition(**kwargs):
    try:
        return Definition(**kwargs)
    except TypeError:
        # A server module from before the record's facts were part of the spec.
        kwargs.pop("facts", None)
        return Definition(**kwargs)


def _with_record(xml, record, lock=False):
    """The definition ``xml`` with our metadata replaced by ``record`` and nothing else changed (but the console
    lock, when asked)."""
    root = ET.fromstring(xml)
    _replace_record(root, record)
    if lock:
        _lock_console(root)
    return ET.tostring(root, encoding="unicode")


def _lock_console(root):
    """Give every VNC display of a definition a random password that expired at the epoch; True if one changed.

    QEMU accepts a password at run time only for a display started with password authentication, so the console
    action needs the definition to have one; an expired one lets nobody in until the action sets a fresh one.
    """
    changed = False
    for graphics in root.findall("devices/graphics"):
        if graphics.get("type") == "vnc" and not graphics.get("passwd"):
            graphics.set("passwd", _random_password())
            graphics.set("passwdValidTo", LOCKED_UNTIL)
            changed = True
    return changed


def rescue_xml(xml, record, rescue_ref):
    """The rescue definition: the rescue disk boots as vda, the server's own disks follow it, root first."""
    root = ET.fromstring(xml)
    _replace_record(root, record)
    _lock_console(root)
    devices = root.find("devices")
    first = None
    for index, disk in enumerate(list(devices)):
        if disk.tag != "disk":
            continue
        if first is None:
            first = index
        role = _ROLE_BY_SERIAL.get(disk.findtext("serial"))
        if role is None:
            continue
        disk.find("target").set("dev", _RESCUE_TARGETS[role])
        for boot in disk.findall("boot"):
            disk.remove(boot)
    disk = ET.Element("disk", {"type": "volume", "device": "disk"})
    ET.SubElement(disk, "driver", {"name": "qemu", "type": "qcow2"})
    ET.SubElement(disk, "source", {"pool": rescue_ref["pool"], "volume": rescue_ref["name"]})
    ET.SubElement(disk, "target", {"dev": "vda", "bus": "virtio"})
    ET.SubElement(disk, "serial").text = RESCUE_SERIAL
    ET.SubElement(disk, "boot", {"order": "1"})
    devices.insert(first if first is not None else 0, disk)
    return ET.tostring(root, encoding="unicode")


def unrescue_xml(xml, record):
    """The server's own definition back from its rescue definition."""
    root = ET.fromstring(xml)
    _replace_record(root, record)
    _lock_console(root)
    devices = root.find("devices")
    for disk in devices.findall("disk"):
        serial = disk.findtext("serial")
        if serial == RESCUE_SERIAL:
            devices.remove(disk)
            continue
        role = _ROLE_BY_SERIAL.get(serial)
        if role is None:
            continue
        disk.find("target").set("dev", DISK_TARGETS[role])
        if role == "root" and disk.find("boot") is None:
            boot = ET.Element("boot", {"order": "1"})
            # libvirt writes <boot> after <serial>; in that place a definition read back compares equal.
            children = list(disk)
            position = next((i + 1 for i, c in enumerate(children) if c.tag == "serial"), len(children))
            disk.insert(position, boot)
    return ET.tostring(root, encoding="unicode")


class _StubDomain:
    """What the scheduler needs of a server that has no domain to read (an evacuation)."""

    def __init__(self, record, uuid):
        self.record = record
        self.uuid = uuid
        self.vcpus = record.flavor.vcpus
        self.ram_mb = record.flavor.ram_mb


def _network_list(last):
    return [n for n in last.get("networks") or [] if isinstance(n, dict)]


def _last_nics(name, networks):
    """The NICs of a server from its last known view (server_info's ``networks``)."""
    nics = []
    for index, entry in enumerate(networks):
        if not isinstance(entry, dict):
            raise ValidationError("must be a dict with network or bridge and mac", field="server.networks[%d]" % index)
        kind = "network" if entry.get("network") else "bridge" if entry.get("bridge") else None
        if kind is None or not entry.get("mac"):
            raise ValidationError("needs network or bridge, and the NIC's mac", field="server.networks[%d]" % index)
        nics.append(Nic(kind, entry[kind], entry["mac"], entry.get("model") or "virtio", entry.get("fixed_ip")))
    return nics


def read_config_drive(client, ref, instance_id):
    """The inputs a config drive was built from, read back from the drive itself (so a rebuild can write the same
    drive again: the server's user data and keys are nowhere else)."""
    try:
        import pycdlib
    except ImportError:
        raise MissingLibraryError("pycdlib is needed to read the config drive where this module runs "
                                  "(pip install pycdlib)")
    pool = client.lookup_pool(ref["pool"])
    vol = client.lookup_volume(pool, ref["name"])
    if vol is None:
        raise NotFoundError("the config drive %s/%s is missing" % (ref["pool"], ref["name"]))
    data = client.download_bytes(vol)
    iso = pycdlib.PyCdlib()
    files = {}
    try:
        iso.open_fp(io.BytesIO(data))
        for name in ("meta-data", "user-data", "network-config", "vendor-data"):
            out = io.BytesIO()
            try:
                iso.get_file_from_iso_fp(out, rr_path="/" + name)
            except Exception:  # pylint: disable=broad-except
                continue  # pycdlib raises its own error for a file the drive does not have
            files[name] = out.getvalue()
    except Exception as exc:  # pylint: disable=broad-except
        raise ConflictError("the config drive %s/%s cannot be read (%s); give the cloud-init options (user_data, "
                            "ssh_authorized_keys...) to write a new one" % (ref["pool"], ref["name"], exc))
    finally:
        try:
            iso.close()
        except Exception:  # pylint: disable=broad-except
            pass
    meta = json.loads(files.get("meta-data") or b"{}")
    network = files.get("network-config")
    if network is not None:
        try:
            network = json.loads(network)
        except ValueError:
            network = network.decode("utf-8")
    return {
        "instance_id": instance_id,
        "hostname": meta.get("local-hostname"),
        "user_data": files.get("user-data"),
        "ssh_authorized_keys": meta.get("public-keys") or [],
        "network_config": network,
        "vendor_data": files.get("vendor-data"),
    }


# -- volumes --------------------------------------------------------------------------------------------------------

def _create_blank(client, pool, name, size):
    return lambda: client.create_volume(pool, _blank_xml(name, size))


def _standalone_xml(name, capacity, fmt):
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", {"unit": "bytes"}).text = str(capacity)
    target = ET.SubElement(root, "target")
    ET.SubElement(target, "format", {"type": fmt})
    if fmt == "qcow2":
        # libvirt writes qcow2 version 2 (compat 0.10) unless told otherwise; every QEMU of this century reads v3.
        ET.SubElement(target, "compat").text = "1.1"
    return ET.tostring(root, encoding="unicode")


def _volume_format(client, vol):
    fmt = ET.fromstring(client.volume_xml(vol)).find("target/format")
    return fmt.get("type") if fmt is not None else "raw"


def _stream_volume(src, src_vol, dst, dst_pool, name, fmt):
    """A copy of ``src_vol`` as volume ``name`` of ``dst_pool`` on another host, byte for byte."""
    size = src.volume_physical(src_vol)
    # Created raw, of the file's exact size: an upload writes over the file without truncating it, so a qcow2
    # made by libvirt first could leave bytes of its own behind. The pool's refresh then reads the uploaded header
    # (format and virtual size); the domain names the format explicitly anyway.
    vol = dst.create_volume(dst_pool, _raw_xml(name, size))
    src.copy_volume_to(src_vol, dst, vol, size)
    dst.refresh_pool(dst_pool)
    return vol


def _expected_image_path(dst, name, resolve_image, backing):
    """Where the base image of an overlay will be on the target: its pool's path there and the same file name."""
    if not backing:
        return None
    pool_name = resolve_image.image_ref["pool"]
    pool = dst.find_pool(pool_name)
    path = ET.fromstring(dst.pool_xml(pool)).findtext("target/path") if pool is not None else None
    if not path:
        return None
    return os.path.join(path, resolve_image.image_ref["name"])


def migration_dest_xml(xml, dst):
    """The definition the destination runs a storage migration with: every pool volume as the file it is there.

    libvirt (9.x) checks before an incremental storage migration that each copied disk's file exists on the
    destination, and cannot tell for a disk given as pool and volume (it refuses: "pre-creation of storage targets
    for incremental storage migration is not supported"). The same disks as files pass; the definition the
    destination keeps (the persist XML) still names pools and volumes.
    """
    root = ET.fromstring(xml)
    for disk in root.findall("devices/disk"):
        source = disk.find("source")
        if disk.get("type") != "volume" or source is None or not source.get("pool"):
            continue
        pool = dst.lookup_pool(source.get("pool"))
        vol = dst.lookup_volume(pool, source.get("volume"))
        if vol is None:
            raise NotFoundError("volume %s/%s is missing on %s" % (source.get("pool"), source.get("volume"), dst.uri))
        disk.set("type", "file")
        for key in list(source.attrib):
            if key not in ("index",):
                del source.attrib[key]
        source.set("file", dst.volume_path(vol))
    return ET.tostring(root, encoding="unicode")


def _undefine_inactive(client, name, required=False, destroy=False):
    dom = client.lookup_domain(name)
    if dom is None:
        if required:
            raise NotFoundError("%s is not defined on %s" % (name, client.uri))
        return
    if client.domain_state(dom) not in ("shutoff", "shutdown", "crashed", "nostate"):
        if not destroy:
            # Never undo a server that runs: after a move that is the only copy.
            return
        client.destroy_domain(dom)
    client.undefine_domain(dom)


def _holds(client, name, uuid):
    """Whether the host of ``client`` has the domain ``name`` with this UUID (then it is the server's own host)."""
    dom = client.lookup_domain(name)
    return dom is not None and client.domain_uuid(dom) == uuid


def _offloaded_there(client, document):
    """Whether the host of ``client`` is where ``document`` (an offload record) was read: it has the same record.

    Comparing the records spares a comparison of host UUIDs, which costs a capabilities call of seconds."""
    other = RecordStore(client).read(OFFLOAD_RECORD_PREFIX + document["name"])
    return other is not None and other.get("uuid") == document["uuid"] and \
        other.get("offloaded_at") == document.get("offloaded_at")


# -- migration progress ---------------------------------------------------------------------------------------------

def _progress_sample(stats, elapsed):
    total = stats.get("data_total") or 0
    remaining = stats.get("data_remaining") or 0
    sample = {"seconds": round(elapsed, 1), "data_processed_mib": (stats.get("data_processed") or 0) // MIB,
              "data_remaining_mib": remaining // MIB}
    if total:
        sample["percent"] = round(100.0 * (total - remaining) / total, 1)
    if stats.get("disk_total"):
        sample["disk_remaining_mib"] = (stats.get("disk_remaining") or 0) // MIB
    return sample


def _progress_detail(sample):
    parts = ["%s%% copied" % sample["percent"]] if "percent" in sample else []
    parts.append("%d MiB of memory left" % sample["data_remaining_mib"])
    if "disk_remaining_mib" in sample:
        parts.append("%d MiB of disk left" % sample["disk_remaining_mib"])
    return ", ".join(parts)


def _thin(samples, keep):
    if len(samples) <= keep:
        return samples
    step = len(samples) / float(keep - 1)
    return [samples[min(int(i * step), len(samples) - 1)] for i in range(keep - 1)] + [samples[-1]]


def _scheduler():
    """The pure scheduler (module_utils/_scheduler/), shipped with the module like every module_utils file."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._scheduler.scheduler import NoValidHost, schedule

    return schedule, NoValidHost
