"""A private libvirt host per test: libvirt's test driver loaded from a node file in the test's tmp_path.

``test:///default`` is one shared in-process host for every connection of a process, so state would leak between
tests. A node file gives each test its own driver instance (test_node_files_give_independent_hosts proves it). The
test driver has no volume streams, no volume resize, no block resize, no ACPI shutdown flag, no inactive pool
XML and no checkpoint or NVRAM undefine flags; MemoryClient fills those gaps and is otherwise the real client.
"""
import os
import struct
import subprocess
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import LibvirtOperationError
from ansible_collections.virtfleet.compute.plugins.module_utils._libvirt_client import LibvirtClient

GIB = 1024 ** 3
POOLS = ("virtfleet-images", "virtfleet-instances", "virtfleet-records")
BASE_IMAGE = "base.qcow2"

# The driver's own "test" domain, as test:///default has it: a running domain without our metadata.
_UNMANAGED_DOMAIN = """
  <domain type='test'>
    <name>test</name>
    <uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>
    <memory unit='KiB'>524288</memory>
    <currentMemory unit='KiB'>524288</currentMemory>
    <vcpu placement='static'>2</vcpu>
    <os><type arch='i686'>hvm</type><boot dev='hd'/></os>
    <devices>
      <disk type='file' device='disk'>
        <source file='/guest/diskimage1'/>
        <target dev='vda' bus='virtio'/>
      </disk>
      <interface type='network'>
        <mac address='aa:bb:cc:dd:ee:ff'/>
        <source network='default'/>
      </interface>
    </devices>
  </domain>
"""


def write_node_xml(directory, with_unmanaged_domain=True):
    """A node file for the test driver: the default NAT network, a host bridge br0, our three dir pools, optionally
    a foreign domain."""
    parts = ["<node>",
             "<network><name>default</name><bridge name='virbr0'/><forward mode='nat'/>"
             "<ip address='192.168.122.1' netmask='255.255.255.0'>"
             "<dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp></ip></network>",
             # Servers on a bridge are checked against the host's interfaces before anything is planned.
             "<interface type='bridge' name='br0'><start mode='onboot'/><bridge/></interface>"]
    for name in POOLS:
        parts.append("<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>"
                     % (name, os.path.join(str(directory), name)))
    if with_unmanaged_domain:
        parts.append(_UNMANAGED_DOMAIN)
    parts.append("</node>")
    path = os.path.join(str(directory), "node.xml")
    with open(path, "w") as handle:
        handle.write("\n".join(parts))
    return path


class MemoryClient(LibvirtClient):
    """The real client on the test driver, with volume contents and grown capacities kept in memory.

    Both are keyed by the volume's key (its path) and dropped when the volume is deleted, so a volume created again
    under the same name starts empty, as a new file would.
    """

    def __init__(self, uri):
        super(MemoryClient, self).__init__(uri)
        self.contents = {}
        self.capacities = {}
        self.shutdowns = 0
        self.starts = {}
        self.live_resizes = []

    def volume_info(self, vol):
        info = super(MemoryClient, self).volume_info(vol)
        info["capacity"] = self.capacities.get(vol.key(), info["capacity"])
        content = self.contents.get(vol.key(), b"")
        if content[:4] == b"QFI\xfb" and len(content) >= 32:
            # libvirt reads a qcow2 volume's capacity from its header (the virtual size), as a refresh would.
            info["capacity"] = struct.unpack(">Q", content[24:32])[0]
        return info

    def resize_volume(self, vol, capacity_bytes):
        if capacity_bytes < self.volume_info(vol)["capacity"]:
            # libvirt refuses to shrink without VIR_STORAGE_VOL_RESIZE_SHRINK, which the client never passes.
            raise LibvirtOperationError("cannot shrink volume %s" % vol.name())
        self.capacities[vol.key()] = capacity_bytes

    def resize_disk_live(self, dom, target, capacity_bytes):
        root = ET.fromstring(self.domain_xml(dom, inactive=False))
        for disk in root.findall("devices/disk"):
            if disk.find("target").get("dev") == target:
                source = disk.find("source")
                pool = self.lookup_pool(source.get("pool"))
                self.resize_volume(self.lookup_volume(pool, source.get("volume")), capacity_bytes)
                self.live_resizes.append((dom.name(), target, capacity_bytes))
                return
        raise LibvirtOperationError("%s has no disk %s" % (dom.name(), target))

    def _check_fits(self, vol, size):
        capacity = self.volume_info(vol)["capacity"]
        if size > capacity:
            # libvirt refuses a stream longer than the volume; a caller that forgets to grow it first must fail here.
            raise LibvirtOperationError("upload of %d bytes does not fit volume %s (%d bytes)"
                                        % (size, vol.name(), capacity))

    def upload_bytes(self, vol, data):
        self._check_fits(vol, len(data))
        self.contents[vol.key()] = bytes(data)

    def upload_stream(self, vol, size, read, progress=None):
        self._check_fits(vol, size)
        chunks = []
        got = 0
        while got < size:
            chunk = read(size - got)
            if not chunk:
                raise LibvirtOperationError("upload to volume %s: the source ended after %d of %d bytes"
                                            % (vol.name(), got, size))
            chunks.append(chunk)
            got += len(chunk)
        self.contents[vol.key()] = b"".join(chunks)
        if progress:
            progress(size)

    def download_bytes(self, vol, length=0):
        data = self.contents.get(vol.key(), b"")
        return data[:length] if length else data

    def download_stream(self, vol, consume, length=0):
        consume(self.download_bytes(vol, length))

    def delete_volume(self, vol):
        key = vol.key()
        super(MemoryClient, self).delete_volume(vol)
        self.contents.pop(key, None)
        self.capacities.pop(key, None)

    def domain_disk_capacity(self, dom, target):
        # The test driver reports a 1 TiB disk for any path; a real host would report the file's size.
        return GIB

    def domain_disk_size(self, dom, disk):
        return self.domain_disk_capacity(dom, disk["target"])

    def pool_xml(self, pool, inactive=True):
        # The test driver refuses VIR_STORAGE_XML_INACTIVE; its pools have one definition anyway.
        return self._call("read pool %s" % pool.name(), pool.XMLDesc, 0)

    def undefine_domain(self, dom):
        # The test driver knows no checkpoints and no NVRAM, and refuses those undefine flags.
        import libvirt

        flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        self._call("undefine %s" % dom.name(), dom.undefineFlags, flags)

    def shutdown_domain(self, dom):
        # The test driver has no ACPI flag; its plain shutdown powers the domain off at once.
        self.shutdowns += 1
        self._call("shut down %s" % dom.name(), dom.shutdown)

    def start_domain(self, dom, paused=False):
        super(MemoryClient, self).start_domain(dom, paused=paused)
        self.starts[dom.name()] = self.starts.get(dom.name(), 0) + 1

    def network_leases(self, net):
        # The test driver keeps no DHCP leases. Stand in for dnsmasq: every running domain's NIC on the network
        # holds a lease, renewed (a later expiry) each time the domain starts, as a booting guest renews it.
        leases = []
        for dom in self.list_domains():
            if not dom.isActive():
                continue
            root = ET.fromstring(self.domain_xml(dom, inactive=False))
            for iface in root.findall("devices/interface"):
                source = iface.find("source")
                if source is not None and source.get("network") == net.name():
                    leases.append({"mac": iface.find("mac").get("address").lower(), "ipaddr": "192.168.122.2",
                                   "expirytime": 1000 + self.starts.get(dom.name(), 0), "type": 0})
        return leases


@pytest.fixture
def node_factory(tmp_path):
    """``node_factory(subdir, with_unmanaged_domain=True)``: the path of a further node file (another host)."""

    def make(subdir, with_unmanaged_domain=True):
        directory = tmp_path / subdir
        directory.mkdir()
        return write_node_xml(directory, with_unmanaged_domain)

    return make


@pytest.fixture
def node_xml(tmp_path):
    return write_node_xml(tmp_path)


@pytest.fixture
def make_client():
    """Open further clients (on the same or another node file); all are closed after the test."""
    opened = []

    def make(path):
        client = MemoryClient("test://" + os.path.abspath(path))
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


@pytest.fixture
def client(node_xml, make_client):
    return make_client(node_xml)


def volume_xml(name, capacity, fmt="qcow2", backing=None):
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", {"unit": "bytes"}).text = str(capacity)
    ET.SubElement(ET.SubElement(root, "target"), "format", {"type": fmt})
    if backing:
        backing_elem = ET.SubElement(root, "backingStore")
        ET.SubElement(backing_elem, "path").text = backing
        ET.SubElement(backing_elem, "format", {"type": "qcow2"})
    return ET.tostring(root, encoding="unicode")


@pytest.fixture
def make_volume(client):
    """``make_volume(pool, name, capacity, fmt="qcow2", backing=None)``: a volume created behind our back."""

    def make(pool, name, capacity, fmt="qcow2", backing=None):
        return client.create_volume(client.lookup_pool(pool), volume_xml(name, capacity, fmt, backing))

    return make


@pytest.fixture
def base_image(make_volume):
    """A 1 GiB qcow2 base image in virtfleet-images, as the image module would leave it (minus its record)."""
    return make_volume("virtfleet-images", BASE_IMAGE, GIB)


@pytest.fixture
def volume_names(client):
    """``volume_names()``: {pool: sorted volume names} of every pool of the host, to compare before and after."""

    def snapshot():
        return dict((pool.name(), sorted(v.name() for v in client.list_volumes(pool)))
                    for pool in client.list_pools())

    return snapshot


@pytest.fixture
def qcow2_file(tmp_path):
    """``qcow2_file(name, size="16M", backing=None)``: a real qcow2 file made by qemu-img, its path returned."""

    def make(name, size="16M", backing=None):
        path = str(tmp_path / name)
        cmd = ["qemu-img", "create", "-q", "-f", "qcow2"]
        if backing:
            cmd += ["-F", "qcow2", "-b", backing]
        subprocess.check_call(cmd + [path, size])
        return path

    return make
