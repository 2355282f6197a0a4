# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Nova's weighers one at a time: what each weighs, with Nova's numbers (issue 15's differences 1-3 and 7)."""

import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils._scheduler import weighers as W
from ansible_collections.virtfleet.compute.plugins.module_utils._scheduler.scheduler import (
    NoValidHost,
    Scheduler,
    SchedulerInputError,
    schedule,
)

SMALL = {"name": "m1.small", "vcpus": 1, "ram_mb": 2048, "disk_gb": 20}
ONLY = {"ram": 0.0, "cpu": 0.0, "disk": 0.0, "io_ops": 0.0, "hypervisor_version": 0.0, "build_failure": 0.0}


def host(name, **kw):
    record = {"name": name, "vcpus": 16, "memory_mb": 65536, "local_gb": 1000}
    record.update(kw)
    return record


def only(**weights):
    return dict(ONLY, **weights)


def chosen(servers, hosts, **options):
    return [p.host for p in schedule(servers, hosts, **options)]


def servers(n, flavor=None, **kw):
    return [dict({"name": "s%d" % i, "flavor": flavor or SMALL}, **kw) for i in range(n)]


def test_io_ops_weigher_spreads_a_request_over_two_empty_hosts():
    # Nova: a, b. Before: a, a (no IoOpsWeigher, RAM and disk free capacity barely moved by one small server).
    hosts = [host("a"), host("b")]
    assert chosen(servers(2), hosts) == ["a", "b"]


def test_io_ops_weigher_spreads_a_soft_affinity_group_on_identical_hosts():
    # Nova puts one on each: after the first placement the I/O weigher's -1 cancels soft affinity's +1 and the
    # RAM, vCPU and disk the first server took tip the balance to the other host.
    group = {"name": "g", "policy": "soft-affinity"}
    assert chosen(servers(2, server_group=group), [host("a"), host("b")]) == ["a", "b"]
    # Without the I/O weigher soft affinity keeps them together.
    assert chosen(servers(2, server_group=group), [host("a"), host("b")], weights={"io_ops": 0.0}) == ["a", "a"]


def test_io_ops_counts_servers_building_and_the_record():
    busy = host("busy", servers=[{"name": "x", "vm_state": "building"}])
    task = host("task", servers=[{"name": "y", "task_state": "resize_migrating"}])
    told = host("told", io_ops=1)
    quiet = host("quiet", servers=[{"name": "z", "vm_state": "active"}])
    assert chosen(servers(1), [busy, task, told, quiet], weights=only(io_ops=-1.0)) == ["quiet"]
    assert Scheduler([busy, task, told, quiet]).usage()["busy"]["io_ops"] == 1


def test_io_ops_filter_is_opt_in_with_novas_limit():
    hosts = [host("a", io_ops=8), host("b", io_ops=7)]
    assert chosen(servers(2), hosts) == ["b", "a"]  # not enabled by default
    assert chosen(servers(1), hosts, enabled_filters=["IoOpsFilter"]) == ["b"]
    # The first placement brings b to 8 too: the second server finds no host.
    with pytest.raises(NoValidHost) as err:
        schedule(servers(2), hosts, enabled_filters=["IoOpsFilter"])
    assert err.value.server == "s1"
    assert err.value.reasons == {
        "a": "IoOpsFilter: host has 8 I/O operations in flight, max_io_ops_per_host is 8",
        "b": "IoOpsFilter: host has 8 I/O operations in flight, max_io_ops_per_host is 8"}


def test_cpu_weigher_counts_reserved_cpus_as_used():
    # Nova: vcpus * ratio - (used + reserved). a: 8*16 - (0+4) = 124; b: 8*16 - (6+0) = 122 -> a.
    # Before: (vcpus - reserved) * ratio - used = 64 for a, 122 for b -> b.
    a = host("a", vcpus=8, reserved_host_cpus=4)
    b = host("b", vcpus=8, vcpus_used=6)
    assert chosen(servers(1), [a, b], weights=only(cpu=1.0)) == ["a"]
    assert chosen(servers(1), [a, b], weights=only(cpu=1.0), resource_weighers="allocation") == ["b"]


def test_ram_weigher_weighs_physical_free_ram_like_novas_host_state():
    # Same reservation, RAM ratio 1.5: Nova compares 65536-512-20000 with 49152-512-0, the second wins; free
    # capacity after the ratio ((T-R)*1.5-U: 77536 and 72960) prefers the first.
    a = host("a", memory_mb_used=20000)
    b = host("b", memory_mb=49152)
    assert chosen(servers(1), [a, b], weights=only(ram=1.0)) == ["b"]
    assert chosen(servers(1), [a, b], weights=only(ram=1.0), resource_weighers="allocation") == ["a"]


def test_ram_below_zero_counts_as_zero():
    over = host("over", memory_mb_used=70000)  # overcommitted: free RAM is negative in Nova's HostState
    empty = host("empty", memory_mb=4096)
    # Both weigh 0 against a max of 3584 except empty; stacking therefore prefers over (0) to empty (1).
    assert chosen(servers(1, flavor=dict(SMALL, ram_mb=512)), [empty, over], weights=only(ram=-1.0)) == ["over"]


def test_disk_weigher_takes_the_lower_of_the_books_and_disk_available_least():
    a = host("a", local_gb=1000, local_gb_used=100, disk_available_least=50)
    b = host("b", local_gb=1000, local_gb_used=500)
    assert chosen(servers(1), [a, b], weights=only(disk=1.0)) == ["b"]


def test_disk_weigher_consumption_leaves_swap_out_like_novas_host_state():
    # Two hosts 1 GiB apart. A server with 20 GB root and 2 GB swap: placement takes 22 GB, Nova's HostState
    # 20 GB, so after one placement on a the other still has 1 GB less... a goes from 1001 to 981, b is 1000.
    a = host("a", local_gb=1001)
    b = host("b", local_gb=1000)
    flavor = dict(SMALL, swap_mb=2048)
    assert chosen(servers(2, flavor=flavor), [a, b], weights=only(disk=1.0)) == ["a", "b"]
    sch = Scheduler([a, b], weights=only(disk=1.0))
    sch.schedule(servers(1, flavor=flavor))
    assert sch.t.wraw[W.DISK][0] == (1001 - 20) * 1024
    assert sch.usage()["a"]["disk_gb"]["used"] == 22


def test_hypervisor_version_weigher_prefers_newer():
    old = host("old", hypervisor_version=6002000)
    new = host("new", hypervisor_version="7.2.0")
    assert chosen(servers(1), [old, new], weights=only(hypervisor_version=1.0)) == ["new"]
    assert chosen(servers(1), [old, new], weights=only(hypervisor_version=-1.0)) == ["old"]


def test_build_failure_weigher_puts_failing_hosts_last():
    failing = host("failing", failed_builds=1, memory_mb=262144)  # far more free RAM, still last
    fine = host("fine")
    assert chosen(servers(1), [failing, fine]) == ["fine"]
    assert chosen(servers(1), [failing, fine], weights={"build_failure": 0.0}) == ["failing"]


def test_aggregate_metadata_overrides_a_multiplier_for_its_hosts():
    big = host("big", memory_mb=131072, aggregates={"stack": {"ram_weight_multiplier": "-1.0"}})
    small = host("small")
    assert chosen(servers(1), [big, small], weights=only(ram=1.0)) == ["small"]
    # Two aggregates disagree: Nova takes the smallest value.
    both = host("big", memory_mb=131072, aggregates={"a": {"ram_weight_multiplier": "2"},
                                                     "b": {"ram_weight_multiplier": "-2"}})
    assert chosen(servers(1), [both, small], weights=only(ram=1.0)) == ["small"]


def test_bad_aggregate_multiplier_names_the_field():
    bad = host("h", aggregates={"agg": {"ram_weight_multiplier": "lots"}})
    with pytest.raises(SchedulerInputError, match=r"hosts\[0\].aggregates.agg.ram_weight_multiplier"):
        Scheduler([bad])


def test_weights_defaults_are_novas():
    assert W.Weights() == W.Weights(ram=1.0, cpu=1.0, disk=1.0, io_ops=-1.0, num_instances=0.0,
                                    hypervisor_version=1.0, build_failure=1000000.0, soft_affinity=1.0,
                                    soft_anti_affinity=1.0)


@pytest.mark.parametrize("slot, values, expected", [
    (W.RAM, [0, 0], None),  # all zero: nothing to normalize
    (W.RAM, [0, 4], (0.0, 4.0)),  # minval 0: the range starts at 0 whatever the minimum
    (W.RAM, [2, 4], (0.0, 4.0)),
    (W.NUM_INSTANCES, [2, 4], (2.0, 2.0)),  # the others use the observed minimum
    (W.NUM_INSTANCES, [3, 3], None),
])
def test_normalization_is_novas(slot, values, expected):
    assert W.normalize_params(slot, values) == expected
