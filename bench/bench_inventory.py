# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of the libvirt inventory plugin on real libvirt hosts: hosts answered per second, concurrent versus
one by one.

Starts a lab (tests/lab/lab.py) of 3 and of 8 libvirt daemons on this machine, defines a few managed servers on
every host (OS-less halt image, defined and powered off: listing and scanning them costs the same as running ones),
then asks all hosts what the inventory asks (host_info with the hardware details, and with ``add_servers`` the
managed servers too) with the plugin's own ``ask_hosts``, once with one worker per host and once one by one.
Finally times ``ansible-inventory --list`` end to end both ways. The labs are stopped (by pid) at the end.

Usage::

    python bench/bench_inventory.py              # full run, prints and writes bench/results/inventory.md
    python bench/bench_inventory.py --quick      # 3 hosts, few rounds, writes nothing
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

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO_ROOT, "bench", "results", "inventory.md")
sys.path.insert(0, REPO_ROOT)

from tests.lab.lab import Lab, default_specs  # noqa: E402  (also puts the collection on sys.path)

# isort: split
from ansible_collections.virtfleet.compute.plugins.inventory import libvirt as inventory  # noqa: E402
from ansible_collections.virtfleet.compute.plugins.module_utils._image import converge_image  # noqa: E402
from ansible_collections.virtfleet.compute.plugins.module_utils._libvirt_client import LibvirtClient  # noqa: E402
from ansible_collections.virtfleet.compute.plugins.module_utils._server import converge_server  # noqa: E402

LAB_ROOT = os.environ.get("VIRTFLEET_LAB_ROOT", "/var/tmp/virtfleet-lab")

# A TCP -> unix socket forwarder that holds every chunk ``delay`` seconds in each direction: a network round trip
# for hosts that are all on this machine (no netem in this kernel). Runs as a process of its own, so its threads do
# not compete with the benchmark for the interpreter lock. Prints its port, then serves until killed.
_PROXY = r"""
import socket, sys, threading, time
target, delay = sys.argv[1], float(sys.argv[2])
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(64)
print(server.getsockname()[1], flush=True)

def pipe(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            time.sleep(delay)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

while True:
    client, _ = server.accept()
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    upstream = socket.socket(socket.AF_UNIX)
    upstream.connect(target)
    threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
    threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
"""


class LatencyProxies:
    """One delaying forwarder per lab host; ``uris`` are qemu+tcp URIs through them. Stopped by pid."""

    def __init__(self, lab, delay):
        self.procs, self.uris = [], {}
        try:
            for name in lab.names:
                proc = subprocess.Popen([sys.executable, "-c", _PROXY, lab.socket(name), str(delay)],
                                        stdout=subprocess.PIPE, text=True)
                self.procs.append(proc)
                self.uris[name] = "qemu+tcp://127.0.0.1:%s/system" % proc.stdout.readline().strip()
        except BaseException:
            self.stop()
            raise

    def stop(self):
        for proc in self.procs:
            proc.terminate()
            proc.wait(timeout=10)


def populate(lab, servers_per_host):
    """Import the halt image on every host and define ``servers_per_host`` managed servers (powered off)."""
    for name in lab.names:
        with LibvirtClient(lab.uri(name)) as client:
            converge_image(client, {"name": "halt", "src": lab.halt_image, "disk_format": "qcow2",
                                    "state": "present"})
            for index in range(servers_per_host):
                converge_server(client, {"name": "%s-srv-%d" % (name, index), "state": "present",
                                         "flavor": {"name": "m1.tiny", "vcpus": 1, "ram_mb": 64, "disk_gb": 1},
                                         "image": "halt", "virt_type": "qemu", "tags": ["bench"],
                                         "metadata": {"bench": "inventory"}})


def rounds(entries, concurrency, repeat, add_servers):
    times = []
    for _round in range(repeat):
        started = time.monotonic()
        # The TCP transport here is the loopback forwarders' emulated network, so plain TCP is allowed on purpose.
        answers = inventory.ask_hosts(entries, concurrency=concurrency, timeout=60, add_servers=add_servers,
                                      allow_insecure_tcp=True)
        times.append(time.monotonic() - started)
        down = [host["name"] for host, _servers in answers if not host["up"]]
        if down:
            raise SystemExit("hosts down during the benchmark: %s" % down)
    return times


def ansible_inventory(config, repeat):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO_ROOT, "build", "collections"),
               ANSIBLE_CONFIG=os.path.join(REPO_ROOT, "ansible.cfg"))
    times = []
    for _round in range(repeat):
        started = time.monotonic()
        proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-inventory"), "-i", config,
                               "--list"], capture_output=True, text=True, env=env, check=False)
        times.append(time.monotonic() - started)
        if proc.returncode != 0:
            raise SystemExit("ansible-inventory failed: %s" % proc.stderr[-2000:])
        data = json.loads(proc.stdout)
        if data.get("down", {}).get("hosts"):
            raise SystemExit("hosts down during the benchmark: %s" % data["down"]["hosts"])
    return times


def machine():
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return "%s, %s cores available, %s %s" % (model, cores, platform.system(), platform.release())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--quick", action="store_true", help="3 hosts, few rounds, write nothing")
    parser.add_argument("--repeat", type=int, default=20, help="rounds of ask_hosts per figure (default 20)")
    parser.add_argument("--servers", type=int, default=5, help="managed servers per host (default 5)")
    parser.add_argument("--delay", type=float, default=10.0,
                        help="emulated network round trip in ms for the TCP figures (default 10)")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results/inventory.md")
    args = parser.parse_args(argv)
    sizes = (3,) if args.quick else (3, 8)
    repeat = 3 if args.quick else args.repeat
    cli_repeat = 1 if args.quick else 5

    load_before = os.getloadavg()[0]
    rows, cli_rows = [], []
    for size in sizes:
        lab = Lab(os.path.join(LAB_ROOT, "bench-%d-%d" % (os.getpid(), size)), default_specs(size))
        try:
            started = time.monotonic()
            lab.start()
            populate(lab, args.servers)
            ready = time.monotonic() - started
            print("lab of %d hosts with %d servers each ready in %.1f s" % (size, args.servers, ready))
            transports = [("unix socket", dict((n, lab.uri(n)) for n in lab.names), repeat)]
            proxies = LatencyProxies(lab, args.delay / 2000.0)
            transports.append(("TCP, %g ms round trip" % args.delay, proxies.uris, max(repeat // 4, 2)))
            try:
                for transport, uris, count in transports:
                    entries = inventory.hypervisor_entries([{"name": n, "uri": uris[n]} for n in lab.names],
                                                           allow_insecure_tcp=True)
                    for add_servers in (False, True):
                        rounds(entries, size, 2, add_servers)  # warm up: connections, libvirt's CPU map
                        together = rounds(entries, size, count, add_servers)
                        one_by_one = rounds(entries, 1, count, add_servers)
                        rows.append((size, transport, add_servers, count, together, one_by_one))
                        print("%d hosts, %s, servers %-5s: concurrent %.1f ms, one by one %.1f ms (median of %d)" % (
                            size, transport, add_servers, statistics.median(together) * 1000,
                            statistics.median(one_by_one) * 1000, count))
            finally:
                proxies.stop()
            with tempfile.TemporaryDirectory() as tmp:
                both = []
                for concurrency in (size, 1):
                    config = lab.inventory_config(os.path.join(tmp, "c%d.virtfleet.yml" % concurrency),
                                                  add_servers=True, concurrency=concurrency)
                    both.append(ansible_inventory(config, cli_repeat))
                cli_rows.append((size, both[0], both[1]))
                print("%d hosts, ansible-inventory --list: concurrent %.2f s, one by one %.2f s" % (
                    size, statistics.median(both[0]), statistics.median(both[1])))
        finally:
            lab.stop()
    load_after = os.getloadavg()[0]

    if args.quick or args.no_write:
        return 0

    def rate(size, times):
        return size / statistics.median(times)

    lines = [
        "# Inventory benchmark",
        "",
        "Recorded by `python bench/bench_inventory.py` (from the repository root, as root: it starts a lab of "
        "libvirt daemons with tests/lab/lab.py).",
        "",
        "- Date: %s UTC" % datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "- Machine: %s" % machine(),
        "- Python: %s, libvirt-python %s" % (platform.python_version(), _libvirt_version()),
        "- Load average (1 min) before and after: %.2f and %.2f" % (load_before, load_after),
        "- Hosts: real libvirtd 9.0 daemons of the lab on this machine (one per mount namespace), "
        "each with %d managed servers defined (powered off) and its host record; what each "
        "host is asked is what the inventory asks: host_info with the hardware details (host name, record "
        "volume, node info, every domain's XML, instance pool, capabilities, CPU feature expansion) and, with "
        "`add_servers`, the managed servers (state and addresses of each)." % args.servers,
        "- Transports: *unix socket*, each daemon's own socket (no network at all); *TCP, N ms round trip*, "
        "`qemu+tcp://` through a forwarding proxy per host that holds every chunk N/2 ms in each direction "
        "(an emulated network: this kernel has no netem). Remote hosts (`qemu+ssh://`, `qemu+tls://`) are the "
        "normal case; their round trips are what the second kind of figure measures.",
        "- Figures: median of the rounds of the plugin's `ask_hosts` (best in brackets); *concurrent* is one "
        "worker thread per host (the plugin's default, up to 16), *one by one* is `concurrency: 1`.",
        "",
        "| hosts | transport | add_servers | rounds | concurrent (ms) | one by one (ms) | hosts/s concurrent "
        "| hosts/s one by one | speed-up |",
        "|---:|---|:---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, transport, add_servers, count, together, one_by_one in rows:
        lines.append("| %d | %s | %s | %d | %.1f (%.1f) | %.1f (%.1f) | %.0f | %.0f | %.1fx |" % (
            size, transport, "yes" if add_servers else "no", count, statistics.median(together) * 1000,
            min(together) * 1000, statistics.median(one_by_one) * 1000, min(one_by_one) * 1000,
            rate(size, together), rate(size, one_by_one),
            statistics.median(one_by_one) / statistics.median(together)))
    lines += [
        "",
        "End to end, `ansible-inventory -i lab.virtfleet.yml --list` with `add_servers: true` (median of %d runs; "
        "most of it is Ansible starting up):" % cli_repeat,
        "",
        "| hosts | concurrent (s) | one by one (s) |",
        "|---:|---:|---:|",
    ]
    for size, together, one_by_one in cli_rows:
        lines.append("| %d | %.2f | %.2f |" % (size, statistics.median(together), statistics.median(one_by_one)))
    lines += [
        "",
        "Reading the figures: every host here is a daemon on the same two cores. Over the unix sockets a host's "
        "answer is nearly all CPU time (libvirt formatting XML, the plugin parsing it), so concurrency only "
        "overlaps what two cores and the daemons' own threads allow. With a network in between, a host's answer "
        "is mostly waiting for round trips, and those waits overlap (libvirt-python releases the interpreter lock "
        "while it waits): the concurrent inventory takes about as long as the slowest host, one by one adds up "
        "every host's round trips.",
        "",
    ]
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as handle:
        handle.write("\n".join(lines))
    print("wrote %s" % os.path.relpath(RESULTS, REPO_ROOT))
    return 0


def _libvirt_version():
    try:
        import libvirt

        major, rest = divmod(libvirt.getVersion(), 1000000)
        minor, release = divmod(rest, 1000)
        return "%d.%d.%d" % (major, minor, release)
    except Exception:  # noqa: BLE001 - only for the report
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
