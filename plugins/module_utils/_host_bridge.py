# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Linux bridges on a compute host, applied now with iproute2 (the compute_node role persists them separately).

``plan_bridges()`` is a pure function of the declared bridges and what ``ip -j`` reports, so check mode, the real
run and the unit tests read the same list of commands.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ConflictError


def plan_bridges(bridges, links, addresses):
    """The iproute2 commands (argument lists) that make ``links``/``addresses`` (from ``ip -j``) match ``bridges``.

    A pure function of the declared bridges and the host's state, so check mode, the real run and the tests all
    read the same answer.
    """
    by_name = dict((link["ifname"], link) for link in links)
    addrs = dict((entry["ifname"], entry.get("addr_info", [])) for entry in addresses)
    commands = []
    view = {}
    for bridge in bridges:
        name = bridge["name"]
        link = by_name.get(name)
        kind = ((link or {}).get("linkinfo") or {}).get("info_kind")
        if bridge.get("state", "present") == "absent":
            if link is not None:
                if kind != "bridge":
                    raise ConflictError("%s is a %s interface, not a bridge; not deleting it" % (name, kind or "plain"))
                commands.append(["ip", "link", "del", name])
            continue
        stp = 1 if bridge.get("stp") else 0
        if link is None:
            cmd = ["ip", "link", "add", name]
            if bridge.get("mtu"):
                cmd += ["mtu", str(bridge["mtu"])]
            commands.append(cmd + ["type", "bridge", "stp_state", str(stp)])
        else:
            if kind != "bridge":
                raise ConflictError("%s exists and is a %s interface, not a bridge" % (name, kind or "plain"))
            data = link["linkinfo"].get("info_data") or {}
            if int(data.get("stp_state", 0)) != stp:
                commands.append(["ip", "link", "set", name, "type", "bridge", "stp_state", str(stp)])
            if bridge.get("mtu") and link.get("mtu") != bridge["mtu"]:
                commands.append(["ip", "link", "set", name, "mtu", str(bridge["mtu"])])
        for port in bridge.get("ports") or []:
            plink = by_name.get(port)
            if plink is None:
                raise ConflictError("port %s of bridge %s does not exist on this host" % (port, name))
            if plink.get("master") == name:
                if "UP" not in plink.get("flags", []):
                    commands.append(["ip", "link", "set", port, "up"])
                continue
            if plink.get("master"):
                raise ConflictError("port %s of bridge %s is already attached to %s" % (port, name, plink["master"]))
            held = [a["local"] for a in addrs.get(port, []) if a.get("scope") == "global"]
            if held:
                raise ConflictError("port %s of bridge %s carries %s; attaching it would cut the host off that "
                                    "address. Declare the address on the bridge and remove it from the port first"
                                    % (port, name, ", ".join(held)))
            commands.append(["ip", "link", "set", port, "master", name])
            if "UP" not in plink.get("flags", []):
                commands.append(["ip", "link", "set", port, "up"])
        have = set("%s/%s" % (a["local"], a["prefixlen"]) for a in addrs.get(name, []))
        for address in bridge.get("addresses") or []:
            if address not in have:
                commands.append(["ip", "addr", "add", address, "dev", name])
        if link is None or "UP" not in link.get("flags", []):
            commands.append(["ip", "link", "set", name, "up"])
        view[name] = {"ports": list(bridge.get("ports") or []), "addresses": list(bridge.get("addresses") or []),
                      "stp": bool(stp)}
    return commands, view
