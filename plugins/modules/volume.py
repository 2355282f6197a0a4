#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: volume
short_description: Declare a data volume (persistent block storage, as Cinder gives Nova) on a libvirt host
version_added: 0.1.0
description:
  - Creates, grows and deletes a data volume in a libvirt storage pool of the host, through the libvirt API only.
    Servers attach volumes with the O(virtfleet.compute.server#module:volumes) option; a volume outlives the servers
    it was attached to.
  - A volume is empty, or a full copy of a base image or of another volume (O(source)). A copy never depends on
    what it was copied from.
  - A volume grows in place (live, through the guest's QEMU, when a running server has it attached). It never
    shrinks, changes format or gains or loses encryption in place; the module refuses and says what to do instead.
  - What the collection knows about a volume (its id, format, encryption, shareable, metadata, source) is a record
    per volume in the host's C(virtfleet-records) pool. Only volumes this module created are ever changed, attached
    or deleted; a volume of the same name made otherwise is refused.
  - Encrypted volumes are LUKS (qcow2 with LUKS inside, or a raw LUKS image). The passphrase becomes a private,
    persistent libvirt secret; QEMU decrypts for the guest and the file on the host holds ciphertext only. The
    passphrase never appears in results, diffs, actions or records.
  - Deleting a volume that is attached to a server is refused, naming the server.
author:
  - virtfleet.compute developers (@virtfleet)
extends_documentation_fragment:
  - virtfleet.compute.connection
attributes:
  check_mode:
    support: full
    description: Check mode reports exactly the steps the real run takes, in C(actions).
  diff_mode:
    support: full
    description: Name, pool, format, size, encryption, shareable and metadata before and after.
  idempotent:
    support: full
    description: A second run with the same arguments reports no change.
options:
  name:
    description:
      - Name of the volume in O(pool); letters, digits and C(_.+-), at most 128 characters.
    type: str
    required: true
  pool:
    description:
      - libvirt storage pool of the volume. The C(compute_node) role creates C(virtfleet-volumes); the
        M(virtfleet.compute.pool) module creates others.
    type: str
    default: virtfleet-volumes
  state:
    description:
      - V(present) creates the volume if it does not exist and brings it to the declared size, metadata and
        passphrase.
      - V(absent) deletes the volume, its libvirt secret and its record; refused while a server has it attached.
    type: str
    choices: [present, absent]
    default: present
  size:
    description:
      - Size of the volume. A number is GiB (as Cinder counts); a string may carry a unit, binary (V(512M),
        V(20GiB), V(1T)) or decimal (V(500MB), V(1GB)). A positive multiple of 512 bytes, at most 64 TiB.
      - Required to create an empty volume; a copy defaults to the size of its source and is never smaller.
      - A larger size grows the volume; a smaller one is refused. Omitted, an existing volume keeps its size.
      - The size is claimed on the host's disk, in whole GiB rounded up, as a server's flavor disk is. A new volume,
        and what a grow adds, must fit in the free capacity of the pool's filesystem after the disk allocation ratio
        (and, on the instance pool's filesystem, the host's reserved disk and the servers' claims). The check runs in
        check mode too and again under the host's claim lock; a refusal names the numbers. See
        M(virtfleet.compute.host_info)'s RV(virtfleet.compute.host_info#module:host.filesystems).
    type: raw
  format:
    description:
      - Disk format. V(qcow2) is sparse and supports encryption; V(raw) is required for O(shareable) volumes.
      - Omitted, a new volume is qcow2 and an existing one keeps its format; a different format is refused.
    type: str
    choices: [qcow2, raw]
  source:
    description:
      - What a new volume starts as, instead of empty. Only used when the volume is created.
      - A copy of a volume that a running server uses is refused (it would not be consistent).
      - A copy of an encrypted volume must be encrypted too (give O(passphrase)).
    type: dict
    suboptions:
      image:
        description: Base image (a volume of the image pool, see M(virtfleet.compute.image)) to copy.
        type: str
      volume:
        description: Volume (created by this module) to copy.
        type: str
      pool:
        description:
          - Pool of the source. Defaults to V(virtfleet-images) for an image and to O(pool) for a volume.
        type: str
  metadata:
    description:
      - User metadata (string keys and values), kept in the volume's record.
      - At most 128 items, keys of 1 to 255 letters, digits or C(_.:-), values of at most 255 characters.
      - Omitted, an existing volume keeps its metadata.
    type: dict
  encrypted:
    description:
      - Encrypt the volume with LUKS. Implied by O(passphrase).
      - Only at creation; an existing volume that differs is refused.
    type: bool
  passphrase:
    description:
      - Passphrase of an encrypted volume; required to create one. Keep it in Ansible Vault.
      - For an existing volume it is checked against the one the volume was encrypted with. The same passphrase
        changes nothing, or restores the libvirt secret if it was lost. A different one is refused unless
        O(rotate=true).
      - Without the passphrase (and with the libvirt secret gone) the data cannot be read by anyone.
    type: str
  rotate:
    description:
      - Allow a different O(passphrase) to re-encrypt an existing volume with it.
      - libvirt cannot change LUKS key slots in place, so the volume is copied twice through the API (into a
        temporary volume, then back), which needs room for one more copy and the volume closed (detached, or its
        server stopped). The new copy also has a new LUKS master key.
      - If a rotation fails after the original was deleted, its data is in C(<name>.vf-rotating); running again
        with the new passphrase finishes the rotation.
    type: bool
    default: false
  shareable:
    description:
      - Allow the volume to be attached to several servers at once (Cinder's multiattach). Only raw, unencrypted
        volumes; the guests must use a cluster-aware filesystem or they corrupt each other's data.
      - Changes only while the volume is detached. Omitted, an existing volume keeps its setting.
    type: bool
notes:
  - libvirt keeps persistent secrets on the host (under C(/etc/libvirt/secrets)) so servers can open their volumes
    after a reboot without the playbook. Encryption protects the volume files (backups, copies, disposed disks), not
    against root on the running host.
  - To tell a new passphrase from the current one without reading the private secret back, the record keeps a
    salted PBKDF2-SHA256 check value of it, no easier a target than the LUKS header in the volume itself.
seealso:
  - module: virtfleet.compute.volume_info
  - module: virtfleet.compute.server
"""

EXAMPLES = r"""
- name: An empty 20 GiB data volume
  virtfleet.compute.volume:
    name: db-data
    size: 20
    metadata:
      owner: dba

- name: Grow it (live, if a running server has it attached)
  virtfleet.compute.volume:
    name: db-data
    size: 40GiB

- name: An encrypted volume; the passphrase comes from Ansible Vault
  virtfleet.compute.volume:
    name: secrets
    size: 1G
    passphrase: "{{ vault_secrets_passphrase }}"

- name: Re-encrypt it with a new passphrase (detach it, or stop its server, first)
  virtfleet.compute.volume:
    name: secrets
    passphrase: "{{ vault_secrets_passphrase_2026 }}"
    rotate: true

- name: A copy of a base image, as a data volume
  virtfleet.compute.volume:
    name: tools
    source:
      image: debian-12
    size: 8G

- name: A copy of another volume (taken while no running server writes it)
  virtfleet.compute.volume:
    name: db-data-before-upgrade
    source:
      volume: db-data

- name: Attach it to a server
  virtfleet.compute.server:
    name: db-1
    volumes:
      - name: db-data

- name: Delete a volume (refused while it is attached)
  virtfleet.compute.volume:
    name: db-data-before-upgrade
    state: absent
"""

RETURN = r"""
volume:
  description: The volume after the run (predicted in check mode); empty after O(state=absent).
  returned: always
  type: dict
  contains:
    name:
      description: Volume name.
      type: str
      sample: db-data
    pool:
      description: Storage pool.
      type: str
      sample: virtfleet-volumes
    id:
      description: The volume's id (a UUID); null for a volume check mode would create.
      type: str
    serial:
      description:
        - Disk serial the guest sees, the first 20 characters of the id. Find the disk in the guest at
          C(/dev/disk/by-id/virtio-<serial>) (virtio) or C(/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_<serial>) (scsi).
      type: str
    format:
      description: Disk format.
      type: str
      sample: qcow2
    size:
      description: Size (virtual capacity) in bytes.
      type: int
    allocation:
      description: Bytes the volume takes on the host.
      type: int
    path:
      description: File of the volume on the host.
      type: str
    encrypted:
      description: Whether the volume is LUKS-encrypted.
      type: bool
    secret:
      description: Whether the libvirt secret of an encrypted volume is there (V(present)) or lost (V(missing)).
      type: str
      returned: for encrypted volumes
    passphrase_version:
      description: 1 for the passphrase an encrypted volume was created with, one more per rotation.
      type: int
      returned: for encrypted volumes
    shareable:
      description: Whether several servers may have the volume attached at once.
      type: bool
    metadata:
      description: User metadata.
      type: dict
    source:
      description: What the volume was copied from (C(image) or C(volume), and C(pool)), or null.
      type: dict
    created:
      description: Creation time, UTC, ISO 8601.
      type: str
    status:
      description: V(available), V(in-use) (attached), V(missing) (recorded, but the file is gone) or V(rotating)
        (an interrupted rotation).
      type: str
    attachments:
      description: The servers the volume is attached to, each with C(server), C(device), C(bus) and C(read_only).
      type: list
      elements: dict
actions:
  description: The steps taken (or, in check mode, that would be taken), in order.
  returned: always
  type: list
  elements: str
  sample:
    - define libvirt secret for volume virtfleet-volumes/secrets
    - create volume virtfleet-volumes/secrets (1 GiB qcow2, LUKS-encrypted)
    - record volume virtfleet-volumes/secrets
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtfleet.compute.plugins.module_utils._module import CONNECTION_ARGS, run_module
from ansible_collections.virtfleet.compute.plugins.module_utils._volume import converge_volume


def main():
    argument_spec = dict(
        name=dict(type="str", required=True),
        pool=dict(type="str", default="virtfleet-volumes"),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        size=dict(type="raw"),
        format=dict(type="str", choices=["qcow2", "raw"]),
        source=dict(type="dict", options=dict(
            image=dict(type="str"),
            volume=dict(type="str"),
            pool=dict(type="str"),
        ), mutually_exclusive=[("image", "volume")], required_one_of=[("image", "volume")]),
        metadata=dict(type="dict"),
        encrypted=dict(type="bool"),
        passphrase=dict(type="str", no_log=True),
        rotate=dict(type="bool", default=False),
        shareable=dict(type="bool"),
    )
    argument_spec.update(CONNECTION_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    run_module(module, lambda client: converge_volume(client, module.params, module.check_mode, module._diff))


if __name__ == "__main__":
    main()
