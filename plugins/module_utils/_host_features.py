# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a host can do for a flavor's extra specs, and what a flavor asks of it.

Some extra specs only fail when QEMU starts: ``hw:mem_page_size`` on a host without free huge pages ("hugetlbfs
filesystem is not mounted or disabled") and ``quota:vif_*`` on a kernel without the queueing disciplines libvirt
shapes traffic with. Nova refuses the first in its NUMATopologyFilter; neither should get as far as a claim and a
domain definition here. One function, :func:`unmet_needs`, compares a flavor with a host's features; the server
module refuses with its answer while planning (so check mode refuses too) and the scheduler filters hosts with it.
"""

from __future__ import annotations

import os
import subprocess
from urllib.parse import urlsplit

from ansible_collections.virtfleet.compute.plugins.module_utils._flavor import VIF_QUOTA_KEYS, page_size_kib

BASE_PAGE_KIB = 4

# libvirt sets a NIC's bandwidth with these tc commands (virNetDevBandwidthSet): an htb root with an sfq leaf for
# inbound traffic, an ingress qdisc for outbound. A kernel without one of them fails the domain start.
_SHAPING_PROBE = (
    ("htb", ["tc", "qdisc", "add", "dev", "vfbw0", "root", "handle", "1:", "htb", "default", "1"]),
    ("htb", ["tc", "class", "add", "dev", "vfbw0", "parent", "1:", "classid", "1:1", "htb", "rate", "1000kbps"]),
    ("sfq", ["tc", "qdisc", "add", "dev", "vfbw0", "parent", "1:1", "handle", "2:", "sfq", "perturb", "10"]),
    ("ingress", ["tc", "qdisc", "add", "dev", "vfbw0", "ingress"]),
)
_shaping_cache = {}


def is_local_uri(uri):
    """True when ``uri`` names a QEMU daemon on the machine this code runs on (no host part)."""
    parts = urlsplit(uri or "")
    return parts.scheme.split("+")[0] == "qemu" and not parts.hostname


def bandwidth_shaping(uri):
    """{"supported": True/False/None, "reason": text}: whether libvirt can shape a NIC's traffic on the host.

    The kernel is only known where this code runs: for a remote URI, or without root or ``tc``, the answer is None
    (unknown), and nothing is refused for it. The probe builds libvirt's qdiscs on a veth pair inside a throw-away
    network namespace, so the host's own interfaces are never touched; the answer is kept for the process."""
    if not is_local_uri(uri):
        return {"supported": None, "reason": "not probed: the host is not the machine this runs on"}
    if "local" not in _shaping_cache:
        _shaping_cache["local"] = _probe_shaping()
    return dict(_shaping_cache["local"])


def _probe_shaping():
    if os.geteuid() != 0:
        return {"supported": None, "reason": "not probed: needs root"}
    namespace = "vf-bwprobe-%d" % os.getpid()

    def run(cmd):
        return subprocess.run(["ip", "netns", "exec", namespace] + cmd, capture_output=True, text=True,
                              timeout=10, check=False)

    try:
        made = subprocess.run(["ip", "netns", "add", namespace], capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"supported": None, "reason": "not probed: %s" % exc}
    if made.returncode != 0:
        return {"supported": None, "reason": "not probed: ip netns add failed: %s" % made.stderr.strip()}
    try:
        for cmd in (["ip", "link", "add", "vfbw0", "type", "veth", "peer", "name", "vfbw1"],
                    ["ip", "link", "set", "vfbw0", "up"]):
            done = run(cmd)
            if done.returncode != 0:
                return {"supported": None, "reason": "not probed: %s failed: %s" % (" ".join(cmd),
                                                                                    done.stderr.strip())}
        for qdisc, cmd in _SHAPING_PROBE:
            done = run(cmd)
            if done.returncode != 0:
                return {"supported": False,
                        "reason": "the kernel lacks the %s queueing discipline libvirt shapes NIC traffic with (%s)"
                                  % (qdisc, done.stderr.strip() or "tc failed")}
        return {"supported": True, "reason": "htb, sfq and ingress queueing disciplines work"}
    except (OSError, subprocess.SubprocessError) as exc:
        return {"supported": None, "reason": "not probed: %s" % exc}
    finally:
        subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, timeout=10, check=False)


def huge_pages(client, cells):
    """[{"size_kb", "total", "free"}] for every huge page size the host lists (base pages left out), summed over its
    NUMA cells. ``cells`` is host_info's numa_cells (each with its page sizes and totals)."""
    # Each cell lists its base page size first (the smallest): every larger size is a huge page size.
    sizes = sorted(set(p["size_kb"] for cell in cells if cell["pages"] for p in cell["pages"]
                       if p["size_kb"] > min(q["size_kb"] for q in cell["pages"])))
    if not sizes:
        return []
    free = client.free_pages(sizes, [cell["id"] for cell in cells])
    return [{"size_kb": size,
             "total": sum(p["count"] for cell in cells for p in cell["pages"] if p["size_kb"] == size),
             "free": sum(free.get(cell["id"], {}).get(size, 0) for cell in cells)}
            for size in sizes]


def features(client, cells):
    """The host's features for extra specs, as host_info reports them."""
    return {"huge_pages": huge_pages(client, cells), "bandwidth_shaping": bandwidth_shaping(client.uri)}


def feature_specs(extra_specs):
    """The extra specs that need a host feature (huge pages, NIC shaping): a dict, empty when none does."""
    wanted = dict((k, v) for k, v in extra_specs.items() if k in VIF_QUOTA_KEYS)
    if extra_specs.get("hw:mem_page_size") not in (None, "small", "any"):
        wanted["hw:mem_page_size"] = extra_specs["hw:mem_page_size"]
    return wanted


def unmet_needs(extra_specs, ram_mb, host_features):
    """[(extra spec key, what the host lacks)] for a flavor's extra specs on a host; empty when it can run there.

    ``host_features`` is :func:`features`' dict; a feature the host does not report (an older record, a remote
    kernel) is never held against it. Huge pages are counted over the whole host, as libvirt allocates them when the
    guest has no NUMA topology of its own; Nova's NUMATopologyFilter asks one cell for them (a documented deviation).
    """
    unmet = []
    host_features = host_features or {}
    page = extra_specs.get("hw:mem_page_size")
    pages = host_features.get("huge_pages")
    if page not in (None, "small", "any") and pages is not None:
        size = page_size_kib(page)  # None for "large": the host's default huge page size
        if size is None or size > BASE_PAGE_KIB:
            why = _unmet_pages(size, ram_mb, pages)
            if why:
                unmet.append(("hw:mem_page_size", why))
    shaping = host_features.get("bandwidth_shaping") or {}
    wants_shaping = sorted(k for k in VIF_QUOTA_KEYS if k in extra_specs)
    if wants_shaping and shaping.get("supported") is False:
        unmet.append((wants_shaping[0], "the host cannot shape NIC bandwidth: %s" % shaping.get("reason")))
    return unmet


def _unmet_pages(size, ram_mb, pages):
    """Why the host cannot back ``ram_mb`` with pages of ``size`` KiB (None: its default size), or None."""
    if not pages:
        return "the host has no huge pages"
    if size is None:
        size = pages[0]["size_kb"]  # the default huge page size is the smallest one on x86 (2 MiB)
    have = [p for p in pages if p["size_kb"] == size]
    if not have:
        return "the host has no %d KiB pages (it has %s)" % (size, ", ".join("%d KiB" % p["size_kb"] for p in pages))
    needed = -(-ram_mb * 1024 // size)
    if have[0]["free"] < needed:
        return "%d MB of RAM needs %d free %d KiB pages, the host has %d free of %d" % (
            ram_mb, needed, size, have[0]["free"], have[0]["total"])
    return None


def describe_unmet(unmet, flavor_name=None):
    """One sentence for :func:`unmet_needs`' answer, naming each extra spec."""
    return "; ".join("flavor%s extra spec %s: %s" % (" %s" % flavor_name if flavor_name else "", key, why)
                     for key, why in unmet)
