# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The network model and reconcile layers on libvirt's test driver: parse/render, defaults, validation, plans."""

import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils import _network as nw
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ConflictError, ValidationError

NAT = {"name": "t5-nat", "cidr": "10.20.0.0/24"}


@pytest.fixture(autouse=True)
def one_network_definition(client, monkeypatch):
    # The test driver refuses VIR_NETWORK_XML_INACTIVE; its networks have one definition anyway.
    monkeypatch.setattr(client, "network_xml", lambda net, inactive=True: net.XMLDesc(0))


def converge(client, params, check=False):
    return nw.converge_network(client, dict(params), check_mode=check, diff_mode=True)


def four_steps(client, params):
    """Check mode predicts, the run applies the same, then nothing is left to do."""
    check = converge(client, params, check=True)
    applied = converge(client, params)
    assert check["changed"] and applied["changed"]
    assert check["actions"] == applied["actions"]
    assert check["diff"]["after"] == applied["diff"]["after"]
    again = converge(client, params)
    assert not again["changed"] and again["actions"] == []
    assert not converge(client, params, check=True)["changed"]
    return applied


@pytest.mark.parametrize("xml, expected", [
    ("<network><name>n</name><forward mode='nat'/><bridge name='virbr9'/>"
     "<ip address='10.0.0.1' netmask='255.255.255.0'><dhcp><range start='10.0.0.2' end='10.0.0.254'/>"
     "<host mac='52:54:00:AA:BB:CC' name='a' ip='10.0.0.5'/></dhcp></ip></network>",
     {"mode": "nat", "bridge": "virbr9", "cidr": "10.0.0.0/24", "gateway": "10.0.0.1", "dhcp": True,
      "dhcp_start": "10.0.0.2", "dhcp_end": "10.0.0.254",
      "hosts": [{"mac": "52:54:00:aa:bb:cc", "ip": "10.0.0.5", "name": "a"}]}),
    ("<network><name>n</name><forward/><ip address='10.0.0.1' prefix='16'/></network>",
     {"mode": "nat", "cidr": "10.0.0.0/16", "dhcp": False, "hosts": []}),
    ("<network><name>n</name><ip family='ipv6' address='fd00::1' prefix='64'/><ip address='10.1.0.1' prefix='24'/>"
     "</network>", {"mode": "isolated", "cidr": "10.1.0.0/24"}),
    ("<network><name>n</name><forward mode='bridge'/><bridge name='br0'/></network>",
     {"mode": "bridge", "bridge": "br0", "cidr": None, "gateway": None}),
    ("<network><name>n</name><forward mode='route' dev='eth1'/><ip address='10.2.0.1' prefix='24'/></network>",
     {"mode": "route", "forward_dev": "eth1"}),
])
def test_parse(xml, expected):
    spec, _uuid, _mac = nw.parse_network(xml)
    view = spec.view()
    for key, value in expected.items():
        assert view[key] == value, key


def test_render_parses_back_to_the_same_spec():
    spec = nw.NetworkSpec("n", "route", "vbr1", "eth0", "10.3.0.0/24", "10.3.0.1", True,
                          [("10.3.0.10", "10.3.0.20")], [{"mac": "52:54:00:00:00:01", "ip": "10.3.0.5", "name": None}])
    parsed, uuid, mac = nw.parse_network(nw.render_network(spec, uuid="0506e12c-a5c6-4709-a2ac-a34419d6bf95",
                                                           mac="52:54:00:8b:12:96"))
    assert parsed.view() == spec.view()
    assert uuid == "0506e12c-a5c6-4709-a2ac-a34419d6bf95" and mac == "52:54:00:8b:12:96"


@pytest.mark.parametrize("params, field, says", [
    ({"cidr": "10.0.0.1/24"}, "cidr", "host bits"),
    ({"cidr": "10.0.0.0/30"}, "cidr", "too few"),
    ({"cidr": "fd00::/64"}, "cidr", "IPv4"),
    ({"cidr": "10.0.0.0/24", "gateway": "10.0.0.255"}, "gateway", "broadcast"),
    ({"cidr": "10.0.0.0/24", "dhcp_start": "10.0.0.9"}, "dhcp_end", "go together"),
    ({"cidr": "10.0.0.0/24", "dhcp": False, "dhcp_start": "10.0.0.9", "dhcp_end": "10.0.0.20"}, "dhcp_start",
     "dhcp: false"),
    ({"cidr": "10.0.0.0/24", "hosts": [{"mac": "52:54:00:00:00:01", "ip": "10.0.0.0"}]}, "hosts[0].ip",
     "network address"),
    ({"cidr": "10.0.0.0/24", "hosts": [{"mac": "nope", "ip": "10.0.0.9"}]}, "hosts[0].mac", "not a MAC"),
    ({"cidr": "10.0.0.0/24", "hosts": [{"mac": "52:54:00:00:00:01", "ip": "10.0.0.9", "name": "a b"}]},
     "hosts[0].name", "host name"),
    ({"cidr": "10.0.0.0/24", "hosts": [{"mac": "52:54:00:00:00:01", "ip": "10.0.0.9", "name": "a"},
                                       {"mac": "52:54:00:00:00:02", "ip": "10.0.0.8", "name": "a"}]},
     "hosts[1].name", "also given"),
    ({"cidr": "10.0.0.0/24", "dhcp": False, "hosts": [{"mac": "52:54:00:00:00:01", "ip": "10.0.0.9"}]},
     "hosts[0]", "need dhcp"),
    ({"mode": "isolated", "cidr": "10.0.0.0/24", "forward_dev": "eth0"}, "forward_dev", "forwards nowhere"),
    ({"mode": "bridge", "bridge": "br0", "dhcp": True}, "dhcp", "no DHCP"),
    ({"mode": "bridge", "bridge": "this-is-too-long-for-linux"}, "bridge", "interface name"),
    ({"name": "a/b", "cidr": "10.0.0.0/24"}, "name", "letters"),
])
def test_invalid_input_names_the_field(client, params, field, says):
    with pytest.raises(ValidationError) as err:
        converge(client, dict({"name": "t5-bad"}, **params), check=True)
    assert err.value.field == field
    assert says in err.value.message
    assert client.lookup_network("t5-bad") is None


def test_defaults_of_a_new_network():
    spec = nw.NetworkRequest(NAT).desired(None)
    assert (spec.mode, spec.gateway, spec.dhcp, spec.dhcp_ranges) == ("nat", "10.20.0.1", True,
                                                                      [("10.20.0.2", "10.20.0.254")])
    spec = nw.NetworkRequest(dict(NAT, gateway="10.20.0.254")).desired(None)
    assert spec.dhcp_ranges == [("10.20.0.1", "10.20.0.253")]


def test_omitted_options_keep_the_existing_values():
    actual = nw.NetworkRequest(dict(NAT, mode="route", dhcp_start="10.20.0.50", dhcp_end="10.20.0.60",
                                    forward_dev="eth1")).desired(None)
    again = nw.NetworkRequest({"name": "t5-nat"}).desired(actual)
    assert again.view() == actual.view()


def test_lifecycle_in_four_steps(client):
    created = four_steps(client, NAT)
    assert created["actions"] == ["define network t5-nat (nat 10.20.0.0/24, DHCP 10.20.0.2-10.20.0.254)",
                                  "start network t5-nat", "enable autostart of network t5-nat"]
    assert created["network"]["state"] == "started" and created["network"]["autostart"]
    hosts = [{"mac": "52:54:00:00:00:01", "ip": "10.20.0.10", "name": "a"}]
    changed = four_steps(client, dict(NAT, hosts=hosts, dhcp_start="10.20.0.100", dhcp_end="10.20.0.200"))
    assert changed["actions"] == [
        "add DHCP range 10.20.0.100-10.20.0.200 to network t5-nat",
        "remove DHCP range 10.20.0.2-10.20.0.254 from network t5-nat",
        "reserve 10.20.0.10 for 52:54:00:00:00:01 (a) in network t5-nat",
    ]
    moved = four_steps(client, dict(NAT, hosts=[dict(hosts[0], ip="10.20.0.11")]))
    assert moved["actions"] == ["change the DHCP reservation of 52:54:00:00:00:01 in network t5-nat from "
                                "10.20.0.10 (a) to 10.20.0.11 (a)"]
    stopped = four_steps(client, dict(NAT, state="stopped", autostart=False))
    assert stopped["actions"] == ["stop network t5-nat", "disable autostart of network t5-nat"]
    redefined = four_steps(client, {"name": "t5-nat", "mode": "isolated", "state": "present"})
    assert redefined["actions"][0].startswith("redefine network t5-nat (mode: isolated 10.20.0.0/24")
    assert redefined["network"]["state"] == "stopped"  # present keeps a stopped network stopped
    deleted = four_steps(client, {"name": "t5-nat", "state": "absent"})
    assert deleted["actions"] == ["undefine network t5-nat"]


def test_a_network_in_use_is_not_redefined_or_deleted(client):
    # The test driver's own domain "test" has an interface on "default".
    with pytest.raises(ConflictError) as err:
        converge(client, {"name": "default", "cidr": "10.99.0.0/24"}, check=True)
    assert err.value.field == "cidr" and err.value.details["users"] == ["test"]
    with pytest.raises(ConflictError) as err:
        converge(client, {"name": "default", "state": "absent"}, check=True)
    assert "used by test" in err.value.message
    with pytest.raises(ConflictError) as err:
        converge(client, {"name": "default", "state": "stopped"}, check=True)
    assert "running test" in err.value.message


def test_purge_keeps_the_reservation_of_a_nic_on_the_network(client):
    converge(client, {"name": "default", "hosts": [{"mac": "aa:bb:cc:dd:ee:ff", "ip": "192.168.122.9"},
                                                   {"mac": "52:54:00:00:00:07", "ip": "192.168.122.7"}]})
    result = converge(client, {"name": "default", "purge_hosts": True})
    assert result["actions"] == ["remove DHCP reservation 192.168.122.7 (52:54:00:00:00:07) from network default"]
    assert any("aa:bb:cc:dd:ee:ff" in w and "test" in w for w in result["warnings"])
    assert [h["mac"] for h in result["network"]["hosts"]] == ["aa:bb:cc:dd:ee:ff"]


def test_reservations_made_elsewhere_are_kept(client):
    converge(client, dict(NAT, hosts=[{"mac": "52:54:00:00:00:01", "ip": "10.20.0.10"}]))
    result = converge(client, dict(NAT, hosts=[{"mac": "52:54:00:00:00:02", "ip": "10.20.0.11"}]))
    assert result["actions"] == ["reserve 10.20.0.11 for 52:54:00:00:00:02 in network t5-nat"]
    # A declared host takes the address of an old reservation: the old one goes first.
    result = converge(client, dict(NAT, hosts=[{"mac": "52:54:00:00:00:03", "ip": "10.20.0.10"}]))
    assert result["actions"] == ["remove DHCP reservation 10.20.0.10 (52:54:00:00:00:01) from network t5-nat",
                                 "reserve 10.20.0.10 for 52:54:00:00:00:03 in network t5-nat"]


def test_network_info_never_fails_on_a_missing_name(client):
    assert nw.network_info(client, {"name": "t5-missing"})["networks"] == []
    names = [n["name"] for n in nw.network_info(client, {})["networks"]]
    assert names == ["default"]
