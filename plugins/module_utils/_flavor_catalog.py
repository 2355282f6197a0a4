# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The flavor catalog of a host: Nova's flavor list, kept on the host itself (DESIGN.md principle 2).

The catalog is one JSON document (key ``flavors`` of the records pool, see _records): ``{"version": 1, "flavors":
{name: flavor}}``. One document, so listing every flavor costs one volume read however many there are. Writers
take the host's ``flavors`` lock (see _claims.RecordLock) and re-read the document under it, so two runs changing
different flavors at the same time both keep their change.

A server keeps a snapshot of its flavor in its own metadata. Changing a flavor in the catalog never changes a
server: the server converges to the new flavor only when its declared spec asks for it (Nova's resize). The
``flavor`` module reports which servers then run an outdated snapshot; deleting a flavor that servers use is
refused, naming them, unless forced.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.virtfleet.compute.plugins.module_utils._claims import RecordLock
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import (
    ConflictError,
    NotFoundError,
    ValidationError,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._flavor import (
    FLAVOR_FIELDS,
    Flavor,
    validate_flavor_name,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._host_info import scan_domains
from ansible_collections.virtfleet.compute.plugins.module_utils._plan import Plan
from ansible_collections.virtfleet.compute.plugins.module_utils._records import RecordStore

CATALOG_KEY = "flavors"
CATALOG_VERSION = 1
SIZE_FIELDS = ("vcpus", "ram_mb", "disk_gb", "swap_mb", "ephemeral_gb")
# Fields compared between a server's snapshot and the catalog: what changes a server. A new description does not.
_SERVER_FIELDS = SIZE_FIELDS + ("extra_specs",)


# -- the catalog --------------------------------------------------------------------------------------------------

def read_catalog(client):
    """Every flavor of the host's catalog: ``{name: Flavor}`` (empty without a catalog)."""
    document = RecordStore(client).read(CATALOG_KEY) or {}
    flavors = {}
    for name, data in (document.get("flavors") or {}).items():
        # Stored flavors were validated when written; from_dict again keeps a hand-edited catalog honest.
        flavors[name] = Flavor.from_dict(dict(data, name=name), field="flavors.%s" % name)
    return flavors


def get_flavor(client, name):
    """The catalog's flavor called ``name``, or None."""
    return read_catalog(client).get(name)


def list_flavors(client, names=None):
    """The catalog's flavors sorted by name (only those in ``names`` when given; unknown names are skipped)."""
    catalog = read_catalog(client)
    wanted = sorted(catalog) if names is None else [n for n in sorted(set(names)) if n in catalog]
    return [catalog[name] for name in wanted]


def put_flavor(client, flavor):
    """Add or replace one flavor, under the host's flavors lock (other flavors are kept as they are now)."""
    store = RecordStore(client)
    store.ensure_pool()
    with RecordLock(client, "flavors"):
        document = store.read(CATALOG_KEY) or {}
        flavors = dict(document.get("flavors") or {})
        data = flavor.to_dict()
        del data["name"]
        flavors[flavor.name] = data
        store.write(CATALOG_KEY, {"version": CATALOG_VERSION, "flavors": flavors})


def delete_flavor(client, name):
    """Remove one flavor from the catalog; False if it was not there."""
    store = RecordStore(client)
    if not store.exists():
        return False
    with RecordLock(client, "flavors"):
        document = store.read(CATALOG_KEY) or {}
        flavors = dict(document.get("flavors") or {})
        if name not in flavors:
            return False
        del flavors[name]
        store.write(CATALOG_KEY, {"version": CATALOG_VERSION, "flavors": flavors})
    return True


def resolve_flavor(client, value, field="flavor"):
    """A server's ``flavor`` option as a Flavor: a name is looked up in the host's catalog, a dict validated inline.

    The lookup happens on the host the server is built on, so the same name may mean different sizes on hosts
    whose catalogs differ; the server's snapshot records what it got.
    """
    if isinstance(value, Flavor):
        return value
    if isinstance(value, dict):
        return Flavor.from_dict(value, field=field)
    if isinstance(value, str) and value:
        catalog = read_catalog(client)
        if value in catalog:
            return catalog[value]
        known = ", ".join(sorted(catalog)) or "none: the catalog of this host is empty"
        raise NotFoundError("flavor %r is not in the flavor catalog of %s (known flavors: %s); add it with the "
                            "flavor module or give the flavor inline as a dict" % (value, client.uri, known),
                            field=field)
    raise ValidationError("must be a flavor name from the host's catalog or a dict with vcpus, ram_mb and disk_gb",
                          field=field)


# -- servers and flavors ------------------------------------------------------------------------------------------

def snapshot_differences(snapshot, flavor):
    """The fields in which a server's flavor snapshot differs from ``flavor`` (what a resize would change)."""
    if snapshot is None or flavor is None:
        return []
    return [f for f in _SERVER_FIELDS if getattr(snapshot, f) != getattr(flavor, f)]


def servers_by_flavor(client):
    """``{flavor name: [(server name, snapshot Flavor)]}`` for every managed server of the host."""
    out = {}
    for usage in scan_domains(client):
        if usage.managed and usage.flavor is not None and usage.flavor.name:
            out.setdefault(usage.flavor.name, []).append((usage.name, usage.flavor))
    for servers in out.values():
        servers.sort(key=lambda item: item[0])
    return out


def flavor_view(flavor, servers=None):
    view = flavor.to_dict()
    if servers is not None:
        view["servers"] = [name for name, _snapshot in servers]
        view["outdated_servers"] = [name for name, snapshot in servers if snapshot_differences(snapshot, flavor)]
    return view


# -- the flavor module ----------------------------------------------------------------------------------------------

def plan_flavor(client, params):
    """Compare the declared flavor with the catalog's, once; returns (plan, the flavor after the plan or None)."""
    name = validate_flavor_name(params.get("name"), field="name")
    state = params.get("state") or "present"
    if state not in ("present", "absent"):
        raise ValidationError("must be present or absent", field="state")
    current = get_flavor(client, name)
    plan = Plan()
    plan.actual = current
    plan.before = current.to_dict() if current is not None else {}
    if state == "absent":
        plan.after = {}
        if current is None:
            return plan, None
        users = [server for server, _snapshot in servers_by_flavor(client).get(name, [])]
        if users and not params.get("force"):
            raise ConflictError(
                "flavor %s is used by %d server(s) on %s: %s. Delete or resize them first, or set force: true (the "
                "servers keep their snapshot of the flavor)" % (name, len(users), client.uri, ", ".join(users)),
                field="name", servers=users)
        label = "delete flavor %s" % name
        if users:
            label += " (still used by %s: they keep their snapshot)" % ", ".join(users)
            plan.warnings.append("flavor %s was deleted while %s still use it" % (name, ", ".join(users)))
        plan.add(label, lambda: delete_flavor(client, name))
        return plan, None

    wanted = _desired(name, params, current)
    plan.after = wanted.to_dict()
    changed = [f for f in FLAVOR_FIELDS if plan.before.get(f) != plan.after.get(f)]
    if not changed:
        return plan, wanted
    store = RecordStore(client)
    if not store.exists():
        plan.add("create storage pool %s for the flavor catalog" % store.pool_name, store.ensure_pool)
    if current is None:
        label = "add flavor %s (%s)" % (name, _size_text(wanted))
    else:
        label = "update flavor %s (%s)" % (name, ", ".join(_change_text(f, plan.before[f], plan.after[f])
                                                           for f in changed))
    plan.add(label, lambda: put_flavor(client, wanted))
    if current is not None and any(f in _SERVER_FIELDS for f in changed):
        outdated = [server for server, snapshot in servers_by_flavor(client).get(name, [])
                    if snapshot_differences(snapshot, wanted)]
        if outdated:
            plan.warnings.append(
                "flavor %s changed; %s keep their current size until their declared spec asks for the new one "
                "(a server never changes when its flavor does)" % (name, ", ".join(outdated)))
    return plan, wanted


def converge_flavor(client, params, check_mode=False, diff_mode=False):
    """The ``flavor`` module's whole job."""
    plan, wanted = plan_flavor(client, params)
    plan.execute(check_mode)
    result = {"changed": plan.changed, "actions": plan.actions, "warnings": list(plan.warnings),
              "flavor": wanted.to_dict() if wanted is not None else {}}
    if diff_mode:
        result["diff"] = plan.diff()
    return result


def flavor_info(client, params):
    """The ``flavor_info`` module's whole job: never fails because a flavor does not exist."""
    names = params.get("names")
    flavors = list_flavors(client, names or None)
    usage = servers_by_flavor(client) if params.get("include_servers") else None
    return {"changed": False,
            "flavors": [flavor_view(f, usage.get(f.name, []) if usage is not None else None) for f in flavors]}


def _desired(name, params, current):
    """The declared flavor: the given fields, and the current flavor's for those left out."""
    data = current.to_dict() if current is not None else {}
    data["name"] = name
    for field in FLAVOR_FIELDS:
        if field == "name" or params.get(field) is None:
            continue
        data[field] = params[field]
    if data.get("description") == "":
        data["description"] = None
    if current is None:
        missing = [f for f in ("vcpus", "ram_mb", "disk_gb") if data.get(f) is None]
        if missing:
            listed = missing[0] if len(missing) == 1 else "%s and %s" % (", ".join(missing[:-1]), missing[-1])
            raise ValidationError("%s %s required to add flavor %s" % (listed, "is" if len(missing) == 1 else "are",
                                                                       name), field=missing[0])
    return Flavor.from_dict(data, field="")


def _size_text(flavor):
    text = "%d vCPU, %d MiB RAM, %d GiB disk" % (flavor.vcpus, flavor.ram_mb, flavor.disk_gb)
    if flavor.ephemeral_gb:
        text += ", %d GiB ephemeral" % flavor.ephemeral_gb
    if flavor.swap_mb:
        text += ", %d MiB swap" % flavor.swap_mb
    if flavor.extra_specs:
        text += ", %d extra spec(s)" % len(flavor.extra_specs)
    return text


def _change_text(field, old, new):
    if field == "extra_specs":
        old, new = old or {}, new or {}
        parts = ["+%s" % k for k in sorted(set(new) - set(old))]
        parts += ["-%s" % k for k in sorted(set(old) - set(new))]
        parts += ["%s %s -> %s" % (k, old[k], new[k]) for k in sorted(set(old) & set(new)) if old[k] != new[k]]
        return "extra_specs: %s" % ", ".join(parts)
    return "%s %s -> %s" % (field, old, new)
