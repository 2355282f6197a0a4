# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Extra specs rendered into domain XML: what each renders, idempotence, removal, libvirt's element order."""

import copy
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.virtfleet.compute.plugins.module_utils._domain import canonical
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import CapacityError, ValidationError
from ansible_collections.virtfleet.compute.plugins.module_utils._extra_specs import (
    apply_extra_specs,
    apply_pinning,
    current_pins,
    format_cpuset,
    parse_cpuset,
    pinning,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._flavor import Flavor, validate_extra_specs

# A domain as libvirt writes it back (addresses, controllers, pretty-printed), with the disks and NIC our server
# renders, a config drive, and an operator's own settings that must survive.
LIBVIRT_XML = """<domain type='qemu'>
  <name>web-1</name>
  <uuid>545371a3-330b-4039-97af-1e0c4ff972da</uuid>
  <memory unit='KiB'>1048576</memory>
  <currentMemory unit='KiB'>1048576</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source pool='virtfleet-instances' volume='web-1-root-1.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <serial>root</serial>
      <boot order='1'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>
    </disk>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='raw'/>
      <source pool='virtfleet-instances' volume='web-1-config-1.iso'/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
      <serial>config-drive</serial>
    </disk>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source pool='virtfleet-instances' volume='web-1-swap-1.qcow2'/>
      <target dev='vdd' bus='virtio'/>
      <serial>swap0</serial>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:11:22:33'/>
      <source network='default'/>
      <model type='virtio'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0'/>
    </interface>
    <watchdog model='ib700' action='none'/>
    <memballoon model='virtio'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>
    </memballoon>
  </devices>
</domain>"""

ALL_SPECS = {
    "hw:cpu_policy": "dedicated",
    "hw:mem_page_size": "2MB",
    "hw:watchdog_action": "reset",
    "quota:disk_total_bytes_sec": "1000000",
    "quota:disk_read_iops_sec": "200",
    "quota:disk_write_iops_sec": "100",
    "quota:vif_inbound_average": "1000",
    "quota:vif_inbound_peak": "2000",
    "quota:vif_inbound_burst": "3000",
    "quota:vif_outbound_average": "500",
}


def flavor(specs, vcpus=2):
    return Flavor(vcpus=vcpus, ram_mb=1024, disk_gb=10, swap_mb=512, extra_specs=validate_extra_specs(specs))


def render(specs, xml=LIBVIRT_XML, host_cpus=4, vcpus=2, taken_cpus=()):
    root = ET.fromstring(xml)
    apply_extra_specs(root, flavor(specs, vcpus), host_cpus=host_cpus, taken_cpus=taken_cpus)
    return root


def tags(parent):
    return [child.tag for child in parent]


def test_no_specs_changes_nothing():
    assert canonical(render({})) == canonical(LIBVIRT_XML)


def test_cpu_quotas_render_cputune_after_vcpu():
    root = render({"quota:cpu_shares": "512", "quota:cpu_period": "100000", "quota:cpu_quota": "-1"})
    assert tags(root)[:6] == ["name", "uuid", "memory", "currentMemory", "vcpu", "cputune"]
    assert [(e.tag, e.text) for e in root.find("cputune")] == [("shares", "512"), ("period", "100000"),
                                                               ("quota", "-1")]


def test_dedicated_pins_every_vcpu_and_the_emulator():
    root = render({"hw:cpu_policy": "dedicated"}, host_cpus=4, vcpus=3)
    pins = [(p.get("vcpu"), p.get("cpuset")) for p in root.findall("cputune/vcpupin")]
    expected = pinning("web-1", 3, 4)
    assert pins == [(str(i), str(cpu)) for i, cpu in enumerate(expected)]
    assert len(set(expected)) == 3  # distinct host CPUs
    assert root.find("cputune/emulatorpin").get("cpuset") == format_cpuset(expected)


def test_pinning_is_deterministic_and_spreads_by_name():
    assert pinning("a", 2, 8) == pinning("a", 2, 8)
    starts = set(pinning("server-%d" % i, 1, 8)[0] for i in range(40))
    assert len(starts) > 4  # not every server starts on CPU 0


DEDICATED = {"hw:cpu_policy": "dedicated"}


def test_dedicated_servers_get_host_cpus_no_other_dedicated_server_holds():
    for taken in ({0}, {1, 2}, {0, 1, 3}, {5, 6, 7}):
        pins = pinning("web-1", 1 if len(taken) == 3 else 2, 4, taken_cpus=taken)
        assert not set(pins) & taken and len(set(pins)) == len(pins) and all(0 <= cpu < 4 for cpu in pins)


def test_too_few_free_host_cpus_is_a_capacity_error_with_the_numbers():
    with pytest.raises(CapacityError) as err:
        render(DEDICATED, host_cpus=4, vcpus=2, taken_cpus={0, 1, 3})
    assert err.value.field == "flavor.extra_specs.hw:cpu_policy"
    assert "2 vCPUs need a host CPU each" in err.value.message
    assert "the host has 4 CPUs and other dedicated servers are pinned to 3 of them (0-1,3)" in err.value.message


def test_a_pinned_server_keeps_its_free_pins_and_moves_only_the_taken_ones():
    first = render(DEDICATED, host_cpus=8, vcpus=3)
    pins = current_pins(first)
    again = render(DEDICATED, xml=ET.tostring(first, encoding="unicode"), host_cpus=8, vcpus=3,
                   taken_cpus=set(range(8)) - set(pins))  # every other CPU taken meanwhile: nothing moves
    assert current_pins(again) == pins
    moved = render(DEDICATED, xml=ET.tostring(first, encoding="unicode"), host_cpus=8, vcpus=3,
                   taken_cpus={pins[1]})
    after = current_pins(moved)
    assert after[0] == pins[0] and after[2] == pins[2] and after[1] not in pins
    assert moved.find("cputune/emulatorpin").get("cpuset") == format_cpuset(after)


def test_a_resize_keeps_the_pins_it_had_and_adds_free_ones():
    small = render(DEDICATED, host_cpus=8, vcpus=2)
    large = render(DEDICATED, xml=ET.tostring(small, encoding="unicode"), host_cpus=8, vcpus=4, taken_cpus={7})
    assert current_pins(large)[:2] == current_pins(small)
    assert 7 not in current_pins(large) and len(set(current_pins(large))) == 4
    shrunk = render(DEDICATED, xml=ET.tostring(large, encoding="unicode"), host_cpus=8, vcpus=1)
    assert current_pins(shrunk) == current_pins(small)[:1]


def test_apply_pinning_renders_only_the_pins_for_another_host():
    source = render(dict(DEDICATED, **{"hw:watchdog_action": "reset"}), host_cpus=8, vcpus=2)

    def without_cputune(root):
        root = copy.deepcopy(root)
        root.remove(root.find("cputune"))
        return canonical(ET.tostring(root, encoding="unicode"))

    pins = current_pins(source)
    # A target where the first pin is free and the second is held by another dedicated server.
    target = copy.deepcopy(source)
    apply_pinning(target, flavor(DEDICATED, 2), host_cpus=8, taken_cpus={pins[1]})
    moved = current_pins(target)
    assert moved[0] == pins[0] and moved[1] not in (pins[1], pins[0])
    assert without_cputune(target) == without_cputune(source)  # nothing but the pins changed
    # A smaller target: every pin lands on a CPU it has.
    small = copy.deepcopy(source)
    apply_pinning(small, flavor(DEDICATED, 2), host_cpus=2)
    assert sorted(current_pins(small)) == [0, 1]
    # A target where all pins are free changes nothing.
    same = copy.deepcopy(source)
    apply_pinning(same, flavor(DEDICATED, 2), host_cpus=8, taken_cpus=set(range(8)) - set(pins))
    assert canonical(ET.tostring(same, encoding="unicode")) == canonical(ET.tostring(source, encoding="unicode"))


TWO_CELLS = [[0, 1, 2, 3], [4, 5, 6, 7]]


def cell_of(cpu):
    return 0 if cpu < 4 else 1


def test_pins_come_from_one_numa_cell_when_one_has_room():
    for index in range(30):
        pins = pinning("server-%d" % index, 4, 8, cells=TWO_CELLS)
        assert len(set(cell_of(cpu) for cpu in pins)) == 1, pins
    # Cell 0 has only three CPUs free: a four-vCPU server goes to cell 1 whatever its name.
    assert all(cell_of(cpu) == 1 for cpu in pinning("any", 4, 8, taken_cpus={2}, cells=TWO_CELLS))


def test_added_pins_join_the_cell_of_the_kept_ones():
    for index in range(30):
        name = "server-%d" % index
        grown = pinning(name, 3, 8, current=[5], cells=TWO_CELLS)
        assert grown[0] == 5 and all(cell_of(cpu) == 1 for cpu in grown), grown


def test_a_server_larger_than_any_cell_spans_cells():
    pins = pinning("big", 6, 8, cells=TWO_CELLS)
    assert len(set(pins)) == 6 and set(cell_of(cpu) for cpu in pins) == {0, 1}


def test_without_cells_or_with_one_the_turn_order_is_kept():
    assert pinning("web-1", 3, 8, cells=[list(range(8))]) == pinning("web-1", 3, 8)


@pytest.mark.parametrize("text, cpus", [
    ("3", {3}), ("0-3", {0, 1, 2, 3}), ("0-3,^2", {0, 1, 3}), ("0,5-6", {0, 5, 6}), ("", set()),
])
def test_parse_cpuset(text, cpus):
    assert parse_cpuset(text) == cpus
    if cpus:
        assert parse_cpuset(format_cpuset(cpus)) == cpus


def test_current_pins_reads_libvirts_vcpupin():
    root = ET.fromstring("<domain><cputune><vcpupin vcpu='1' cpuset='5'/><vcpupin vcpu='0' cpuset='2'/>"
                         "<vcpupin vcpu='2' cpuset='0-1'/></cputune></domain>")
    assert current_pins(root) == [2, 5, None]
    assert current_pins(ET.fromstring("<domain/>")) == []


@settings(max_examples=200, deadline=None)
@given(host_cpus=st.integers(1, 16), data=st.data())
def test_property_pins_are_distinct_free_and_keep_what_they_can(host_cpus, data):
    vcpus = data.draw(st.integers(1, host_cpus))
    cell_size = data.draw(st.integers(1, host_cpus))
    cells = [list(range(first, min(first + cell_size, host_cpus))) for first in range(0, host_cpus, cell_size)]
    taken = set(data.draw(st.lists(st.integers(0, host_cpus + 2), max_size=host_cpus)))
    current = data.draw(st.lists(st.one_of(st.none(), st.integers(0, host_cpus + 2)), max_size=vcpus + 2))
    free = set(range(host_cpus)) - taken
    if len(free) < vcpus:
        with pytest.raises(CapacityError):
            pinning("s", vcpus, host_cpus, taken, current, cells)
        return
    pins = pinning("s", vcpus, host_cpus, taken, current, cells)
    assert len(pins) == vcpus and len(set(pins)) == vcpus and set(pins) <= free
    kept = set()
    for index, cpu in enumerate(current[:vcpus]):
        if cpu in free and cpu not in kept:
            assert pins[index] == cpu
            kept.add(cpu)
    new = [cpu for index, cpu in enumerate(pins) if cpu not in kept]
    if new and any(len(set(cell) & free - kept) >= len(new) for cell in cells):
        assert len(set(cpu // cell_size for cpu in new)) == 1, (pins, cells)  # the new pins share a cell
    assert pinning("s", vcpus, host_cpus, taken, pins, cells) == pins  # a second run is unchanged


def test_shared_policy_pins_nothing():
    assert render({"hw:cpu_policy": "shared"}).find("cputune") is None


@pytest.mark.parametrize("host_cpus, vcpus", [(None, 2), (2, 3)])
def test_dedicated_needs_enough_host_cpus(host_cpus, vcpus):
    with pytest.raises(ValidationError) as err:
        render({"hw:cpu_policy": "dedicated"}, host_cpus=host_cpus, vcpus=vcpus)
    assert err.value.field == "flavor.extra_specs.hw:cpu_policy"


@pytest.mark.parametrize("cpus, text", [([0], "0"), ([0, 1], "0-1"), ([3, 0, 1, 2], "0-3"), ([0, 2, 3, 7], "0,2-3,7")])
def test_cpuset_in_libvirts_notation(cpus, text):
    assert format_cpuset(cpus) == text


@pytest.mark.parametrize("value, page", [("large", None), ("2048", "2048"), ("2MB", "2048"), ("1GB", "1048576")])
def test_huge_pages(value, page):
    root = render({"hw:mem_page_size": value})
    assert tags(root)[:6] == ["name", "uuid", "memory", "currentMemory", "memoryBacking", "vcpu"]
    hugepages = root.find("memoryBacking/hugepages")
    assert hugepages is not None
    pages = hugepages.findall("page")
    if page is None:
        assert pages == []
    else:
        assert [(p.get("size"), p.get("unit")) for p in pages] == [(page, "KiB")]


@pytest.mark.parametrize("value", ["small", "any"])
def test_small_and_any_pages_render_nothing(value):
    assert render({"hw:mem_page_size": value}).find("memoryBacking") is None


def test_watchdog_before_memballoon_and_others_left_alone():
    root = render({"hw:watchdog_action": "poweroff"})
    devices = root.find("devices")
    ours = [w for w in devices.findall("watchdog") if w.get("model") == "i6300esb"]
    assert len(ours) == 1 and ours[0].get("action") == "poweroff"
    assert tags(devices).index("watchdog") < tags(devices).index("memballoon")
    # The operator's ib700 watchdog is not ours.
    assert any(w.get("model") == "ib700" for w in devices.findall("watchdog"))


def test_watchdog_disabled_renders_nothing():
    root = render({"hw:watchdog_action": "disabled"})
    assert [w.get("model") for w in root.findall("devices/watchdog")] == ["ib700"]


def test_iotune_on_the_servers_own_disks_only():
    root = render({"quota:disk_read_bytes_sec": "100", "quota:disk_write_iops_sec": "7"})
    by_serial = dict((d.findtext("serial"), d) for d in root.findall("devices/disk"))
    for serial in ("root", "swap0"):
        disk = by_serial[serial]
        assert [(e.tag, e.text) for e in disk.find("iotune")] == [("read_bytes_sec", "100"), ("write_iops_sec", "7")]
        # Where libvirt writes it: right after <target>.
        assert tags(disk)[tags(disk).index("target") + 1] == "iotune"
    assert by_serial["config-drive"].find("iotune") is None


def test_bandwidth_on_every_interface_before_model():
    root = render({"quota:vif_inbound_average": "10", "quota:vif_outbound_average": "20",
                   "quota:vif_outbound_burst": "30"})
    iface = root.find("devices/interface")
    assert tags(iface) == ["mac", "source", "bandwidth", "model", "address"]
    assert iface.find("bandwidth/inbound").attrib == {"average": "10"}
    assert iface.find("bandwidth/outbound").attrib == {"average": "20", "burst": "30"}


def test_operator_bandwidth_floor_is_kept():
    xml = LIBVIRT_XML.replace("<model type='virtio'/>",
                              "<bandwidth><inbound average='5' floor='1'/></bandwidth><model type='virtio'/>")
    iface = render({}, xml=xml).find("devices/interface")
    assert iface.find("bandwidth/inbound").attrib == {"floor": "1"}


def test_order_matches_what_libvirt_wrote_back():
    # The order libvirt 9.0 returned for a domain defined with these elements in a scrambled order (see
    # tests/integration/test_flavor_host.py, which checks it against the real daemon).
    root = render(ALL_SPECS)
    assert tags(root) == ["name", "uuid", "memory", "currentMemory", "memoryBacking", "vcpu", "cputune", "os",
                          "devices"]
    assert tags(root.find("cputune")) == ["vcpupin", "vcpupin", "emulatorpin"]
    root = render({"quota:cpu_shares": "5", "quota:cpu_period": "1000", "quota:cpu_quota": "2000"})
    assert tags(root.find("cputune")) == ["shares", "period", "quota"]


def test_applying_twice_changes_nothing():
    once = render(ALL_SPECS)
    twice = copy.deepcopy(once)
    apply_extra_specs(twice, flavor(ALL_SPECS), host_cpus=4)
    assert canonical(twice) == canonical(once)


def test_removing_every_spec_restores_the_original():
    root = render(ALL_SPECS)
    apply_extra_specs(root, flavor({}), host_cpus=4)
    assert canonical(root) == canonical(LIBVIRT_XML)


def test_changing_a_value_changes_it_in_place():
    root = render({"quota:cpu_shares": "100", "hw:watchdog_action": "reset"})
    apply_extra_specs(root, flavor({"quota:cpu_shares": "200", "hw:watchdog_action": "pause"}), host_cpus=4)
    assert root.findtext("cputune/shares") == "200"
    assert [w.get("action") for w in root.findall("devices/watchdog") if w.get("model") == "i6300esb"] == ["pause"]


def test_domain_without_devices_gets_some():
    root = ET.fromstring("<domain type='qemu'><name>x</name><memory>1</memory><vcpu>1</vcpu><os/></domain>")
    apply_extra_specs(root, flavor({"hw:watchdog_action": "reset"}, vcpus=1))
    assert root.find("devices/watchdog").get("action") == "reset"


# Any sequence of flavors ends in the XML the last flavor renders on the untouched domain: what a spec rendered
# never outlives it, and nothing depends on history.
_SPEC_CHOICES = {
    "hw:cpu_policy": st.sampled_from(["shared", "dedicated"]),
    "hw:mem_page_size": st.sampled_from(["small", "large", "any", "2048", "1GB"]),
    "hw:watchdog_action": st.sampled_from(["disabled", "reset", "poweroff", "pause", "none"]),
    "quota:cpu_shares": st.integers(0, 262144).map(str),
    "quota:disk_read_bytes_sec": st.integers(0, 10 ** 9).map(str),
    "quota:disk_total_iops_sec": st.integers(0, 10 ** 5).map(str),
    "quota:vif_inbound_average": st.integers(0, 10 ** 6).map(str),
    "quota:vif_outbound_average": st.integers(0, 10 ** 6).map(str),
    "quota:vif_outbound_peak": st.integers(0, 10 ** 6).map(str),
}


@st.composite
def spec_sets(draw):
    specs = {}
    for key, values in _SPEC_CHOICES.items():
        if draw(st.booleans()):
            specs[key] = draw(values)
    if specs.get("hw:cpu_policy") == "dedicated":
        specs.pop("quota:cpu_shares", None)
    if "quota:vif_outbound_peak" in specs:
        specs.setdefault("quota:vif_outbound_average", "1")
    return specs


@settings(max_examples=150, deadline=None)
@given(st.lists(spec_sets(), min_size=1, max_size=4))
def test_rendering_is_independent_of_history(history):
    root = ET.fromstring(LIBVIRT_XML)
    for specs in history:
        apply_extra_specs(root, flavor(specs), host_cpus=4)
    assert canonical(root) == canonical(render(history[-1]))
