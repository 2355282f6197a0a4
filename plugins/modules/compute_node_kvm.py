#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: compute_node_kvm
short_description: Decide whether a compute host runs guests under KVM or software emulation
version_added: 0.1.0
description:
  - A helper of the C(virtfleet.compute.compute_node) role. Runs on the compute host itself (it reads /proc, /sys
    and /dev/kvm), with the libvirt URI of that host.
  - Checks the CPU flags (vmx/svm), C(/dev/kvm) (present, opened read-write, KVM API version), the kvm modules,
    nested virtualization, and whether libvirt offers the kvm domain type.
  - With O(probe=true), boots a throw-away guest through libvirt - a boot sector that goes from real mode to 64-bit
    long mode with paging, as a Linux kernel does, and runs a fixed workload - first under software emulation (TCG,
    the fallback, which must work in any case) and then under KVM, which must not be slower. A host can expose a
    C(/dev/kvm) that cannot run a Linux guest (nested virtualization without VT-x passed through, paravirtual KVM);
    only a real boot tells.
  - Chooses C(kvm) or C(qemu) by O(policy). The probe leaves nothing behind (a transient domain and a temporary
    volume, both removed).
author:
  - virtfleet.compute developers (@virtfleet)
extends_documentation_fragment:
  - virtfleet.compute.connection
attributes:
  check_mode:
    support: full
    description: Reads the host and boots the probe guest in check mode too (both leave nothing behind).
  diff_mode:
    support: none
    description: Reads or checks only; there is nothing to diff.
  idempotent:
    support: full
    description: Never reports a change.
options:
  policy:
    description:
      - V(fallback) uses kvm when every check passes, else qemu with a warning.
      - V(require_kvm) fails, with the reasons, unless every check passes.
      - V(force_kvm) and V(force_qemu) choose without asking (the checks still run and are reported; no probe
        under V(force_qemu)).
    type: str
    choices: [fallback, require_kvm, force_kvm, force_qemu]
    default: fallback
  probe:
    description: Boot the test guest through libvirt. Without it only the static checks run (and libvirt is not
      needed), and O(policy=require_kvm) fails as soon as one of them does.
    type: bool
    default: true
  probe_timeout:
    description:
      - Most seconds the probe guest may take under KVM (working KVM needs well under one). KVM gets four times what
        software emulation took, at least 3 seconds, at most this.
    type: int
    default: 10
  probe_pool:
    description: Storage pool for the probe's temporary 1 MiB volume.
    type: str
    default: virtfleet-instances
"""

EXAMPLES = r"""
- name: Decide between KVM and software emulation
  virtfleet.compute.compute_node_kvm:
    policy: fallback
  register: kvm
"""

RETURN = r"""
virt_type:
  description: The chosen domain type, kvm or qemu.
  returned: always
  type: str
  sample: qemu
kvm_usable:
  description: Whether every check (and the probe, if it ran) says KVM can run guests here.
  returned: always
  type: bool
reasons:
  description: Why KVM is or is not usable, one sentence per finding.
  returned: always
  type: list
  elements: str
checks:
  description: Every finding as data (arch, cpu_flags, host_is_vm, dev_kvm, kvm_modules, nested, libvirt_kvm, probes).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtfleet.compute.plugins.module_utils._kvm_probe import decide
from ansible_collections.virtfleet.compute.plugins.module_utils._module import CONNECTION_ARGS, run_module


def main():
    argument_spec = dict(
        policy=dict(type="str", default="fallback", choices=["fallback", "require_kvm", "force_kvm", "force_qemu"]),
        probe=dict(type="bool", default=True),
        probe_timeout=dict(type="int", default=10),
        probe_pool=dict(type="str", default="virtfleet-instances"),
    )
    argument_spec.update(CONNECTION_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    run_module(module, lambda client: decide(module.params, client))


if __name__ == "__main__":
    main()
