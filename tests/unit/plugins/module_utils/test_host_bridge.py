# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bridges: from the declared bridges and ``ip -j`` output to the iproute2 commands, and the refusals."""

import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ConflictError
from ansible_collections.virtfleet.compute.plugins.module_utils._host_bridge import plan_bridges


def link(name, kind=None, master=None, up=True, mtu=1500, stp=0):
    entry = {"ifname": name, "flags": ["BROADCAST", "UP"] if up else ["BROADCAST"], "mtu": mtu}
    if kind:
        entry["linkinfo"] = {"info_kind": kind, "info_data": {"stp_state": stp} if kind == "bridge" else {}}
    if master:
        entry["master"] = master
    return entry


def addr(name, *cidrs, scope="global"):
    return {"ifname": name, "addr_info": [{"local": c.split("/")[0], "prefixlen": int(c.split("/")[1]),
                                           "scope": scope} for c in cidrs]}


def bridge(**kwargs):
    return dict({"name": "br0", "ports": ["eth1"], "stp": False, "mtu": None, "addresses": [], "state": "present"},
                **kwargs)


def commands(bridges, links, addresses=()):
    return [" ".join(c) for c in plan_bridges(bridges, links, list(addresses))[0]]


def test_a_new_bridge():
    assert commands([bridge(addresses=["10.0.0.1/24"], mtu=9000)], [link("eth1", up=False)]) == [
        "ip link add br0 mtu 9000 type bridge stp_state 0",
        "ip link set eth1 master br0",
        "ip link set eth1 up",
        "ip addr add 10.0.0.1/24 dev br0",
        "ip link set br0 up",
    ]


def test_a_bridge_as_declared_needs_nothing():
    links = [link("br0", "bridge"), link("eth1", master="br0"), link("vnet0", "tun", master="br0")]
    assert commands([bridge(addresses=["10.0.0.1/24"])], links, [addr("br0", "10.0.0.1/24")]) == []


def test_settings_that_drifted_are_set_again():
    links = [link("br0", "bridge", up=False, mtu=1400, stp=1), link("eth1")]
    assert commands([bridge(mtu=1500)], links) == [
        "ip link set br0 type bridge stp_state 0",
        "ip link set br0 mtu 1500",
        "ip link set eth1 master br0",
        "ip link set br0 up",
    ]


def test_absent():
    assert commands([bridge(state="absent")], [link("br0", "bridge")]) == ["ip link del br0"]
    assert commands([bridge(state="absent")], []) == []


@pytest.mark.parametrize("links, addresses, says", [
    ([link("eth1")], [addr("eth1", "192.0.2.5/24")], "carries 192.0.2.5"),
    ([link("eth1", master="br9")], [], "already attached to br9"),
    ([], [], "does not exist"),
    ([link("br0", "veth"), link("eth1")], [], "not a bridge"),
])
def test_refusals(links, addresses, says):
    with pytest.raises(ConflictError) as err:
        plan_bridges([bridge()], links, addresses)
    assert says in err.value.message


def test_a_link_local_address_on_the_port_is_fine():
    assert "ip link set eth1 master br0" in commands([bridge()], [link("eth1")],
                                                     [addr("eth1", "fe80::1/64", scope="link")])
