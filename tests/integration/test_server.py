"""The server module on a real libvirtd: states, changes, refusals, and a real boot with SSH."""
import subprocess

import pytest

from tests.integration.conftest import INSTANCE_POOL, run_playbook, ssh

TARGETS = "tests/integration/targets/server"


def _volumes(client, pools):
    return sorted(v.name() for v in client.list_volumes(pools[INSTANCE_POOL]))


def test_every_state_transition_in_four_steps(uri, halt_image, pools):
    run_playbook(TARGETS + "/states.yml", halt_image=halt_image).assert_ok()


def _converge(client, **params):
    from ansible_collections.virtfleet.compute.plugins.module_utils._server import converge_server

    params.setdefault("virt_type", "qemu")
    return converge_server(client, params, check_mode=False, diff_mode=True)


@pytest.mark.boot
def test_boot_cloud_image_ssh_resize_and_delete(client, pools, boot_image, default_network, ssh_key, tmp_path):
    """A real Debian guest: cloud-init sets the host name and key, swap is on, then a resize, a new key applied by a
    rebuild, and a delete."""
    key_path, public_key = ssh_key
    name = "vf-it-boot"
    before = _volumes(client, pools)
    flavor = {"vcpus": 1, "ram_mb": 512, "disk_gb": 4, "swap_mb": 128}
    common = dict(name=name, image=boot_image, networks=[{"network": default_network}],
                  ssh_authorized_keys=[public_key], wait_timeout=300)
    try:
        created = _converge(client, flavor=flavor, **common)
        server = created["server"]
        assert server["state"] == "running" and server["ips"], created
        ip = server["ips"][0]
        assert ssh(ip, key_path, "hostname").strip() == name
        assert public_key.split()[1] in ssh(ip, key_path, "cat ~/.ssh/authorized_keys")
        # cloud-init grew the root filesystem to the flavor's disk, and enabled the swap disk from vendor data.
        disk_bytes = int(ssh(ip, key_path, "lsblk -bndo SIZE /dev/vda").strip())
        assert disk_bytes == 4 * 1024 ** 3
        swaps = ssh(ip, key_path, "cat /proc/swaps")
        assert "/dev/vd" in swaps, swaps

        # The image runs qemu-guest-agent: the guest itself reports its address, and a soft reboot asks the agent
        # to shut down rather than pressing the ACPI button.
        from ansible_collections.virtfleet.compute.plugins.module_utils._server_action import run_action

        mac = server["networks"][0]["mac"]
        assert ssh(ip, key_path, "systemctl is-active qemu-guest-agent").strip() == "active"
        reported = client.agent_addresses(client.lookup_domain(name))
        assert reported and ip in [a.split("/")[0] for a in reported[mac]], reported
        rebooted = run_action(client, dict(name=name, action="reboot", reboot_type="soft", shutdown_timeout=120))
        assert rebooted["reboot"] == {"type": "soft", "shutdown": "guest-agent"}, rebooted
        assert ssh(ip, key_path, "hostname", timeout=600).strip() == name

        # Grow: vCPUs and RAM need a restart, the disk grows too; the guest sees all three.
        resized = _converge(client, flavor=dict(flavor, vcpus=2, ram_mb=768, disk_gb=6), **common)
        assert resized["changed"]
        assert resized["actions"][0].startswith("shut down"), resized["actions"]
        assert resized["diff"]["before"]["flavor"]["vcpus"] == 1
        assert resized["diff"]["after"]["flavor"]["vcpus"] == 2
        ip = resized["server"]["ips"][0]
        assert ssh(ip, key_path, "nproc").strip() == "2"
        mem_kib = int(ssh(ip, key_path, "awk '/MemTotal/{print $2}' /proc/meminfo").strip())
        assert 600 * 1024 < mem_kib <= 768 * 1024
        assert int(ssh(ip, key_path, "lsblk -bndo SIZE /dev/vda").strip()) == 6 * 1024 ** 3

        # A disk never shrinks: refused, and nothing changes.
        xml_before = client.domain_xml(client.lookup_domain(name))
        from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ConflictError

        with pytest.raises(ConflictError) as refused:
            _converge(client, flavor=dict(flavor, vcpus=2, ram_mb=768, disk_gb=5), **common)
        assert "never shrinks" in str(refused.value)
        assert client.domain_xml(client.lookup_domain(name)) == xml_before

        unchanged = _converge(client, flavor=dict(flavor, vcpus=2, ram_mb=768, disk_gb=6), **common)
        assert not unchanged["changed"], unchanged["actions"]

        # A new key: the drive is rewritten, but the booted guest keeps the key it first read, and says so.
        new_key_path = str(tmp_path / "new_ed25519")
        subprocess.check_call(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", new_key_path])
        with open(new_key_path + ".pub") as handle:
            new_public_key = handle.read().strip()
        rekey = dict(common, flavor=dict(flavor, vcpus=2, ram_mb=768, disk_gb=6))
        rekey["ssh_authorized_keys"] = [new_public_key]
        rekeyed = _converge(client, **rekey)
        assert rekeyed["server"]["config_drive_rewritten"] is True
        assert any("action=rebuild" in w for w in rekeyed["warnings"]), rekeyed["warnings"]
        assert new_public_key.split()[1] not in ssh(ip, key_path, "cat ~/.ssh/authorized_keys")
        # A rebuild gives it a new root disk whose first boot applies the new key.
        rebuilt = run_action(client, dict(name=name, action="rebuild", wait=True, wait_timeout=300))
        assert rebuilt["server"]["config_drive_rewritten"] is False
        ip = rebuilt["server"]["ips"][0]
        assert ssh(ip, new_key_path, "hostname", timeout=300).strip() == name
        assert public_key.split()[1] not in ssh(ip, new_key_path, "cat ~/.ssh/authorized_keys")
    finally:
        _converge(client, name=name, state="absent")
    assert client.lookup_domain(name) is None
    assert _volumes(client, pools) == before


def test_failed_start_rolls_back_everything_this_run_created(client, pools, halt_image):
    """The domain is defined, then cannot start (its "bridge" is the loopback interface, which exists and is no
    bridge; one that does not exist at all is refused before anything is made): the run undoes all it made."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._plan import StepFailed

    before = _volumes(client, pools)
    with pytest.raises(StepFailed) as failed:
        _converge(client, name="vf-it-rollback", flavor={"vcpus": 1, "ram_mb": 64, "disk_gb": 1}, image=halt_image,
                  networks=[{"bridge": "lo"}])
    assert failed.value.details["failed"] == "start vf-it-rollback"
    assert "define domain vf-it-rollback" in " ".join(failed.value.details["rolled_back"])
    assert client.lookup_domain("vf-it-rollback") is None
    assert _volumes(client, pools) == before


def test_unmanaged_domain_is_never_touched(client, pools, halt_image):
    from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ConflictError

    xml = ("<domain type='qemu'><name>vf-it-foreign</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
           "<os><type arch='x86_64'>hvm</type></os></domain>")
    dom = client.define_domain(xml)
    try:
        before = client.domain_xml(dom)
        for state in ("running", "stopped", "absent"):
            with pytest.raises(ConflictError) as refused:
                _converge(client, name="vf-it-foreign", state=state, flavor={"vcpus": 1, "ram_mb": 64, "disk_gb": 1},
                          image=halt_image)
            assert "not created by virtfleet.compute" in str(refused.value)
        assert client.domain_xml(dom) == before
        assert client.domain_state(dom) == "shutoff"
    finally:
        client.undefine_domain(dom)


@pytest.mark.parametrize("params, field", [
    (dict(name="bad_name!"), "name"),
    (dict(flavor={"vcpus": 1, "ram_mb": 64, "disk_gb": 1, "gpus": 1}), "flavor"),
    (dict(image="vf-no-such-image"), "image"),
    (dict(networks=[{"network": "vf-no-such-net"}]), "networks[0].network"),
    (dict(flavor={"vcpus": 1, "ram_mb": 64, "disk_gb": 0}, image="debian-12-missing"), "image"),
    (dict(networks=[{"network": "default", "mac": "53:54:00:00:00:01"}]), "networks[0].mac"),
])
def test_bad_input_names_the_field_and_creates_nothing(client, pools, halt_image, params, field):
    from ansible_collections.virtfleet.compute.plugins.module_utils._errors import VirtfleetError

    args = dict(name="vf-it-bad", flavor={"vcpus": 1, "ram_mb": 64, "disk_gb": 1}, image=halt_image)
    args.update(params)
    before = _volumes(client, pools)
    with pytest.raises(VirtfleetError) as failed:
        _converge(client, **args)
    assert failed.value.field == field, str(failed.value)
    assert client.lookup_domain(args["name"]) is None if args["name"] == "vf-it-bad" else True
    assert _volumes(client, pools) == before


def test_disk_smaller_than_the_image_is_refused(client, pools, boot_image):
    from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ValidationError

    before = _volumes(client, pools)
    with pytest.raises(ValidationError) as refused:
        _converge(client, name="vf-it-small", flavor={"vcpus": 1, "ram_mb": 64, "disk_gb": 1}, image=boot_image)
    assert refused.value.field == "flavor.disk_gb"
    assert _volumes(client, pools) == before


def test_pool_module_four_steps(uri):
    run_playbook("tests/integration/targets/pool/main.yml").assert_ok()
