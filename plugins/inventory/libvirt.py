# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: libvirt
author:
  - virtfleet.compute developers (@virtfleet)
version_added: 0.1.0
short_description: libvirt compute hosts and their servers, as Nova's hypervisor list sees them
description:
  - Reads a configuration file whose name ends in C(.virtfleet.yml) or C(.virtfleet.yaml) listing the hypervisors by
    name and libvirt URI, connects to all of them at once, and makes each one an inventory host whose variables are
    what M(virtfleet.compute.host_info) reports - the host record (enabled or disabled with its reason, allocation
    ratios, reservations, availability zone, aggregates, traits), capacity and usage, and whether the host is up.
  - Every hypervisor is in the group C(compute). A host that is up is also in C(az_<zone>) for its availability
    zone and C(aggregate_<name>) for each of its aggregates, and in C(disabled) when its record disables it.
  - A host whose libvirt daemon cannot be reached, or does not answer within O(timeout) seconds, is in the group
    C(down) with C(virtfleet_up=false) and the reason in C(virtfleet_host.error). It never makes the inventory
    fail. Plays exclude such hosts with the host pattern C(compute:!down); the
    P(virtfleet.compute.scheduler#lookup) lookup skips them.
  - With O(add_servers), every managed server (a domain made by this collection) becomes an inventory host too,
    with C(ansible_host) set to its first IP address, in the groups C(servers), C(hypervisor_<host>),
    C(flavor_<flavor>), C(server_group_<group>) and C(tag_<tag>), so a playbook can configure the servers right
    after creating them.
  - Group names are made safe for Ansible, every character other than letters, digits and C(_) becomes C(_)
    (C(az-1) gives C(az_az_1)).
  - Host variables, for a hypervisor, C(virtfleet_uri) (its URI), C(virtfleet_up), and C(virtfleet_host) (the whole
    M(virtfleet.compute.host_info) result, see its RV(virtfleet.compute.host_info#module:host)); for a server,
    C(virtfleet_server) (as M(virtfleet.compute.server_info) shows it), C(virtfleet_hypervisor) (the inventory
    name of its host) and C(ansible_host). Values that come from the hosts and their guests are marked unsafe, so
    they are never evaluated as templates.
  - "With O(cache), every host is still asked on every run: the cache is a fallback for the hosts that do not
    answer, never a substitute for those that do. It keeps each host's last answer and the time of it; a host that
    does not answer is reported down with C(virtfleet_host.last_known) - C(read_at) (when it last answered, UTC),
    C(servers) (its managed servers then, as M(virtfleet.compute.server_info) shows them) and C(record) (its host
    record then). C(evacuate_host.yml) takes the servers of a dead host from there and says how old the list is.
    Its servers are not added as inventory hosts: they do not run anywhere now."
options:
  plugin:
    description: The name of this plugin; makes the file a source for it.
    type: str
    required: true
    choices:
      - virtfleet.compute.libvirt
  hypervisors:
    description:
      - The compute hosts, each with its inventory name and libvirt URI.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description:
          - The host's inventory name. When left out, the host part of O(hypervisors[].uri).
        type: str
      uri:
        description:
          - The libvirt URI, for example C(qemu+ssh://root@kvm-01/system), C(qemu+tls://kvm-01/system) or
            C(qemu:///system).
        type: str
        required: true
      vars:
        description:
          - More variables for this host, for example C(ansible_host) or C(ansible_user) when O(local_connection)
            is false.
        type: dict
        default: {}
  add_servers:
    description:
      - Also add every managed server of the hosts that are up as an inventory host.
      - A server's inventory name is its name; when that name is already taken (by a hypervisor or a server of the
        same name on another host) its UUID is used instead, with a warning.
    type: bool
    default: false
  concurrency:
    description:
      - How many hosts are asked at the same time. C(1) asks them one by one.
    type: int
    default: 16
  host_details:
    description:
      - Also read the hypervisor's version, CPU model, flags and NUMA cells. The CPU's traits (such as
        C(HW_CPU_X86_AVX2)) are only in C(traits) with this; the scheduler matches flavors' C(trait:) extra specs
        against them.
    type: bool
    default: true
  instance_pool:
    description:
      - The storage pool whose size is a host's local disk (C(local_gb)).
    type: str
    default: virtfleet-instances
  local_connection:
    description:
      - Give every hypervisor C(ansible_connection=local) and the controller's Python as its interpreter. The
        collection's modules reach a host through its URI (C(virtfleet_uri)), so they run on the controller (or
        in the AWX execution environment).
      - Set to false to connect to the hypervisors themselves (for example over SSH, with O(hypervisors[].vars)).
    type: bool
    default: true
  timeout:
    description:
      - Seconds to wait for a host's answer. A host that has not answered by then is reported down.
    type: float
    default: 30
  connect_timeout:
    description:
      - Seconds a host's libvirt connection may take to open; a host whose connection is not open by then is
        reported down with the URI and the time waited. For C(qemu+ssh://) URIs ssh is also given
        C(ConnectTimeout), so it does not wait on a peer that accepts the TCP connection and never speaks SSH.
    type: int
    default: 30
  allow_insecure_tcp:
    description:
      - Accept C(qemu+tcp://) URIs. libvirt's plain TCP transport has no encryption and, unless the daemon is set
        up with SASL, no authentication, so by default such a URI is refused when the configuration is read. Use
        C(qemu+tls://) or C(qemu+ssh://) instead, or set this on a network you trust.
    type: bool
    default: false
extends_documentation_fragment:
  - constructed
  - inventory_cache
notes:
  - Needs the libvirt Python bindings (C(libvirt-python)) on the controller.
  - Every host is asked in a thread of its own (libvirt's Python bindings release the interpreter lock while they
    wait), so the inventory takes about as long as the slowest host, not the sum of all of them.
  - The figures are those of the moment the inventory was read. The claim a server module makes on its host checks
    the capacity again before it builds anything.
  - With O(cache), the last answer of a host that stays down is kept as long as the cache entry lives; the
    C(jsonfile) cache plugin drops an entry not written for O(cache_timeout) seconds, so set it to C(0) (never) or
    longer than a host may stay down unnoticed. C(--flush-cache) forgets every last answer.
seealso:
  - module: virtfleet.compute.host_info
  - plugin: virtfleet.compute.scheduler
    plugin_type: lookup
"""

EXAMPLES = r"""
---
# inventory/cloud.virtfleet.yml: three hypervisors reached over SSH
plugin: virtfleet.compute.libvirt
hypervisors:
  - name: kvm-01
    uri: qemu+ssh://root@kvm-01.example.com/system
  - name: kvm-02
    uri: qemu+ssh://root@kvm-02.example.com/system
  - uri: qemu+ssh://root@kvm-03.example.com/system  # inventory name kvm-03.example.com

---
# The servers as hosts too; groups by CPU vendor, by server state and by free memory; a variable from the record
plugin: virtfleet.compute.libvirt
hypervisors:
  - name: kvm-01
    uri: qemu+tls://kvm-01/system
  - name: kvm-02
    uri: qemu+tls://kvm-02/system
add_servers: true
keyed_groups:
  - key: virtfleet_host.cpu.vendor
    prefix: cpu
  - key: virtfleet_server.state
    prefix: state
groups:
  nearly_full: virtfleet_up | default(false) and virtfleet_host.capacity.memory_mb.free < 4096
compose:
  free_ram_mb: virtfleet_host.capacity.memory_mb.free
  ansible_user: "'debian'"

---
# Keep each host's last answer, for the hosts that go down (evacuate_host.yml reads their last known servers)
plugin: virtfleet.compute.libvirt
hypervisors:
  - name: kvm-01
    uri: qemu+ssh://root@kvm-01/system
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/virtfleet-inventory
cache_timeout: 0

---
# In a playbook: place servers on the compute hosts with the inventory's figures (hosts that are down are skipped)
- name: Place the web servers
  ansible.builtin.set_fact:
    placements: >-
      {{ query('virtfleet.compute.scheduler', servers=web_servers, hostvar='virtfleet_host',
               hosts=dict(groups['compute'] | zip(groups['compute'] | map('extract', hostvars)))) }}
"""

# Ansible's plugin layout puts the documentation first, the imports after it.
import datetime  # noqa: E402
import queue  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

from ansible.errors import AnsibleParserError  # noqa: E402
from ansible.inventory.group import to_safe_group_name  # noqa: E402
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable  # noqa: E402
from ansible.utils.unsafe_proxy import wrap_var  # noqa: E402

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ValidationError  # noqa: E402
from ansible_collections.virtfleet.compute.plugins.module_utils._host_info import (  # noqa: E402
    INSTANCE_POOL,
    down_host,
    host_info,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._libvirt_client import (  # noqa: E402
    DEFAULT_CONNECT_TIMEOUT,
    HAS_LIBVIRT,
    LibvirtClient,
    check_uri_policy,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._server import list_servers  # noqa: E402

# 2: every host's answer carries its read_at, and a host that is down its last_known answer.
CACHE_VERSION = 2
GROUP_COMPUTE = "compute"
GROUP_DOWN = "down"
GROUP_DISABLED = "disabled"
GROUP_SERVERS = "servers"
_FILE_ENDINGS = (".virtfleet.yml", ".virtfleet.yaml")


# ---------------------------------------------------------------------------------------------------------------------
# Asking the hosts: plain Python, no Ansible objects, so tests and the benchmark call it directly.

def hypervisor_entries(hypervisors, allow_insecure_tcp=False):
    """The configured hypervisors as ``[{name, uri, vars}]``; ValueError names the bad entry."""
    entries, seen = [], set()
    for index, item in enumerate(hypervisors or []):
        where = "hypervisors[%d]" % index
        if isinstance(item, str):
            item = {"uri": item}
        if not isinstance(item, dict):
            raise ValueError("%s: must be a dict with name and uri" % where)
        uri = item.get("uri")
        if not uri or not isinstance(uri, str):
            raise ValueError("%s.uri: is required (a libvirt URI such as qemu+ssh://root@kvm-01/system)" % where)
        try:
            check_uri_policy(uri, allow_insecure_tcp)
        except ValidationError as exc:
            raise ValueError("%s.uri: %s" % (where, exc.message))
        name = item.get("name") or urlsplit(uri).hostname
        if not name:
            raise ValueError("%s.name: is required when the URI names no host (%s)" % (where, uri))
        name = str(name)
        if name in seen:
            raise ValueError("%s.name: %s appears twice" % (where, name))
        seen.add(name)
        extra = item.get("vars")
        extra = {} if extra is None else extra
        if not isinstance(extra, dict):
            raise ValueError("%s.vars: must be a dict" % where)
        unknown = sorted(set(item) - {"name", "uri", "vars"})
        if unknown:
            raise ValueError("%s: unknown key(s) %s (name, uri, vars)" % (where, ", ".join(unknown)))
        entries.append({"name": name, "uri": uri, "vars": extra})
    if not entries:
        raise ValueError("hypervisors: list at least one host (name and uri)")
    return entries


def ask_host(name, uri, add_servers=False, instance_pool=INSTANCE_POOL, details=True, client_factory=LibvirtClient,
             connect_timeout=DEFAULT_CONNECT_TIMEOUT, allow_insecure_tcp=False):
    """``(host, servers)`` for one hypervisor: its host_info dict, and its managed servers when asked and up.

    Never raises for the host's sake: a daemon that cannot be reached, or fails half way through, gives the host
    dict of a host that is down, with the reason.
    """
    client = client_factory(uri, connect_timeout=connect_timeout, allow_insecure_tcp=allow_insecure_tcp)
    try:
        host = host_info(client, name=name, instance_pool=instance_pool, details=details)
        servers = []
        if host.get("up") and add_servers:
            servers = list_servers(client)
            for server in servers:
                # libvirt's host name is the machine's, the same for every host of a lab or a nested cloud: the
                # inventory name is the one that identifies the hypervisor.
                server["hypervisor"] = name
        return host, servers
    except Exception as exc:  # noqa: BLE001 - one host's failure is that host's state, not the inventory's
        return down_host(name, uri, "%s" % (exc,)), []
    finally:
        client.close()


def ask_hosts(entries, concurrency=16, timeout=30.0, **options):
    """Ask every host of ``entries`` (``[{name, uri}]``) at once; ``[(host, servers)]`` in the order of entries.

    Workers are daemon threads: a host that hangs (an SSH transport waiting on a dead peer) is reported down after
    ``timeout`` seconds, a fresh worker takes its place, and the hung thread cannot keep the controller from exiting.
    """
    count = len(entries)
    results = [None] * count
    started = [None] * count
    if not count:
        return []
    todo = queue.Queue()
    for index in range(count):
        todo.put(index)
    done = queue.Queue()

    def worker():
        while True:
            try:
                index = todo.get_nowait()
            except queue.Empty:
                return
            started[index] = time.monotonic()
            entry = entries[index]
            done.put((index, ask_host(entry["name"], entry["uri"], **options)))

    def spawn():
        thread = threading.Thread(target=worker, name="virtfleet-inventory", daemon=True)
        thread.start()

    for _worker in range(max(1, min(int(concurrency), count))):
        spawn()
    pending = set(range(count))
    while pending:
        now = time.monotonic()
        waits = [started[i] + timeout - now for i in pending if started[i] is not None]
        try:
            index, answer = done.get(timeout=max(min(waits), 0.01) if waits else 0.05)
            if index in pending:
                results[index] = answer
                pending.discard(index)
        except queue.Empty:
            pass
        now = time.monotonic()
        for index in sorted(pending):
            if started[index] is not None and now - started[index] >= timeout:
                entry = entries[index]
                results[index] = (down_host(entry["name"], entry["uri"],
                                            "no answer from %s within %s seconds" % (entry["uri"], timeout)), [])
                pending.discard(index)
                spawn()  # the hung worker keeps its thread; the remaining hosts get a new one
    return results


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# The host record fields kept with a host's last answer.
_RECORD_FIELDS = ("enabled", "disabled_reason", "availability_zone", "aggregates", "traits", "virt_type")


def with_last_known(data, previous):
    """``data`` (this run's answers) where each host that is down carries its last answer from ``previous``.

    A host that answered before gives ``last_known`` (when, its servers, its record); a host that was already down
    then passes on the ``last_known`` it had, so the answer survives as long as the host stays down.
    """
    before = {}
    for host in (previous or {}).get("hypervisors") or []:
        name = host.get("name")
        if host.get("up") and host.get("read_at"):
            before[name] = {"read_at": host["read_at"],
                            "servers": ((previous.get("servers") or {}).get(name) or []),
                            "record": dict((k, host.get(k)) for k in _RECORD_FIELDS if k in host)}
        elif host.get("last_known"):
            before[name] = host["last_known"]
    hypervisors = []
    for host in data["hypervisors"]:
        if not host.get("up") and host.get("name") in before:
            host = dict(host, last_known=before[host["name"]])
        hypervisors.append(host)
    return dict(data, hypervisors=hypervisors)


# ---------------------------------------------------------------------------------------------------------------------

class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):

    NAME = "virtfleet.compute.libvirt"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(_FILE_ENDINGS)

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache=cache)
        self._read_config_data(path)
        try:
            entries = hypervisor_entries(self.get_option("hypervisors"),
                                         allow_insecure_tcp=self.get_option("allow_insecure_tcp"))
        except ValueError as exc:
            raise AnsibleParserError("%s: %s" % (path, exc))

        # Every host is asked, cache or not: the cache only stands in for a host that does not answer now.
        # (``cache`` is false with --flush-cache: the last answers are then forgotten.)
        use_cache = bool(self.get_option("cache"))
        cache_key = self.get_cache_key(path)
        previous = None
        if use_cache and cache:
            try:
                previous = self._cache[cache_key]
            except KeyError:
                previous = None
            if previous is not None and not self._cache_matches(previous, entries):
                previous = None
        data = self._ask(entries, list_servers=use_cache)
        if use_cache:
            data = with_last_known(data, previous)
            self._cache[cache_key] = data
        self._populate(entries, data)

    # -- asking ---------------------------------------------------------------------------------------------------

    def _ask(self, entries, list_servers=False):
        if not HAS_LIBVIRT:
            raise AnsibleParserError("the %s inventory needs the libvirt Python bindings on the controller "
                                     "(pip install libvirt-python)" % self.NAME)
        answers = ask_hosts(
            entries,
            concurrency=self.get_option("concurrency"),
            timeout=self.get_option("timeout"),
            # With the cache on, the servers are read even when not added: they are a host's last known list.
            add_servers=self.get_option("add_servers") or list_servers,
            instance_pool=self.get_option("instance_pool"),
            details=self.get_option("host_details"),
            connect_timeout=self.get_option("connect_timeout"),
            allow_insecure_tcp=self.get_option("allow_insecure_tcp"),
        )
        read_at = utc_now()
        return {
            "version": CACHE_VERSION,
            "hypervisors": [dict(host, uri=entry["uri"], **({"read_at": read_at} if host.get("up") else {}))
                            for entry, (host, _servers) in zip(entries, answers)],
            "servers": dict((entry["name"], servers) for entry, (_host, servers) in zip(entries, answers)),
        }

    @staticmethod
    def _cache_matches(data, entries):
        # A cache written for another list of hosts (the file was edited) is no answer for this one.
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return False
        cached = [(h.get("name"), h.get("uri")) for h in data.get("hypervisors") or []]
        return cached == [(e["name"], e["uri"]) for e in entries]

    # -- populating -----------------------------------------------------------------------------------------------

    def _populate(self, entries, data):
        inventory = self.inventory
        for group in (GROUP_COMPUTE, GROUP_DOWN, GROUP_DISABLED):
            inventory.add_group(group)
        hosts = dict((h["name"], h) for h in data["hypervisors"])
        for entry in entries:
            host = hosts[entry["name"]]
            name = entry["name"]
            inventory.add_host(name, group=GROUP_COMPUTE)
            variables = {
                "virtfleet_uri": entry["uri"],
                "virtfleet_up": bool(host.get("up")),
                # From the host and its guests (names, metadata, reasons): never to be evaluated as a template.
                "virtfleet_host": wrap_var(host),
            }
            if self.get_option("local_connection"):
                variables["ansible_connection"] = "local"
                # The Python running this inventory has libvirt-python; interpreter discovery could pick another.
                variables["ansible_python_interpreter"] = sys.executable
            variables.update(entry["vars"])
            for key, value in variables.items():
                inventory.set_variable(name, key, value)
            for group in self._hypervisor_groups(host):
                inventory.add_group(group)
                inventory.add_host(name, group=group)
            self._construct(name, variables)

        if self.get_option("add_servers"):
            inventory.add_group(GROUP_SERVERS)
            taken = set(hosts)
            for entry in entries:
                if not hosts[entry["name"]].get("up"):
                    continue  # a host that is down runs nothing now; its last known servers are in last_known
                for server in data["servers"].get(entry["name"]) or []:
                    self._add_server(entry["name"], server, taken)

    def _hypervisor_groups(self, host):
        if not host.get("up"):
            return [GROUP_DOWN]
        groups = []
        if not host.get("enabled", True):
            groups.append(GROUP_DISABLED)
        if host.get("availability_zone"):
            groups.append(self._group("az", host["availability_zone"]))
        for aggregate in sorted(host.get("aggregates") or {}):
            groups.append(self._group("aggregate", aggregate))
        return groups

    def _add_server(self, hypervisor, server, taken):
        inventory = self.inventory
        name = server.get("name")
        if not name or name in taken:
            self.display.warning("server %s on %s: the name is taken by another inventory host; it is added as %s"
                                 % (name, hypervisor, server.get("uuid")))
            name = server.get("uuid")
        taken.add(name)
        inventory.add_host(name, group=GROUP_SERVERS)
        variables = {
            "virtfleet_server": wrap_var(server),
            "virtfleet_hypervisor": hypervisor,
        }
        ips = server.get("ips") or []
        if ips:
            variables["ansible_host"] = wrap_var(ips[0])
        for key, value in variables.items():
            inventory.set_variable(name, key, value)
        groups = [self._group("hypervisor", hypervisor)]
        flavor = (server.get("flavor") or {}).get("name")
        if flavor:
            groups.append(self._group("flavor", flavor))
        if server.get("server_group"):
            groups.append(self._group("server_group", server["server_group"]))
        for tag in server.get("tags") or []:
            groups.append(self._group("tag", tag))
        for group in groups:
            inventory.add_group(group)
            inventory.add_host(name, group=group)
        self._construct(name, variables)

    @staticmethod
    def _group(prefix, value):
        return to_safe_group_name("%s_%s" % (prefix, value), force=True, silent=True)

    def _construct(self, name, variables):
        strict = self.get_option("strict")
        self._set_composite_vars(self.get_option("compose"), variables, name, strict=strict)
        self._add_host_to_composed_groups(self.get_option("groups"), variables, name, strict=strict)
        self._add_host_to_keyed_groups(self.get_option("keyed_groups"), variables, name, strict=strict)
