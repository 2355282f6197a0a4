# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What earlier tasks of the same check-mode run would create: a plan carried forward, as Terraform's plan does.

In check mode site.yml's image import, flavor catalog, networks and pools are only predicted, so a server that
needs them would fail to plan ("image halt not found") although the real run creates them first. The playbook
passes their check-mode results (the ``pending`` option of the servers module); a reference that does not exist on
the host but is pending is planned as the earlier task predicted it. Outside check mode it is never consulted.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import ValidationError
from ansible_collections.virtfleet.compute.plugins.module_utils._flavor import Flavor

PENDING_OPTIONS = dict(
    pools=dict(type="list", elements="str", default=[]),
    flavors=dict(type="list", elements="dict", default=[]),
    images=dict(type="list", elements="dict", default=[]),
    networks=dict(type="list", elements="dict", default=[]),
)


class Pending:
    """The resources of ``data`` (the servers module's ``pending`` option), looked up by name."""

    def __init__(self, data=None):
        data = data or {}
        self.pools = set(data.get("pools") or [])
        self.flavors = dict((f["name"], f) for f in data.get("flavors") or [] if f.get("name"))
        self.images = dict(((i.get("pool") or "virtfleet-images", i["name"]), i)
                           for i in data.get("images") or [] if i.get("name"))
        self.networks = dict((n["name"], n) for n in data.get("networks") or [] if n.get("name"))

    def __bool__(self):
        return bool(self.pools or self.flavors or self.images or self.networks)

    def flavor(self, name):
        """The flavor the catalog task above would write, as a Flavor, or None."""
        data = self.flavors.get(name)
        if data is None:
            return None
        keep = dict((k, v) for k, v in data.items() if v is not None)
        return Flavor.from_dict(keep, field="flavor")

    def image(self, pool, name):
        """The image the import above would make, as the server's planner describes a base image, or None."""
        data = self.images.get((pool, name))
        if data is None:
            return None
        fmt = data.get("format") or "qcow2"
        if fmt not in ("raw", "qcow2"):
            raise ValidationError("image %s would be imported as %s; servers boot from raw or qcow2 images only"
                                  % (name, fmt), field="image")
        # No path yet: the steps that use it only run in a real run, where the image exists.
        return {"path": None, "format": fmt, "virtual_size": data.get("virtual_size"), "pool": pool, "name": name,
                "pending": True}

    def network(self, name):
        return self.networks.get(name)

    def missing_pools(self, client, names):
        """Those of ``names`` that do not exist on the host yet but that a task above would create."""
        return [name for name in names if name in self.pools and client.find_pool(name) is None]
