"""Extra specs a host cannot honour are refused while planning, on a real libvirtd: huge pages and NIC shaping.

Before, a flavor with ``hw:mem_page_size: large`` on a host without huge pages (these machines have none) was
claimed and defined, then failed at start ("hugetlbfs filesystem is not mounted or disabled") and rolled back, and
check mode predicted success. A flavor with ``quota:vif_*`` did the same on a kernel without the sfq queueing
discipline (these machines' kernel has no modules: no sfq).
"""
import os
import subprocess

import pytest

from tests.integration.conftest import INSTANCE_POOL

NAME = "vf-hf-1"


def _converge(client, check_mode=False, **params):
    from ansible_collections.virtfleet.compute.plugins.module_utils._server import converge_server

    params.setdefault("virt_type", "qemu")
    return converge_server(client, params, check_mode=check_mode, diff_mode=True)


def _volumes(client, pools):
    return sorted(v.name() for v in client.list_volumes(pools[INSTANCE_POOL]))


def _free_huge_pages_kib():
    """Free huge page memory as the kernel reports it (the test's own oracle, independent of libvirt)."""
    with open("/proc/meminfo") as handle:
        fields = dict(line.split(":", 1) for line in handle)
    return int(fields["HugePages_Free"].split()[0]) * int(fields["Hugepagesize"].split()[0])


def _kernel_has_sfq():
    """Whether tc can add an sfq qdisc, tried by the test itself in a throw-away namespace."""
    namespace = "vf-hf-sfq"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        run = ["ip", "netns", "exec", namespace]
        subprocess.run(run + ["ip", "link", "add", "hfa", "type", "veth", "peer", "name", "hfb"], check=True)
        return subprocess.run(run + ["tc", "qdisc", "add", "dev", "hfa", "root", "sfq"], check=False,
                              capture_output=True).returncode == 0
    finally:
        subprocess.run(["ip", "netns", "delete", namespace], check=False)


def test_host_info_reports_huge_pages_and_shaping(client):
    from ansible_collections.virtfleet.compute.plugins.module_utils._host_info import host_info

    features = host_info(client)["features"]
    sizes = dict((p["size_kb"], p) for p in features["huge_pages"])
    with open("/proc/meminfo") as handle:
        default_kib = int([line for line in handle if line.startswith("Hugepagesize:")][0].split()[1])
    assert default_kib in sizes
    assert sizes[default_kib]["free"] * default_kib == _free_huge_pages_kib()
    assert features["bandwidth_shaping"]["supported"] is _kernel_has_sfq()


@pytest.mark.parametrize("check_mode", [True, False])
def test_huge_pages_the_host_lacks_are_refused_before_anything_is_made(client, pools, halt_image, check_mode):
    from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ConflictError

    ram_mb = 64
    assert _free_huge_pages_kib() < ram_mb * 1024, "this test needs a host without 64 MB of free huge pages"
    before = _volumes(client, pools)
    with pytest.raises(ConflictError) as refused:
        _converge(client, check_mode=check_mode, name=NAME, image=halt_image,
                  flavor={"name": "hf.huge", "vcpus": 1, "ram_mb": ram_mb, "disk_gb": 1,
                          "extra_specs": {"hw:mem_page_size": "large"}})
    assert refused.value.field == "flavor.extra_specs"
    assert "flavor hf.huge extra spec hw:mem_page_size" in str(refused.value)
    assert "needs 32 free 2048 KiB pages" in str(refused.value), str(refused.value)
    assert client.lookup_domain(NAME) is None
    assert _volumes(client, pools) == before


def test_nic_shaping_is_refused_where_the_kernel_cannot_shape(client, pools, halt_image, default_network):
    from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ConflictError

    params = dict(name=NAME, image=halt_image, networks=[{"network": default_network}],
                  flavor={"vcpus": 1, "ram_mb": 64, "disk_gb": 1,
                          "extra_specs": {"quota:vif_inbound_average": "1000"}})
    before = _volumes(client, pools)
    try:
        if _kernel_has_sfq():
            # A kernel that can shape: the same flavor runs (the refusal is no blanket ban on the extra spec).
            assert _converge(client, **params)["changed"]
            assert client.domain_state(client.lookup_domain(NAME)) == "running"
            return
        with pytest.raises(ConflictError) as refused:
            _converge(client, check_mode=True, **params)
        assert "quota:vif_inbound_average" in str(refused.value) and "sfq" in str(refused.value)
        with pytest.raises(ConflictError):
            _converge(client, **params)
        assert client.lookup_domain(NAME) is None
        assert _volumes(client, pools) == before
    finally:
        _converge(client, name=NAME, state="absent")


def test_the_refusal_changes_nothing_on_an_existing_server(client, pools, halt_image):
    """A server asked to move to huge pages keeps running as it was."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ConflictError

    flavor = {"vcpus": 1, "ram_mb": 64, "disk_gb": 1}
    try:
        _converge(client, name=NAME, image=halt_image, flavor=flavor)
        xml = client.domain_xml(client.lookup_domain(NAME))
        with pytest.raises(ConflictError) as refused:
            _converge(client, name=NAME, image=halt_image,
                      flavor=dict(flavor, extra_specs={"hw:mem_page_size": "2MB"}))
        assert "hw:mem_page_size" in str(refused.value)
        assert client.domain_xml(client.lookup_domain(NAME)) == xml
        assert client.domain_state(client.lookup_domain(NAME)) == "running"
    finally:
        _converge(client, name=NAME, state="absent")


def test_probe_leaves_no_namespace_behind(client):
    from ansible_collections.virtfleet.compute.plugins.module_utils import _host_features

    _host_features._shaping_cache.clear()
    _host_features.bandwidth_shaping(client.uri)
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert "vf-bwprobe-%d" % os.getpid() not in namespaces
