# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The converge_plan action: site.yml's decisions (requests, placements, each host's servers) on the controller.

The logic is plugin_utils/_cloud_plan.converge_plan(); this file gathers its inputs from the play: the host_info
result each host of the play registered, the inventory's record of the compute hosts left out, and in check mode
the results the earlier tasks of the same run registered (the host records, pools, flavors, images and networks
they would create), so that later steps plan against them instead of failing on what does not exist yet.
"""

from __future__ import annotations

from ansible_collections.virtfleet.compute.plugins.plugin_utils._cloud_plan import (
    PlanError,
    converge_plan,
    pending_resources,
)
from ansible_collections.virtfleet.compute.plugins.plugin_utils._plan_action import PlanAction

PENDING_KINDS = ("pools", "flavors", "images", "networks")
WHAT = {"pools": "the storage pool creation", "flavors": "the flavor catalog update", "images": "the image import",
        "networks": "the network creation"}


class ActionModule(PlanAction):
    ARGUMENT_SPEC = dict(
        servers=dict(type="list", elements="dict", default=[]),
        flavors=dict(type="list", elements="dict", default=[]),
        server_groups=dict(type="list", elements="dict", default=[]),
        controller_key=dict(type="str", no_log=False),
        scheduler_options=dict(type="dict", default={}),
        place_when_hosts_down=dict(type="bool", default=False),
        compute_group=dict(type="str", default="compute"),
        registered=dict(type="dict", required=True, options=dict(
            host_info=dict(type="str", required=True),
            host_record=dict(type="str"),
            pools=dict(type="str"),
            flavors=dict(type="str"),
            images=dict(type="str"),
            networks=dict(type="str"),
        )),
    )

    def plan(self, args, task_vars):
        registered = args["registered"]
        play_hosts = list(task_vars.get("ansible_play_hosts") or [])
        compute = list((task_vars.get("groups") or {}).get(args["compute_group"]) or [])
        hosts = {}
        for name in play_hosts:
            info = self.hostvar(task_vars, name, registered["host_info"]) or {}
            if not isinstance(info.get("host"), dict):
                raise PlanError("%s has no host_info result in %s: read the host before planning"
                                % (name, registered["host_info"]), field="registered.host_info")
            hosts[name] = info["host"]
        left_out = dict((name, self.hostvar(task_vars, name, "virtfleet_host"))
                        for name in compute if name not in hosts)

        predicted, pending = {}, {}
        if self.check_mode:
            for name in hosts:
                record = self.hostvar(task_vars, name, registered.get("host_record") or "", {}) or {}
                if record.get("changed") and isinstance(record.get("host"), dict):
                    predicted[name] = {"host_record": record["host"]}
                results = dict((kind, (self.hostvar(task_vars, name, registered.get(kind) or "", {}) or {})
                                .get("results")) for kind in PENDING_KINDS)
                pending[name] = pending_resources(results)
                pool = hosts[name].get("instance_pool") or {}
                if not pool.get("found", True) and pool.get("name") in pending[name].get("pools", []):
                    predicted.setdefault(name, {})["disk_unknown"] = True

        controller_key = args.get("controller_key") or None
        notes = []
        if not controller_key:
            if not self.check_mode:
                raise PlanError("controller_key is empty: the servers would get no key the controller can log in "
                                "with (is virtfleet_ssh_key set, and its .pub file there?)", field="controller_key")
            # The first play creates the key pair, but not in check mode.
            notes.append("check mode: the controller's SSH key does not exist yet (the first play creates it); the "
                         "config drives are predicted without it")

        plan = converge_plan(
            args["servers"], hosts, self.scheduler(task_vars, args["scheduler_options"]),
            flavors=args["flavors"], server_groups=args["server_groups"], left_out=left_out,
            controller_key=controller_key, place_when_hosts_down=args["place_when_hosts_down"],
            predicted=predicted)
        for name, entry in plan["hosts"].items():
            entry["pending"] = pending.get(name) or {}
            for kind in PENDING_KINDS:
                for item in entry["pending"].get(kind) or []:
                    notes.append("check mode: %s's servers that need %s are planned after %s above"
                                 % (name, item if isinstance(item, str) else item.get("name"), WHAT[kind]))
        for name, entry in predicted.items():
            if entry.get("host_record"):
                notes.append("check mode: %s is scheduled with the host record the host task above would write"
                             % name)
        plan["lines"] = plan["lines"] + notes
        plan["msg"] = "; ".join(plan["lines"]) or "no servers declared"
        return plan
