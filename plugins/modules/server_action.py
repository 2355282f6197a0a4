#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: server_action
short_description: Nova's server actions on a libvirt server (reboot, resize, rebuild, migrate, evacuate, shelve...)
version_added: 0.1.0
description:
  - Runs one action on a server made by M(virtfleet.compute.server), the way C(openstack server reboot),
    C(resize), C(rebuild), C(migrate), C(evacuate), C(shelve), C(rescue), C(console url show), C(suspend) and
    C(pause) do in Nova.
  - Every action is planned first as a list of steps. Check mode reports exactly the steps the real run takes, in
    RV(actions); the real run takes them in order and, if one fails, undoes those that ran. An action with nothing
    left to do (C(unpause) on a running server, C(resize) to the flavor it has, C(confirm_resize) with no resize
    waiting) reports no change.
  - What an action leaves open is kept in the server's domain metadata (C(vm_state) C(resized), C(rescued) or
    C(shelved)), so M(virtfleet.compute.server_info) shows it and the next action finds it on any controller.
  - V(reboot) - O(reboot_type=soft) asks the guest to shut down through its QEMU guest agent (the ACPI power button
    where the agent does not answer), waits O(shutdown_timeout) seconds for the guest
    to stop, powers it off if it has not (Nova's fallback to a hard reboot) and starts it.
    O(reboot_type=hard) powers it off and starts it; it also starts a stopped server.
  - V(resize) - changes the flavor (vCPUs, RAM, disks, extra specs) with a claim on the host, checked again under
    the host's claim lock. A disk never shrinks and is never removed. The server is restarted if vCPUs, RAM or
    extra specs change. Unless O(confirm=true), the old flavor is kept in the server's metadata until
    V(confirm_resize) forgets it or V(revert_resize) goes back to it (Nova's VERIFY_RESIZE).
  - V(revert_resize) restores the old flavor's vCPUs, RAM and extra specs and deletes the disks the resize added.
    Disks the resize grew keep their size, since a disk never shrinks.
  - V(rebuild) - powers the server off, replaces its root disk by a new one from O(image) (by default the image it
    was built from) and rewrites its config drive, with the cloud-init options given, else with the content it
    had. Name, UUID, MACs (so DHCP addresses and fixed IPs) and the swap and ephemeral disks are kept.
  - V(migrate) (cold) and V(live_migrate) - move the server to O(target_uri), or to the host the collection's
    scheduler chooses among O(hosts) (Nova's filters and weighers, respecting the server's group policy and the
    capacity left after allocation ratios). The flavor is claimed on the target under its claim lock by defining
    the server there, then the server is undefined on the source, which releases its resources there.
  - Without shared storage the disks travel through libvirt only. The base image is copied to the target's image
    pool when the target lacks it. A live migration copies the top layer of each writable disk while the guest runs
    (libvirt's C(VIR_MIGRATE_NON_SHARED_INC)) into volumes made on the target beforehand; a cold migration shuts
    the server down and streams its volumes. Progress is sampled while a live migration runs, and the migration is
    aborted after O(migration_timeout), the server still running on its source.
  - V(evacuate) - rebuilds a server of a host that is down on another host, from its image, with the same name,
    UUID, MACs and fixed IPs. The dead host cannot be asked, so the server's last known description is given in
    O(server) (what M(virtfleet.compute.server_info) returned, an inventory cache, or your declared state). Refused
    while the server's host answers, as in Nova.
  - V(cleanup_evacuated) - run against a host that came back after an evacuation, removes the stale copy of the
    server that stayed there (powered off if it runs, undefined, its volumes deleted), but only when the server with
    the same UUID on O(target_uri) or one of O(hosts) says it was evacuated. Until then that copy stays defined but
    powered off. It must not be started. See the notes.
  - V(shelve) - powers the server off and marks it shelved. Its disks stay, its vCPUs and RAM are released.
    V(shelve_offload) also releases the host. The root disk is saved, flattened, as an image
    C(<name>-shelved-<uuid>.qcow2) in the image pool, with the config drive next to it. The definition goes into the
    records pool as C(shelved-<name>), and the server is undefined. Swap and ephemeral disks are not kept, as in
    Nova.
  - V(unshelve) - starts a shelved server again with a claim on its host, or on O(target_uri) or the scheduler's
    choice among O(hosts), where it is moved first. A shelved-offloaded server is rebuilt from its saved disks on
    its host or on the chosen one, and its saved disks and record are deleted.
  - V(rescue) - powers the server off and boots it from a new disk made from O(image) (by default its own image),
    with its own root disk attached as the second disk (C(vdb)). V(unrescue) boots it from its own disk again and
    deletes the rescue disk.
  - V(console) - with O(console_type=vnc), gives the running server's VNC display a new random password valid for
    O(console_ttl) seconds (libvirt's C(passwdValidTo), set on the running domain only, never in its definition)
    and returns where to connect (nova-consoleauth's job). With O(console_type=serial), returns the serial console's
    pseudo terminal and the C(virsh console) command. That needs no password beyond the libvirt connection, and
    changes nothing.
  - V(suspend) saves the memory to disk and stops the server (libvirt's managed save). V(resume) restores it.
    V(pause) and V(unpause) freeze and thaw the vCPUs.
  - V(lock) - Nova's server lock - records who locked the server (O(locked_by)), when and why (O(lock_reason)) in its
    metadata. A locked server refuses every change from every module (M(virtfleet.compute.server) and
    M(virtfleet.compute.servers) refuse a change or a delete, this module every action but V(unlock) and
    V(console)), naming who locked it; a server that is as declared is simply unchanged.
    M(virtfleet.compute.server_info) shows the lock (C(locked)). V(unlock) removes it. Locking a locked server
    changes nothing; unlock it first to give another reason.
author:
  - virtfleet.compute developers (@virtfleet)
extends_documentation_fragment:
  - virtfleet.compute.connection
  - virtfleet.compute.connection.wait
attributes:
  check_mode:
    support: full
    description: Check mode reports exactly the steps the real run takes, in RV(actions), and changes nothing.
  diff_mode:
    support: full
    description: The server's power state, host, flavor, image and vm_state before and after.
  idempotent:
    support: partial
    description: A second run with the same arguments reports no change, for the actions that reach a state.
    details: >-
      Actions that reach a state report no change when the server is already there (pause, unpause, suspend, resume,
      resize, confirm_resize, revert_resize, rescue, unrescue, shelve, shelve_offload, unshelve, evacuate,
      cleanup_evacuated, lock, unlock). V(reboot), V(rebuild), V(migrate), V(live_migrate) and V(console) do
      something every time, as in Nova.
options:
  action:
    description: The action to run.
    type: str
    required: true
    choices: [reboot, resize, confirm_resize, revert_resize, rebuild, migrate, live_migrate, evacuate,
              cleanup_evacuated, shelve, shelve_offload, unshelve, rescue, unrescue, console, suspend, resume, pause,
              unpause, lock, unlock]
  bandwidth:
    description: Maximum bandwidth of a live migration, in MiB/s. No limit when omitted.
    type: int
  confirm:
    description:
      - With O(action=resize), confirm the resize at once instead of keeping the old flavor for
        V(confirm_resize) or V(revert_resize).
      - With O(action=resize) and a resize waiting for confirmation to the same flavor, confirm it.
    type: bool
    default: false
  console_ttl:
    description: Seconds the one-time VNC password stays valid (O(action=console)).
    type: int
    default: 300
  console_type:
    description: V(vnc) (a one-time password on the VNC display) or V(serial) (the serial console's details).
    type: str
    choices: [vnc, serial]
    default: vnc
  flavor:
    description:
      - The new flavor for O(action=resize). Either a flavor name from the host's catalog (see
        M(virtfleet.compute.flavor)) or a dict with C(vcpus), C(ram_mb), C(disk_gb) and optionally C(swap_mb),
        C(ephemeral_gb), C(name), C(description) and C(extra_specs).
    type: raw
  hostname:
    description:
      - For O(action=rebuild) and O(action=evacuate), the host name cloud-init gives the guest. By default, the
        server's own host name.
      - The cloud-init options O(hostname), O(user_data), O(ssh_authorized_keys) and O(network_config) are given
        together, as in M(virtfleet.compute.server). With none of them, a rebuild writes the config drive again
        with the content it had, and an evacuation writes one with the host name and network configuration only.
    type: str
  hosts:
    description:
      - Candidate hosts for the scheduler when no O(target_uri) is given (O(action=migrate), V(live_migrate),
        V(evacuate), V(unshelve)), and the hosts searched for the evacuated server by V(cleanup_evacuated).
      - The server's own host is left out. A candidate that does not answer is reported down to the scheduler and
        skipped.
      - The scheduler must be loadable where the module runs. Otherwise choose with the
        C(virtfleet.compute.scheduler) lookup on the controller and pass O(target_uri).
    type: list
    elements: dict
    suboptions:
      name:
        description: The host's name, as the scheduler reports it.
        type: str
      uri:
        description: The host's libvirt URI.
        type: str
        required: true
  image:
    description:
      - The image to rebuild from (O(action=rebuild)), to boot the rescue disk from (O(action=rescue)) or to
        evacuate with (O(action=evacuate)). By default, the image the server was built from.
    type: str
  image_pool:
    description:
      - The storage pool of O(image). By default, the pool of the server's own image (or C(virtfleet-images)).
      - O(action=shelve_offload) saves the server's disks in this pool.
    type: str
  instance_pool:
    description:
      - Storage pool for the disks of an evacuated server on its new host.
      - The pool whose space the scheduler counts for the candidates.
    type: str
    default: virtfleet-instances
  lock_reason:
    description: Why the server is locked (O(action=lock)), shown by M(virtfleet.compute.server_info) and in every
      refusal. One line, at most 255 characters.
    type: str
  locked_by:
    description:
      - Who locks the server (O(action=lock)). By default, the user the module runs as. C(playbooks/server_action.yml)
        passes AWX's C(awx_user_name) when the job has one.
      - One line, at most 255 characters.
    type: str
  migration_timeout:
    description: Seconds a live migration may take before it is aborted (the server keeps running on its source).
    type: int
    default: 600
  migration_uri:
    description:
      - Where the migration's data goes, as QEMU sees it, for example C(tcp://10.0.0.12). By default libvirt uses
        the target host's name.
    type: str
  name:
    description: Name of the server.
    type: str
    required: true
  network_config:
    description: cloud-init network configuration (version 2) for the new config drive (see O(hostname)).
    type: dict
  reboot_type:
    description: V(soft) (ACPI, then hard after O(shutdown_timeout)) or V(hard) (power off, start).
    type: str
    choices: [soft, hard]
    default: soft
  server:
    description:
      - For O(action=evacuate), the server as last seen. This is M(virtfleet.compute.server_info)'s C(server) dict,
        or at least C(uuid), C(flavor), C(image) and C(networks) (each with its C(network) or C(bridge), its C(mac)
        and optionally its C(fixed_ip)).
      - Facts of its metadata (server group, availability zone...) are kept. C(state) decides whether the rebuilt
        server is started.
    type: dict
  server_group:
    description:
      - The server group for the scheduler, as a dict with C(name) and C(policy) (affinity, anti-affinity,
        soft-affinity, soft-anti-affinity). By default, the group and policy the server's metadata records.
    type: dict
  shutdown_timeout:
    description: Seconds a guest may take to shut down after the ACPI power button before it is powered off.
    type: int
    default: 120
  ssh_authorized_keys:
    description: Public SSH keys for the new config drive (see O(hostname)).
    type: list
    elements: str
  storage:
    description:
      - How a move treats the server's disks.
      - V(auto) treats them as shared when the target sees the very same volumes (same key in a pool of a shared
        type such as C(netfs) or C(rbd)) and copies them otherwise.
      - V(copy) always copies. V(shared) never copies and fails if the target cannot see them.
      - A volume of the same name already on the target is never overwritten; the move fails naming it.
    type: str
    choices: [auto, copy, shared]
    default: auto
  target_uri:
    description:
      - libvirt URI of the host to move the server to (O(action=migrate), V(live_migrate), V(evacuate),
        V(unshelve)), or, for V(cleanup_evacuated), of the host the server was evacuated to.
    type: str
  user_data:
    description:
      - cloud-init user data for the new config drive (see O(hostname)).
      - At most 65535 bytes (UTF-8), as in Nova; never printed (C(no_log)).
    type: str
notes:
  - Fencing after an evacuation. The evacuated server's metadata records C(evacuated_from), the URI of the host it
    left. That host cannot be told while it is down. When it comes back, its copy of the server is still defined
    (powered off if the host really went down) and must not be started. Run V(cleanup_evacuated) against it before
    anything else (C(playbooks/evacuate_host.yml) does, with C(evacuate_phase=cleanup)).
  - The console needs the server to have been started with VNC password authentication. Every action here that
    starts the server or rewrites its definition locks its display with an expired random password first. A server
    started otherwise needs one V(reboot) with O(reboot_type=hard) before its first V(console).
  - VNC passwords are at most 8 characters (the protocol's DES). The password is returned in RV(console) and is
    valid for O(console_ttl) seconds only. The display listens where the server's definition says, by default on
    the hypervisor's loopback only, reachable through an SSH tunnel.
  - A cold migration copies the root disk as it is, so the base image must have the same path on both hosts (the
    pools' paths are the same on every host the C(compute_node) role prepared). A live migration has no such limit.
seealso:
  - module: virtfleet.compute.server
  - module: virtfleet.compute.server_info
  - module: virtfleet.compute.host
"""

EXAMPLES = r"""
- name: Lock a server during an investigation (every change is refused until it is unlocked)
  virtfleet.compute.server_action:
    name: web-1
    action: lock
    lock_reason: disk errors under investigation, ticket OPS-1234

- name: Unlock it
  virtfleet.compute.server_action:
    name: web-1
    action: unlock

- name: Restart a server gracefully (a hard power cycle after 60 s)
  virtfleet.compute.server_action:
    name: web-1
    action: reboot
    shutdown_timeout: 60

- name: Resize to a bigger flavor of the host's catalog, keeping the old one until confirmed
  virtfleet.compute.server_action:
    name: web-1
    action: resize
    flavor: m1.large

- name: Keep it
  virtfleet.compute.server_action:
    name: web-1
    action: confirm_resize

- name: Rebuild from a new image with a new SSH key (same name, UUID, MACs)
  virtfleet.compute.server_action:
    name: web-1
    action: rebuild
    image: debian-12-2025-06
    ssh_authorized_keys:
      - "{{ lookup('file', '~/.ssh/id_ed25519.pub') }}"

- name: Live-migrate to a given host, without shared storage
  virtfleet.compute.server_action:
    uri: qemu+ssh://root@compute-1/system
    name: web-1
    action: live_migrate
    target_uri: qemu+ssh://root@compute-2/system
    migration_uri: tcp://10.0.0.12
  register: moved

- name: Live-migrate to the host the scheduler picks (group policy and capacity respected)
  virtfleet.compute.server_action:
    uri: qemu+ssh://root@compute-1/system
    name: web-2
    action: live_migrate
    hosts:
      - {name: compute-2, uri: "qemu+ssh://root@compute-2/system"}
      - {name: compute-3, uri: "qemu+ssh://root@compute-3/system"}

- name: Rebuild a server of a dead host elsewhere, from its last known description
  virtfleet.compute.server_action:
    uri: qemu+ssh://root@compute-1/system
    name: web-1
    action: evacuate
    server: "{{ last_known['web-1'] }}"
    target_uri: qemu+ssh://root@compute-2/system

- name: Release the host entirely, keeping the disk as an image
  virtfleet.compute.server_action:
    name: batch-7
    action: shelve_offload

- name: Get a one-time VNC password, valid for two minutes
  virtfleet.compute.server_action:
    name: web-1
    action: console
    console_ttl: 120
  register: console

- name: Show how to connect (through an SSH tunnel to the hypervisor's loopback)
  ansible.builtin.debug:
    msg: >-
      ssh -L 5900:{{ console.console.host }}:{{ console.console.port }} compute-1, then
      vncviewer localhost:5900 with password {{ console.console.password }}
      (until {{ console.console.expires }})
"""

RETURN = r"""
action:
  description: The action that ran.
  returned: always
  type: str
  sample: live_migrate
declared_state:
  description:
    - The declared field the action changed (C(flavor) after a resize or its revert, C(image) after a rebuild onto
      another image), with its new value. The declared state (C(virtfleet_servers) in Git) must say the same, or
      the next C(site.yml) run undoes the change, or stops on it as drift when it cannot (a disk never shrinks).
    - RV(msg) gives the line to write.
  returned: when the action changed a declared field
  type: dict
  sample: {"flavor": "m1.large"}
msg:
  description: What the declared state must now say, when RV(declared_state) is returned.
  returned: when the action changed a declared field
  type: str
  sample: "the declared state must follow, or the next converge undoes this or stops on it as drift: in
    virtfleet_servers set web-1's `flavor: m1.large`"
actions:
  description: The steps taken (or, in check mode, that would be taken), in order.
  returned: always
  type: list
  elements: str
  sample:
    - shut down web-1 (ACPI, then power off after 120 s)
    - grow root disk web-1-root-6f1c2a9e.qcow2 from 10 GiB to 20 GiB
    - redefine web-1 with flavor m1.large (2 vCPU, 4096 MiB RAM, 20 GiB disk)
    - start web-1
host:
  description:
    - libvirt URI of the host the server is on after the action (the target after a move).
    - Null for a shelved-offloaded server.
  returned: always
  type: str
server:
  description:
    - The server after the action, as M(virtfleet.compute.server_info) shows it, with its C(vm_state)
      (active, resized, rescued, shelved or shelved_offloaded). In check mode, the server before the action
      with its predicted C(state) and C(vm_state).
    - A shelved-offloaded server has no domain, so it is described by its offload record, with C(saved),
      the volumes holding its disks.
  returned: always
  type: dict
  sample:
    name: web-1
    state: running
    vm_state: resized
    resize_old_flavor: '{"vcpus": 1, "ram_mb": 2048, ...}'
console:
  description: Where to connect to the server's console (O(action=console)).
  returned: when O(action=console)
  type: dict
  contains:
    type:
      description: vnc or serial.
      type: str
    host:
      description: Address the VNC display listens on (on the hypervisor).
      type: str
      sample: 127.0.0.1
    port:
      description: TCP port of the VNC display.
      type: int
      sample: 5901
    password:
      description: The one-time VNC password (null in check mode).
      type: str
    expires:
      description: When the password stops working, UTC, ISO 8601.
      type: str
      sample: "2026-11-24T10:05:00Z"
    url:
      description: The display as a vnc:// URL.
      type: str
    hypervisor_uri:
      description: libvirt URI of the server's host.
      type: str
    pty:
      description: The serial console's pseudo terminal on the hypervisor (serial).
      type: str
    command:
      description: How to attach to the serial console through libvirt (serial).
      type: str
migration:
  description: What a move did.
  returned: when O(action) is migrate, live_migrate or unshelve to another host
  type: dict
  contains:
    source:
      description: URI of the host the server left.
      type: str
    target:
      description: URI of the host the server went to.
      type: str
    target_host:
      description: Name of that host (the scheduler's name, or its URI).
      type: str
    chosen_by:
      description: V(target_uri) or V(scheduler).
      type: str
    live:
      description: Whether the guest kept running during the move.
      type: bool
    storage:
      description: V(copy) (disks copied) or V(shared).
      type: str
    seconds:
      description: Duration of the live migration itself.
      type: float
    progress:
      description:
        - Samples of the live migration's progress (libvirt's job statistics), at most 20. Each has the seconds
          since the start, MiB processed and remaining, percent done and, while disks are copied, MiB of disk left.
      type: list
      elements: dict
scheduled:
  description: The scheduler's choice, when it chose the target.
  returned: when the target came from O(hosts)
  type: dict
  contains:
    host:
      description: The chosen host.
      type: str
    alternates:
      description: The next best hosts.
      type: list
      elements: str
evacuation:
  description: Where an evacuated server went.
  returned: when O(action=evacuate) rebuilt the server
  type: dict
reboot:
  description: How the reboot went. For a soft reboot, C(shutdown) is C(guest-agent) or C(acpi) (the guest
    stopped when asked through its QEMU guest agent, or, where the agent did not answer, by the ACPI power button) or
    C(forced) (powered off at O(shutdown_timeout)).
  returned: when O(action=reboot) ran
  type: dict
waited:
  description: Seconds spent waiting for the server to run and get its addresses.
  returned: when the module waited
  type: float
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtfleet.compute.plugins.module_utils._module import CONNECTION_ARGS, WAIT_ARGS, run_module
from ansible_collections.virtfleet.compute.plugins.module_utils._server_action import ACTIONS, run_action


def main():
    argument_spec = dict(
        action=dict(type="str", required=True, choices=list(ACTIONS)),
        bandwidth=dict(type="int"),
        confirm=dict(type="bool", default=False),
        console_ttl=dict(type="int", default=300),
        console_type=dict(type="str", default="vnc", choices=["vnc", "serial"]),
        flavor=dict(type="raw"),
        hostname=dict(type="str"),
        hosts=dict(type="list", elements="dict", options=dict(
            name=dict(type="str"),
            uri=dict(type="str", required=True),
        )),
        image=dict(type="str"),
        image_pool=dict(type="str"),
        instance_pool=dict(type="str", default="virtfleet-instances"),
        lock_reason=dict(type="str"),
        locked_by=dict(type="str"),
        migration_timeout=dict(type="int", default=600),
        migration_uri=dict(type="str"),
        name=dict(type="str", required=True),
        network_config=dict(type="dict"),
        reboot_type=dict(type="str", default="soft", choices=["soft", "hard"]),
        server=dict(type="dict"),
        server_group=dict(type="dict"),
        shutdown_timeout=dict(type="int", default=120),
        ssh_authorized_keys=dict(type="list", elements="str", no_log=False),
        storage=dict(type="str", default="auto", choices=["auto", "copy", "shared"]),
        target_uri=dict(type="str"),
        user_data=dict(type="str", no_log=True),
    )
    argument_spec.update(CONNECTION_ARGS)
    argument_spec.update(WAIT_ARGS)
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        required_if=[
            ("action", "resize", ("flavor",)),
            ("action", "evacuate", ("server",)),
            ("action", "migrate", ("target_uri", "hosts"), True),
            ("action", "live_migrate", ("target_uri", "hosts"), True),
            ("action", "evacuate", ("target_uri", "hosts"), True),
            ("action", "cleanup_evacuated", ("target_uri", "hosts"), True),
        ],
    )
    run_module(module, lambda client: run_action(client, module.params, module.check_mode, module._diff))


if __name__ == "__main__":
    main()
