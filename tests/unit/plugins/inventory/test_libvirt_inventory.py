# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The libvirt inventory plugin without libvirt: hosts answer through fakes of host_info and list_servers.

The plugin is instantiated the way the lookup tests do it (the collection is imported as a plain package), given
its option definitions by the inventory loader, and parses real configuration files. tests/integration/
test_multihost.py runs it against real libvirt daemons.
"""

import json
import threading
import time

import pytest
from ansible.errors import AnsibleParserError
from ansible.inventory.data import InventoryData
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import inventory_loader
from ansible.template import Templar

from ansible_collections.virtfleet.compute.plugins.inventory import libvirt as plugin_module
from ansible_collections.virtfleet.compute.plugins.module_utils._host_info import down_host

FQCN = "virtfleet.compute.libvirt"


def fake_host(name, uri, **record):
    host = down_host(name, uri, None)
    host.update(up=True, state="up", status="enabled", error=None, availability_zone="nova", vcpus=8,
                memory_mb=16384, local_gb=100, capacity={"memory_mb": {"free": 8000}})
    host.pop("error")
    host.update(record)
    return host


class Fleet:
    """What each fake host answers: ``records[name]`` (a dict, an exception to raise, or seconds to hang)."""

    def __init__(self, records=None, servers=None, delay=0.0):
        self.records = records or {}
        self.servers = servers or {}
        self.delay = delay
        self.asked = []
        self.client_options = []
        self.lock = threading.Lock()

    def client(self, uri, **options):
        self.client_options.append(options)
        return FakeClient(uri)

    def host_info(self, client, name=None, instance_pool=None, details=True):
        with self.lock:
            self.asked.append(name)
        answer = self.records.get(name, {})
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, (int, float)):
            time.sleep(answer)
            answer = {}
        time.sleep(self.delay)
        client.name = name
        return fake_host(name, client.uri, **answer)

    def list_servers(self, client):
        return [dict(s) for s in self.servers.get(client.name, [])]


class FakeClient:
    def __init__(self, uri):
        self.uri = uri
        self.name = None

    def close(self):
        pass


@pytest.fixture
def fleet(monkeypatch):
    fleet = Fleet()
    monkeypatch.setattr(plugin_module, "host_info", fleet.host_info)
    monkeypatch.setattr(plugin_module, "list_servers", fleet.list_servers)
    monkeypatch.setattr(plugin_module, "LibvirtClient", fleet.client)
    monkeypatch.setattr(plugin_module, "HAS_LIBVIRT", True)
    # ask_host's default client_factory was bound at import time; route it through the fake.
    original = plugin_module.ask_host
    monkeypatch.setattr(plugin_module, "ask_host",
                        lambda name, uri, **kw: original(name, uri, client_factory=fleet.client, **kw))
    return fleet


def parse(tmp_path, config, cache=True):
    path = tmp_path / "test.virtfleet.yml"
    path.write_text(json.dumps(dict({"plugin": FQCN}, **config)))
    plugin = plugin_module.InventoryModule()
    inventory_loader._load_config_defs(FQCN, plugin_module, plugin_module.__file__)
    inventory_loader._update_object(obj=plugin, name=FQCN, path=plugin_module.__file__, resolved=FQCN)
    inventory = InventoryData()
    assert plugin.verify_file(str(path))
    plugin.parse(inventory, DataLoader(), str(path), cache=cache)
    # What Ansible's inventory manager does after a source is parsed: write the cache if it changed.
    if config.get("cache"):
        plugin.update_cache_if_changed()
    return inventory


def members(inventory, group):
    return sorted(h.name for h in inventory.groups[group].get_hosts()) if group in inventory.groups else []


def hostvars(inventory, name):
    return inventory.get_host(name).get_vars()


HOSTS = [{"name": "kvm-01", "uri": "qemu+ssh://root@kvm-01/system"},
         {"name": "kvm-02", "uri": "qemu+ssh://root@kvm-02/system"},
         {"name": "kvm-03", "uri": "qemu+ssh://root@kvm-03/system"}]


# -- configuration --------------------------------------------------------------------------------------------------

def test_names_come_from_the_config_or_the_uri():
    entries = plugin_module.hypervisor_entries([
        {"uri": "qemu+ssh://root@kvm-07.example.com/system"},
        {"name": "local", "uri": "qemu:///system", "vars": {"ansible_host": "10.0.0.1"}},
        "qemu+tls://kvm-08/system",
    ])
    assert [(e["name"], e["vars"]) for e in entries] == [
        ("kvm-07.example.com", {}), ("local", {"ansible_host": "10.0.0.1"}), ("kvm-08", {})]


@pytest.mark.parametrize("hypervisors, message", [
    ([], "list at least one host"),
    ([{"uri": "qemu:///system"}], r"hypervisors\[0\].name: is required when the URI names no host"),
    ([{"name": "a"}], r"hypervisors\[0\].uri: is required"),
    ([{"name": "a", "uri": "qemu:///system"}, {"name": "a", "uri": "qemu+ssh://x/system"}], "a appears twice"),
    ([{"name": "a", "uri": "qemu:///system", "url": "x"}], r"unknown key\(s\) url"),
    ([{"name": "a", "uri": "qemu:///system", "vars": []}], r"vars: must be a dict"),
])
def test_bad_hypervisor_lists_name_the_entry(hypervisors, message):
    with pytest.raises(ValueError, match=message):
        plugin_module.hypervisor_entries(hypervisors)


@pytest.mark.parametrize("uri", ["qemu+tcp://kvm-01/system", "qemu+TCP://root@kvm-01:16509/system"])
def test_plain_tcp_uris_are_refused_unless_allowed(uri):
    with pytest.raises(ValueError, match=r"hypervisors\[0\].uri: .*no encryption.*allow_insecure_tcp"):
        plugin_module.hypervisor_entries([{"name": "kvm-01", "uri": uri}])
    assert plugin_module.hypervisor_entries([{"name": "kvm-01", "uri": uri}], allow_insecure_tcp=True)


def test_connection_options_reach_every_client(tmp_path, fleet):
    parse(tmp_path, {"hypervisors": HOSTS + [{"name": "kvm-04", "uri": "qemu+tcp://kvm-04/system"}],
                     "connect_timeout": 7, "allow_insecure_tcp": True})
    assert fleet.client_options == [{"connect_timeout": 7, "allow_insecure_tcp": True}] * 4


def test_only_virtfleet_files_are_claimed(tmp_path):
    plugin = plugin_module.InventoryModule()
    for name, claimed in (("a.virtfleet.yml", True), ("a.virtfleet.yaml", True), ("a.yml", False),
                          ("virtfleet.yml", False)):
        path = tmp_path / name
        path.write_text("plugin: %s\n" % FQCN)
        assert plugin.verify_file(str(path)) is claimed, name


def test_a_bad_config_fails_with_its_path(tmp_path, fleet):
    with pytest.raises(AnsibleParserError, match=r"test.virtfleet.yml: hypervisors\[0\].uri: is required"):
        parse(tmp_path, {"hypervisors": [{"name": "x"}]})


# -- asking the hosts -----------------------------------------------------------------------------------------------

def test_hosts_are_asked_concurrently(fleet):
    fleet.delay = 0.3
    entries = plugin_module.hypervisor_entries([{"name": "h%d" % i, "uri": "qemu+ssh://h%d/system" % i}
                                                for i in range(6)])
    started = time.monotonic()
    answers = plugin_module.ask_hosts(entries, concurrency=6, timeout=10)
    concurrent = time.monotonic() - started
    started = time.monotonic()
    plugin_module.ask_hosts(entries, concurrency=1, timeout=10)
    one_by_one = time.monotonic() - started
    assert [host["name"] for host, _servers in answers] == ["h%d" % i for i in range(6)]
    assert concurrent < 1.0 < 1.7 < one_by_one


def test_a_failing_or_hanging_host_is_down_and_the_others_answer(fleet):
    fleet.records = {"h1": ConnectionError("connection refused"), "h2": 5.0}
    entries = plugin_module.hypervisor_entries([{"name": "h%d" % i, "uri": "qemu+ssh://h%d/system" % i}
                                                for i in range(4)])
    started = time.monotonic()
    answered = plugin_module.ask_hosts(entries, concurrency=2, timeout=0.5)
    answers = dict((host["name"], host) for host, _servers in answered)
    assert time.monotonic() - started < 2.5
    assert answers["h0"]["up"] and answers["h3"]["up"]
    assert not answers["h1"]["up"] and answers["h1"]["error"] == "connection refused"
    assert not answers["h2"]["up"]
    assert answers["h2"]["error"] == "no answer from qemu+ssh://h2/system within 0.5 seconds"
    # the down record still has every field the scheduler reads
    assert answers["h2"]["vcpus"] == 0 and answers["h2"]["servers"] == []


# -- the inventory --------------------------------------------------------------------------------------------------

def test_hosts_groups_and_variables(tmp_path, fleet):
    fleet.records = {
        "kvm-01": {"availability_zone": "az-1", "aggregates": {"ssd-hosts": {"ssd": "true"}}},
        "kvm-02": {"availability_zone": "az-1", "enabled": False, "disabled_reason": "maintenance"},
        "kvm-03": ConnectionError("cannot connect to libvirt at qemu+ssh://root@kvm-03/system: refused"),
    }
    inventory = parse(tmp_path, {"hypervisors": HOSTS})
    assert members(inventory, "compute") == ["kvm-01", "kvm-02", "kvm-03"]
    assert members(inventory, "down") == ["kvm-03"]
    assert members(inventory, "disabled") == ["kvm-02"]
    assert members(inventory, "az_az_1") == ["kvm-01", "kvm-02"]
    assert members(inventory, "aggregate_ssd_hosts") == ["kvm-01"]
    up, down = hostvars(inventory, "kvm-01"), hostvars(inventory, "kvm-03")
    assert up["virtfleet_up"] is True and up["virtfleet_uri"] == "qemu+ssh://root@kvm-01/system"
    assert up["virtfleet_host"]["availability_zone"] == "az-1"
    assert up["ansible_connection"] == "local"
    assert down["virtfleet_up"] is False
    assert down["virtfleet_host"]["error"].endswith("refused")


def test_local_connection_can_be_left_to_the_user(tmp_path, fleet):
    hosts = [dict(HOSTS[0], vars={"ansible_host": "192.0.2.10", "ansible_user": "admin"})]
    inventory = parse(tmp_path, {"hypervisors": hosts, "local_connection": False})
    variables = hostvars(inventory, "kvm-01")
    assert "ansible_connection" not in variables
    assert (variables["ansible_host"], variables["ansible_user"]) == ("192.0.2.10", "admin")


def test_servers_become_hosts_grouped_by_hypervisor_flavor_group_and_tags(tmp_path, fleet):
    fleet.servers = {
        "kvm-01": [{"name": "web-1", "uuid": "u1", "ips": ["10.0.0.5", "10.0.1.5"], "flavor": {"name": "m1.small"},
                    "server_group": "web", "tags": ["web", "prod"], "metadata": {"note": "{{ 6 * 7 }}"}},
                   # a server named like a hypervisor keeps its UUID as inventory name
                   {"name": "kvm-02", "uuid": "u2", "ips": [], "flavor": {}, "tags": []}],
        "kvm-02": [{"name": "web-1", "uuid": "u3", "ips": ["10.0.0.9"], "flavor": {"name": "m1.small"},
                    "tags": []}],
    }
    inventory = parse(tmp_path, {"hypervisors": HOSTS[:2], "add_servers": True})
    assert members(inventory, "servers") == ["u2", "u3", "web-1"]
    assert members(inventory, "hypervisor_kvm_01") == ["u2", "web-1"]
    assert members(inventory, "flavor_m1_small") == ["u3", "web-1"]
    assert members(inventory, "server_group_web") == ["web-1"]
    assert members(inventory, "tag_prod") == ["web-1"]
    web = hostvars(inventory, "web-1")
    assert web["ansible_host"] == "10.0.0.5"
    assert web["virtfleet_hypervisor"] == "kvm-01"
    assert "ansible_host" not in hostvars(inventory, "u2")
    # what comes from guests is data, never a template
    note = web["virtfleet_server"]["metadata"]["note"]
    assert Templar(loader=DataLoader()).template(note) == "{{ 6 * 7 }}"


def test_servers_are_not_added_unless_asked(tmp_path, fleet):
    fleet.servers = {"kvm-01": [{"name": "web-1", "uuid": "u1", "ips": [], "flavor": {}, "tags": []}]}
    inventory = parse(tmp_path, {"hypervisors": HOSTS[:1]})
    assert "web-1" not in inventory.hosts and "servers" not in inventory.groups


def test_compose_groups_and_keyed_groups(tmp_path, fleet):
    fleet.records = {"kvm-01": {"capacity": {"memory_mb": {"free": 1000}}}, "kvm-02": {"availability_zone": "b"}}
    inventory = parse(tmp_path, {
        "hypervisors": HOSTS[:2],
        "compose": {"free_ram_mb": "virtfleet_host.capacity.memory_mb.free"},
        "groups": {"nearly_full": "virtfleet_host.capacity.memory_mb.free < 4096"},
        "keyed_groups": [{"key": "virtfleet_host.availability_zone", "prefix": "zone"}],
    })
    # ansible-core before 2.19 templates compose expressions to text (no native types); 2.19 keeps the integer.
    from ansible.release import __version__ as core

    expected = 1000 if tuple(int(p) for p in core.split(".")[:2]) >= (2, 19) else "1000"
    assert hostvars(inventory, "kvm-01")["free_ram_mb"] == expected
    assert members(inventory, "nearly_full") == ["kvm-01"]
    assert members(inventory, "zone_nova") == ["kvm-01"]
    assert members(inventory, "zone_b") == ["kvm-02"]


def test_the_cache_stands_in_only_for_hosts_that_do_not_answer(tmp_path, fleet):
    """Every host is asked on every run; a host that is down is reported with its last answer, and when it was."""
    config = {"hypervisors": HOSTS[:2], "cache": True, "cache_plugin": "jsonfile", "add_servers": True,
              "cache_connection": str(tmp_path / "cache")}
    fleet.servers = {"kvm-02": [{"name": "web-1", "uuid": "u1", "ips": []}]}
    parse(tmp_path, config)
    assert sorted(fleet.asked) == ["kvm-01", "kvm-02"]
    fleet.asked.clear()
    # Hosts that answer are asked again, whatever the cache holds: what changed since is seen.
    fleet.servers = {"kvm-02": [{"name": "web-1", "uuid": "u1", "ips": []}, {"name": "web-2", "uuid": "u2"}]}
    inventory = parse(tmp_path, config)
    assert sorted(fleet.asked) == ["kvm-01", "kvm-02"] and members(inventory, "servers") == ["web-1", "web-2"]
    assert "last_known" not in hostvars(inventory, "kvm-02")["virtfleet_host"]

    # kvm-02 dies: down, with the servers and record of its last answer, and the time of it.
    fleet.records["kvm-02"] = ConnectionError("cannot connect to libvirt")
    inventory = parse(tmp_path, config)
    host = hostvars(inventory, "kvm-02")["virtfleet_host"]
    assert members(inventory, "down") == ["kvm-02"] and host["up"] is False
    last = host["last_known"]
    assert [s["name"] for s in last["servers"]] == ["web-1", "web-2"]
    assert last["record"]["availability_zone"] == "nova"
    assert last["read_at"].endswith("Z") and len(last["read_at"]) == 20
    # Its servers run nowhere now: they are not inventory hosts.
    assert members(inventory, "servers") == []
    # Still down on the next run: the same last answer (not lost, not replaced by the empty one of a dead host).
    again = hostvars(parse(tmp_path, config), "kvm-02")["virtfleet_host"]["last_known"]
    assert again == last

    # --flush-cache forgets the last answers.
    assert "last_known" not in hostvars(parse(tmp_path, config, cache=False), "kvm-02")["virtfleet_host"]


def test_a_cache_of_another_host_list_is_not_used(tmp_path, fleet):
    config = {"hypervisors": HOSTS[:2], "cache": True, "cache_plugin": "jsonfile",
              "cache_connection": str(tmp_path / "cache")}
    parse(tmp_path, config)
    fleet.records["kvm-02"] = ConnectionError("cannot connect to libvirt")
    inventory = parse(tmp_path, dict(config, hypervisors=[HOSTS[1], HOSTS[0]]))
    assert "last_known" not in hostvars(inventory, "kvm-02")["virtfleet_host"]


def test_without_the_cache_a_host_that_is_down_has_no_last_answer(tmp_path, fleet):
    config = {"hypervisors": HOSTS[:2]}
    parse(tmp_path, config)
    fleet.records["kvm-02"] = ConnectionError("cannot connect to libvirt")
    inventory = parse(tmp_path, config)
    assert "last_known" not in hostvars(inventory, "kvm-02")["virtfleet_host"]
