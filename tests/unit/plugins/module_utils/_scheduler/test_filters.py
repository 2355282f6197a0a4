# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The filters added for Nova's defaults, and the deviations' switches (issue 15's differences 5 and 7)."""

import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils._scheduler import filters as F
from ansible_collections.virtfleet.compute.plugins.module_utils._scheduler.scheduler import (
    DEFAULT_FILTERS,
    DEVIATIONS,
    NoValidHost,
    Scheduler,
    schedule,
)

SMALL = {"name": "m1.small", "vcpus": 1, "ram_mb": 2048, "disk_gb": 20}
X86 = {"arch": "x86_64", "vendor": "Intel", "model": "Haswell", "maxphysaddr": {"bits": 46}}
ARM = {"arch": "aarch64", "vendor": "ARM"}


def host(name, **kw):
    record = {"name": name, "vcpus": 16, "memory_mb": 65536, "local_gb": 1000}
    record.update(kw)
    return record


def where(flavor=None, hosts=(), **server):
    server = dict({"name": "s", "flavor": flavor or SMALL}, **server)
    try:
        return schedule([server], list(hosts))[0].host
    except NoValidHost as exc:
        return exc.reasons


def test_novas_default_filters_are_on_and_io_ops_is_opt_in():
    for name in ("ComputeFilter", "ComputeCapabilitiesFilter", "ImagePropertiesFilter",
                 "ServerGroupAntiAffinityFilter", "ServerGroupAffinityFilter"):
        assert name in DEFAULT_FILTERS
    assert "IoOpsFilter" not in DEFAULT_FILTERS


@pytest.mark.parametrize("spec, passes", [
    ({"capabilities:hypervisor_type": "QEMU"}, True),
    ({"capabilities:hypervisor_type": "s== Xen"}, False),
    ({"capabilities:hypervisor_version": ">= 7000000"}, True),
    ({"capabilities:hypervisor_version": ">= 8000000"}, False),
    ({"capabilities:cpu_info:vendor": "Intel"}, True),
    ({"capabilities:cpu_info:arch": "<or> aarch64 <or> x86_64"}, True),
    ({"capabilities:cpu_info:nothing": "x"}, False),
    ({"hw:maxphysaddr_bits": "40"}, True),
    ({"hw:maxphysaddr_bits": "48"}, False),
    ({"capabilities:stats:rack": "r1"}, True),
    ({"hw:cpu_policy": "shared"}, True),  # another scope: not a capability
])
def test_compute_capabilities_filter(spec, passes):
    h = host("h1", hypervisor_type="QEMU", hypervisor_version=7002000, cpu=X86, stats={"rack": "r1"})
    result = where(dict(SMALL, extra_specs=spec), [h])
    if passes:
        assert result == "h1"
    else:
        assert result["h1"].startswith("ComputeCapabilitiesFilter: flavor m1.small needs capability")


def test_capabilities_read_cpu_info_given_as_json_like_nova():
    h = host("h1", cpu_info='{"arch": "x86_64", "vendor": "AMD"}')
    assert where(dict(SMALL, extra_specs={"capabilities:cpu_info:vendor": "AMD"}), [h]) == "h1"


@pytest.mark.parametrize("props, passes", [
    ({}, True),
    ({"hw_architecture": "x86_64"}, True),
    ({"hw_architecture": "amd64"}, True),  # Nova's canonical names
    ({"hw_architecture": "aarch64"}, False),
    ({"img_hv_type": "qemu", "hw_vm_mode": "hvm"}, True),
    ({"img_hv_type": "xen"}, False),
    ({"img_hv_requested_version": ">=7.0"}, True),  # no architecture asked: nothing to check (Nova)
    ({"hw_architecture": "x86_64", "img_hv_requested_version": ">=7.0,<8"}, True),
    ({"hw_architecture": "x86_64", "img_hv_requested_version": ">=8.0"}, False),
])
def test_image_properties_filter(props, passes):
    h = host("h1", cpu=X86, virt_type="kvm", hypervisor_version=7002000)
    result = where(hosts=[h], image_properties=props)
    if passes:
        assert result == "h1"
    else:
        assert result["h1"].startswith("ImagePropertiesFilter: the image asks for")


def test_image_properties_use_supported_instances_when_given():
    h = host("h1", supported_instances=[["aarch64", "qemu", "hvm"]], cpu=X86)
    assert where(hosts=[h], image_properties={"hw_architecture": "aarch64"}) == "h1"
    assert "ImagePropertiesFilter" in where(hosts=[h], image_properties={"hw_architecture": "x86_64"})["h1"]
    # A host that reports nothing supports no image that asks for something.
    bare = host("bare")
    assert "no supported instance types" in where(hosts=[bare], image_properties={"hw_architecture": "x86_64"})[
        "bare"]


def test_image_properties_from_an_image_record():
    arm = host("arm", cpu=ARM, virt_type="qemu")
    x86 = host("x86", cpu=X86, virt_type="qemu")
    assert where(hosts=[x86, arm], image={"properties": {"hw_architecture": "aarch64"}}) == "arm"


def test_default_zone_keeps_to_hosts_without_a_zone_unless_switched_to_nova():
    zoned = host("zoned", availability_zone="az1")
    assert where(hosts=[zoned], availability_zone="nova")["zoned"].startswith("AvailabilityZoneFilter")
    placed = schedule([{"name": "s", "flavor": SMALL, "availability_zone": "nova"}], [zoned],
                      restrict_default_availability_zone=False)
    assert placed[0].host == "zoned"
    # Any other zone still restricts.
    with pytest.raises(NoValidHost):
        schedule([{"name": "s", "flavor": SMALL, "availability_zone": "az2"}], [zoned],
                 restrict_default_availability_zone=False)


def test_unscoped_extra_specs_only_filter_when_switched_to_nova():
    ssd = host("ssd", aggregates={"fast": {"disk": "ssd"}})
    hdd = host("hdd", aggregates={"slow": {"disk": "hdd"}}, memory_mb=131072)
    flavor = dict(SMALL, extra_specs={"disk": "ssd"})
    assert where(flavor, [ssd, hdd]) == "hdd"  # ignored: the emptier host wins
    placed = schedule([{"name": "s", "flavor": flavor}], [ssd, hdd], match_unscoped_extra_specs=True)
    assert placed[0].host == "ssd"


def test_every_deviation_is_documented_with_its_switch():
    names = [d["name"] for d in DEVIATIONS]
    assert len(names) == len(set(names))
    switches = {d["option"].split("=", maxsplit=1)[0] for d in DEVIATIONS if d["option"]}
    signature = Scheduler.__init__.__kwdefaults__
    for option in switches - {"enabled_filters"}:
        assert option in signature


@pytest.mark.parametrize("version, predicate, ok", [
    (7002000, ">=7.0", True), (7002000, ">= 7.2.0", True), (7002000, ">7.2", False), (7002000, "==7.2", True),
    (7002000, ">=6,<7", False), (7002000, "!=7.2.0", False), (7002000, "garbage", False),
])
def test_version_predicates_like_oslo_utils(version, predicate, ok):
    assert F.version_satisfies(version, predicate) is ok


def _features(free_2m=0, shaping=True):
    return {"huge_pages": [{"size_kb": 2048, "total": free_2m, "free": free_2m}],
            "bandwidth_shaping": {"supported": shaping, "reason": "the kernel lacks the sfq queueing discipline"}}


def test_host_features_filter_huge_pages_and_shaping():
    huge = dict(SMALL, name="m1.huge", extra_specs={"hw:mem_page_size": "large"})  # 2048 MB: 1024 pages of 2 MiB
    # The emptier host lacks the pages: the filter sends the server to the one that has them.
    pages = host("pages", features=_features(free_2m=1024), memory_mb=32768)
    nopages = host("nopages", features=_features(free_2m=1023))
    assert where(huge, [nopages, pages]) == "pages"
    reasons = where(huge, [nopages])
    assert reasons == {"nopages": "HostFeaturesFilter: flavor m1.huge extra spec hw:mem_page_size: 2048 MB of RAM "
                                  "needs 1024 free 2048 KiB pages, the host has 1023 free of 1023"}
    shaped = dict(SMALL, extra_specs={"quota:vif_inbound_average": "1000"})
    assert where(shaped, [host("noshape", features=_features(shaping=False)), host("shape", memory_mb=8192)]) == \
        "shape"  # a host that does not report features is not held to them
    assert where(SMALL, [host("noshape", features=_features(shaping=False))]) == "noshape"
    assert "HostFeaturesFilter" in DEFAULT_FILTERS
