# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every module's ``main()`` shares: the connection argument spec and turning typed errors into fail_json."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import MissingLibraryError, VirtfleetError
from ansible_collections.virtfleet.compute.plugins.module_utils._libvirt_client import DEFAULT_URI, LibvirtClient

CONNECTION_ARGS = dict(
    uri=dict(type="str", default=DEFAULT_URI),
)

WAIT_ARGS = dict(
    wait=dict(type="bool", default=True),
    wait_timeout=dict(type="int", default=600),
)


def run_module(module, work):
    """Call ``work(client)`` with a connection to ``uri`` and exit the module with its result dict.

    Only here do errors become ``fail_json``: the layers below raise typed errors with the field they are about.
    """
    client = LibvirtClient(module.params["uri"])
    try:
        result = work(client)
    except MissingLibraryError as exc:
        module.fail_json(msg=str(exc), exception=exc.details.get("traceback"))
    except VirtfleetError as exc:
        module.fail_json(**exc.to_result())
    finally:
        client.close()
    for warning in result.pop("warnings", []):
        module.warn(warning)
    module.exit_json(**result)
