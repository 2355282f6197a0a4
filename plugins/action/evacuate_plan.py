# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The evacuate_plan action: which servers a dead host held, where each is rebuilt, with what cloud-init data.

The logic is plugin_utils/_cloud_plan.evacuate_plan(); this file feeds it the host_info results (read now), the
last-known list (evacuate_servers, or the inventory cache's last answer from the dead host), the declared state,
the controller's public key and the scheduler lookup.
"""

from __future__ import annotations

from ansible_collections.virtfleet.compute.plugins.plugin_utils._cloud_plan import evacuate_plan
from ansible_collections.virtfleet.compute.plugins.plugin_utils._plan_action import PlanAction


class ActionModule(PlanAction):
    ARGUMENT_SPEC = dict(
        evacuate_host=dict(type="str", required=True),
        hosts=dict(type="list", elements="dict", required=True),
        evacuate_servers=dict(type="list", elements="dict"),
        last_known=dict(type="dict"),
        servers=dict(type="list", elements="dict", default=[]),
        server_groups=dict(type="list", elements="dict", default=[]),
        controller_key=dict(type="str", no_log=False),
        scheduler_options=dict(type="dict", default={}),
    )

    def plan(self, args, task_vars):
        hosts = dict((h.get("name"), h) for h in args["hosts"])
        plan = evacuate_plan(args["evacuate_host"], hosts, self.scheduler(task_vars, args["scheduler_options"]),
                             evacuate_servers=args.get("evacuate_servers"), last_known=args.get("last_known"),
                             servers=args["servers"], server_groups=args["server_groups"],
                             controller_key=args.get("controller_key") or None)
        plan["msg"] = "; ".join(plan["lines"]) or "no server to evacuate"
        return plan
