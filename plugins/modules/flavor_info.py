#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: flavor_info
short_description: List the flavors of a libvirt host's flavor catalog
version_added: 0.1.0
description:
  - Returns the flavors of the catalog kept on the host (see M(virtfleet.compute.flavor)), all of them or those
    named, sorted by name. Reading the whole catalog costs one volume read through libvirt.
  - Optionally lists, per flavor, the servers of the host that use it and those whose flavor snapshot differs from
    the catalog (they were built before the flavor changed).
  - Never fails because a named flavor does not exist, or because the host has no catalog; the list is then
    shorter or empty.
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
    description: Reads or checks only; there is nothing to diff.
  idempotent:
    support: full
    description: Never changes anything.
options:
  names:
    description: Only these flavors. Omitted, every flavor of the catalog.
    type: list
    elements: str
    aliases: [name]
  include_servers:
    description:
      - Add C(servers) and C(outdated_servers) to every flavor. This reads the definition of every domain on the
        host (one read each), so it costs more on a host with many servers.
    type: bool
    default: false
seealso:
  - module: virtfleet.compute.flavor
"""

EXAMPLES = r"""
- name: The whole catalog
  virtfleet.compute.flavor_info:
  register: catalog

- name: Which servers run an outdated m1.small
  virtfleet.compute.flavor_info:
    name: m1.small
    include_servers: true
  register: small

- name: Show them
  ansible.builtin.debug:
    msg: "{{ small.flavors[0].outdated_servers | default([]) }}"
"""

RETURN = r"""
flavors:
  description: The flavors, sorted by name.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Flavor name.
      type: str
      sample: m1.small
    vcpus:
      description: vCPUs.
      type: int
      sample: 1
    ram_mb:
      description: Memory in MiB.
      type: int
      sample: 2048
    disk_gb:
      description: Root disk in GiB (0 = the image's size).
      type: int
      sample: 20
    swap_mb:
      description: Swap in MiB.
      type: int
      sample: 0
    ephemeral_gb:
      description: Ephemeral disk in GiB.
      type: int
      sample: 0
    description:
      description: Free text.
      type: str
    extra_specs:
      description: Extra specs.
      type: dict
    servers:
      description: Managed servers of the host whose flavor snapshot carries this flavor's name.
      returned: when O(include_servers=true)
      type: list
      elements: str
    outdated_servers:
      description: Those of RV(flavors[].servers) whose snapshot differs from the catalog in size or extra specs.
      returned: when O(include_servers=true)
      type: list
      elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtfleet.compute.plugins.module_utils._flavor_catalog import flavor_info
from ansible_collections.virtfleet.compute.plugins.module_utils._module import CONNECTION_ARGS, run_module


def main():
    argument_spec = dict(
        names=dict(type="list", elements="str", aliases=["name"]),
        include_servers=dict(type="bool", default=False),
    )
    argument_spec.update(CONNECTION_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    run_module(module, lambda client: flavor_info(client, module.params))


if __name__ == "__main__":
    main()
