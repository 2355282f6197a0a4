#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: servers
short_description: Converge many servers of one libvirt host in one call, and prune the undeclared ones
version_added: 0.1.0
description:
  - Reconciles a list of servers on one host, each exactly as M(virtfleet.compute.server) would (the same code runs
    for every item), in one task instead of one task per server.
  - Every item's arguments are checked first; if any is wrong the module fails, listing every error with its path
    (C(servers[3].flavor.ram_mb)), and nothing is changed.
  - One server failing (an image missing on the host, a refused change) does not stop the others unless
    O(stop_on_error=true). The task fails at the end, naming the failed servers; RV(results) has every server's
    outcome.
  - Servers are started without waiting, then waited for together, so a batch waits about as long as its slowest
    server.
  - With O(prune=true), managed servers on the host that are declared nowhere are deleted, like C(terraform apply)
    removing what left the configuration. A server is declared when it is in O(servers) or its name is in
    O(declared_names) (the servers declared for the other hosts). A domain not created by this collection is never
    deleted, and neither is a server declared for another host (RV(misplaced); moving it is a migration).
    O(prune_selector) narrows the prune to servers carrying given tags or metadata. Check mode reports exactly the
    servers a real run would delete.
author:
  - virtfleet.compute developers (@virtfleet)
extends_documentation_fragment:
  - virtfleet.compute.connection
attributes:
  check_mode:
    support: full
    description:
      - Check mode reports, server by server, exactly the steps the real run takes (RV(results[].actions)), and
        exactly the servers a prune would delete. Each server is planned against the host as it is; servers of one
        batch do not depend on each other.
  diff_mode:
    support: full
    description: One diff per changed server, its declared fields before and after.
  idempotent:
    support: full
    description: A second run with the same arguments reports no change.
options:
  servers:
    description:
      - "The servers of this host. Each is a dict with the options of M(virtfleet.compute.server) (except O(uri)),
        with the same types, defaults and meaning: C(name) (required), C(state), C(flavor), C(image), C(image_pool),
        C(instance_pool), C(networks), C(hostname), C(user_data), C(ssh_authorized_keys), C(network_config),
        C(metadata), C(tags), C(virt_type), C(allow_rebuild), C(shutdown_timeout), C(wait) and C(wait_timeout)."
      - A network given by its name alone (C(networks=[default])) stands for C({network=default}). A NIC may also
        have the C(fixed_ip) of the declared state, passed to the server.
      - Entries of C(virtfleet_servers) can be passed unchanged - the placement fields of the declared state
        (C(host), C(server_group), C(availability_zone), C(hints)) are accepted. The placement is decided before
        this module runs (the scheduler, and the play's host), so they change nothing here.
      - Names must be unique in the list. An empty list is allowed (a host without servers, for a prune).
    type: list
    elements: dict
    required: true
  prune:
    description:
      - Delete the managed servers of this host that are declared nowhere (not in O(servers), not in
        O(declared_names)) and match O(prune_selector). They are deleted first, before the declared servers are
        converged, so they free capacity, names and fixed IPs.
      - Refused when nothing at all is declared and O(prune_selector) is empty, since it would delete every server of
        the host; declare the servers to delete with C(state=absent) instead.
    type: bool
    default: false
  declared_names:
    description:
      - Names of every server declared in the cloud, on any host (usually C(virtfleet_servers | map(attribute='name'))).
      - A prune never deletes them. One found on this host without being in O(servers) is reported in
        RV(misplaced).
    type: list
    elements: str
    default: []
  prune_selector:
    description:
      - Limit the prune to the managed servers that carry every tag and every metadata pair given. Omitted or empty,
        every managed server is a candidate.
      - Give each declared state (Git repository, team, environment) its own tag in all its servers' C(tags) and
        here, and a prune never touches servers another one manages on the same hosts.
    type: dict
    suboptions:
      tags:
        description: Tags a server must all carry.
        type: list
        elements: str
      metadata:
        description: Metadata pairs a server must all have (values compared as strings, booleans as true/false).
        type: dict
  prune_max:
    description:
      - Fail before deleting anything when a prune would delete more than this many servers of the host. A guard
        against a declared state that lost servers by mistake (a truncated file, a wrong inventory).
      - Omitted, there is no limit.
    type: int
  pending:
    description:
      - Check mode only, ignored otherwise. What earlier tasks of the same run would create on this host, so that
        a server needing it is planned as those tasks predicted instead of failing because it does not exist yet
        (as Terraform's plan carries earlier resources forward). C(site.yml) passes the check-mode results of its
        pool, flavor, image and network tasks.
      - A flavor here replaces the catalog's of the same name; an image or a network is used only when the host
        does not have it. A server whose image or instance pool does not exist yet is predicted as created after
        the pool is, without its disk steps.
    type: dict
    suboptions:
      pools:
        description: Names of storage pools that would be created.
        type: list
        elements: str
        default: []
      flavors:
        description: Flavors of the catalog as the flavor task would write them (C(name), C(vcpus), C(ram_mb)...).
        type: list
        elements: dict
        default: []
      images:
        description: Images that would be imported, C(name), C(pool), C(format) and C(virtual_size).
        type: list
        elements: dict
        default: []
      networks:
        description: Networks that would be created, C(name) and C(active).
        type: list
        elements: dict
        default: []
  stop_on_error:
    description:
      - Stop at the first server that fails; the servers after it are reported as C(skipped).
      - With V(false) every server is attempted and the task fails at the end when any failed.
    type: bool
    default: false
notes:
  - Pruned servers are powered off and deleted with the volumes created for them, as C(state=absent) does.
  - To delete a server on purpose, declare it with C(state=absent); a prune is for servers whose declaration was
    removed.
seealso:
  - module: virtfleet.compute.server
  - module: virtfleet.compute.validate_state
"""

EXAMPLES = r"""
- name: Converge the servers declared for this host, in one call
  virtfleet.compute.servers:
    servers: >-
      {{ virtfleet_servers | selectattr('host', 'defined') | selectattr('host', 'equalto', inventory_hostname) }}
  register: converged

- name: Three servers, one of them stopped
  virtfleet.compute.servers:
    servers:
      - name: web-1
        flavor: {vcpus: 1, ram_mb: 1024, disk_gb: 10}
        image: debian-12
        networks: [default]
        tags: [web]
      - name: web-2
        flavor: {vcpus: 1, ram_mb: 1024, disk_gb: 10}
        image: debian-12
        networks: [default]
        tags: [web]
      - name: batch-1
        state: stopped
        flavor: {vcpus: 4, ram_mb: 8192, disk_gb: 40}
        image: debian-12

- name: Preview what a prune would delete (check mode changes nothing)
  virtfleet.compute.servers:
    servers: "{{ my_servers }}"
    declared_names: "{{ virtfleet_servers | map(attribute='name') }}"
    prune: true
    prune_selector:
      tags: [team-a]
  check_mode: true
  register: preview

- name: Show it
  ansible.builtin.debug:
    msg: "would delete {{ preview.pruned }}"

- name: Prune for real, at most 5 servers per host
  virtfleet.compute.servers:
    servers: "{{ my_servers }}"
    declared_names: "{{ virtfleet_servers | map(attribute='name') }}"
    prune: true
    prune_selector:
      tags: [team-a]
    prune_max: 5
"""

RETURN = r"""
results:
  description:
    - One entry per server, pruned servers first, then O(servers) in order.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Server name.
      type: str
      sample: web-1
    index:
      description: Position in O(servers); null for a pruned server.
      type: int
    result:
      description:
        - What happened (in check mode, what would happen) - created, changed, deleted, unchanged, failed or
          skipped (not attempted after a failure with O(stop_on_error=true)).
      type: str
      sample: created
    changed:
      description: Whether the server was changed (a failed server may have been, if its undo was incomplete).
      type: bool
    failed:
      description: Whether this server failed.
      type: bool
    pruned:
      description: Whether the server was a prune candidate (declared nowhere).
      type: bool
    state:
      description: The declared state (C(absent) for a pruned server).
      type: str
    actions:
      description: The steps taken (in check mode, that would be taken), as M(virtfleet.compute.server) reports them.
      type: list
      elements: str
      sample:
        - create root disk (10 GiB qcow2 overlay on virtfleet-images/debian-12)
        - write config drive
        - define domain web-1 (qemu, 1 vCPU, 1024 MiB)
        - start web-1
    server:
      description: The server after the run (predicted in check mode), as M(virtfleet.compute.server) returns it.
      type: dict
    msg:
      description: Why the server failed or was skipped.
      type: str
    field:
      description: The option a failure is about, when there is one.
      type: str
    waited:
      description: Seconds spent waiting for the server to run and get its addresses.
      type: float
summary:
  description: Server names by outcome.
  returned: always
  type: dict
  contains:
    created:
      description: Servers created.
      type: list
      elements: str
    changed:
      description: Servers changed.
      type: list
      elements: str
    deleted:
      description: Servers deleted (declared absent, or pruned).
      type: list
      elements: str
    unchanged:
      description: Servers left as they were.
      type: list
      elements: str
    failed:
      description: Servers that failed.
      type: list
      elements: str
    skipped:
      description: Servers not attempted.
      type: list
      elements: str
  sample:
    created:
      - web-3
    changed: []
    deleted:
      - old-1
    unchanged:
      - web-1
      - web-2
    failed: []
    skipped: []
pruned:
  description: The servers the prune deleted (in check mode, would delete).
  returned: always
  type: list
  elements: str
  sample:
    - old-1
undeclared:
  description:
    - Managed servers of the host declared nowhere, whether or not a prune deleted them (those outside
      O(prune_selector) stay).
  returned: always
  type: list
  elements: str
misplaced:
  description:
    - Managed servers of the host that are not in O(servers) but are declared for another host (in
      O(declared_names)); never pruned. Move them with a migration, or correct the declaration.
  returned: always
  type: list
  elements: str
unmanaged:
  description: Domains of the host not created by this collection; never touched, listed for the record.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtfleet.compute.plugins.module_utils._module import CONNECTION_ARGS, run_module
from ansible_collections.virtfleet.compute.plugins.module_utils._pending import PENDING_OPTIONS
from ansible_collections.virtfleet.compute.plugins.module_utils._server_batch import (
    PRUNE_SELECTOR_OPTIONS,
    converge_servers,
)


def main():
    argument_spec = dict(
        servers=dict(type="list", elements="dict", required=True),
        prune=dict(type="bool", default=False),
        declared_names=dict(type="list", elements="str", default=[]),
        prune_selector=dict(type="dict", options=PRUNE_SELECTOR_OPTIONS),
        prune_max=dict(type="int"),
        stop_on_error=dict(type="bool", default=False),
        pending=dict(type="dict", options=PENDING_OPTIONS),
    )
    argument_spec.update(CONNECTION_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    run_module(module, lambda client: converge_servers(client, module.params, module.check_mode, module._diff))


if __name__ == "__main__":
    main()
