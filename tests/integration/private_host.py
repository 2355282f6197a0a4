"""A compute host of its own on this machine: a private libvirtd inside a network namespace.

Used by tests/integration/test_compute_node_role.py (through pytest) and by the compute_node role's molecule
scenario (roles/compute_node/molecule/default, through the command line below, from molecule's create and destroy
playbooks). Everything the compute_node role does to networking happens inside the namespace: the private libvirtd
runs there (so its NAT networks, dnsmasq and firewall rules live there too), and so do the commands of the role when
it reaches the host over SSH (molecule) or runs inside the namespace (pytest). The machine's own interfaces, its
libvirtd and its records are never touched.

Each host has:

* its own libvirtd and virtlogd in a private mount namespace (docs: ENVIRONMENT.md), with their own config, state and
  socket: ``qemu+unix:///system?socket=DIR/run/libvirt-sock``;
* a network namespace NETNS with a veth pair ``PREFIX-veth0``/``PREFIX-veth1`` inside it, standing in for the
  physical port a bridge gets (the kernel here has no dummy interfaces);
* with ``ssh``: one more veth pair from the machine into the namespace (``PREFIX-h``, 10.254.N.1/30 outside,
  10.254.N.2/30 inside) and an sshd of its own listening on 10.254.N.2, which lets root in with a key made for this
  host only: a real remote target for Ansible, as a compute host is.

Command line (molecule's create/destroy run it; state in DIR/host.json; every process is stopped by its pid)::

    python tests/integration/private_host.py up --dir DIR --netns NAME --prefix PREFIX [--ssh-subnet N]
    python tests/integration/private_host.py down --dir DIR
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import uuid

STATE_FILE = "host.json"


def _sh(*cmd, **kwargs):
    return subprocess.run(list(cmd), check=kwargs.pop("check", True), capture_output=True, text=True, **kwargs)


def _read_pid(path):
    try:
        with open(path) as handle:
            return int(handle.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def _stop_pid(pid, timeout=10.0):
    if not pid:
        return
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while os.path.exists("/proc/%d" % pid) and time.monotonic() < deadline:
        try:
            # Reap it if it is our child (pytest's Popen), or it stays a zombie and /proc keeps it.
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    if os.path.exists("/proc/%d" % pid):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


class PrivateHost:
    """A libvirtd with its own config, state and socket (ENVIRONMENT.md), inside network namespace ``netns``."""

    def __init__(self, root=None, netns="vf-t5-ns", prefix="vf-t5", ssh_subnet=None):
        # Short: the socket path must fit in sun_path (108 bytes).
        self.root = root or _mkdtemp(prefix)
        self.netns = netns
        self.prefix = prefix
        self.ssh_subnet = ssh_subnet
        self.uri = "qemu+unix:///system?socket=%s/run/libvirt-sock" % self.root
        self.venv = os.path.join(self.root, "venv")
        self.proc = None

    # -- the namespace and its daemons -------------------------------------------------------------------------------

    def setup(self):
        root = self.root
        for sub in ("run", "lib", "cache", "log"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        shutil.copytree("/etc/libvirt", os.path.join(root, "etc"), symlinks=True)
        # The copy must not bring the machine's domains, networks and pools along.
        for sub in ("qemu", "qemu/networks", "qemu/networks/autostart", "storage", "storage/autostart"):
            directory = os.path.join(root, "etc", sub)
            for name in os.listdir(directory) if os.path.isdir(directory) else []:
                if name.endswith(".xml"):
                    os.unlink(os.path.join(directory, name))
        with open(os.path.join(root, "etc", "libvirtd.conf"), "a") as handle:
            handle.write('\nhost_uuid = "%s"\n' % uuid.uuid4())
        _sh("ip", "netns", "add", self.netns)
        _sh("ip", "-n", self.netns, "link", "set", "lo", "up")
        _sh("ip", "-n", self.netns, "link", "add", self.prefix + "-veth0", "type", "veth",
            "peer", "name", self.prefix + "-veth1")
        _sh("ip", "-n", self.netns, "link", "set", self.prefix + "-veth1", "up")
        if self.ssh_subnet is not None:
            self._setup_ssh()
        self.start()

    def start(self, listen=False):
        root = self.root
        script = (
            "mount --bind {r}/run /run/libvirt && mount --bind {r}/etc /etc/libvirt && "
            "mount --bind {r}/lib /var/lib/libvirt && mount --bind {r}/cache /var/cache/libvirt && "
            "mount --bind {r}/log /var/log/libvirt && virtlogd -d -p /run/libvirt/virtlogd.pid && "
            "exec libvirtd -p /run/libvirt/libvirtd.pid {listen}"
        ).format(r=root, listen="--listen" if listen else "")
        with open(os.path.join(root, "libvirtd.err"), "a") as err:
            # A session of its own: the daemon outlives the command line run that started it (molecule create).
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--propagation", "private", "--fork",
                 "sh", "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                start_new_session=True)
        sock = os.path.join(root, "run", "libvirt-sock")
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the private libvirtd did not start: %s" % self.log())
            time.sleep(0.1)
        time.sleep(0.3)

    def stop(self):
        """Stop what the daemon started (domains, networks and their dnsmasq), then the daemons, by their pids."""
        import libvirt

        libvirt.registerErrorHandler(lambda *args: None, None)
        try:
            conn = libvirt.open(self.uri)
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                dom.destroy()
            for net in conn.listAllNetworks(libvirt.VIR_CONNECT_LIST_NETWORKS_ACTIVE):
                net.destroy()
            conn.close()
        except libvirt.libvirtError:
            pass
        for name in ("libvirtd", "virtlogd"):
            _stop_pid(_read_pid(os.path.join(self.root, "run", name + ".pid")))
        if self.proc is not None:
            self.proc.wait(timeout=30)
            self.proc = None
        sock = os.path.join(self.root, "run", "libvirt-sock")
        if os.path.exists(sock):
            os.unlink(sock)

    def teardown(self):
        try:
            self.stop()
        finally:
            _stop_pid(_read_pid(os.path.join(self.root, "ssh", "sshd.pid")))
            if self.ssh_subnet is not None:
                _sh("ip", "link", "del", self.prefix + "-h", check=False)
            _sh("ip", "netns", "del", self.netns, check=False)
            shutil.rmtree(self.root, ignore_errors=True)

    def log(self):
        with open(os.path.join(self.root, "libvirtd.err")) as handle:
            return handle.read()[-2000:]

    def set_conf(self, key, value):
        """Set (or with value None, remove) a setting of this host's libvirtd.conf; takes effect on the next start."""
        path = os.path.join(self.root, "etc", "libvirtd.conf")
        with open(path) as handle:
            lines = [line for line in handle if not line.startswith(key + " =")]
        if value is not None:
            lines.append("%s = %s\n" % (key, value))
        with open(path, "w") as handle:
            handle.writelines(lines)

    # -- SSH into the namespace ----------------------------------------------------------------------------------------

    @property
    def ssh_address(self):
        return "10.254.%d.2" % self.ssh_subnet

    @property
    def ssh_key(self):
        return os.path.join(self.root, "ssh", "id_ed25519")

    def _setup_ssh(self):
        ssh = os.path.join(self.root, "ssh")
        os.makedirs(ssh, mode=0o700, exist_ok=True)
        outside, inside = "10.254.%d.1/30" % self.ssh_subnet, self.ssh_address + "/30"
        _sh("ip", "link", "add", self.prefix + "-h", "type", "veth", "peer", "name", self.prefix + "-n",
            "netns", self.netns)
        _sh("ip", "addr", "add", outside, "dev", self.prefix + "-h")
        _sh("ip", "link", "set", self.prefix + "-h", "up")
        _sh("ip", "-n", self.netns, "addr", "add", inside, "dev", self.prefix + "-n")
        _sh("ip", "-n", self.netns, "link", "set", self.prefix + "-n", "up")
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(ssh, "host_ed25519"))
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "virtfleet molecule", "-f", self.ssh_key)
        shutil.copy(self.ssh_key + ".pub", os.path.join(ssh, "authorized_keys"))
        with open(os.path.join(ssh, "sshd_config"), "w") as handle:
            handle.write("\n".join([
                "ListenAddress %s" % self.ssh_address,
                "HostKey %s/host_ed25519" % ssh,
                "PidFile %s/sshd.pid" % ssh,
                "AuthorizedKeysFile %s/authorized_keys" % ssh,
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                # The key lives in a temporary directory, not in ~root/.ssh with its usual ownership checks.
                "StrictModes no",
                "Subsystem sftp internal-sftp",
                "",
            ]))
        # sshd's privilege separation directory (made by its init script or systemd unit, neither of which ran).
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        _sh("ip", "netns", "exec", self.netns, sshd, "-f", os.path.join(ssh, "sshd_config"),
            "-E", os.path.join(ssh, "sshd.log"))
        deadline = time.monotonic() + 10
        while not _read_pid(os.path.join(ssh, "sshd.pid")):
            if time.monotonic() > deadline:
                raise RuntimeError("sshd did not start in %s" % self.netns)
            time.sleep(0.1)

    # -- state for the command line ------------------------------------------------------------------------------------

    def save(self):
        state = {"root": self.root, "netns": self.netns, "prefix": self.prefix, "ssh_subnet": self.ssh_subnet,
                 "uri": self.uri}
        if self.ssh_subnet is not None:
            state.update(ssh_address=self.ssh_address, ssh_key=self.ssh_key)
        with open(os.path.join(self.root, STATE_FILE), "w") as handle:
            json.dump(state, handle, indent=2, sort_keys=True)
        return state

    @classmethod
    def load(cls, root):
        try:
            with open(os.path.join(root, STATE_FILE)) as handle:
                state = json.load(handle)
        except (OSError, ValueError):
            return None
        return cls(state["root"], state["netns"], state["prefix"], state.get("ssh_subnet"))


def _mkdtemp(prefix):
    import tempfile

    return tempfile.mkdtemp(prefix=prefix + "-", dir="/tmp")


def main(argv=None):
    parser = argparse.ArgumentParser(description="A private libvirtd in a network namespace, reachable over SSH.")
    parser.add_argument("command", choices=("up", "down"))
    parser.add_argument("--dir", required=True, help="the host's directory (short: it holds the libvirt socket)")
    parser.add_argument("--netns", default="vf-mol-ns")
    parser.add_argument("--prefix", default="vf-mol", help="prefix of the interfaces made (at most 8 characters)")
    parser.add_argument("--ssh-subnet", type=int, default=None, help="N of 10.254.N.0/30 for SSH into the namespace")
    args = parser.parse_args(argv)
    root = os.path.abspath(args.dir)
    existing = PrivateHost.load(root)
    if existing is not None:
        # A host left by an interrupted run: take it down before a new one comes up (and for `down`).
        existing.teardown()
    elif args.command == "up" and (os.path.exists(root) or args.netns in _sh("ip", "netns", "list").stdout):
        shutil.rmtree(root, ignore_errors=True)
        _sh("ip", "netns", "del", args.netns, check=False)
        if args.ssh_subnet is not None:
            _sh("ip", "link", "del", args.prefix + "-h", check=False)
    if args.command == "down":
        return 0
    os.makedirs(root)
    host = PrivateHost(root, args.netns, args.prefix, args.ssh_subnet)
    try:
        host.setup()
    except Exception:
        host.teardown()
        raise
    json.dump(host.save(), sys.stdout, indent=2, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
