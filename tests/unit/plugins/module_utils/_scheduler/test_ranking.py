# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Later servers of one request, as Nova weighs them (issue 15's difference 6), fast path and plain alike."""

import random

import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils._scheduler.scheduler import schedule

SMALL = {"name": "m1.small", "vcpus": 1, "ram_mb": 2048, "disk_gb": 20}
ONLY_IO = {"ram": 0.0, "cpu": 0.0, "disk": 0.0, "io_ops": -1.0, "hypervisor_version": 0.0}


def host(name, **kw):
    record = {"name": name, "vcpus": 16, "memory_mb": 65536, "local_gb": 1000}
    record.update(kw)
    return record


def hosts_of(servers, hosts, **options):
    fast = [p.host for p in schedule(servers, hosts, **options)]
    plain = [p.host for p in schedule(servers, hosts, fast=False, **options)]
    assert fast == plain
    return fast


def test_consecutive_servers_of_one_shape_form_a_request_and_ties_follow_the_previous_ranking():
    # Four identical hosts and six servers, weighed by I/O operations only, so everything ties but the count.
    # Nova's list after each server: [a b c d] -> [b c d a] -> [c d b a]... ties keep the last list's order,
    # so the fifth server goes to the host that was chosen earliest among the tied ones... as Nova's stable
    # sort leaves it, not to the first host of the input.
    hosts = [host(n) for n in "abcd"]
    servers = [{"name": "s%d" % i, "flavor": SMALL} for i in range(6)]
    assert hosts_of(servers, hosts, weights=ONLY_IO) == ["a", "b", "c", "d", "d", "c"]


def test_separate_requests_break_ties_by_host_order():
    hosts = [host(n) for n in "abcd"]
    servers = [{"name": "s%d" % i, "flavor": SMALL, "request": i} for i in range(6)]
    assert hosts_of(servers, hosts, weights=ONLY_IO) == ["a", "b", "c", "d", "a", "b"]


def test_a_host_filled_by_the_request_still_sets_the_maximum():
    # f holds exactly one more server (one vCPU) but has by far the most free RAM and the most I/O operations.
    # In one request Nova keeps weighing f after it is full, so its RAM and I/O counts stay the maxima the others
    # are normalized against: y (less RAM, fewer I/O) beats x. In separate requests f is no candidate any more and
    # x wins. The figures: second server, one request: x 65024/259584 - 2/4 = -0.25, y 32256/259584 - 1/4 = -0.13;
    # apart: x 1 - 2/2 = 0, y 32256/65024 - 1/2 = -0.004.
    f = host("f", vcpus=1, cpu_allocation_ratio=1.0, memory_mb=262144, io_ops=3)
    x = host("x", io_ops=2)
    y = host("y", memory_mb=32768, io_ops=1)
    weights = {"ram": 1.0, "io_ops": -1.0, "cpu": 0.0, "disk": 0.0, "hypervisor_version": 0.0}
    one = hosts_of([{"name": "s%d" % i, "flavor": SMALL} for i in range(3)], [f, x, y], weights=weights)
    apart = hosts_of([{"name": "s%d" % i, "flavor": SMALL, "request": i} for i in range(3)], [f, x, y],
                     weights=weights)
    assert one == ["f", "y", "x"]
    assert apart == ["f", "x", "y"]


@pytest.mark.parametrize("seed", range(12))
def test_fast_path_equals_plain_on_requests_with_ties(seed):
    rnd = random.Random(seed)
    shape = dict(vcpus=8, memory_mb=16384, local_gb=200, cpu_allocation_ratio=1.0)
    hosts = [host("h%02d" % i, **shape) if rnd.random() < 0.7 else host("h%02d" % i) for i in range(30)]
    flavors = [SMALL, dict(SMALL, name="m1.medium", vcpus=2, ram_mb=4096)]
    servers = []
    for r in range(40):
        flavor = rnd.choice(flavors)
        group = rnd.choice([None, {"name": "g%d" % (r % 3), "policy": ["soft-affinity", "soft-anti-affinity",
                                                                       "anti-affinity"][r % 3]}])
        for i in range(rnd.randint(1, 8)):
            server = {"name": "r%d-%d" % (r, i), "flavor": flavor, "request": r}
            if group:
                server["server_group"] = group
            servers.append(server)
    options = dict(allow_unplaced=True, seed=seed, weights=rnd.choice([None, ONLY_IO, {"num_instances": -1.0}]))
    assert schedule(servers, hosts, **options) == schedule(servers, hosts, fast=False, **options)


def test_shuffle_best_same_weighed_hosts_draws_among_the_equal_best_only():
    hosts = [host(n) for n in "abc"] + [host("busy", io_ops=3)]
    seen = set()
    for seed in range(30):
        placed = schedule([{"name": "s", "flavor": SMALL}], hosts, seed=seed, shuffle_best_same_weighed_hosts=True)
        seen.add(placed[0].host)
    assert seen == {"a", "b", "c"}
    # Off (Nova's default), the first of the equal hosts always wins.
    assert {schedule([{"name": "s", "flavor": SMALL}], hosts, seed=seed)[0].host for seed in range(5)} == {"a"}
