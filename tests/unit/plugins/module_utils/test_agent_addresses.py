"""Addresses from the QEMU guest agent first, then DHCP leases and ARP for the NICs it does not report."""
import libvirt

from ansible_collections.virtfleet.compute.plugins.module_utils._libvirt_client import LibvirtClient

MAC_A, MAC_B = "52:54:00:aa:00:01", "52:54:00:aa:00:02"


def iface(mac, *addrs):
    return {"hwaddr": mac, "addrs": [{"addr": a.split("/")[0], "prefix": int(a.split("/")[1]), "type": 0}
                                     for a in addrs]}


class FakeDom:
    def __init__(self, answers):
        self.answers = answers  # source -> dict, or an exception

    def name(self):
        return "web1"

    def interfaceAddresses(self, source, flags):  # noqa: N802 - libvirt's spelling
        answer = self.answers.get(source, {})
        if isinstance(answer, Exception):
            raise answer
        return answer


AGENT = libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT
LEASE = libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE
ARP = libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP


def test_the_agent_answers_for_its_nics_and_leases_for_the_others():
    dom = FakeDom({
        AGENT: {"lo": iface("00:00:00:00:00:00", "127.0.0.1/8", "::1/128"),
                "eth0": iface(MAC_A.upper(), "10.0.0.5/24", "fe80::1/64", "2001:db8::5/64")},
        LEASE: {"vnet0": iface(MAC_A, "10.0.0.9/24"), "vnet1": iface(MAC_B, "192.168.122.7/24")},
        ARP: {"vnet1": iface(MAC_B, "192.168.122.7/24")},
    })
    client = LibvirtClient("test:///default")
    assert client.agent_addresses(dom) == {MAC_A: ["10.0.0.5/24", "2001:db8::5/64"]}
    # The stale lease of MAC_A is not mixed into what the guest itself says it has.
    assert client.domain_addresses(dom) == {MAC_A: ["10.0.0.5/24", "2001:db8::5/64"], MAC_B: ["192.168.122.7/24"]}


def test_without_an_agent_leases_then_arp():
    dom = FakeDom({
        AGENT: libvirt.libvirtError("Guest agent is not responding: QEMU guest agent is not connected"),
        LEASE: {"vnet0": iface(MAC_A, "10.0.0.9/24")},
        ARP: {"vnet0": iface(MAC_A, "10.0.0.9/24"), "vnet1": iface(MAC_B, "172.16.0.3/24")},
    })
    client = LibvirtClient("test:///default")
    assert client.agent_addresses(dom) is None
    assert client.domain_addresses(dom) == {MAC_A: ["10.0.0.9/24"], MAC_B: ["172.16.0.3/24"]}
