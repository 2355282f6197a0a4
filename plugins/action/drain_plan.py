# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The drain_plan action: the moves that empty a compute host, decided before drain_host.yml changes anything.

The logic is plugin_utils/_cloud_plan.drain_plan(); this file feeds it the host_info results and the scheduler
lookup (with allow_unplaced, so that every server that cannot move is named with the reasons).
"""

from __future__ import annotations

from ansible_collections.virtfleet.compute.plugins.plugin_utils._cloud_plan import PlanError, drain_plan
from ansible_collections.virtfleet.compute.plugins.plugin_utils._plan_action import PlanAction


class ActionModule(PlanAction):
    ARGUMENT_SPEC = dict(
        drain_host=dict(type="str", required=True),
        hosts=dict(type="list", elements="dict", required=True),
        server_groups=dict(type="list", elements="dict", default=[]),
        servers=dict(type="list", elements="dict", default=[]),
        scheduler_options=dict(type="dict", default={}),
        partial=dict(type="bool", default=False),
    )

    def plan(self, args, task_vars):
        hosts = dict((h.get("name"), h) for h in args["hosts"])
        plan = drain_plan(args["drain_host"], hosts, self.scheduler(task_vars, args["scheduler_options"],
                                                                    allow_unplaced=True),
                          server_groups=args["server_groups"], servers=args["servers"], partial=args["partial"])
        if not plan["proceed"]:
            raise PlanError(plan["msg"], field="drain_host", moves=plan["moves"], stays=plan["stays"])
        plan["msg"] = "; ".join(plan["lines"]) or "%s holds no server to move" % args["drain_host"]
        return plan
