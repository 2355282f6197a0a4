# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The client layer: the only code in the collection that calls libvirt.

Everything above this layer sees plain Python values and typed errors. Every effect on a host goes through the
libvirt API (DESIGN.md principle 1), so the same code works on ``qemu:///system`` and over ``qemu+ssh://`` or
``qemu+tls://`` from a controller or an AWX execution environment.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import shlex
import shutil
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit, urlunsplit

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import (
    HostUnavailableError,
    LibvirtOperationError,
    MissingLibraryError,
    NotFoundError,
    ValidationError,
)

try:
    import libvirt

    HAS_LIBVIRT = True
    LIBVIRT_IMPORT_ERROR = None
except ImportError:
    HAS_LIBVIRT = False
    LIBVIRT_IMPORT_ERROR = traceback.format_exc()

DEFAULT_URI = "qemu:///system"

# Seconds a connection may take to open (modules' connect_timeout, the inventory's connect_timeout).
DEFAULT_CONNECT_TIMEOUT = 30
# ssh gets a few seconds more than our own deadline: ours fires first, with a message naming the URI and the time,
# and the ssh process libvirt started gives up by itself shortly after instead of waiting on a silent peer forever.
_SSH_GRACE = 5

# libvirt's virDomainState numbers, named the way users read them in virsh.
_STATE_NAMES = {
    0: "nostate",
    1: "running",
    2: "blocked",
    3: "paused",
    4: "shutdown",
    5: "shutoff",
    6: "crashed",
    7: "pmsuspended",
}

# Chunk size for volume uploads and downloads; large enough that the per-call overhead of a remote stream vanishes.
_STREAM_CHUNK = 1024 * 1024

# qemu-img's PBKDF2 timing quirk on coarse CPU clocks (see build_volume) and how often to try again.
_LUKS_TIMING_QUIRK = "Unable to get accurate CPU usage"
_LUKS_ATTEMPTS = 4


def _silence_libvirt():
    # libvirt prints every error to stderr by default, including the ones we catch and handle; that noise would
    # end up in Ansible's output as if something had gone wrong.
    libvirt.registerErrorHandler(lambda *args: None, None)


def _addresses_by_mac(ifaces):
    """libvirt's interfaceAddresses answer as {mac: ["ip/prefix", ...]}."""
    found = {}
    for info in ifaces.values():
        mac = (info.get("hwaddr") or "").lower()
        for addr in info.get("addrs") or []:
            text = "%s/%s" % (addr["addr"], addr["prefix"])
            found.setdefault(mac, [])
            if text not in found[mac]:
                found[mac].append(text)
    return found


def _link_local(address):
    """Loopback and link-local addresses, which the agent reports and nobody outside the guest can use."""
    ip = address.split("/")[0].lower()
    return ip.startswith(("127.", "169.254.", "fe80:")) or ip == "::1"


def uri_transport(uri):
    """The transport of a libvirt URI: ``ssh`` for qemu+ssh://, ``unix`` for qemu:/// and qemu+unix://."""
    scheme = urlsplit(uri).scheme
    return scheme.split("+", 1)[1].lower() if "+" in scheme else "unix"


def redact_uri(uri):
    """The URI without a password in its user part, for messages (libvirt ignores one, users still write it)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = "%s:***@%s" % (parts.username or "", parts.netloc.rsplit("@", 1)[1])
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def check_uri_policy(uri, allow_insecure_tcp=False):
    """Refuse libvirt's plain TCP transport unless the user said so explicitly."""
    if uri_transport(uri) == "tcp" and not allow_insecure_tcp:
        raise ValidationError(
            "%s uses libvirt's plain TCP transport, which has no encryption and, unless the daemon is set up with "
            "SASL, no authentication: anyone who can reach the port controls the host. Use qemu+tls:// or "
            "qemu+ssh://, or set allow_insecure_tcp: true on a network you trust" % redact_uri(uri), field="uri")


class _SshTimeout:
    """A ``command=`` wrapper that gives libvirt's ssh process ``-o ConnectTimeout=N``.

    libvirt runs ``ssh`` itself with arguments of its own and has no URI parameter for ssh options; its
    ``command`` parameter names the program to run instead. The wrapper execs the real ssh (or the command the URI
    names) with ConnectTimeout first, so a peer that accepts TCP but never speaks SSH is given up by ssh too. The
    wrapper lives in a private temporary directory only while the connection opens; where temporary files cannot be
    executed (a noexec /tmp) the URI is left alone and the deadline around the open still applies.
    """

    def __init__(self, uri, seconds):
        self.uri = uri
        self._dir = None
        parts = urlsplit(uri)
        if uri_transport(uri) != "ssh":
            return
        params = [p for p in parts.query.split("&") if p]
        given = [p.split("=", 1)[1] for p in params if p.startswith("command=") and "=" in p]
        try:
            self._dir = tempfile.mkdtemp(prefix="virtfleet-ssh-")
            if hasattr(os, "ST_NOEXEC") and os.statvfs(self._dir).f_flag & os.ST_NOEXEC:
                self.cleanup()
                return
            path = os.path.join(self._dir, "ssh")
            with open(path, "w") as handle:
                handle.write('#!/bin/sh\nexec %s -o ConnectTimeout=%d "$@"\n'
                             % (shlex.quote(given[-1] if given else "ssh"), int(seconds)))
            os.chmod(path, 0o700)
        except OSError:
            self.cleanup()
            return
        params = [p for p in params if not p.startswith("command=")] + ["command=" + path]
        self.uri = urlunsplit((parts.scheme, parts.netloc, parts.path, "&".join(params), parts.fragment))

    def cleanup(self):
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def open_connection(uri, timeout):
    """``libvirt.open(uri)``, given up after ``timeout`` seconds whatever the transport does.

    libvirt's open blocks in C with no deadline of its own (an SSH peer that never sends its banner, a TLS peer that
    never finishes the handshake, a daemon that accepts and stalls); it runs in a daemon thread that cannot keep the
    process from exiting, and a connection that opens after we gave up is closed at once.
    """
    wrapper = _SshTimeout(uri, timeout + _SSH_GRACE)
    box = {}
    lock = threading.Lock()
    done = threading.Event()

    def opener():
        try:
            conn = libvirt.open(wrapper.uri)
        except libvirt.libvirtError as exc:
            conn, box["error"] = None, exc
        with lock:
            if box.get("abandoned"):
                if conn is not None:
                    conn.close()
            else:
                box["conn"] = conn
        done.set()

    started = time.monotonic()
    thread = threading.Thread(target=opener, name="virtfleet-connect", daemon=True)
    thread.start()
    try:
        done.wait(timeout)
        with lock:
            if not done.is_set():
                box["abandoned"] = True
                raise HostUnavailableError(
                    "cannot connect to libvirt at %s: no answer within %s seconds (connect_timeout)"
                    % (redact_uri(uri), _seconds(time.monotonic() - started)), field="uri")
    finally:
        wrapper.cleanup()
    if "error" in box:
        raise HostUnavailableError("cannot connect to libvirt at %s: %s" % (redact_uri(uri), _message(box["error"])),
                                   field="uri")
    return box["conn"]


def _seconds(value):
    return ("%.1f" % value).rstrip("0").rstrip(".")


class LibvirtClient:
    """A connection to one libvirt daemon, opened on first use.

    ``connect_timeout`` bounds the open (seconds); ``allow_insecure_tcp`` lets a qemu+tcp:// URI through.
    """

    def __init__(self, uri=None, connect_timeout=DEFAULT_CONNECT_TIMEOUT, allow_insecure_tcp=False):
        self.uri = uri or DEFAULT_URI
        self.connect_timeout = connect_timeout
        self.allow_insecure_tcp = allow_insecure_tcp
        self._conn = None

    def sibling(self, uri):
        """A client for another host (a move's target) with this client's connection settings."""
        return LibvirtClient(uri, connect_timeout=self.connect_timeout, allow_insecure_tcp=self.allow_insecure_tcp)

    # -- connection -------------------------------------------------------------------------------------------------

    @property
    def conn(self):
        if self._conn is None:
            check_uri_policy(self.uri, self.allow_insecure_tcp)
            if not HAS_LIBVIRT:
                raise MissingLibraryError(
                    "the libvirt Python bindings are not installed where this module runs "
                    "(pip install libvirt-python, or the distribution's python3-libvirt package)",
                    traceback=LIBVIRT_IMPORT_ERROR,
                )
            _silence_libvirt()
            timeout = DEFAULT_CONNECT_TIMEOUT if self.connect_timeout is None else self.connect_timeout
            if timeout <= 0:
                raise ValidationError("must be a positive number of seconds, got %s" % timeout, field="connect_timeout")
            self._conn = open_connection(self.uri, timeout)
        return self._conn

    def close(self):
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # pylint: disable=broad-except
                pass
            self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def hostname(self):
        return self._call("get the host name", self.conn.getHostname)

    def capabilities(self):
        """The host's capabilities document, parsed."""
        return ET.fromstring(self._call("read capabilities", self.conn.getCapabilities))

    def domain_capabilities(self, virt_type):
        """The domain capabilities for ``virt_type`` (kvm or qemu), parsed; None if the host cannot run that type."""
        try:
            xml = self.conn.getDomainCapabilities(None, None, None, virt_type, 0)
        except libvirt.libvirtError:
            return None
        return ET.fromstring(xml)

    def versions(self):
        return {
            "libvirt": _version_string(self._call("read the libvirt version", self.conn.getLibVersion)),
            "hypervisor": _version_string(self._call("read the hypervisor version", self.conn.getVersion)),
            "hypervisor_type": self._call("read the hypervisor type", self.conn.getType),
        }

    def node_info(self):
        """(model, memory MiB, cpus, mhz, numa nodes, sockets, cores, threads) as libvirt reports them."""
        return self._call("read node info", self.conn.getInfo)

    def free_memory_bytes(self):
        return self._call("read free memory", self.conn.getFreeMemory)

    def free_pages(self, sizes_kib, cells):
        """{cell id: {page size KiB: free pages}} for the given page sizes and NUMA cells."""
        free = {}
        for cell in cells:
            answer = self._call("read free memory pages", self.conn.getFreePages, list(sizes_kib), cell, 1) or {}
            free[cell] = dict((int(size), int(count)) for size, count in (answer.get(cell) or {}).items())
        return free

    # -- domains ----------------------------------------------------------------------------------------------------

    def lookup_domain(self, name):
        """The domain called ``name``, or None."""
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise LibvirtOperationError("cannot look up domain %s: %s" % (name, _message(exc)))

    def list_domains(self):
        return self._call("list domains", self.conn.listAllDomains, 0)

    def domain_name(self, dom):
        return dom.name()

    def pool_name(self, pool):
        return pool.name()

    def pool_active(self, pool):
        """Whether the pool is started: a call to the daemon, so a lost connection says so in our words."""
        return bool(self._call("read the state of pool %s" % pool.name(), pool.isActive))

    def volume_name(self, vol):
        return vol.name()

    def network_name(self, net):
        return net.name()

    def domain_uuid(self, dom):
        return dom.UUIDString()

    def domain_xml(self, dom, inactive=True):
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        return self._call("read the definition of %s" % dom.name(), dom.XMLDesc, flags)

    def domain_state(self, dom):
        """One of running, paused, shutoff, ... (see _STATE_NAMES), and whether a managed save image exists."""
        state, _reason = self._call("read the state of %s" % dom.name(), dom.state)
        return _STATE_NAMES.get(state, "nostate")

    def domain_has_managed_save(self, dom):
        return bool(self._call("check the managed save of %s" % dom.name(), dom.hasManagedSaveImage, 0))

    def domain_persistent(self, dom):
        return bool(dom.isPersistent())

    def define_domain(self, xml):
        return self._call("define the domain", self.conn.defineXML, xml)

    def undefine_domain(self, dom):
        flags = (
            libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
            | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        )
        self._call("undefine %s" % dom.name(), dom.undefineFlags, flags)

    def start_domain(self, dom, paused=False):
        flags = libvirt.VIR_DOMAIN_START_PAUSED if paused else 0
        self._call("start %s" % dom.name(), dom.createWithFlags, flags)

    def shutdown_domain(self, dom):
        """Ask the guest to power off (ACPI power button); returns at once."""
        self._call("shut down %s" % dom.name(), dom.shutdownFlags, libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)

    def reboot_domain(self, dom):
        self._call("reboot %s" % dom.name(), dom.reboot, libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN)

    def reset_domain(self, dom):
        self._call("reset %s" % dom.name(), dom.reset, 0)

    def destroy_domain(self, dom):
        """Hard power off. A domain already off is not an error."""
        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                raise LibvirtOperationError("cannot power off %s: %s" % (dom.name(), _message(exc)))

    def suspend_domain(self, dom):
        self._call("pause %s" % dom.name(), dom.suspend)

    def resume_domain(self, dom):
        self._call("resume %s" % dom.name(), dom.resume)

    def managed_save(self, dom):
        self._call("suspend %s to disk" % dom.name(), dom.managedSave, 0)

    def remove_managed_save(self, dom):
        self._call("discard the saved state of %s" % dom.name(), dom.managedSaveRemove, 0)

    def set_autostart(self, dom, enabled):
        self._call("set autostart of %s" % dom.name(), dom.setAutostart, 1 if enabled else 0)

    def domain_addresses(self, dom):
        """IP addresses per MAC: {mac: [ "ip/prefix", ...]} from the guest agent, else DHCP leases, else ARP.

        The guest agent, when it answers, says what the guest has configured now, on any kind of network; for the
        NICs it does not report, leases answer for libvirt networks and the ARP table is the only source for
        guests on a plain bridge.
        """
        found = self.agent_addresses(dom) or {}
        from_agent = set(found)
        sources = (libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP)
        for source in sources:
            try:
                ifaces = dom.interfaceAddresses(source, 0) or {}
            except libvirt.libvirtError:
                continue
            for mac, addresses in _addresses_by_mac(ifaces).items():
                if mac in from_agent:
                    continue
                found.setdefault(mac, [])
                found[mac].extend(a for a in addresses if a not in found[mac])
        return found

    def agent_addresses(self, dom):
        """{mac: ["ip/prefix", ...]} as the QEMU guest agent reports them (loopback and link-local addresses left
        out), or None when the agent does not answer: not installed, not started yet, or silent for libvirt's agent
        timeout (5 s for its first handshake). A domain without the agent's channel is not asked."""
        try:
            ifaces = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT, 0) or {}
        except libvirt.libvirtError:
            return None
        found = dict((mac, [a for a in addresses if not _link_local(a)])
                     for mac, addresses in _addresses_by_mac(ifaces).items())
        return dict((mac, addresses) for mac, addresses in found.items()
                    if addresses and mac and mac != "00:00:00:00:00:00")

    def agent_shutdown(self, dom):
        """Ask the guest, through its QEMU guest agent, to power off; LibvirtOperationError when the agent does not
        answer. Nova's libvirt driver does the same before it presses the ACPI button."""
        self._call("shut down %s through its guest agent" % dom.name(), dom.shutdownFlags,
                   libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT)

    def resize_disk_live(self, dom, target, capacity_bytes):
        self._call(
            "grow disk %s of %s" % (target, dom.name()),
            dom.blockResize,
            target,
            capacity_bytes,
            libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES,
        )

    # -- storage pools and volumes --------------------------------------------------------------------------------

    def lookup_pool(self, name, field=None):
        _plain_name(name, field or "pool")
        try:
            pool = self.conn.storagePoolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise NotFoundError(
                    "storage pool '%s' does not exist on %s (the compute_node role or the pool module creates it)"
                    % (name, self.uri),
                    field=field,
                )
            raise LibvirtOperationError("cannot look up storage pool %s: %s" % (name, _message(exc)))
        if not pool.isActive():
            raise NotFoundError("storage pool '%s' on %s is not active" % (name, self.uri), field=field)
        return pool

    def host_interface_exists(self, name):
        """Whether the host has a network interface (a bridge) called ``name``; None when libvirt cannot tell (a
        daemon built without an interface driver)."""
        try:
            self.conn.interfaceLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_INTERFACE:
                return False
            return None
        except ValueError:  # an embedded NUL: no interface has such a name
            return False
        return True

    def find_pool(self, name):
        """The pool called ``name`` whether active or not, or None."""
        _plain_name(name, "pool")
        try:
            return self.conn.storagePoolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                return None
            raise LibvirtOperationError("cannot look up storage pool %s: %s" % (name, _message(exc)))

    def list_pools(self):
        return self._call("list storage pools", self.conn.listAllStoragePools, 0)

    def pool_xml(self, pool, inactive=True):
        flags = libvirt.VIR_STORAGE_XML_INACTIVE if inactive else 0
        return self._call("read pool %s" % pool.name(), pool.XMLDesc, flags)

    def pool_info(self, pool):
        """{state, capacity, allocation, available} in bytes; refreshes first so the figures are current."""
        try:
            pool.refresh(0)
        except libvirt.libvirtError:
            pass  # a refresh fails while a volume is being built; the last figures are still good enough
        state, capacity, allocation, available = self._call("read pool %s" % pool.name(), pool.info)
        return {"active": bool(pool.isActive()), "capacity": capacity, "allocation": allocation, "available": available}

    def pool_autostart(self, pool):
        return bool(pool.autostart())

    def define_pool(self, xml):
        return self._call("define the storage pool", self.conn.storagePoolDefineXML, xml, 0)

    def build_pool(self, pool):
        self._call("build pool %s" % pool.name(), pool.build, 0)

    def start_pool(self, pool):
        self._call("start pool %s" % pool.name(), pool.create, 0)

    def stop_pool(self, pool):
        self._call("stop pool %s" % pool.name(), pool.destroy)

    def undefine_pool(self, pool):
        self._call("undefine pool %s" % pool.name(), pool.undefine)

    def set_pool_autostart(self, pool, enabled):
        self._call("set autostart of pool %s" % pool.name(), pool.setAutostart, 1 if enabled else 0)

    def list_volumes(self, pool):
        return self._call("list the volumes of %s" % pool.name(), pool.listAllVolumes, 0)

    def lookup_volume(self, pool, name):
        """The volume ``name`` in ``pool``, or None."""
        try:
            return pool.storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return None
            raise LibvirtOperationError("cannot look up volume %s/%s: %s" % (pool.name(), name, _message(exc)))

    def volume_xml(self, vol):
        return self._call("read volume %s" % vol.name(), vol.XMLDesc, 0)

    def volume_path(self, vol):
        return vol.path()

    def volume_info(self, vol):
        """{capacity, allocation} in bytes."""
        _type, capacity, allocation = self._call("read volume %s" % vol.name(), vol.info)
        return {"capacity": capacity, "allocation": allocation}

    def create_volume(self, pool, xml):
        return self._call("create a volume in %s" % pool.name(), pool.createXML, xml, 0)

    def delete_volume(self, vol):
        self._call("delete volume %s" % vol.name(), vol.delete, 0)

    def resize_volume(self, vol, capacity_bytes):
        self._call("grow volume %s" % vol.name(), vol.resize, capacity_bytes, 0)

    def upload_bytes(self, vol, data):
        """Replace the volume's content with ``data`` through a libvirt stream (works over remote URIs)."""
        stream = self.conn.newStream(0)
        try:
            self._call("upload to volume %s" % vol.name(), vol.upload, stream, 0, len(data), 0)
            view = memoryview(data)
            offset = 0
            while offset < len(data):
                sent = stream.send(bytes(view[offset:offset + _STREAM_CHUNK]))
                if sent < 0:
                    raise LibvirtOperationError("upload to volume %s was interrupted" % vol.name())
                offset += sent
            stream.finish()
        except BaseException:
            _abort(stream)
            raise

    def upload_file(self, vol, path, progress=None):
        """Stream a local file into the volume. ``progress(bytes_sent)`` is called after every chunk."""
        import os

        with open(path, "rb") as handle:
            self.upload_stream(vol, os.fstat(handle.fileno()).st_size, handle.read, progress=progress)

    def upload_stream(self, vol, size, read, progress=None):
        """Stream exactly ``size`` bytes into the volume, taken from ``read(n)`` (which returns at most n bytes).

        The caller owns the source (an open file it already inspected, say): nothing is opened here by path.
        ``progress(bytes_sent)`` is called after every chunk.
        """
        stream = self.conn.newStream(0)
        try:
            self._call("upload to volume %s" % vol.name(), vol.upload, stream, 0, size, 0)
            sent_total = 0
            while sent_total < size:
                chunk = read(min(_STREAM_CHUNK, size - sent_total))
                if not chunk:
                    raise LibvirtOperationError("upload to volume %s: the source ended after %d of %d bytes"
                                                % (vol.name(), sent_total, size))
                view = memoryview(chunk)
                while view:
                    sent = stream.send(bytes(view))
                    if sent < 0:
                        raise LibvirtOperationError("upload to volume %s was interrupted" % vol.name())
                    view = view[sent:]
                sent_total += len(chunk)
                if progress:
                    progress(sent_total)
            stream.finish()
        except BaseException:
            _abort(stream)
            raise

    def download_bytes(self, vol, length=0):
        """The volume's content (its first ``length`` bytes, or all of it)."""
        chunks = []
        self.download_stream(vol, chunks.append, length)
        return b"".join(chunks)

    def download_stream(self, vol, consume, length=0):
        """Hand the volume's content (its first ``length`` bytes, or all of it) to ``consume(chunk)``, chunk by
        chunk, without holding it in memory."""
        stream = self.conn.newStream(0)
        try:
            self._call("download volume %s" % vol.name(), vol.download, stream, 0, length, 0)
            while True:
                data = stream.recv(_STREAM_CHUNK)
                if data == -2:
                    time.sleep(0.01)
                    continue
                if not data:
                    break
                consume(data)
            stream.finish()
        except BaseException:
            _abort(stream)
            raise

    # -- networks ---------------------------------------------------------------------------------------------------

    def lookup_network(self, name):
        """The libvirt network called ``name``, or None."""
        try:
            return self.conn.networkLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
                return None
            raise LibvirtOperationError("cannot look up network %s: %s" % (name, _message(exc)))

    def list_networks(self):
        return self._call("list networks", self.conn.listAllNetworks, 0)

    def network_xml(self, net, inactive=True):
        flags = libvirt.VIR_NETWORK_XML_INACTIVE if inactive else 0
        return self._call("read network %s" % net.name(), net.XMLDesc, flags)

    def network_active(self, net):
        return bool(self._call("read the state of network %s" % net.name(), net.isActive))

    def network_autostart(self, net):
        return bool(self._call("read the autostart flag of network %s" % net.name(), net.autostart))

    def network_leases(self, net):
        try:
            return net.DHCPLeases() or []
        except libvirt.libvirtError:
            return []

    def define_network(self, xml):
        return self._call("define the network", self.conn.networkDefineXML, xml)

    def start_network(self, net):
        self._call("start network %s" % net.name(), net.create)

    def stop_network(self, net):
        self._call("stop network %s" % net.name(), net.destroy)

    def undefine_network(self, net):
        self._call("undefine network %s" % net.name(), net.undefine)

    def set_network_autostart(self, net, enabled):
        self._call("set autostart of network %s" % net.name(), net.setAutostart, 1 if enabled else 0)

    def update_network(self, net, command, section, xml, live):
        """virNetworkUpdate: change one section (e.g. a DHCP host) in place, live too when the network runs."""
        commands = {
            "add": libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
            "delete": libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE,
            "modify": libvirt.VIR_NETWORK_UPDATE_COMMAND_MODIFY,
        }
        sections = {
            "ip-dhcp-host": libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST,
            "ip-dhcp-range": libvirt.VIR_NETWORK_SECTION_IP_DHCP_RANGE,
        }
        flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
        if live:
            flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
        self._call("update network %s" % net.name(), net.update, commands[command], sections[section], -1, xml, flags)

    # -- helpers ----------------------------------------------------------------------------------------------------

    def _call(self, what, func, *args):
        try:
            return func(*args)
        except libvirt.libvirtError as exc:
            raise LibvirtOperationError("cannot %s on %s: %s" % (what, self.uri, _message(exc)))

    # -- added for flavors/hosts ------------------------------------------------------------------------------------

    def list_active_domains(self):
        """The running (and paused) domains: one call, instead of a state query per domain."""
        return self._call("list running domains", self.conn.listAllDomains, libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)

    def domain_xml_if_exists(self, dom, inactive=True):
        """The domain's XML, or None when it was undefined since it was listed (a scan must not fail on that)."""
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        try:
            return dom.XMLDesc(flags)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise LibvirtOperationError("cannot read the definition of %s on %s: %s"
                                        % (dom.name(), self.uri, _message(exc)))

    def domain_disk_capacity(self, dom, target):
        """Virtual size in bytes of the disk ``target`` (vda...) of a domain, running or not; None if unknown.

        virDomainGetBlockInfo reads the image header through libvirt, so it works for file, block and volume disks
        alike without knowing which pool (if any) holds the image.
        """
        try:
            capacity, _allocation, _physical = dom.blockInfo(target, 0)
        except libvirt.libvirtError:
            return None
        return capacity

    def domain_disk_size(self, dom, disk):
        """Virtual size in bytes of a disk as Domain.disks describes it; None if unknown.

        A disk whose source is a pool volume is read from its pool: virDomainGetBlockInfo cannot resolve a volume
        source of a domain that is not running ("missing storage backend for 'volume' storage").
        """
        if disk.get("pool") and disk.get("volume"):
            try:
                pool = self.find_pool(disk["pool"])
                vol = self.lookup_volume(pool, disk["volume"]) if pool is not None else None
                return self.volume_info(vol)["capacity"] if vol is not None else None
            except LibvirtOperationError:
                return None  # an inactive pool: the size is unknown, as for any disk libvirt cannot read
        return self.domain_disk_capacity(dom, disk["target"]) if disk.get("target") else None

    def expanded_cpu_features(self, cpu_xml):
        """Every feature of a host CPU (its model's and the extra ones), or None if libvirt cannot expand them."""
        try:
            xml = self.conn.baselineCPU([cpu_xml], libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES)
        except libvirt.libvirtError:
            return None
        root = ET.fromstring(xml)
        return sorted(f.get("name") for f in root.findall("feature") if f.get("policy") != "disable")

    def create_volume_unless_exists(self, pool, xml):
        """Create a volume; None if one of that name exists. libvirt checks and creates under the pool's lock, so of
        two callers racing for the same name exactly one gets the volume: usable as a lock."""
        try:
            return pool.createXML(xml, 0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_STORAGE_VOL_EXIST:
                return None
            raise LibvirtOperationError("cannot create a volume in %s on %s: %s" % (pool.name(), self.uri,
                                                                                    _message(exc)))

    def delete_volume_if_exists(self, vol):
        """Delete a volume; False if it was already gone."""
        try:
            vol.delete(0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return False
            raise LibvirtOperationError("cannot delete volume %s on %s: %s" % (vol.name(), self.uri, _message(exc)))
        return True

    # -- added for networks -----------------------------------------------------------------------------------------

    def create_transient_domain(self, xml, paused=False):
        """Create and start a domain that disappears when it stops (the compute_node role's KVM boot probe)."""
        flags = libvirt.VIR_DOMAIN_START_PAUSED if paused else 0
        return self._call("create a transient domain", self.conn.createXML, xml, flags)

    def read_console(self, dom, until, timeout):
        """What the domain writes on its serial console, until ``until(data)`` is true, the console closes (the
        domain stopped) or ``timeout`` seconds pass; then returns ``(data, timed_out)``.

        At the timeout the domain is powered off: that closes the console, which ends a blocking read without an
        event loop. Meant for throw-away domains, started paused so no output is missed, resumed here.
        """
        import threading

        stream = self.conn.newStream(0)
        self._call("open the console of %s" % dom.name(), dom.openConsole, None, stream,
                   libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        expired = threading.Event()

        def expire():
            expired.set()
            try:
                dom.destroy()
            except libvirt.libvirtError:
                pass

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        data = b""
        try:
            timer.start()
            if self.domain_state(dom) == "paused":
                self.resume_domain(dom)
            while not until(data):
                try:
                    chunk = stream.recv(4096)
                except libvirt.libvirtError:
                    break  # the domain went away under the console
                if not chunk or chunk in (-1, -2):
                    break
                data += chunk
        finally:
            timer.cancel()
            _abort(stream)
        return data, expired.is_set()

    # -- added for server actions -----------------------------------------------------------------------------------

    def domain_xml_secure(self, dom, inactive=True):
        """The definition with its secrets (the VNC password). A redefinition must start from this one: libvirt
        leaves the password out of the plain XML, and redefining from that would drop it."""
        flags = libvirt.VIR_DOMAIN_XML_SECURE | (libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0)
        return self._call("read the definition of %s" % dom.name(), dom.XMLDesc, flags)

    def domain_autostart(self, dom):
        return bool(self._call("read autostart of %s" % dom.name(), dom.autostart))

    def update_device_live(self, dom, xml):
        """Change a device of the running domain only (a console password must never reach the definition)."""
        self._call("update a device of %s" % dom.name(), dom.updateDeviceFlags, xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def restore_domain(self, dom):
        """Start a domain from its managed save image and let it run, whether it was saved running or paused."""
        self._call("restore %s" % dom.name(), dom.createWithFlags, 0)
        if self.domain_state(dom) == "paused":
            self.resume_domain(dom)

    def refresh_pool(self, pool):
        try:
            pool.refresh(0)
        except libvirt.libvirtError:
            pass  # a refresh fails while a volume is being built; the list is still good enough

    def refresh_pool_or_fail(self, pool):
        """Refresh the pool, raising when libvirt cannot: a refresh that fails leaves the pool listing no volumes
        (and libvirt stops the pool), so a caller that just put a file there must know."""
        self._call("refresh pool %s" % pool.name(), pool.refresh, 0)

    def pool_type(self, pool):
        return ET.fromstring(self._call("read pool %s" % pool.name(), pool.XMLDesc, 0)).get("type")

    def volume_key(self, vol):
        return vol.key()

    def volume_physical(self, vol):
        """Bytes the volume's file takes, what a download streams (a qcow2's virtual size is its capacity)."""
        try:
            _type, _capacity, physical = vol.infoFlags(libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)
        except libvirt.libvirtError as exc:
            raise LibvirtOperationError("cannot read volume %s on %s: %s" % (vol.name(), self.uri, _message(exc)))
        return physical

    def clone_volume(self, pool, xml, source_vol):
        """A new volume in ``pool`` from ``source_vol`` of the same host. libvirt copies through qemu-img convert,
        so a qcow2 overlay becomes a standalone image (its backing chain is read into it)."""
        return self._call("copy volume %s into pool %s" % (source_vol.name(), pool.name()), pool.createXMLFrom, xml,
                          source_vol, 0)

    def copy_volume_to(self, source_vol, dest, dest_vol, length, progress=None):
        """Stream ``length`` bytes of ``source_vol`` (a volume of this host) into ``dest_vol``, a volume of the host
        ``dest`` (another client): a download stream feeding an upload stream, through the two daemons only."""
        down = self.conn.newStream(0)
        up = dest.conn.newStream(0)
        copied = 0
        try:
            self._call("download volume %s" % source_vol.name(), source_vol.download, down, 0, length, 0)
            dest._call("upload to volume %s" % dest_vol.name(), dest_vol.upload, up, 0, length, 0)
            while True:
                data = down.recv(_STREAM_CHUNK)
                if data == -2:
                    time.sleep(0.01)
                    continue
                if not data:
                    break
                view = memoryview(data)
                while view:
                    sent = up.send(bytes(view))
                    if sent < 0:
                        raise LibvirtOperationError("copy of volume %s to %s was interrupted" % (source_vol.name(),
                                                                                                 dest.uri))
                    view = view[sent:]
                copied += len(data)
                if progress:
                    progress(copied)
            down.finish()
            up.finish()
        except libvirt.libvirtError as exc:
            _abort(down)
            _abort(up)
            raise LibvirtOperationError("cannot copy volume %s from %s to %s: %s" % (source_vol.name(), self.uri,
                                                                                     dest.uri, _message(exc)))
        except BaseException:
            _abort(down)
            _abort(up)
            raise
        return copied

    def domain_xml_migratable(self, dom):
        """The running domain's definition as a migration sends it (what a destination XML must start from)."""
        flags = libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE
        return self._call("read the definition of %s" % dom.name(), dom.XMLDesc, flags)

    def migrate_domain(self, dom, dest, live, copy_storage=False, persist_xml=None, migration_uri=None,
                       bandwidth_mib=None, dest_xml=None):
        """Migrate ``dom`` to the host of client ``dest`` and keep it defined there; blocks until done or aborted.

        libvirt's managed migration: this client drives both daemons, so it works from a controller with two
        remote URIs. ``copy_storage`` copies the writable disks over NBD while the guest runs
        (VIR_MIGRATE_NON_SHARED_INC: only the top layer of each disk; the base images and the disks' volumes must
        already exist on the destination). ``persist_xml`` is what the destination keeps as the definition,
        ``dest_xml`` what it runs the guest with.
        """
        flags = libvirt.VIR_MIGRATE_PERSIST_DEST
        if live:
            flags |= libvirt.VIR_MIGRATE_LIVE
        if copy_storage:
            flags |= libvirt.VIR_MIGRATE_NON_SHARED_INC
        params = {}
        if persist_xml:
            params[libvirt.VIR_MIGRATE_PARAM_PERSIST_XML] = persist_xml
        if dest_xml:
            params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = dest_xml
        if migration_uri:
            params[libvirt.VIR_MIGRATE_PARAM_URI] = migration_uri
        if bandwidth_mib:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(bandwidth_mib)
        return self._call("migrate %s to %s" % (dom.name(), dest.uri), dom.migrate3, dest.conn, params, flags)

    def domain_job_stats(self, dom):
        """The running job's statistics (data processed, remaining, ...); {} when there is none."""
        try:
            return dom.jobStats(0) or {}
        except libvirt.libvirtError:
            return {}

    def abort_domain_job(self, dom):
        try:
            dom.abortJob()
        except libvirt.libvirtError:
            pass  # the job ended on its own meanwhile

    # -- added for volumes ------------------------------------------------------------------------------------------

    def lookup_secret(self, uuid):
        """The libvirt secret with this UUID, or None."""
        try:
            return self.conn.secretLookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_SECRET:
                return None
            raise LibvirtOperationError("cannot look up secret %s on %s: %s" % (uuid, self.uri, _message(exc)))

    def lookup_volume_secret(self, path):
        """The secret whose usage is the volume at ``path`` (libvirt allows one per path), or None."""
        try:
            return self.conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_VOLUME, path)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_SECRET:
                return None
            raise LibvirtOperationError("cannot look up the secret of %s on %s: %s" % (path, self.uri, _message(exc)))

    def secret_uuid(self, secret):
        return secret.UUIDString()

    def define_secret(self, xml):
        """Define (or, for a UUID that exists, redefine) a secret; its value is set separately."""
        return self._call("define a secret", self.conn.secretDefineXML, xml, 0)

    def set_secret_value(self, secret, value):
        # The value never appears in an error message: libvirt's own messages do not carry it either.
        self._call("set the value of secret %s" % secret.UUIDString(), secret.setValue, value, 0)

    def undefine_secret(self, secret):
        self._call("undefine secret %s" % secret.UUIDString(), secret.undefine)

    def build_volume(self, pool, xml, source=None):
        """Create a volume (empty, or a full copy of ``source`` converted to the new format and encryption).

        QEMU 7.2 sizes a new LUKS header by timing PBKDF2 in thread CPU time; where that clock is coarse (some VMs
        and sandboxes) the measurement now and then reads 0 ms and qemu-img gives up with "Unable to get accurate
        CPU usage". Nothing was created then (libvirt removes the partial volume), so trying again is safe.
        """
        what = "create a volume in %s" % pool.name()
        for attempt in range(_LUKS_ATTEMPTS):
            try:
                if source is None:
                    return pool.createXML(xml, 0)
                return pool.createXMLFrom(xml, source, 0)
            except libvirt.libvirtError as exc:
                if _LUKS_TIMING_QUIRK not in _message(exc) or attempt == _LUKS_ATTEMPTS - 1:
                    raise LibvirtOperationError("cannot %s on %s: %s" % (what, self.uri, _message(exc)))
                time.sleep(0.2)

    def domain_active(self, dom):
        return bool(dom.isActive())

    def attach_device(self, dom, xml, live):
        """Add a device to the persistent definition and, with ``live``, to the running guest (hot-plug)."""
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | (libvirt.VIR_DOMAIN_AFFECT_LIVE if live else 0)
        self._call("attach a device to %s" % dom.name(), dom.attachDeviceFlags, xml, flags)

    def detach_device(self, dom, xml, live):
        """Remove a device from the persistent definition and, with ``live``, ask the guest to release it.

        A live detach of a virtio disk needs the guest's consent (ACPI eject): libvirt waits 5 s for it and then
        returns with the removal still pending; the caller decides how long to keep waiting.
        """
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | (libvirt.VIR_DOMAIN_AFFECT_LIVE if live else 0)
        self._call("detach a device from %s" % dom.name(), dom.detachDeviceFlags, xml, flags)


def is_libvirt_error(exc):
    return HAS_LIBVIRT and isinstance(exc, libvirt.libvirtError)


def _abort(stream):
    try:
        stream.abort()
    except Exception:  # pylint: disable=broad-except
        pass


def _plain_name(name, field):
    # libvirt's C API takes NUL-terminated names: the Python binding raises a bare ValueError on an embedded NUL
    # (a traceback for the user), so it is refused here with the field it came from.
    if isinstance(name, str) and "\x00" in name:
        raise ValidationError("%r holds a NUL byte, which no libvirt name can" % name, field=field)


def _message(exc):
    return exc.get_error_message() if hasattr(exc, "get_error_message") else str(exc)


def _version_string(number):
    major, rest = divmod(int(number), 1000000)
    minor, release = divmod(rest, 1000)
    return "%d.%d.%d" % (major, minor, release)
