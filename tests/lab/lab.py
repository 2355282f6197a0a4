# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The multi-host lab: several independent libvirt "compute hosts" on one machine.

Each host is its own libvirtd (with its own virtlogd) in a private mount namespace, where its own directories are
bind-mounted over /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt
(docs: ENVIRONMENT.md). So every host has its own configuration, state, domains, pools and socket, and a distinct
host UUID; the collection reaches it as ``qemu+unix:///system?socket=DIR/NAME/run/libvirt-sock``.

Every host gets what the ``compute_node`` role would give it:

* the collection's storage pools (virtfleet-images, virtfleet-instances, virtfleet-records) at the paths the
  playbooks use, which resolve inside the host's own /var/lib/libvirt;
* a NAT network named ``default``, like a real host's, but with its own bridge (``vflab<slot>-<n>``) and subnet
  (``10.217.<slot * 16 + n>.0/24``): all hosts share the machine's network stack, so two hosts with libvirt's stock
  ``virbr0`` and 192.168.122.0/24 would collide (and collide with the machine's own default network);
* a host record with its availability zone, aggregates, traits, enabled flag and ``virt_type: qemu`` (this kind
  of machine cannot boot KVM guests), and reservations that give it its capacity. All hosts share the machine's
  CPUs, memory and disk, so a host's capacity is made different the honest way, by reserving the rest for the host:
  ``memory_mb: 2048`` reserves all of the machine's memory but 2048 MiB (capacity = 2048 x the RAM ratio, 1.5 by
  default), ``vcpus`` and ``disk_gb`` likewise. The reservations are computed from the totals libvirt reports when
  the record is written (kept in lab.json as ``totals``). Some virtual machines (this project's among them) bring
  more memory online as it gets used, and libvirt's total grows with it, and so does every lab host's memory
  capacity: tests that need a host to be exactly full fill its disk or vCPUs, whose totals do not move.

Usage (``make lab`` / ``make lab-down`` run the first two)::

    python tests/lab/lab.py up [--dir DIR] [--hosts N]     # start N hosts (3 by default), print their URIs
    python tests/lab/lab.py down [--dir DIR]               # stop them (by pid) and delete DIR
    python tests/lab/lab.py status [--dir DIR]
    python tests/lab/lab.py kill NAME / revive NAME        # simulate a crashed libvirtd, and bring it back
    python tests/lab/lab.py crash NAME                     # the whole host dies: libvirtd and its guests

From Python (the pytest fixtures in tests/lab/conftest.py do this)::

    with Lab("/var/tmp/virtfleet-lab/t1", [HostSpec("h1", memory_mb=2048), ...]) as lab:
        lab.uri("h1")

Everything the lab starts is recorded by pid in DIR/lab.json; ``down`` stops exactly those processes, never others.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from tests.conftest import COLLECTIONS_PATH  # noqa: E402  (puts the collection on sys.path)

if COLLECTIONS_PATH not in sys.path:
    sys.path.insert(0, COLLECTIONS_PATH)

DEFAULT_DIR = os.environ.get("VIRTFLEET_LAB_DIR", "/var/tmp/virtfleet-lab/lab")
HALT_IMAGE = "halt.qcow2"
STATE_FILE = "lab.json"
POOLS = {
    "virtfleet-images": "/var/lib/libvirt/virtfleet/images",
    "virtfleet-instances": "/var/lib/libvirt/virtfleet/instances",
    "virtfleet-records": "/var/lib/libvirt/virtfleet/records",
}
# The directories of a host and where they are mounted in its namespace.
MOUNTS = (("run", "/run/libvirt"), ("etc", "/etc/libvirt"), ("lib", "/var/lib/libvirt"),
          ("cache", "/var/cache/libvirt"), ("log", "/var/log/libvirt"))
_SLOTS = 16  # labs that can run at once on a machine (each needs its own bridges and subnets)
_LOCK = "/run/lock/virtfleet-lab.lock" if os.path.isdir("/run/lock") else "/tmp/virtfleet-lab.lock"
_START_TIMEOUT = 60
_STOP_TIMEOUT = 30
GIB = 1024 ** 3
# Where live migrations send their data between lab hosts (see inventory_config).
MIGRATION_URI = "tcp://127.0.0.1"


@dataclass
class HostSpec:
    """One lab host: what it offers to servers (the rest is reserved for the host) and its host record."""

    name: str
    memory_mb: int = 2048
    vcpus: int = 2
    disk_gb: int = 20
    availability_zone: str = "nova"
    aggregates: dict = field(default_factory=dict)
    traits: list = field(default_factory=list)
    enabled: bool = True
    disabled_reason: str | None = None
    virt_type: str = "qemu"


# The lab `make lab` starts: three hosts of different sizes in two zones, one of them in an "ssd" aggregate.
DEFAULT_SPECS = (
    HostSpec("lab-1", memory_mb=4096, vcpus=2, disk_gb=40, availability_zone="az-1",
             aggregates={"ssd": {"ssd": "true"}}),
    HostSpec("lab-2", memory_mb=2048, vcpus=2, disk_gb=20, availability_zone="az-1"),
    HostSpec("lab-3", memory_mb=1024, vcpus=1, disk_gb=10, availability_zone="az-2"),
)


def default_specs(count):
    specs = list(DEFAULT_SPECS[:count])
    for index in range(len(specs) + 1, count + 1):
        specs.append(HostSpec("lab-%d" % index, memory_mb=1024, vcpus=1, disk_gb=10, availability_zone="az-1"))
    return specs


class LabError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------------------------------
# processes

def pid_alive(pid):
    """Whether ``pid`` runs (a zombie child of ours is reaped and counts as gone)."""
    if not pid:
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _read_pid(path):
    try:
        with open(path) as handle:
            return int(handle.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def _signal(pid, sig):
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pids, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(pid_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return not any(pid_alive(p) for p in pids)


def _stop_pids(pids, timeout=_STOP_TIMEOUT):
    """SIGTERM, then SIGKILL what is left after ``timeout``: only these pids, never by name."""
    pids = [p for p in pids if p and pid_alive(p)]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    if not _wait_gone(pids, timeout):
        for pid in pids:
            if pid_alive(pid):
                _signal(pid, signal.SIGKILL)
        _wait_gone(pids, 5)


# ---------------------------------------------------------------------------------------------------------------------
# libvirt

def _libvirt():
    import libvirt

    libvirt.registerErrorHandler(lambda *args: None, None)
    return libvirt


def _open(uri, timeout=0.0):
    """A connection to ``uri``, retrying for ``timeout`` seconds while the daemon starts."""
    libvirt = _libvirt()
    deadline = time.monotonic() + timeout
    while True:
        try:
            return libvirt.open(uri)
        except libvirt.libvirtError as exc:
            if time.monotonic() >= deadline:
                raise LabError("cannot connect to %s: %s" % (uri, exc))
            time.sleep(0.1)


def _ensure_pool(conn, name, path):
    libvirt = _libvirt()
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError:
        root = ET.Element("pool", {"type": "dir"})
        ET.SubElement(root, "name").text = name
        ET.SubElement(ET.SubElement(root, "target"), "path").text = path
        pool = conn.storagePoolDefineXML(ET.tostring(root, encoding="unicode"), 0)
        pool.build(0)
    if not pool.isActive():
        pool.create(0)
    pool.setAutostart(1)
    return pool


def _network_xml(bridge, subnet_prefix):
    return (
        "<network><name>default</name><forward mode='nat'/>"
        "<bridge name='%s' stp='on' delay='0'/>"
        "<ip address='%s.1' netmask='255.255.255.0'><dhcp><range start='%s.100' end='%s.254'/></dhcp></ip>"
        "</network>" % (bridge, subnet_prefix, subnet_prefix, subnet_prefix))


def _ensure_network(conn, bridge, subnet_prefix):
    libvirt = _libvirt()
    try:
        net = conn.networkLookupByName("default")
    except libvirt.libvirtError:
        net = conn.networkDefineXML(_network_xml(bridge, subnet_prefix))
    if not net.isActive():
        net.create()
    net.setAutostart(1)


def _write_host_record(uri, spec):
    """The host record through the collection's own code (the ``host`` module's), with the lab's reservations."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._host_record import converge_host
    from ansible_collections.virtfleet.compute.plugins.module_utils._libvirt_client import LibvirtClient

    with LibvirtClient(uri) as client:
        node = client.node_info()
        total_mb, total_cpus = int(node[1]), int(node[2])
        pool = client.lookup_pool("virtfleet-instances")
        local_gb = int(client.pool_info(pool)["capacity"] // GIB)
        params = {
            "enabled": spec.enabled,
            "disabled_reason": spec.disabled_reason if not spec.enabled else None,
            "reserved_host_memory_mb": max(total_mb - spec.memory_mb, 0),
            "reserved_host_cpus": max(total_cpus - spec.vcpus, 0),
            "reserved_host_disk_mb": max(local_gb - spec.disk_gb, 0) * 1024,
            "availability_zone": spec.availability_zone,
            "aggregates": spec.aggregates,
            "traits": spec.traits,
            "virt_type": spec.virt_type,
        }
        record = converge_host(client, params)["host"]
        return record, {"memory_mb": total_mb, "vcpus": total_cpus, "local_gb": local_gb}


def make_halt_image(path):
    """A 1 MiB qcow2 whose boot sector halts the CPU: a server that needs no OS and costs no CPU under TCG."""
    raw = path + ".raw"
    sector = bytearray(512)
    sector[0:4] = b"\xfa\xf4\xeb\xfd"  # cli; hlt; jmp back to hlt
    sector[510:512] = b"\x55\xaa"
    with open(raw, "wb") as handle:
        handle.write(bytes(sector))
        handle.truncate(1024 * 1024)
    # qcow2: the image inspector (like Nova's) refuses a raw disk that is a bare boot sector.
    subprocess.check_call(["qemu-img", "convert", "-q", "-O", "qcow2", raw, path])
    os.unlink(raw)
    return path


# ---------------------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _machine_lock():
    """Serializes labs picking a slot and creating their bridges, so two labs never pick the same subnets."""
    with open(_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _used_slots():
    used = set()
    for name in os.listdir("/sys/class/net"):
        if name.startswith("vflab") and "-" in name:
            with contextlib.suppress(ValueError):
                used.add(int(name[5:].split("-", 1)[0]))
    return used


class Lab:
    """N libvirt hosts under ``directory``: start(), stop(), kill(name), revive(name), uri(name)."""

    def __init__(self, directory=DEFAULT_DIR, specs=None):
        self.dir = os.path.abspath(directory)
        self.specs = list(specs) if specs is not None else default_specs(3)
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names) or not names:
            raise LabError("lab host names must be unique and at least one is needed: %s" % names)
        if len(names) > 15:
            raise LabError("a lab has at most 15 hosts")
        self.state = {"slot": None, "hosts": {}}
        self._procs = {}
        self._save_lock = threading.Lock()
        self.owner_pid = os.getpid()  # the process that started the lab (test labs of dead runs are reaped)

    # -- paths ----------------------------------------------------------------------------------------------------

    def host_dir(self, name):
        return os.path.join(self.dir, name)

    def socket(self, name):
        return os.path.join(self.host_dir(name), "run", "libvirt-sock")

    def uri(self, name):
        return "qemu+unix:///system?socket=%s" % self.socket(name)

    @property
    def names(self):
        return [s.name for s in self.specs]

    @property
    def uris(self):
        return dict((n, self.uri(n)) for n in self.names)

    @property
    def halt_image(self):
        return os.path.join(self.dir, HALT_IMAGE)

    # -- state ----------------------------------------------------------------------------------------------------

    def _save(self):
        with self._save_lock:  # hosts are stopped in parallel threads
            state = dict(self.state, dir=self.dir, specs=[asdict(s) for s in self.specs], owner_pid=self.owner_pid)
            tmp = os.path.join(self.dir, STATE_FILE + ".tmp")
            with open(tmp, "w") as handle:
                json.dump(state, handle, indent=2, sort_keys=True)
            os.replace(tmp, os.path.join(self.dir, STATE_FILE))

    @classmethod
    def load(cls, directory=DEFAULT_DIR):
        """The lab recorded in ``directory``, or None."""
        path = os.path.join(os.path.abspath(directory), STATE_FILE)
        try:
            with open(path) as handle:
                state = json.load(handle)
        except (OSError, ValueError):
            return None
        lab = cls(directory, [HostSpec(**s) for s in state.get("specs") or []])
        lab.state = {"slot": state.get("slot"), "hosts": state.get("hosts") or {}}
        lab.owner_pid = state.get("owner_pid") or 0
        return lab

    @classmethod
    def reap_stale(cls, root, prefix):
        """Stop the labs under ``root`` named ``prefix*`` whose starting process is gone (a killed test run)."""
        for entry in sorted(os.listdir(root)) if os.path.isdir(root) else ():
            if entry.startswith(prefix):
                lab = cls.load(os.path.join(root, entry))
                if lab is not None and not pid_alive(lab.owner_pid):
                    with contextlib.suppress(LabError):
                        lab.stop()

    # -- lifecycle ------------------------------------------------------------------------------------------------

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        """Start every host, give it pools, network and host record; on any failure stop what was started."""
        if shutil.which("libvirtd") is None or shutil.which("unshare") is None:
            raise LabError("the lab needs libvirtd and unshare (make system-deps installs them)")
        if os.geteuid() != 0:
            raise LabError("the lab needs root: it mounts the hosts' directories in private mount namespaces")
        old = Lab.load(self.dir)
        if old is not None:
            old.stop(remove=False)
        os.makedirs(self.dir, exist_ok=True)
        # QEMU runs as libvirt-qemu and must reach the disks under this directory.
        os.chmod(self.dir, 0o755)
        for _sub, target in MOUNTS:
            # Mount points; /run/libvirt only exists once the machine's own libvirtd ran.
            os.makedirs(target, exist_ok=True)
        try:
            with _machine_lock():
                free = sorted(set(range(_SLOTS)) - _used_slots())
                if not free:
                    raise LabError("all %d lab slots are taken (bridges vflab*-* exist)" % _SLOTS)
                self.state["slot"] = free[0]
                for index, spec in enumerate(self.specs, 1):
                    self._prepare_host(spec, index)
                self._save()
                # Daemons start in parallel: the slow part is each libvirtd probing QEMU's capabilities.
                for spec in self.specs:
                    self._spawn(spec.name)
                self._save()
                for spec in self.specs:
                    self._setup_host(spec)
            make_halt_image(self.halt_image)
        except BaseException:
            self.stop(remove=False)
            raise
        self._save()
        return self

    def _prepare_host(self, spec, index):
        root = self.host_dir(spec.name)
        if os.path.exists(root):
            shutil.rmtree(root)
        for sub, _target in MOUNTS:
            if sub != "etc":
                os.makedirs(os.path.join(root, sub))
        etc = os.path.join(root, "etc")
        shutil.copytree("/etc/libvirt", etc, symlinks=True)
        # The machine's own domains, pools and networks must not show up on (and be autostarted by) a lab host.
        for sub in ("qemu", "qemu/autostart", "qemu/networks", "qemu/networks/autostart", "storage",
                    "storage/autostart"):
            path = os.path.join(etc, sub)
            for entry in os.listdir(path) if os.path.isdir(path) else ():
                if entry.endswith(".xml"):
                    os.unlink(os.path.join(path, entry))
        conf = os.path.join(etc, "libvirtd.conf")
        with open(conf) as handle:
            lines = [line for line in handle if not line.lstrip().startswith("host_uuid")]
        host_uuid = str(uuidlib.uuid4())
        lines.append('\nhost_uuid = "%s"\n' % host_uuid)
        with open(conf, "w") as handle:
            handle.writelines(lines)
        slot = self.state["slot"]
        # The daemons share the machine's ports but allocate them each on their own: two hosts starting a guest at
        # the same moment would both pick VNC port 5901, and one guest would fail to start. Disjoint ranges per host.
        number = slot * 16 + index
        with open(os.path.join(etc, "qemu.conf"), "a") as handle:
            handle.write("\n# virtfleet lab host %s: ports of its own\n" % spec.name)
            handle.write("remote_display_port_min = %d\nremote_display_port_max = %d\n"
                         % (6000 + number * 50, 6000 + number * 50 + 49))
            handle.write("remote_websocket_port_min = %d\nremote_websocket_port_max = %d\n"
                         % (20000 + number * 50, 20000 + number * 50 + 49))
            handle.write("migration_port_min = %d\nmigration_port_max = %d\n"
                         % (40000 + number * 20, 40000 + number * 20 + 19))
        self.state["hosts"][spec.name] = {
            "dir": root,
            "uri": self.uri(spec.name),
            "host_uuid": host_uuid,
            "bridge": "vflab%d-%d" % (slot, index),
            "subnet": "10.217.%d.0/24" % (slot * 16 + index),
            "unshare_pid": 0,
            "libvirtd_pid": 0,
            "virtlogd_pid": 0,
        }

    def _spawn(self, name):
        info = self.state["hosts"][name]
        root = info["dir"]
        mounts = " && ".join("mount --bind %s %s" % (shlex.quote(os.path.join(root, sub)), target)
                             for sub, target in MOUNTS)
        # Its own host name too (a UTS namespace): libvirt reports it, and claims and results name the host by it,
        # as they would on a real cloud, instead of this machine's name for every host.
        script = "%s && hostname %s && virtlogd -d -p /run/libvirt/virtlogd.pid && " \
                 "exec libvirtd -p /run/libvirt/libvirtd.pid" % (mounts, shlex.quote(name))
        for stale in ("libvirtd.pid", "virtlogd.pid", "libvirt-sock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(root, "run", stale))
        with open(os.path.join(root, "daemon.log"), "ab") as log:
            # A session of its own: a Ctrl-C meant for the test run must not kill the hosts half way through.
            proc = subprocess.Popen(["unshare", "--mount", "--uts", "--propagation", "private", "--fork", "sh", "-c",
                                     script],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                    close_fds=True)
        self._procs[name] = proc
        info["unshare_pid"] = proc.pid

    def _wait_daemon(self, name):
        info = self.state["hosts"][name]
        run = os.path.join(info["dir"], "run")
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            info["libvirtd_pid"] = info["libvirtd_pid"] or _read_pid(os.path.join(run, "libvirtd.pid"))
            info["virtlogd_pid"] = info["virtlogd_pid"] or _read_pid(os.path.join(run, "virtlogd.pid"))
            if info["libvirtd_pid"] and os.path.exists(self.socket(name)):
                break
            if not pid_alive(info["unshare_pid"]) or time.monotonic() > deadline:
                raise LabError("libvirtd of lab host %s did not start; see %s" % (
                    name, os.path.join(info["dir"], "daemon.log")))
            time.sleep(0.05)
        return _open(self.uri(name), timeout=max(deadline - time.monotonic(), 1.0))

    def _setup_host(self, spec):
        info = self.state["hosts"][spec.name]
        conn = self._wait_daemon(spec.name)
        try:
            for pool, path in POOLS.items():
                _ensure_pool(conn, pool, path)
            _ensure_network(conn, info["bridge"], info["subnet"].rsplit(".", 1)[0])
        finally:
            conn.close()
        _record, totals = _write_host_record(self.uri(spec.name), spec)
        info["totals"] = totals

    # -- faults ---------------------------------------------------------------------------------------------------

    def kill(self, name):
        """SIGKILL the host's libvirtd as a crash would: guests and dnsmasq keep running, the URI stops answering."""
        info = self.state["hosts"][name]
        pid = info["libvirtd_pid"]
        if pid_alive(pid):
            _signal(pid, signal.SIGKILL)
            _wait_gone([pid], 10)
        # virtlogd would keep the namespace (and the guests' logs) alive; it goes too, as on a crashed host.
        _stop_pids([info["virtlogd_pid"], info["unshare_pid"]], timeout=10)
        self._save()

    def crash(self, name):
        """The whole host dies: its libvirtd as in kill(), and its guests with it (by the pids QEMU recorded)."""
        self.kill(name)
        _stop_pids(self._leftover_guests(self.state["hosts"][name]), timeout=10)
        self._save()

    def alive(self, name):
        return pid_alive(self.state["hosts"][name]["libvirtd_pid"])

    def revive(self, name):
        """Start a killed host's libvirtd again on the same state (it finds its running guests and networks)."""
        if self.alive(name):
            return
        info = self.state["hosts"][name]
        info.update(unshare_pid=0, libvirtd_pid=0, virtlogd_pid=0)
        self._spawn(name)
        self._save()
        self._wait_daemon(name).close()
        self._save()

    def set_host_record(self, name, **changes):
        """Change a host's spec (enabled, availability_zone, memory_mb...) and write its record again."""
        spec = next(s for s in self.specs if s.name == name)
        for key, value in changes.items():
            setattr(spec, key, value)
        record, totals = _write_host_record(self.uri(name), spec)
        self.state["hosts"][name]["totals"] = totals
        self._save()
        return record

    # -- teardown -------------------------------------------------------------------------------------------------

    def stop(self, remove=True):
        """Stop every host by pid: its guests and network through libvirt first (so no QEMU, dnsmasq, bridge or
        firewall rule outlives it), then libvirtd, virtlogd and the namespace. A killed host is revived for that."""
        errors = []

        def stop_one(name, info):
            try:
                self._stop_host(name, info)
            except Exception as exc:  # noqa: BLE001 - tear down the other hosts whatever happens to one
                errors.append("%s: %s" % (name, exc))

        # In parallel: destroying a host's guests and waiting for its daemons takes seconds, the hosts are apart.
        threads = [threading.Thread(target=stop_one, args=item) for item in list(self.state["hosts"].items())]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for proc in self._procs.values():
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
        self._procs.clear()
        if remove and not errors:
            shutil.rmtree(self.dir, ignore_errors=True)
        elif os.path.isdir(self.dir):
            self._save()
        if errors:
            raise LabError("lab teardown incomplete: %s" % "; ".join(errors))

    def _stop_host(self, name, info):
        if not info.get("unshare_pid") and not info.get("libvirtd_pid"):
            return
        if not pid_alive(info.get("libvirtd_pid")) and os.path.isdir(info["dir"]):
            with contextlib.suppress(LabError):
                self.revive(name)
        if pid_alive(info.get("libvirtd_pid")):
            self._clean_through_libvirt(name)
        _stop_pids([info.get("libvirtd_pid"), info.get("virtlogd_pid")])
        _stop_pids([info.get("unshare_pid")], timeout=5)
        leftovers = self._leftover_guests(info)
        if leftovers:
            _stop_pids(leftovers, timeout=10)
        bridge = info.get("bridge")
        if bridge and os.path.exists("/sys/class/net/%s" % bridge):
            # Only if libvirt could not stop the network itself (it then also left dnsmasq: stop it by its pid).
            _stop_pids(self._dnsmasq_pids(info), timeout=5)
            subprocess.call(["ip", "link", "delete", bridge], stderr=subprocess.DEVNULL)
        info.update(unshare_pid=0, libvirtd_pid=0, virtlogd_pid=0)

    def _clean_through_libvirt(self, name):
        libvirt = _libvirt()
        conn = _open(self.uri(name), timeout=5)
        try:
            for dom in conn.listAllDomains(0):
                with contextlib.suppress(libvirt.libvirtError):
                    if dom.isActive():
                        dom.destroy()
            for net in conn.listAllNetworks(0):
                with contextlib.suppress(libvirt.libvirtError):
                    if net.isActive():
                        net.destroy()
        finally:
            conn.close()

    @staticmethod
    def _leftover_guests(info):
        """QEMU processes of this host still running (libvirt was unreachable): their pid files say which."""
        qemu_run = os.path.join(info["dir"], "run", "qemu")
        pids = []
        for entry in os.listdir(qemu_run) if os.path.isdir(qemu_run) else ():
            if entry.endswith(".pid"):
                pid = _read_pid(os.path.join(qemu_run, entry))
                if pid_alive(pid):
                    pids.append(pid)
        return pids

    @staticmethod
    def _dnsmasq_pids(info):
        network_run = os.path.join(info["dir"], "run", "network")
        pids = []
        for entry in os.listdir(network_run) if os.path.isdir(network_run) else ():
            if entry.endswith(".pid"):
                pid = _read_pid(os.path.join(network_run, entry))
                if pid_alive(pid):
                    pids.append(pid)
        return pids

    # -- inventory ------------------------------------------------------------------------------------------------

    def inventory_config(self, path, **options):
        """Write a ``virtfleet.compute.libvirt`` inventory source for this lab; ``options`` are plugin options.

        Every host gets ``virtfleet_migration_uri``: the hosts share this machine's network stack, and their own host
        names (which libvirt would send migration data to by default) resolve nowhere.
        """
        config = {"plugin": "virtfleet.compute.libvirt",
                  "hypervisors": [{"name": n, "uri": self.uri(n), "vars": {"virtfleet_migration_uri": MIGRATION_URI}}
                                  for n in self.names]}
        config.update(options)
        with open(path, "w") as handle:
            # JSON is YAML: no YAML library needed here.
            json.dump(config, handle, indent=2)
        return path

    def describe(self):
        lines = []
        for spec in self.specs:
            info = self.state["hosts"].get(spec.name, {})
            lines.append("%-8s %-5s %-9s az=%-6s mem=%5d MiB vcpus=%d disk=%3d GiB %s %s  %s" % (
                spec.name, "up" if pid_alive(info.get("libvirtd_pid")) else "DOWN",
                "enabled" if spec.enabled else "disabled", spec.availability_zone, spec.memory_mb, spec.vcpus,
                spec.disk_gb, info.get("bridge", "-"), info.get("subnet", "-"), self.uri(spec.name)))
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description="Several libvirt compute hosts on this machine, for trying and "
                                                 "testing multi-host virtfleet.compute.")
    parser.add_argument("command", choices=("up", "down", "status", "kill", "crash", "revive"))
    parser.add_argument("name", nargs="?", help="host name (kill, crash, revive)")
    parser.add_argument("--dir", default=DEFAULT_DIR, help="lab directory (default %(default)s)")
    parser.add_argument("--hosts", type=int, default=3, help="number of hosts for up (default 3)")
    args = parser.parse_args(argv)

    if args.command == "up":
        lab = Lab(args.dir, default_specs(args.hosts))
        started = time.monotonic()
        lab.start()
        print("lab of %d hosts up in %.1f s (%s):" % (len(lab.names), time.monotonic() - started, lab.dir))
        print(lab.describe())
        print("halt image (boots, halts, needs no OS): %s" % lab.halt_image)
        print("try: . .venv/bin/activate; ansible-playbook -i inventory/lab playbooks/site.yml   (stop with: "
              "make lab-down)")
        print("a host dies: python tests/lab/lab.py crash lab-2; it comes back: python tests/lab/lab.py revive lab-2 "
              "(docs/maintenance.md)")
        return 0
    lab = Lab.load(args.dir)
    if lab is None:
        print("no lab in %s" % args.dir)
        return 0
    if args.command == "down":
        lab.stop()
        print("lab in %s stopped and removed" % args.dir)
    elif args.command == "status":
        print(lab.describe())
    elif args.command in ("kill", "crash", "revive"):
        if args.name not in lab.names:
            parser.error("unknown host %r; the lab has %s" % (args.name, ", ".join(lab.names)))
        getattr(lab, args.command)(args.name)
        print(lab.describe())
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LabError as exc:
        sys.exit("lab: %s" % exc)
