# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NoCloud config drive: read back with pycdlib (and blkid/isoinfo when the machine has them)."""

import io
import json
import os
import subprocess
import sys
import time

import pycdlib
import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils import (
    _configdrive as cd,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import (
    MissingLibraryError,
    ValidationError,
)

KEY1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0wmN/Cr3JXqmLW7u+g9pTh+wyqDHpSQEIQczXkVx9q alice@example"
KEY2 = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 bob@example"
SCRIPT = b"#!/bin/sh\necho hello > /tmp/hello\n"


def read_iso(data):
    """{rock ridge name: bytes}, the PVD and Joliet labels and the Joliet names of an ISO image."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        files = {}
        for child in iso.list_children(rr_path="/"):
            if child.is_dot() or child.is_dotdot():
                continue
            name = child.rock_ridge.name().decode()
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path="/" + name)
            files[name] = out.getvalue()
        joliet = sorted(
            c.file_identifier().decode("utf-16-be")
            for c in iso.list_children(joliet_path="/")
            if not (c.is_dot() or c.is_dotdot())
        )
        return {
            "files": files,
            "label": iso.pvd.volume_identifier.decode().strip(),
            "joliet_label": iso.joliet_vd.volume_identifier.decode("utf-16-be").strip(),
            "joliet": joliet,
            "rock_ridge": iso.has_rock_ridge(),
        }
    finally:
        iso.close()


def build(**overrides):
    kwargs = {"instance_id": "i-0001", "hostname": "web1"}
    kwargs.update(overrides)
    return cd.build_nocloud_iso(**kwargs)


def test_minimal_drive_layout_and_label():
    got = read_iso(build())
    assert got["label"] == "cidata"
    assert got["joliet_label"] == "cidata"
    assert got["rock_ridge"]
    assert sorted(got["files"]) == ["meta-data", "user-data"]
    assert got["joliet"] == ["meta-data", "user-data"]
    assert json.loads(got["files"]["meta-data"]) == {
        "instance-id": "i-0001",
        "local-hostname": "web1",
        "public-keys": [],
    }


def test_default_user_data_is_valid_empty_cloud_config():
    data = read_iso(build())["files"]["user-data"]
    assert data.startswith(b"#cloud-config\n")
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(data) == {}


def test_all_files_written_with_their_names():
    net = cd.network_config_v2([{"mac": "52:54:00:00:00:01", "ip": None}])
    got = read_iso(build(user_data="#cloud-config\npackages: [htop]\n", network_config=net,
                         vendor_data=b"#cloud-config\n{}\n"))
    assert sorted(got["files"]) == ["meta-data", "network-config", "user-data", "vendor-data"]
    assert got["joliet"] == ["meta-data", "network-config", "user-data", "vendor-data"]
    assert json.loads(got["files"]["network-config"]) == net
    assert got["files"]["vendor-data"] == b"#cloud-config\n{}\n"
    assert got["files"]["user-data"] == b"#cloud-config\npackages: [htop]\n"


def test_keys_go_to_meta_data_and_user_data_is_untouched():
    got = read_iso(build(user_data=SCRIPT, ssh_authorized_keys=[KEY1, " " + KEY2 + "\n"]))["files"]
    assert got["user-data"] == SCRIPT
    meta = json.loads(got["meta-data"])
    assert meta["public-keys"] == [KEY1, KEY2]
    assert KEY1.encode() not in got["user-data"]


def test_single_key_string_is_one_key():
    meta = json.loads(read_iso(build(ssh_authorized_keys=KEY1))["files"]["meta-data"])
    assert meta["public-keys"] == [KEY1]


def test_meta_data_is_yaml_too():
    yaml = pytest.importorskip("yaml")
    extra = {"availability-zone": "az1", "note": "caf\u00e9 \u2028 \x85 \u00a0 \U0001f600 tab\tend"}
    meta_bytes = read_iso(build(ssh_authorized_keys=[KEY1], extra_meta=extra))["files"]["meta-data"]
    parsed = yaml.safe_load(meta_bytes)
    assert parsed == json.loads(meta_bytes)
    assert parsed["note"] == extra["note"]
    assert parsed["availability-zone"] == "az1"


def test_deterministic_across_time():
    first = build(ssh_authorized_keys=[KEY1], user_data=SCRIPT)
    real_time = time.time
    try:
        # Any date leaking from the real clock would now change the bytes.
        time.time = lambda: real_time() + 86400 * 400
        second = build(ssh_authorized_keys=[KEY1], user_data=SCRIPT)
    finally:
        time.time = real_time
    assert first == second


def test_clock_is_given_back_to_pycdlib():
    build()
    for name, module in list(sys.modules.items()):
        if name.startswith("pycdlib") and hasattr(module, "time"):
            assert module.time is time, name


def test_deterministic_across_processes_time_zones_and_hash_seeds(tmp_path):
    script = (
        "import sys; sys.path.insert(0, %r); import conftest\n"
        "from ansible_collections.virtfleet.compute.plugins.module_utils import _configdrive as cd\n"
        "net = cd.network_config_v2([{'mac': '52:54:00:00:00:01', 'ip': '10.0.0.5/24', 'gateway': '10.0.0.1'}])\n"
        "sys.stdout.buffer.write(cd.build_nocloud_iso('i-1', 'web1', ssh_authorized_keys=[%r], "
        "network_config=net, extra_meta={'a': 1, 'b': 2, 'c': 3}))\n"
    ) % (os.path.join(os.path.dirname(cd.__file__), "..", "..", "tests"), KEY1)
    outputs = []
    # POSIX TZ strings need no tzdata: UTC, UTC-3:30 and UTC+5:45.
    for tz, seed in (("UTC0", "1"), ("NST3:30", "2"), ("NPT-5:45", "3")):
        env = dict(os.environ, TZ=tz, PYTHONHASHSEED=seed)
        outputs.append(subprocess.run([sys.executable, "-c", script], env=env, check=True,
                                      stdout=subprocess.PIPE).stdout)
    assert len(outputs[0]) > 0
    assert outputs[0] == outputs[1] == outputs[2]


def test_dates_are_the_fixed_epoch():
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(build()))
    try:
        date = iso.pvd.volume_creation_date
        assert (date.year, date.month, date.dayofmonth, date.gmtoffset) == (2000, 1, 1, 0)
        record = iso.get_record(rr_path="/meta-data")
        assert (record.date.years_since_1900, record.date.gmtoffset) == (100, 0)
    finally:
        iso.close()


def test_content_hash_tracks_every_input():
    base = {"instance_id": "i-1", "hostname": "web1", "user_data": SCRIPT, "ssh_authorized_keys": [KEY1],
            "network_config": {"version": 2, "ethernets": {}}, "vendor_data": "v", "extra_meta": {"a": 1}}
    reference = cd.content_hash(**base)
    assert len(reference) == 64 and int(reference, 16) >= 0
    assert cd.content_hash(**base) == reference
    # Dict order and str-vs-bytes of the same text do not matter; the content does.
    same = {**base, "user_data": SCRIPT.decode(), "network_config": {"ethernets": {}, "version": 2}}
    assert cd.content_hash(**same) == reference
    changes = {"instance_id": "i-2", "hostname": "web2", "user_data": SCRIPT + b"#", "ssh_authorized_keys": [KEY2],
               "network_config": None, "vendor_data": None, "extra_meta": {"a": 2}}
    hashes = {reference}
    for key, value in changes.items():
        changed = cd.content_hash(**{**base, key: value})
        assert changed not in hashes, key
        hashes.add(changed)


def test_content_hash_needs_no_pycdlib(monkeypatch):
    monkeypatch.setattr(cd, "HAS_PYCDLIB", False)
    assert len(cd.content_hash("i-1", "web1")) == 64
    with pytest.raises(MissingLibraryError) as err:
        cd.build_nocloud_iso("i-1", "web1")
    assert "pycdlib" in str(err.value)


@pytest.mark.parametrize("name", ["web1", "a", "web-1.example.com", "1host", "x" * 63, ".".join(["a" * 63] * 3)
                                  + "." + "b" * 61, "WEB1"])
def test_valid_hostnames(name):
    assert cd.validate_hostname(name) == name


@pytest.mark.parametrize("name, why", [
    ("", "required"),
    (None, "required"),
    ("-web", "hyphens"),
    ("web-", "hyphens"),
    ("web_1", "hyphens"),
    ("web 1", "hyphens"),
    ("web..example", "empty label"),
    ("web.", "empty label"),
    ("x" * 64, "longer than 63"),
    (".".join(["a" * 63] * 4), "at most 253"),
    ("caf\u00e9", "hyphens"),
])
def test_invalid_hostnames(name, why):
    with pytest.raises(ValidationError) as err:
        cd.validate_hostname(name, field="servers[0].name")
    assert err.value.field == "servers[0].name"
    assert why in str(err.value)


def test_build_validates_hostname():
    with pytest.raises(ValidationError) as err:
        build(hostname="bad_name")
    assert err.value.field == "hostname"


@pytest.mark.parametrize("kwargs, field", [
    ({"instance_id": ""}, "instance_id"),
    ({"instance_id": "i-1\nx"}, "instance_id"),
    ({"ssh_authorized_keys": [KEY1 + "\n" + KEY2]}, "ssh_authorized_keys[0]"),
    ({"ssh_authorized_keys": [KEY1, ""]}, "ssh_authorized_keys[1]"),
    ({"ssh_authorized_keys": {"k": KEY1}}, "ssh_authorized_keys"),
    ({"user_data": {"packages": []}}, "user_data"),
    ({"vendor_data": 5}, "vendor_data"),
    ({"network_config": ["x"]}, "network_config"),
    ({"extra_meta": {"instance-id": "other"}}, "extra_meta"),
    ({"extra_meta": {"public-keys": []}}, "extra_meta"),
    ({"extra_meta": {"when": object()}}, "extra_meta"),
    ({"extra_meta": {"x": float("nan")}}, "extra_meta"),
    ({"extra_meta": ["a"]}, "extra_meta"),
])
def test_bad_inputs_name_the_field(kwargs, field):
    with pytest.raises(ValidationError) as err:
        build(**kwargs)
    assert err.value.field == field


def test_network_config_dhcp():
    assert cd.network_config_v2([{"mac": "52:54:00:AB:CD:EF", "ip": None}, {"mac": "52-54-00-00-00-02"}]) == {
        "version": 2,
        "ethernets": {
            "eth0": {"match": {"macaddress": "52:54:00:ab:cd:ef"}, "set-name": "eth0", "dhcp4": True},
            "eth1": {"match": {"macaddress": "52:54:00:00:00:02"}, "set-name": "eth1", "dhcp4": True},
        },
    }


def test_network_config_static_ipv4_and_ipv6():
    got = cd.network_config_v2([
        {"mac": "52:54:00:00:00:01", "ip": "10.0.0.5/24", "gateway": "10.0.0.1", "dns": ["10.0.0.2", "1.1.1.1"],
         "mtu": 1450, "network": "ignored"},
        {"mac": "52:54:00:00:00:02", "ip": "2001:db8::5/64", "gateway": "2001:db8::1"},
        {"mac": "52:54:00:00:00:03", "ip": "192.0.2.7/32"},
    ])
    assert got["ethernets"]["eth0"] == {
        "match": {"macaddress": "52:54:00:00:00:01"},
        "set-name": "eth0",
        "dhcp4": False,
        "addresses": ["10.0.0.5/24"],
        "gateway4": "10.0.0.1",
        "nameservers": {"addresses": ["10.0.0.2", "1.1.1.1"]},
        "mtu": 1450,
    }
    assert got["ethernets"]["eth1"]["addresses"] == ["2001:db8::5/64"]
    assert got["ethernets"]["eth1"]["gateway6"] == "2001:db8::1"
    assert got["ethernets"]["eth2"] == {"match": {"macaddress": "52:54:00:00:00:03"}, "set-name": "eth2",
                                        "dhcp4": False, "addresses": ["192.0.2.7/32"]}


def test_network_config_round_trips_through_the_drive_as_yaml():
    yaml = pytest.importorskip("yaml")
    net = cd.network_config_v2([{"mac": "52:54:00:00:00:01", "ip": "10.0.0.5/24", "gateway": "10.0.0.1"}])
    assert yaml.safe_load(read_iso(build(network_config=net))["files"]["network-config"]) == net


@pytest.mark.parametrize("nic, field, why", [
    ({"ip": None}, "nics[0].mac", "required"),
    ({"mac": "52:54:00:00:00"}, "nics[0].mac", "not a MAC"),
    ({"mac": "52:54:00:00:00:zz"}, "nics[0].mac", "not a MAC"),
    ({"mac": "01:00:5e:00:00:01"}, "nics[0].mac", "multicast"),
    ({"mac": 525400000001}, "nics[0].mac", "required"),
    ({"mac": "52:54:00:00:00:01", "ip": "10.0.0.5"}, "nics[0].ip", "prefix length"),
    ({"mac": "52:54:00:00:00:01", "ip": "10.0.0.300/24"}, "nics[0].ip", "not an address"),
    ({"mac": "52:54:00:00:00:01", "ip": "10.5/24"}, "nics[0].ip", "not an address"),
    ({"mac": "52:54:00:00:00:01", "ip": "10.0.0.5/33"}, "nics[0].ip", "prefix length"),
    ({"mac": "52:54:00:00:00:01", "ip": "10.0.0.5/x"}, "nics[0].ip", "not an address"),
    ({"mac": "52:54:00:00:00:01", "ip": "10.0.0.0/24"}, "nics[0].ip", "network address"),
    ({"mac": "52:54:00:00:00:01", "ip": "10.0.0.255/24"}, "nics[0].ip", "broadcast address"),
    ({"mac": "52:54:00:00:00:01", "ip": "2001:db8::/64"}, "nics[0].ip", "anycast"),
    ({"mac": "52:54:00:00:00:01", "ip": "10.0.0.5/24", "gateway": "10.0.1.1"}, "nics[0].gateway", "outside"),
    ({"mac": "52:54:00:00:00:01", "ip": "10.0.0.5/24", "gateway": "10.0.0.5"}, "nics[0].gateway", "own address"),
    ({"mac": "52:54:00:00:00:01", "ip": "10.0.0.5/24", "gateway": "2001:db8::1"}, "nics[0].gateway", "IPv6"),
    ({"mac": "52:54:00:00:00:01", "ip": "10.0.0.5/24", "gateway": "gw"}, "nics[0].gateway", "not an IPv4"),
    ({"mac": "52:54:00:00:00:01", "gateway": "10.0.0.1"}, "nics[0].gateway", "DHCP"),
    ({"mac": "52:54:00:00:00:01", "dns": "1.1.1.1"}, "nics[0].dns", "list"),
    ({"mac": "52:54:00:00:00:01", "dns": ["1.1.1.1", "dns.example"]}, "nics[0].dns[1]", "not an IPv4"),
    ({"mac": "52:54:00:00:00:01", "mtu": 20}, "nics[0].mtu", "between"),
    ({"mac": "52:54:00:00:00:01", "mtu": True}, "nics[0].mtu", "between"),
    ("52:54:00:00:00:01", "nics[0]", "dict"),
])
def test_network_config_errors(nic, field, why):
    with pytest.raises(ValidationError) as err:
        cd.network_config_v2([nic], field="nics")
    assert err.value.field == field
    assert why in str(err.value)


def test_network_config_duplicate_mac_and_wrong_container():
    with pytest.raises(ValidationError) as err:
        cd.network_config_v2([{"mac": "52:54:00:00:00:01"}, {"mac": "52-54-00-00-00-01"}])
    assert err.value.field == "interfaces[1].mac"
    assert "interfaces[0]" in str(err.value)
    with pytest.raises(ValidationError) as err:
        cd.network_config_v2({"mac": "52:54:00:00:00:01"})
    assert err.value.field == "interfaces"


def test_network_config_without_netaddr(monkeypatch):
    monkeypatch.setattr(cd, "HAS_NETADDR", False)
    with pytest.raises(MissingLibraryError):
        cd.network_config_v2([])


# blkid (util-linux) and isoinfo (genisoimage) are test tools that `make deps` installs: these tests never skip.
def test_blkid_sees_cidata_label(tmp_path):
    path = tmp_path / "seed.iso"
    path.write_bytes(build(ssh_authorized_keys=[KEY1]))
    out = subprocess.run(["blkid", "-p", "-o", "export", str(path)], check=True, stdout=subprocess.PIPE,
                         text=True).stdout
    fields = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert fields["TYPE"] == "iso9660"
    assert fields["LABEL"] == "cidata"


def test_isoinfo_lists_rock_ridge_and_joliet_names(tmp_path):
    path = tmp_path / "seed.iso"
    path.write_bytes(build(network_config={"version": 2, "ethernets": {}}))
    for flag in ("-R", "-J"):
        out = subprocess.run(["isoinfo", flag, "-f", "-i", str(path)], check=True, stdout=subprocess.PIPE,
                             text=True).stdout
        assert sorted(out.split()) == ["/meta-data", "/network-config", "/user-data"], flag
    out = subprocess.run(["isoinfo", "-R", "-x", "/user-data", "-i", str(path)], check=True,
                         stdout=subprocess.PIPE).stdout
    assert out == cd.DEFAULT_USER_DATA
