# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Declarative libvirt storage pools (directory pools): the places images, instance disks and records live."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os.path
import xml.etree.ElementTree as ET

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ConflictError, ValidationError
from ansible_collections.virtfleet.compute.plugins.module_utils._limits import validate_name
from ansible_collections.virtfleet.compute.plugins.module_utils._plan import Plan

POOL_TYPES = ("dir",)


def pool_view(client, pool):
    root = ET.fromstring(client.pool_xml(pool))
    view = {
        "name": client.pool_name(pool),
        "type": root.get("type"),
        "path": (root.findtext("target/path") or "").rstrip("/") or None,
        "active": client.pool_active(pool),
        "autostart": client.pool_autostart(pool),
    }
    if view["active"]:
        info = client.pool_info(pool)
        view.update(capacity=info["capacity"], allocation=info["allocation"], available=info["available"],
                    volumes=len(client.list_volumes(pool)))
    return view


def _diff_view(view):
    if not view:
        return {}
    return dict((k, view[k]) for k in ("name", "type", "path", "active", "autostart"))


def plan_pool(client, params):
    state = params.get("state") or "present"
    name = params["name"]
    # Checked before the host is asked anything, so check mode refuses what libvirt would (a NUL byte, a slash) or
    # what other tools would misread; an existing pool of any name can still be removed.
    if state != "absent" or not isinstance(name, str) or "\x00" in name:
        validate_name(name, "name", "pool name")
    pool = client.find_pool(name)
    plan = Plan()
    plan.before = _diff_view(pool_view(client, pool)) if pool is not None else {}
    if state == "absent":
        if pool is not None:
            if client.pool_active(pool):
                plan.add("stop pool %s" % name, lambda: client.stop_pool(pool))
            plan.add("undefine pool %s (its files stay on disk)" % name, lambda: client.undefine_pool(pool))
        plan.after = {}
        return plan, pool

    pool_type = params.get("type") or "dir"
    if pool_type not in POOL_TYPES:
        raise ValidationError("must be one of %s" % ", ".join(POOL_TYPES), field="type")
    path = params.get("path")
    if path is not None:
        if not os.path.isabs(path):
            raise ValidationError("must be an absolute path on the host, got %r" % path, field="path")
        path = os.path.normpath(path)
    autostart = params.get("autostart", True)

    holder = {"pool": pool}
    if pool is None:
        if path is None:
            raise ValidationError("is required to create pool %s" % name, field="path")
        root = ET.Element("pool", {"type": pool_type})
        ET.SubElement(root, "name").text = name
        ET.SubElement(ET.SubElement(root, "target"), "path").text = path
        xml = ET.tostring(root, encoding="unicode")

        def define():
            holder["pool"] = client.define_pool(xml)

        plan.add("define %s pool %s at %s" % (pool_type, name, path), define,
                 undo=lambda: client.undefine_pool(holder["pool"]))
        plan.add("build pool %s (create its directory)" % name, lambda: client.build_pool(holder["pool"]))
        plan.add("start pool %s" % name, lambda: client.start_pool(holder["pool"]),
                 undo=lambda: client.stop_pool(holder["pool"]))
        if autostart:
            plan.add("enable autostart of pool %s" % name, lambda: client.set_pool_autostart(holder["pool"], True))
        plan.after = {"name": name, "type": pool_type, "path": path, "active": True, "autostart": bool(autostart)}
        return plan, pool

    current = pool_view(client, pool)
    if current["type"] != pool_type:
        raise ConflictError("pool %s is a %s pool, not %s; libvirt cannot change a pool's type: remove it and "
                            "define it again" % (name, current["type"], pool_type), field="type")
    if path is not None and current["path"] != path:
        raise ConflictError("pool %s is at %s; moving it to %s would strand its volumes. Move the files and define "
                            "the pool again, or keep the path" % (name, current["path"], path), field="path")
    if not current["active"]:
        plan.add("start pool %s" % name, lambda: client.start_pool(pool))
    if current["autostart"] != bool(autostart):
        plan.add("%s autostart of pool %s" % ("enable" if autostart else "disable", name),
                 lambda: client.set_pool_autostart(pool, bool(autostart)))
    plan.after = dict(plan.before, active=True, autostart=bool(autostart))
    return plan, pool


def converge_pool(client, params, check_mode=False, diff_mode=False):
    plan, _pool = plan_pool(client, params)
    plan.execute(check_mode)
    result = {"changed": plan.changed, "actions": plan.actions}
    if diff_mode:
        result["diff"] = plan.diff()
    if params.get("state") == "absent" or check_mode:
        result["pool"] = plan.after
    else:
        result["pool"] = pool_view(client, client.find_pool(params["name"]))
    return result
