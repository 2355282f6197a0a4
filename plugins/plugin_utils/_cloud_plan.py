# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the playbooks decide before they change anything, as plain Python on plain data.

* :func:`converge_plan` (site.yml): declared servers -> scheduler requests -> placements -> each host's list of
  servers to converge, with the servers that wait for a host that is down, and the drift the converge cannot follow.
* :func:`drain_plan` (drain_host.yml): the moves that empty a host, or the refusal that changes nothing.
* :func:`evacuate_plan` (evacuate_host.yml): which servers a dead host held (the freshest list there is, and how old
  it is), where each is rebuilt, and with what cloud-init data.
* :func:`cloud_init`: the one definition of a server's cloud-init data (its declared keys plus the controller's),
  shared by the converge and the evacuation, so a rebuilt server's config drive is the one the converge expects.

The action plugins of the same names feed these functions the hosts' answers and the scheduler (a callable, the
``virtfleet.compute.scheduler`` lookup in a playbook); the functions never talk to a host themselves, so every rule
here is unit-tested (tests/unit/plugins/action/).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping

# What a server declared without these fields means to the plan.
DECLARED_DEFAULTS = {"state": "running", "host": None, "server_group": None}
# Passed to the servers module for every declared server, so that removing them from Git removes them from the
# server (the module keeps what an option leaves out).
CONVERGE_DEFAULTS = {"networks": [], "metadata": {}, "tags": []}
# A host that is left out of the run, as the scheduler sees it when the inventory has no record of it.
DOWN_HOST = {"up": False, "vcpus": 0, "memory_mb": 0, "local_gb": 0}
# The fields of a host record (the host module's result) the scheduler reads; in check mode the record the same run
# would write replaces the one the host has now.
RECORD_FIELDS = ("enabled", "disabled_reason", "availability_zone", "aggregates", "traits", "cpu_allocation_ratio",
                 "ram_allocation_ratio", "disk_allocation_ratio", "reserved_host_memory_mb", "reserved_host_cpus",
                 "reserved_host_disk_mb")
# The disk a host is taken to have in check mode while its instance pool does not exist yet.
UNKNOWN_DISK_GB = 1 << 30
# The cloud-init inputs of a server (the server and server_action modules' options of the same names).
CLOUD_INIT_FIELDS = ("hostname", "user_data", "network_config")


class PlanError(Exception):
    """A plan that cannot be made; ``field`` names the input it is about."""

    def __init__(self, message, field=None, **details):
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details


# -- the declared state ---------------------------------------------------------------------------------------------

def by_name(items):
    """``{name: item}`` of a declared list (flavors, server groups, servers); entries without a name are left out."""
    return dict((item["name"], item) for item in items or []
                if isinstance(item, Mapping) and item.get("name") is not None)


def declared_servers(servers):
    """The declared servers with the defaults the plan relies on."""
    out = []
    for server in servers or []:
        item = dict(DECLARED_DEFAULTS)
        item.update(server)
        out.append(item)
    return out


def flavor_request(flavor, flavors):
    """The flavor the scheduler is asked for: a declared flavor's sizes, or the inline flavor.

    A server declared without a flavor keeps its own: if it exists it stays where it is, whatever its size.
    """
    if not flavor:
        return {"vcpus": 0, "ram_mb": 0}
    if isinstance(flavor, str):
        return flavors.get(flavor, flavor)
    return flavor


def server_group(group, groups):
    """A server group by name is the declared group (with its policy); an inline group is itself."""
    if isinstance(group, str):
        return groups.get(group, {"name": group})
    return group


def inline_groups(servers):
    """The server groups declared inline with a server, by name."""
    return by_name(s.get("server_group") for s in servers or [] if isinstance(s.get("server_group"), Mapping))


def scheduler_requests(wanted, flavors, groups):
    """What the scheduler is asked for each server: its declared fields, the flavor's sizes, the group's policy."""
    return [dict(server, flavor=flavor_request(server.get("flavor"), flavors),
                 server_group=server_group(server.get("server_group"), groups)) for server in wanted]


def cloud_init(server, controller_key=None):
    """The cloud-init data of a declared server: its own fields, and the controller's key before its declared keys.

    The converge (site.yml) and the evacuation (evacuate_host.yml) both build config drives from this, so a server
    rebuilt elsewhere gets the very drive the next converge would write, and the controller can still log in.
    """
    out = dict((key, server[key]) for key in CLOUD_INIT_FIELDS if server.get(key) is not None)
    keys = list(server.get("ssh_authorized_keys") or [])
    out["ssh_authorized_keys"] = ([controller_key] if controller_key else []) + keys
    return out


# -- the hosts ------------------------------------------------------------------------------------------------------

def with_predicted_record(host, record):
    """``host`` (host_info) with the record fields a host task of the same run would write (check mode)."""
    if not record:
        return host
    return dict(host, **dict((key, record[key]) for key in RECORD_FIELDS if key in record))


def host_for_scheduler(host, requests):
    """The host as the scheduler sees it: each server with its group.

    The scheduler counts a server for its group on the host it is on. A server that does not record its group in
    its own metadata (host_info then lists it) is counted in the group it is declared in.
    """
    declared = dict((r["name"], r.get("server_group")) for r in requests)
    servers = []
    for server in host.get("servers") or []:
        group = server.get("server_group") or (declared.get(server["name"]) or {}).get("name")
        servers.append({"name": server["name"], "server_group": group})
    return dict(host, servers=servers)


def _flavor_text(flavor):
    name = flavor.get("name")
    ram = flavor.get("ram_mb", flavor.get("memory_mb"))
    sizes = "%s vCPU, %s MiB, %s GiB" % (flavor.get("vcpus"), ram, flavor.get("disk_gb"))
    return "%s (%s)" % (name, sizes) if name else sizes


def flavor_drift(server, declared_flavor):
    """Why the declared flavor cannot be applied to an existing server, or None.

    A disk never shrinks, so a server whose root disk is larger than its declared flavor's (a resize made by
    server_action and not declared since) cannot follow the declared state: that is drift, not a change to make.
    """
    if not isinstance(declared_flavor, Mapping):
        return None
    wanted, actual = declared_flavor.get("disk_gb"), server.get("disk_gb")
    if not wanted or not actual or int(wanted) >= int(actual):
        return None
    actual_flavor = {"name": server.get("flavor"), "vcpus": server.get("vcpus"), "ram_mb": server.get("memory_mb"),
                     "disk_gb": actual}
    return {
        "name": server["name"],
        "field": "flavor",
        "declared": _flavor_text(declared_flavor),
        "actual": _flavor_text(actual_flavor),
        "line": "flavor: %s" % (server.get("flavor") or "{vcpus: %s, ram_mb: %s, disk_gb: %s}" % (
            server.get("vcpus"), server.get("memory_mb"), actual)),
    }


def drift_message(drift, host):
    name = drift["name"]
    return ("drift: %s on %s runs as %s, but the declared state says %s; a disk never shrinks, so the converge "
            "cannot follow it and leaves %s alone. It was changed outside Git (a server_action resize): make Git "
            "follow it, in virtfleet_servers set %s's `%s`"
            % (name, host, drift["actual"], drift["declared"], name, name, drift["line"]))


# -- site.yml -------------------------------------------------------------------------------------------------------

def converge_plan(servers, hosts, schedule, flavors=None, server_groups=None, left_out=None, controller_key=None,
                  place_when_hosts_down=False, predicted=None):
    """The converge of site.yml, decided: where every declared server goes and what each host converges.

    ``hosts``: ``{name: host_info dict}`` of the hosts of this run (those that answered); ``left_out``: ``{name:
    inventory record or None}`` of the compute hosts that are not (down, or failed earlier); ``schedule(requests,
    hosts)``: the scheduler, returning its placements; ``predicted``: in check mode, ``{host: {"host_record":
    {...}}}`` of the records the same run would write.

    A host that is down (or failed) may hold servers nobody can see now. A declared server found on no host that is
    up may be one of them, and creating it elsewhere would make a second one: such servers wait until every host
    answers, unless ``place_when_hosts_down`` (a server on a host that is down is then created again elsewhere, as
    Nova's evacuate would).
    """
    flavors = by_name(flavors)
    groups = by_name(server_groups)
    left_out = dict(left_out or {})
    predicted = predicted or {}
    declared = declared_servers(servers)
    wanted = [s for s in declared if s["state"] != "absent"]
    requests = scheduler_requests(wanted, flavors, groups)

    scheduler_hosts = {}
    notes = []
    for name, host in hosts.items():
        host = with_predicted_record(host, (predicted.get(name) or {}).get("host_record"))
        if (predicted.get(name) or {}).get("disk_unknown"):
            # The instance pool the run would create does not exist yet, so its size is unknown: placed as if the
            # disks fit (the claim checks it on the host when the real run builds the server).
            host = dict(host, local_gb=UNKNOWN_DISK_GB, local_gb_used=0, reserved_host_disk_mb=0)
            notes.append("check mode: %s's disk is unknown until its instance pool exists; placed as if the disks "
                         "fit" % name)
        scheduler_hosts[name] = host_for_scheduler(host, requests)
    # Hosts left out stay in the scheduler's input as down, so a server that fits nowhere says so for them too.
    for name, record in left_out.items():
        scheduler_hosts[name] = dict(record or DOWN_HOST, up=False)

    where = {}
    for name, host in hosts.items():
        for server in host.get("servers") or []:
            where[server["name"]] = (name, server)

    # Drift the converge cannot follow: those servers are held back, the others go on.
    drift = []
    for request in requests:
        found = where.get(request["name"])
        if found is not None:
            item = flavor_drift(found[1], request["flavor"])
            if item is not None:
                item["host"] = found[0]
                item["msg"] = drift_message(item, found[0])
                drift.append(item)
    held = set(d["name"] for d in drift)

    placeable = set(where) | set(r["name"] for r in requests if r.get("host") and r["host"] in hosts)
    batch = [r for r in requests if r["name"] not in held]
    if left_out and not place_when_hosts_down:
        batch = [r for r in batch if r["name"] in placeable]
    batched = set(r["name"] for r in batch)
    waiting = [r["name"] for r in requests if r["name"] not in batched and r["name"] not in held]
    placements = list(schedule(batch, scheduler_hosts)) if batch else []

    placed_on = dict((p["name"], p["host"]) for p in placements)
    per_host = {}
    for name, host in hosts.items():
        here = set(s["name"] for s in host.get("servers") or [])
        mine = [s for s in wanted if placed_on.get(s["name"]) == name]
        # Servers declared absent are deleted wherever they are.
        absent_here = [s for s in declared if s["state"] == "absent" and s["name"] in here]
        items = []
        for server in mine + absent_here:
            item = dict(CONVERGE_DEFAULTS)
            item.update(server)
            item.update(ssh_authorized_keys=cloud_init(server, controller_key)["ssh_authorized_keys"],
                        server_group=server_group(server.get("server_group"), groups))
            items.append(item)
        per_host[name] = {"servers": items}

    lines = ["%s %s %s" % (p["name"], p["host"], "stays" if p.get("existing") else "placed") for p in placements]
    lines += ["left out (down or failed): %s" % name for name in sorted(left_out)]
    lines += ["waiting until every host answers: %s" % name for name in waiting]
    lines += [d["msg"] for d in drift] + notes
    return {
        "placements": placements,
        "hosts": per_host,
        "waiting": waiting,
        "left_out": sorted(left_out),
        "drift": drift,
        "declared_names": [s["name"] for s in declared],
        "lines": lines,
    }


def pending_resources(results):
    """What earlier tasks of a check-mode run would create on one host, for the servers module to plan against.

    ``results``: ``{"pools": [...], "flavors": [...], "images": [...], "networks": [...]}``, each the ``results`` of
    a looped task registered in check mode. Only the items that would change count.
    """
    def changed(kind):
        return [r for r in results.get(kind) or [] if isinstance(r, Mapping) and r.get("changed")
                and not r.get("failed") and not r.get("skipped")]

    out = {
        "pools": [r["pool"]["name"] for r in changed("pools") if (r.get("pool") or {}).get("name")],
        "flavors": [r["flavor"] for r in changed("flavors") if (r.get("flavor") or {}).get("name")],
        "images": [dict((k, r["image"].get(k)) for k in ("name", "pool", "format", "virtual_size"))
                   for r in changed("images") if (r.get("image") or {}).get("name")],
        "networks": [{"name": r["network"]["name"], "active": bool(r["network"].get("active"))}
                     for r in changed("networks") if (r.get("network") or {}).get("name")],
    }
    return dict((k, v) for k, v in out.items() if v)


# -- drain_host.yml -------------------------------------------------------------------------------------------------

def _declared_groups(server_groups, servers):
    groups = by_name(server_groups)
    groups.update(inline_groups(servers))
    return groups


def drain_plan(drain_host, hosts, schedule, server_groups=None, servers=None, partial=False):
    """The moves that empty ``drain_host``: placed first, so that a drain that cannot complete changes nothing.

    ``hosts``: ``{name: host_info dict}`` of every compute host, read now; ``schedule(requests, hosts)`` places with
    ``allow_unplaced``, returning unplaced servers with ``host`` null and their ``reasons``. Shelved servers stay:
    they do not run, and their disks go with unshelve (or shelve_offload) when their owner says so.
    """
    if drain_host not in hosts:
        raise PlanError("%s is not a compute host of the inventory (%s)" % (drain_host, ", ".join(sorted(hosts))),
                        field="drain_host")
    here = hosts[drain_host]
    if not here.get("up", True):
        raise PlanError("%s does not answer (%s): a host that is down cannot be drained; evacuate it instead "
                        "(playbooks/evacuate_host.yml)" % (drain_host, here.get("error") or "down"),
                        field="drain_host")
    groups = _declared_groups(server_groups, servers)
    to_move = [s for s in here.get("servers") or [] if s.get("vm_state") != "shelved"]
    shelved = [s["name"] for s in here.get("servers") or [] if s.get("vm_state") == "shelved"]
    requests = []
    for server in to_move:
        request = {"name": server["name"], "state": server.get("state"),
                   "flavor": {"vcpus": server.get("vcpus"), "ram_mb": server.get("memory_mb"),
                              "disk_gb": server.get("disk_gb")}}
        if server.get("server_group") in groups:
            request["server_group"] = groups[server["server_group"]]
        if server.get("availability_zone"):
            request["availability_zone"] = server["availability_zone"]
        requests.append(request)
    candidates = dict((name, host) for name, host in hosts.items() if name != drain_host)
    placements = list(schedule(requests, candidates)) if requests else []
    by_request = dict((r["name"], r) for r in requests)
    moves, stays = [], []
    for placement in placements:
        request = by_request[placement["name"]]
        if placement.get("host"):
            move = {"name": placement["name"], "host": placement["host"],
                    # Running servers move live; stopped ones cold.
                    "action": "live_migrate" if request.get("state") == "running" else "migrate"}
            if request.get("server_group"):
                move["server_group"] = request["server_group"]
            moves.append(move)
        else:
            stays.append({"name": placement["name"], "reasons": placement.get("reasons") or {}})
    lines = ["%s -> %s (%s)" % (m["name"], m["host"], m["action"].replace("_", " ")) for m in moves]
    lines += ["%s stays: %s" % (s["name"], _reasons_text(s["reasons"])) for s in stays]
    lines += ["%s stays: shelved" % name for name in shelved]
    result = {"moves": moves, "stays": stays, "shelved": shelved, "lines": lines,
              "complete": not stays, "proceed": not stays or bool(partial and moves)}
    if stays and not partial:
        result["msg"] = ("cannot drain %s: no other host can take %s; nothing was changed (%s is still enabled "
                         "and keeps its servers). Make room or relax the group policy, or run with "
                         "-e drain_partial=true to disable the host and move only what can move"
                         % (drain_host, "; ".join("%s (%s)" % (s["name"], _reasons_text(s["reasons"]))
                                                  for s in stays), drain_host))
    elif stays and not moves:
        result["msg"] = ("cannot drain %s: no server of it can move (%s); nothing was changed (%s is still "
                         "enabled)" % (drain_host, "; ".join("%s: %s" % (s["name"], _reasons_text(s["reasons"]))
                                                             for s in stays), drain_host))
    return result


def _reasons_text(reasons):
    return ", ".join("%s: %s" % (host, why) for host, why in sorted(reasons.items())) or "no host"


# -- evacuate_host.yml ----------------------------------------------------------------------------------------------

def _parse_time(text):
    if not text:
        return None
    try:
        return datetime.datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return None


def age_text(seconds):
    seconds = int(max(seconds, 0))
    if seconds < 120:
        return "%d s" % seconds
    if seconds < 7200:
        return "%d min" % (seconds // 60)
    if seconds < 2 * 86400:
        return "%.1f h" % (seconds / 3600.0)
    return "%.1f days" % (seconds / 86400.0)


def evacuate_plan(evacuate_host, hosts, schedule, evacuate_servers=None, last_known=None, servers=None,
                  server_groups=None, controller_key=None, now=None):
    """The rebuilds that bring a dead host's servers back elsewhere, from the freshest knowledge there is.

    ``hosts``: ``{name: host_info dict}`` of every compute host, read now (the dead one is down). Which servers the
    dead host held comes from ``evacuate_servers`` (a list the operator passes, server_info views) or else from
    ``last_known`` (``{"read_at": ISO time, "servers": [...]}``: the inventory's last answer from that host, kept in
    its cache). Servers that run on a host that answers now (moved since the list was written) are left alone, and
    declared servers found nowhere are named, since the list cannot say whether the dead host held them.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if evacuate_host not in hosts:
        raise PlanError("%s is not a compute host of the inventory (%s)" % (evacuate_host, ", ".join(sorted(hosts))),
                        field="evacuate_host")
    if hosts[evacuate_host].get("up", True):
        raise PlanError("%s is up; evacuate is for a host that is down. Use playbooks/drain_host.yml"
                        % evacuate_host, field="evacuate_host")
    notes = []
    if evacuate_servers is not None:
        listed, source = list(evacuate_servers), "evacuate_servers (given on the command line)"
        notes.append("the servers of %s come from evacuate_servers, as given" % evacuate_host)
    elif last_known and last_known.get("servers") is not None:
        listed = list(last_known["servers"])
        read_at = _parse_time(last_known.get("read_at"))
        age = age_text((now - read_at).total_seconds()) if read_at else "an unknown time"
        source = "the inventory cache (%s answered last at %s, %s ago)" % (
            evacuate_host, last_known.get("read_at") or "?", age)
        notes.append("the servers of %s come from %s; servers created there since are not in it"
                     % (evacuate_host, source))
    else:
        raise PlanError(
            "nothing says which servers %s held: it does not answer, and the inventory has no last answer from it. "
            "Pass the list with -e @last_known.json (evacuate_servers: what virtfleet.compute.server_info returned "
            "for it), or turn on the inventory cache (cache: true) so that the inventory keeps each host's last "
            "answer" % evacuate_host, field="evacuate_servers")

    elsewhere = {}
    for name, host in hosts.items():
        if name != evacuate_host and host.get("up", True):
            for server in host.get("servers") or []:
                elsewhere[server["name"]] = name
    declared = by_name(declared_servers(servers))
    groups = _declared_groups(server_groups, servers)

    to_rebuild, moved = [], []
    for server in listed:
        if server.get("name") in elsewhere:
            moved.append({"name": server["name"], "host": elsewhere[server["name"]]})
        elif declared.get(server.get("name"), {}).get("state") == "absent":
            notes.append("%s is declared absent: not evacuated" % server["name"])
        else:
            to_rebuild.append(server)
    notes += ["%s runs on %s now (moved after the list was written): left alone" % (m["name"], m["host"])
              for m in moved]
    listed_names = set(s.get("name") for s in listed)
    unknown = sorted(name for name, s in declared.items() if s["state"] != "absent" and name not in elsewhere
                     and name not in listed_names and s.get("host") in (None, evacuate_host))
    if unknown:
        notes.append("declared but found on no host that answers and not in the list: %s; if %s held them, pass "
                     "them with evacuate_servers (or let site.yml create them anew with "
                     "-e virtfleet_place_when_hosts_down=true)" % (", ".join(unknown), evacuate_host))

    requests = []
    for server in to_rebuild:
        request = {"name": server["name"], "flavor": server.get("flavor") or {}}
        if server.get("server_group") in groups:
            request["server_group"] = groups[server["server_group"]]
        if server.get("availability_zone"):
            request["availability_zone"] = server["availability_zone"]
        requests.append(request)
    candidates = dict((name, host) for name, host in hosts.items() if name != evacuate_host)
    placements = list(schedule(requests, candidates)) if requests else []
    by_server = dict((s["name"], s) for s in to_rebuild)
    rebuilds = []
    for placement in placements:
        server = by_server[placement["name"]]
        rebuild = {"name": server["name"], "host": placement["host"], "server": server}
        if server.get("server_group") in groups:
            rebuild["server_group"] = groups[server["server_group"]]
        # User data and SSH keys died with the host's config drives: they come back from the declared server.
        if server["name"] in declared:
            rebuild.update(cloud_init(declared[server["name"]], controller_key))
        elif controller_key:
            notes.append("%s is not declared: its config drive gets the controller's key only" % server["name"])
            rebuild["ssh_authorized_keys"] = [controller_key]
        rebuilds.append(rebuild)
    lines = ["%s -> %s (rebuilt from its image)" % (r["name"], r["host"]) for r in rebuilds] + notes
    return {"rebuilds": rebuilds, "moved": moved, "unknown": unknown, "source": source, "lines": lines}
