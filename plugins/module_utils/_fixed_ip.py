# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A server NIC's ``fixed_ip``: Nova's fixed IP, made by a DHCP reservation in the libvirt network.

The guest keeps configuring its NIC by DHCP (the config drive says so); the network's DHCP server answers its MAC
with the reserved address. So a fixed IP needs nothing in the guest and survives rebuilds, since a server's MACs do.

``validate_fixed_ip()`` runs while planning, before anything changes: an address outside the subnet, on the network,
broadcast or gateway address, reserved for another MAC or leased to another MAC fails with the NIC's field named.
``plan_reservation()`` and ``plan_release()`` return ``(label, run, undo)`` steps for a Plan (``plan.add(*step)``),
or None when there is nothing to do, so check mode lists exactly what the real run does.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import NotFoundError, ValidationError
from ansible_collections.virtfleet.compute.plugins.module_utils._network import (
    check_host_address,
    host_xml,
    normalize_mac,
    parse_network,
    require_netaddr,
)

_RESERVATION_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def reservation_name(hostname):
    """The name a reservation carries for ``hostname``: its first label (RFC 1123), or None.

    dnsmasq hands the name to the guest with the lease and answers DNS queries for it on the network, where a
    single label is what resolves. A name that does not qualify is left out rather than refused: the address is
    what matters.
    """
    if not hostname:
        return None
    label = hostname.split(".")[0]
    return label if _RESERVATION_NAME_RE.match(label) else None


def _network(client, network_name, field):
    net = client.lookup_network(network_name)
    if net is None:
        raise NotFoundError("libvirt network %s does not exist on %s (create it with the network module)"
                            % (network_name, client.uri), field=field)
    spec, _uuid, _mac = parse_network(client.network_xml(net, inactive=True))
    return net, spec


def validate_fixed_ip(client, network_name, ip, mac, field, hostname=None):
    """Check that ``ip`` can be reserved for ``mac`` in ``network_name``; return it normalised.

    :raises NotFoundError: the network does not exist.
    :raises ValidationError: naming ``field`` (e.g. ``networks[0].fixed_ip``) and what is wrong with the address.
    """
    require_netaddr()
    net, spec = _network(client, network_name, field)
    if not spec.cidr:
        raise ValidationError("network %s (mode %s) has no subnet of its own, so it cannot reserve addresses; a "
                              "fixed_ip needs a nat, route or isolated network with DHCP" % (network_name, spec.mode),
                              field=field)
    if not spec.dhcp:
        raise ValidationError("network %s has no DHCP server to hand out %s; enable dhcp on it (network module)"
                              % (network_name, ip), field=field)
    address = str(check_host_address(spec.cidr, spec.gateway, ip, field))
    hostname = reservation_name(hostname)
    mac = normalize_mac(mac, field.rsplit(".", 1)[0] + ".mac" if "." in field else "mac")
    for host in spec.hosts:
        if host.get("ip") == address and host.get("mac") != mac:
            raise ValidationError("%s is already reserved in network %s for %s%s"
                                  % (address, network_name, host.get("mac") or "another host",
                                     " (%s)" % host["name"] if host.get("name") else ""), field=field)
        if hostname and host.get("name") == hostname and host.get("mac") != mac:
            raise ValidationError("network %s already has a DHCP reservation named %s (for %s); host names of "
                                  "reservations are unique per network" % (network_name, hostname, host.get("mac")),
                                  field=field)
    for lease in client.network_leases(net):
        leased_mac = (lease.get("mac") or "").lower()
        if lease.get("ipaddr") == address and leased_mac != mac:
            # dnsmasq does not take a reserved address back from a client that holds a lease on it: it would give
            # the server another address and log "not using configured address".
            raise ValidationError("%s is leased to %s%s in network %s until its lease expires (epoch %s); choose "
                                  "another address or release that lease first"
                                  % (address, leased_mac, " (%s)" % lease["hostname"] if lease.get("hostname")
                                     else "", network_name, lease.get("expirytime")), field=field)
    return address


def _reservation(client, network_name, mac):
    """(libvirt network or None, the reservation dict of ``mac`` or None)."""
    net = client.lookup_network(network_name)
    if net is None:
        return None, None
    spec, _uuid, _mac = parse_network(client.network_xml(net, inactive=True))
    for host in spec.hosts:
        if host.get("mac") == mac:
            return net, host
    return net, None


def plan_reservation(client, network_name, mac, ip, hostname=None):
    """The step that reserves ``ip`` for ``mac`` in ``network_name`` (live and in the persistent config).

    Returns ``(label, run, undo)``, or None when exactly that reservation exists. A reservation of ``mac`` for
    another address is changed in place. The reservation is named after ``hostname`` (see reservation_name()).
    Call ``validate_fixed_ip()`` first.
    """
    mac = mac.lower()
    hostname = reservation_name(hostname)
    net, old = _reservation(client, network_name, mac)
    if net is None:
        raise NotFoundError("libvirt network %s does not exist on %s" % (network_name, client.uri))
    new = {"mac": mac, "ip": ip, "name": hostname}
    if old is not None and old.get("ip") == ip and (old.get("name") or None) == (hostname or None):
        return None
    named = " (%s)" % hostname if hostname else ""
    if old is None:
        return ("reserve %s for %s%s in network %s" % (ip, mac, named, network_name),
                _update(client, net, "add", new), _update(client, net, "delete", new))
    return ("change the DHCP reservation of %s in network %s from %s to %s%s" % (mac, network_name, old.get("ip"),
                                                                                 ip, named),
            _update(client, net, "modify", new), _update(client, net, "modify", old))


def plan_release(client, network_name, mac):
    """The step that removes the DHCP reservation of ``mac`` from ``network_name``; None if there is none."""
    mac = mac.lower()
    net, old = _reservation(client, network_name, mac)
    if old is None:
        return None
    return ("release the DHCP reservation %s of %s in network %s" % (old.get("ip"), mac, network_name),
            _update(client, net, "delete", old), _update(client, net, "add", old))


def _update(client, net, command, host):
    xml = host_xml(host)

    def run():
        # Decided when the step runs, not when it was planned: the plan may have started or stopped the network.
        client.update_network(net, command, "ip-dhcp-host", xml, live=client.network_active(net))

    return run
