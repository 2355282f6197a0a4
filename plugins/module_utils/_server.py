# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The reconcile layer for servers: the declared server, the actual domain, and the plan between them.

``plan_server()`` compares once and returns a Plan: the steps to run, the before/after views for ``--diff``, and
warnings. Check mode reports the plan; the real run executes exactly the same steps (DESIGN.md principle 4).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import re
import uuid as uuidlib
import xml.etree.ElementTree as ET

from ansible_collections.virtfleet.compute.plugins.module_utils import (
    _attachments,
    _configdrive,
    _host_features,
    _limits,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._claims import Claim, grows
from ansible_collections.virtfleet.compute.plugins.module_utils._domain import (
    DISK_TARGETS,
    GIB,
    MIB,
    Domain,
    DomainSpec,
    Nic,
    ServerRecord,
    canonical,
    derive_mac,
    render_domain,
    spec_hash,
    volume_name,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._errors import (
    CapacityError,
    ConflictError,
    NotFoundError,
    ValidationError,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._fixed_ip import (
    plan_release,
    plan_reservation,
    validate_fixed_ip,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._flavor import Flavor
from ansible_collections.virtfleet.compute.plugins.module_utils._flavor_catalog import (
    read_catalog,
    resolve_flavor,
    snapshot_differences,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._host_info import (
    host_features,
    numa_cpu_cells,
    taken_cpus,
)
from ansible_collections.virtfleet.compute.plugins.module_utils._host_record import record_build_result
from ansible_collections.virtfleet.compute.plugins.module_utils._hypervisor import VIRT_TYPES, resolve_virt_type
from ansible_collections.virtfleet.compute.plugins.module_utils._pending import Pending
from ansible_collections.virtfleet.compute.plugins.module_utils._plan import Plan
from ansible_collections.virtfleet.compute.plugins.module_utils._records import RecordStore
from ansible_collections.virtfleet.compute.plugins.module_utils._wait import Deadline, progress, wait_for

STATES = ("running", "stopped", "paused", "suspended", "shelved", "present", "absent")
SERVER_GROUP_POLICIES = ("affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity")
NIC_MODELS = ("virtio", "e1000", "e1000e", "rtl8139")
DEFAULT_IMAGE_POOL = "virtfleet-images"
DEFAULT_INSTANCE_POOL = "virtfleet-instances"
SAFE_BASE_FORMATS = ("raw", "qcow2")
_KEY_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,255}$")
# Characters an XML 1.0 document cannot hold: they would only be refused by libvirt after volumes exist.
_XML_ILLEGAL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

# libvirt power states as users read them in a server's ``state``.
_POWER = {
    "running": "running",
    "blocked": "running",
    "pmsuspended": "running",
    "paused": "paused",
    "shutoff": "stopped",
    "shutdown": "stopped",
    "crashed": "stopped",
    "nostate": "stopped",
}

# Swap and ephemeral disks are formatted by the guest at first boot, by cloud-init from vendor data, since nothing
# may run on the host but libvirt. Disks are found by their serial, whatever the kernel names them.
_VENDOR_SWAP = (
    "  - [sh, -c, 'd=/dev/disk/by-id/virtio-swap0; [ -e $d ] && { blkid $d || mkswap $d; swapon $d || true; }']\n"
)
_VENDOR_EPHEMERAL = (
    "  - [sh, -c, 'd=/dev/disk/by-id/virtio-ephemeral0; [ -e $d ] && { blkid $d || mkfs.ext4 -q -L ephemeral0 $d; "
    "mkdir -p /mnt/ephemeral; mount $d /mnt/ephemeral || true; }']\n"
)


# The server module's options (without the connection and wait options), declared once: the servers batch module
# takes the same options per item.
SERVER_ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    state=dict(type="str", default="running",
               choices=["running", "stopped", "paused", "suspended", "shelved", "present", "absent"]),
    flavor=dict(type="raw"),
    image=dict(type="str"),
    image_pool=dict(type="str", default="virtfleet-images"),
    instance_pool=dict(type="str", default="virtfleet-instances"),
    networks=dict(type="list", elements="dict", options=dict(
        network=dict(type="str"),
        bridge=dict(type="str"),
        mac=dict(type="str"),
        model=dict(type="str", default="virtio", choices=["virtio", "e1000", "e1000e", "rtl8139"]),
        fixed_ip=dict(type="str"),
    ), mutually_exclusive=[("network", "bridge")], required_one_of=[("network", "bridge")]),
    hostname=dict(type="str"),
    # cloud-init user data often carries passwords: never printed in the invocation (-vvv) or any result.
    user_data=dict(type="str", no_log=True),
    ssh_authorized_keys=dict(type="list", elements="str", no_log=False),
    network_config=dict(type="dict"),
    metadata=dict(type="dict"),
    tags=dict(type="list", elements="str"),
    server_group=dict(type="raw"),
    availability_zone=dict(type="str"),
    virt_type=dict(type="str", default="auto", choices=["auto", "kvm", "qemu"]),
    allow_rebuild=dict(type="bool", default=False),
    shutdown_timeout=dict(type="int", default=120),
    volumes=dict(type="list", elements="dict", options=dict(
        name=dict(type="str", required=True),
        pool=dict(type="str", default="virtfleet-volumes"),
        bus=dict(type="str", default="virtio", choices=["virtio", "scsi"]),
        device=dict(type="str"),
        read_only=dict(type="bool", default=False),
    )),
    delete_volumes=dict(type="bool", default=False),
)


class ServerRequest:
    """A server as declared: validated and normalised, independent of any host.

    Options left out (None) mean "keep what the server has" for an existing server, so ``state: stopped`` needs no
    more than a name; creating a server needs at least a flavor and an image.
    """

    def __init__(self, params):
        self.name = _configdrive.validate_hostname(params.get("name"), field="name")
        if "." in self.name or len(self.name) > 63:
            raise ValidationError("must be a single host name label (no dots, at most 63 characters)", field="name")
        self.state = params.get("state") or "running"
        if self.state not in STATES:
            raise ValidationError("must be one of %s" % ", ".join(STATES), field="state")
        self.allow_rebuild = bool(params.get("allow_rebuild"))
        self.wait = params.get("wait", True)
        self.wait_timeout = int(params.get("wait_timeout") or 600)
        self.shutdown_timeout = int(params.get("shutdown_timeout") or 120)
        self.image_pool = params.get("image_pool") or DEFAULT_IMAGE_POOL
        self.instance_pool = params.get("instance_pool") or DEFAULT_INSTANCE_POOL
        self.virt_type = params.get("virt_type") or "auto"
        if self.virt_type not in VIRT_TYPES:
            raise ValidationError("must be one of %s" % ", ".join(VIRT_TYPES), field="virt_type")
        # Deleting a server leaves its data volumes alone unless this says otherwise (Nova's delete_on_termination).
        self.delete_volumes = bool(params.get("delete_volumes"))
        if self.state == "absent":
            return
        flavor = params.get("flavor")
        self.flavor = None if flavor is None else _flavor(flavor)
        self.image = params.get("image")
        hostname = params.get("hostname")
        self.hostname = None if hostname is None else _configdrive.validate_hostname(hostname, field="hostname")
        self.user_data = _limits.validate_user_data(params.get("user_data"))
        keys = params.get("ssh_authorized_keys")
        self.ssh_authorized_keys = None if keys is None else list(keys)
        for index, key in enumerate(self.ssh_authorized_keys or []):
            if not isinstance(key, str) or len(key.split()) < 2:
                raise ValidationError("is not an SSH public key (type and key expected)",
                                      field="ssh_authorized_keys[%d]" % index)
        self.network_config = params.get("network_config")
        metadata = params.get("metadata")
        self.metadata = None if metadata is None else _limits.validate_metadata_size(_string_map(metadata, "metadata"))
        tags = params.get("tags")
        self.tags = None if tags is None else _tags(tags)
        networks = params.get("networks")
        self.nics = None if networks is None else _nics(self.name, networks)
        # None: keep the attachments an existing server has; [] detaches every data volume.
        self.volumes = _attachments.validate_attachments(params.get("volumes"))
        self.placement = _placement_facts(params.get("server_group"), params.get("availability_zone"))

    @property
    def cloud_init_given(self):
        return any(v is not None for v in (self.hostname, self.user_data, self.ssh_authorized_keys,
                                           self.network_config))

    def for_new_server(self):
        """The definition of a server to create: every omitted option takes its default."""
        if self.flavor is None:
            raise ValidationError("is required to create server %s (vcpus, ram_mb, disk_gb)" % self.name,
                                  field="flavor")
        if not self.image:
            raise ValidationError("is required to create server %s (a base image in %s)" % (self.name, self.image_pool),
                                  field="image")
        return Definition(
            flavor=self.flavor, image={"pool": self.image_pool, "name": self.image}, nics=self.nics or [],
            metadata=self.metadata or {}, tags=self.tags or [], hostname=self.hostname or self.name,
            cloud_init=self._cloud_init(self.hostname or self.name),
            facts=dict(((k, v) for k, v in self.placement.items() if v),
                       **({"vm_state": "shelved"} if self.state == "shelved" else {})))

    def for_existing(self, domain):
        """The definition of an existing server: declared options, and the server's own values for the rest."""
        record = domain.record
        image = record.image or {}
        if self.image:
            image = {"pool": self.image_pool, "name": self.image}
        # The host name is in the server's record, so it is kept even when other cloud-init options are declared.
        hostname = self.hostname or record.hostname or self.name
        return Definition(
            flavor=self.flavor or _current_flavor(domain),
            image=image,
            nics=self.nics if self.nics is not None else domain.managed_nics(),
            metadata=self.metadata if self.metadata is not None else record.metadata,
            tags=self.tags if self.tags is not None else record.tags,
            hostname=hostname,
            cloud_init=self._cloud_init(hostname) if self.cloud_init_given else None,
            facts=_merge_facts(record.extra, self.placement))

    def _cloud_init(self, hostname):
        return {"hostname": hostname, "user_data": self.user_data,
                "ssh_authorized_keys": self.ssh_authorized_keys or [], "network_config": self.network_config}


class Definition:
    """The complete definition of one server (declared options merged with the server's own values)."""

    def __init__(self, flavor, image, nics, metadata, tags, hostname, cloud_init, facts=None):
        self.flavor = flavor
        self.image = image  # {"pool": ..., "name": ...}
        self.nics = nics
        self.metadata = metadata
        self.tags = tags
        self.hostname = hostname
        # None: leave the config drive as it is (no cloud-init option was given for an existing server).
        self.cloud_init = cloud_init
        # String facts kept in the record for the scheduler and the inventory: server group, its policy, AZ.
        self.facts = dict(facts or {})

    def hash(self, virt_type, config_drive_hash):
        return spec_hash({
            "flavor": self.flavor.to_dict(),
            "image": self.image,
            "nics": [nic.to_dict() for nic in self.nics],
            "metadata": self.metadata,
            "tags": self.tags,
            "hostname": self.hostname,
            "virt_type": virt_type,
            "config_drive": config_drive_hash,
            "facts": self.facts,
        })


class ActualServer:
    """A domain as it is now: its parsed definition, power state and (when running) addresses."""

    def __init__(self, client, dom):
        self.dom = dom
        # With its secrets (the VNC console's password): a redefinition starts from this XML and must keep them.
        self.domain = Domain(client.domain_xml_secure(dom, inactive=True))
        self.libvirt_state = client.domain_state(dom)
        self.power = _POWER.get(self.libvirt_state, "stopped")
        if self.power == "stopped" and client.domain_has_managed_save(dom):
            self.power = "suspended"
        self.addresses = client.domain_addresses(dom) if self.power == "running" else {}
        if self.managed:
            self.addresses = _drop_stale_leases(client, self.domain.managed_nics(), self.addresses)

    @property
    def managed(self):
        return self.domain.managed

    @property
    def record(self):
        return self.domain.record


def read_server(client, name):
    dom = client.lookup_domain(name)
    return ActualServer(client, dom) if dom is not None else None


def server_view(actual, hypervisor=None):
    """What a user sees of a managed server (server_info, the module's ``server`` result and ``--diff``)."""
    domain = actual.domain
    record = domain.record
    flavor = record.flavor.to_dict() if record.flavor else {}
    flavor["vcpus"] = domain.vcpus
    flavor["ram_mb"] = domain.ram_mb
    networks = []
    ips = []
    for nic in domain.managed_nics():
        entry = nic.to_dict()
        entry["ips"] = actual.addresses.get(nic.mac, [])
        ips.extend(addr.split("/")[0] for addr in entry["ips"])
        networks.append(entry)
    view = {
        "name": domain.name,
        "uuid": domain.uuid,
        "state": actual.power,
        "managed": True,
        "virt_type": domain.virt_type,
        "flavor": flavor,
        "image": (record.image or {}).get("name"),
        "image_pool": (record.image or {}).get("pool"),
        "hostname": record.hostname,
        "networks": networks,
        "ips": ips,
        "metadata": record.metadata,
        "tags": record.tags,
        "created": record.created,
        "volumes": dict((role, "%s/%s" % (v["pool"], v["name"])) for role, v in record.volumes.items()),
        "attachments": _attachments.attached_view(domain.tree),
        "config_drive": (record.config_drive_hash or "")[:12] or None,
        "config_drive_rewritten": domain.config_drive_rewritten,
    }
    if hypervisor:
        view["hypervisor"] = hypervisor
    view.update(record.extra)
    view["locked"] = lock_view(record.extra)
    return view


# Nova's server lock: who locked the server, when and why, kept in its record's facts. A locked server refuses every
# change from every module (server, servers, server_action) until server_action unlocks it.
LOCK_FACTS = ("locked_at", "locked_by", "locked_reason")


def lock_view(facts):
    """{"at", "by", "reason"} of a locked server's facts (a record's extra facts or a server view), or None."""
    if not (facts or {}).get("locked_at"):
        return None
    return {"at": facts.get("locked_at"), "by": facts.get("locked_by") or None,
            "reason": facts.get("locked_reason") or None}


def refuse_if_locked(name, facts, doing):
    """Raise ConflictError when the server is locked: ``doing`` says what was refused."""
    lock = lock_view(facts)
    if lock is not None:
        raise ConflictError(
            "%s is locked (by %s at %s%s): %s is refused until it is unlocked (server_action action=unlock)"
            % (name, lock["by"] or "an unknown user", lock["at"], "; reason: %s" % lock["reason"] if lock["reason"]
               else "", doing), field="name")


def _diff_view(view):
    """The part of a view that ``--diff`` compares: the declared fields, without runtime facts like IPs."""
    if view is None:
        return {}
    keep = ("state", "virt_type", "flavor", "image", "image_pool", "hostname", "networks", "metadata", "tags",
            "server_group", "server_group_policy", "availability_zone",
            "config_drive", "attachments")
    out = dict((k, view.get(k)) for k in keep)
    out["networks"] = [dict((k, v) for k, v in n.items() if k != "ips") for n in view.get("networks") or []]
    return out


class ServerPlanner:
    """Compares one declared server with its domain on one host and plans the steps between them."""

    def __init__(self, client, request, now=None, pending=None):
        self.client = client
        self.request = request
        self.now = now or datetime.datetime.utcnow().replace(microsecond=0).isoformat() + "Z"
        self._host_record_cache = None
        # Check mode only: what earlier tasks of the same run would create (see _pending.py).
        self.pending = Pending(pending)

    def plan(self):
        req = self.request
        if isinstance(getattr(req, "flavor", None), str):
            # A catalog name means what this host's catalog says it means (after the catalog task above, if any).
            req.flavor = self.pending.flavor(req.flavor) or resolve_flavor(self.client, req.flavor, field="flavor")
        actual = read_server(self.client, req.name)
        plan = Plan()
        plan.actual = actual
        plan.powers_on = False  # set when a step starts the guest (its DHCP leases are then renewed)
        plan.nics = []
        if actual is not None and not actual.managed:
            raise ConflictError(
                "a domain called %s exists on %s but was not created by virtfleet.compute; it is never touched. "
                "Choose another name or remove that domain yourself" % (req.name, self.client.uri), field="name")
        plan.before = _diff_view(server_view(actual)) if actual is not None else {}
        if req.state == "absent":
            if actual is not None:
                self._plan_delete(plan, actual)
        elif actual is None:
            self._plan_create(plan, req.for_new_server())
        else:
            self._plan_update(plan, actual, req.for_existing(actual.domain))
        if actual is not None and plan.steps:
            # Planned first, so a locked server that is as declared is simply unchanged.
            refuse_if_locked(req.name, actual.record.extra, "this change (%s)" % "; ".join(plan.actions))
        return plan

    # -- delete -----------------------------------------------------------------------------------------------------

    def _plan_delete(self, plan, actual):
        dom = actual.dom
        client = self.client
        name = actual.domain.name
        for ref in actual.record.volumes.values():
            # Checked before any step, so a refusal leaves the server whole (and check mode predicts it).
            if not _owned_by(ref, name):
                raise ConflictError("refusing to delete %s: its record lists volume %s/%s, which is not named after "
                                    "it; the record was edited by hand. Fix the record or delete the server yourself"
                                    % (name, ref["pool"], ref["name"]), field="name")
        # Attached data volumes outlive the server unless delete_volumes says otherwise; a volume another server
        # also has is refused here, before any step.
        data_volume_steps = []
        if self.request.delete_volumes:
            data_volume_steps = _attachments.delete_attached_steps(client, name, actual.domain.tree)
        if actual.power in ("running", "paused"):
            plan.add("power off %s" % name, lambda: client.destroy_domain(dom))
        plan.add("undefine domain %s" % name, lambda: client.undefine_domain(dom))
        for nic in actual.domain.managed_nics():
            if nic.kind == "network" and nic.fixed_ip:
                step = plan_release(client, nic.source, nic.mac)
                if step is not None:
                    plan.add(*step)
        for role, ref in sorted(actual.record.volumes.items()):
            plan.add("delete %s volume %s/%s" % (role, ref["pool"], ref["name"]),
                     _delete_volume_step(client, ref, name))
        for label, run in data_volume_steps:
            plan.add(label, run)

    # -- create -----------------------------------------------------------------------------------------------------

    def _plan_create(self, plan, definition):
        req = self.request
        client = self.client
        flavor = definition.flavor
        missing = self.pending.missing_pools(client, (definition.image["pool"], req.instance_pool))
        if missing:
            # Disks and the claim are planned against the pool itself, which check mode cannot create.
            plan.add("create %s after the storage pool creation above (%s); its disks and claim are planned once "
                     "the pool exists" % (req.name, ", ".join(missing)), lambda: None)
            plan.after = {"state": "stopped" if req.state in ("present", "shelved") else req.state,
                          "flavor": flavor.to_dict(), "image": definition.image.get("name")}
            plan.created = True
            return
        resolved = self._resolve_references(definition)
        _refuse_unmet_features(client, flavor)
        image = resolved["image"]
        instance_pool = resolved["instance_pool"]
        root_bytes = self._root_bytes(flavor, image)
        # Checked now, so a server that does not fit fails before anything is made (and check mode says so).
        claim = self._claim_create(flavor, image, root_bytes)
        server_uuid = str(uuidlib.uuid4())

        volumes = {}
        for role, wanted in (("root", True), ("config", True), ("ephemeral", flavor.ephemeral_gb),
                             ("swap", flavor.swap_mb)):
            if wanted:
                volumes[role] = {"pool": req.instance_pool, "name": volume_name(req.name, server_uuid, role)}

        drive_inputs = self._config_drive_inputs(server_uuid, definition)
        drive_hash = _drive_hash(drive_inputs)
        record = self._record(definition, resolved["virt_type"], drive_hash, volumes, created=self.now,
                              built_hash=drive_hash)
        xml = render_domain(DomainSpec(req.name, server_uuid, resolved["virt_type"], flavor, definition.nics,
                                       volumes, record, **cpu_pinning(client, flavor, req.name)))

        # A new server has its data volumes in its first definition: no hot-plug, and nothing to undo but the domain.
        attachments = None
        if req.volumes:
            attachments = _attachments.plan_attachments(client, req.name, req.volumes)
            xml = attachments.render(xml)

        # Labels name the disks by role, not by volume name: the volume names carry the new server's UUID, which
        # check mode cannot know, and check mode must list exactly the steps the real run takes.
        plan.add("create root disk (%s qcow2 overlay on %s/%s)"
                 % (_size_text(root_bytes), image["pool"], image["name"]),
                 lambda: client.create_volume(instance_pool, _overlay_xml(volumes["root"]["name"], root_bytes, image)),
                 undo=_delete_volume_step(client, volumes["root"], req.name))
        delete_drive = _delete_volume_step(client, volumes["config"], req.name)

        def write_drive():
            try:
                self._write_config_drive(instance_pool, volumes["config"]["name"], drive_inputs)
            except Exception:
                # The step creates the volume and then uploads: if the upload fails, the step never counts as
                # done and its undo would not run, so it cleans up its own half.
                delete_drive()
                raise

        plan.add("write config drive", write_drive, undo=delete_drive)
        if "ephemeral" in volumes:
            plan.add("create ephemeral disk (%d GiB)" % flavor.ephemeral_gb,
                     _create_blank_step(client, instance_pool, volumes["ephemeral"]["name"], flavor.ephemeral_gb * GIB),
                     undo=_delete_volume_step(client, volumes["ephemeral"], req.name))
        if "swap" in volumes:
            plan.add("create swap disk (%d MiB)" % flavor.swap_mb,
                     _create_blank_step(client, instance_pool, volumes["swap"]["name"], flavor.swap_mb * MIB),
                     undo=_delete_volume_step(client, volumes["swap"], req.name))

        holder = {}

        def define():
            holder["dom"] = client.define_domain(xml)

        def undefine():
            dom = holder.get("dom") or client.lookup_domain(req.name)
            if dom is not None:
                client.destroy_domain(dom)
                client.undefine_domain(dom)

        for nic in definition.nics:
            if nic.fixed_ip:
                step = plan_reservation(client, nic.source, nic.mac, nic.fixed_ip, hostname=definition.hostname)
                if step is not None:
                    plan.add(*step)
        if claim.needed:
            plan.add(claim.acquire_label, claim.acquire, undo=claim.release)
        plan.add("define domain %s (%s, %d vCPU, %d MiB)" % (req.name, resolved["virt_type"], flavor.vcpus,
                                                             flavor.ram_mb), define, undo=undefine)
        if claim.needed:
            plan.add(claim.verify_label, claim.verify_and_release, undo=claim.release)
        final = "stopped" if req.state in ("present", "shelved") else req.state
        plan.nics = definition.nics
        self._plan_power(plan, "stopped", final, lambda: holder["dom"], creating=True)
        plan.after = _predicted_view(definition, record, resolved["virt_type"], final)
        plan.after["attachments"] = attachments.view() if attachments else []
        plan.created = True

    # -- update -----------------------------------------------------------------------------------------------------

    def _plan_update(self, plan, actual, definition):
        req = self.request
        client = self.client
        domain = actual.domain
        record = domain.record
        dom = actual.dom
        flavor = definition.flavor

        virt_type = domain.virt_type
        if req.virt_type != "auto" and req.virt_type != domain.virt_type:
            virt_type = resolve_virt_type(client, req.virt_type, self._host_record())

        drive_inputs = None
        drive_hash = record.config_drive_hash
        if definition.cloud_init is not None:
            drive_inputs = self._config_drive_inputs(domain.uuid, definition)
            drive_hash = _drive_hash(drive_inputs)
        # Shelved is a fact of the record (server_action's vm_state), powered off: host_info then leaves the
        # server's vCPUs and RAM out of the host's usage. Any other state than present unshelves it.
        shelved = record.extra.get("vm_state") == "shelved"
        if req.state == "shelved" and not shelved:
            if record.extra.get("vm_state"):
                raise ConflictError("%s is %s; finish that first (server_action)" % (req.name,
                                                                                     record.extra["vm_state"]))
            definition.facts = dict(definition.facts, vm_state="shelved", shelved_at=self.now)
        elif req.state not in ("shelved", "present") and shelved:
            definition.facts = dict((k, v) for k, v in definition.facts.items()
                                    if k not in ("vm_state", "shelved_at"))
        new_hash = definition.hash(virt_type, drive_hash)
        pending = record.extra.get("vm_state")
        if pending in ("resized", "rescued") and new_hash != record.spec_hash:
            # The old definition is kept for revert_resize / unrescue; changing the server now would lose it.
            raise ConflictError(
                "%s is %s; finish that first with server_action (%s), then declare the change"
                % (req.name, pending, "confirm_resize or revert_resize" if pending == "resized" else "unrescue"))
        rebuild = (record.image or {}) != definition.image
        new_record = self._record(definition, virt_type, drive_hash, dict(record.volumes), created=record.created,
                                  spec_hash_value=new_hash,
                                  built_hash=drive_hash if rebuild else record.config_drive_built_hash)

        if req.nics is not None:
            self._check_networks(definition.nics, hostname=definition.hostname)
        reservation_steps, release_steps = self._plan_fixed_ip_changes(definition, domain)
        offline_steps = []  # (label, run, undo) that need the guest powered off
        online_steps = []  # (label, run, undo) fine while it runs
        # New extra specs (pinning, hugepages, quotas...) take effect when QEMU starts, as after a resize in Nova.
        old_specs = record.flavor.extra_specs if record.flavor else {}
        restart = (virt_type != domain.virt_type or flavor.vcpus != domain.vcpus or flavor.ram_mb != domain.ram_mb
                   or flavor.extra_specs != old_specs
                   or _wiring(definition.nics) != _wiring(domain.managed_nics()))

        if rebuild and not req.allow_rebuild:
            raise ConflictError(
                "the server runs image %s/%s; changing it to %s/%s means rebuilding its root disk (its data is "
                "lost). Set allow_rebuild: true to rebuild, or keep the image"
                % ((record.image or {}).get("pool"), (record.image or {}).get("name"), definition.image["pool"],
                   definition.image["name"]), field="image")

        # The volumes are only looked at when the declared spec differs from the one the server was built from:
        # an unchanged server costs one XML read, however many disks it has.
        if record.spec_hash != new_hash or rebuild:
            pool = client.lookup_pool(record.volumes["root"]["pool"], field="instance_pool")
            if rebuild:
                image = self._resolve_references(definition, instance_pool=pool, check_virt_type=False)["image"]
                name = record.volumes["root"]["name"]
                offline_steps.append((
                    "rebuild root disk %s from %s/%s (its content is replaced)" % (name, image["pool"], image["name"]),
                    _rebuild_root_step(client, pool, name, self._root_bytes(flavor, image), image), None))
            else:
                self._plan_disk_growth(online_steps, pool, actual, record.volumes["root"], "root",
                                       flavor.disk_gb * GIB if flavor.disk_gb else 0, "flavor.disk_gb")
            for role, size in (("ephemeral", flavor.ephemeral_gb * GIB), ("swap", flavor.swap_mb * MIB)):
                ref = record.volumes.get(role)
                if ref is None and size:
                    name = volume_name(req.name, domain.uuid, role)
                    new_record.volumes[role] = {"pool": client.pool_name(pool), "name": name}
                    offline_steps.append(("create %s disk %s" % (role, name),
                                          _create_blank_step(client, pool, name, size),
                                          _delete_volume_step(client, new_record.volumes[role], req.name)))
                elif ref is not None and not size:
                    raise ConflictError(
                        "removing the %s disk would destroy its data; keep %s in the flavor or rebuild the server"
                        % (role, "swap_mb" if role == "swap" else "ephemeral_gb"), field="flavor")
                elif ref is not None:
                    self._plan_disk_growth(online_steps, pool, actual, ref, role, size,
                                           "flavor.swap_mb" if role == "swap" else "flavor.ephemeral_gb")
            if drive_hash != record.config_drive_hash:
                ref = record.volumes["config"]
                online_steps.append(("rewrite config drive %s" % ref["name"],
                                     lambda: self._write_config_drive(pool, ref["name"], drive_inputs), None))
                if not rebuild:
                    plan.warnings.append(
                        "the config drive of %s was rewritten: cloud-init applies SSH keys and user data at the first "
                        "boot of a root disk, so a guest that has booted keeps the ones it first read "
                        "(config_drive_rewritten: true). Rebuild it to apply them (server_action action=rebuild, "
                        "its root disk is replaced), or re-run cloud-init in the guest" % req.name)

        _refuse_unmet_features(client, flavor, old_specs=old_specs)
        current_flavor = _current_flavor(domain)
        claim = None
        if shelved and req.state not in ("shelved", "present"):
            # An unshelve claims vCPUs and RAM again: host_info counts a shelved server's disks only.
            claim = Claim(client, req.name, flavor, instance_pool=record.volumes["root"]["pool"])
        elif grows(flavor, current_flavor):  # an unchanged or shrinking server costs no usage scan
            claim = Claim(client, req.name, flavor, old_flavor=current_flavor,
                          instance_pool=record.volumes["root"]["pool"])
        spec = DomainSpec(req.name, domain.uuid, virt_type, flavor, definition.nics, new_record.volumes, new_record,
                          **cpu_pinning(client, flavor, req.name))
        old_xml = ET.tostring(domain.tree, encoding="unicode")
        new_xml = render_domain(spec, base_xml=old_xml)
        definition_changed = canonical(new_xml) != canonical(old_xml)

        attachments = None
        if req.volumes is not None:
            # The live XML too: a disk whose unplug the guest has not acknowledged yet still holds its target.
            live_xml = client.domain_xml(dom, inactive=False) if actual.power in ("running", "paused") else None
            attachments = _attachments.plan_attachments(client, req.name, req.volumes, old_xml, live_xml)

        power = actual.power
        target = power if req.state == "present" else "stopped" if req.state == "shelved" else req.state
        needs_offline = bool(offline_steps) or (restart and definition_changed)
        if needs_offline and power == "suspended":
            raise ConflictError(
                "%s is suspended to disk and this change needs it powered off; its saved memory would not match the "
                "new definition. Resume it (state: running) or stop it (state: stopped) first" % req.name)
        if needs_offline and power in ("running", "paused"):
            self._plan_stop(plan, lambda: dom, power, hard=rebuild)
            # If a later step fails, the server comes back as it was rather than staying off.
            plan.steps[-1].undo = _restore_power_step(client, dom, power)
            if req.state == "present":
                target = power  # present keeps the power state it found: come back up after the change
            power = "stopped"
        if claim is not None and claim.needed:
            plan.add(claim.acquire_label, claim.acquire, undo=claim.release)
        for label, func, undo in reservation_steps + offline_steps + online_steps:
            plan.add(label, func, undo=undo)
        if definition_changed:
            plan.add("update definition of %s" % req.name, lambda: client.define_domain(new_xml))
        for step in release_steps:
            plan.add(*step)
        if claim is not None and claim.needed:
            plan.add(claim.verify_label, claim.verify_and_release, undo=claim.release)
        # Attachments change after the definition is written (redefining from the old XML would drop a disk attached
        # before). A server on its way down is stopped first: its disks then change in the definition only, with no
        # unplug for the guest to acknowledge.
        attach_steps = attachments.steps(client, lambda: dom) if attachments is not None else []
        if target != "stopped":
            for label, run, undo in attach_steps:
                plan.add(label, run, undo=undo)
        plan.nics = definition.nics
        self._plan_power(plan, power, target, lambda: dom)
        if target == "stopped":
            for label, run, undo in attach_steps:
                plan.add(label, run, undo=undo)
        plan.after = _predicted_view(definition, new_record, virt_type, target)
        plan.after["attachments"] = (attachments.view() if attachments is not None
                                     else _attachments.attached_view(domain.tree))

    def _plan_disk_growth(self, steps, pool, actual, ref, role, wanted, field):
        """Grow a disk in place (live if the server runs) when the flavor asks for more; refuse to shrink."""
        client = self.client
        vol = client.lookup_volume(pool, ref["name"])
        if vol is None:
            raise NotFoundError("the %s disk %s/%s of %s is missing" % (role, client.pool_name(pool), ref["name"],
                                                                        actual.domain.name))
        current = client.volume_info(vol)["capacity"]
        if wanted == 0:
            return  # disk_gb 0: "as large as the image" never shrinks an existing disk
        if wanted < current:
            raise ConflictError(
                "the %s disk is %s and a disk never shrinks; declare at least that size, or rebuild the server"
                % (role, _size_text(current)), field=field)
        if wanted > current:
            dom = actual.dom
            steps.append(("grow %s disk %s from %s to %s" % (role, ref["name"], _size_text(current),
                                                             _size_text(wanted)),
                          _grow_step(client, vol, dom, DISK_TARGETS[role], wanted), None))

    # -- power ------------------------------------------------------------------------------------------------------

    def _plan_stop(self, plan, get_dom, power, hard=False):
        client = self.client
        timeout = self.request.shutdown_timeout
        if hard or power == "paused":
            # A paused guest cannot hear the power button; a rebuild throws the disk away anyway.
            plan.add("power off %s" % self.request.name, lambda: client.destroy_domain(get_dom()))
        else:
            plan.add("shut down %s (ACPI, then power off after %d s)" % (self.request.name, timeout),
                     lambda: graceful_stop(client, get_dom(), timeout))

    def _plan_power(self, plan, current, target, get_dom, creating=False):
        client = self.client
        name = self.request.name
        if target == current:
            return
        undo = (lambda: client.destroy_domain(get_dom())) if creating else None
        if current == "suspended":
            if target == "stopped":
                plan.add("discard saved state of %s" % name, lambda: client.remove_managed_save(get_dom()))
                return
            current = "stopped"  # starting restores the saved state
        if target == "running":
            if current == "paused":
                plan.add("resume %s" % name, lambda: client.resume_domain(get_dom()))
            else:
                plan.add("start %s" % name, lambda: client.start_domain(get_dom()), undo=undo)
                plan.powers_on = True
        elif target == "paused":
            if current == "stopped":
                plan.add("start %s" % name, lambda: client.start_domain(get_dom()), undo=undo)
            plan.add("pause %s" % name, lambda: client.suspend_domain(get_dom()))
        elif target == "stopped":
            self._plan_stop(plan, get_dom, current)
        elif target == "suspended":
            if current == "stopped":
                # Nothing to save yet: the guest boots, and is saved as it runs (managed save).
                plan.add("start %s" % name, lambda: client.start_domain(get_dom()), undo=undo)
            plan.add("suspend %s to disk (managed save)" % name, lambda: client.managed_save(get_dom()))

    # -- helpers ----------------------------------------------------------------------------------------------------

    def _record(self, definition, virt_type, drive_hash, volumes, created, spec_hash_value=None, built_hash=None):
        return ServerRecord(
            config_drive_built_hash=built_hash,
            created=created,
            spec_hash=spec_hash_value or definition.hash(virt_type, drive_hash),
            flavor=definition.flavor,
            image=definition.image,
            config_drive_hash=drive_hash,
            volumes=volumes,
            metadata=definition.metadata,
            tags=definition.tags,
            hostname=definition.hostname,
            extra=definition.facts,
            fixed_ips=dict((nic.mac, nic.fixed_ip) for nic in definition.nics if nic.fixed_ip),
        )

    def _resolve_references(self, definition, instance_pool=None, check_virt_type=True):
        """Look up everything the definition names on the host; fail before any change if something is missing."""
        req = self.request
        client = self.client
        out = {}
        image_ref = definition.image
        image_pool = client.lookup_pool(image_ref["pool"], field="image_pool")
        vol = client.lookup_volume(image_pool, image_ref["name"])
        pending = self.pending.image(image_ref["pool"], image_ref["name"]) if vol is None else None
        if pending is not None:
            out["image"] = pending  # imported by the image task above (check mode)
        elif vol is None:
            raise NotFoundError("image %s not found in storage pool %s (import it with the image module)"
                                % (image_ref["name"], image_ref["pool"]), field="image")
        else:
            out["image"] = _base_image(client, image_ref, vol)
        out["instance_pool"] = instance_pool or client.lookup_pool(req.instance_pool, field="instance_pool")
        self._check_networks(definition.nics, hostname=definition.hostname)
        if check_virt_type:
            out["virt_type"] = resolve_virt_type(client, req.virt_type, self._host_record())
        return out

    def _check_networks(self, nics, hostname=None):
        client = self.client
        for index, nic in enumerate(nics):
            field = "networks[%d]" % index
            pending = self.pending.network(nic.source) if nic.kind == "network" else None
            if pending is not None and client.lookup_network(nic.source) is None:
                # Created by the network task above (check mode); its subnet was checked with the declared state.
                if self.request.state in ("running", "paused") and not pending.get("active", True):
                    raise ValidationError("libvirt network %s would not be active; start it (network module) before "
                                          "starting servers on it" % nic.source, field=field + ".network")
                continue
            if nic.kind == "network":
                net = client.lookup_network(nic.source)
                if net is None:
                    raise NotFoundError("libvirt network %s does not exist on %s" % (nic.source, client.uri),
                                        field=field + ".network")
                if self.request.state in ("running", "paused") and not client.network_active(net):
                    raise ValidationError("libvirt network %s is not active; start it (network module) before "
                                          "starting servers on it" % nic.source, field=field + ".network")
            if nic.kind == "bridge" and client.host_interface_exists(nic.source) is False:
                # Checked here so check mode does not predict a server that libvirt then cannot start.
                raise NotFoundError("host bridge %s does not exist on %s (the compute_node role's bridges, or "
                                    "compute_node_bridge, make it)" % (nic.source, client.uri),
                                    field=field + ".bridge")
            if nic.fixed_ip:
                if nic.kind != "network":
                    raise ValidationError("a fixed IP is reserved in a libvirt network's DHCP server; a NIC on a "
                                          "bridge gets its address from the bridge's LAN", field=field + ".fixed_ip")
                nic.fixed_ip = validate_fixed_ip(client, nic.source, nic.fixed_ip, nic.mac, field + ".fixed_ip",
                                                 hostname=hostname)

    def _plan_fixed_ip_changes(self, definition, domain):
        """Reservations to add or change, and those to release after the new definition (NICs that went away)."""
        client = self.client
        reserve = []
        for nic in definition.nics:
            if nic.fixed_ip:
                step = plan_reservation(client, nic.source, nic.mac, nic.fixed_ip, hostname=definition.hostname)
                if step is not None:
                    reserve.append(step)
        wanted = set((n.source, n.mac) for n in definition.nics if n.fixed_ip)
        release = []
        for nic in domain.managed_nics():
            if nic.kind == "network" and nic.fixed_ip and (nic.source, nic.mac) not in wanted:
                step = plan_release(client, nic.source, nic.mac)
                if step is not None:
                    release.append(step)
        return reserve, release

    def _host_record(self):
        if self._host_record_cache is None:
            self._host_record_cache = RecordStore(self.client).read("host") or {}
        return self._host_record_cache

    def _claim_create(self, flavor, image, root_bytes):
        """The claim of a new server. With disk_gb 0 the root disk is as large as the image's virtual size: that
        size is claimed (rounded up to whole GB, as Nova rounds), never the 0 the flavor says."""
        req = self.request
        claimed = flavor
        if flavor.disk_gb == 0 and root_bytes:
            claimed = dict(flavor.to_dict(), disk_gb=-(-root_bytes // GIB))
        try:
            return Claim(self.client, req.name, claimed, instance_pool=req.instance_pool)
        except CapacityError as exc:
            if claimed is not flavor:
                exc.message += (" (flavor disk_gb 0: the root disk is as large as image %s, %s virtual size, and "
                                "that is what is claimed; choose a flavor with a disk_gb that fits)"
                                % (image["name"], _size_text(root_bytes)))
            raise

    def _root_bytes(self, flavor, image):
        # An image imported from a URL in the same check-mode run has no known size yet.
        virtual = image["virtual_size"] or 0
        if flavor.disk_gb == 0:
            return virtual
        wanted = flavor.disk_gb * GIB
        if wanted < virtual:
            raise ValidationError(
                "%d GiB is smaller than image %s (%s virtual size); choose a larger disk or disk_gb: 0 (the image's "
                "size)" % (flavor.disk_gb, image["name"], _size_text(virtual)), field="flavor.disk_gb")
        return wanted

    def _config_drive_inputs(self, server_uuid, definition):
        cloud_init = definition.cloud_init
        network_config = cloud_init["network_config"]
        if network_config is None and definition.nics:
            network_config = _configdrive.network_config_v2([{"mac": nic.mac} for nic in definition.nics],
                                                            field="networks")
        vendor = ""
        if definition.flavor.swap_mb:
            vendor += _VENDOR_SWAP
        if definition.flavor.ephemeral_gb:
            vendor += _VENDOR_EPHEMERAL
        return {
            "instance_id": server_uuid,
            "hostname": cloud_init["hostname"],
            "user_data": cloud_init["user_data"],
            "ssh_authorized_keys": cloud_init["ssh_authorized_keys"],
            "network_config": network_config,
            "vendor_data": ("#cloud-config\nbootcmd:\n" + vendor) if vendor else None,
        }

    def _write_config_drive(self, pool, name, inputs):
        data = _configdrive.build_nocloud_iso(**inputs)
        vol = self.client.lookup_volume(pool, name)
        if vol is None:
            vol = self.client.create_volume(pool, _raw_xml(name, len(data)))
        elif self.client.volume_info(vol)["capacity"] < len(data):
            self.client.resize_volume(vol, len(data))
        capacity = self.client.volume_info(vol)["capacity"]
        # An ISO reader stops at the end of the filesystem, so zero padding up to the volume's size is harmless.
        self.client.upload_bytes(vol, data + b"\0" * (capacity - len(data)))


def _predicted_view(definition, record, virt_type, power):
    """The diff view of the server as the plan will leave it."""
    return {
        "state": power,
        "virt_type": virt_type,
        "flavor": definition.flavor.to_dict(),
        "image": definition.image.get("name"),
        "image_pool": definition.image.get("pool"),
        "hostname": definition.hostname,
        "networks": [n.to_dict() for n in definition.nics],
        "metadata": record.metadata,
        "tags": record.tags,
        "config_drive": (record.config_drive_hash or "")[:12] or None,
        "server_group": definition.facts.get("server_group"),
        "server_group_policy": definition.facts.get("server_group_policy"),
        "availability_zone": definition.facts.get("availability_zone"),
    }


def _placement_facts(server_group, availability_zone):
    """The server group and AZ a server was placed with, as record facts (None: not declared)."""
    facts = {"server_group": None, "server_group_policy": None, "availability_zone": None}
    if isinstance(server_group, dict):
        unknown = sorted(set(server_group) - {"name", "policy"})
        if unknown or not server_group.get("name"):
            raise ValidationError("must be a group name or a dict with name and policy", field="server_group")
        facts["server_group"] = server_group["name"]
        policy = server_group.get("policy")
        if policy is not None and policy not in SERVER_GROUP_POLICIES:
            raise ValidationError("must be one of %s" % ", ".join(SERVER_GROUP_POLICIES),
                                  field="server_group.policy")
        facts["server_group_policy"] = policy
    elif server_group is not None:
        facts["server_group"] = str(server_group)
    if availability_zone is not None:
        facts["availability_zone"] = str(availability_zone)
    for key, value in facts.items():
        if value is not None and (not value or _XML_ILLEGAL_RE.search(value)):
            raise ValidationError("must be a non-empty string without control characters", field=key)
    return facts


def _merge_facts(current, declared):
    """An existing server's facts with the declared ones replacing theirs (undeclared ones kept)."""
    facts = dict(current or {})
    for key, value in declared.items():
        if value is not None:
            facts[key] = value
    return facts


def _wiring(nics):
    """What of the NICs is in the domain definition: a fixed IP lives in the network's DHCP server instead."""
    return [(n.kind, n.source, n.mac, n.model) for n in nics]


def _drive_hash(inputs):
    """The hash of a config drive's content, leaving out the instance id.

    The instance id is the server's UUID: fixed for the server's life, and not known yet in check mode. Leaving it
    out lets check mode predict the hash the real run records.
    """
    return _configdrive.content_hash(**dict(inputs, instance_id="server"))


def _current_flavor(domain):
    """The flavor a server has now: its snapshot, with vCPUs and RAM as the domain really has them."""
    snapshot = domain.record.flavor or Flavor(vcpus=domain.vcpus, ram_mb=domain.ram_mb, disk_gb=0)
    data = snapshot.to_dict()
    data.update(vcpus=domain.vcpus, ram_mb=domain.ram_mb)
    return Flavor(**data)


def _size_text(size):
    if size % GIB == 0:
        return "%d GiB" % (size // GIB)
    if size >= GIB:
        return "%.1f GiB" % (size / float(GIB))
    return "%d MiB" % (size // MIB)


def graceful_stop(client, dom, timeout):
    """Ask the guest to power off, wait up to ``timeout`` seconds, then pull the plug. Returns how it ended:
    ``guest-agent`` or ``acpi`` (the guest stopped when asked that way), ``forced`` or ``already-off``.

    As Nova's libvirt driver does, the guest agent is asked first (a clean shutdown whatever the guest's ACPI
    setup), and the ACPI power button pressed when the agent does not answer."""
    if client.domain_state(dom) not in ("running", "blocked", "pmsuspended", "paused"):
        return "already-off"
    how = "guest-agent"
    try:
        client.agent_shutdown(dom)
    except Exception:  # pylint: disable=broad-except
        how = "acpi"  # no agent in the guest, or not started yet: the power button
        try:
            client.shutdown_domain(dom)
        except Exception:  # pylint: disable=broad-except
            # Some guests (no ACPI yet, still booting) refuse the request outright: fall through to the hard stop.
            pass
    asked = "guest agent" if how == "guest-agent" else "ACPI power button"
    deadline = Deadline(timeout)
    while not deadline.expired():
        if client.domain_state(dom) == "shutoff":
            return how
        progress("the guest to shut down (%s)" % asked, deadline,
                 detail="a guest that ignores it is forced off at the limit (shutdown_timeout)")
        import time

        time.sleep(0.5)
    client.destroy_domain(dom)
    return "forced"


def lease_expiries(client, nics):
    """``{mac: expiry time}`` of the newest IPv4 DHCP lease of each NIC on a libvirt network."""
    expiries = {}
    for nic in nics:
        if nic.kind != "network":
            continue
        net = client.lookup_network(nic.source)
        for lease in client.network_leases(net) if net is not None else []:
            if (lease.get("mac") or "").lower() == nic.mac and ":" not in (lease.get("ipaddr") or ":"):
                expiries[nic.mac] = max(expiries.get(nic.mac, 0), int(lease.get("expirytime") or 0))
    return expiries


def _drop_stale_leases(client, nics, addresses):
    """Keep only the newest IPv4 lease of a NIC that has several.

    dnsmasq keeps a lease until it expires, so a MAC that got another address (a fixed IP declared later, a
    server created again) shows its old address too, which nobody answers any more.
    """
    for nic in nics:
        ipv4 = [a for a in addresses.get(nic.mac, []) if ":" not in a]
        if nic.kind != "network" or len(ipv4) < 2:
            continue
        net = client.lookup_network(nic.source)
        leases = [lease for lease in (client.network_leases(net) if net is not None else [])
                  if (lease.get("mac") or "").lower() == nic.mac and ":" not in (lease.get("ipaddr") or ":")]
        if not leases:
            continue
        newest = max(leases, key=lambda lease: int(lease.get("expirytime") or 0))["ipaddr"]
        addresses[nic.mac] = [a for a in addresses[nic.mac] if ":" in a or a.split("/")[0] == newest]
    return addresses


def wait_until_ready(client, name, nics, timeout, leases_before=None):
    """Wait until the server runs and every NIC on a libvirt network has an IPv4 address; returns the seconds.

    With ``leases_before`` (lease_expiries() taken before the server was started) an address counts only once the
    guest has asked for it again: dnsmasq keeps a lease for an hour, so a server started again, or created again
    with the same name (and so the same MACs), would otherwise look ready the moment it starts.
    """
    deadline = Deadline(timeout)
    dom = client.lookup_domain(name)
    wait_for(lambda: client.domain_state(dom) == "running", timeout, "%s to run" % name, deadline=deadline)
    dhcp_macs = [nic.mac for nic in nics if nic.kind == "network"]

    def has_addresses():
        if leases_before is not None:
            now = lease_expiries(client, nics)
            return all(now.get(mac, 0) > leases_before.get(mac, 0) for mac in dhcp_macs)
        addresses = client.domain_addresses(dom)
        return all(any(":" not in a for a in addresses.get(mac, [])) for mac in dhcp_macs)

    if dhcp_macs:
        wait_for(has_addresses, timeout, "an IP address on every network of %s" % name, interval=1.0,
                 deadline=deadline)
    return round(deadline.elapsed(), 1)


def _refuse_unmet_features(client, flavor, old_specs=None):
    """Refuse, while planning, a flavor whose extra specs the host cannot honour (huge pages, NIC shaping): without
    this the claim is taken and the domain defined before QEMU fails to start. An update is checked only when those
    extra specs change, since a running server already holds its huge pages."""
    wanted = _host_features.feature_specs(flavor.extra_specs)
    if not wanted or (old_specs is not None and _host_features.feature_specs(old_specs) == wanted):
        return
    unmet = _host_features.unmet_needs(flavor.extra_specs, flavor.ram_mb, host_features(client))
    if unmet:
        raise ConflictError("%s cannot run here: %s" % (client.uri, _host_features.describe_unmet(unmet, flavor.name)),
                            field="flavor.extra_specs")


def cpu_pinning(client, flavor, server_name):
    """What DomainSpec needs to pin a dedicated flavor's vCPUs on this host (hw:cpu_policy=dedicated): the host's
    CPU count, the CPUs other dedicated servers hold and the CPUs of each NUMA cell. Nothing is read for a flavor
    that does not pin."""
    if flavor.extra_specs.get("hw:cpu_policy") == "dedicated":
        return {"host_cpus": client.node_info()[2], "taken_cpus": taken_cpus(client, server_name),
                "cells": numa_cpu_cells(client)}
    return {}


def _flavor(value):
    if isinstance(value, (Flavor, str)):
        return value  # a name is looked up in the host's catalog by ServerPlanner.plan()
    if value is None:
        raise ValidationError("is required (vcpus, ram_mb, disk_gb)", field="flavor")
    return Flavor.from_dict(value, field="flavor")


def _string_map(value, field):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError("must be a dict of strings", field=field)
    out = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise ValidationError("key %r must be 1-255 letters, digits or _.:-" % (key,), field=field)
        if isinstance(item, (dict, list)):
            raise ValidationError("value of %s must be a string, number or boolean" % key, field="%s.%s" % (field, key))
        text = item if isinstance(item, str) else str(item).lower() if isinstance(item, bool) else str(item)
        if _XML_ILLEGAL_RE.search(text):
            raise ValidationError("holds a control character XML cannot store", field="%s.%s" % (field, key))
        out[key] = text
    return out


def _tags(value):
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValidationError("must be a list of strings", field="tags")
    out = []
    for index, tag in enumerate(value):
        if (not isinstance(tag, str) or not tag or len(tag) > 60 or "," in tag or "/" in tag
                or _XML_ILLEGAL_RE.search(tag)):
            raise ValidationError("must be a non-empty string of at most 60 characters without ',' or '/' (as in "
                                  "Nova)", field="tags[%d]" % index)
        if tag not in out:
            out.append(tag)
    return sorted(out)


def _nics(server_name, networks):
    if not isinstance(networks, list):
        raise ValidationError("must be a list", field="networks")
    nics = []
    seen = set()
    for index, entry in enumerate(networks):
        field = "networks[%d]" % index
        if isinstance(entry, str):
            entry = {"network": entry}
        if not isinstance(entry, dict):
            raise ValidationError("must be a dict with network or bridge", field=field)
        unknown = sorted(set(entry) - set(("network", "bridge", "mac", "model", "fixed_ip")))
        if unknown:
            raise ValidationError("unknown field(s) %s" % ", ".join(unknown), field=field)
        kinds = [k for k in ("network", "bridge") if entry.get(k)]
        if len(kinds) != 1:
            raise ValidationError("give exactly one of network (a libvirt network) or bridge (a host bridge)",
                                  field=field)
        kind = kinds[0]
        mac = entry.get("mac")
        mac = derive_mac(server_name, index) if mac is None or mac == "" else _limits.validate_mac(mac, field + ".mac")
        if mac in seen:
            raise ValidationError("MAC %s is used twice" % mac, field=field + ".mac")
        seen.add(mac)
        model = entry.get("model") or "virtio"
        if model not in NIC_MODELS:
            raise ValidationError("must be one of %s" % ", ".join(NIC_MODELS), field=field + ".model")
        nics.append(Nic(kind, entry[kind], mac, model, entry.get("fixed_ip")))
    return nics


def _base_image(client, image_ref, vol):
    """The base image's path, format and virtual size; refuses a base that would be unsafe to boot from."""
    name = image_ref["name"]
    root = ET.fromstring(client.volume_xml(vol))
    fmt_elem = root.find("target/format")
    fmt = fmt_elem.get("type") if fmt_elem is not None else "raw"
    if fmt not in SAFE_BASE_FORMATS:
        raise ValidationError("image %s is %s; servers boot from raw or qcow2 images only (the image module "
                              "converts nothing: convert it with qemu-img first)" % (name, fmt), field="image")
    if root.find("backingStore/path") is not None:
        raise ValidationError("image %s has a backing file of its own; a base image must be self-contained "
                              "(re-import it with the image module)" % name, field="image")
    info = client.volume_info(vol)
    return {"path": client.volume_path(vol), "format": fmt, "virtual_size": info["capacity"],
            "pool": image_ref["pool"], "name": name}


def _overlay_xml(name, capacity, image):
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", {"unit": "bytes"}).text = str(capacity)
    target = ET.SubElement(root, "target")
    ET.SubElement(target, "format", {"type": "qcow2"})
    backing = ET.SubElement(root, "backingStore")
    ET.SubElement(backing, "path").text = image["path"]
    # The backing format is written into the overlay explicitly, so QEMU never probes it (CVE-2024-32498's lesson).
    ET.SubElement(backing, "format", {"type": image["format"]})
    return ET.tostring(root, encoding="unicode")


def _blank_xml(name, capacity):
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", {"unit": "bytes"}).text = str(capacity)
    ET.SubElement(root, "allocation", {"unit": "bytes"}).text = "0"
    target = ET.SubElement(root, "target")
    ET.SubElement(target, "format", {"type": "qcow2"})
    return ET.tostring(root, encoding="unicode")


def _raw_xml(name, capacity):
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", {"unit": "bytes"}).text = str(capacity)
    target = ET.SubElement(root, "target")
    ET.SubElement(target, "format", {"type": "raw"})
    return ET.tostring(root, encoding="unicode")


def _delete_volume_step(client, ref, server_name):
    def run():
        pool = client.find_pool(ref["pool"])
        if pool is None:
            return
        # Only volumes named after this server are ever deleted: a record edited by hand cannot point us at
        # someone else's disk.
        if not _owned_by(ref, server_name):
            raise ConflictError("refusing to delete volume %s/%s: it is not named after server %s"
                                % (ref["pool"], ref["name"], server_name))
        vol = client.lookup_volume(pool, ref["name"])
        if vol is not None:
            client.delete_volume(vol)
    return run


def _owned_by(ref, server_name):
    """Only volumes named after a server are ever deleted with it."""
    return ref["name"].startswith(server_name + "-")


def _grow_step(client, vol, dom, target, capacity):
    def run():
        if client.domain_state(dom) in ("running", "paused", "blocked"):
            client.resize_disk_live(dom, target, capacity)
        else:
            client.resize_volume(vol, capacity)
    return run


def _restore_power_step(client, dom, power):
    """Undo of a stop: bring the server back to the power state it had (running, or paused)."""
    def run():
        if client.domain_state(dom) in ("shutoff", "shutdown", "crashed", "nostate"):
            client.start_domain(dom)
        if power == "paused" and client.domain_state(dom) != "paused":
            client.suspend_domain(dom)
    return run


def _create_blank_step(client, pool, name, capacity):
    return lambda: client.create_volume(pool, _blank_xml(name, capacity))


def _rebuild_root_step(client, pool, name, capacity, image):
    def run():
        vol = client.lookup_volume(pool, name)
        if vol is not None:
            client.delete_volume(vol)
        client.create_volume(pool, _overlay_xml(name, capacity, image))
    return run


def _record_build(client, failed):
    """The host's count of failed builds for the scheduler's BuildFailureWeigher; never the reason a run fails."""
    try:
        record_build_result(client, failed)
    except Exception:  # pylint: disable=broad-except
        pass


def converge_server(client, params, check_mode=False, diff_mode=False, defer_wait=False, pending=None):
    """The ``server`` module's whole job: plan, execute (unless check mode), wait, and describe the result.

    With ``defer_wait`` nothing is waited for; the result carries ``leases_before`` (for wait_until_ready) when the
    run started the server, so a caller converging many servers can wait for all of them together. ``pending``
    (check mode only) is what earlier tasks of the run would create (_pending.py).
    """
    request = ServerRequest(params)
    plan = ServerPlanner(client, request, pending=pending if check_mode else None).plan()
    leases_before = None
    if (request.wait or defer_wait) and not check_mode and plan.powers_on:
        leases_before = lease_expiries(client, plan.nics)
    building = plan.actual is None and request.state != "absent" and not check_mode
    try:
        plan.execute(check_mode)
    except Exception:
        if building:
            _record_build(client, failed=True)
        raise
    if building:
        _record_build(client, failed=False)
    result = {"changed": plan.changed, "actions": plan.actions, "warnings": list(plan.warnings)}
    if diff_mode:
        result["diff"] = plan.diff()
    if request.state == "absent":
        result["server"] = {}
        return result
    if check_mode:
        server = server_view(plan.actual) if plan.actual is not None else {"name": request.name, "uuid": None}
        server.update(plan.after)
        result["server"] = server
        return result
    if defer_wait:
        result["leases_before"] = leases_before
    elif request.wait and plan.after.get("state") == "running":
        result["waited"] = wait_until_ready(client, request.name, _nics_of(client, request.name),
                                            request.wait_timeout, leases_before)
    result["server"] = server_view(read_server(client, request.name), hypervisor=client.hostname())
    return result


def _nics_of(client, name):
    return read_server(client, name).domain.managed_nics()


def list_servers(client, names=None):
    """Views of the managed servers on the host (all of them, or those in ``names``; missing names are skipped).

    Each view has ``flavor_drift``: the fields in which the server's flavor snapshot differs from the catalog's
    flavor of the same name (a changed flavor never changes running servers by itself).
    """
    hypervisor = client.hostname()
    if names:
        doms = [d for d in (client.lookup_domain(n) for n in names) if d is not None]
    else:
        doms = client.list_domains()
    catalog = read_catalog(client)
    servers = []
    for dom in doms:
        actual = ActualServer(client, dom)
        if actual.managed:
            view = server_view(actual, hypervisor=hypervisor)
            snapshot = _current_flavor(actual.domain)
            view["flavor_drift"] = snapshot_differences(snapshot, catalog.get(snapshot.name)) if snapshot.name else []
            servers.append(view)
    return sorted(servers, key=lambda s: s["name"])
