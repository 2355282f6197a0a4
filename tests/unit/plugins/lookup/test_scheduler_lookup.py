# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The scheduler lookup: its options through Ansible's plugin config, and once end to end in a real playbook run.

The unit tests import the collection as a plain package (tests/conftest.py), so the lookup is instantiated here and
given its option definitions by the lookup loader's own methods; the playbook test goes through the real loader.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml
from ansible.errors import AnsibleLookupError
from ansible.plugins.loader import lookup_loader

from ansible_collections.virtfleet.compute.plugins.lookup import scheduler as plugin_module
from ansible_collections.virtfleet.compute.plugins.module_utils._scheduler import scheduler as _scheduler

SMALL = {"name": "m1.small", "vcpus": 1, "ram_mb": 2048, "disk_gb": 20}
FQCN = "virtfleet.compute.scheduler"


@pytest.fixture(scope="module")
def lookup():
    path = plugin_module.__file__
    lookup_loader._load_config_defs(FQCN, plugin_module, path)
    plugin = plugin_module.LookupModule()
    lookup_loader._update_object(obj=plugin, name=FQCN, path=path, resolved=FQCN)
    return plugin


def records():
    return [
        {"name": "h1", "vcpus": 8, "memory_mb": 16384, "local_gb": 100, "memory_mb_used": 8000},
        {"name": "h2", "vcpus": 8, "memory_mb": 16384, "local_gb": 100},
    ]


def test_places_servers_from_host_records(lookup):
    result = lookup.run([], variables={}, servers=[{"name": "a", "flavor": SMALL}], hosts=records(), seed=1)
    assert result == [{"name": "a", "host": "h2", "alternates": ["h1"], "existing": False, "reasons": {}}]


def test_servers_as_terms(lookup):
    result = lookup.run([[{"name": "a", "flavor": SMALL}], {"name": "b", "flavor": SMALL}], variables={},
                        hosts=records())
    assert [r["name"] for r in result] == ["a", "b"]


def test_terms_and_servers_together_are_refused(lookup):
    with pytest.raises(AnsibleLookupError, match="either as terms or as the servers option"):
        lookup.run([{"name": "a", "flavor": SMALL}], variables={}, servers=[{"name": "b", "flavor": SMALL}],
                   hosts=records())


def test_hostvars_keyed_by_inventory_hostname(lookup):
    hostvars = {
        "kvm-1": {"ansible_host": "10.0.0.1", "vcpus": 8, "memory_mb": 16384, "local_gb": 100,
                  "memory_mb_used": 12000, "unrelated": "{{ never_templated }}"},
        "kvm-2": {"ansible_host": "10.0.0.2", "vcpus": 8, "memory_mb": 16384, "local_gb": 100},
        "controller": {"ansible_host": "10.0.0.9"},  # not a hypervisor: skipped
    }
    result = lookup.run([], variables={}, servers=[{"name": "a", "flavor": SMALL}], hosts=hostvars)
    assert result[0]["host"] == "kvm-2" and result[0]["alternates"] == ["kvm-1"]


def test_hostvars_with_the_record_in_a_variable(lookup):
    hostvars = {
        "kvm-1": {"vf_host": {"name": "ignored", "vcpus": 8, "memory_mb": 16384, "local_gb": 100}},
        "kvm-2": {"vf_host": {"vcpus": 8, "memory_mb": 16384, "local_gb": 100, "enabled": False}},
        "other": {"vcpus": 64},  # no vf_host: skipped even though it looks like a record
    }
    result = lookup.run([], variables={}, servers=[{"name": "a", "flavor": SMALL}], hosts=hostvars,
                        hostvar="vf_host", alternates=5)
    assert result[0]["host"] == "kvm-1" and result[0]["alternates"] == []


def test_no_valid_host_becomes_a_lookup_error_with_the_reasons(lookup):
    hosts = [{"name": "h2", "vcpus": 8, "memory_mb": 16384, "local_gb": 100, "memory_mb_used": 22784}]
    with pytest.raises(AnsibleLookupError) as info:
        lookup.run([], variables={}, servers=[{"name": "big", "flavor": dict(SMALL, ram_mb=4096)}], hosts=hosts)
    assert "No valid host for server 'big'" in str(info.value)
    assert "h2: RamFilter: requested 4096 MB, free 1024 MB of capacity 23808 MB (used 22784 MB)" in str(info.value)


def test_allow_unplaced(lookup):
    hosts = [{"name": "h1", "vcpus": 1, "memory_mb": 16384, "local_gb": 100, "enabled": False}]
    result = lookup.run([], variables={}, servers=[{"name": "a", "flavor": SMALL}], hosts=hosts, allow_unplaced=True)
    assert result == [{"name": "a", "host": None, "alternates": [], "existing": False,
                       "reasons": {"h1": "ComputeFilter: host is disabled"}}]


def test_input_errors_become_lookup_errors(lookup):
    with pytest.raises(AnsibleLookupError, match=r"invalid scheduler input: servers\[0\].flavor"):
        lookup.run([], variables={}, servers=[{"name": "a"}], hosts=records())
    with pytest.raises(AnsibleLookupError, match="hosts must be a list"):
        lookup.run([], variables={}, servers=[{"name": "a", "flavor": SMALL}], hosts="h1,h2")
    with pytest.raises(AnsibleLookupError, match="unknown filter"):
        lookup.run([], variables={}, servers=[], hosts=records(), enabled_filters=["NoSuchFilter"])


def test_options_reach_the_scheduler(lookup):
    servers = [{"name": "s%d" % i, "flavor": SMALL} for i in range(3)]
    stacked = lookup.run([], variables={}, servers=servers, hosts=records(), ram_weight_multiplier=-1.0,
                         cpu_weight_multiplier=-1.0, disk_weight_multiplier=-1.0, io_ops_weight_multiplier=0.0,
                         alternates=0)
    assert [r["host"] for r in stacked] == ["h1", "h1", "h1"]
    assert all(r["alternates"] == [] for r in stacked)
    limited = lookup.run([], variables={}, servers=servers, hosts=records(), max_instances_per_host=1,
                         allow_unplaced=True)
    assert [r["host"] for r in limited] == ["h2", "h1", None]
    zoned = lookup.run([], variables={}, servers=[{"name": "a", "flavor": SMALL, "availability_zone": "z"}],
                       hosts=records(), default_availability_zone="z")
    assert zoned[0]["host"] == "h2"
    only_ram = lookup.run([], variables={}, servers=servers[:1], hosts=records(), enabled_filters=["RamFilter"])
    assert only_ram[0]["host"] == "h2"
    # Nova's I/O weigher alone spreads a request of identical servers; nova's zone restricts nothing when asked to.
    spread = lookup.run([], variables={}, servers=servers[:2], hosts=records()[1:] + [dict(records()[1], name="h3")],
                        ram_weight_multiplier=0.0, cpu_weight_multiplier=0.0, disk_weight_multiplier=0.0)
    assert [r["host"] for r in spread] == ["h2", "h3"]
    zoned = [dict(records()[1], availability_zone="az1")]
    anywhere = lookup.run([], variables={}, servers=[{"name": "a", "flavor": SMALL, "availability_zone": "nova"}],
                          hosts=zoned, restrict_default_availability_zone=False)
    assert anywhere[0]["host"] == "h2"
    allocation = lookup.run([], variables={}, servers=servers[:1], resource_weighers="allocation", hosts=[
        dict(records()[1], name="big-ratio", ram_allocation_ratio=3.0, memory_mb_used=6000),
        dict(records()[1], name="plain", ram_allocation_ratio=1.0)], cpu_weight_multiplier=0.0,
        disk_weight_multiplier=0.0)
    assert allocation[0]["host"] == "big-ratio"


def test_seed_and_subset(lookup):
    hosts = [{"name": "h%d" % i, "vcpus": 8, "memory_mb": 16384, "local_gb": 100} for i in range(8)]
    servers = [{"name": "s%d" % i, "flavor": SMALL} for i in range(20)]
    first = lookup.run([], variables={}, servers=servers, hosts=hosts, host_subset_size=4, seed="abc")
    assert first == lookup.run([], variables={}, servers=servers, hosts=hosts, host_subset_size=4, seed="abc")
    assert first == [p.to_dict() for p in _scheduler.schedule(servers, hosts, host_subset_size=4, seed="abc")]


def test_documented_defaults_match_the_scheduler():
    plugin = plugin_module
    options = yaml.safe_load(plugin.DOCUMENTATION)["options"]
    assert options["enabled_filters"]["default"] == list(_scheduler.DEFAULT_FILTERS)
    defaults = _scheduler.Weights()
    for name in _scheduler.Weights.__dataclass_fields__:
        assert options["%s_weight_multiplier" % name]["default"] == getattr(defaults, name)
    signature = _scheduler.Scheduler.__init__.__kwdefaults__
    for name in ("host_subset_size", "alternates", "max_instances_per_host", "max_io_ops_per_host",
                 "default_availability_zone", "restrict_default_availability_zone", "match_unscoped_extra_specs",
                 "resource_weighers", "shuffle_best_same_weighed_hosts"):
        assert options[name]["default"] == signature[name]
    assert options["resource_weighers"]["choices"] == list(_scheduler.RESOURCE_WEIGHERS)
    assert list(options) == sorted(options)
    yaml.safe_load(plugin.EXAMPLES)
    yaml.safe_load(plugin.RETURN)


def test_in_a_playbook_with_real_hostvars(tmp_path):
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(textwrap.dedent("""
        all:
          children:
            hypervisors:
              hosts:
                kvm-1: {vcpus: 8, memory_mb: 16384, local_gb: 100, memory_mb_used: 12000}
                kvm-2: {vcpus: 8, memory_mb: 16384, local_gb: 100}
            others:
              hosts:
                ctl: {}
          vars:
            ansible_connection: local
            ansible_python_interpreter: "{{ ansible_playbook_python }}"
        """))
    playbook = tmp_path / "play.yml"
    playbook.write_text(textwrap.dedent("""
        - hosts: ctl
          gather_facts: false
          tasks:
            - ansible.builtin.copy:
                dest: "{{ out }}"
                content: "{{ query('virtfleet.compute.scheduler', servers=servers, seed=3, hosts=hypervisors)
                             | to_json }}"
              vars:
                hypervisors: "{{ dict(groups['hypervisors'] | zip(groups['hypervisors'] | map('extract', hostvars))) }}"
                servers:
                  - {name: a, flavor: {name: m1.small, vcpus: 1, ram_mb: 2048, disk_gb: 20}}
            - ansible.builtin.set_fact:
                whole: "{{ query('virtfleet.compute.scheduler', {'name': 'b', 'flavor': {'vcpus': 1, 'ram_mb': 1}},
                                 hosts=hostvars) }}"
            - ansible.builtin.assert:
                that: whole[0].host == 'kvm-2'
        """))
    out = tmp_path / "out.json"
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0")
    run = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(inventory), str(playbook),
         "-e", "out=%s" % out], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(out.read_text()) == [
        {"name": "a", "host": "kvm-2", "alternates": ["kvm-1"], "existing": False, "reasons": {}}]
