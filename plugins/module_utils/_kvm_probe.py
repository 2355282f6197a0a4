# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a host really runs guests under KVM: static checks, then a boot probe through libvirt.

libvirt offers ``type='kvm'`` whenever /dev/kvm exists, but some hosts (nested clouds without VT-x passed through,
paravirtual KVM such as kvm_pvm, CI runners) expose a /dev/kvm on which a Linux guest hangs early in boot. Only a
boot tells: the probe is a 512-byte boot sector (roles/compute_node/files/kvm-probe.S) that walks the path a kernel
takes (real mode, protected mode, 64-bit long mode with paging) and runs a fixed workload, printing its progress on
the serial console. Used by the ``compute_node_kvm`` module of the compute_node role.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import binascii
import errno
import fcntl
import math
import os
import platform
import time
import uuid
import xml.etree.ElementTree as ET

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import NotFoundError, VirtfleetError

# files/kvm-probe.S, assembled (the boot signature 55 AA is added at bytes 510-511).
PROBE_CODE = binascii.unhexlify(
    "fa31c08ed88ec08ed0bc007cb052e81800660f0116407d0f20c06683c8010f22c066ea2e7c00000800baf803eec366b8"
    "10008ed88ec08ed0bc007c0000b05066baf803eebf0010000031c0b9000c0000f3abc7050010000003200000c7050020"
    "000003300000c70500300000830000000f20e083c8200f22e0b8001000000f22d8b9800000c00f320d000100000f300f"
    "20c00d000000800f22c0eaa17c00001800b04c66baf803ee48c7c00100000048bb2d7f954c2df4515849b84f8167f77e"
    "7b0514b900000001480fafc34c01c0ffc975f548bb01000069aecef287488d351c0000004839d87407488d351d000000"
    "66baf803ac84c07403eeebf8faf4ebfc20564650524f42452d4f4b0a0020564650524f42452d4241440a000f1f440000"
    "0000000000000000ffff0000009acf00ffff00000092cf00ffff0000009aaf001f00207d"
)
PROBE_OK = b"VFPROBE-OK"
PROBE_BAD = b"VFPROBE-BAD"
KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12
X86 = ("x86_64", "i686", "i386", "amd64")
VENDOR_MODULES = ("kvm_intel", "kvm_amd")
# How much slower than software emulation KVM may be before it counts as not working (both include the boot).
SLOWER_THAN_TCG = 2.0
# Seconds: software emulation always gets this long; KVM gets a few times what emulation took, at least this.
TCG_TIMEOUT = 30
KVM_MIN_TIMEOUT = 3


def probe_sector():
    sector = bytearray(512)
    sector[:len(PROBE_CODE)] = PROBE_CODE
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


# -- static checks (no libvirt needed) -------------------------------------------------------------------------------


def cpu_flags(cpuinfo):
    flags = set()
    for line in cpuinfo.splitlines():
        key, _sep, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def dev_kvm_state(path="/dev/kvm"):
    """(usable, text) for the KVM device: present, a character device, opened read-write, API version 12."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False, "missing"
    if not stat.S_ISCHR(mode):
        return False, "not a character device"
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return False, "present but not accessible to this user (%s)" % os.strerror(exc.errno)
        return False, "present but cannot be opened (%s)" % os.strerror(exc.errno)
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as exc:
        return False, "present but the KVM API does not answer (%s)" % os.strerror(exc.errno)
    finally:
        os.close(fd)
    if version != KVM_API_VERSION:
        return False, "present with an unexpected KVM API version %s" % version
    return True, "usable (KVM API %d)" % version


def kvm_modules(sys_module="/sys/module"):
    try:
        return sorted(name for name in os.listdir(sys_module) if name == "kvm" or name.startswith("kvm_"))
    except OSError:
        return []


def nested_state(sys_module="/sys/module"):
    for module in VENDOR_MODULES:
        path = os.path.join(sys_module, module, "parameters", "nested")
        try:
            with open(path) as handle:
                value = handle.read().strip()
        except (IOError, OSError):
            continue
        return "enabled" if value in ("Y", "y", "1") else "disabled"
    return "unknown"


def static_checks(arch, cpuinfo, dev_kvm, modules, nested):
    """(checks, problems, findings): the checks as data, what rules KVM out, and what speaks for it."""
    flags = cpu_flags(cpuinfo)
    hw = sorted(flags & set(("vmx", "svm")))
    checks = {
        "arch": arch,
        "cpu_flags": hw,
        "host_is_vm": "hypervisor" in flags,
        "dev_kvm": dev_kvm[1],
        "kvm_modules": modules,
        "nested": nested,
    }
    problems = []
    findings = []
    x86 = arch in X86
    if x86 and not hw:
        text = "the CPU shows neither vmx (Intel VT-x) nor svm (AMD-V) in /proc/cpuinfo"
        if checks["host_is_vm"]:
            text += "; this host is itself a virtual machine whose hypervisor does not pass hardware virtualization on"
        problems.append(text)
    elif hw:
        findings.append("the CPU has %s" % "/".join(hw))
    if not dev_kvm[0]:
        problems.append("/dev/kvm is %s" % dev_kvm[1])
    else:
        findings.append("/dev/kvm is %s" % dev_kvm[1])
    if x86:
        vendor = [m for m in modules if m in VENDOR_MODULES]
        others = [m for m in modules if m.startswith("kvm_") and m not in VENDOR_MODULES]
        if not vendor:
            text = "neither kvm_intel nor kvm_amd is loaded"
            if others and dev_kvm[0]:
                text += " (/dev/kvm comes from %s, which does not run ordinary guests)" % ", ".join(others)
            problems.append(text)
        else:
            findings.append("%s is loaded" % ", ".join(vendor))
    if nested != "unknown":
        findings.append("nested virtualization (guests running KVM themselves) is %s" % nested)
    return checks, problems, findings


# -- the boot probe --------------------------------------------------------------------------------------------------


def probe_xml(name, virt_type, disk_path):
    root = ET.Element("domain", {"type": virt_type})
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "memory", {"unit": "MiB"}).text = "16"
    ET.SubElement(root, "vcpu").text = "1"
    os_elem = ET.SubElement(root, "os")
    ET.SubElement(os_elem, "type", {"arch": "x86_64"}).text = "hvm"
    ET.SubElement(os_elem, "boot", {"dev": "hd"})
    # No <cpu> element: the probe runs on the same default CPU model as the collection's servers.
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        ET.SubElement(root, event).text = "destroy"
    devices = ET.SubElement(root, "devices")
    disk = ET.SubElement(devices, "disk", {"type": "file", "device": "disk"})
    ET.SubElement(disk, "driver", {"name": "qemu", "type": "raw"})
    ET.SubElement(disk, "source", {"file": disk_path})
    ET.SubElement(disk, "target", {"dev": "vda", "bus": "virtio"})
    serial = ET.SubElement(devices, "serial", {"type": "pty"})
    ET.SubElement(serial, "target", {"port": "0"})
    console = ET.SubElement(devices, "console", {"type": "pty"})
    ET.SubElement(console, "target", {"type": "serial", "port": "0"})
    ET.SubElement(ET.SubElement(devices, "video"), "model", {"type": "none"})
    ET.SubElement(devices, "memballoon", {"model": "none"})
    return ET.tostring(root, encoding="unicode")


def probe_stage(output):
    """How far the probe guest got, from its progress letters (R real mode, P protected mode, L long mode)."""
    stages = output.split(b" ")[0]
    if b"L" in stages:
        return "reached 64-bit long mode but did not finish its workload"
    if b"P" in stages:
        return "entered protected mode but never long mode"
    if b"R" in stages:
        return "never left real mode"
    return "printed nothing (the firmware never ran the boot sector)"


def describe_probe(virt_type, output, timed_out):
    """(passed, sentence) for one probe run, from what the guest printed."""
    # The sentence becomes part of the host record, so it carries nothing measured: not the time, and not how far a
    # guest that ran out of time got (a slow KVM gets further on a quiet machine than on a busy one). Either would
    # rewrite the record on every converge. Both are in the module's ``checks.probes`` output.
    label = "KVM" if virt_type == "kvm" else "software emulation (TCG)"
    if PROBE_OK in output:
        return True, "a test guest booted under %s and ran its 64-bit workload" % label
    if PROBE_BAD in output:
        return False, "a test guest under %s computed a wrong result (the CPU is not emulated faithfully)" % label
    if timed_out:
        return False, "a test guest under %s did not finish its 64-bit workload within its time limit" % label
    return False, "a test guest under %s stopped early: it %s (QEMU refused or crashed)" % (label, probe_stage(output))


def run_probe(client, pool, virt_type, timeout):
    """(passed, sentence, seconds) for one boot of the probe guest under ``virt_type``; removes what it made."""
    name = "virtfleet-kvm-probe-%s" % uuid.uuid4().hex[:8]
    vol_xml = ("<volume><name>%s.img</name><capacity unit='bytes'>1048576</capacity>"
               "<target><format type='raw'/></target></volume>" % name)
    vol = client.create_volume(pool, vol_xml)
    dom = None
    try:
        client.upload_bytes(vol, probe_sector())
        started = time.monotonic()
        dom = client.create_transient_domain(probe_xml(name, virt_type, client.volume_path(vol)), paused=True)
        output, timed_out = client.read_console(dom, lambda data: PROBE_OK in data or PROBE_BAD in data, timeout)
        seconds = time.monotonic() - started
    finally:
        if dom is not None:
            try:
                client.destroy_domain(dom)
            except VirtfleetError:
                pass  # a transient domain is gone once it stopped
        client.delete_volume_if_exists(vol)
    passed, sentence = describe_probe(virt_type, output, timed_out)
    return passed, sentence, round(seconds, 2), output.decode("ascii", "replace").strip()


def decide(params, client=None, probe_runner=run_probe):
    """The module's whole job, as data: {virt_type, kvm_usable, reasons, checks, warnings} or VirtfleetError."""
    policy = params["policy"]
    modules = kvm_modules()
    try:
        with open("/proc/cpuinfo") as handle:
            cpuinfo = handle.read()
    except (IOError, OSError):
        cpuinfo = ""
    checks, problems, findings = static_checks(platform.machine(), cpuinfo, dev_kvm_state(), modules,
                                               nested_state())
    result = {"changed": False, "warnings": []}
    if params["probe"] and policy != "force_qemu":
        _probe(params, client, checks, problems, findings, probe_runner)
    kvm_usable = not problems
    reasons = problems if problems else findings
    if policy == "force_qemu":
        virt_type = "qemu"
        reasons = ["software emulation was chosen by policy (force_qemu)"] + reasons
    elif policy == "force_kvm":
        virt_type = "kvm"
        if problems:
            result["warnings"].append("KVM is forced by policy although it does not look usable here: %s"
                                      % "; ".join(problems))
        reasons = ["KVM was chosen by policy (force_kvm)"] + reasons
    elif kvm_usable:
        virt_type = "kvm"
    elif policy == "require_kvm":
        raise VirtfleetError("KVM is required (policy require_kvm) but cannot run guests on this host: %s"
                             % "; ".join(problems), field="policy", reasons=problems, checks=checks)
    else:
        virt_type = "qemu"
        if params["probe"]:
            result["warnings"].append("KVM cannot run guests on this host, so its servers will run under software "
                                      "emulation (qemu, much slower): %s" % "; ".join(problems))
    result.update(virt_type=virt_type, kvm_usable=kvm_usable, reasons=reasons, checks=checks)
    return result


def _probe(params, client, checks, problems, findings, probe_runner):
    if platform.machine() not in X86:
        findings.append("no boot probe on %s (the probe guest is x86 code)" % platform.machine())
        checks["probes"] = {}
        return
    checks["probes"] = {}
    checks["libvirt_kvm"] = client.domain_capabilities("kvm") is not None
    if not checks["libvirt_kvm"]:
        problems.append("libvirt offers no kvm domain type on this host")
    try:
        pool = client.lookup_pool(params["probe_pool"], field="probe_pool")
    except NotFoundError:
        # In check mode on a new host the pool is only planned; the static checks have to do.
        findings.append("the boot probe was skipped: storage pool %s is not there yet" % params["probe_pool"])
        return
    # Software emulation first: it is the fallback, so it must work anyway, and its time is the yardstick. KVM
    # that is slower than emulation is of no use, so KVM gets a few times that, not a long fixed wait.
    tcg_passed, tcg_sentence, tcg_seconds, output = probe_runner(client, pool, "qemu",
                                                                 max(TCG_TIMEOUT, params["probe_timeout"]))
    checks["probes"]["qemu"] = {"passed": tcg_passed, "seconds": tcg_seconds, "output": output,
                                "reached": probe_stage(output.encode())}
    kvm_passed = False
    if checks["libvirt_kvm"] and checks["dev_kvm"].startswith("usable"):
        timeout = params["probe_timeout"]
        if tcg_passed:
            timeout = int(min(timeout, max(KVM_MIN_TIMEOUT, math.ceil(SLOWER_THAN_TCG * 2 * tcg_seconds))))
        kvm_passed, sentence, seconds, output = probe_runner(client, pool, "kvm", timeout)
        checks["probes"]["kvm"] = {"passed": kvm_passed, "seconds": seconds, "output": output,
                                   "reached": probe_stage(output.encode())}
        if not kvm_passed:
            if tcg_passed and "time limit" in sentence:
                sentence += ", which software emulation finished in time"
            problems.append(sentence)
        elif tcg_passed and seconds > SLOWER_THAN_TCG * tcg_seconds and seconds > 1:
            kvm_passed = False
            problems.append("KVM ran the test guest more than %g times slower than software emulation"
                            % SLOWER_THAN_TCG)
        else:
            findings.append(sentence)
    if not tcg_passed:
        if not kvm_passed or problems:
            raise VirtfleetError("there is no way to run guests on this host: %s; and %s"
                                 % ("; ".join(problems) or "KVM is not offered", tcg_sentence), checks=checks)
        findings.append(tcg_sentence)
