"""Bad input and limits on a real libvirtd: claims that count what a server really takes."""
import subprocess

import pytest

from tests.integration.conftest import INSTANCE_POOL, import_image

PREFIX = "vf-input-"
GIB = 1024 ** 3


def _converge(client, check_mode=False, **params):
    from ansible_collections.virtfleet.compute.plugins.module_utils._server import converge_server

    params.setdefault("virt_type", "qemu")
    params.setdefault("state", "stopped")
    return converge_server(client, params, check_mode=check_mode, diff_mode=False)


def _ours(client, pools):
    domains = [d.name() for d in client.list_domains() if d.name().startswith(PREFIX)]
    volumes = [v.name() for v in client.list_volumes(pools[INSTANCE_POOL]) if v.name().startswith(PREFIX)]
    return domains, volumes


@pytest.fixture
def huge_image(client, pools, tmp_path):
    # 200 KiB on disk, 10 TiB to the guest: a disk_gb 0 flavor makes a root disk of 10 TiB from it.
    path = str(tmp_path / "huge.qcow2")
    subprocess.check_call(["qemu-img", "create", "-q", "-f", "qcow2", path, "10T"])
    import_image(client, PREFIX + "huge", path, "qcow2")
    yield PREFIX + "huge"
    from ansible_collections.virtfleet.compute.plugins.module_utils._image import converge_image

    converge_image(client, {"name": PREFIX + "huge", "state": "absent"})


def test_disk_gb_0_claims_the_image_virtual_size_and_is_refused_when_it_does_not_fit(client, pools, huge_image):
    from ansible_collections.virtfleet.compute.plugins.module_utils._errors import CapacityError

    params = dict(name=PREFIX + "zero-disk", image=huge_image, flavor={"vcpus": 1, "ram_mb": 64, "disk_gb": 0})
    before = _ours(client, pools)
    for check_mode in (True, False):
        with pytest.raises(CapacityError) as refused:
            _converge(client, check_mode=check_mode, **dict(params))
        message = str(refused.value)
        # The numbers: the 10 TiB the image asks for, against the host's disk.
        assert "disk" in message and "10240 GB" in message, message
        assert "disk_gb 0" in message and "virtual size" in message, message
        assert _ours(client, pools) == before


def test_host_usage_counts_a_disk_gb_0_server_by_its_root_disk(client, pools, halt_image):
    from ansible_collections.virtfleet.compute.plugins.module_utils._host_info import host_info

    name = PREFIX + "zero-halt"
    try:
        _converge(client, name=name, image=halt_image, flavor={"vcpus": 1, "ram_mb": 64, "disk_gb": 0})
        server = [s for s in host_info(client, details=False)["servers"] if s["name"] == name][0]
        # The halt image is 1 MiB: its root disk takes 1 GB once rounded up (Nova's ceil), never 0.
        assert server["disk_gb"] == 1
    finally:
        _converge(client, name=name, state="absent")
