# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure scheduler: every filter and weigher, batches, errors with numbers, and properties checked by hypothesis."""

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.virtfleet.compute.plugins.module_utils import _capacity
from ansible_collections.virtfleet.compute.plugins.module_utils._scheduler import filters as F
from ansible_collections.virtfleet.compute.plugins.module_utils._scheduler import inputs
from ansible_collections.virtfleet.compute.plugins.module_utils._scheduler import scheduler as sched
from ansible_collections.virtfleet.compute.plugins.module_utils._scheduler.scheduler import (
    NoValidHost,
    Scheduler,
    SchedulerInputError,
    schedule,
)

SMALL = {"name": "m1.small", "vcpus": 1, "ram_mb": 2048, "disk_gb": 20}
PLAIN = dict(ram_allocation_ratio=1.0, cpu_allocation_ratio=1.0, reserved_host_memory_mb=0)


def host(name, **kw):
    record = {"name": name, "vcpus": 16, "memory_mb": 65536, "local_gb": 1000}
    record.update(kw)
    return record


def server(name, flavor=None, **kw):
    request = {"name": name, "flavor": SMALL if flavor is None else flavor}
    request.update(kw)
    return request


def flavor(vcpus=1, ram_mb=1024, disk_gb=10, **kw):
    f = {"name": "f-%d-%d-%d" % (vcpus, ram_mb, disk_gb), "vcpus": vcpus, "ram_mb": ram_mb, "disk_gb": disk_gb}
    f.update(kw)
    return f


def hosts_of(placements):
    return [p.host for p in placements]


def reasons_for(servers, hosts, **options):
    with pytest.raises(NoValidHost) as info:
        schedule(servers, hosts, **options)
    return info.value.reasons


# --------------------------------------------------------------------------------------------------------------------
# filters, one at a time

@pytest.mark.parametrize("record, passes, reason", [
    ({}, True, None),
    ({"enabled": False, "disabled_reason": "maintenance"}, False, "ComputeFilter: host is disabled (maintenance)"),
    ({"enabled": False}, False, "ComputeFilter: host is disabled"),
    ({"up": False}, False, "ComputeFilter: host is down"),
    ({"enabled": "no"}, False, "ComputeFilter: host is disabled"),
])
def test_compute_filter(record, passes, reason):
    hosts = [host("h1", **record)]
    if passes:
        assert hosts_of(schedule([server("s")], hosts, enabled_filters=["ComputeFilter"])) == ["h1"]
    else:
        assert reasons_for([server("s")], hosts, enabled_filters=["ComputeFilter"])["h1"].startswith(reason)


@pytest.mark.parametrize("host_az, wanted, passes", [
    ("az1", "az1", True),
    ("az1", "az2", False),
    (None, "nova", True),  # a host without a zone is in the default zone
    (None, "az1", False),
    ("az1", None, True),  # no zone asked: any
])
def test_availability_zone_filter(host_az, wanted, passes):
    hosts = [host("h1", availability_zone=host_az)]
    servers = [server("s", availability_zone=wanted)]
    if passes:
        assert hosts_of(schedule(servers, hosts, enabled_filters=["AvailabilityZoneFilter"])) == ["h1"]
    else:
        why = reasons_for(servers, hosts, enabled_filters=["AvailabilityZoneFilter"])["h1"]
        assert why == "AvailabilityZoneFilter: host is in availability zone '%s', the server asks for '%s'" % (
            host_az or "nova", wanted)


def test_default_availability_zone_option():
    hosts = [host("h1")]
    assert hosts_of(schedule([server("s", availability_zone="zone0")], hosts,
                             default_availability_zone="zone0")) == ["h1"]


@pytest.mark.parametrize("aggregates, spec, passes", [
    ({"fast": {"disk": "ssd"}}, "ssd", True),
    ({"fast": {"disk": "ssd"}}, "hdd", False),
    ({"fast": {"disk": "hdd,ssd"}}, "ssd", True),  # comma lists in metadata, as Nova
    ({"a": {"disk": "hdd"}, "b": {"disk": "ssd"}}, "ssd", True),  # any aggregate of the host
    ({"fast": {"gpu": "yes"}}, "ssd", False),  # key missing
    ({}, "ssd", False),
    ({"fast": {"disk": "nvme"}}, "<or> ssd <or> nvme", True),
    ({"fast": {"disk": "ssd"}}, "s!= hdd", True),
])
def test_aggregate_instance_extra_specs_filter(aggregates, spec, passes):
    hosts = [host("h1", aggregates=aggregates)]
    servers = [server("s", flavor=dict(SMALL, extra_specs={"aggregate_instance_extra_specs:disk": spec}))]
    opts = {"enabled_filters": ["AggregateInstanceExtraSpecsFilter"]}
    if passes:
        assert hosts_of(schedule(servers, hosts, **opts)) == ["h1"]
    else:
        assert reasons_for(servers, hosts, **opts)["h1"].startswith(
            "AggregateInstanceExtraSpecsFilter: flavor m1.small needs aggregate metadata disk=%s" % spec)


def test_aggregate_filter_ignores_other_scopes():
    # hw:cpu_policy and friends are for the host, not for aggregates.
    hosts = [host("h1")]
    servers = [server("s", flavor=dict(SMALL, extra_specs={"hw:cpu_policy": "dedicated", "quota:cpu_shares": "10"}))]
    assert hosts_of(schedule(servers, hosts)) == ["h1"]


@pytest.mark.parametrize("value, requirement, matches", [
    ("ssd", "ssd", True),
    ("ssd", "hdd", False),
    ("4", "= 2", True),  # Nova's "=" is "at least"
    ("1", "= 2", False),
    ("2", "== 2.0", True),
    ("3", "!= 2", True),
    ("3", ">= 4", False),
    ("3", "<= 4", True),
    ("abc", ">= 4", False),  # not a number: no match, no crash
    ("b", "s== b", True),
    ("b", "s< c", True),
    ("b", "s> c", False),
    ("b", "s<= b", True),
    ("b", "s>= c", False),
    ("avx2 sse4", "<in> avx2", True),
    ("sse4", "<in> avx2", False),
    ("avx2 sse4", "<all-in> avx2 sse4", True),
    ("avx2", "<all-in> avx2 sse4", False),
    ("b", "<or> a <or> b", True),
    ("c", "<or> a <or> b", False),
    ("x", "", False),
    ("", "", True),
    ("2", "=", False),
])
def test_match_extra_spec(value, requirement, matches):
    assert F.match_extra_spec(value, requirement) is matches


@pytest.mark.parametrize("traits, specs, reason", [
    (["CUSTOM_GPU"], {"trait:CUSTOM_GPU": "required"}, None),
    ([], {"trait:CUSTOM_GPU": "required"}, "TraitsFilter: host lacks required trait(s) CUSTOM_GPU"),
    (["CUSTOM_GPU"], {"trait:CUSTOM_GPU": "forbidden"}, "TraitsFilter: host has forbidden trait(s) CUSTOM_GPU"),
    ([], {"trait:CUSTOM_GPU": "forbidden"}, None),
])
def test_traits_filter(traits, specs, reason):
    hosts = [host("h1", traits=traits)]
    servers = [server("s", flavor=dict(SMALL, extra_specs=specs))]
    if reason is None:
        assert hosts_of(schedule(servers, hosts)) == ["h1"]
    else:
        assert reasons_for(servers, hosts)["h1"] == reason


def test_bad_trait_value_is_an_input_error():
    with pytest.raises(SchedulerInputError, match=r"servers\[0\].flavor.extra_specs.trait:X"):
        schedule([server("s", flavor=dict(SMALL, extra_specs={"trait:X": "maybe"}))], [host("h1")])


def test_ram_filter_error_text_has_the_numbers():
    hosts = [host("h2", memory_mb=16384, memory_mb_used=22784)]
    why = reasons_for([server("s", flavor=flavor(ram_mb=4096))], hosts, enabled_filters=["RamFilter"])
    assert why == {"h2": "RamFilter: requested 4096 MB, free 1024 MB of capacity 23808 MB (used 22784 MB)"}


DEDICATED = {"hw:cpu_policy": "dedicated"}


def test_dedicated_cpu_filter_counts_host_cpus_one_to_one():
    # 4 host CPUs, 3 pinned: a 2-vCPU dedicated server does not fit, however generous the CPU allocation ratio.
    hosts = [host("h1", vcpus=4, pcpus_used=3, cpu_allocation_ratio=16.0)]
    why = reasons_for([server("s", flavor=flavor(vcpus=2, extra_specs=DEDICATED))], hosts)
    assert why == {"h1": "DedicatedCpuFilter: requested 2 dedicated CPUs, free 1 dedicated CPUs of capacity 4 "
                         "dedicated CPUs (used 3 dedicated CPUs)"}
    # The same size floating fits: shared vCPUs are overcommitted, dedicated ones never.
    assert hosts_of(schedule([server("s", flavor=flavor(vcpus=2))], hosts)) == ["h1"]


def test_dedicated_cpu_filter_respects_reserved_host_cpus():
    hosts = [host("h1", vcpus=4, reserved_host_cpus=2)]
    assert hosts_of(schedule([server("s", flavor=flavor(vcpus=2, extra_specs=DEDICATED))], hosts)) == ["h1"]
    reasons = reasons_for([server("s", flavor=flavor(vcpus=3, extra_specs=DEDICATED))], hosts)
    assert reasons["h1"].startswith("DedicatedCpuFilter: requested 3 dedicated CPUs, free 2")


def test_a_batch_of_dedicated_servers_consumes_host_cpus():
    hosts = [host("h1", vcpus=4), host("h2", vcpus=4)]
    batch = [server("d%d" % i, flavor=flavor(vcpus=2, extra_specs=DEDICATED)) for i in range(4)]
    placed = schedule(batch, hosts)
    assert sorted(hosts_of(placed)) == ["h1", "h1", "h2", "h2"]
    with pytest.raises(NoValidHost) as info:
        schedule(batch + [server("d4", flavor=flavor(vcpus=1, extra_specs=DEDICATED))], hosts)
    assert info.value.server == "d4"
    assert all(why.startswith("DedicatedCpuFilter") for why in info.value.reasons.values())


def test_dedicated_cpu_filter_can_be_left_out():
    hosts = [host("h1", vcpus=2, pcpus_used=2)]
    request = [server("s", flavor=flavor(vcpus=1, extra_specs=DEDICATED))]
    filters = [f for f in sched.DEFAULT_FILTERS if f != "DedicatedCpuFilter"]
    assert hosts_of(schedule(request, hosts, enabled_filters=filters)) == ["h1"]


def test_no_valid_host_message_names_every_host_and_filter():
    hosts = [host("h1", enabled=False, disabled_reason="maintenance"),
             host("h2", memory_mb=16384, memory_mb_used=22784),
             host("h3", vcpus=2, vcpus_used=32)]
    with pytest.raises(NoValidHost) as info:
        schedule([server("web-1", flavor=flavor(vcpus=2, ram_mb=4096, disk_gb=20))], hosts)
    exc = info.value
    assert exc.server == "web-1"
    assert exc.reasons == {
        "h1": "ComputeFilter: host is disabled (maintenance)",
        "h2": "RamFilter: requested 4096 MB, free 1024 MB of capacity 23808 MB (used 22784 MB)",
        "h3": "CoreFilter: requested 2 vCPUs, free 0 vCPUs of capacity 32 vCPUs (used 32 vCPUs)",
    }
    text = str(exc)
    assert text.startswith("No valid host for server 'web-1' (flavor f-2-4096-20: 2 vCPUs, 4096 MB RAM, 20 GB disk)")
    assert "ComputeFilter 1, RamFilter 1, CoreFilter 1" in text
    for name, why in exc.reasons.items():
        assert "%s: %s" % (name, why) in text


def test_long_messages_are_cut_but_reasons_are_complete():
    hosts = [host("h%03d" % i, enabled=False) for i in range(80)]
    with pytest.raises(NoValidHost) as info:
        schedule([server("s")], hosts)
    assert len(info.value.reasons) == 80
    assert "... and 30 more hosts" in str(info.value)


@pytest.mark.parametrize("name, record, unit", [
    ("CoreFilter", {"vcpus": 4, "reserved_host_cpus": 2, "cpu_allocation_ratio": 2.0}, flavor(1, 0, 0)),
    ("RamFilter", {"memory_mb": 4096, "reserved_host_memory_mb": 2048, "ram_allocation_ratio": 2.0},
     flavor(0, 1024, 0)),
    ("DiskFilter", {"local_gb": 40, "reserved_host_disk_mb": 20480, "disk_allocation_ratio": 2.0}, flavor(0, 0, 10)),
])
def test_resource_filters_use_ratio_and_reservation(name, record, unit):
    # (total - reserved) * ratio = (4 - 2) * 2 units: four servers of one unit fit, the fifth does not.
    record = host("h1", **record)
    servers = [server("s%d" % i, flavor=unit) for i in range(5)]
    placed = schedule(servers, [record], enabled_filters=[name], allow_unplaced=True)
    assert hosts_of(placed) == ["h1"] * 4 + [None]
    assert placed[4].reasons["h1"].startswith(name + ": requested")


def test_num_instances_filter_counts_running_vms_servers_and_the_batch():
    hosts = [host("h1", running_vms=2), host("h2", servers=[{"name": "x"}, {"name": "y"}, {"name": "z"}])]
    placed = schedule([server("a"), server("b"), server("c")], hosts, max_instances_per_host=3,
                      enabled_filters=["NumInstancesFilter"], allow_unplaced=True)
    assert hosts_of(placed) == ["h1", None, None]
    assert placed[1].reasons == {"h1": "NumInstancesFilter: host has 3 servers, max_instances_per_host is 3",
                                 "h2": "NumInstancesFilter: host has 3 servers, max_instances_per_host is 3"}


def test_anti_affinity_filter():
    group = {"name": "web", "policy": "anti-affinity"}
    hosts = [host("h1"), host("h2")]
    placed = schedule([server("w%d" % i, server_group=group) for i in range(3)], hosts, allow_unplaced=True)
    assert sorted(hosts_of(placed)[:2]) == ["h1", "h2"] and placed[2].host is None
    assert placed[2].reasons["h1"] == ("ServerGroupAntiAffinityFilter: host already has 1 server(s) of "
                                       "anti-affinity group 'web' (max 1 per host)")


def test_anti_affinity_max_server_per_host_rule():
    group = {"name": "web", "policy": "anti-affinity", "rules": {"max_server_per_host": 2}}
    placed = schedule([server("w%d" % i, server_group=group) for i in range(5)], [host("h1"), host("h2")],
                      allow_unplaced=True)
    assert sorted(h for h in hosts_of(placed) if h) == ["h1", "h1", "h2", "h2"]
    assert placed[4].host is None


def test_rules_only_for_anti_affinity():
    group = {"name": "web", "policy": "affinity", "rules": {"max_server_per_host": 2}}
    with pytest.raises(SchedulerInputError, match="max_server_per_host"):
        schedule([server("w", server_group=group)], [host("h1")])


def test_affinity_first_placement_decides():
    group = {"name": "db", "policy": "affinity"}
    hosts = [host("h1"), host("h2", memory_mb=131072)]
    placed = schedule([server("d%d" % i, server_group=group) for i in range(4)], hosts)
    assert hosts_of(placed) == ["h2"] * 4


def test_affinity_follows_an_existing_member_and_fails_when_it_is_full():
    group = {"name": "db", "policy": "affinity"}
    hosts = [host("h1", memory_mb=4096, memory_mb_used=1024, **PLAIN, servers=[{"name": "d0", "server_group": "db"}]),
             host("h2")]
    placed = schedule([server("d1", server_group=group, flavor=flavor(ram_mb=4096))], hosts, allow_unplaced=True)
    assert placed[0].host is None
    assert placed[0].reasons["h1"].startswith("RamFilter:")
    assert placed[0].reasons["h2"] == "ServerGroupAffinityFilter: affinity group 'db' is on h1"


def test_same_host_and_different_host_hints():
    hosts = [host("h1", servers=[{"name": "db-1"}]), host("h2", servers=[{"name": "web-2"}]), host("h3")]
    assert hosts_of(schedule([server("a", hints={"same_host": ["db-1"]})], hosts)) == ["h1"]
    placed = schedule([server("b", hints={"different_host": ["db-1", "web-2"]})], hosts)
    assert hosts_of(placed) == ["h3"]
    # Hints can name servers placed earlier in the batch.
    placed = schedule([server("c"), server("d", hints={"same_host": "c"}), server("e", hints={"different_host": "c"})],
                      hosts)
    assert placed[0].host == placed[1].host != placed[2].host


def test_same_host_naming_unknown_servers_matches_nothing():
    why = reasons_for([server("a", hints={"same_host": ["ghost"]})], [host("h1")])
    assert why == {"h1": "SameHostFilter: none of the same_host servers (ghost) is on this host"}


def test_different_host_reason():
    why = reasons_for([server("a", hints={"different_host": ["x"]})], [host("h1", servers=[{"name": "x"}])])
    assert why == {"h1": "DifferentHostFilter: different_host server(s) x on this host"}


def test_requested_host_passes_filters():
    hosts = [host("h1"), host("h2"), host("h3")]
    assert hosts_of(schedule([server("s", host="h2")], hosts)) == ["h2"]


def test_requested_host_still_filtered_and_only_it_is_reported():
    hosts = [host("h1"), host("h2", enabled=False, disabled_reason="broken fan")]
    why = reasons_for([server("s", host="h2")], hosts)
    assert why == {"h2": "ComputeFilter: host is disabled (broken fan)"}
    why = reasons_for([server("s", host="h9")], hosts)
    assert why == {"h9": "RequestedHost: no such host among the 2 candidates"}


def test_filters_run_in_the_configured_order_for_reasons():
    hosts = [host("h1", enabled=False, memory_mb=1024)]
    assert reasons_for([server("s")], hosts)["h1"].startswith("ComputeFilter")
    assert reasons_for([server("s")], hosts, enabled_filters=["RamFilter", "ComputeFilter"])["h1"].startswith(
        "RamFilter")


def test_disabled_filters_do_not_filter():
    hosts = [host("h1", enabled=False, memory_mb=1024)]
    assert hosts_of(schedule([server("s")], hosts, enabled_filters=[])) == ["h1"]


def test_unknown_filter_is_refused():
    with pytest.raises(SchedulerInputError, match="unknown filter"):
        Scheduler([host("h1")], enabled_filters=["RamFilter", "JsonFilter"])


# --------------------------------------------------------------------------------------------------------------------
# weighers

def ram_host(name, free_mb, **kw):
    return host(name, memory_mb=200000, memory_mb_used=200000 - free_mb, **dict(PLAIN, **kw))


@pytest.mark.parametrize("multiplier, expected", [(1.0, "big"), (-1.0, "small"), (0.0, "small")])
def test_ram_weigher_spreads_or_stacks(multiplier, expected):
    hosts = [ram_host("small", 10000), ram_host("big", 50000)]
    weights = {"ram": multiplier, "cpu": 0, "disk": 0}
    assert hosts_of(schedule([server("s")], hosts, weights=weights)) == [expected]


@pytest.mark.parametrize("multiplier, expected", [(1.0, "idle"), (-1.0, "busy")])
def test_cpu_weigher(multiplier, expected):
    hosts = [host("busy", vcpus_used=200), host("idle", vcpus_used=10)]
    assert hosts_of(schedule([server("s")], hosts, weights={"ram": 0, "disk": 0, "cpu": multiplier})) == [expected]


@pytest.mark.parametrize("multiplier, expected", [(1.0, "empty"), (-1.0, "full")])
def test_disk_weigher(multiplier, expected):
    hosts = [host("full", local_gb_used=900), host("empty", local_gb_used=10)]
    assert hosts_of(schedule([server("s")], hosts, weights={"ram": 0, "cpu": 0, "disk": multiplier})) == [expected]


@pytest.mark.parametrize("multiplier, expected", [(-1.0, "few"), (1.0, "many"), (0.0, "many")])
def test_num_instances_weigher_follows_nova_signs(multiplier, expected):
    # Nova weighs the raw count: positive multipliers prefer fuller hosts, negative emptier ones, 0 ignores it.
    hosts = [host("many", running_vms=9), host("few", running_vms=1)]
    weights = {"ram": 0, "cpu": 0, "disk": 0, "num_instances": multiplier}
    assert hosts_of(schedule([server("s")], hosts, weights=weights)) == [expected]


def test_resource_weighers_normalize_against_zero_like_nova():
    # RAM free 100 vs 60 GB, CPU free 10 vs 20. Nova's RAM/CPU weighers have minval 0, so the scores are
    # a: 100/100 + 10/20 = 1.5 and b: 60/100 + 20/20 = 1.6 and b wins. A plain min-max normalization would
    # give both 1.0 and keep a, the first in input order.
    hosts = [host("a", memory_mb=102400, vcpus=10, **PLAIN), host("b", memory_mb=61440, vcpus=20, **PLAIN)]
    weights = {"disk": 0}
    assert hosts_of(schedule([server("s", flavor=flavor(vcpus=0, ram_mb=0, disk_gb=0))], hosts,
                             weights=weights)) == ["b"]


def test_free_below_zero_counts_as_zero():
    # Over-committed hosts (free < 0) weigh as 0, as Nova clamps to minval; they tie with a host at exactly 0.
    hosts = [ram_host("over", -5000), ram_host("zero", 0), ram_host("some", 1)]
    sch = Scheduler(hosts, enabled_filters=[], weights={"cpu": 0, "disk": 0}, alternates=2)
    placement = sch.place(server("s", flavor=flavor(vcpus=0, ram_mb=0, disk_gb=0)))
    assert [placement.host] + placement.alternates == ["some", "over", "zero"]


def test_weighers_add_up_with_multipliers():
    # RAM favours a, CPU favours b; a heavier CPU multiplier tips it.
    hosts = [host("a", memory_mb=102400, vcpus=10, **PLAIN), host("b", memory_mb=51200, vcpus=20, **PLAIN)]
    req = [server("s", flavor=flavor(vcpus=0, ram_mb=0, disk_gb=0))]
    assert hosts_of(schedule(req, hosts, weights={"disk": 0, "ram": 2.0})) == ["a"]
    assert hosts_of(schedule(req, hosts, weights={"disk": 0, "cpu": 2.0})) == ["b"]


def test_ties_keep_input_order():
    hosts = [host("c"), host("a"), host("b")]
    placement = Scheduler(hosts).place(server("s"))
    assert placement.host == "c" and placement.alternates == ["a", "b"]


@pytest.mark.parametrize("policy, expected", [("soft-affinity", "h2"), ("soft-anti-affinity", "h1")])
def test_soft_policies_weigh_group_members(policy, expected):
    group = {"name": "g", "policy": policy}
    hosts = [host("h1"), host("h2", servers=[{"name": "m1", "server_group": "g"}])]
    assert hosts_of(schedule([server("s", server_group=group)], hosts, weights={"ram": 0, "cpu": 0, "disk": 0}))[0] \
        == expected


def test_soft_policies_never_filter():
    group = {"name": "g", "policy": "soft-anti-affinity"}
    placed = schedule([server("s%d" % i, server_group=group) for i in range(3)], [host("h1")])
    assert hosts_of(placed) == ["h1"] * 3


def test_soft_anti_affinity_spreads_a_batch():
    group = {"name": "g", "policy": "soft-anti-affinity"}
    hosts = [host("h%d" % i) for i in range(3)]
    placed = schedule([server("s%d" % i, server_group=group) for i in range(6)], hosts,
                      weights={"ram": 0, "cpu": 0, "disk": 0})
    assert sorted(hosts_of(placed)) == ["h0", "h0", "h1", "h1", "h2", "h2"]


def test_soft_weight_multipliers_must_not_be_negative():
    with pytest.raises(SchedulerInputError, match="soft_affinity"):
        Scheduler([host("h1")], weights={"soft_affinity": -1})


def test_unknown_weigher_is_refused():
    with pytest.raises(SchedulerInputError, match="unknown weigher"):
        Scheduler([host("h1")], weights={"io_operations": 1})


# --------------------------------------------------------------------------------------------------------------------
# subset, seed, alternates

def test_host_subset_size_picks_among_the_best_n():
    hosts = [ram_host("h%d" % i, 10000 * (i + 1)) for i in range(6)]
    best_three = {"h5", "h4", "h3"}
    seen = set()
    for seed in range(40):
        placement = Scheduler(hosts, host_subset_size=3, seed=seed, weights={"cpu": 0, "disk": 0}).place(server("s"))
        assert placement.host in best_three
        seen.add(placement.host)
    assert seen == best_three


def test_same_seed_same_answer_and_seed_types():
    hosts = [host("h%d" % i) for i in range(10)]
    servers = [server("s%d" % i) for i in range(30)]
    for seed in (7, "seven", 7.5, [1, 2]):
        first = schedule(servers, hosts, host_subset_size=5, seed=seed)
        again = schedule(servers, hosts, host_subset_size=5, seed=seed)
        assert first == again


def test_alternates_are_the_next_best_without_the_chosen_one():
    hosts = [ram_host("h%d" % i, 10000 * (i + 1)) for i in range(5)]
    placement = Scheduler(hosts, alternates=3, weights={"cpu": 0, "disk": 0}).place(server("s"))
    assert placement.host == "h4" and placement.alternates == ["h3", "h2", "h1"]
    placement = Scheduler(hosts, alternates=0).place(server("s"))
    assert placement.alternates == []
    # With a subset, the alternates are the best of the rest, in order.
    placement = Scheduler(hosts, alternates=2, host_subset_size=3, seed=3, weights={"cpu": 0, "disk": 0}).place(
        server("s"))
    assert placement.alternates == [h for h in ["h4", "h3", "h2", "h1"] if h != placement.host][:2]


def test_alternates_only_hosts_that_pass():
    hosts = [host("h1"), host("h2", enabled=False), host("h3")]
    placement = Scheduler(hosts, alternates=5).place(server("s"))
    assert sorted([placement.host] + placement.alternates) == ["h1", "h3"]


# --------------------------------------------------------------------------------------------------------------------
# batches

def test_existing_servers_keep_their_host_and_count_for_groups():
    group = {"name": "web", "policy": "anti-affinity"}
    hosts = [host("h1", servers=[{"name": "web-1", "server_group": "web", "flavor": SMALL}]), host("h2")]
    placed = schedule([server("web-1", server_group=group, host="h2"), server("web-2", server_group=group)], hosts)
    assert placed[0].to_dict() == {"name": "web-1", "host": "h1", "alternates": [], "existing": True, "reasons": {}}
    assert placed[1].host == "h2" and placed[1].existing is False


def test_existing_server_on_a_disabled_host_stays():
    hosts = [host("h1", enabled=False, servers=[{"name": "a"}]), host("h2")]
    assert schedule([server("a")], hosts)[0].host == "h1"


def test_batch_consumes_capacity():
    # Each host fits two of these; spreading and consumption put two on each.
    hosts = [host(name, memory_mb=8192, **PLAIN) for name in ("h1", "h2", "h3")]
    placed = schedule([server("s%d" % i, flavor=flavor(ram_mb=4096)) for i in range(6)], hosts)
    assert sorted(hosts_of(placed)) == ["h1", "h1", "h2", "h2", "h3", "h3"]


def test_stacking_fills_a_host_before_the_next():
    # Nova's IoOpsWeigher spreads the servers of one request: stacking needs its multiplier at 0 too.
    hosts = [host(name, memory_mb=8192, **PLAIN) for name in ("h1", "h2", "h3")]
    placed = schedule([server("s%d" % i, flavor=flavor(ram_mb=4096)) for i in range(4)], hosts,
                      weights={"ram": -1.0, "cpu": -1.0, "disk": -1.0, "io_ops": 0.0})
    assert hosts_of(placed) == ["h1", "h1", "h2", "h2"]


def test_stacking_multipliers_alone_still_spread_a_request_over_equal_hosts():
    # Nova: ram/cpu/disk -1 and io_ops -1 on identical empty hosts; every placement tips the balance once more.
    hosts = [host(name, memory_mb=8192, **PLAIN) for name in ("h1", "h2", "h3")]
    placed = schedule([server("s%d" % i, flavor=flavor(ram_mb=4096)) for i in range(4)], hosts,
                      weights={"ram": -1.0, "cpu": -1.0, "disk": -1.0})
    assert hosts_of(placed) == ["h1", "h2", "h3", "h3"]


def test_one_failure_fails_the_batch_by_default():
    hosts = [host("h1", memory_mb=8192, **PLAIN)]
    servers = [server("s%d" % i, flavor=flavor(ram_mb=4096)) for i in range(3)]
    with pytest.raises(NoValidHost) as info:
        schedule(servers, hosts)
    assert info.value.server == "s2"
    assert [p.host for p in info.value.placed] == ["h1", "h1"]


def test_allow_unplaced_reports_and_goes_on():
    hosts = [host("h1", memory_mb=8192, **PLAIN)]
    servers = [server("big", flavor=flavor(ram_mb=16384)), server("small", flavor=flavor(ram_mb=4096))]
    placed = schedule(servers, hosts, allow_unplaced=True)
    assert placed[0].host is None and placed[0].existing is False
    assert placed[0].reasons == {"h1": "RamFilter: requested 16384 MB, more than the host's total of 8192 MB "
                                       "(overcommit never makes one server larger than its host)"}
    assert placed[1].host == "h1" and placed[1].reasons == {}


def test_place_one_at_a_time_keeps_state():
    sch = Scheduler([host("h1", memory_mb=8192, **PLAIN)])
    assert sch.place(server("a", flavor=flavor(ram_mb=8192))).host == "h1"
    assert sch.place(server("a", flavor=flavor(ram_mb=8192))).existing is True
    with pytest.raises(NoValidHost):
        sch.place(server("b", flavor=flavor(ram_mb=1)))
    assert sch.usage()["h1"]["memory_mb"]["used"] == 8192
    assert sch.hosts == ["h1"]


@pytest.mark.parametrize("servers, hosts, field", [
    ([server("a"), server("a")], [host("h1")], r"servers\[1\].name"),
    ([{"flavor": SMALL}], [host("h1")], r"servers\[0\].name"),
    ([{"name": "a", "flavor": None}], [host("h1")], r"servers\[0\].flavor"),
    ([server("a", flavor={"vcpus": 1})], [host("h1")], r"servers\[0\].flavor.ram_mb"),
    ([server("a", flavor=dict(SMALL, ram_mb=-1))], [host("h1")], r"servers\[0\].flavor"),
    ([server("a", server_group={"name": "g", "policy": "together"})], [host("h1")],
     r"servers\[0\].server_group.policy"),
    ([server("a", server_group={"name": "g", "policy": "affinity"}),
      server("b", server_group={"name": "g", "policy": "anti-affinity"})], [host("h1")],
     r"servers\[1\].server_group"),
    ([server("a", hints=["x"])], [host("h1")], r"servers\[0\].hints"),
    ([server("a")], [host("h1"), host("h1")], r"hosts\[1\].name"),
    ([server("a")], [{"vcpus": 1}], r"hosts\[0\].name"),
    ([server("a")], [host("h1", vcpus=-2)], r"hosts\[0\]"),
    ([server("a")], [host("h1", enabled="perhaps")], r"hosts\[0\].enabled"),
    ([server("a")], {"h1": host("h1")}, "hosts"),
    ({"name": "a"}, [host("h1")], "servers"),
])
def test_input_errors_name_the_field(servers, hosts, field):
    with pytest.raises(SchedulerInputError, match=field):
        schedule(servers, hosts)


@pytest.mark.parametrize("option, value", [("host_subset_size", 0), ("alternates", -1), ("max_instances_per_host", "x"),
                                           ("host_subset_size", True)])
def test_option_errors(option, value):
    with pytest.raises(SchedulerInputError, match=option):
        Scheduler([host("h1")], **{option: value})


# --------------------------------------------------------------------------------------------------------------------
# the fast path against the plain evaluation, at a size where pools, rebuilds and ties all happen

def synthetic_hosts(n, seed, identical=False):
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        if identical:
            out.append(host("h%03d" % i, vcpus=32, memory_mb=131072, local_gb=1000, availability_zone="az%d" % (i % 2)))
            continue
        v, m, d = rnd.choice([(32, 131072, 1000), (64, 262144, 2000), (16, 65536, 500)])
        out.append(host("h%03d" % i, vcpus=v, memory_mb=m, local_gb=d, vcpus_used=rnd.randint(0, v),
                        memory_mb_used=rnd.randint(0, m // 2), local_gb_used=rnd.randint(0, d // 2),
                        availability_zone="az%d" % (i % 2), running_vms=rnd.randint(0, 5)))
    return out


def synthetic_servers(n, seed):
    rnd = random.Random(seed)
    flavors = [flavor(1, 2048, 20), flavor(2, 4096, 40), flavor(4, 8192, 80), flavor(8, 16384, 160)]
    out = []
    for i in range(n):
        request = server("s%04d" % i, flavor=rnd.choice(flavors))
        roll = rnd.random()
        if roll < 0.1:
            group = i % 7
            request["server_group"] = {"name": "g%d" % group, "policy": sched.POLICIES[group % 4]}
        elif roll < 0.2:
            request["availability_zone"] = "az%d" % rnd.randint(0, 1)
        elif roll < 0.25:
            request["hints"] = {"different_host": ["s%04d" % rnd.randint(0, max(i - 1, 0))]}
        out.append(request)
    return out


@pytest.mark.parametrize("identical, weights, subset", [
    (False, None, 1),
    (True, None, 1),
    (False, {"ram": -1.0, "cpu": -0.5, "disk": -1.0, "num_instances": 1.0}, 1),
    (False, {"num_instances": -1.0}, 3),
    (True, {"ram": 1.0, "cpu": 0.0, "disk": 0.0}, 2),
])
def test_fast_path_equals_plain_evaluation(identical, weights, subset):
    hosts = synthetic_hosts(40, 3, identical)
    servers = synthetic_servers(400, 4)
    options = dict(weights=weights, host_subset_size=subset, seed=11, allow_unplaced=True, max_instances_per_host=30)
    fast = schedule(servers, hosts, **options)
    plain = schedule(servers, hosts, fast=False, **options)
    assert fast == plain


@pytest.mark.parametrize("policy", ["soft-affinity", "soft-anti-affinity"])
def test_fast_path_equals_plain_with_soft_groups_on_many_hosts(policy):
    # Group members on more hosts than the answer needs, and an instance-count weigher that never discriminates.
    hosts = [host("h%02d" % i, servers=[{"name": "m%d-%d" % (i, j), "server_group": "g"} for j in range(i % 4)],
                  memory_mb_used=1024 * (i % 5)) for i in range(20)]
    servers = [server("s%02d" % i, server_group={"name": "g", "policy": policy}) for i in range(60)]
    options = dict(alternates=0, weights={"num_instances": -1.0, "cpu": 0.0}, max_instances_per_host=100, seed=5)
    assert schedule(servers, hosts, **options) == schedule(servers, hosts, fast=False, **options)


def test_cached_reasons_equal_a_fresh_evaluation():
    hosts = synthetic_hosts(12, 5)
    servers = synthetic_servers(300, 6)
    sch = Scheduler(hosts, max_instances_per_host=12)
    parsed = [inputs.parse_server(s, "s", sch.options, {}) for s in servers]
    for req in parsed:
        try:
            sch.place_request(req)
        except NoValidHost as exc:
            fresh = {}
            for idx, name in enumerate(sch.hosts):
                rejected = sch.first_rejection(idx, req)
                fresh[name] = "%s: %s" % rejected if rejected else "passes the filters"
            assert exc.reasons == fresh


# --------------------------------------------------------------------------------------------------------------------
# properties

NAMES = ["h%d" % i for i in range(6)]


@st.composite
def fleets(draw):
    n = draw(st.integers(1, 6))
    hosts = []
    for i in range(n):
        vcpus = draw(st.sampled_from([2, 4, 8]))
        memory = draw(st.sampled_from([2048, 4096, 8192, 16384]))
        disk = draw(st.sampled_from([20, 50, 100]))
        hosts.append({
            "name": NAMES[i],
            "enabled": draw(st.booleans()) or draw(st.booleans()),
            "up": draw(st.booleans()) or draw(st.booleans()) or draw(st.booleans()),
            "availability_zone": draw(st.sampled_from([None, "az1", "az2"])),
            "aggregates": draw(st.sampled_from([{}, {"a": {"disk": "ssd"}}, {"a": {"disk": "hdd,ssd"}}])),
            "vcpus": vcpus, "vcpus_used": draw(st.integers(0, vcpus * 2)), "pcpus_used": draw(st.integers(0, vcpus)),
            "memory_mb": memory, "memory_mb_used": draw(st.integers(0, memory)),
            "local_gb": disk, "local_gb_used": draw(st.integers(0, disk)),
            "cpu_allocation_ratio": draw(st.sampled_from([1.0, 2.0, 16.0])),
            "ram_allocation_ratio": draw(st.sampled_from([1.0, 1.5])),
            "disk_allocation_ratio": draw(st.sampled_from([1.0, 1.5])),
            "reserved_host_memory_mb": draw(st.sampled_from([0, 512])),
            "reserved_host_cpus": draw(st.sampled_from([0, 1])),
            "reserved_host_disk_mb": draw(st.sampled_from([0, 1500])),
            "running_vms": draw(st.integers(0, 3)),
            "servers": [{"name": "old%d-%d" % (i, j), "server_group": draw(st.sampled_from([None, "g0", "g1"]))}
                        for j in range(draw(st.integers(0, 2)))],
        })
    return hosts


@st.composite
def batches(draw):
    policies = {"g0": draw(st.sampled_from(sched.POLICIES)), "g1": draw(st.sampled_from(sched.POLICIES)),
                "g2": draw(st.sampled_from(sched.POLICIES))}
    n = draw(st.integers(1, 14))
    out = []
    for i in range(n):
        request = {"name": "s%d" % i, "flavor": {
            "name": "f", "vcpus": draw(st.integers(0, 4)), "ram_mb": draw(st.sampled_from([0, 512, 1024, 2048, 4096])),
            "disk_gb": draw(st.sampled_from([0, 5, 10, 30])), "swap_mb": draw(st.sampled_from([0, 100])),
            "extra_specs": draw(st.sampled_from([{}, {"aggregate_instance_extra_specs:disk": "ssd"},
                                                 {"hw:cpu_policy": "dedicated"}]))}}
        group = draw(st.sampled_from([None, "g0", "g1", "g2"]))
        if group:
            request["server_group"] = {"name": group, "policy": policies[group]}
        request["availability_zone"] = draw(st.sampled_from([None, None, "az1", "nova"]))
        if draw(st.integers(0, 5)) == 0:
            request["hints"] = {draw(st.sampled_from(["same_host", "different_host"])):
                                [draw(st.sampled_from(["s0", "s1", "old0-0", "old1-0", "none"]))]}
        if draw(st.integers(0, 7)) == 0:
            request["host"] = draw(st.sampled_from(NAMES[:3] + ["nowhere"]))
        out.append(request)
    return out


weights_st = st.fixed_dictionaries({
    "ram": st.sampled_from([1.0, 0.0, -1.0, 2.5]),
    "cpu": st.sampled_from([1.0, 0.0, -1.0]),
    "disk": st.sampled_from([1.0, 0.0, -0.5]),
    "num_instances": st.sampled_from([0.0, -1.0, 1.0]),
    "soft_affinity": st.sampled_from([1.0, 0.0, 3.0]),
    "soft_anti_affinity": st.sampled_from([1.0, 0.0]),
})

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def group_policy(batch):
    return {s["server_group"]["name"]: s["server_group"]["policy"] for s in batch if s.get("server_group")}


@PROPERTY
@given(hosts=fleets(), batch=batches(), weights=weights_st, subset=st.integers(1, 3), seed=st.integers(0, 5))
def test_property_fast_equals_plain(hosts, batch, weights, subset, seed):
    options = dict(weights=weights, host_subset_size=subset, seed=seed, allow_unplaced=True, max_instances_per_host=5)
    assert schedule(batch, hosts, **options) == schedule(batch, hosts, fast=False, **options)


@PROPERTY
@given(hosts=fleets(), batch=batches(), weights=weights_st, subset=st.integers(1, 3))
def test_property_invariants(hosts, batch, weights, subset):
    placed = schedule(batch, hosts, weights=weights, host_subset_size=subset, seed=1, allow_unplaced=True)
    by_name = {h["name"]: h for h in hosts}
    requests = {s["name"]: s for s in batch}

    # Capacity: the new servers on a host fit within its capacity after ratios and reservations, counting each
    # resource a server asks for (placement does not check a resource nobody asked for).
    added = {name: [] for name in by_name}
    for p in placed:
        if p.host and not p.existing:
            added[p.host].append(_capacity.resources_from_flavor(requests[p.name]["flavor"]))
    for name, adds in added.items():
        caps = _capacity.capacity(by_name[name])
        for resource in _capacity.RESOURCES:
            if any(a[resource] for a in adds):
                c = caps[resource]
                assert c["used"] + sum(a[resource] for a in adds) <= c["capacity"], (name, resource)
                assert all(a[resource] <= c["max_unit"] for a in adds)

    # Disabled or down hosts receive nothing new.
    for p in placed:
        if p.host and not p.existing:
            h = by_name[p.host]
            assert h["enabled"] and h["up"]

    # Hard group policies, existing members included.
    members: dict = {}
    for h in hosts:
        for s in h["servers"]:
            if s["server_group"]:
                members.setdefault(s["server_group"], []).append(h["name"])
    for p in placed:
        g = requests[p.name].get("server_group")
        if p.host and not p.existing and g:
            members.setdefault(g["name"], []).append(p.host)
    for group, policy in group_policy(batch).items():
        on = members.get(group, [])
        if policy == "anti-affinity":
            # The fleet may start out violating it (hypothesis draws such fleets); no placement may add to that.
            old = {h["name"] for h in hosts for s in h["servers"] if s["server_group"] == group}
            new = [p.host for p in placed if p.host and not p.existing
                   and (requests[p.name].get("server_group") or {}).get("name") == group]
            assert len(new) == len(set(new)) and not set(new) & old, (group, on)
        elif policy == "affinity":
            new = [p.host for p in placed if p.host and not p.existing
                   and (requests[p.name].get("server_group") or {}).get("name") == group]
            old = {h["name"] for h in hosts for s in h["servers"] if s["server_group"] == group}
            if len(old) > 1:
                # The fleet already splits the group (hypothesis draws such fleets): as in Nova, a new member may
                # join any host of the group, never a host outside it.
                assert set(new) <= old
            else:
                assert len(set(new)) <= 1
                assert not old or set(new) <= old

    # Every unplaced server says why, for every host (or the one it asked for).
    for p in placed:
        if p.host is None:
            assert p.reasons
            assert set(p.reasons) == ({requests[p.name]["host"]} if requests[p.name].get("host") else set(by_name))
            assert "passes the filters" not in p.reasons.values()


@PROPERTY
@given(hosts=fleets(), batch=batches(), subset=st.integers(1, 4), seed=st.one_of(st.integers(), st.text(max_size=5)))
def test_property_same_seed_same_answer(hosts, batch, subset, seed):
    first = schedule(batch, hosts, host_subset_size=subset, seed=seed, allow_unplaced=True)
    assert first == schedule(batch, hosts, host_subset_size=subset, seed=seed, allow_unplaced=True)


@PROPERTY
@given(hosts=fleets(), batch=batches())
def test_property_failing_batch_raises_for_the_first_unplaceable(hosts, batch):
    report = schedule(batch, hosts, seed=2, allow_unplaced=True)
    unplaced = [p.name for p in report if p.host is None]
    if not unplaced:
        assert schedule(batch, hosts, seed=2) == report
        return
    with pytest.raises(NoValidHost) as info:
        schedule(batch, hosts, seed=2)
    assert info.value.server == unplaced[0]
    first = [p.name for p in report].index(unplaced[0])
    assert info.value.placed == report[:first]


@PROPERTY
@given(hosts=fleets(), batch=batches())
def test_property_cached_reasons_equal_a_fresh_evaluation(hosts, batch):
    sch = Scheduler(hosts, max_instances_per_host=4, seed=0)
    for i, request in enumerate(batch):
        req = inputs.parse_server(request, "servers[%d]" % i, sch.options, {})
        try:
            sch._check_group(req, "servers[%d]" % i)
            sch.place_request(req)
        except SchedulerInputError:
            return
        except NoValidHost as exc:
            if req.host is not None:
                continue
            fresh = {}
            for idx, name in enumerate(sch.hosts):
                rejected = sch.first_rejection(idx, req)
                fresh[name] = "%s: %s" % rejected if rejected else "passes the filters"
            assert exc.reasons == fresh


@settings(max_examples=300, deadline=None)
@given(amount=st.integers(0, 40), used=st.integers(0, 60), cap=st.floats(0, 80, allow_nan=False),
       maxu=st.integers(0, 40))
def test_the_schedulers_fit_check_is_the_claims_fit_check(amount, used, cap, maxu):
    # Scheduler.fits inlines _capacity.resource_fits (what claims use): they must never disagree.
    host_record = {"name": "h", "vcpus": maxu, "vcpus_used": used, "memory_mb": 1, "local_gb": 1,
                   "cpu_allocation_ratio": (cap / maxu) if maxu else 1.0, "reserved_host_memory_mb": 0}
    sch = Scheduler([host_record], enabled_filters=["CoreFilter"])
    res = (amount, 0, 0, 0)
    capacity = sch.t.cap[0][0]
    assert sch.fits(0, res) is _capacity.resource_fits(amount, used, capacity, maxu)
