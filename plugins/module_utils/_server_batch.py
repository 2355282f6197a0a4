# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Many servers on one host in one call: the ``servers`` module (DESIGN.md principle 5).

Every item is reconciled by ``converge_server()``, the ``server`` module's own code, so one server behaves the same
whichever module declares it. What the batch adds:

* every item's arguments are checked before anything changes, and a bad item fails the call with the path of every
  error and nothing changed (DESIGN.md principle 3);
* prune: managed servers on the host that are declared nowhere (neither in this call nor in ``declared_names``, the
  names declared for the whole cloud) are deleted, optionally only those matching ``prune_selector``. A domain
  without our metadata is never a candidate. Check mode lists exactly the servers a real run would delete;
* one item failing does not stop the others (unless ``stop_on_error``); the call fails at the end, naming them;
* servers are started without waiting, then waited for together, so a batch waits about as long as its slowest
  server, not the sum of all of them.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time

from ansible_collections.virtfleet.compute.plugins.module_utils._domain import Domain
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import (
    HostUnavailableError,
    MissingLibraryError,
    ValidationError,
    VirtfleetError,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._module import WAIT_ARGS
from ansible_collections.virtfleet.compute.plugins.module_utils._server import (
    SERVER_ARGUMENT_SPEC,
    ServerRequest,
    converge_server,
    read_server,
    server_view,
    wait_until_ready,
)

# One server's options: exactly the server module's (declared once in _server.py), plus its wait options.
SERVER_OPTIONS = dict(SERVER_ARGUMENT_SPEC, **WAIT_ARGS)
# Fields of a declared server (schemas/server.schema.json) that say where it should run. They are decided before
# this module runs (the scheduler, the play's host); accepted so that declared entries can be passed unchanged.
PLACEMENT_OPTIONS = dict(
    host=dict(type="str"),
    hints=dict(type="dict"),
)
ITEM_OPTIONS = dict(SERVER_OPTIONS, **PLACEMENT_OPTIONS)

PRUNE_SELECTOR_OPTIONS = dict(
    tags=dict(type="list", elements="str"),
    metadata=dict(type="dict"),
)

RESULTS = ("created", "changed", "deleted", "unchanged", "failed", "skipped")


# -- input ------------------------------------------------------------------------------------------------------------

def _validator():
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

    return ArgumentSpecValidator(ITEM_OPTIONS)


def _normalize_item(item):
    """A declared server as the argument spec wants it: a network given by its name alone becomes a dict."""
    if not isinstance(item, dict):
        return item
    item = dict(item)
    if isinstance(item.get("networks"), list):
        item["networks"] = [{"network": n} if isinstance(n, str) else n for n in item["networks"]]
    return item


def validate_items(items):
    """Check every item's arguments; returns ``(params list, errors)`` with errors as ``servers[i]...: why`` lines."""
    validator = _validator()
    params_list = []
    errors = []
    seen = {}
    for index, item in enumerate(items or []):
        where = "servers[%d]" % index
        if not isinstance(item, dict):
            errors.append("%s: must be a dict with the options of a server, got %s" % (where, type(item).__name__))
            continue
        checked = validator.validate(_normalize_item(item))
        if checked.error_messages:
            errors.extend("%s: %s" % (where, message) for message in checked.error_messages)
            continue
        params = checked.validated_parameters
        name = params["name"]
        if name in seen:
            errors.append("%s.name: %s is listed twice (also servers[%d])" % (where, name, seen[name]))
            continue
        seen[name] = index
        try:
            # The server module's own validation (name, flavor, networks, tags...), before anything changes.
            ServerRequest(params)
        except VirtfleetError as exc:
            errors.append("%s%s: %s" % (where, "." + exc.field if exc.field else "", exc.message))
            continue
        params_list.append(params)
    return params_list, errors


def _text(value):
    # Metadata is stored as strings, booleans as true/false (see _server._string_map).
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class Selector:
    """Which managed servers a prune may delete: all of them, or those carrying every tag and metadata pair given."""

    def __init__(self, spec):
        spec = spec or {}
        self.tags = sorted(set(spec.get("tags") or []))
        self.metadata = dict((str(k), _text(v)) for k, v in (spec.get("metadata") or {}).items())

    @property
    def everything(self):
        return not self.tags and not self.metadata

    def matches(self, record):
        if not set(self.tags) <= set(record.tags or []):
            return False
        metadata = record.metadata or {}
        return all(metadata.get(k) == v for k, v in self.metadata.items())

    def describe(self):
        parts = ["tag %s" % t for t in self.tags] + ["metadata %s=%s" % item for item in sorted(self.metadata.items())]
        return " and ".join(parts) if parts else "any managed server"


# -- the host's servers ------------------------------------------------------------------------------------------------

def survey_host(client):
    """``(managed, unmanaged)``: {name: record} of the managed servers and the names of the other domains."""
    managed = {}
    unmanaged = []
    for dom in client.list_domains():
        xml = client.domain_xml_if_exists(dom)
        if xml is None:
            continue  # undefined since it was listed
        domain = Domain(xml)
        if domain.managed:
            managed[domain.name] = domain.record
        else:
            unmanaged.append(domain.name)
    return managed, sorted(unmanaged)


def plan_prune(managed, declared_here, declared_names, selector):
    """The servers a prune deletes, and the managed servers it leaves: ``(prune, misplaced, unselected)``.

    ``misplaced``: declared (in ``declared_names``) but not for this host; a prune never deletes them: moving a
    server between hosts is a migration, not a delete and a create. ``unselected``: declared nowhere, outside the
    selector.
    """
    prune, misplaced, unselected = [], [], []
    for name in sorted(managed):
        if name in declared_here:
            continue
        if name in declared_names:
            misplaced.append(name)
        elif selector.matches(managed[name]):
            prune.append(name)
        else:
            unselected.append(name)
    return prune, misplaced, unselected


# -- one item ---------------------------------------------------------------------------------------------------------

def _classify(params, out):
    if not out["changed"]:
        return "unchanged"
    if params.get("state") == "absent":
        return "deleted"
    return "created" if not out.get("diff", {}).get("before") else "changed"


def _converge_one(client, index, params, check_mode, pruned=False, pending=None):
    """One server through converge_server(), never raising for the server's own failure."""
    item = {"name": params["name"], "index": index, "pruned": pruned, "state": params.get("state") or "running"}
    try:
        out = converge_server(client, params, check_mode=check_mode, diff_mode=True, defer_wait=True,
                              pending=pending)
    except (MissingLibraryError, HostUnavailableError):
        raise  # nothing else can work either
    except VirtfleetError as exc:
        done = exc.details.get("done") or []
        rolled_back = exc.details.get("rolled_back") or []
        item.update(result="failed", failed=True, changed=bool(set(done) - set(rolled_back)), actions=list(done),
                    msg=exc.message)
        if exc.field:
            item["field"] = exc.field
        if exc.details:
            item["details"] = exc.details
        return item, None
    except Exception as exc:  # pylint: disable=broad-except
        # An unexpected error in one server must not hide the results of the others.
        item.update(result="failed", failed=True, changed=False, actions=[], msg="%s: %s" % (type(exc).__name__, exc))
        return item, None
    item.update(result=_classify(params, out), failed=False, changed=out["changed"], actions=out["actions"],
                server=out.get("server") or {})
    # Not part of the module's result: _wait_all needs it to tell a renewed DHCP lease from an old one.
    item["_leases_before"] = out.get("leases_before")
    if out.get("warnings"):
        item["warnings"] = out["warnings"]
    return item, out.get("diff")


def _wait_all(client, pending, items):
    """Wait for every started server together; each one's timeout counts from the end of its own converge."""
    for index, deadline in pending:
        item = items[index]
        try:
            actual = read_server(client, item["name"])
            nics = actual.domain.managed_nics() if actual is not None else []
            item["waited"] = wait_until_ready(client, item["name"], nics, max(deadline - time.monotonic(), 0.1),
                                              item.get("_leases_before"))
        except (MissingLibraryError, HostUnavailableError):
            raise
        except VirtfleetError as exc:
            item.update(result="failed", failed=True, msg="%s (it was %s)" % (exc.message, item["result"]))


# -- the batch --------------------------------------------------------------------------------------------------------

def converge_servers(client, params, check_mode=False, diff_mode=False):
    """The ``servers`` module's whole job; returns the module's result dict."""
    items_params, errors = validate_items(params.get("servers"))
    declared_here = set(p["name"] for p in items_params)
    declared_names = set(params.get("declared_names") or []) | declared_here
    selector = Selector(params.get("prune_selector"))
    prune = bool(params.get("prune"))
    if prune and not declared_names and selector.everything:
        errors.append("prune: nothing is declared (no servers, no declared_names) and no prune_selector is set, so a "
                      "prune would delete every managed server of the host; declare the servers to delete with "
                      "state: absent instead")
    if errors:
        raise ValidationError("%d error%s in the servers to converge; nothing was changed:\n%s"
                              % (len(errors), "" if len(errors) == 1 else "s", "\n".join(errors)), errors=errors)

    managed, unmanaged = survey_host(client)
    to_prune, misplaced, unselected = plan_prune(managed, declared_here, declared_names, selector)
    undeclared = sorted(set(to_prune) | set(unselected))
    if not prune:
        to_prune = []
    limit = params.get("prune_max")
    if prune and limit is not None and len(to_prune) > limit:
        raise ValidationError(
            "prune would delete %d servers (%s), more than prune_max %d; nothing was changed. Check the declared "
            "state, or raise prune_max" % (len(to_prune), ", ".join(to_prune), limit), field="prune_max",
            prune=to_prune)

    stop_on_error = bool(params.get("stop_on_error"))
    results = []
    diffs = []
    pending = []
    stopped = False
    # Prunes first: they free capacity, names and fixed IPs the declared servers may need.
    work = [(None, {"name": name, "state": "absent"}, True) for name in to_prune]
    work += [(index, p, False) for index, p in enumerate(items_params)]
    for index, item_params, pruned in work:
        if stopped:
            results.append({"name": item_params["name"], "index": index, "pruned": pruned, "result": "skipped",
                            "failed": False, "changed": False, "actions": [],
                            "state": item_params.get("state") or "running",
                            "msg": "not attempted: an earlier server failed and stop_on_error is set"})
            continue
        item, diff = _converge_one(client, index, item_params, check_mode, pruned=pruned,
                                   pending=params.get("pending"))
        results.append(item)
        if diff_mode and diff is not None and item["changed"]:
            diffs.append({"before_header": "server %s" % item["name"], "after_header": "server %s" % item["name"],
                          "before": diff.get("before") or {}, "after": diff.get("after") or {}})
        if item["failed"]:
            stopped = stop_on_error
        elif (not check_mode and item_params.get("wait") and item_params.get("state") != "absent"
              and item["server"].get("state") == "running"):
            pending.append((len(results) - 1, time.monotonic() + (item_params.get("wait_timeout") or 600)))
    if pending:
        _wait_all(client, pending, results)
    if not check_mode:
        hypervisor = client.hostname()
        for item in results:
            if item["state"] != "absent" and item["result"] not in ("skipped",):
                actual = read_server(client, item["name"])
                if actual is not None and actual.managed:
                    item["server"] = server_view(actual, hypervisor=hypervisor)

    for item in results:
        item.pop("_leases_before", None)
    summary = dict((word, []) for word in RESULTS)
    for item in results:
        summary[item["result"]].append(item["name"])
    result = {
        "changed": any(item["changed"] for item in results),
        "results": results,
        "summary": summary,
        "pruned": [item["name"] for item in results if item["pruned"] and item["result"] == "deleted"],
        "undeclared": undeclared,
        "misplaced": misplaced,
        "unmanaged": unmanaged,
        "warnings": [w for item in results for w in item.get("warnings", [])],
    }
    if diff_mode:
        result["diff"] = diffs
    failed = [item for item in results if item["failed"]]
    if failed:
        result["failed"] = True
        result["msg"] = "%d of %d servers failed: %s" % (
            len(failed), len(results), "; ".join("%s: %s" % (item["name"], item["msg"]) for item in failed))
    else:
        counts = ", ".join("%d %s" % (len(summary[w]), w) for w in RESULTS if summary[w])
        result["msg"] = "%s%s" % (counts or "no servers", " (check mode)" if check_mode else "")
    return result
