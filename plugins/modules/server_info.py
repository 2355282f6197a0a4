#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: server_info
short_description: List the servers virtfleet.compute manages on a libvirt host
version_added: 0.1.0
description:
  - Returns the managed servers of a host (all of them, or those named) with power state, flavor, image, NICs, IP
    addresses, metadata, tags and attached data volumes, read from libvirt.
  - Domains this collection did not create are not listed.
  - Never fails because a named server does not exist; it is just not in the list.
author:
  - virtfleet.compute developers (@virtfleet)
extends_documentation_fragment:
  - virtfleet.compute.connection
attributes:
  check_mode:
    support: full
    description: Reads only; runs in check mode too.
  diff_mode:
    support: none
    description: Reads only; there is nothing to diff.
  idempotent:
    support: full
    description: Never changes anything.
options:
  names:
    description: Only these servers. Omitted, every managed server of the host.
    type: list
    elements: str
    aliases: [name]
  tags:
    description: Only servers that carry all of these tags.
    type: list
    elements: str
seealso:
  - module: virtfleet.compute.server
  - module: virtfleet.compute.volume_info
"""

EXAMPLES = r"""
- name: All servers of the host
  virtfleet.compute.server_info:
  register: info

- name: Wait (showing progress) until web-1 has an address
  virtfleet.compute.server_info:
    name: web-1
  register: web
  until: web.servers | length > 0 and web.servers[0].ips | length > 0
  retries: 60
  delay: 5

- name: Production servers of a remote host
  virtfleet.compute.server_info:
    uri: qemu+ssh://root@compute-2.example.com/system
    tags: [production]
"""

RETURN = r"""
servers:
  description:
    - Managed servers, sorted by name. Same fields as the C(server) result of M(virtfleet.compute.server).
    - C(flavor_drift) lists the fields (vcpus, ram_mb, disk_gb, swap_mb, ephemeral_gb, extra_specs) in which the
      server's flavor snapshot differs from the host catalog's flavor of the same name; empty when they agree or the
      server's flavor was given inline.
    - C(config_drive_rewritten) is true when the server's cloud-init data changed after its root disk was built (a
      booted guest keeps the SSH keys and user data it first read; rebuild it to apply the new ones).
    - C(locked) is the server's lock (who locked it, when and why), or null; see M(virtfleet.compute.server_action).
  returned: always
  type: list
  elements: dict
  sample:
    - name: web-1
      state: running
      uuid: 481addb5-78db-4402-8525-b50d5068da55
      flavor: {vcpus: 1, ram_mb: 1024, disk_gb: 10, swap_mb: 0, ephemeral_gb: 0}
      image: debian-12
      ips: [192.168.122.50]
      metadata: {role: web}
      tags: [production]
      flavor_drift: []
      config_drive_rewritten: false
      locked: {at: "2026-12-07T16:40:00Z", by: alice, reason: disk errors under investigation}
      attachments:
        - {name: web-data, pool: virtfleet-volumes, device: vde, bus: virtio, read_only: false,
           serial: 0b0b5d0e-1f52-4bd4-9}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtfleet.compute.plugins.module_utils._module import CONNECTION_ARGS, run_module
from ansible_collections.virtfleet.compute.plugins.module_utils._server import list_servers


def _work(client, params):
    servers = list_servers(client, params["names"])
    wanted = set(params["tags"] or [])
    if wanted:
        servers = [s for s in servers if wanted.issubset(s["tags"])]
    return {"changed": False, "servers": servers}


def main():
    argument_spec = dict(
        names=dict(type="list", elements="str", aliases=["name"]),
        tags=dict(type="list", elements="str"),
    )
    argument_spec.update(CONNECTION_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    run_module(module, lambda client: _work(client, module.params))


if __name__ == "__main__":
    main()
