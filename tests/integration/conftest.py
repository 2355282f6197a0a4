"""Fixtures for integration tests: a real libvirtd, the collection's pools, base images, playbook runs.

These tests need a running libvirt daemon (``.ci/run`` starts one; locally: ``virtlogd -d && libvirtd -d``). They
fail, never skip, when it is missing: a skipped integration test would prove nothing.
"""
import json
import os
import re
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ET

import pytest

from tests.conftest import COLLECTIONS_PATH, REPO_ROOT

URI = os.environ.get("VIRTFLEET_TEST_URI", "qemu:///system")
IMAGE_POOL = "virtfleet-images"
INSTANCE_POOL = "virtfleet-instances"
POOL_PATHS = {
    IMAGE_POOL: "/var/lib/libvirt/virtfleet/images",
    INSTANCE_POOL: "/var/lib/libvirt/virtfleet/instances",
    "virtfleet-records": "/var/lib/libvirt/virtfleet/records",
}
# The cloud image built by `make image` (roles/image_builder); tests that boot a real guest use it.
BOOT_IMAGE_FILE = os.environ.get("VIRTFLEET_IMAGE", "/var/cache/virtfleet/debian-12.qcow2")
BOOT_IMAGE = "debian-12"
HALT_IMAGE = "vf-test-halt"


def _client():
    from ansible_collections.virtfleet.compute.plugins.module_utils._libvirt_client import LibvirtClient

    return LibvirtClient(URI)


@pytest.fixture(scope="session")
def uri():
    client = _client()
    try:
        client.hostname()
    except Exception as exc:  # noqa: BLE001
        pytest.fail("integration tests need libvirtd at %s: %s" % (URI, exc))
    finally:
        client.close()
    return URI


@pytest.fixture(scope="session")
def client(uri):
    client = _client()
    yield client
    client.close()


def ensure_pool(client, name, path):
    pool = client.find_pool(name)
    if pool is None:
        root = ET.Element("pool", {"type": "dir"})
        ET.SubElement(root, "name").text = name
        ET.SubElement(ET.SubElement(root, "target"), "path").text = path
        pool = client.define_pool(ET.tostring(root, encoding="unicode"))
        client.build_pool(pool)
    if not pool.isActive():
        client.start_pool(pool)
    return pool


@pytest.fixture(scope="session")
def pools(client):
    return dict((name, ensure_pool(client, name, path)) for name, path in POOL_PATHS.items())


@pytest.fixture(scope="session")
def default_network(client):
    net = client.lookup_network("default")
    assert net is not None, "libvirt's default NAT network is missing"
    if not client.network_active(net):
        client.start_network(net)
    return "default"


def import_image(client, name, path, fmt):
    """Import a local image file with the image module's own code (inspected, checksummed, recorded)."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._image import converge_image

    return converge_image(client, {"name": name, "src": path, "disk_format": fmt, "state": "present"})


def make_halt_image(path):
    """A 1 MiB disk whose boot sector halts the CPU: a server that needs no OS and costs no CPU under TCG."""
    raw = path + ".raw"
    sector = bytearray(512)
    sector[0:4] = b"\xfa\xf4\xeb\xfd"  # cli; hlt; jmp back to hlt
    sector[510:512] = b"\x55\xaa"
    with open(raw, "wb") as handle:
        handle.write(bytes(sector))
        handle.truncate(1024 * 1024)
    # Shipped as qcow2: the image inspector (like Nova's) refuses a raw disk that is a bare boot sector.
    subprocess.check_call(["qemu-img", "convert", "-q", "-O", "qcow2", raw, path])
    os.unlink(raw)
    return path


@pytest.fixture(scope="session")
def halt_image(client, pools, tmp_path_factory):
    """Volume name of the OS-less halting base image in virtfleet-images."""
    path = make_halt_image(str(tmp_path_factory.mktemp("halt") / "halt.qcow2"))
    import_image(client, HALT_IMAGE, path, "qcow2")
    return HALT_IMAGE


@pytest.fixture(scope="session")
def boot_image(client, pools):
    """Volume name of the Debian cloud image (cloud-init, SSH) in virtfleet-images."""
    if not os.path.exists(BOOT_IMAGE_FILE):
        pytest.fail("the cloud image %s is missing: run `make image` first (the test command does)" % BOOT_IMAGE_FILE)
    import_image(client, BOOT_IMAGE, BOOT_IMAGE_FILE, "qcow2")
    return BOOT_IMAGE


@pytest.fixture(scope="session")
def ssh_key(tmp_path_factory):
    """(private key path, public key text) of a throw-away key pair."""
    directory = tmp_path_factory.mktemp("ssh")
    key = str(directory / "id_ed25519")
    subprocess.check_call(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key])
    with open(key + ".pub") as handle:
        return key, handle.read().strip()


def ssh(ip, key, command, user="debian", timeout=300):
    """Run ``command`` in a guest over SSH, retrying while sshd comes up; returns stdout.

    The timeout is generous on purpose: under TCG on two cores a guest that boots in 34 s alone can take minutes when
    the machine is busy. When it runs out, the message says how busy the machine was and which guests were running,
    so a failure in CI can be told apart from a guest that never came up."""
    import time

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        proc = subprocess.run(
            ["ssh", "-i", key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "ConnectTimeout=5", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "%s@%s" % (user, ip), command],
            capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode == 0:
            return proc.stdout
        last = proc.stderr
        time.sleep(2)
    raise AssertionError("ssh %s@%s %r failed until the timeout (%d s): %s\n%s"
                         % (user, ip, command, timeout, last, machine_load()))


def running_guests():
    """{pid: guest name} of every QEMU process on this machine, whichever libvirtd started it."""
    out = subprocess.run(["pgrep", "-a", "qemu-system"], capture_output=True, text=True, check=False).stdout
    guests = {}
    for line in out.splitlines():
        pid, _sep, cmd = line.partition(" ")
        name = re.search(r"-name (?:guest=)?([^,\s]+)", cmd)
        guests[pid] = name.group(1) if name else cmd[:80]
    return guests


def machine_load():
    """One line on how busy the machine is: load averages and the guests running (for failure messages)."""
    with open("/proc/loadavg") as handle:
        load = " ".join(handle.read().split()[:3])
    guests = sorted(running_guests().values())
    return "machine load %s; %d guest(s) running: %s" % (load, len(guests), ", ".join(guests) or "none")


@pytest.fixture(autouse=True, scope="module")
def _report_guests_left_running(request):
    """Warn (in pytest's summary) when a test module leaves QEMU processes behind: a guest left running by one test
    slows every later boot test on these two-core machines, which is how a boot test times out far from its cause."""
    before = set(running_guests())
    yield
    left = dict((pid, name) for pid, name in running_guests().items() if pid not in before)
    if left:
        warnings.warn("%s left %d guest(s) running: %s" % (request.module.__name__, len(left),
                                                           ", ".join(sorted(left.values()))), stacklevel=2)


class PlaybookRun:
    def __init__(self, proc, stats):
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.stats = stats

    def __repr__(self):
        return "PlaybookRun(rc=%s)" % self.rc

    def assert_ok(self):
        """Fail the test with the end of the playbook's output (pytest would truncate an assert message)."""
        if self.rc != 0 or any(s.get("failed") or s.get("unreachable") for s in self.stats.values()):
            pytest.fail("playbook failed (rc=%s)\n%s\n%s" % (self.rc, self.stdout[-8000:], self.stderr[-3000:]),
                        pytrace=False)
        return self


def ansible_env(extra=None):
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS_PATH,
        "ANSIBLE_CONFIG": os.path.join(REPO_ROOT, "ansible.cfg"),
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
    })
    env.update(extra or {})
    return env


def run_playbook(path, check=False, diff=False, inventory=None, extra_args=(), env=None, **extravars):
    """Run a playbook against localhost (or ``inventory``); returns a PlaybookRun with per-host stats."""
    if not os.path.isabs(path):
        path = os.path.join(REPO_ROOT, path)
    vars_ = dict({"virtfleet_uri": URI}, **extravars)
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), path,
           "-e", json.dumps(vars_)]
    cmd += ["-i", inventory] if inventory else ["-i", "localhost,", "-c", "local"]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    cmd.extend(extra_args)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ansible_env(dict(
        env or {}, ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default")),
        timeout=3600, check=False)
    return PlaybookRun(proc, _recap(proc.stdout))


def _recap(stdout):
    stats = {}
    in_recap = False
    for line in stdout.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        if in_recap and ":" in line:
            host, _sep, rest = line.partition(":")
            fields = dict(part.split("=") for part in rest.split() if "=" in part)
            stats[host.strip()] = dict((k, int(v)) for k, v in fields.items())
    return stats


@pytest.fixture(scope="session")
def playbook():
    return run_playbook
