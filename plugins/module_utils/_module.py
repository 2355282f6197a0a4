# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every module's ``main()`` shares: the connection argument spec and turning typed errors into fail_json."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import MissingLibraryError, VirtfleetError
from ansible_collections.virtfleet.compute.plugins.module_utils._libvirt_client import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_URI,
    LibvirtClient,
)

CONNECTION_ARGS = dict(
    uri=dict(type="str", default=DEFAULT_URI),
    connect_timeout=dict(type="int", default=DEFAULT_CONNECT_TIMEOUT),
    allow_insecure_tcp=dict(type="bool", default=False),
)

WAIT_ARGS = dict(
    wait=dict(type="bool", default=True),
    wait_timeout=dict(type="int", default=600),
)


# Options that may hold secrets inside list or dict items, where Ansible's ``no_log`` cannot reach: the ``servers``
# module's items are free-form dicts (checked item by item later), and server_action's ``server`` is a whole record.
_SECRET_KEYS = ("user_data",)


def _secret_values(value):
    if isinstance(value, dict):
        for key, item in value.items():
            if key in _SECRET_KEYS and isinstance(item, str) and item:
                yield item
            else:
                yield from _secret_values(item)
    elif isinstance(value, list):
        for item in value:
            yield from _secret_values(item)


def hide_secrets(module):
    """Mask every ``user_data`` found in the parameters, at any depth, in everything the module returns.

    Ansible masks the values of ``no_log`` options it knows of; values it registers in ``no_log_values`` are masked
    the same way in the result, its ``invocation`` (what ``-vvv`` prints) and the diff.
    """
    module.no_log_values.update(_secret_values(module.params))


def run_module(module, work):
    """Call ``work(client)`` with a connection to ``uri`` and exit the module with its result dict.

    Only here do errors become ``fail_json``: the layers below raise typed errors with the field they are about.
    """
    hide_secrets(module)
    client = LibvirtClient(module.params["uri"], connect_timeout=module.params["connect_timeout"],
                           allow_insecure_tcp=module.params["allow_insecure_tcp"])
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
