# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs the server_action module and shows what it waits for while it runs (plugins/plugin_utils/_progress.py)."""

from __future__ import annotations

from ansible_collections.virtfleet.compute.plugins.plugin_utils._progress import ProgressAction


class ActionModule(ProgressAction):
    pass
