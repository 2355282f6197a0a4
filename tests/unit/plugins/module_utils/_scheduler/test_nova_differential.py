# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The scheduler against Nova's own filter and weigher code, on random fleets and requests.

Nova (PyPI ``nova``, the version pinned in nova-requirements.txt) lives in a virtualenv of its own:
``make nova-venv`` creates it (``make units`` and so CI do that first), or this test does when it is missing.
Its Python runs ``nova_driver.py``, which drives ``SchedulerManager._schedule`` with Nova's host manager, filter
and weight handlers; placement and the database are stood in for (see the driver's docstring).

The random cases cover host sizes, usage, ratios, reservations, down and disabled hosts, zones, aggregates with
metadata and weight multipliers, traits, capabilities, image properties, hypervisor versions, build failures,
I/O operations, identical hosts (ties), server groups of every policy with existing members, hints, requested
hosts and multi-server requests, with Nova's multipliers or random ones.

* With every deviation switched to Nova's behaviour, every chosen host of every case is Nova's.
* With one deviation switched on, its cases (a trigger the deviation names) differ and no other case does: the
  switch is the only cause of its differences. With the defaults, every difference has a deviation's trigger.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils._scheduler.scheduler import NoValidHost, schedule

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, *[os.pardir] * 5))
DRIVER = os.path.join(HERE, "nova_driver.py")
REQUIREMENTS = os.path.join(HERE, "nova-requirements.txt")
VENV = os.environ.get("VIRTFLEET_NOVA_VENV") or os.path.join(REPO, "build", "nova-venv")
CASES = int(os.environ.get("VIRTFLEET_NOVA_CASES", "600"))

NOVA_FILTERS = ["ComputeFilter", "AggregateInstanceExtraSpecsFilter", "ComputeCapabilitiesFilter",
                "ImagePropertiesFilter", "NumInstancesFilter", "ServerGroupAntiAffinityFilter",
                "ServerGroupAffinityFilter", "SameHostFilter", "DifferentHostFilter"]
# What placement and Nova's request filters do, as filters of ours.
PLACEMENT_FILTERS = ["AvailabilityZoneFilter", "TraitsFilter", "RamFilter", "CoreFilter", "DiskFilter"]
NOVA_MODE = {"restrict_default_availability_zone": False, "match_unscoped_extra_specs": True,
             "resource_weighers": "nova"}
OURS = {"restrict_default_availability_zone": True, "match_unscoped_extra_specs": False,
        "resource_weighers": "allocation"}


def _in_ci():
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def nova_python():
    python = os.path.join(VENV, "bin", "python")
    if not os.path.exists(python):
        # The same steps as `make nova-venv`, for a run of this file alone.
        try:
            subprocess.run([sys.executable, "-m", "venv", VENV], check=True, capture_output=True, timeout=300)
            subprocess.run([python, "-m", "pip", "install", "-q", "-r", REQUIREMENTS], check=True,
                           capture_output=True, timeout=1200)
        except (subprocess.SubprocessError, OSError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            message = "cannot install Nova from PyPI into %s: %s %s" % (VENV, exc, detail.decode()[-2000:])
            if _in_ci():
                pytest.fail(message)
            pytest.skip(message)
    return python


# ---------------------------------------------------------------------------------------------------------------------
# random cases

FLAVORS = [
    {"name": "tiny", "vcpus": 1, "ram_mb": 512, "disk_gb": 1},
    {"name": "small", "vcpus": 1, "ram_mb": 2048, "disk_gb": 20},
    {"name": "medium", "vcpus": 2, "ram_mb": 4096, "disk_gb": 40, "ephemeral_gb": 10},
    {"name": "large", "vcpus": 4, "ram_mb": 8192, "disk_gb": 80, "swap_mb": 1536},
    {"name": "ssd", "vcpus": 2, "ram_mb": 4096, "disk_gb": 40,
     "extra_specs": {"aggregate_instance_extra_specs:disk": "ssd"}},
    {"name": "ssd-unscoped", "vcpus": 2, "ram_mb": 2048, "disk_gb": 20, "extra_specs": {"disk": "ssd"}},
    {"name": "avx2", "vcpus": 2, "ram_mb": 2048, "disk_gb": 20, "extra_specs": {"trait:HW_CPU_X86_AVX2": "required"}},
    {"name": "no-gpu", "vcpus": 1, "ram_mb": 1024, "disk_gb": 10, "extra_specs": {"trait:CUSTOM_GPU": "forbidden"}},
    {"name": "intel", "vcpus": 1, "ram_mb": 1024, "disk_gb": 10,
     "extra_specs": {"capabilities:cpu_info:vendor": "Intel", "hw:cpu_policy": "shared"}},
    {"name": "new-qemu", "vcpus": 1, "ram_mb": 1024, "disk_gb": 10,
     "extra_specs": {"capabilities:hypervisor_version": ">= 7000000"}},
    {"name": "huge", "vcpus": 16, "ram_mb": 65536, "disk_gb": 400},
]
IMAGES = [None, None, None, {"hw_architecture": "x86_64"}, {"hw_architecture": "aarch64"},
          {"img_hv_type": "qemu", "hw_vm_mode": "hvm"},
          {"hw_architecture": "x86_64", "img_hv_requested_version": ">=7.0"}]
POLICIES = ["affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity"]


def random_host(rnd, name, shape=None):
    if shape is None:
        vcpus, memory, disk = rnd.choice([(4, 8192, 100), (8, 16384, 200), (16, 65536, 500), (32, 131072, 1000)])
        arch = rnd.choice(["x86_64", "x86_64", "x86_64", "aarch64"])
        shape = {
            "vcpus": vcpus, "memory_mb": memory, "local_gb": disk,
            "vcpus_used": rnd.randint(0, vcpus), "memory_mb_used": rnd.choice([0, rnd.randint(0, memory // 2)]),
            "local_gb_used": rnd.randint(0, disk // 2),
            "cpu_allocation_ratio": rnd.choice([1.0, 2.0, 4.0, 16.0]),
            "ram_allocation_ratio": rnd.choice([1.0, 1.0, 1.5]),
            "disk_allocation_ratio": rnd.choice([1.0, 1.0, 2.0]),
            "reserved_host_memory_mb": rnd.choice([0, 512, 1024]),
            "reserved_host_cpus": rnd.choice([0, 0, 1, 2]),
            "reserved_host_disk_mb": rnd.choice([0, 0, 1024, 5000]),
            "running_vms": rnd.randint(0, 6),
            "io_ops": rnd.choice([0, 0, 0, 1, 2, 5]),
            "failed_builds": rnd.choice([0] * 8 + [1, 3]),
            "hypervisor_type": "QEMU",
            "hypervisor_version": rnd.choice([6002000, 7002000, 8002000]),
            "cpu_info": {"arch": arch, "vendor": rnd.choice(["Intel", "AMD"]), "model": "qemu64"},
            "supported_instances": [[arch, "kvm", "hvm"], [arch, "qemu", "hvm"]],
            "traits": sorted(rnd.sample(["HW_CPU_X86_AVX2", "CUSTOM_GPU", "CUSTOM_X"], rnd.randint(0, 2))),
        }
        if rnd.random() < 0.2:
            shape["disk_available_least"] = rnd.randint(0, disk)
    host = dict(shape, name=name)
    host["enabled"] = rnd.random() > 0.08
    host["disabled_reason"] = None if host["enabled"] else "maintenance"
    host["up"] = rnd.random() > 0.05
    host["availability_zone"] = rnd.choice([None, None, "az1", "az2"])
    aggregates = {}
    roll = rnd.random()
    if roll < 0.3:
        aggregates["fast"] = {"disk": "ssd"}
    elif roll < 0.45:
        aggregates["slow"] = {"disk": "hdd"}
    if rnd.random() < 0.15:
        aggregates["tuned"] = {rnd.choice(["ram_weight_multiplier", "io_ops_weight_multiplier",
                                           "cpu_weight_multiplier"]): rnd.choice(["2.0", "-1.5", "0"])}
    host["aggregates"] = aggregates
    host["servers"] = []
    return host


def random_case(seed):
    rnd = random.Random(seed)
    n = rnd.randint(3, 10)
    shape = None
    if rnd.random() < 0.3:
        # Identical hosts: Nova's ties, broken by the order of its previous sorted list.
        shape = {k: v for k, v in random_host(rnd, "x").items()
                 if k not in ("name", "enabled", "up", "availability_zone", "aggregates", "servers",
                              "disabled_reason")}
    hosts = [random_host(rnd, "h%d" % i, shape) for i in range(n)]
    existing = []
    for h in hosts:
        for j in range(rnd.choice([0, 0, 1, 2])):
            name = "old-%s-%d" % (h["name"], j)
            h["servers"].append({"name": name, "server_group": rnd.choice([None, "g0", "g1", "g2", "g3"])})
            existing.append(name)
    group_policy = {"g%d" % i: POLICIES[i] for i in range(4)}
    group_rules = {}
    zones = sorted({h["availability_zone"] for h in hosts if h["availability_zone"]})
    requests = []
    for r in range(rnd.randint(1, 4)):
        flavor = rnd.choice(FLAVORS[:4]) if rnd.random() < 0.7 else rnd.choice(FLAVORS[4:])
        request = {"servers": ["r%d-s%d" % (r, i) for i in range(rnd.choice([1, 1, 2, 3, 4, 6]))],
                   "flavor": flavor}
        if rnd.random() < 0.45:
            name = rnd.choice(sorted(group_policy) + ["new%d" % r])
            policy = group_policy.setdefault(name, rnd.choice(POLICIES))
            request["group"] = {"name": name, "policy": policy}
            if name not in group_rules:
                # A group's rules are set when it is created.
                group_rules[name] = {"max_server_per_host": 2} if (
                    policy == "anti-affinity" and rnd.random() < 0.3) else None
            if group_rules[name]:
                request["group"]["rules"] = group_rules[name]
        roll = rnd.random()
        if roll < 0.15:
            request["availability_zone"] = "nova"
        elif roll < 0.25 and zones:
            # Only zones some host is in: Nova's API refuses a zone no aggregate defines.
            request["availability_zone"] = rnd.choice(zones)
        if existing and rnd.random() < 0.15:
            request["hints"] = {rnd.choice(["same_host", "different_host"]): rnd.sample(existing, 1)}
        if rnd.random() < 0.05:
            request["host"] = rnd.choice(hosts)["name"]
        image = rnd.choice(IMAGES) if rnd.random() < 0.3 else None
        if image:
            request["image_properties"] = image
        requests.append(request)
    weights = {"ram": 1.0, "cpu": 1.0, "disk": 1.0, "io_ops": -1.0, "num_instances": 0.0,
               "hypervisor_version": 1.0, "build_failure": 1000000.0, "soft_affinity": 1.0,
               "soft_anti_affinity": 1.0}
    if rnd.random() < 0.4:
        for key in ("ram", "cpu", "disk", "io_ops", "num_instances", "hypervisor_version", "build_failure"):
            weights[key] = rnd.choice([weights[key], -1.0, 0.0, 2.0, 0.5])
        weights["soft_affinity"] = rnd.choice([1.0, 2.0, 0.0])
        weights["soft_anti_affinity"] = rnd.choice([1.0, 3.0])
    nova_filters = list(NOVA_FILTERS)
    if rnd.random() < 0.3:
        nova_filters.append("IoOpsFilter")
    config = {"enabled_filters": nova_filters, "weights": weights, "max_instances_per_host": rnd.choice([50, 50, 8]),
              "max_io_ops_per_host": rnd.choice([8, 3])}
    return {"hosts": hosts, "requests": requests, "config": config}


def triggers(case):
    """The deviations whose behaviour a case touches."""
    found = {"resource_weighers"}
    for request in case["requests"]:
        if request.get("availability_zone") == "nova":
            found.add("restrict_default_availability_zone")
        if any(":" not in key for key in request["flavor"].get("extra_specs") or {}):
            found.add("match_unscoped_extra_specs")
    return found


# ---------------------------------------------------------------------------------------------------------------------
# running both

def ours(case, switches):
    servers = []
    for r, request in enumerate(case["requests"]):
        for name in request["servers"]:
            server = {"name": name, "flavor": request["flavor"], "request": "r%d" % r}
            for key, ours_key in (("group", "server_group"), ("availability_zone", "availability_zone"),
                                  ("hints", "hints"), ("host", "host"), ("image_properties", "image_properties")):
                if request.get(key):
                    server[ours_key] = request[key]
            servers.append(server)
    config = case["config"]
    options = dict(switches)
    options.update(enabled_filters=config["enabled_filters"] + PLACEMENT_FILTERS,
                   weights=config["weights"], max_instances_per_host=config["max_instances_per_host"],
                   max_io_ops_per_host=config["max_io_ops_per_host"], seed=0)
    answer = {"placed": [], "failed": None}
    by_name = {}
    try:
        placed = schedule(servers, json.loads(json.dumps(case["hosts"])), **options)
    except NoValidHost as exc:
        placed = exc.placed
        by_name = {s["name"]: s["request"] for s in servers}
        answer["failed"] = int(by_name[exc.server][1:])
    hosts = {p.name: p.host for p in placed}
    for r, request in enumerate(case["requests"]):
        if answer["failed"] is not None and r >= answer["failed"]:
            break
        answer["placed"].append([hosts[name] for name in request["servers"]])
    return answer


@pytest.fixture(scope="module")
def cases_and_nova(nova_python):
    cases = [random_case(seed) for seed in range(CASES)]
    result = subprocess.run([nova_python, DRIVER], input=json.dumps(cases), capture_output=True, text=True,
                            timeout=1800, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    return cases, json.loads(result.stdout)


def differences(cases, nova, switches):
    out = []
    for n, (case, expected) in enumerate(zip(cases, nova)):
        got = ours(case, switches)
        if got != expected:
            out.append((n, got, expected))
    return out


def test_cases_exercise_what_they_should(cases_and_nova):
    cases, nova = cases_and_nova
    placed = sum(len(servers) for answer in nova for servers in answer["placed"])
    multi = sum(1 for case in cases for request in case["requests"] if len(request["servers"]) > 1)
    failed = sum(1 for answer in nova if answer["failed"] is not None)
    # Enough of everything to mean something: servers placed, multi-server requests, and some NoValidHost.
    assert placed > 2 * CASES and multi > CASES // 2 and 0 < failed < CASES * 2 // 3


def test_with_every_deviation_switched_to_nova_every_choice_is_novas(cases_and_nova):
    cases, nova = cases_and_nova
    diffs = differences(cases, nova, NOVA_MODE)
    assert not diffs, "%d of %d cases differ from Nova, first: %r" % (len(diffs), len(cases), diffs[:3])
    # The plain evaluation (Nova's loop, literally) agrees too, not only the fast path.
    diffs = differences(cases, nova, dict(NOVA_MODE, fast=False))
    assert not diffs, "fast=False: %d of %d cases differ from Nova, first: %r" % (len(diffs), len(cases), diffs[:3])


@pytest.mark.parametrize("switch", sorted(OURS))
def test_each_deviation_is_the_only_cause_of_its_differences(cases_and_nova, switch):
    cases, nova = cases_and_nova
    switches = dict(NOVA_MODE, **{switch: OURS[switch]})
    diffs = differences(cases, nova, switches)
    assert diffs, "switching %s on changed nothing: the cases do not exercise it" % switch
    unexplained = [d for d in diffs if switch not in triggers(cases[d[0]])]
    assert not unexplained, unexplained[:3]


def test_with_the_defaults_every_difference_is_a_documented_deviation(cases_and_nova):
    cases, nova = cases_and_nova
    defaults = {"restrict_default_availability_zone": True, "match_unscoped_extra_specs": False,
                "resource_weighers": "nova"}
    diffs = differences(cases, nova, defaults)
    switched = {k for k, v in defaults.items() if v != NOVA_MODE[k]}
    unexplained = [d for d in diffs if not triggers(cases[d[0]]) & switched]
    assert not unexplained, unexplained[:3]
    print("defaults: %d of %d cases identical to Nova" % (len(cases) - len(diffs), len(cases)))
