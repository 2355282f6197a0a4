# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Declarative libvirt networks: Neutron's basic job (a subnet, DHCP, fixed addresses) on one host.

The model layer parses a network's *inactive* XML into plain values (``NetworkSpec``) and renders XML from them;
the reconcile layer compares the declared spec with the actual one field by field and plans the steps between them
(DESIGN.md principle 4). What libvirt can change in place (DHCP reservations and the DHCP range through
virNetworkUpdate, live and in the persistent config; autostart) is changed in place. Anything else (mode, subnet,
gateway, bridge) needs the network stopped, redefined and started again, which would cut off every guest attached
to it: that is done only when no domain has an interface on the network, and refused with the users named
otherwise.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import traceback
import xml.etree.ElementTree as ET

from ansible_collections.virtfleet.compute.plugins.module_utils import _limits
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import (
    ConflictError,
    MissingLibraryError,
    ValidationError,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._plan import Plan

try:
    import netaddr

    HAS_NETADDR = True
    NETADDR_IMPORT_ERROR = None
except ImportError:
    HAS_NETADDR = False
    NETADDR_IMPORT_ERROR = traceback.format_exc()

MODES = ("nat", "route", "isolated", "bridge")
STATES = ("started", "stopped", "present", "absent")
# Fields that libvirt cannot change on a defined network: a change means stop, redefine, start.
STRUCTURAL = ("mode", "bridge", "forward_dev", "cidr", "gateway", "dhcp")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:+-]{1,64}$")
# Linux interface names: at most 15 bytes, no slash, no whitespace, not "." or "..".
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def require_netaddr():
    if not HAS_NETADDR:
        raise MissingLibraryError(
            "netaddr is needed to check network addresses where this module runs (pip install netaddr, or the "
            "distribution's python3-netaddr package)",
            traceback=NETADDR_IMPORT_ERROR,
        )


# -- model ----------------------------------------------------------------------------------------------------------


class NetworkSpec:
    """What a libvirt network is, as plain values: the same shape for the declared and the actual network.

    ``cidr`` and ``gateway`` are strings (``10.20.0.0/24``, ``10.20.0.1``), ``hosts`` a list of
    ``{"mac", "ip", "name"}`` dicts (MACs lower-case), ``dhcp_ranges`` a list of ``(start, end)`` tuples.
    """

    __slots__ = ("name", "mode", "bridge", "forward_dev", "cidr", "gateway", "dhcp", "dhcp_ranges", "hosts")

    def __init__(self, name, mode="nat", bridge=None, forward_dev=None, cidr=None, gateway=None, dhcp=False,
                 dhcp_ranges=None, hosts=None):
        self.name = name
        self.mode = mode
        self.bridge = bridge
        self.forward_dev = forward_dev
        self.cidr = cidr
        self.gateway = gateway
        self.dhcp = bool(dhcp)
        self.dhcp_ranges = list(dhcp_ranges or [])
        self.hosts = [dict(h) for h in hosts or []]

    def copy(self, **changes):
        values = dict((k, getattr(self, k)) for k in self.__slots__)
        values.update(changes)
        return NetworkSpec(**values)

    def view(self):
        """The declared fields as users read them (the module's ``network`` result and ``--diff``)."""
        start, end = self.dhcp_ranges[0] if self.dhcp_ranges else (None, None)
        view = {
            "name": self.name,
            "mode": self.mode,
            "bridge": self.bridge,
            "forward_dev": self.forward_dev,
            "cidr": self.cidr,
            "gateway": self.gateway,
            "dhcp": self.dhcp,
            "dhcp_start": start,
            "dhcp_end": end,
            "hosts": sorted_hosts(self.hosts),
        }
        if len(self.dhcp_ranges) > 1:
            view["dhcp_ranges"] = [{"start": s, "end": e} for s, e in self.dhcp_ranges]
        return view


def sorted_hosts(hosts):
    return sorted(({"mac": h.get("mac"), "ip": h.get("ip"), "name": h.get("name")} for h in hosts),
                  key=lambda h: (_ip_sort_key(h["ip"]), h["mac"] or ""))


def _ip_sort_key(ip):
    try:
        return tuple(int(part) for part in (ip or "").split("."))
    except ValueError:
        return (999,)


def parse_network(xml):
    """The NetworkSpec of a network's XML, plus its ``uuid`` and bridge ``mac`` (kept across redefinitions)."""
    root = ET.fromstring(xml)
    name = root.findtext("name")
    forward = root.find("forward")
    if forward is None:
        mode = "isolated"
        forward_dev = None
    else:
        # <forward/> without a mode is NAT in libvirt.
        mode = forward.get("mode") or "nat"
        forward_dev = forward.get("dev")
        if forward_dev is None:
            interface = forward.find("interface")
            forward_dev = interface.get("dev") if interface is not None and mode in ("nat", "route") else None
    bridge_elem = root.find("bridge")
    bridge = bridge_elem.get("name") if bridge_elem is not None else None
    cidr = gateway = None
    dhcp = False
    ranges = []
    hosts = []
    for ip in root.findall("ip"):
        family = ip.get("family") or "ipv4"
        if family != "ipv4" or cidr is not None:
            continue  # IPv6 and further IPv4 subnets are not managed (reported as they are, never changed)
        address = ip.get("address")
        prefix = ip.get("prefix") or ip.get("netmask") or "24"
        if address:
            gateway = address
            cidr = _cidr_text(address, prefix)
        dhcp_elem = ip.find("dhcp")
        if dhcp_elem is not None:
            dhcp = True
            for rng in dhcp_elem.findall("range"):
                ranges.append((rng.get("start"), rng.get("end")))
            for host in dhcp_elem.findall("host"):
                hosts.append({"mac": (host.get("mac") or "").lower() or None, "ip": host.get("ip"),
                              "name": host.get("name")})
    spec = NetworkSpec(name, mode, bridge, forward_dev, cidr, gateway, dhcp, ranges, hosts)
    mac_elem = root.find("mac")
    return spec, root.findtext("uuid"), mac_elem.get("address") if mac_elem is not None else None


def _cidr_text(address, prefix):
    if HAS_NETADDR:
        try:
            return str(netaddr.IPNetwork("%s/%s" % (address, prefix)).cidr)
        except (netaddr.AddrFormatError, ValueError, TypeError):
            pass
    return "%s/%s" % (address, prefix)


def render_network(spec, uuid=None, mac=None):
    """The XML libvirt is given for ``spec``; ``uuid`` and ``mac`` keep an existing network's identity."""
    root = ET.Element("network")
    ET.SubElement(root, "name").text = spec.name
    if uuid:
        ET.SubElement(root, "uuid").text = uuid
    if spec.mode != "isolated":
        forward = ET.SubElement(root, "forward", {"mode": spec.mode})
        if spec.forward_dev:
            forward.set("dev", spec.forward_dev)
    if spec.mode == "bridge":
        ET.SubElement(root, "bridge", {"name": spec.bridge})
        return ET.tostring(root, encoding="unicode")
    bridge_attrs = {"stp": "on", "delay": "0"}
    if spec.bridge:
        bridge_attrs["name"] = spec.bridge
    ET.SubElement(root, "bridge", bridge_attrs)
    if mac:
        ET.SubElement(root, "mac", {"address": mac})
    if spec.cidr:
        prefix = spec.cidr.split("/")[1]
        ip = ET.SubElement(root, "ip", {"address": spec.gateway, "prefix": prefix})
        if spec.dhcp:
            dhcp = ET.SubElement(ip, "dhcp")
            for start, end in spec.dhcp_ranges:
                ET.SubElement(dhcp, "range", {"start": start, "end": end})
            for host in spec.hosts:
                ET.SubElement(dhcp, "host", _host_attrs(host))
    return ET.tostring(root, encoding="unicode")


def _host_attrs(host):
    attrs = {}
    for key in ("mac", "name", "ip"):
        if host.get(key):
            attrs[key] = host[key]
    return attrs


def host_xml(host):
    """The ``<host>`` element virNetworkUpdate takes for one DHCP reservation."""
    return ET.tostring(ET.Element("host", _host_attrs(host)), encoding="unicode")


def range_xml(start, end):
    return ET.tostring(ET.Element("range", {"start": start, "end": end}), encoding="unicode")


# -- reading the host -----------------------------------------------------------------------------------------------


def network_users(client, name, running_only=False):
    """Names of the domains with an interface on network ``name`` (persistent definition or live), sorted.

    Both definitions are read: a running guest may have a hot-plugged NIC its persistent definition lacks, and a
    shut-off guest that will use the network at its next start is a user too. A domain that disappears while the
    host is scanned (another run deleting it) is simply not a user.
    """
    active = client.list_active_domains()
    running = set(client.domain_name(dom) for dom in active)
    users = set()
    for dom in active if running_only else client.list_domains():
        dom_name = client.domain_name(dom)
        xmls = [client.domain_xml_if_exists(dom, inactive=True)]
        if dom_name in running:
            xmls.append(client.domain_xml_if_exists(dom, inactive=False))
        for text in xmls:
            if text is None:
                continue
            root = ET.fromstring(text)
            if any(_interface_network(iface) == name for iface in root.findall("devices/interface")):
                users.add(dom_name)
                break
    return sorted(users)


def network_nic_macs(client, name):
    """{mac: domain name} of every domain NIC on network ``name``."""
    macs = {}
    for dom in client.list_domains():
        text = client.domain_xml_if_exists(dom, inactive=True)
        if text is None:
            continue
        for iface in ET.fromstring(text).findall("devices/interface"):
            mac = iface.find("mac")
            if _interface_network(iface) == name and mac is not None and mac.get("address"):
                macs[mac.get("address").lower()] = client.domain_name(dom)
    return macs


def _interface_network(iface):
    source = iface.find("source")
    if source is None:
        return None
    # A running domain's live XML may show type='bridge' with the network name kept on <source network=...>.
    return source.get("network")


def read_network(client, name):
    """(libvirt network object or None, NetworkSpec or None, facts dict) for network ``name``."""
    net = client.lookup_network(name)
    if net is None:
        return None, None, {}
    spec, uuid, mac = parse_network(client.network_xml(net, inactive=True))
    facts = {"uuid": uuid, "mac": mac, "active": client.network_active(net), "autostart": client.network_autostart(net)}
    return net, spec, facts


def network_view(client, name, users=True, leases=False):
    """What a user sees of one network (``network_info`` and the module's result); None if it does not exist."""
    net, spec, facts = read_network(client, name)
    if net is None:
        return None
    view = spec.view()
    view.update(uuid=facts["uuid"], active=facts["active"], autostart=facts["autostart"],
                state="started" if facts["active"] else "stopped")
    if users:
        view["users"] = network_users(client, name)
    if leases:
        view["leases"] = [
            {"mac": (lease.get("mac") or "").lower(), "ip": lease.get("ipaddr"), "hostname": lease.get("hostname"),
             "expiry": lease.get("expirytime")}
            for lease in client.network_leases(net) if lease.get("type", 0) == 0  # IPv4 leases only
        ]
    return view


# -- the declared network -------------------------------------------------------------------------------------------


class NetworkRequest:
    """A network as declared: validated and normalised.

    Options left out (None) mean "keep what the network has" for an existing network and take their defaults for a
    new one, so ``state: stopped`` needs no more than a name.
    """

    def __init__(self, params):
        self.name = params.get("name")
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValidationError("must be 1-64 letters, digits or _.:+-, got %r" % (self.name,), field="name")
        self.state = params.get("state") or "started"
        if self.state not in STATES:
            raise ValidationError("must be one of %s" % ", ".join(STATES), field="state")
        autostart = params.get("autostart")
        self.autostart = None if autostart is None else bool(autostart)
        self.purge_hosts = bool(params.get("purge_hosts"))
        if self.state == "absent":
            return
        require_netaddr()
        self.mode = params.get("mode")
        if self.mode is not None and self.mode not in MODES:
            raise ValidationError("must be one of %s" % ", ".join(MODES), field="mode")
        self.bridge = params.get("bridge")
        if self.bridge is not None and not _IFNAME_RE.match(self.bridge):
            raise ValidationError("%r is not a Linux interface name (at most 15 letters, digits or _.:-)"
                                  % (self.bridge,), field="bridge")
        self.forward_dev = params.get("forward_dev")
        if self.forward_dev is not None and not _IFNAME_RE.match(self.forward_dev):
            raise ValidationError("%r is not a Linux interface name" % (self.forward_dev,), field="forward_dev")
        self.cidr = None
        if params.get("cidr") is not None:
            self.cidr = parse_cidr(params["cidr"], "cidr")
        self.gateway = params.get("gateway")
        dhcp = params.get("dhcp")
        self.dhcp = None if dhcp is None else bool(dhcp)
        self.dhcp_start = params.get("dhcp_start")
        self.dhcp_end = params.get("dhcp_end")
        if (self.dhcp_start is None) != (self.dhcp_end is None):
            raise ValidationError("dhcp_start and dhcp_end go together", field="dhcp_start"
                                  if self.dhcp_start is None else "dhcp_end")
        if self.dhcp is False and self.dhcp_start is not None:
            raise ValidationError("a DHCP range was given with dhcp: false", field="dhcp_start")
        hosts = params.get("hosts")
        self.hosts = [] if hosts is None else list(hosts)
        if not isinstance(self.hosts, list):
            raise ValidationError("must be a list of {mac, ip, name}", field="hosts")

    def desired(self, actual):
        """The complete NetworkSpec wanted: declared options, the actual network's values (or defaults) for the rest.

        ``actual`` is the existing network's spec, or None for a new network.
        """
        mode = self.mode or (actual.mode if actual is not None and actual.mode in MODES else "nat")
        if mode == "bridge":
            return self._desired_bridge(actual)
        if mode == "isolated" and self.forward_dev:
            raise ValidationError("an isolated network forwards nowhere; leave it out", field="forward_dev")
        same_mode = actual is not None and actual.mode == mode
        bridge = self.bridge or (actual.bridge if actual is not None and actual.mode != "bridge" else None)
        forward_dev = self.forward_dev
        if forward_dev is None and same_mode:
            forward_dev = actual.forward_dev
        if mode == "isolated":
            forward_dev = None

        # The subnet: declared, else the actual one; a new network must declare it.
        cidr = self.cidr
        keep_addresses = cidr is None or (actual is not None and actual.cidr == cidr)
        if cidr is None:
            if actual is None or not actual.cidr:
                raise ValidationError("is required for a %s network (an IPv4 subnet such as 10.20.0.0/24)" % mode,
                                      field="cidr")
            cidr = parse_cidr(actual.cidr, "cidr")
        network = netaddr.IPNetwork(cidr)
        gateway = self.gateway
        if gateway is None:
            gateway = actual.gateway if keep_addresses and actual is not None and actual.gateway else str(network[1])
        gateway = str(_address_in(network, gateway, "gateway"))

        dhcp = self.dhcp
        if dhcp is None:
            dhcp = actual.dhcp if actual is not None and actual.cidr else True
        ranges = []
        if dhcp:
            if self.dhcp_start is not None:
                start = _address_in(network, self.dhcp_start, "dhcp_start")
                end = _address_in(network, self.dhcp_end, "dhcp_end")
                if start > end:
                    raise ValidationError("%s comes after dhcp_end %s" % (start, end), field="dhcp_start")
                ranges = [(str(start), str(end))]
            elif keep_addresses and actual is not None and actual.dhcp_ranges:
                ranges = list(actual.dhcp_ranges)
            else:
                ranges = [default_range(network, gateway)]
        hosts = self._desired_hosts(network, gateway, dhcp, actual if keep_addresses else None)
        return NetworkSpec(self.name, mode, bridge, forward_dev, cidr, gateway, dhcp, ranges, hosts)

    def _desired_bridge(self, actual):
        for option in ("cidr", "gateway", "dhcp_start", "forward_dev"):
            if getattr(self, option) is not None:
                raise ValidationError("a bridge network forwards to a host bridge and has no %s of its own (the "
                                      "bridge's LAN provides addresses); leave it out" % option, field=option)
        if self.dhcp:
            raise ValidationError("a bridge network has no DHCP server of its own; leave dhcp out", field="dhcp")
        if self.hosts:
            raise ValidationError("a bridge network has no DHCP server of its own, so no reservations",
                                  field="hosts")
        bridge = self.bridge or (actual.bridge if actual is not None and actual.mode == "bridge" else None)
        if not bridge:
            raise ValidationError("is required for a bridge network: the name of an existing Linux bridge on the "
                                  "host (the compute_node role creates them)", field="bridge")
        return NetworkSpec(self.name, "bridge", bridge)

    def _desired_hosts(self, network, gateway, dhcp, actual):
        declared = []
        seen = {"mac": {}, "ip": {}, "name": {}}
        for index, host in enumerate(self.hosts):
            field = "hosts[%d]" % index
            if not isinstance(host, dict):
                raise ValidationError("must be a dict with mac, ip and optionally name", field=field)
            unknown = sorted(set(host) - set(("mac", "ip", "name")))
            if unknown:
                raise ValidationError("unknown field(s) %s" % ", ".join(unknown), field=field)
            if not dhcp:
                raise ValidationError("DHCP reservations need dhcp: true", field=field)
            mac = normalize_mac(host.get("mac"), field + ".mac")
            ip = str(check_host_address(network, gateway, host.get("ip"), field + ".ip"))
            name = host.get("name")
            if name is not None:
                if not isinstance(name, str) or not _LABEL_RE.match(name):
                    raise ValidationError("%r is not a host name label (letters, digits, inner hyphens)" % (name,),
                                          field=field + ".name")
            entry = {"mac": mac, "ip": ip, "name": name}
            for key in ("mac", "ip", "name"):
                if entry[key] is None:
                    continue
                if entry[key] in seen[key]:
                    raise ValidationError("%s %s is also given in hosts[%d]" % (key, entry[key], seen[key][entry[key]]),
                                          field=field + "." + key)
                seen[key][entry[key]] = index
            declared.append(entry)
        if actual is None or self.purge_hosts:
            return declared
        # Reservations made elsewhere (a server's fixed_ip) stay unless purge_hosts asks otherwise; a declared
        # host replaces the one with its MAC, and one holding its address or name.
        kept = []
        for host in actual.hosts:
            if (host.get("mac") in seen["mac"] or host.get("ip") in seen["ip"]
                    or (host.get("name") and host.get("name") in seen["name"])):
                continue
            kept.append(dict(host))
        return kept + declared


def parse_cidr(value, field):
    require_netaddr()
    try:
        network = netaddr.IPNetwork(value)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise ValidationError("%r is not a subnet in CIDR notation (such as 10.20.0.0/24)" % (value,), field=field)
    if network.version != 4:
        raise ValidationError("only IPv4 subnets are managed, got %s" % value, field=field)
    if network.prefixlen > 29:
        raise ValidationError("/%d leaves too few addresses for a gateway, DHCP and guests; use /29 or larger"
                              % network.prefixlen, field=field)
    if network.ip != network.network:
        raise ValidationError("%s has host bits set: the subnet is %s (the gateway is its own option, by default "
                              "the first address)" % (value, network.cidr), field=field)
    return str(network.cidr)


def default_range(network, gateway=None):
    """libvirt's own default (the third address to the one before broadcast), moved off a gateway at its top end."""
    if gateway is not None and netaddr.IPAddress(gateway) == network[-2]:
        return (str(network[1]), str(network[-3]))
    return (str(network[2]), str(network[-2]))


def _parse_address(value, field):
    if not isinstance(value, str) or not value:
        raise ValidationError("an IPv4 address is required, got %r" % (value,), field=field)
    try:
        address = netaddr.IPAddress(value)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise ValidationError("%r is not an IPv4 address" % (value,), field=field)
    if address.version != 4:
        raise ValidationError("%s is not an IPv4 address" % value, field=field)
    return address


def _address_in(network, value, field):
    """``value`` as an address of ``network`` that a host may use (not its network or broadcast address)."""
    address = _parse_address(value, field)
    if address not in network:
        raise ValidationError("%s is outside the subnet %s" % (address, network.cidr), field=field)
    if address == network.network:
        raise ValidationError("%s is the network address of %s" % (address, network.cidr), field=field)
    if address == network.broadcast:
        raise ValidationError("%s is the broadcast address of %s" % (address, network.cidr), field=field)
    return address


def check_host_address(network, gateway, value, field):
    """An address a guest may be given: inside the subnet, not its network, broadcast or gateway address."""
    require_netaddr()
    network = netaddr.IPNetwork(network) if not isinstance(network, netaddr.IPNetwork) else network
    address = _address_in(network, value, field)
    if gateway and address == netaddr.IPAddress(gateway):
        raise ValidationError("%s is the gateway address of %s (the host's own address on it)"
                              % (address, network.cidr), field=field)
    return address


def normalize_mac(value, field):
    # One rule for every MAC the collection takes (unicast, not all-zero): see _limits.
    return _limits.validate_mac(value, field)


# -- reconcile ------------------------------------------------------------------------------------------------------


def _diff_view(spec, active, autostart):
    if spec is None:
        return {}
    view = spec.view()
    view.update(state="started" if active else "stopped", autostart=autostart)
    return view


def _describe(spec):
    if spec.mode == "bridge":
        return "bridge to %s" % spec.bridge
    text = "%s %s" % (spec.mode, spec.cidr)
    if spec.dhcp and spec.dhcp_ranges:
        text += ", DHCP %s-%s" % spec.dhcp_ranges[0]
    return text


def plan_network(client, params):
    """Compare the declared network with the host's once; return the Plan (steps, before/after, warnings)."""
    req = NetworkRequest(params)
    net, actual, facts = read_network(client, req.name)
    plan = Plan()
    plan.actual = net
    plan.before = _diff_view(actual, facts.get("active"), facts.get("autostart"))
    if req.state == "absent":
        if net is not None:
            _plan_delete(client, plan, req, net, facts)
        plan.after = {}
        return plan
    desired = req.desired(actual)
    if net is None:
        _plan_create(client, plan, req, desired)
    else:
        _plan_update(client, plan, req, net, actual, desired, facts)
    return plan


def _plan_delete(client, plan, req, net, facts):
    users = network_users(client, req.name)
    if users:
        raise ConflictError("network %s is used by %s (an interface on it); delete or move %s first"
                            % (req.name, ", ".join(users), "them" if len(users) > 1 else "it"), field="state",
                            users=users)
    if facts["active"]:
        plan.add("stop network %s" % req.name, lambda: client.stop_network(net))
    xml = client.network_xml(net, inactive=True)
    plan.add("undefine network %s" % req.name, lambda: client.undefine_network(net),
             undo=lambda: client.define_network(xml))


def _plan_create(client, plan, req, desired):
    xml = render_network(desired)
    holder = {}

    def define():
        holder["net"] = client.define_network(xml)

    plan.add("define network %s (%s)" % (req.name, _describe(desired)), define,
             undo=lambda: client.undefine_network(holder["net"]))
    active = req.state in ("started", "present")
    if active:
        plan.add("start network %s" % req.name, lambda: client.start_network(holder["net"]),
                 undo=lambda: client.stop_network(holder["net"]))
    autostart = True if req.autostart is None else req.autostart
    if autostart:
        plan.add("enable autostart of network %s" % req.name,
                 lambda: client.set_network_autostart(holder["net"], True))
    plan.after = _diff_view(desired, active, autostart)


def _plan_update(client, plan, req, net, actual, desired, facts):
    name = req.name
    active = facts["active"]
    target_active = {"started": True, "stopped": False, "present": active}[req.state]
    autostart = facts["autostart"] if req.autostart is None else req.autostart

    changed_fields = [f for f in STRUCTURAL if getattr(actual, f) != getattr(desired, f)]
    if changed_fields:
        users = network_users(client, name)
        if users:
            raise ConflictError(
                "changing %s of network %s means stopping and redefining it, which would cut off %s (an interface "
                "on it). Move or delete %s first, or keep %s as it is (%s)"
                % (", ".join(changed_fields), name, ", ".join(users), "them" if len(users) > 1 else "it",
                   "them" if len(changed_fields) > 1 else "it",
                   ", ".join("%s: %s" % (f, getattr(actual, f)) for f in changed_fields)),
                field=changed_fields[0], users=users)
        old_xml = client.network_xml(net, inactive=True)
        new_xml = render_network(desired, uuid=facts["uuid"], mac=facts["mac"])
        if active:
            plan.add("stop network %s" % name, lambda: client.stop_network(net), undo=lambda: client.start_network(net))
        plan.add("redefine network %s (%s: %s)" % (name, ", ".join(changed_fields), _describe(desired)),
                 lambda: client.define_network(new_xml), undo=lambda: client.define_network(old_xml))
        if target_active:
            plan.add("start network %s" % name, lambda: client.start_network(net))
    else:
        if active and not target_active:
            running = network_users(client, name, running_only=True)
            if running:
                raise ConflictError("stopping network %s would cut off the running %s; stop %s first"
                                    % (name, ", ".join(running), "them" if len(running) > 1 else "it"),
                                    field="state", users=running)
            plan.add("stop network %s" % name, lambda: client.stop_network(net))
        # In place, through virNetworkUpdate.
        _plan_ranges(client, plan, net, actual, desired)
        _plan_hosts(client, plan, req, net, actual, desired)
        if target_active and not active:
            plan.add("start network %s" % name, lambda: client.start_network(net))
    if autostart != facts["autostart"]:
        plan.add("%s autostart of network %s" % ("enable" if autostart else "disable", name),
                 lambda: client.set_network_autostart(net, autostart))
    plan.after = _diff_view(desired, target_active, autostart)


def _plan_ranges(client, plan, net, actual, desired):
    if actual.dhcp_ranges == desired.dhcp_ranges:
        return
    # libvirt cannot modify a range, only delete and add one; the new one goes in first where it can, so the
    # network is never left without a range if the second step fails.
    for start, end in desired.dhcp_ranges:
        if (start, end) not in actual.dhcp_ranges:
            xml = range_xml(start, end)
            plan.add("add DHCP range %s-%s to network %s" % (start, end, actual.name),
                     _update_step(client, net, "add", "ip-dhcp-range", xml),
                     undo=_update_step(client, net, "delete", "ip-dhcp-range", xml))
    for start, end in actual.dhcp_ranges:
        if (start, end) not in desired.dhcp_ranges:
            xml = range_xml(start, end)
            plan.add("remove DHCP range %s-%s from network %s" % (start, end, actual.name),
                     _update_step(client, net, "delete", "ip-dhcp-range", xml),
                     undo=_update_step(client, net, "add", "ip-dhcp-range", xml))


def _plan_hosts(client, plan, req, net, actual, desired):
    wanted = dict((h["mac"], h) for h in desired.hosts if h.get("mac"))
    current = dict((h["mac"], h) for h in actual.hosts if h.get("mac"))
    in_use = None
    # Removals first: a reservation that moves to another MAC must free its address before the new one is added.
    for host in actual.hosts:
        key = host.get("mac")
        if key in wanted and _same_host(wanted[key], host):
            continue
        if key in wanted:
            continue  # modified below
        if any(_same_host(host, h) for h in desired.hosts):
            continue
        if req.purge_hosts and key:
            if in_use is None:
                in_use = network_nic_macs(client, actual.name)
            if key in in_use:
                plan.warnings.append("kept the DHCP reservation %s for %s in network %s: a NIC of %s has that MAC "
                                     "(its fixed_ip); purge_hosts leaves reservations of servers alone"
                                     % (host["ip"], key, actual.name, in_use[key]))
                desired.hosts.append(dict(host))
                continue
        xml = host_xml(host)
        plan.add("remove DHCP reservation %s (%s) from network %s" % (host.get("ip"), key or host.get("name"),
                                                                      actual.name),
                 _update_step(client, net, "delete", "ip-dhcp-host", xml),
                 undo=_update_step(client, net, "add", "ip-dhcp-host", xml))
    for mac, host in sorted(wanted.items(), key=lambda item: _ip_sort_key(item[1]["ip"])):
        old = current.get(mac)
        if old is not None and _same_host(old, host):
            continue
        xml = host_xml(host)
        if old is None:
            plan.add("reserve %s for %s%s in network %s" % (host["ip"], mac, _named(host), actual.name),
                     _update_step(client, net, "add", "ip-dhcp-host", xml),
                     undo=_update_step(client, net, "delete", "ip-dhcp-host", xml))
        else:
            plan.add("change the DHCP reservation of %s in network %s from %s%s to %s%s"
                     % (mac, actual.name, old["ip"], _named(old), host["ip"], _named(host)),
                     _update_step(client, net, "modify", "ip-dhcp-host", xml),
                     undo=_update_step(client, net, "modify", "ip-dhcp-host", host_xml(old)))


def _same_host(a, b):
    return a.get("mac") == b.get("mac") and a.get("ip") == b.get("ip") and (a.get("name") or None) == (
        b.get("name") or None)


def _named(host):
    return " (%s)" % host["name"] if host.get("name") else ""


def _update_step(client, net, command, section, xml):
    # Live too when the network runs at the moment the step runs: the plan stops a network before changing it in
    # place and starts it after, so this is the state the plan expects.
    return lambda: client.update_network(net, command, section, xml, live=client.network_active(net))


def converge_network(client, params, check_mode=False, diff_mode=False):
    """The ``network`` module's whole job: plan, execute (unless check mode), and describe the result."""
    plan = plan_network(client, params)
    plan.execute(check_mode)
    result = {"changed": plan.changed, "actions": plan.actions, "warnings": list(plan.warnings)}
    if diff_mode:
        result["diff"] = plan.diff()
    if params.get("state") == "absent":
        result["network"] = {}
    elif check_mode:
        result["network"] = dict(plan.after, name=params["name"])
    else:
        result["network"] = network_view(client, params["name"], users=False)
    return result


def network_info(client, params):
    """The ``network_info`` module: every network, or the one named; never fails because a name is missing."""
    name = params.get("name")
    names = [name] if name else sorted(client.network_name(net) for net in client.list_networks())
    networks = []
    for item in names:
        view = network_view(client, item, users=True, leases=True)
        if view is not None:
            networks.append(view)
    return {"changed": False, "networks": networks}
