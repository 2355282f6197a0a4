#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: server
short_description: Declare a server (a libvirt domain) the way Nova builds one
version_added: 0.1.0
description:
  - Creates, changes, powers and deletes one server on a libvirt host from its declared state, like
    C(openstack server create) but idempotent.
  - The root disk is a qcow2 overlay on a base image of the image pool (never a full copy), grown to the flavor's
    disk size. A cloud-init NoCloud config drive (user data, SSH keys, host name, network config) is built in Python
    and uploaded through libvirt; swap and ephemeral disks are formatted by the guest at first boot.
  - The server keeps its facts (flavor snapshot, image, creation time, volumes, metadata, tags, a hash of the
    declared spec) in its domain XML under the C(http://virtfleet.io/xmlns/compute/1.0) namespace. A domain without
    them was not made by this collection and is never changed or deleted; the module fails instead.
  - A change of vCPUs, RAM or networks is applied to the definition and, if the server runs, by a graceful restart.
    A larger disk is grown in place, live if the server runs. A smaller disk is refused. Another image is refused
    unless O(allow_rebuild=true), which replaces the root disk.
  - Deleting a server deletes its root disk, config drive, swap and ephemeral disks; never the base image, and
    never the data volumes attached to it unless O(delete_volumes=true).
  - Data volumes (see M(virtfleet.compute.volume)) are attached with O(volumes), live when the server runs
    (hot-plug) and in its definition always.
author:
  - virtfleet.compute developers (@virtfleet)
extends_documentation_fragment:
  - virtfleet.compute.connection
  - virtfleet.compute.connection.wait
attributes:
  check_mode:
    support: full
    description: Check mode reports exactly the steps the real run takes, in C(actions).
  diff_mode:
    support: full
    description: The declared fields before and after (state, flavor, image, networks, metadata, tags, config drive).
  idempotent:
    support: full
    description: A second run with the same arguments reports no change.
options:
  name:
    description:
      - Name of the server; also its libvirt domain name and, unless O(hostname) is set, its host name.
      - A single RFC 1123 label (letters, digits, inner hyphens; at most 63 characters).
    type: str
    required: true
  state:
    description:
      - V(running), V(stopped) and V(paused) create the server if needed and bring it to that power state.
      - V(present) creates the server (defined, not started) if it does not exist and leaves the power state of an
        existing one alone.
      - V(absent) powers the server off and deletes it with the volumes created for it (root, config drive, swap,
        ephemeral). Attached data volumes stay unless O(delete_volumes=true).
      - V(stopped) asks the guest to shut down (through its QEMU guest agent, or the ACPI power button where the agent
        does not answer) and powers it off after O(shutdown_timeout).
      - V(suspended) saves the guest's memory to disk and stops it (libvirt's managed save); V(running) resumes
        it. A stopped server is started first, then saved.
      - V(shelved) shuts the server down and marks it shelved in its metadata, Nova's shelve. Its disks stay on the
        host but its vCPUs and RAM no longer count in the host's usage. Any state but V(present) unshelves it, with
        a claim on the host. Offloading a shelved server (releasing the host entirely) is
        M(virtfleet.compute.server_action)'s C(shelve_offload).
    type: str
    choices: [running, stopped, paused, suspended, shelved, present, absent]
    default: running
  flavor:
    description:
      - The server's size, either the name of a flavor in the host's catalog (see M(virtfleet.compute.flavor)) or a
        dict with C(vcpus), C(ram_mb), C(disk_gb) and optionally C(swap_mb), C(ephemeral_gb), C(name),
        C(description) and C(extra_specs).
      - The server keeps a snapshot of its flavor; a later change of the catalog's flavor does not change the server
        until its declared flavor does (M(virtfleet.compute.server_info) shows the difference).
      - Extra specs are rendered into the domain (vCPU pinning, hugepages, watchdog, CPU/disk/NIC quotas); a change
        of them restarts a running server.
      - Creating or growing a server claims its resources on the host; it fails before anything is made when the
        host is disabled or the claim does not fit its capacity after allocation ratios and reservations.
      - C(disk_gb=0) means as large as the image's virtual size, as in Nova.
      - Required to create a server. Omitted, an existing server keeps its flavor.
    type: raw
  image:
    description:
      - Name of the base image volume in O(image_pool) (see M(virtfleet.compute.image)).
      - Required to create a server. Omitted, an existing server keeps its image.
    type: str
  image_pool:
    description: libvirt storage pool holding base images.
    type: str
    default: virtfleet-images
  instance_pool:
    description: libvirt storage pool for the server's own volumes (root overlay, config drive, swap, ephemeral).
    type: str
    default: virtfleet-instances
  networks:
    description:
      - Network interfaces, in guest order (the guest sees them as eth0, eth1, ...).
      - Without an explicit C(mac), each NIC gets a stable MAC derived from the server name and its position, so it
        survives rebuilds and migrations.
      - Omitted, an existing server keeps its NICs; a new server gets none.
    type: list
    elements: dict
    suboptions:
      network:
        description: Name of a libvirt network. Exactly one of C(network) and C(bridge).
        type: str
      bridge:
        description: Name of a Linux bridge on the host. Exactly one of C(network) and C(bridge).
        type: str
      mac:
        description: MAC address; derived from the server name and the NIC's position when omitted.
        type: str
      model:
        description: NIC model.
        type: str
        choices: [virtio, e1000, e1000e, rtl8139]
        default: virtio
      fixed_ip:
        description:
          - An IPv4 address reserved for this NIC in the libvirt network's DHCP server (a C(network) NIC only), so
            the guest always gets it.
          - Checked before anything changes; it must be inside the network's subnet, not its network, broadcast or
            gateway address, and not reserved or leased to another MAC. Deleting the server releases it.
        type: str
  hostname:
    description: Host name given to the guest by cloud-init; defaults to O(name).
    type: str
  user_data:
    description:
      - The config drive options (O(user_data), O(ssh_authorized_keys), O(network_config), O(hostname)) are declared
        together. If none is given for an existing server its config drive is left alone; if any is given, the
        omitted ones take their defaults, except O(hostname), which the server remembers.
      - cloud-init user data (a C(#cloud-config) document, a shell script, a MIME multipart), passed through as is.
      - cloud-init reads it at first boot only; changing it later rewrites the config drive but does not re-run it.
      - At most 65535 bytes (UTF-8), as in Nova. It may hold passwords, so it is never printed (C(no_log)), also
        inside the items of M(virtfleet.compute.servers).
    type: str
  ssh_authorized_keys:
    description: Public SSH keys for the image's default user, given to the guest through the config drive.
    type: list
    elements: str
  network_config:
    description:
      - cloud-init network configuration (version 2) written to the config drive instead of the generated one.
      - By default every NIC is matched by MAC, named C(ethN) and configured by DHCP.
    type: dict
  metadata:
    description:
      - User metadata (string keys and values), stored in the domain XML.
      - At most 128 items, keys of 1 to 255 letters, digits or C(_.:-), values of at most 255 characters (Nova's
        limits).
      - Omitted, an existing server keeps its metadata.
    type: dict
  tags:
    description:
      - Tags (as in Nova), stored in the domain XML.
      - Omitted, an existing server keeps its tags.
    type: list
    elements: str
  server_group:
    description:
      - The server group the server belongs to (Nova's server groups), as a name or a dict with C(name) and
        C(policy) (affinity, anti-affinity, soft-affinity, soft-anti-affinity).
      - Kept in the server's record, so the scheduler counts the server in its group on this host and the inventory
        groups servers by it. Placement itself is the scheduler's job (lookup P(virtfleet.compute.scheduler#lookup)).
      - Omitted, an existing server keeps its group.
    type: raw
  availability_zone:
    description:
      - The availability zone the server was placed in, kept in its record (Nova's C(OS-EXT-AZ)).
      - Omitted, an existing server keeps its zone.
    type: str
  virt_type:
    description:
      - Domain type. V(kvm) uses hardware virtualization, V(qemu) software emulation (TCG).
      - V(auto) takes the host's verdict recorded by the C(compute_node) role, or else kvm when libvirt offers it
        and the host CPU has vmx/svm, else qemu. Nested or emulated hosts that expose C(/dev/kvm) without those
        flags cannot boot Linux guests under KVM, so they get qemu.
      - An existing server keeps its type under V(auto).
    type: str
    choices: [auto, kvm, qemu]
    default: auto
  volumes:
    description:
      - Data volumes attached to the server, made by the M(virtfleet.compute.volume) module. The list is keyed by
        volume, so its order means nothing and reordering it changes nothing.
      - A volume not listed is detached; one newly listed is attached. When the server runs this is hot-plug
        (the guest sees the disk appear or go) and the definition changes too; when it is off, only the definition.
      - A running guest must acknowledge the unplug of a virtio disk (an OS with ACPI hot-plug does at once);
        the module waits up to 60 seconds for it and fails otherwise.
      - Each disk keeps its target (device name) while attached; new ones take the lowest free target from
        C(vde) (virtio) or C(sda) (scsi), in the order of their names. Inside the guest, find a volume by its serial,
        C(/dev/disk/by-id/virtio-<serial>) or C(/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_<serial>), not by its
        kernel name.
      - A volume is attached to one server at a time unless it was created with
        O(virtfleet.compute.volume#module:shareable=true); attaching one that another server has is refused, naming
        that server.
      - Encrypted volumes are opened by QEMU with their libvirt secret; the guest sees plain data.
      - Omitted, an existing server keeps its attachments; V([]) detaches them all.
    type: list
    elements: dict
    suboptions:
      name:
        description: Name of the volume.
        type: str
        required: true
      pool:
        description: Storage pool of the volume.
        type: str
        default: virtfleet-volumes
      bus:
        description: V(virtio) (virtio-blk) or V(scsi) (a disk on a virtio-scsi controller, added when needed).
        type: str
        choices: [virtio, scsi]
        default: virtio
      device:
        description:
          - Target name (C(vde), C(vdf), ... for virtio; C(sda), ... for scsi). Omitted, one is assigned and kept.
          - C(vda) to C(vdd) belong to the server's own disks.
        type: str
      read_only:
        description: Attach the volume read-only.
        type: bool
        default: false
  delete_volumes:
    description:
      - With O(state=absent), delete the data volumes attached to the server too (their secrets and records as
        well). Refused, before anything is deleted, when one of them is attached to another server as well.
      - By default deleting a server leaves its data volumes intact, detached.
    type: bool
    default: false
  allow_rebuild:
    description:
      - Allow a change of O(image) on an existing server by rebuilding its root disk from the new image. Everything
        on the old root disk is lost; name, UUID, MACs and the other disks are kept.
    type: bool
    default: false
  shutdown_timeout:
    description: Seconds a graceful shutdown may take before the server is powered off.
    type: int
    default: 120
notes:
  - Swap and ephemeral disks are formatted and enabled by cloud-init in the guest at first boot, through vendor
    data, because nothing but libvirt runs on the host.
  - On hosts without usable KVM (nested clouds, CI runners) servers run under software emulation, much slower.
seealso:
  - module: virtfleet.compute.server_info
  - module: virtfleet.compute.image
  - module: virtfleet.compute.volume
"""

EXAMPLES = r"""
- name: A running Debian server with an SSH key, on the default NAT network
  virtfleet.compute.server:
    name: web-1
    flavor: {vcpus: 1, ram_mb: 1024, disk_gb: 10}
    image: debian-12
    networks:
      - network: default
    ssh_authorized_keys:
      - "{{ lookup('file', '~/.ssh/id_ed25519.pub') }}"
    metadata:
      role: web
    tags: [production]
  register: web

- name: Print its address
  ansible.builtin.debug:
    msg: "ssh debian@{{ web.server.ips[0] }}"

- name: Grow it (RAM needs a restart; the disk grows live)
  virtfleet.compute.server:
    name: web-1
    flavor: {vcpus: 2, ram_mb: 2048, disk_gb: 20}
    image: debian-12
    networks: [{network: default}]

- name: Stop it gracefully (options left out keep their current values)
  virtfleet.compute.server:
    name: web-1
    state: stopped

- name: On a remote hypervisor, from the controller
  virtfleet.compute.server:
    uri: qemu+ssh://root@compute-2.example.com/system
    name: db-1
    flavor: {vcpus: 4, ram_mb: 8192, disk_gb: 40, swap_mb: 1024}
    image: debian-12
    networks: [{bridge: br-prod}]
    user_data: |
      #cloud-config
      packages: [postgresql]

- name: Attach two data volumes; the second read-only on the SCSI bus
  virtfleet.compute.server:
    name: db-1
    volumes:
      - name: db-data
      - name: reference-data
        bus: scsi
        read_only: true

- name: Detach every data volume (they stay in the volume pool)
  virtfleet.compute.server:
    name: db-1
    volumes: []

- name: Delete a server and the data volumes attached to it
  virtfleet.compute.server:
    name: scratch-1
    state: absent
    delete_volumes: true

- name: Delete it and its disks (never the base image)
  virtfleet.compute.server:
    name: web-1
    state: absent
"""

RETURN = r"""
server:
  description: The server after the run (predicted in check mode); empty after O(state=absent).
  returned: always
  type: dict
  contains:
    name:
      description: Server name.
      type: str
      sample: web-1
    uuid:
      description: libvirt domain UUID (null for a server that check mode would create).
      type: str
    state:
      description: Power state, one of running, stopped, paused or suspended.
      type: str
      sample: running
    virt_type:
      description: Domain type.
      type: str
      sample: qemu
    flavor:
      description: The flavor snapshot, with vCPUs and RAM as the domain defines them.
      type: dict
    image:
      description: Base image name.
      type: str
      sample: debian-12
    image_pool:
      description: Storage pool of the base image.
      type: str
    hostname:
      description: Guest host name.
      type: str
    networks:
      description: NICs, each with its network or bridge, mac, model and ips.
      type: list
      elements: dict
    ips:
      description: IP addresses of all NICs (when running and known).
      type: list
      elements: str
      sample: [192.168.122.50]
    metadata:
      description: User metadata.
      type: dict
    tags:
      description: Tags.
      type: list
      elements: str
    created:
      description: Creation time, UTC, ISO 8601.
      type: str
    volumes:
      description: Volumes created for the server by role (root, config, swap, ephemeral), as pool/name.
      type: dict
    attachments:
      description:
        - Data volumes attached to the server, sorted by pool and name, each with C(name), C(pool), C(device),
          C(bus), C(read_only) and C(serial) (find it in the guest at C(/dev/disk/by-id/virtio-<serial>)).
      type: list
      elements: dict
      sample:
        - {name: db-data, pool: virtfleet-volumes, device: vde, bus: virtio, read_only: false,
           serial: 0b0b5d0e-1f52-4bd4-9}
    hypervisor:
      description: Host name of the hypervisor.
      type: str
    config_drive_rewritten:
      description:
        - True when the config drive (SSH keys, user data, network config, host name) changed after the root disk
          was built. cloud-init applies it at a root disk's first boot, so a guest that has booted keeps what it read
          then; rebuild the server (M(virtfleet.compute.server_action) C(action=rebuild)) to apply the new data.
          False for servers whose record predates this field.
      type: bool
    locked:
      description:
        - The server's lock (M(virtfleet.compute.server_action) C(action=lock)) - C(at), C(by) and C(reason) - or null.
          A locked server refuses every change until it is unlocked; one that is as declared is unchanged.
      type: dict
actions:
  description: The steps taken (or, in check mode, that would be taken), in order.
  returned: always
  type: list
  elements: str
  sample:
    - create root disk (10 GiB qcow2 overlay on virtfleet-images/debian-12)
    - write config drive
    - define domain web-1 (qemu, 1 vCPU, 1024 MiB)
    - start web-1
waited:
  description: Seconds spent waiting for the server to run and get its addresses.
  returned: when the module waited
  type: float
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtfleet.compute.plugins.module_utils._module import CONNECTION_ARGS, WAIT_ARGS, run_module
from ansible_collections.virtfleet.compute.plugins.module_utils._server import SERVER_ARGUMENT_SPEC, converge_server


def main():
    argument_spec = dict(SERVER_ARGUMENT_SPEC)
    argument_spec.update(CONNECTION_ARGS)
    argument_spec.update(WAIT_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    run_module(module, lambda client: converge_server(client, module.params, module.check_mode, module._diff))


if __name__ == "__main__":
    main()
