#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: volume_info
short_description: List the data volumes virtfleet.compute manages on a libvirt host, with their attachments
version_added: 0.1.0
description:
  - Returns the data volumes the M(virtfleet.compute.volume) module created on a host (all of them, or those of a
    pool or with given names) with their size, format, encryption, metadata, and the servers each one is attached
    to.
  - Volumes this collection did not create are not listed.
  - Never fails because a named volume does not exist; it is just not in the list.
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
    description: Only these volumes. Omitted, every managed volume of the host.
    type: list
    elements: str
    aliases: [name]
  pool:
    description: Only volumes of this storage pool. Omitted, volumes of every pool.
    type: str
seealso:
  - module: virtfleet.compute.volume
  - module: virtfleet.compute.server_info
"""

EXAMPLES = r"""
- name: All data volumes of the host
  virtfleet.compute.volume_info:
  register: info

- name: Where is db-data attached?
  virtfleet.compute.volume_info:
    name: db-data
  register: db

- name: Show it
  ansible.builtin.debug:
    msg: "{{ db.volumes[0].attachments | map(attribute='server') | list }}"
"""

RETURN = r"""
volumes:
  description: Managed volumes, sorted by pool and name. Same fields as the C(volume) result of
    M(virtfleet.compute.volume).
  returned: always
  type: list
  elements: dict
  sample:
    - name: db-data
      pool: virtfleet-volumes
      id: 0b0b5d0e-1f52-4bd4-9d55-0c83f3b2b6a1
      serial: 0b0b5d0e-1f52-4bd4-9
      format: qcow2
      size: 21474836480
      encrypted: false
      shareable: false
      metadata: {owner: dba}
      status: in-use
      attachments:
        - {server: db-1, device: vde, bus: virtio, read_only: false}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtfleet.compute.plugins.module_utils._module import CONNECTION_ARGS, run_module
from ansible_collections.virtfleet.compute.plugins.module_utils._volume import list_volumes


def main():
    argument_spec = dict(
        names=dict(type="list", elements="str", aliases=["name"]),
        pool=dict(type="str"),
    )
    argument_spec.update(CONNECTION_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    run_module(module, lambda client: {"changed": False,
                                       "volumes": list_volumes(client, module.params["names"], module.params["pool"])})


if __name__ == "__main__":
    main()
