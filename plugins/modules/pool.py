#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pool
short_description: Declare a libvirt storage pool for images, server disks or host records
version_added: 0.1.0
description:
  - Defines, builds, starts and autostarts a directory storage pool through the libvirt API, or stops and undefines
    it.
  - The collection uses three pools per host by default; the C(compute_node) role creates them
    (C(virtfleet-images) for base images, C(virtfleet-instances) for server disks, C(virtfleet-records) for the host
    record and the flavor catalog).
  - Removing a pool only removes its definition; the directory and the volumes in it stay on disk.
author:
  - virtfleet.compute developers (@virtfleet)
extends_documentation_fragment:
  - virtfleet.compute.connection
attributes:
  check_mode:
    support: full
    description: Check mode reports the steps the real run takes, in C(actions).
  diff_mode:
    support: full
    description: Shows type, path, active and autostart before and after.
  idempotent:
    support: full
    description: A second run with the same arguments reports no change.
options:
  name:
    description:
      - Name of the storage pool.
      - A letter or digit, then letters, digits and C(_.:+-); at most 128 characters; no C(..). Checked before the
        host is asked, in check mode too; an existing pool of any name can still be removed with V(absent).
    type: str
    required: true
  type:
    description: Pool type. Only directory pools for now.
    type: str
    choices: [dir]
    default: dir
  path:
    description:
      - Directory on the host holding the pool's volumes. Required to create a pool.
      - The path of an existing pool cannot change (its volumes would be stranded); the module refuses.
    type: path
  autostart:
    description: Start the pool when libvirtd starts.
    type: bool
    default: true
  state:
    description: V(present) defines, builds and starts the pool; V(absent) stops and undefines it.
    type: str
    choices: [present, absent]
    default: present
seealso:
  - module: virtfleet.compute.image
"""

EXAMPLES = r"""
- name: The pool for base images
  virtfleet.compute.pool:
    name: virtfleet-images
    path: /var/lib/libvirt/virtfleet/images

- name: Forget a pool (its files stay)
  virtfleet.compute.pool:
    name: old-images
    state: absent
"""

RETURN = r"""
pool:
  description: The pool after the run (predicted in check mode; empty after O(state=absent)).
  returned: always
  type: dict
  contains:
    name:
      description: Pool name.
      type: str
    type:
      description: Pool type.
      type: str
      sample: dir
    path:
      description: Directory of the pool on the host.
      type: str
    active:
      description: Whether the pool is started.
      type: bool
    autostart:
      description: Whether libvirtd starts it at boot.
      type: bool
    capacity:
      description: Size in bytes of the filesystem holding the pool.
      type: int
      returned: when active
    allocation:
      description: Bytes used.
      type: int
      returned: when active
    available:
      description: Bytes free.
      type: int
      returned: when active
    volumes:
      description: Number of volumes in the pool.
      type: int
      returned: when active
actions:
  description: The steps taken (or that would be taken in check mode).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtfleet.compute.plugins.module_utils._module import CONNECTION_ARGS, run_module
from ansible_collections.virtfleet.compute.plugins.module_utils._pool import converge_pool


def main():
    argument_spec = dict(
        name=dict(type="str", required=True),
        type=dict(type="str", default="dir", choices=["dir"]),
        path=dict(type="path"),
        autostart=dict(type="bool", default=True),
        state=dict(type="str", default="present", choices=["present", "absent"]),
    )
    argument_spec.update(CONNECTION_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    run_module(module, lambda client: converge_pool(client, module.params, module.check_mode, module._diff))


if __name__ == "__main__":
    main()
