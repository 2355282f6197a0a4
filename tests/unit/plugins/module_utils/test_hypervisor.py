"""KVM or TCG: kvm_assessment and resolve_virt_type against fake host capabilities."""
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ValidationError
from ansible_collections.virtfleet.compute.plugins.module_utils._hypervisor import kvm_assessment, resolve_virt_type


class FakeHost:
    """The two client calls the assessment makes: capabilities() and domain_capabilities(virt_type)."""

    def __init__(self, features=(), kvm=True):
        self.features = features
        self.kvm = kvm
        self.calls = []

    def capabilities(self):
        self.calls.append("capabilities")
        features = "".join("<feature name='%s'/>" % name for name in self.features)
        return ET.fromstring("<capabilities><host><cpu><arch>x86_64</arch><model>Skylake</model>%s</cpu></host>"
                             "</capabilities>" % features)

    def domain_capabilities(self, virt_type):
        self.calls.append("domain_capabilities(%s)" % virt_type)
        if virt_type == "kvm" and not self.kvm:
            return None
        return ET.fromstring("<domainCapabilities><domain>%s</domain></domainCapabilities>" % virt_type)


@pytest.mark.parametrize("features, kvm, usable, reason", [
    (("vmx", "lm", "sse4_2"), True, True, "vmx"),
    (("svm", "lm"), True, True, "svm"),
    (("vmx", "svm"), True, True, "svm/vmx"),
    (("lm", "sse4_2", "hypervisor"), True, False, "neither vmx nor svm"),
    ((), True, False, "neither vmx nor svm"),
    (("vmx",), False, False, "no kvm domain type"),
    ((), False, False, "no kvm domain type"),
])
def test_kvm_assessment(features, kvm, usable, reason):
    verdict, reasons = kvm_assessment(FakeHost(features, kvm))
    assert verdict is usable
    assert reason in " ".join(reasons)


@pytest.mark.parametrize("features, kvm, expected", [
    (("vmx",), True, "kvm"),
    (("svm",), True, "kvm"),
    (("lm",), True, "qemu"),
    (("vmx",), False, "qemu"),
])
def test_auto_without_a_host_verdict_follows_the_assessment(features, kvm, expected):
    assert resolve_virt_type(FakeHost(features, kvm), "auto") == expected


@pytest.mark.parametrize("recorded, host, expected", [
    ("qemu", FakeHost(("vmx",), True), "qemu"),
    ("kvm", FakeHost((), True), "kvm"),
    ("bogus", FakeHost(("vmx",), True), "kvm"),
    (None, FakeHost((), True), "qemu"),
])
def test_auto_takes_the_host_records_verdict_first(recorded, host, expected):
    assert resolve_virt_type(host, "auto", {"virt_type": recorded}) == expected


def test_auto_with_a_recorded_verdict_asks_libvirt_nothing():
    host = FakeHost(("vmx",), True)
    resolve_virt_type(host, "auto", {"virt_type": "qemu"})
    assert host.calls == []


@pytest.mark.parametrize("host", [FakeHost(("vmx",), True), FakeHost((), False)])
def test_explicit_qemu_is_always_qemu(host):
    assert resolve_virt_type(host, "qemu", {"virt_type": "kvm"}) == "qemu"


@pytest.mark.parametrize("host", [FakeHost(("vmx",), True), FakeHost((), True)])
def test_explicit_kvm_is_kvm_when_libvirt_offers_it(host):
    # An explicit choice is the operator's: the missing vmx flag only decides "auto".
    assert resolve_virt_type(host, "kvm") == "kvm"


def test_explicit_kvm_on_a_host_without_kvm_is_a_validation_error():
    with pytest.raises(ValidationError) as info:
        resolve_virt_type(FakeHost(("vmx",), False), "kvm", field="servers[0].virt_type")
    assert info.value.field == "servers[0].virt_type"
    assert "virt_type=qemu" in info.value.message


@pytest.mark.parametrize("requested", ["xen", "", None, "KVM"])
def test_an_unknown_virt_type_is_a_validation_error(requested):
    with pytest.raises(ValidationError) as info:
        resolve_virt_type(FakeHost(), requested)
    assert info.value.field == "virt_type"


def test_the_test_driver_host_resolves_to_qemu(client):
    # libvirt's test driver has no domain capabilities at all: exactly a host without KVM.
    assert kvm_assessment(client)[0] is False
    assert resolve_virt_type(client, "auto") == "qemu"
