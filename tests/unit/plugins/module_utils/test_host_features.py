"""What a flavor's extra specs ask of a host, and what a host reports (pure logic; the real probe and refusals are
in tests/integration/test_host_features.py)."""
import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils import _host_features as hf
from tests.unit.plugins.module_utils.test_host_info import FakeHost

SHAPING = {"supported": True, "reason": "ok"}
NO_SHAPING = {"supported": False, "reason": "the kernel lacks the sfq queueing discipline"}


def host(free_2m=0, total_2m=0, shaping=None, sizes=(2048, 1048576)):
    shaping = SHAPING if shaping is None else shaping
    pages = [{"size_kb": s, "total": total_2m if s == 2048 else 0, "free": free_2m if s == 2048 else 0}
             for s in sizes]
    return {"huge_pages": pages, "bandwidth_shaping": shaping}


@pytest.mark.parametrize("specs, wanted", [
    ({}, {}),
    ({"hw:mem_page_size": "small"}, {}),
    ({"hw:mem_page_size": "any"}, {}),
    ({"hw:mem_page_size": "large", "hw:cpu_policy": "dedicated"}, {"hw:mem_page_size": "large"}),
    ({"quota:vif_outbound_peak": "10", "quota:cpu_shares": "5"}, {"quota:vif_outbound_peak": "10"}),
])
def test_feature_specs(specs, wanted):
    assert hf.feature_specs(specs) == wanted


def test_large_pages_need_free_default_size_pages():
    specs = {"hw:mem_page_size": "large"}
    assert hf.unmet_needs(specs, 512, host(free_2m=256, total_2m=256)) == []
    unmet = hf.unmet_needs(specs, 512, host(free_2m=255, total_2m=300))
    assert unmet == [("hw:mem_page_size", "512 MB of RAM needs 256 free 2048 KiB pages, the host has 255 free of 300")]


def test_explicit_sizes_and_hosts_without_them():
    assert hf.unmet_needs({"hw:mem_page_size": "1GB"}, 1024, host(free_2m=1024, total_2m=1024)) == [
        ("hw:mem_page_size", "1024 MB of RAM needs 1 free 1048576 KiB pages, the host has 0 free of 0")]
    assert hf.unmet_needs({"hw:mem_page_size": "2MB"}, 64, host(sizes=(1048576,))) == [
        ("hw:mem_page_size", "the host has no 2048 KiB pages (it has 1048576 KiB)")]
    assert hf.unmet_needs({"hw:mem_page_size": "large"}, 64, host(sizes=())) == [
        ("hw:mem_page_size", "the host has no huge pages")]
    # 4 KiB is the base page: nothing huge is needed
    assert hf.unmet_needs({"hw:mem_page_size": "4"}, 64, host(sizes=())) == []


def test_shaping_refused_only_where_known_to_be_missing():
    specs = {"quota:vif_inbound_average": "100", "quota:vif_outbound_average": "100"}
    assert hf.unmet_needs(specs, 64, host(shaping=SHAPING)) == []
    assert hf.unmet_needs(specs, 64, host(shaping={"supported": None, "reason": "remote"})) == []
    assert hf.unmet_needs(specs, 64, host(shaping=NO_SHAPING)) == [
        ("quota:vif_inbound_average", "the host cannot shape NIC bandwidth: %s" % NO_SHAPING["reason"])]


def test_a_host_that_reports_no_features_is_never_held_to_them():
    specs = {"hw:mem_page_size": "large", "quota:vif_inbound_average": "100"}
    assert hf.unmet_needs(specs, 64, {}) == []
    assert hf.unmet_needs(specs, 64, None) == []


def test_describe_names_the_flavor_and_every_spec():
    text = hf.describe_unmet([("a", "x"), ("b", "y")], "m1.huge")
    assert text == "flavor m1.huge extra spec a: x; flavor m1.huge extra spec b: y"


@pytest.mark.parametrize("uri, local", [
    ("qemu:///system", True),
    ("qemu+unix:///system?socket=/var/tmp/lab/h1/run/libvirt-sock", True),
    ("qemu+ssh://root@compute-1/system", False),
    ("qemu+tls://compute-1/system", False),
    ("test:///default", False),
])
def test_only_local_qemu_hosts_are_probed(uri, local):
    assert hf.is_local_uri(uri) is local
    if not local:
        assert hf.bandwidth_shaping(uri)["supported"] is None


def test_huge_pages_summed_over_cells_from_the_host():
    client = FakeHost()
    client.free_huge = {0: {2048: 3}, 1: {2048: 5}}
    cells = [{"id": 0, "pages": [{"size_kb": 4, "count": 1000}, {"size_kb": 2048, "count": 4}]},
             {"id": 1, "pages": [{"size_kb": 4, "count": 1000}, {"size_kb": 2048, "count": 6}]}]
    assert hf.huge_pages(client, cells) == [{"size_kb": 2048, "total": 10, "free": 8}]
    assert hf.huge_pages(client, [{"id": 0, "pages": [{"size_kb": 4, "count": 9}]}]) == []
