# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Flavors: the value, extra-spec validation, the catalog on a host and the flavor module's plan."""

import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils._domain import Domain
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import (
    ConflictError,
    NotFoundError,
    ValidationError,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._flavor import (
    KNOWN_KEYS,
    Flavor,
    page_size_kib,
    validate_extra_specs,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._flavor_catalog import (
    converge_flavor,
    delete_flavor,
    flavor_info,
    get_flavor,
    list_flavors,
    put_flavor,
    read_catalog,
    resolve_flavor,
    snapshot_differences,
)
from tests.unit.plugins.module_utils.test_host_info import FakeHost, managed_xml

SMALL = {"name": "m1.small", "vcpus": 1, "ram_mb": 512, "disk_gb": 10}


@pytest.fixture
def fake():
    return FakeHost()


# -- the value ----------------------------------------------------------------------------------------------------

def test_from_dict_keeps_working_for_inline_flavors():
    flavor = Flavor.from_dict({"vcpus": 2, "ram_mb": 1024, "disk_gb": 0})
    assert flavor.size() == {"vcpus": 2, "ram_mb": 1024, "disk_gb": 0, "swap_mb": 0, "ephemeral_gb": 0}
    assert flavor.name is None and flavor.extra_specs == {}


def test_field_names_in_errors():
    with pytest.raises(ValidationError) as err:
        Flavor.from_dict({"vcpus": 1, "ram_mb": 512})
    assert err.value.field == "flavor.disk_gb"
    with pytest.raises(ValidationError) as err:
        Flavor.from_dict({"vcpus": 1, "ram_mb": 8, "disk_gb": 1}, field="")
    assert err.value.field == "ram_mb"


def test_snapshot_in_domain_metadata_round_trips_extra_specs():
    specs = {"hw:watchdog_action": "reset", "aggregate_instance_extra_specs:ssd": "true"}
    domain = Domain(managed_xml("a", extra_specs=specs))
    assert domain.record.flavor.extra_specs == specs


# -- extra specs ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("specs", [
    {"hw:cpu_policy": "shared"},
    {"hw:cpu_policy": "dedicated"},
    {"hw:mem_page_size": "small"}, {"hw:mem_page_size": "large"}, {"hw:mem_page_size": "any"},
    {"hw:mem_page_size": "2048"}, {"hw:mem_page_size": "2MB"}, {"hw:mem_page_size": "1GiB"},
    {"hw:watchdog_action": "disabled"}, {"hw:watchdog_action": "reset"}, {"hw:watchdog_action": "poweroff"},
    {"hw:watchdog_action": "pause"}, {"hw:watchdog_action": "none"},
    {"quota:cpu_shares": "1024", "quota:cpu_period": "100000", "quota:cpu_quota": "50000"},
    {"quota:cpu_quota": "-1"}, {"quota:cpu_shares": 0},
    {"quota:disk_read_bytes_sec": "1", "quota:disk_write_bytes_sec": "2", "quota:disk_total_iops_sec": "3"},
    {"quota:disk_read_iops_sec": 10, "quota:disk_write_iops_sec": 20, "quota:disk_total_bytes_sec": 30},
    {"quota:vif_inbound_average": "1", "quota:vif_inbound_peak": "2", "quota:vif_inbound_burst": "3",
     "quota:vif_outbound_average": "4", "quota:vif_outbound_peak": "5", "quota:vif_outbound_burst": "6"},
    {"aggregate_instance_extra_specs:ssd": "true"},
    {"trait:CUSTOM_GPU": "required", "mysite:owner": "team-a", "plain": "x"},
])
def test_valid_extra_specs(specs):
    out = validate_extra_specs(specs)
    assert set(out) == set(specs) and all(isinstance(v, str) for v in out.values())


def test_every_known_key_is_accepted_with_a_sensible_value():
    for key in KNOWN_KEYS:
        value = {"hw:cpu_policy": "shared", "hw:mem_page_size": "large", "hw:watchdog_action": "reset",
                 "quota:cpu_period": "100000", "quota:cpu_quota": "5000"}.get(key, "100")
        specs = {key: value}
        if "_peak" in key or "_burst" in key:
            specs[key.rsplit("_", 1)[0] + "_average"] = "1"
        assert validate_extra_specs(specs)[key] == value


def test_yaml_booleans_become_lower_case_strings():
    assert validate_extra_specs({"aggregate_instance_extra_specs:ssd": True}) == {
        "aggregate_instance_extra_specs:ssd": "true"}
    assert Flavor.from_dict(dict(SMALL, extra_specs={"x": False})).extra_specs == {"x": "false"}


@pytest.mark.parametrize("specs, key, words", [
    ({"hw:cpu_polcy": "dedicated"}, "hw:cpu_polcy", "unknown extra spec"),
    ({"hw:numa_nodes": "2"}, "hw:numa_nodes", "hw:cpu_policy, hw:mem_page_size, hw:watchdog_action"),
    ({"quota:disk_read_bytes": "1"}, "quota:disk_read_bytes", "unknown extra spec"),
    ({"hw:cpu_policy": "isolated"}, "hw:cpu_policy", "shared, dedicated"),
    ({"hw:mem_page_size": "huge"}, "hw:mem_page_size", "small, large, any"),
    ({"hw:mem_page_size": "3000"}, "hw:mem_page_size", "power of two"),
    ({"hw:watchdog_action": "explode"}, "hw:watchdog_action", "disabled, reset"),
    ({"quota:cpu_shares": "-5"}, "quota:cpu_shares", "at least 0"),
    ({"quota:cpu_shares": "999999"}, "quota:cpu_shares", "at most 262144"),
    ({"quota:cpu_period": "10"}, "quota:cpu_period", "at least 1000"),
    ({"quota:cpu_quota": "10"}, "quota:cpu_quota", "negative for no limit"),
    ({"quota:disk_total_iops_sec": "fast"}, "quota:disk_total_iops_sec", "integer"),
    ({"quota:vif_outbound_peak": "-1"}, "quota:vif_outbound_peak", "at least 0"),
    ({"quota:disk_total_bytes_sec": "1", "quota:disk_read_bytes_sec": "1"}, "quota:disk_read_bytes_sec", "total"),
    ({"quota:vif_inbound_burst": "1"}, "quota:vif_inbound_burst", "quota:vif_inbound_average"),
    ({"hw:cpu_policy": "dedicated", "quota:cpu_quota": "5000"}, "quota:cpu_quota", "dedicated"),
    ({"x": {"nested": 1}}, "x", "string"),
])
def test_bad_extra_specs_name_the_key(specs, key, words):
    with pytest.raises(ValidationError) as err:
        validate_extra_specs(specs, "flavor.extra_specs")
    assert err.value.field == "flavor.extra_specs.%s" % key
    assert words in err.value.message


def test_inline_server_flavors_are_validated_too():
    with pytest.raises(ValidationError) as err:
        Flavor.from_dict(dict(SMALL, extra_specs={"hw:bogus": "1"}))
    assert err.value.field == "flavor.extra_specs.hw:bogus"


@pytest.mark.parametrize("value, kib", [("small", None), ("4", 4), ("2048", 2048), ("2MB", 2048), ("2 MiB", 2048),
                                        ("1G", 1048576), ("2097152b", 2048)])
def test_page_sizes(value, kib):
    assert page_size_kib(value) == kib


# -- the catalog ------------------------------------------------------------------------------------------------------

def test_catalog_put_get_list_delete(fake):
    assert read_catalog(fake) == {} and get_flavor(fake, "m1.small") is None
    put_flavor(fake, Flavor.from_dict(SMALL))
    put_flavor(fake, Flavor.from_dict(dict(SMALL, name="a.first", vcpus=2)))
    assert get_flavor(fake, "m1.small").vcpus == 1
    assert [f.name for f in list_flavors(fake)] == ["a.first", "m1.small"]
    assert [f.name for f in list_flavors(fake, ["m1.small", "nope"])] == ["m1.small"]
    assert delete_flavor(fake, "a.first") is True
    assert delete_flavor(fake, "a.first") is False
    assert list(read_catalog(fake)) == ["m1.small"]
    # The flavors lock is released after every write.
    assert fake.pools["virtfleet-records"].volumes.keys() == {"flavors.json"}


def test_resolve_by_name_by_dict_and_unknown(fake):
    put_flavor(fake, Flavor.from_dict(SMALL))
    put_flavor(fake, Flavor.from_dict(dict(SMALL, name="m1.large", vcpus=4)))
    assert resolve_flavor(fake, "m1.small").name == "m1.small"
    assert resolve_flavor(fake, {"vcpus": 1, "ram_mb": 64, "disk_gb": 1}).ram_mb == 64
    with pytest.raises(NotFoundError) as err:
        resolve_flavor(fake, "m1.medium", field="servers[3].flavor")
    assert err.value.field == "servers[3].flavor"
    assert "m1.large, m1.small" in err.value.message
    with pytest.raises(NotFoundError) as err:
        resolve_flavor(FakeHost(), "m1.small")
    assert "catalog of this host is empty" in err.value.message
    with pytest.raises(ValidationError):
        resolve_flavor(fake, 3)


def test_snapshot_differences_ignore_the_description():
    a = Flavor.from_dict(dict(SMALL, description="old"))
    assert snapshot_differences(a, Flavor.from_dict(dict(SMALL, description="new"))) == []
    assert snapshot_differences(a, Flavor.from_dict(dict(SMALL, ram_mb=1024, extra_specs={"x": "1"}))) == [
        "ram_mb", "extra_specs"]


# -- the flavor module ----------------------------------------------------------------------------------------------

def params(**kwargs):
    base = {"name": "m1.small", "state": "present", "vcpus": None, "ram_mb": None, "disk_gb": None,
            "swap_mb": None, "ephemeral_gb": None, "description": None, "extra_specs": None, "force": False}
    base.update(kwargs)
    return base


def test_flavor_four_steps(fake):
    wanted = params(vcpus=1, ram_mb=512, disk_gb=10, extra_specs={"hw:watchdog_action": "reset"})
    check = converge_flavor(fake, wanted, check_mode=True, diff_mode=True)
    assert check["changed"] is True
    assert check["actions"] == ["create storage pool virtfleet-records for the flavor catalog",
                                "add flavor m1.small (1 vCPU, 512 MiB RAM, 10 GiB disk, 1 extra spec(s))"]
    assert check["diff"]["before"] == {} and check["diff"]["after"]["ram_mb"] == 512
    assert "virtfleet-records" not in fake.pools
    applied = converge_flavor(fake, wanted)
    assert applied["changed"] is True and applied["flavor"] == check["flavor"]
    again = converge_flavor(fake, wanted, diff_mode=True)
    assert again["changed"] is False and again["diff"]["before"] == again["diff"]["after"]
    assert converge_flavor(fake, wanted, check_mode=True)["changed"] is False


def test_update_is_field_level_and_keeps_omitted_fields(fake):
    converge_flavor(fake, params(vcpus=1, ram_mb=512, disk_gb=10, description="small",
                                 extra_specs={"a": "1", "b": "2"}))
    result = converge_flavor(fake, params(ram_mb=1024, extra_specs={"a": "1", "b": "3", "c": "4"}), diff_mode=True)
    assert result["actions"] == ["update flavor m1.small (ram_mb 512 -> 1024, extra_specs: +c, b 2 -> 3)"]
    assert result["flavor"]["description"] == "small" and result["flavor"]["vcpus"] == 1
    assert result["diff"]["before"]["ram_mb"] == 512 and result["diff"]["after"]["ram_mb"] == 1024
    result = converge_flavor(fake, params(description=""))
    assert result["flavor"]["description"] is None


def test_adding_needs_the_sizes(fake):
    with pytest.raises(ValidationError) as err:
        converge_flavor(fake, params(vcpus=1))
    assert err.value.field == "ram_mb" and "ram_mb and disk_gb are required" in err.value.message


def test_bad_extra_spec_is_named_and_nothing_is_written(fake):
    with pytest.raises(ValidationError) as err:
        converge_flavor(fake, params(vcpus=1, ram_mb=512, disk_gb=1, extra_specs={"quota:cpu_period": "1"}))
    assert err.value.field == "extra_specs.quota:cpu_period"
    assert "virtfleet-records" not in fake.pools


def test_changing_a_flavor_warns_about_servers_it_does_not_change(fake):
    converge_flavor(fake, params(**SMALL))
    fake.add_domain(managed_xml("web-1", vcpus=1, ram_mb=512, disk_gb=10, flavor_name="m1.small"))
    fake.add_domain(managed_xml("web-2", vcpus=1, ram_mb=512, disk_gb=10, flavor_name="other"))
    result = converge_flavor(fake, params(ram_mb=1024))
    assert result["changed"] is True
    assert any("web-1" in w and "web-2" not in w for w in result["warnings"])
    info = flavor_info(fake, {"names": None, "include_servers": True})
    assert info["flavors"][0]["servers"] == ["web-1"] and info["flavors"][0]["outdated_servers"] == ["web-1"]


def test_deleting_a_used_flavor_is_refused_naming_the_servers(fake):
    converge_flavor(fake, params(**SMALL))
    fake.add_domain(managed_xml("db-2", flavor_name="m1.small"))
    fake.add_domain(managed_xml("db-1", flavor_name="m1.small"))
    with pytest.raises(ConflictError) as err:
        converge_flavor(fake, params(state="absent"), check_mode=True)
    assert "db-1, db-2" in err.value.message
    assert get_flavor(fake, "m1.small") is not None
    forced = converge_flavor(fake, params(state="absent", force=True), diff_mode=True)
    assert forced["changed"] is True and forced["diff"]["after"] == {} and forced["warnings"]
    assert get_flavor(fake, "m1.small") is None
    assert converge_flavor(fake, params(state="absent"))["changed"] is False


def test_absent_on_a_host_without_catalog_is_unchanged(fake):
    assert converge_flavor(fake, params(state="absent"), check_mode=True)["changed"] is False


def test_flavor_info_never_fails_on_not_found(fake):
    assert flavor_info(fake, {"names": ["nope"], "include_servers": False}) == {"changed": False, "flavors": []}
    converge_flavor(fake, params(**SMALL))
    listed = flavor_info(fake, {"names": None, "include_servers": False})["flavors"]
    assert [f["name"] for f in listed] == ["m1.small"] and "servers" not in listed[0]


@pytest.mark.parametrize("name", ["", " padded", "tab\there", "x" * 256])
def test_bad_flavor_names(fake, name):
    with pytest.raises(ValidationError) as err:
        converge_flavor(fake, params(name=name, vcpus=1, ram_mb=64, disk_gb=1))
    assert err.value.field == "name"
