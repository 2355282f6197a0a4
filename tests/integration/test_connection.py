"""Opening a connection: bounded in time whatever the transport does, and plain TCP refused unless allowed."""
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import HostUnavailableError, ValidationError
from ansible_collections.virtfleet.compute.plugins.module_utils._libvirt_client import LibvirtClient
from tests.conftest import COLLECTIONS_PATH


class SilentPeer:
    """A TCP listener that accepts connections and never sends a byte (an SSH port behind a stuck proxy)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.accepted = []
        self.closed_by_peer = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while True:
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                return
            self.accepted.append(time.monotonic())
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn):
        # Read what the client says (its SSH banner) and answer nothing, until the client hangs up.
        while conn.recv(4096):
            pass
        self.closed_by_peer.append(time.monotonic())
        conn.close()

    def close(self):
        self.sock.close()


@pytest.fixture
def silent_peer():
    peer = SilentPeer()
    yield peer
    peer.close()


def test_ssh_to_a_silent_peer_times_out_with_the_uri_and_time(silent_peer):
    uri = "qemu+ssh://root@127.0.0.1:%d/system?no_verify=1" % silent_peer.port
    client = LibvirtClient(uri, connect_timeout=2)
    started = time.monotonic()
    with pytest.raises(HostUnavailableError) as raised:
        client.hostname()
    waited = time.monotonic() - started
    assert 2 <= waited < 4, waited
    assert silent_peer.accepted, "ssh never reached the listener"
    message = str(raised.value)
    assert uri in message and "within 2 seconds" in message and "connect_timeout" in message, message
    # ssh itself was given ConnectTimeout (the timeout plus a few seconds), so it hangs up by itself.
    deadline = time.monotonic() + 15
    while not silent_peer.closed_by_peer and time.monotonic() < deadline:
        time.sleep(0.2)
    assert silent_peer.closed_by_peer, "ssh kept waiting on the silent peer"
    assert silent_peer.closed_by_peer[0] - silent_peer.accepted[0] < 2 + 5 + 3


def test_module_fails_within_connect_timeout(silent_peer, tmp_path):
    uri = "qemu+ssh://root:secret@127.0.0.1:%d/system?no_verify=1" % silent_peer.port
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"uri": uri, "connect_timeout": 2}}))
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "ansible_collections.virtfleet.compute.plugins.modules.server_info", str(args)],
        capture_output=True, text=True, timeout=20, check=False,
        env=dict(os.environ, PYTHONPATH=COLLECTIONS_PATH))
    assert time.monotonic() - started < 10
    result = json.loads(proc.stdout)
    assert result["failed"] and result["field"] == "uri"
    assert "127.0.0.1:%d" % silent_peer.port in result["msg"] and "within 2 seconds" in result["msg"]
    assert "secret" not in result["msg"]


@pytest.mark.parametrize("uri", ["qemu+tcp://127.0.0.1/system", "QEMU+TCP://host:16509/system"])
def test_plain_tcp_is_refused_unless_allowed(uri):
    with pytest.raises(ValidationError) as raised:
        LibvirtClient(uri).hostname()
    assert raised.value.field == "uri"
    assert "no encryption" in str(raised.value) and "allow_insecure_tcp" in str(raised.value)


def test_plain_tcp_is_tried_when_allowed():
    # Allowed, the URI goes to libvirt: nothing listens on port 1, so the refusal is the connection's own.
    client = LibvirtClient("qemu+tcp://127.0.0.1:1/system", allow_insecure_tcp=True, connect_timeout=5)
    with pytest.raises(HostUnavailableError) as raised:
        client.hostname()
    assert "allow_insecure_tcp" not in str(raised.value)
