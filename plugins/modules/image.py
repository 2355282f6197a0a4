#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: image
short_description: Import a verified, inspected base image into a host's image pool
version_added: 0.1.0
description:
  - Imports a disk image from a local file or a URL into a libvirt storage pool, through libvirt's volume upload
    stream, so the same task works on the host and from a controller with a remote O(uri).
  - Before anything is created the image is checksummed and inspected with oslo.utils' format inspector, the checks
    Nova uses since CVE-2024-32498. Refused are a qcow2 image with a backing file or an external data file, a VMDK
    with flat extents, any format other than raw and qcow2, a file whose content is not O(disk_format), and raw
    content that starts with another format's signature (a truncated qcow2 header, for one).
  - O(src) must be a regular file. A symbolic link is refused, not followed; so are directories, devices, FIFOs and
    sockets. The file is opened once, and inspected, hashed and uploaded from that one open file, so replacing it
    during the run cannot slip in other content.
  - After the upload the pool must still list the volume, and the volume is read back through libvirt and inspected
    again; if it does not pass, it is deleted and nothing is recorded.
  - The image records never override the pool. An image whose volume was deleted or changed outside the collection
    is imported again.
  - Idempotent by checksum. With O(checksum) an imported image is recognised without reading the file again;
    without it, the local file is hashed and compared with what was imported.
  - New content under the same name replaces the image only while no server uses it as its base.
  - O(state=absent) deletes the image, refused while any server (managed or not) uses it.
author:
  - virtfleet.compute developers (@virtfleet)
extends_documentation_fragment:
  - virtfleet.compute.connection
attributes:
  check_mode:
    support: full
    description:
      - A local O(src) is inspected and checksummed in check mode too, so check mode predicts the real run, refusals
        included. A O(url) is not downloaded in check mode; a warning says the safety check is left to the real run.
  diff_mode:
    support: full
    description: Shows the image's format, checksum and sizes before and after.
  idempotent:
    support: full
    description: A second run with the same arguments reports no change.
options:
  name:
    description: Name of the image (its volume name in O(pool)); servers refer to it by this name.
    type: str
    required: true
  pool:
    description: The libvirt storage pool for base images.
    type: str
    default: virtfleet-images
  src:
    description:
      - Path of the image file on the machine running the module (the controller when the module is delegated to
        it and O(uri) is remote). Mutually exclusive with O(url).
    type: path
  url:
    description:
      - HTTP(S) or file URL to download the image from, on the machine running the module. Requires O(checksum).
    type: str
  checksum:
    description:
      - Expected checksum, C(sha256:HEX), C(sha512:HEX) or a bare sha256 hex digest. The import fails, with nothing
        created, when the content differs.
    type: str
  disk_format:
    description:
      - Declared format. The detected format must match it. Omitted, any allowed format (raw or qcow2) is accepted
        as detected.
    type: str
    choices: [raw, qcow2]
  validate_certs:
    description: Verify TLS certificates when downloading.
    type: bool
    default: true
  timeout:
    description: Seconds a download may stall before failing.
    type: int
    default: 60
  state:
    description: V(present) imports the image; V(absent) deletes it when no server uses it.
    type: str
    choices: [present, absent]
    default: present
notes:
  - The image records (format, checksums, sizes, source) are kept in the host's C(virtfleet-records) pool, which
    the module creates when it is missing.
  - Build an image without internet access with the C(virtfleet.compute.image_builder) role.
seealso:
  - module: virtfleet.compute.server
  - name: OSSA-2024-001 / CVE-2024-32498
    description: The image format vulnerabilities these checks come from.
    link: https://security.openstack.org/ossa/OSSA-2024-001.html
"""

EXAMPLES = r"""
- name: Import a locally built Debian image
  virtfleet.compute.image:
    name: debian-12
    src: /var/cache/virtfleet/debian-12.qcow2
    disk_format: qcow2

- name: Import from a mirror, trusted only with the expected checksum
  virtfleet.compute.image:
    name: ubuntu-24.04
    url: https://images.example.com/noble-server-cloudimg-amd64.img
    checksum: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
    disk_format: qcow2

- name: Into a remote hypervisor, from the controller
  virtfleet.compute.image:
    uri: qemu+ssh://root@compute-2.example.com/system
    name: debian-12
    src: images/debian-12.qcow2
  delegate_to: localhost

- name: Delete an image no server uses any more
  virtfleet.compute.image:
    name: debian-11
    state: absent
"""

RETURN = r"""
image:
  description: The image as recorded (predicted in check mode; empty after O(state=absent)).
  returned: always
  type: dict
  contains:
    name:
      description: Image name.
      type: str
    pool:
      description: Storage pool.
      type: str
    format:
      description: Format given to libvirt and QEMU, raw or qcow2.
      type: str
    sha256:
      description: sha256 of the file as imported.
      type: str
    virtual_size:
      description: Size in bytes of the disk the image holds.
      type: int
    size:
      description: Size in bytes of the image file.
      type: int
    source:
      description: Where it was imported from.
      type: str
actions:
  description: The steps taken (or that would be taken in check mode).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtfleet.compute.plugins.module_utils._image import converge_image
from ansible_collections.virtfleet.compute.plugins.module_utils._module import CONNECTION_ARGS, run_module


def main():
    argument_spec = dict(
        name=dict(type="str", required=True),
        pool=dict(type="str", default="virtfleet-images"),
        src=dict(type="path"),
        url=dict(type="str"),
        checksum=dict(type="str"),
        disk_format=dict(type="str", choices=["raw", "qcow2"]),
        validate_certs=dict(type="bool", default=True),
        timeout=dict(type="int", default=60),
        state=dict(type="str", default="present", choices=["present", "absent"]),
    )
    argument_spec.update(CONNECTION_ARGS)
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        mutually_exclusive=[("src", "url")],
        required_if=[("state", "present", ("src", "url"), True)],
        required_by={"url": "checksum"},
    )
    run_module(module, lambda client: converge_image(client, module.params, module.check_mode, module._diff))


if __name__ == "__main__":
    main()
