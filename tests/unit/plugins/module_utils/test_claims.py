# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Claims: the fit check with its numbers, the host's claim lock, verification and rollback, and races."""

import json
import threading

import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils._claims import (
    Claim,
    ClaimLock,
    RecordLock,
    VolumeClaim,
    _lock_volume_xml,
    check_claim,
    check_volume_claim,
    grows,
    verify_claim,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import (
    CapacityError,
    ConflictError,
    HostUnavailableError,
    LibvirtOperationError,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._flavor import Flavor
from ansible_collections.virtfleet.compute.plugins.module_utils._host_info import taken_cpus
from ansible_collections.virtfleet.compute.plugins.module_utils._host_record import converge_host
from ansible_collections.virtfleet.compute.plugins.module_utils._plan import Plan, StepFailed
from ansible_collections.virtfleet.compute.plugins.module_utils._records import RECORDS_POOL
from tests.unit.plugins.module_utils.test_host_info import FakeHost, FakePool, FakeVolume, managed_xml, unmanaged_xml

GIB = 1024 ** 3


def flavor(vcpus=1, ram_mb=512, disk_gb=1, **kwargs):
    return Flavor(vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb, **kwargs)


@pytest.fixture
def fake():
    host = FakeHost(cpus=4, memory_mb=8192)
    # Room for exactly 2048 MiB of guest RAM: (8192 - 6144) * 1.0.
    converge_host(host, {"ram_allocation_ratio": 1.0, "reserved_host_memory_mb": 6144})
    return host


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


# -- the check ------------------------------------------------------------------------------------------------------

def test_a_fitting_claim_reports_its_numbers(fake):
    summary = check_claim(fake, "web-1", flavor(ram_mb=1024))
    assert summary["needed"] is True
    assert summary["capacity"]["memory_mb"] == {"requested": 1024, "used": 0, "capacity": 2048.0, "free": 2048.0}


def test_a_claim_that_does_not_fit_fails_with_requested_used_and_capacity(fake):
    fake.add_domain(managed_xml("old", ram_mb=1536))
    with pytest.raises(CapacityError) as err:
        check_claim(fake, "web-1", flavor(ram_mb=1024))
    message = err.value.message
    assert "web-1 does not fit on host fake-host" in message
    assert "RAM: requested 1024 MB, free 512 MB of capacity 2048 MB (used 1536 MB)" in message
    assert err.value.details["shortfalls"][0]["resource"] == "memory_mb"


def test_unmanaged_domains_take_capacity_too(fake):
    fake.add_domain(unmanaged_xml("legacy", vcpus=1, memory_kib=2 * 1024 * 1024), disk_capacity={"vda": GIB})
    with pytest.raises(CapacityError):
        check_claim(fake, "web-1", flavor(ram_mb=64))


def test_larger_than_the_host_is_refused_whatever_the_ratio(fake):
    converge_host(fake, {"cpu_allocation_ratio": 100.0})
    with pytest.raises(CapacityError) as err:
        check_claim(fake, "big", flavor(vcpus=8, ram_mb=64))
    assert "more than the host's total of 4 vCPUs" in err.value.message


def test_disabled_host_refuses_claims_with_its_reason(fake):
    converge_host(fake, {"enabled": False, "disabled_reason": "firmware upgrade"})
    with pytest.raises(HostUnavailableError) as err:
        check_claim(fake, "web-1", flavor(ram_mb=64))
    assert "disabled (firmware upgrade)" in err.value.message


def test_unreachable_host_refuses_claims():
    with pytest.raises(HostUnavailableError):
        check_claim(FakeHost(down=True), "web-1", flavor())


def test_growing_claims_only_what_grows_and_not_twice_itself(fake):
    fake.add_domain(managed_xml("web-1", vcpus=1, ram_mb=1024, disk_gb=5))
    # 1024 -> 2048 MiB on a host with 2048 MiB: fits, because the server's own 1024 MiB are not counted twice.
    summary = check_claim(fake, "web-1", flavor(vcpus=1, ram_mb=2048, disk_gb=5))
    assert summary["needed"] is True and summary["resources"] == ["memory_mb"]
    with pytest.raises(CapacityError):
        check_claim(fake, "web-1", flavor(vcpus=1, ram_mb=2049, disk_gb=5))


def test_a_change_that_grows_nothing_claims_nothing_even_on_a_full_or_disabled_host(fake):
    fake.add_domain(managed_xml("web-1", vcpus=2, ram_mb=2048, disk_gb=5))
    fake.add_domain(unmanaged_xml("hog", memory_kib=4 * 1024 * 1024), disk_capacity={})
    converge_host(fake, {"enabled": False})
    summary = check_claim(fake, "web-1", flavor(vcpus=1, ram_mb=1024, disk_gb=5))
    assert summary["needed"] is False
    assert Claim(fake, "web-1", flavor(vcpus=1, ram_mb=1024, disk_gb=5)).needed is False


@pytest.mark.parametrize("new, old, expected", [
    (flavor(), flavor(), False),
    (flavor(vcpus=2), flavor(), True),
    (flavor(ram_mb=256), flavor(), False),
    (flavor(swap_mb=1), flavor(), True),
    (flavor(disk_gb=0, ephemeral_gb=2), flavor(disk_gb=1), True),
])
def test_grows(new, old, expected):
    assert grows(new, old) is expected


def test_old_flavor_given_explicitly(fake):
    summary = check_claim(fake, "new", flavor(vcpus=2, ram_mb=512), old_flavor=flavor(vcpus=1, ram_mb=512))
    assert summary["resources"] == ["vcpus"]


# -- the lock -------------------------------------------------------------------------------------------------------

def test_lock_is_a_volume_with_its_owner_and_release_removes_it(fake):
    lock = ClaimLock(fake)
    lock.acquire()
    vol = fake.pools[RECORDS_POOL].volumes["claim.lock"]
    owner = json.loads(vol.data.decode())
    assert owner["token"] == lock.token and owner["purpose"] == "claim" and ":" in owner["owner"]
    lock.release()
    assert "claim.lock" not in fake.pools[RECORDS_POOL].volumes
    lock.release()  # idempotent


def test_lock_creates_the_records_pool_when_missing():
    host = FakeHost()
    with ClaimLock(host):
        assert "claim.lock" in host.pools[RECORDS_POOL].volumes


def test_second_claimant_waits_then_times_out_naming_the_holder(fake):
    holder = ClaimLock(fake)
    holder.acquire()
    clock = FakeClock()
    # A holder that keeps renewing is never stale: a new token every poll.
    original = fake.download_bytes

    def renewing(vol, length=0):
        vol.data = json.dumps({"token": str(clock.now), "owner": "ctl:42", "since": "now"}).encode()
        return original(vol, length)

    fake.download_bytes = renewing
    waiter = ClaimLock(fake, timeout=5, ttl=60, clock=clock, sleep=clock.sleep)
    with pytest.raises(ConflictError) as err:
        waiter.acquire()
    assert "held by ctl:42" in err.value.message
    assert clock.now >= 5 and not waiter.held


def test_stale_lock_is_broken_after_ttl_of_the_same_owner(fake):
    dead = ClaimLock(fake)
    dead.acquire()  # and never releases: its process was killed
    clock = FakeClock()
    waiter = ClaimLock(fake, ttl=60, timeout=180, clock=clock, sleep=clock.sleep)
    waiter.acquire()
    assert waiter.held and 60 <= clock.now < 70
    assert waiter.broken and "since" in waiter.broken[0]
    # The dead holder's late release must not remove the waiter's lock.
    dead.release()
    assert "claim.lock" in fake.pools[RECORDS_POOL].volumes
    waiter.release()
    assert "claim.lock" not in fake.pools[RECORDS_POOL].volumes


def test_a_stale_lock_broken_by_another_waiter_at_the_same_moment_is_left_to_it(fake):
    """Two waiters break the same stale lock: the one whose delete meets the other's new lock (libvirt: "volume is
    still being allocated") leaves it alone and waits for it, instead of failing its claim."""
    dead = ClaimLock(fake)
    dead.acquire()
    clock = FakeClock()
    original = fake.delete_volume_if_exists
    raced = []

    def other_waiter_wins(vol):
        if not raced:
            raced.append(True)
            vol.data = json.dumps({"token": "other", "owner": "ctl:7", "since": "now"}).encode()
            raise LibvirtOperationError("cannot delete volume claim.lock on fake:///host: Requested operation is not "
                                        "valid: volume 'claim.lock' is still being allocated.")
        return original(vol)

    fake.delete_volume_if_exists = other_waiter_wins
    waiter = ClaimLock(fake, ttl=60, timeout=300, clock=clock, sleep=clock.sleep)
    waiter.acquire()
    # The other waiter's lock is waited for like any other (here it never releases: its ttl runs out in turn).
    assert raced and waiter.held and clock.now >= 120
    assert len(waiter.broken) == 1 and "ctl:7" in waiter.broken[0]


def test_a_lock_without_owner_yet_is_also_broken_when_it_stays_so(fake):
    fake.pools.setdefault(RECORDS_POOL, None)
    ClaimLock(fake)._pool()
    fake.create_volume(fake.pools[RECORDS_POOL],
                       "<volume><name>claim.lock</name><capacity unit='bytes'>4096</capacity></volume>")
    clock = FakeClock()
    waiter = ClaimLock(fake, ttl=60, clock=clock, sleep=clock.sleep)
    waiter.acquire()
    assert waiter.held and "had not yet written its name" in waiter.broken[0]


def test_locks_of_different_purposes_do_not_exclude_each_other(fake):
    with ClaimLock(fake), RecordLock(fake, "flavors"):
        assert {"claim.lock", "flavors.lock"} <= set(fake.pools[RECORDS_POOL].volumes)


# -- claims in a plan -------------------------------------------------------------------------------------------------

def creation_plan(fake, name, flavor_, fail_verify=False, log=None):
    """What the server module's create plan does, reduced to the steps a claim wraps."""
    log = log if log is not None else []
    claim = Claim(fake, name, flavor_)
    plan = Plan()
    plan.add("create root disk", lambda: log.append("disk"), undo=lambda: log.append("delete disk"))
    plan.add(claim.acquire_label, claim.acquire, undo=lambda: (log.append("release"), claim.release()))

    def define():
        fake.add_domain(managed_xml(name, vcpus=flavor_.vcpus, ram_mb=flavor_.ram_mb, disk_gb=flavor_.disk_gb))
        if fail_verify:  # someone bypassing the lock defines a domain at the same moment
            fake.add_domain(unmanaged_xml("intruder", vcpus=1, memory_kib=2 * 1024 * 1024), disk_capacity={})
        log.append("define")

    def undefine():
        log.append("undefine (lock held: %s)" % ("claim.lock" in fake.pools[RECORDS_POOL].volumes))
        fake.remove_domain(name)

    plan.add("define domain %s" % name, define, undo=undefine)
    plan.add(claim.verify_label, claim.verify_and_release, undo=claim.release)
    plan.add("start %s" % name, lambda: log.append("start"))
    return plan, claim, log


def test_claim_steps_in_a_plan(fake):
    plan, claim, log = creation_plan(fake, "web-1", flavor(ram_mb=1024))
    assert plan.actions[1] == ("claim 1 vCPU, 1024 MB RAM, 1 GB disk for web-1 on host fake-host (checked again "
                               "under the host's claim lock)")
    assert plan.actions[3] == "verify the claim of web-1 on host fake-host and release the claim lock"
    plan.execute()
    assert log == ["disk", "define", "start"]
    assert "claim.lock" not in fake.pools[RECORDS_POOL].volumes


def test_check_mode_fails_the_same_way_before_anything_exists(fake):
    fake.add_domain(managed_xml("old", ram_mb=2048))
    before = list(fake.calls)
    with pytest.raises(CapacityError):
        creation_plan(fake, "web-1", flavor(ram_mb=64))
    assert fake.calls == before


def test_losing_the_race_under_the_lock_rolls_back_what_was_made(fake):
    plan, _claim, log = creation_plan(fake, "web-1", flavor(ram_mb=1536))
    # Another run defined its server between this run's planning and its claim.
    fake.add_domain(managed_xml("web-2", ram_mb=1024))
    with pytest.raises(StepFailed) as err:
        plan.execute()
    assert "does not fit" in err.value.message and "requested 1536 MB" in err.value.message
    assert log == ["disk", "delete disk"]
    assert "claim.lock" not in fake.pools[RECORDS_POOL].volumes


def test_failed_verification_undefines_before_releasing_the_lock(fake):
    plan, _claim, log = creation_plan(fake, "web-1", flavor(ram_mb=1024), fail_verify=True)
    with pytest.raises(StepFailed) as err:
        plan.execute()
    assert "over its capacity" in err.value.message and "RAM: used 3072 of capacity 2048 MB" in err.value.message
    assert log == ["disk", "define", "undefine (lock held: True)", "release", "delete disk"]
    assert "claim.lock" not in fake.pools[RECORDS_POOL].volumes
    assert [d.name() for d in fake.domains] == ["intruder"]


def test_verify_claim_passes_within_capacity(fake):
    fake.add_domain(managed_xml("web-1", ram_mb=2048))
    assert verify_claim(fake, "web-1", ["memory_mb"])["memory_mb_used"] == 2048


DEDICATED = {"hw:cpu_policy": "dedicated"}


def test_a_dedicated_claim_needs_host_cpus_no_other_dedicated_server_holds(fake):
    # The fake host has 4 CPUs; the CPU allocation ratio (16) does not apply to dedicated CPUs.
    fake.add_domain(managed_xml("pinned", vcpus=3, ram_mb=64, extra_specs=DEDICATED, host_cpus=4))
    assert check_claim(fake, "web-1", flavor(vcpus=1, ram_mb=64, extra_specs=DEDICATED))["needed"] is True
    with pytest.raises(CapacityError) as err:
        check_claim(fake, "web-1", flavor(vcpus=2, ram_mb=64, extra_specs=DEDICATED))
    assert ("dedicated CPUs: requested 2 dedicated CPUs, free 1 dedicated CPUs of capacity 4 dedicated CPUs "
            "(used 3 dedicated CPUs)") in err.value.message
    # Floating vCPUs of the same size still fit: they are overcommitted.
    assert check_claim(fake, "web-1", flavor(vcpus=2, ram_mb=64))["needed"] is True


def test_resizing_a_dedicated_server_claims_only_the_cpus_it_adds(fake):
    fake.add_domain(managed_xml("web-1", vcpus=2, ram_mb=64, extra_specs=DEDICATED, host_cpus=4))
    fake.add_domain(managed_xml("other", vcpus=1, ram_mb=64, extra_specs=DEDICATED, host_cpus=4,
                                taken_cpus=taken_cpus(fake, "other")))
    summary = check_claim(fake, "web-1", flavor(vcpus=3, ram_mb=64, extra_specs=DEDICATED))
    assert summary["capacity"]["pcpus"] == {"requested": 3, "used": 1, "capacity": 4.0, "free": 3.0}
    with pytest.raises(CapacityError):
        check_claim(fake, "web-1", flavor(vcpus=4, ram_mb=64, extra_specs=DEDICATED))


def test_verification_refuses_pins_another_dedicated_server_holds(fake):
    # Two runs that chose their pins at the same time: the same host CPUs (host_cpus=4, no taken CPUs known).
    fake.add_domain(managed_xml("web-1", vcpus=1, ram_mb=64, extra_specs=DEDICATED, host_cpus=4))
    fake.add_domain(managed_xml("web-1b", vcpus=1, ram_mb=64, extra_specs=DEDICATED, host_cpus=4,
                                taken_cpus=set(range(4)) - set(taken_cpus(fake, "web-1b"))))
    with pytest.raises(CapacityError) as err:
        verify_claim(fake, "web-1b", ["pcpus"])
    cpu = next(iter(taken_cpus(fake, "web-1b")))
    assert "its dedicated CPUs %d are pinned by web-1 too" % cpu in err.value.message
    assert "run again" in err.value.message


@pytest.mark.parametrize("claimants, room", [(2, 1), (6, 2), (8, 3)])
def test_racing_claimants_never_oversubscribe(fake, claimants, room):
    # Room for ``room`` servers of 512 MiB; every claimant planned while the host was empty.
    converge_host(fake, {"reserved_host_memory_mb": 8192 - 512 * room})
    plans = [creation_plan(fake, "vm-%d" % i, flavor(ram_mb=512))[0] for i in range(claimants)]
    barrier = threading.Barrier(claimants)
    outcomes = []

    def run(plan):
        barrier.wait()
        try:
            plan.execute()
            outcomes.append("ok")
        except StepFailed as exc:
            outcomes.append(exc.message)

    threads = [threading.Thread(target=run, args=(p,)) for p in plans]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert outcomes.count("ok") == room
    assert all("does not fit" in o for o in outcomes if o != "ok")
    assert len(fake.domains) == room
    assert "claim.lock" not in fake.pools[RECORDS_POOL].volumes


# -- volumes (issue 23) ---------------------------------------------------------------------------------------------

def _recorded_volume(host, pool, name, size):
    from ansible_collections.virtfleet.compute.plugins.module_utils._records import RecordStore

    host.pools[pool].volumes[name] = FakeVolume(name, size)
    RecordStore(host).write("volume@%s@%s" % (pool, name), {"pool": pool, "name": name})


def test_a_volume_claim_names_requested_free_capacity_total_and_ratio(fake):
    fake.pools["virtfleet-volumes"] = FakePool("virtfleet-volumes")  # the instance pool's filesystem
    converge_host(fake, {"disk_allocation_ratio": 1.0, "reserved_host_disk_mb": 90 * 1024})
    fake.add_domain(managed_xml("web", disk_gb=6))
    _recorded_volume(fake, "virtfleet-volumes", "logs", 3 * GIB)
    assert check_volume_claim(fake, "virtfleet-volumes", "data", 1)["needed"]
    with pytest.raises(CapacityError) as error:
        check_volume_claim(fake, "virtfleet-volumes", "data", 2)
    assert error.value.field == "size"
    assert ("volume virtfleet-volumes/data does not fit on host fake-host: requested 2 GB, free 1 GB of capacity "
            "10 GB (used 9 GB: servers 6 GB, volumes 3 GB, other domains 0 GB) on the instance filesystem (pool "
            "virtfleet-instances, virtfleet-volumes; total 100 GB, reserved 90 GB, disk allocation ratio 1)"
            ) == error.value.message
    # Nothing to claim (a grow within the same whole GB) needs no room.
    assert not check_volume_claim(fake, "virtfleet-volumes", "data", 0)["needed"]


def test_a_disabled_host_still_takes_volumes(fake):
    converge_host(fake, {"enabled": False, "disabled_reason": "drain"})
    assert check_volume_claim(fake, "virtfleet-instances", "data", 1)["needed"]


def test_a_volume_on_another_filesystem_is_claimed_against_that_one(fake):
    fake.pools["vf-ssd"] = FakePool("vf-ssd", capacity=8 * GIB)
    converge_host(fake, {"reserved_host_disk_mb": 100 * 1024})  # the instance filesystem is all reserved
    with pytest.raises(CapacityError):
        check_volume_claim(fake, "virtfleet-instances", "data", 1)
    assert check_volume_claim(fake, "vf-ssd", "data", 8)["needed"]
    _recorded_volume(fake, "vf-ssd", "fast", 5 * GIB)
    with pytest.raises(CapacityError) as error:
        check_volume_claim(fake, "vf-ssd", "data", 4)
    assert "requested 4 GB, free 3 GB of capacity 8 GB (used 5 GB by volumes) on a filesystem of its own (pool " \
        "vf-ssd; total 8 GB, disk allocation ratio 1)" in error.value.message


def test_a_volume_claim_is_checked_again_under_the_lock_and_verified(fake):
    fake.pools["virtfleet-volumes"] = FakePool("virtfleet-volumes")
    converge_host(fake, {"disk_allocation_ratio": 1.0, "reserved_host_disk_mb": 95 * 1024})
    claim = VolumeClaim(fake, "virtfleet-volumes", "data", 5)
    # Another claimant took the room between planning and the lock.
    _recorded_volume(fake, "virtfleet-volumes", "other", GIB)
    with pytest.raises(CapacityError):
        claim.acquire()
    assert not claim.lock.held
    # A volume made without the lock is caught by the verification, which keeps the lock for the undo.
    claim = VolumeClaim(fake, "virtfleet-volumes", "data", 4)
    claim.acquire()
    _recorded_volume(fake, "virtfleet-volumes", "data", 4 * GIB)
    _recorded_volume(fake, "virtfleet-volumes", "sneaky", GIB)
    with pytest.raises(CapacityError) as error:
        claim.verify_and_release()
    assert "over its capacity" in error.value.message and claim.lock.held
    claim.release()
    assert not claim.lock.held


def test_two_waiters_never_both_delete_a_stale_lock(fake):
    """The race of two waiters breaking the same stale lock: B read the stale lock, then A deleted it and took the
    lock; B's delete by name would remove A's live lock. Breaking happens under a breaker lock and re-reads the lock
    there, so B leaves A's lock alone, and nobody breaks while another waiter holds the breaker."""
    dead = ClaimLock(fake)
    dead.acquire()
    clock = FakeClock()
    a = ClaimLock(fake, ttl=60, timeout=600, clock=clock, sleep=clock.sleep)
    b = ClaimLock(fake, ttl=60, timeout=600, clock=clock, sleep=clock.sleep)
    pool = fake.lookup_pool(RECORDS_POOL)
    stale = a._content(pool)
    # While another waiter holds the breaker, nothing is deleted.
    breaker = fake.create_volume_unless_exists(pool, _lock_volume_xml("claim.lock.break"))
    assert a._break(pool, stale) is False and a._content(pool) == stale
    fake.delete_volume_if_exists(breaker)
    # A breaks and takes the lock; B, whose view is still the stale lock, deletes nothing.
    assert a._break(pool, stale) is True
    a.acquire()
    assert b._break(pool, stale) is False
    assert a.token in a._content(pool)
    assert "claim.lock.break" not in fake.pools[RECORDS_POOL].volumes


def test_a_breaker_left_by_a_killed_waiter_expires(fake):
    dead = ClaimLock(fake)
    dead.acquire()
    pool = fake.lookup_pool(RECORDS_POOL)
    fake.create_volume_unless_exists(pool, _lock_volume_xml("claim.lock.break"))
    clock = FakeClock()
    waiter = ClaimLock(fake, ttl=60, timeout=600, clock=clock, sleep=clock.sleep)
    waiter.acquire()
    assert waiter.held and len(waiter.broken) == 1
    assert "claim.lock.break" not in fake.pools[RECORDS_POOL].volumes
