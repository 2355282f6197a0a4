"""Bad input found by attacking the modules (issue 14, Low): each is a clear error naming the field, refused in
check mode as in the real run, and nothing changes. The limits themselves live in _limits (docs/limits.md)."""
import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils import _limits
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import NotFoundError, ValidationError
from ansible_collections.virtfleet.compute.plugins.module_utils._flavor import Flavor
from ansible_collections.virtfleet.compute.plugins.module_utils._flavor_catalog import converge_flavor
from ansible_collections.virtfleet.compute.plugins.module_utils._server_action import ActionRequest
from tests.unit.plugins.module_utils import test_flavor, test_network, test_pool, test_server_plan
from tests.unit.plugins.module_utils.test_host_info import FakeHost

BIDI = "m1\u202etiny"  # RIGHT-TO-LEFT OVERRIDE: displays as "m1ynit"


# -- names -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a\x00b", "a/b", "../etc", "a..b", "<b>x</b>", "a b", "-x", BIDI, "x" * 129])
def test_bad_pool_names_are_refused_in_check_mode_and_for_real(client, tmp_path, name):
    before = test_pool.pools(client)
    for check_mode in (True, False):
        with pytest.raises(ValidationError) as err:
            test_pool.converge_pool(client, {"name": name, "path": str(tmp_path / "p")}, check_mode=check_mode)
        assert err.value.field == "name"
    assert test_pool.pools(client) == before


def test_a_nul_in_any_pool_reference_is_an_error_not_a_traceback(client, base_image):
    error = test_server_plan.refused(client, test_server_plan.params(instance_pool="inst\x00ances"),
                                     ValidationError)
    assert error.field == "instance_pool" and "NUL" in error.message


@pytest.mark.parametrize("name", ["m1/x", "../m1", "m1..x", "<script>x</script>", "m1 tiny", BIDI, "m1\ttiny"])
def test_bad_flavor_names_are_refused(name):
    fake = FakeHost()
    for check_mode in (True, False):
        with pytest.raises(ValidationError) as err:
            converge_flavor(fake, test_flavor.params(name=name, vcpus=1, ram_mb=512, disk_gb=1),
                            check_mode=check_mode)
        assert err.value.field == "name"
    assert "virtfleet-records" not in fake.pools


@pytest.mark.parametrize("name", ["m1.tiny", "gp2.large", "c5:xlarge", "m1-nano_2", "1g+"])
def test_usual_flavor_names_still_pass(name):
    assert _limits.validate_name(name, "name", "flavor name") == name


# -- ranges ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("specs, key", [
    ({"quota:cpu_quota": str(-10 ** 20)}, "quota:cpu_quota"),
    ({"quota:cpu_quota": str(10 ** 20)}, "quota:cpu_quota"),
    ({"quota:disk_read_bytes_sec": str(10 ** 30)}, "quota:disk_read_bytes_sec"),
    ({"quota:vif_inbound_average": str(10 ** 30)}, "quota:vif_inbound_average"),
])
def test_extra_specs_out_of_libvirts_range_are_refused(specs, key):
    with pytest.raises(ValidationError) as err:
        Flavor.from_dict({"vcpus": 1, "ram_mb": 512, "disk_gb": 1, "extra_specs": specs})
    assert err.value.field == "flavor.extra_specs.%s" % key


@pytest.mark.parametrize("field", ["vcpus", "ram_mb", "disk_gb", "swap_mb", "ephemeral_gb"])
def test_flavor_sizes_are_bounded(field):
    data = dict({"vcpus": 1, "ram_mb": 512, "disk_gb": 1}, **{field: 10 ** 30})
    with pytest.raises(ValidationError) as err:
        Flavor.from_dict(data)
    assert err.value.field == "flavor.%s" % field


def test_a_bridge_that_does_not_exist_is_refused_before_check_mode_predicts_anything(client, base_image):
    error = test_server_plan.refused(client, test_server_plan.params(networks=[{"bridge": "nosuch-br"}]),
                                     NotFoundError)
    assert error.field == "networks[0].bridge" and "nosuch-br" in error.message


# -- MAC addresses ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mac, says", [
    ("00:00:00:00:00:00", "all-zero"),
    ("ff:ff:ff:ff:ff:ff", "broadcast"),
    ("01:00:5e:00:00:01", "multicast"),
    ("33:33:00:00:00:01", "multicast"),
])
def test_server_macs_must_be_unicast_and_not_zero(client, base_image, mac, says):
    error = test_server_plan.refused(client, test_server_plan.params(networks=[{"network": "default", "mac": mac}]),
                                     ValidationError)
    assert error.field == "networks[0].mac" and says in error.message


@pytest.mark.parametrize("mac", ["00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"])
def test_reserved_host_macs_of_a_network_must_be_unicast_and_not_zero(client, mac):
    with pytest.raises(ValidationError) as err:
        test_network.converge(client, {"name": "t5-mac", "cidr": "10.0.0.0/24",
                                       "hosts": [{"mac": mac, "ip": "10.0.0.9"}]}, check=True)
    assert err.value.field == "hosts[0].mac"
    assert client.lookup_network("t5-mac") is None


# -- sizes of text -----------------------------------------------------------------------------------------------------

def test_a_one_megabyte_flavor_description_is_refused():
    fake = FakeHost()
    with pytest.raises(ValidationError) as err:
        converge_flavor(fake, test_flavor.params(vcpus=1, ram_mb=512, disk_gb=1, description="x" * 1024 * 1024))
    assert err.value.field == "description" and "65535" in err.value.message
    assert "virtfleet-records" not in fake.pools


@pytest.mark.parametrize("metadata, field", [
    (dict(("k%d" % i, "v") for i in range(_limits.METADATA_ITEMS_MAX + 1)), "metadata"),
    ({"k" * 256: "v"}, "metadata"),
    ({"k": "v" * 256}, "metadata.k"),
])
def test_server_metadata_is_bounded(client, base_image, metadata, field):
    error = test_server_plan.refused(client, test_server_plan.params(metadata=metadata), ValidationError)
    assert error.field == field


def test_user_data_is_bounded_to_64_kib(client, base_image):
    big = "#cloud-config\n" + "#" * _limits.USER_DATA_MAX
    error = test_server_plan.refused(client, test_server_plan.params(user_data=big), ValidationError)
    assert error.field == "user_data" and "65535" in error.message
    with pytest.raises(ValidationError) as err:
        ActionRequest({"name": "web1", "action": "rebuild", "image": "x", "user_data": big})
    assert err.value.field == "user_data"
    # Exactly at the limit is fine (counted in UTF-8 bytes).
    assert _limits.validate_user_data("é" * (_limits.USER_DATA_MAX // 2)) is not None
