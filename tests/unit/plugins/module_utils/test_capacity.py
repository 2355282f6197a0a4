# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Capacity arithmetic: placement's formulas, Nova's defaults, and the shortfall text people read."""

import ast
import sys

import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils import _capacity as cap

HOST = {
    "name": "h1",
    "vcpus": 8, "vcpus_used": 2,
    "memory_mb": 16384, "memory_mb_used": 2048,
    "local_gb": 100, "local_gb_used": 10,
    "cpu_allocation_ratio": 16.0, "ram_allocation_ratio": 1.5, "disk_allocation_ratio": 1.0,
    "reserved_host_memory_mb": 512, "reserved_host_cpus": 0, "reserved_host_disk_mb": 0,
}


def test_capacity_is_total_minus_reserved_times_ratio():
    c = cap.capacity(HOST)
    assert c["vcpus"] == {"total": 8, "reserved": 0, "allocation_ratio": 16.0, "capacity": 128.0, "used": 2,
                          "free": 126.0, "max_unit": 8}
    assert c["memory_mb"]["capacity"] == (16384 - 512) * 1.5 == 23808
    assert c["memory_mb"]["free"] == 23808 - 2048
    assert c["disk_gb"]["capacity"] == 100
    assert c["disk_gb"]["free"] == 90


def test_defaults_are_novas():
    c = cap.capacity({"vcpus": 4, "memory_mb": 8192, "local_gb": 50})
    assert c["vcpus"]["allocation_ratio"] == 16.0
    assert c["memory_mb"]["allocation_ratio"] == 1.5
    assert c["disk_gb"]["allocation_ratio"] == 1.0
    assert c["memory_mb"]["reserved"] == 512
    assert c["vcpus"]["reserved"] == 0 and c["disk_gb"]["reserved"] == 0
    assert c["vcpus"]["used"] == 0
    assert c["memory_mb"]["capacity"] == (8192 - 512) * 1.5


def test_none_means_default():
    c = cap.capacity({"vcpus": 4, "cpu_allocation_ratio": None, "reserved_host_memory_mb": None})
    assert c["vcpus"]["allocation_ratio"] == 16.0
    assert c["memory_mb"]["reserved"] == 512


@pytest.mark.parametrize("reserved_mb, reserved_gb", [(0, 0), (1, 1), (1024, 1), (1025, 2), (10240, 10)])
def test_reserved_disk_mb_rounds_up_to_whole_gb(reserved_mb, reserved_gb):
    c = cap.capacity(dict(HOST, reserved_host_disk_mb=reserved_mb))
    assert c["disk_gb"]["reserved"] == reserved_gb
    assert c["disk_gb"]["capacity"] == 100 - reserved_gb


def test_reservation_larger_than_host_leaves_zero_not_negative():
    c = cap.capacity({"vcpus": 2, "reserved_host_cpus": 4, "memory_mb": 256})
    assert c["vcpus"]["capacity"] == 0
    assert c["memory_mb"]["capacity"] == 0


def test_free_goes_negative_when_over_capacity():
    c = cap.capacity(dict(HOST, memory_mb_used=30000))
    assert c["memory_mb"]["free"] == 23808 - 30000


@pytest.mark.parametrize("swap_mb, disk", [(0, 20), (1, 21), (512, 21), (1024, 21), (1025, 22), (4096, 24)])
def test_flavor_disk_counts_root_ephemeral_and_swap_rounded_up(swap_mb, disk):
    flavor = {"vcpus": 2, "ram_mb": 4096, "disk_gb": 15, "ephemeral_gb": 5, "swap_mb": swap_mb}
    assert cap.resources_from_flavor(flavor) == {"vcpus": 2, "memory_mb": 4096, "disk_gb": disk, "pcpus": 0}


def test_flavor_optional_fields_default_to_zero():
    expected = {"vcpus": 1, "memory_mb": 512, "disk_gb": 0, "pcpus": 0}
    assert cap.resources_from_flavor({"vcpus": 1, "ram_mb": 512}) == expected


@pytest.mark.parametrize("specs, pcpus", [
    ({"hw:cpu_policy": "dedicated"}, 3), ({"hw:cpu_policy": "shared"}, 0), ({}, 0), (None, 0),
])
def test_a_dedicated_flavor_also_takes_host_cpus(specs, pcpus):
    res = cap.resources_from_flavor({"vcpus": 3, "ram_mb": 512, "extra_specs": specs})
    assert res["vcpus"] == 3 and res["pcpus"] == pcpus


def test_dedicated_cpus_are_never_overcommitted():
    c = cap.capacity(dict(HOST, cpu_allocation_ratio=16.0, reserved_host_cpus=1, pcpus_used=2))
    assert c["pcpus"]["allocation_ratio"] == 1.0
    assert c["pcpus"]["capacity"] == HOST["vcpus"] - 1
    assert c["pcpus"]["free"] == HOST["vcpus"] - 1 - 2
    shortfalls = cap.check_fit(dict(HOST, pcpus_used=HOST["vcpus"]),
                               {"vcpus": 1, "ram_mb": 512, "extra_specs": {"hw:cpu_policy": "dedicated"}})
    assert [s["resource"] for s in shortfalls] == ["pcpus"]


def test_sum_resources():
    total = cap.sum_resources([{"vcpus": 1, "memory_mb": 512, "disk_gb": 1}, {"vcpus": 2, "memory_mb": 1024}])
    assert total == {"vcpus": 3, "memory_mb": 1536, "disk_gb": 1, "pcpus": 0}


def test_fits():
    assert cap.check_fit(HOST, {"vcpus": 2, "ram_mb": 4096, "disk_gb": 20}) == []


def test_ram_shortfall_has_the_numbers():
    host = dict(HOST, name="h2", memory_mb_used=22784)
    shortfalls = cap.check_fit(host, {"vcpus": 1, "ram_mb": 4096, "disk_gb": 1})
    assert len(shortfalls) == 1
    s = shortfalls[0]
    assert (s["resource"], s["kind"], s["requested"], s["used"], s["capacity"], s["free"]) == (
        "memory_mb", "capacity", 4096, 22784, 23808, 1024)
    assert s["message"] == "requested 4096 MB, free 1024 MB of capacity 23808 MB (used 22784 MB)"


@pytest.mark.parametrize("request_, resource, message", [
    ({"vcpus": 127, "memory_mb": 0, "disk_gb": 0}, "vcpus",
     "requested 127 vCPUs, more than the host's total of 8 vCPUs"),
    ({"vcpus": 0, "memory_mb": 0, "disk_gb": 91}, "disk_gb",
     "requested 91 GB, more than the host's total of 100 GB"),
])
def test_capacity_shortfalls_per_resource(request_, resource, message):
    # 127 vCPUs is within 8 x 16 but larger than the host: max_unit, not capacity.
    shortfalls = cap.check_fit(HOST, request_)
    assert [s["resource"] for s in shortfalls] == [resource]
    if resource == "vcpus":
        assert shortfalls[0]["kind"] == "max_unit"
        assert shortfalls[0]["message"].startswith(message)
    else:
        assert shortfalls[0]["kind"] == "capacity"
        assert shortfalls[0]["message"] == "requested 91 GB, free 90 GB of capacity 100 GB (used 10 GB)"


def test_vcpu_capacity_shortfall():
    host = dict(HOST, vcpus_used=126)
    shortfalls = cap.check_fit(host, {"vcpus": 4, "memory_mb": 0, "disk_gb": 0})
    assert shortfalls[0]["message"] == "requested 4 vCPUs, free 2 vCPUs of capacity 128 vCPUs (used 126 vCPUs)"


def test_max_unit_larger_than_host_even_with_overcommit():
    shortfalls = cap.check_fit(HOST, {"vcpus": 1, "ram_mb": 16385, "disk_gb": 0})
    assert shortfalls[0]["kind"] == "max_unit"
    assert "more than the host's total of 16384 MB" in shortfalls[0]["message"]


def test_unrequested_resource_is_not_checked():
    # Placement skips resource classes the request does not ask for: no disk, no disk check.
    host = dict(HOST, local_gb_used=500)
    assert cap.check_fit(host, {"vcpus": 1, "ram_mb": 512, "disk_gb": 0}) == []
    assert [s["resource"] for s in cap.check_fit(host, {"vcpus": 1, "ram_mb": 512, "disk_gb": 1})] == ["disk_gb"]


def test_check_fit_limited_to_some_resources():
    host = dict(HOST, memory_mb_used=23808, vcpus_used=128)
    request = {"vcpus": 1, "memory_mb": 1, "disk_gb": 0}
    assert [s["resource"] for s in cap.check_fit(host, request)] == ["vcpus", "memory_mb"]
    assert [s["resource"] for s in cap.check_fit(host, request, resources=["memory_mb"])] == ["memory_mb"]


def test_exact_fill_fits():
    host = dict(HOST, memory_mb_used=23808 - 4096)
    assert cap.check_fit(host, {"vcpus": 1, "ram_mb": 4096}) == []
    assert cap.check_fit(dict(host, memory_mb_used=23808 - 4095), {"vcpus": 1, "ram_mb": 4096})


@pytest.mark.parametrize("requested, used, capacity, max_unit, fits", [
    (0, 10, 5, 1, True),
    (1, 4, 5, 8, True),
    (2, 4, 5, 8, False),
    (9, 0, 100, 8, False),
    (1, 0, 0.5, 8, False),
    (0.5, 0, 0.5, 8, True),
])
def test_resource_fits(requested, used, capacity, max_unit, fits):
    assert cap.resource_fits(requested, used, capacity, max_unit) is fits


@pytest.mark.parametrize("field, value", [
    ("vcpus", -1), ("memory_mb_used", True), ("cpu_allocation_ratio", "many"), ("local_gb", float("nan")),
    ("ram_allocation_ratio", float("inf")),
])
def test_bad_numbers_are_named(field, value):
    with pytest.raises(ValueError, match="host h1.%s" % field):
        cap.capacity(dict(HOST, **{field: value}))


def test_numbers_given_as_strings_are_accepted():
    c = cap.capacity(dict(HOST, vcpus="8", cpu_allocation_ratio="4.0"))
    assert c["vcpus"]["capacity"] == 32


def test_bad_flavor_numbers_are_named():
    with pytest.raises(ValueError, match="flavor m1.x.ram_mb"):
        cap.resources_from_flavor({"name": "m1.x", "vcpus": 1, "ram_mb": -5})


@pytest.mark.parametrize("value, text", [(23808.0, "23808"), (1.25, "1.25"), (1.0 / 3, "0.33"), (7, "7"),
                                         (-1024.0, "-1024")])
def test_format_amount(value, text):
    assert cap.format_amount(value) == text


def test_module_utils_imports_only_the_standard_library_and_parses_as_python_3_8():
    path = cap.__file__
    with open(path) as handle:
        source = handle.read()
    # module_utils run on the hosts, Python 3.8 and later: no syntax newer than that.
    tree = ast.parse(source, feature_version=(3, 8))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}
