# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Claims: a server takes its flavor's resources from its host, or fails before anything is made.

Nova's resource tracker claims a flavor on the compute host under a lock, after the scheduler chose the host from
data that may already be stale. Here there is no nova-compute process to hold that lock, so the lock is a libvirt
object on the host itself, and the claim is checked three times:

1. **When planning** (also in check mode): ``check_claim()`` computes the host's usage (every domain, see
   _host_info) and refuses a disabled host or a flavor that does not fit, with the numbers. Nothing exists yet.
2. **Under the host's claim lock, right before the domain is defined** (``Claim.acquire``): the same check again,
   now that no other claimant can define a domain on this host until the lock is released. A run that lost a race
   fails here, and the plan's undo removes the volumes it made.
3. **After the domain is defined, still under the lock** (``Claim.verify_and_release``): the host's usage, the new
   server included, must be within capacity. This catches what the lock cannot: a claimant that bypassed it (an
   older collection, a domain defined by hand) or a stale lock broken too early. A claim found over capacity fails,
   the plan undefines the domain and only then releases the lock.

Why this cannot oversubscribe a host: the lock is a volume ``claim.lock`` in the records pool. libvirt's storage
driver checks that a name is free and adds the volume under the pool's own lock, so of two concurrent
``createXML`` calls exactly one succeeds: the lock is atomic on the host, whichever controller the calls come
from. Between acquire and release a claimant re-checks the fit and defines its domain, so any later claimant's
check sees that domain's usage. If the lock were ever bypassed, the verification still holds: of two claimants A and
C, one verifies after both have defined their domains (A defines, A verifies, C defines, C verifies: C sees A;
otherwise A's verification comes after C's definition and A sees C), so at least one of them sees the host over
capacity and rolls back. At worst both roll back; a host is never left oversubscribed, and nothing is started
before its claim is verified.

Volumes (``VolumeClaim``) claim disk under the same lock with the same three checks: on the instance pool's
filesystem a volume and a server compete for the same free GB; a pool on another filesystem is its own capacity
(_disk_usage). A grow is not verified after the fact: a volume never shrinks, so it is only made once its check
under the lock passed.

Stale locks: a claimant that dies holding the lock (a killed ``ansible-playbook``) leaves the volume behind. The
lock's content names its owner with a random token. A waiter breaks a lock only after it has seen the *same* token
for ``ttl`` seconds on its own monotonic clock, so no clocks of different machines are ever compared; normal holds
last well under a second. Releasing deletes the volume only if it still holds the releaser's token.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import json
import os
import socket
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET

from ansible_collections.virtfleet.compute.plugins.module_utils import _capacity, _disk_usage
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import (
    CapacityError,
    ConflictError,
    HostUnavailableError,
    LibvirtOperationError,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._extra_specs import format_cpuset
from ansible_collections.virtfleet.compute.plugins.module_utils._host_info import INSTANCE_POOL, host_info
from ansible_collections.virtfleet.compute.plugins.module_utils._records import RECORDS_POOL, RecordStore

# A lock held longer than this (seen unchanged by a waiter for that long) belongs to a claimant that died.
LOCK_TTL = 60.0
# How long a claimant waits for the lock before giving up; more than LOCK_TTL so a dead holder is always outlived.
LOCK_TIMEOUT = 180.0
_LOCK_BYTES = 4096
_POLL_FIRST = 0.05
_POLL_MAX = 1.0
_RESOURCE_LABELS = {"vcpus": "vCPUs", "memory_mb": "RAM", "disk_gb": "disk", "pcpus": "dedicated CPUs"}
_AMOUNT_TEXT = {"vcpus": "%s vCPU", "memory_mb": "%s MB RAM", "disk_gb": "%s GB disk", "pcpus": "%s dedicated CPU"}


class RecordLock:
    """A host-wide mutual exclusion: the volume ``<name>.lock`` in the records pool, created atomically by libvirt.

    ``acquire()`` waits (up to ``timeout`` seconds) while another claimant holds it; ``release()`` is idempotent
    and never deletes a lock that is not ours, so both can be plan steps and undo actions.
    """

    def __init__(self, client, name="claim", ttl=LOCK_TTL, timeout=LOCK_TIMEOUT, clock=None, sleep=None):
        self.client = client
        self.name = name
        self.volume_name = "%s.lock" % name
        self.ttl = ttl
        self.timeout = timeout
        self._clock = clock or time.monotonic
        self._sleep = sleep or time.sleep
        self.token = None
        self.broken = []  # owners of stale locks this claimant broke, for the record
        self._breaker_seen = None  # when this claimant first found another waiter's breaker lock, if it still is

    @property
    def held(self):
        return self.token is not None

    def acquire(self):
        if self.token is not None:
            return
        pool = self._pool()
        token = str(uuidlib.uuid4())
        start = self._clock()
        seen = None  # (content of the lock we are waiting for, when we first saw it)
        delay = _POLL_FIRST
        while True:
            vol = self.client.create_volume_unless_exists(pool, _lock_volume_xml(self.volume_name))
            if vol is not None:
                self.token = token
                owner = {"token": token, "owner": "%s:%d" % (socket.gethostname(), os.getpid()),
                         "since": datetime.datetime.utcnow().replace(microsecond=0).isoformat() + "Z",
                         "purpose": self.name}
                try:
                    self.client.upload_bytes(vol, json.dumps(owner, sort_keys=True).encode("utf-8"))
                except Exception:
                    self.release_unconditionally(pool)
                    raise
                return
            content = self._content(pool)
            if content is None:
                continue  # released between our create and our read: try again at once
            now = self._clock()
            if seen is None or seen[0] != content:
                seen = (content, now)
            elif now - seen[1] >= self.ttl:
                if self._break(pool, content):
                    self.broken.append(_owner_text(content))
                seen = None
                continue
            if now - start >= self.timeout:
                raise ConflictError(
                    "could not take the %s lock of %s within %d s: it is held by %s. If no run is active on this "
                    "host, the lock is left over from a killed run and expires %d s after it was first seen"
                    % (self.name, self.client.uri, self.timeout, _owner_text(content), self.ttl))
            self._sleep(delay)
            delay = min(delay * 1.5, _POLL_MAX)

    def release(self):
        """Give the lock back if we hold it; safe to call any number of times."""
        if self.token is None:
            return
        token = self.token
        self.token = None
        pool = self.client.find_pool(RECORDS_POOL)
        if pool is None:
            return
        vol = self.client.lookup_volume(pool, self.volume_name)
        if vol is None:
            return
        content = self._read(vol)
        if content is not None and _token(content) == token:
            self.client.delete_volume_if_exists(vol)

    def release_unconditionally(self, pool):
        vol = self.client.lookup_volume(pool, self.volume_name)
        if vol is not None:
            self.client.delete_volume_if_exists(vol)
        self.token = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    # -- helpers ----------------------------------------------------------------------------------------------------

    def _pool(self):
        store = RecordStore(self.client)
        if not store.exists():
            try:
                store.ensure_pool()
            except LibvirtOperationError:
                # Another claimant created the pool at the same moment; theirs is as good as ours.
                store = RecordStore(self.client)
                if not store.exists():
                    raise
        return self.client.lookup_pool(store.pool_name)

    def _content(self, pool):
        vol = self.client.lookup_volume(pool, self.volume_name)
        if vol is None:
            return None
        return self._read(vol)

    def _read(self, vol):
        try:
            raw = self.client.download_bytes(vol)
        except LibvirtOperationError:
            return None  # deleted while we read it
        return raw.rstrip(b"\0 \n").decode("utf-8", "replace")

    def _break(self, pool, stale):
        """Delete the stale lock ``stale``; True when this claimant did.

        libvirt cannot delete a volume only if it is unchanged, so a waiter that read the stale lock and then deleted
        it by name could delete the lock another waiter took in between, and both would hold it. Breaking is
        therefore done under a second lock, ``<name>.lock.break``, created atomically like the lock itself: one
        waiter at a time reads the lock again and deletes it only if it still holds what went stale. A breaker is
        held for two libvirt calls; one left by a killed waiter is removed once it has been there for the ttl.
        """
        breaker_name = self.volume_name + ".break"
        breaker = self.client.create_volume_unless_exists(pool, _lock_volume_xml(breaker_name))
        if breaker is None:
            now = self._clock()
            if self._breaker_seen is None:
                self._breaker_seen = now
            elif now - self._breaker_seen >= self.ttl:
                left = self.client.lookup_volume(pool, breaker_name)
                if left is not None:
                    self.client.delete_volume_if_exists(left)
                self._breaker_seen = None
            return False
        self._breaker_seen = None
        try:
            vol = self.client.lookup_volume(pool, self.volume_name)
            if vol is None or self._read(vol) != stale:
                return False
            try:
                return self.client.delete_volume_if_exists(vol)
            except LibvirtOperationError:
                # A holder that outlived the ttl released its lock between our read and our delete, and a claimant
                # is creating its own ("volume is still being allocated"): that lock is live, leave it.
                if self._content(pool) not in (None, stale):
                    return False
                raise
        finally:
            self.client.delete_volume_if_exists(breaker)


def ClaimLock(client, **kwargs):  # noqa: N802 - reads as the class it returns
    """The host's claim lock: held from the capacity check to the domain's definition and its verification."""
    return RecordLock(client, "claim", **kwargs)


def check_claim(client, server_name, flavor, old_flavor=None, instance_pool=INSTANCE_POOL, host=None):
    """Whether ``flavor`` fits ``server_name`` on the host: a summary dict, or CapacityError / HostUnavailableError.

    A pure check (it reads only), run when planning, in check mode too, and again under the claim lock. For an
    existing server (or ``old_flavor`` given) only the resources that grow are claimed, against the host's usage
    without the server itself; a change that asks for no more of anything claims nothing (``needed`` is False).
    ``host`` is a host dict from host_info, read from the host when omitted.
    """
    if host is None:
        host = host_info(client, details=False, instance_pool=instance_pool)
    if not host.get("up", True):
        raise HostUnavailableError("host %s cannot be reached: %s" % (host.get("name"), host.get("error")))
    requested = _capacity.resources_from_flavor(_flavor_dict(flavor))
    own = _own_usage(host, server_name)
    if old_flavor is not None:
        old = _capacity.resources_from_flavor(_flavor_dict(old_flavor))
    else:
        old = own
    growing = [r for r in _capacity.RESOURCES if requested[r] > (old[r] if old else 0)]
    summary = {"host": host["name"], "server": server_name, "needed": bool(growing), "requested": requested,
               "resources": growing}
    if not growing:
        return summary
    if not host.get("enabled", True):
        reason = host.get("disabled_reason")
        raise HostUnavailableError(
            "host %s is disabled%s: it takes no new servers and no growing ones (Nova's disabled compute service). "
            "Enable it with the host module (enabled: true) or choose another host"
            % (host["name"], " (%s)" % reason if reason else ""))
    others = _without(host, own)
    shortfalls = _capacity.check_fit(others, requested, resources=growing)
    caps = _capacity.capacity(others)
    summary["capacity"] = dict((r, {"requested": requested[r], "used": caps[r]["used"],
                                    "capacity": caps[r]["capacity"], "free": caps[r]["free"]}) for r in growing)
    if shortfalls:
        raise CapacityError(
            "server %s does not fit on host %s after allocation ratios and reservations: %s"
            % (server_name, host["name"], "; ".join("%s: %s" % (_RESOURCE_LABELS[s["resource"]], s["message"])
                                                    for s in shortfalls)),
            field="flavor", shortfalls=shortfalls, host=host["name"])
    return summary


def grows(flavor, old_flavor):
    """Whether ``flavor`` asks for more of any resource than ``old_flavor``: only then is a claim worth computing
    (an unchanged or shrinking server costs no usage scan)."""
    new = _capacity.resources_from_flavor(_flavor_dict(flavor))
    old = _capacity.resources_from_flavor(_flavor_dict(old_flavor))
    return any(new[r] > old[r] for r in _capacity.RESOURCES)


def verify_claim(client, server_name, resources, instance_pool=INSTANCE_POOL):
    """After the definition: the host's usage, the server included, is within capacity for ``resources``, and the
    host CPUs the server is pinned to (hw:cpu_policy=dedicated) are pinned by no other dedicated server."""
    host = host_info(client, details=False, instance_pool=instance_pool)
    shared = shared_pins(host, server_name)
    if shared:
        raise CapacityError(
            "the claim of server %s on host %s was verified after its definition and its dedicated CPUs %s are "
            "pinned by %s too: another run chose them at the same time. This server is rolled back; run again to "
            "retry (the next run pins it to CPUs that are free then)"
            % (server_name, host["name"], format_cpuset(set().union(*shared.values())),
               ", ".join(sorted(shared))), field="flavor", host=host["name"])
    caps = _capacity.capacity(host)
    over = [r for r in resources if caps[r]["used"] > caps[r]["capacity"]]
    if over:
        raise CapacityError(
            "the claim of server %s on host %s was verified after its definition and the host is over its capacity "
            "(%s): another run claimed resources on this host at the same time without waiting for its claim lock. "
            "This server is rolled back; run again to retry"
            % (server_name, host["name"], "; ".join(
                "%s: used %s of capacity %s %s" % (_RESOURCE_LABELS[r], _capacity.format_amount(caps[r]["used"]),
                                                   _capacity.format_amount(caps[r]["capacity"]), _capacity.UNITS[r])
                for r in over)), field="flavor", host=host["name"])
    return host


class Claim:
    """A server's claim, ready to be wired into a plan as two steps around the domain's definition.

    Constructing it runs ``check_claim`` (so planning, and check mode, fail before anything is made)::

        claim = Claim(client, name, flavor)                       # or old_flavor=current for a resize
        if claim.needed:
            plan.add(claim.acquire_label, claim.acquire, undo=claim.release)
        plan.add("define domain ...", define, undo=undefine)
        if claim.needed:
            plan.add(claim.verify_label, claim.verify_and_release, undo=claim.release)

    If the verification fails the lock stays held until the plan's undo has undefined the domain; the undo of the
    acquire step then releases it, so no other claimant ever sees the failed server's usage as free.
    """

    def __init__(self, client, server_name, flavor, old_flavor=None, instance_pool=INSTANCE_POOL, lock=None):
        self.client = client
        self.server_name = server_name
        self.flavor = flavor
        self.old_flavor = old_flavor
        self.instance_pool = instance_pool
        self.lock = lock or ClaimLock(client)
        self.summary = check_claim(client, server_name, flavor, old_flavor, instance_pool)

    @property
    def needed(self):
        return self.summary["needed"]

    @property
    def acquire_label(self):
        requested = self.summary["requested"]
        amounts = ", ".join(_AMOUNT_TEXT[r] % _capacity.format_amount(requested[r]) for r in self.summary["resources"])
        return "claim %s for %s on host %s (checked again under the host's claim lock)" % (
            amounts, self.server_name, self.summary["host"])

    @property
    def verify_label(self):
        return "verify the claim of %s on host %s and release the claim lock" % (self.server_name,
                                                                                 self.summary["host"])

    def acquire(self):
        self.lock.acquire()
        try:
            self.summary = check_claim(self.client, self.server_name, self.flavor, self.old_flavor,
                                       self.instance_pool)
        except Exception:
            self.lock.release()
            raise

    def verify_and_release(self):
        # On failure the lock is kept on purpose: see the class docstring.
        verify_claim(self.client, self.server_name, self.summary["resources"], self.instance_pool)
        self.lock.release()

    def release(self):
        self.lock.release()


# -- volumes ----------------------------------------------------------------------------------------------------------

def _filesystem_of(client, host, pool_name):
    """The host dict's filesystem entry that ``pool_name`` is on (see _disk_usage), a new empty one if it holds none
    of our volumes yet."""
    for entry in host.get("filesystems") or []:
        if pool_name in entry["pools"]:
            return entry
    pool = client.lookup_pool(pool_name, field="pool")
    capacity_bytes = client.pool_info(pool)["capacity"]
    for entry in host.get("filesystems") or []:
        if entry["capacity_bytes"] and entry["capacity_bytes"] == capacity_bytes:
            return entry
    ratio = _capacity.capacity(host)["disk_gb"]["allocation_ratio"]
    return _disk_usage.filesystem_figures({"instance": False, "pools": [pool_name], "capacity_bytes": capacity_bytes,
                                           "allocation_gb": 0}, 0, ratio)


def _filesystem_text(fs, host):
    fmt = _capacity.format_amount
    if fs["instance"]:
        disk = host["local_disk"]
        return ("used %s GB: servers %s GB, volumes %s GB, other domains %s GB) on the instance filesystem (pool %s; "
                "total %s GB, reserved %s GB, disk allocation ratio %s"
                % (fmt(fs["used_gb"]), fmt(disk["servers_gb"]), fmt(disk["volumes_gb"]), fmt(disk["unmanaged_gb"]),
                   ", ".join(fs["pools"]), fmt(fs["total_gb"]), fmt(fs["reserved_gb"]), fmt(fs["allocation_ratio"])))
    return ("used %s GB by volumes) on a filesystem of its own (pool %s; total %s GB, disk allocation ratio %s"
            % (fmt(fs["used_gb"]), ", ".join(fs["pools"]), fmt(fs["total_gb"]), fmt(fs["allocation_ratio"])))


def check_volume_claim(client, pool_name, name, requested_gb, host=None):
    """Whether ``requested_gb`` more GB of volume fit in ``pool_name``'s filesystem: a summary, or CapacityError.

    The same test as a server's disk (placement's: used + requested <= capacity, and no more than the filesystem's
    total whatever the ratio). A disabled host still takes volumes: disabling stops new servers (Nova's disabled
    compute service), and Cinder's volumes never depended on it.
    """
    if host is None:
        host = host_info(client, details=False)
    if not host.get("up", True):
        raise HostUnavailableError("host %s cannot be reached: %s" % (host.get("name"), host.get("error")))
    fs = _filesystem_of(client, host, pool_name)
    summary = {"host": host["name"], "volume": "%s/%s" % (pool_name, name), "requested_gb": requested_gb,
               "needed": requested_gb > 0, "filesystem": fs}
    if requested_gb <= 0:
        return summary
    if not _capacity.resource_fits(requested_gb, fs["used_gb"], fs["capacity_gb"], fs["total_gb"]):
        fmt = _capacity.format_amount
        raise CapacityError(
            "volume %s/%s does not fit on host %s: requested %s GB, free %s GB of capacity %s GB (%s)"
            % (pool_name, name, host["name"], fmt(requested_gb), fmt(max(fs["free_gb"], 0)), fmt(fs["capacity_gb"]),
               _filesystem_text(fs, host)), field="size", host=host["name"])
    return summary


def verify_volume_claim(client, pool_name, name):
    """After a volume was made (and recorded), still under the claim lock: its filesystem is within capacity. The
    counterpart of verify_claim, for claimants that did not take the lock."""
    host = host_info(client, details=False)
    fs = _filesystem_of(client, host, pool_name)
    if fs["used_gb"] > fs["capacity_gb"]:
        raise CapacityError(
            "the claim of volume %s/%s on host %s was verified after it was made and the disk is over its capacity "
            "(capacity %s GB, %s): another run claimed disk on this host at the same time without waiting for its "
            "claim lock. This volume is rolled back; run again to retry"
            % (pool_name, name, host["name"], _capacity.format_amount(fs["capacity_gb"]), _filesystem_text(fs, host)),
            field="size", host=host["name"])


class VolumeClaim:
    """A volume's disk claim, wired into a plan like a server's ``Claim`` (checked when planning, again under the
    host's claim lock, and after the volume is made and recorded).

    ``verify`` is False for a grow: a volume never shrinks, so a grow cannot be rolled back and is only made once its
    claim passed under the lock.
    """

    def __init__(self, client, pool_name, name, requested_gb, verify=True, lock=None):
        self.client = client
        self.pool_name = pool_name
        self.name = name
        self.requested_gb = requested_gb
        self.verify = verify
        self.lock = lock or ClaimLock(client)
        self.summary = check_volume_claim(client, pool_name, name, requested_gb)

    @property
    def needed(self):
        return self.summary["needed"]

    @property
    def acquire_label(self):
        return "claim %s GB disk for volume %s/%s on host %s (checked again under the host's claim lock)" % (
            _capacity.format_amount(self.requested_gb), self.pool_name, self.name, self.summary["host"])

    @property
    def verify_label(self):
        if self.verify:
            return "verify the claim of volume %s/%s on host %s and release the claim lock" % (
                self.pool_name, self.name, self.summary["host"])
        return "release the claim lock of host %s" % self.summary["host"]

    def acquire(self):
        self.lock.acquire()
        try:
            self.summary = check_volume_claim(self.client, self.pool_name, self.name, self.requested_gb)
        except Exception:
            self.lock.release()
            raise

    def verify_and_release(self):
        # On failure the lock is kept until the plan's undo removed the volume, as for a server.
        if self.verify:
            verify_volume_claim(self.client, self.pool_name, self.name)
        self.lock.release()

    def release(self):
        self.lock.release()


def _flavor_dict(flavor):
    return flavor.to_dict() if hasattr(flavor, "to_dict") else dict(flavor)


def shared_pins(host, server_name):
    """``{other server: host CPUs it shares with server_name}`` among dedicated servers of a host dict; empty when
    the server's pinned CPUs are its own."""
    servers = host.get("servers") or []
    mine = set()
    for server in servers:
        if server.get("name") == server_name:
            mine = set(server.get("pinned_cpus") or ())
    if not mine:
        return {}
    shared = {}
    for server in servers:
        if server.get("name") != server_name:
            common = mine & set(server.get("pinned_cpus") or ())
            if common:
                shared[server["name"]] = common
    return shared


def _own_usage(host, server_name):
    for server in host.get("servers") or []:
        if server.get("name") == server_name:
            return {"vcpus": server["vcpus"], "memory_mb": server["memory_mb"], "disk_gb": server["disk_gb"],
                    "pcpus": server.get("pcpus", 0)}
    return None


def _without(host, usage):
    if usage is None:
        return host
    out = dict(host)
    for resource, (_total, used_key, _reserved, _ratio) in _capacity.HOST_FIELDS.items():
        out[used_key] = max(host.get(used_key, 0) - usage.get(resource, 0), 0)
    return out


def _lock_volume_xml(name):
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", {"unit": "bytes"}).text = str(_LOCK_BYTES)
    ET.SubElement(root, "allocation", {"unit": "bytes"}).text = "0"
    ET.SubElement(ET.SubElement(root, "target"), "format", {"type": "raw"})
    return ET.tostring(root, encoding="unicode")


def _token(content):
    try:
        return json.loads(content).get("token")
    except (ValueError, AttributeError):
        return None


def _owner_text(content):
    try:
        data = json.loads(content)
        return "%s (since %s)" % (data.get("owner"), data.get("since"))
    except (ValueError, AttributeError):
        return "a claimant that had not yet written its name"
