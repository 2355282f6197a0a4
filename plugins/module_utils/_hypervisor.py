# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What kind of guests a host can run: KVM when it really can, software emulation (TCG) otherwise."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ValidationError

VIRT_TYPES = ("auto", "kvm", "qemu")
# Host CPU features that mean hardware virtualization is really there (Intel VT-x, AMD-V).
_HW_VIRT_FEATURES = ("vmx", "svm")


def kvm_assessment(client):
    """(usable, reasons): whether KVM guests can be expected to boot on this host, judged through libvirt alone.

    libvirt advertises ``type='kvm'`` whenever /dev/kvm exists, but some hosts (nested clouds, CI runners) expose a
    /dev/kvm that cannot boot a Linux guest while the CPU they show has no vmx/svm flag. Requiring both catches
    those hosts. The compute_node role goes further and boots a guest; its verdict, stored in the host record,
    takes precedence over this guess (see resolve_virt_type).
    """
    reasons = []
    if client.domain_capabilities("kvm") is None:
        reasons.append("libvirt offers no kvm domain type (no /dev/kvm or no KVM support in QEMU)")
        return False, reasons
    caps = client.capabilities()
    features = set(f.get("name") for f in caps.findall("host/cpu/feature"))
    if not features.intersection(_HW_VIRT_FEATURES):
        reasons.append("the host CPU shows neither vmx nor svm, so /dev/kvm is not backed by hardware "
                       "virtualization the guest can use (a nested or emulated host)")
        return False, reasons
    reasons.append("libvirt offers kvm and the host CPU has %s" % "/".join(sorted(features & set(_HW_VIRT_FEATURES))))
    return True, reasons


def resolve_virt_type(client, requested, host_record=None, field="virt_type"):
    """The domain type to use: ``requested`` if explicit (checked), else the host's verdict, else a guess."""
    if requested not in VIRT_TYPES:
        raise ValidationError("must be one of %s, got %r" % (", ".join(VIRT_TYPES), requested), field=field)
    if requested == "qemu":
        return "qemu"
    if requested == "kvm":
        if client.domain_capabilities("kvm") is None:
            raise ValidationError(
                "kvm was requested but this host offers no kvm domain type; use virt_type=qemu (software emulation) "
                "or auto", field=field)
        return "kvm"
    recorded = (host_record or {}).get("virt_type")
    if recorded in ("kvm", "qemu"):
        return recorded
    usable, _reasons = kvm_assessment(client)
    return "kvm" if usable else "qemu"
