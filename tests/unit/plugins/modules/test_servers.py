"""The servers module takes, per item, exactly the options of the server module (plus the declared state's)."""
import importlib

import pytest

from ansible_collections.virtfleet.compute.plugins.module_utils import _server_batch

# What a servers item may have beyond the server module's options: where a declared server should run.
EXTRA = {"host", "hints"}


class _Captured(Exception):
    pass


def module_spec(name):
    """The argument spec a module's main() builds, captured at AnsibleModule() without running anything."""
    module = importlib.import_module("ansible_collections.virtfleet.compute.plugins.modules.%s" % name)

    def fake(argument_spec, **kwargs):
        raise _Captured(argument_spec, kwargs)

    original = module.AnsibleModule
    module.AnsibleModule = fake
    try:
        with pytest.raises(_Captured) as captured:
            module.main()
    finally:
        module.AnsibleModule = original
    return captured.value.args


def test_items_take_the_server_module_options():
    spec, _kwargs = module_spec("server")
    spec = dict(spec)
    for option in ("uri", "connect_timeout", "allow_insecure_tcp"):  # the connection's, given once for all items
        spec.pop(option)
    items = dict(_server_batch.ITEM_OPTIONS)
    assert set(items) - set(spec) == EXTRA
    for option, value in spec.items():
        assert items[option] == value, "%s differs from the server module" % option


def test_servers_module_spec():
    spec, kwargs = module_spec("servers")
    assert kwargs == {"supports_check_mode": True}
    assert spec["servers"] == {"type": "list", "elements": "dict", "required": True}
    assert spec["prune"]["default"] is False
