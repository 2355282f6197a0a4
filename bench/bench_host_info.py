# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of host_info and flavor_info against a host with 50 defined domains.

The host is a libvirt daemon of its own by default (tests/integration/test_flavor_host.py starts it in a private
mount namespace, as ENVIRONMENT.md describes), so nothing else on the machine changes the figures and nothing of the
benchmark is left on the shared daemon. ``--uri`` measures an existing host instead; the benchmark then defines its
domains there with the prefix ``vf-t3-bench-`` and removes them afterwards.

The 50 domains: 45 managed servers made by the server module's own code (OS-less halting image, flavors from a
20-flavor catalog, 10 of them running) and 5 domains without our metadata, each with a writable disk (the slower
path: their disks are measured through libvirt).

Figures, each the median and 95th percentile of many calls through one open connection:

* ``host_info`` with and without the hypervisor details (the claim path uses the one without);
* ``flavor_info`` for the whole catalog, one flavor, and with ``include_servers`` (a domain scan);
* one end-to-end ``ansible localhost -m virtfleet.compute.host_info`` call, next to ``ansible.builtin.ping``, to show
  what a playbook task pays on top.

Usage::

    python bench/bench_host_info.py               # private host; prints and writes bench/results/host_info.md
    python bench/bench_host_info.py --quick       # fewer repetitions; writes nothing
    python bench/bench_host_info.py --uri qemu:///system --no-write
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO_ROOT, "bench", "results", "host_info.md")
PREFIX = "vf-t3-bench-"
MANAGED = 45
UNMANAGED = 5
RUNNING = 10
CATALOG = 20

sys.path.insert(0, REPO_ROOT)
# Imported for its side effect: it puts the collection on sys.path under its FQCN.
import tests.conftest  # noqa: E402,F401 pylint: disable=unused-import
from ansible_collections.virtfleet.compute.plugins.module_utils._flavor_catalog import (  # noqa: E402
    converge_flavor,
    flavor_info,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._host_info import host_info  # noqa: E402
from ansible_collections.virtfleet.compute.plugins.module_utils._libvirt_client import LibvirtClient  # noqa: E402
from ansible_collections.virtfleet.compute.plugins.module_utils._server import converge_server  # noqa: E402
from tests.integration.conftest import (  # noqa: E402
    HALT_IMAGE,
    IMAGE_POOL,
    INSTANCE_POOL,
    POOL_PATHS,
    ansible_env,
    ensure_pool,
    import_image,
    make_halt_image,
)
from tests.integration.test_flavor_host import _start_libvirtd, _stop_libvirtd  # noqa: E402


def timed(func, repeat):
    samples = []
    for _repeat in range(repeat):
        start = time.perf_counter()
        func()
        samples.append((time.perf_counter() - start) * 1000.0)
    samples.sort()
    return {"median": statistics.median(samples), "p95": samples[min(len(samples) - 1, int(len(samples) * 0.95))],
            "best": samples[0], "n": repeat}


def populate(client, workdir):
    for name in (IMAGE_POOL, INSTANCE_POOL):
        ensure_pool(client, name, POOL_PATHS[name])
    import_image(client, HALT_IMAGE, make_halt_image(os.path.join(workdir, "halt.qcow2")), "qcow2")
    for index in range(CATALOG):
        converge_flavor(client, {"name": "%sf%02d" % (PREFIX, index), "state": "present", "vcpus": 1 + index % 4,
                                 "ram_mb": 64 * (1 + index % 4), "disk_gb": 1 + index % 3, "swap_mb": None,
                                 "ephemeral_gb": None, "description": "bench flavor %d" % index,
                                 "extra_specs": {"hw:watchdog_action": "reset"} if index % 2 else None,
                                 "force": False})
    started = time.perf_counter()
    for index in range(MANAGED):
        flavor = {"name": "%sf%02d" % (PREFIX, index % CATALOG), "vcpus": 1, "ram_mb": 64, "disk_gb": 1}
        converge_server(client, {"name": "%svm%02d" % (PREFIX, index), "flavor": flavor, "image": HALT_IMAGE,
                                 "state": "running" if index < RUNNING else "present", "virt_type": "qemu",
                                 "wait": False})
    pool = client.lookup_pool(INSTANCE_POOL)
    for index in range(UNMANAGED):
        name = "%sother%d" % (PREFIX, index)
        vol = ET.Element("volume")
        ET.SubElement(vol, "name").text = name + ".qcow2"
        ET.SubElement(vol, "capacity", {"unit": "bytes"}).text = str(1024 ** 3)
        ET.SubElement(ET.SubElement(vol, "target"), "format", {"type": "qcow2"})
        client.create_volume(pool, ET.tostring(vol, encoding="unicode"))
        client.define_domain(
            "<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64'>hvm</type></os><devices><disk type='volume' device='disk'>"
            "<driver name='qemu' type='qcow2'/><source pool='%s' volume='%s.qcow2'/>"
            "<target dev='vda' bus='virtio'/></disk></devices></domain>" % (name, INSTANCE_POOL, name))
    return time.perf_counter() - started


def cleanup(client):
    from ansible_collections.virtfleet.compute.plugins.module_utils._flavor_catalog import delete_flavor

    for dom in client.list_domains():
        name = client.domain_name(dom)
        if name.startswith(PREFIX):
            if client.domain_persistent(dom):
                converge_server(client, {"name": name, "state": "absent"}) if name.startswith(PREFIX + "vm") \
                    else (client.destroy_domain(dom), client.undefine_domain(dom))
    pool = client.find_pool(INSTANCE_POOL)
    if pool is not None:
        for vol in client.list_volumes(pool):
            if vol.name().startswith(PREFIX):
                client.delete_volume(vol)
    for index in range(CATALOG):
        delete_flavor(client, "%sf%02d" % (PREFIX, index))


def ansible_call(uri, module, args):
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-c", "local", "-i", "localhost,",
           "-m", module, "-a", args, "-o"]
    env = ansible_env({"ANSIBLE_PYTHON_INTERPRETER": sys.executable})
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    elapsed = (time.perf_counter() - start) * 1000.0
    if proc.returncode != 0:
        raise RuntimeError("%s failed: %s %s" % (module, proc.stdout[-2000:], proc.stderr[-2000:]))
    return elapsed


def measure(uri, quick):
    repeat = 20 if quick else 200
    client = LibvirtClient(uri)
    client.hostname()
    rows = []
    info = host_info(client)
    assert len(info["servers"]) == MANAGED and len(info["unmanaged_domains"]) == UNMANAGED, info["servers"]
    assert info["running_vms"] == RUNNING
    rows.append(("host_info (full: record, usage, hypervisor, CPU, NUMA)",
                 timed(lambda: host_info(client), repeat)))
    rows.append(("host_info without details (what a claim reads)",
                 timed(lambda: host_info(client, details=False), repeat)))
    rows.append(("flavor_info, whole catalog (%d flavors)" % CATALOG,
                 timed(lambda: flavor_info(client, {"names": None, "include_servers": False}), repeat)))
    rows.append(("flavor_info, one flavor",
                 timed(lambda: flavor_info(client, {"names": [PREFIX + "f03"], "include_servers": False}), repeat)))
    rows.append(("flavor_info with include_servers (domain scan)",
                 timed(lambda: flavor_info(client, {"names": None, "include_servers": True}), repeat)))
    client.close()
    end_to_end = []
    runs = 3 if quick else 7
    for label, module, args in (
            ("ansible ad-hoc: ansible.builtin.ping (baseline)", "ansible.builtin.ping", ""),
            ("ansible ad-hoc: virtfleet.compute.host_info", "virtfleet.compute.host_info", "uri=%s" % uri),
            ("ansible ad-hoc: virtfleet.compute.flavor_info", "virtfleet.compute.flavor_info", "uri=%s" % uri)):
        samples = sorted(ansible_call(uri, module, args) for _run in range(runs))
        end_to_end.append((label, {"median": statistics.median(samples), "p95": samples[-1], "best": samples[0],
                                   "n": runs}))
    return rows, end_to_end


def report(rows, end_to_end, populate_seconds, uri_text, load):
    lines = [
        "# host_info and flavor_info benchmark",
        "",
        "Recorded by `python bench/bench_host_info.py` (from the repository root).",
        "",
        "- Date: %s UTC" % datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M"),
        "- Machine: %s, %d cores available, %s %s" % (_cpu_model(), os.cpu_count(), platform.system(),
                                                      platform.release()),
        "- Python: %s; libvirt %s" % (platform.python_version(), _libvirt_version()),
        "- Host: %s" % uri_text,
        "- Load average (1 min) before and after: %.2f and %.2f" % load,
        "- Domains on the host: %d managed servers (%d running, flavors from a %d-flavor catalog) and %d domains "
        "without our metadata, each with a writable disk; defining the servers took %.1f s (%.0f ms each, "
        "through the server module's own code)." % (MANAGED, RUNNING, CATALOG, UNMANAGED, populate_seconds,
                                                    populate_seconds * 1000.0 / MANAGED),
        "",
        "Function calls through one open connection (what a module does after it has connected):",
        "",
        "| call | median (ms) | p95 (ms) | best (ms) | calls |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, figures in rows:
        lines.append("| %s | %.2f | %.2f | %.2f | %d |" % (label, figures["median"], figures["p95"], figures["best"],
                                                           figures["n"]))
    lines += [
        "",
        "One module run end to end (`ansible localhost -m ... -o`, local connection; includes starting Ansible):",
        "",
        "| command | median (ms) | worst (ms) | best (ms) | runs |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, figures in end_to_end:
        lines.append("| %s | %.0f | %.0f | %.0f | %d |" % (label, figures["median"], figures["p95"], figures["best"],
                                                           figures["n"]))
    full = rows[0][1]["median"]
    claim = rows[1][1]["median"]
    lines += [
        "",
        "Reading: a full host_info of a 50-domain host costs %.1f ms (one inactive-XML read per domain, one "
        "volume read for the host record, a pool refresh, capabilities); the claim path, without the hypervisor "
        "details, %.1f ms, and it runs twice per claim (under the lock and after the definition), so a claim holds "
        "the host's lock for a few tens of milliseconds plus the definition itself. flavor_info reads one volume "
        "whatever the catalog's size. End to end, the module's own work disappears in Ansible's per-task cost." %
        (full, claim),
        "",
    ]
    return "\n".join(lines)


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _libvirt_version():
    import libvirt

    number = libvirt.getVersion()
    return "%d.%d.%d" % (number // 1000000, number // 1000 % 1000, number % 1000)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--uri", help="measure this host instead of a private libvirtd")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions; writes nothing")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    base = None
    workdir = tempfile.mkdtemp(prefix=PREFIX)
    uri = args.uri
    if uri is None:
        base = tempfile.mkdtemp(prefix="vf-t3-host-")
        uri = _start_libvirtd(base)
    client = LibvirtClient(uri)
    load_before = os.getloadavg()[0]
    try:
        populate_seconds = populate(client, workdir)
        rows, end_to_end = measure(uri, args.quick)
    finally:
        cleanup(client)
        client.close()
        if base is not None:
            _stop_libvirtd(base)
        subprocess.call(["rm", "-rf", workdir])
    uri_text = ("a private libvirtd (its own mount namespace, same machine), `qemu+unix` socket" if args.uri is None
                else "`%s`" % args.uri)
    text = report(rows, end_to_end, populate_seconds, uri_text, (load_before, os.getloadavg()[0]))
    print(text)
    print(json.dumps({"rows": rows, "end_to_end": end_to_end}, indent=1), file=sys.stderr)
    if not args.quick and not args.no_write:
        with open(RESULTS, "w") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
