"""The network module on a real libvirtd: every mode and state in four steps, refusals while in use, bad input,
the fixed-IP helpers the server module uses, and a reservation seen by a real booted guest.

Names start with vf-t5-, subnets are 10.205.51-58.0/24; libvirt's default network is never touched.
"""
import pytest

from tests.integration.conftest import run_playbook, ssh

TARGETS = "tests/integration/targets/network"


@pytest.fixture(scope="module", autouse=True)
def cleanup(uri):
    yield
    run_playbook(TARGETS + "/cleanup.yml").assert_ok()


def test_modes_and_states_in_four_steps(uri):
    run_playbook(TARGETS + "/modes.yml").assert_ok()


def test_network_in_use(uri, halt_image):
    run_playbook(TARGETS + "/users.yml", halt_image=halt_image).assert_ok()


def test_invalid_input_changes_nothing(uri):
    run_playbook(TARGETS + "/invalid.yml").assert_ok()


def test_fixed_ip_helpers(client):
    """validate_fixed_ip / plan_reservation / plan_release, as the server module calls them."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._errors import NotFoundError, ValidationError
    from ansible_collections.virtfleet.compute.plugins.module_utils._fixed_ip import (
        plan_release,
        plan_reservation,
        validate_fixed_ip,
    )
    from ansible_collections.virtfleet.compute.plugins.module_utils._network import converge_network, network_view

    converge_network(client, {"name": "vf-t5-fixed", "cidr": "10.205.57.0/24",
                              "hosts": [{"mac": "52:54:00:f5:57:99", "ip": "10.205.57.99"}]})
    try:
        mac = "52:54:00:F5:57:01"
        field = "networks[0].fixed_ip"
        assert validate_fixed_ip(client, "vf-t5-fixed", "10.205.57.10", mac, field) == "10.205.57.10"
        for ip, says in (("10.205.58.10", "outside the subnet"), ("10.205.57.0", "network address"),
                         ("10.205.57.255", "broadcast"), ("10.205.57.1", "gateway"),
                         ("10.205.57.99", "already reserved"), ("nonsense", "not an IPv4")):
            with pytest.raises(ValidationError) as err:
                validate_fixed_ip(client, "vf-t5-fixed", ip, mac, field)
            assert err.value.field == field and says in err.value.message, (ip, str(err.value))
        with pytest.raises(NotFoundError):
            validate_fixed_ip(client, "vf-t5-missing", "10.205.57.10", mac, field)

        label, run, undo = plan_reservation(client, "vf-t5-fixed", mac, "10.205.57.10", "web-1")
        assert label == "reserve 10.205.57.10 for 52:54:00:f5:57:01 (web-1) in network vf-t5-fixed"
        run()
        undo()  # what a failed build's rollback does
        assert plan_reservation(client, "vf-t5-fixed", mac, "10.205.57.10", "web-1") is not None
        run()
        hosts = network_view(client, "vf-t5-fixed")["hosts"]
        assert {"mac": "52:54:00:f5:57:01", "ip": "10.205.57.10", "name": "web-1"} in hosts
        assert plan_reservation(client, "vf-t5-fixed", mac, "10.205.57.10", "web-1") is None  # idempotent
        # Another address for the same MAC is a change in place, undone by changing it back.
        label, run2, undo2 = plan_reservation(client, "vf-t5-fixed", mac, "10.205.57.11", "web-1")
        assert "from 10.205.57.10 to 10.205.57.11" in label
        run2()
        undo2()
        assert {"mac": "52:54:00:f5:57:01", "ip": "10.205.57.10", "name": "web-1"} in network_view(
            client, "vf-t5-fixed")["hosts"]
        # Another MAC cannot take a reserved address or name.
        with pytest.raises(ValidationError):
            validate_fixed_ip(client, "vf-t5-fixed", "10.205.57.10", "52:54:00:f5:57:02", field)
        with pytest.raises(ValidationError) as err:
            validate_fixed_ip(client, "vf-t5-fixed", "10.205.57.12", "52:54:00:f5:57:02", field, hostname="web-1")
        assert "named web-1" in err.value.message
        # The live dnsmasq has it too (the network runs).
        with open("/var/lib/libvirt/dnsmasq/vf-t5-fixed.hostsfile") as handle:
            assert "52:54:00:f5:57:01,10.205.57.10,web-1" in handle.read()

        label, run3, _undo3 = plan_release(client, "vf-t5-fixed", mac)
        assert label == "release the DHCP reservation 10.205.57.10 of 52:54:00:f5:57:01 in network vf-t5-fixed"
        run3()
        assert plan_release(client, "vf-t5-fixed", mac) is None
        assert plan_release(client, "vf-t5-missing", mac) is None
    finally:
        converge_network(client, {"name": "vf-t5-fixed", "state": "absent"})


@pytest.mark.boot
def test_reservation_seen_by_a_booted_guest(uri, boot_image, ssh_key):
    key, pubkey = ssh_key
    run_playbook(TARGETS + "/dhcp_boot.yml", boot_image=boot_image, ssh_pubkey=pubkey).assert_ok()
    out = ssh("10.205.58.42", key, "ip -4 -o addr show")
    assert "10.205.58.42/24" in out


def test_server_fixed_ip_is_reserved_changed_and_released(client, halt_image):
    """The server module's fixed_ip: reserved before the domain is defined, changed in place, released on delete."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ValidationError
    from ansible_collections.virtfleet.compute.plugins.module_utils._network import converge_network, network_info
    from ansible_collections.virtfleet.compute.plugins.module_utils._server import converge_server

    def reservations():
        info = network_info(client, {"name": "vf-t5-srvip"})["networks"][0]
        return sorted((h["mac"], h["ip"]) for h in info["hosts"])

    converge_network(client, {"name": "vf-t5-srvip", "cidr": "10.205.59.0/24", "state": "started"})
    server = dict(name="vf-t5-srvip-1", flavor={"vcpus": 1, "ram_mb": 64, "disk_gb": 1}, image=halt_image,
                  virt_type="qemu", state="present", networks=[{"network": "vf-t5-srvip", "fixed_ip": "10.205.59.20"}])
    try:
        check = converge_server(client, server, check_mode=True)
        created = converge_server(client, server)
        assert check["actions"] == created["actions"]
        assert any("10.205.59.20" in a for a in created["actions"])
        mac = created["server"]["networks"][0]["mac"]
        assert reservations() == [(mac, "10.205.59.20")]
        assert created["server"]["networks"][0]["fixed_ip"] == "10.205.59.20"
        assert not converge_server(client, server)["changed"]

        moved = dict(server, networks=[{"network": "vf-t5-srvip", "fixed_ip": "10.205.59.21"}])
        changed = converge_server(client, moved)
        assert changed["changed"] and reservations() == [(mac, "10.205.59.21")]
        assert not converge_server(client, moved)["changed"]

        for bad in ("10.205.60.5", "10.205.59.255", "10.205.59.0"):
            with pytest.raises(ValidationError) as refused:
                converge_server(client, dict(server, name="vf-t5-srvip-2",
                                             networks=[{"network": "vf-t5-srvip", "fixed_ip": bad}]))
            assert refused.value.field == "networks[0].fixed_ip"
        with pytest.raises(ValidationError) as taken:
            converge_server(client, dict(server, name="vf-t5-srvip-2",
                                         networks=[{"network": "vf-t5-srvip", "fixed_ip": "10.205.59.21"}]))
        assert taken.value.field == "networks[0].fixed_ip"
        assert client.lookup_domain("vf-t5-srvip-2") is None
    finally:
        converge_server(client, {"name": "vf-t5-srvip-1", "state": "absent"})
        assert reservations() == []
        converge_network(client, {"name": "vf-t5-srvip", "state": "absent"})
