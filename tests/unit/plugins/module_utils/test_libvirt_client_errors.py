"""Calls on libvirt handles go through the client, so a connection lost mid-run is reported in the client's words
(LibvirtOperationError naming what was attempted, the URI and libvirt's message), never as a raw libvirtError."""
import libvirt
import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import LibvirtOperationError
from ansible_collections.virtfleet.compute.plugins.module_utils._libvirt_client import LibvirtClient


class LostHandle:
    """A pool or network handle whose daemon went away: every call to it fails as libvirt-python fails."""

    def __init__(self, name):
        self._name = name

    def name(self):
        return self._name  # libvirt-python keeps the name in the handle: no call to the daemon

    def _lost(self, *args):
        raise libvirt.libvirtError("End of file while reading data: Input/output error")

    isActive = autostart = _lost  # noqa: N815 - libvirt's spelling


@pytest.mark.parametrize("call, what", [
    (lambda c: c.pool_active(LostHandle("p1")), "cannot read the state of pool p1 on test:///default: "),
    (lambda c: c.network_active(LostHandle("n1")), "cannot read the state of network n1 on test:///default: "),
    (lambda c: c.network_autostart(LostHandle("n1")),
     "cannot read the autostart flag of network n1 on test:///default: "),
])
def test_a_lost_connection_is_reported_by_the_client(call, what):
    client = LibvirtClient("test:///default")
    with pytest.raises(LibvirtOperationError) as err:
        call(client)
    assert str(err.value).startswith(what), str(err.value)


def test_names_of_handles_come_from_the_client():
    client = LibvirtClient("test:///default")
    try:
        pool = client.find_pool("default-pool")
        assert client.pool_name(pool) == "default-pool"
        assert client.pool_active(pool) is True
        assert client.network_name(client.lookup_network("default")) == "default"
        assert client.network_active(client.lookup_network("default")) is True
    finally:
        client.close()
