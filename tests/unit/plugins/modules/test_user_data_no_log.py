"""user_data may hold passwords: it never appears in a module's output (the invocation Ansible prints at -vvv)."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import COLLECTIONS_PATH

SECRET = "hunter2-very-secret-password"
# A host that cannot be reached: every module fails at connect time, after Ansible has parsed the arguments, and
# its failure result carries the invocation (module_args) that -vvv shows.
NO_HOST = "qemu+unix:///system?socket=/nonexistent/virtfleet-no-log.sock"
USER_DATA = "#cloud-config\nchpasswd:\n  list: |\n    root:%s\n" % SECRET

CASES = {
    "server": {"name": "s1", "flavor": "m1.tiny", "image": "debian", "user_data": USER_DATA},
    "servers": {"servers": [{"name": "s1", "flavor": "m1.tiny", "image": "debian", "user_data": USER_DATA}]},
    "server_action": {"name": "s1", "action": "rebuild", "image": "debian", "user_data": USER_DATA},
}


def run_module(name, args, tmp_path):
    args = dict(args, uri=NO_HOST, _ansible_verbosity=3)
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, PYTHONPATH=COLLECTIONS_PATH)
    proc = subprocess.run(
        [sys.executable, "-m", "ansible_collections.virtfleet.compute.plugins.modules.%s" % name, str(path)],
        capture_output=True, text=True, env=env, timeout=60, check=False)
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("name", sorted(CASES))
def test_user_data_is_not_in_the_module_output(name, tmp_path):
    out = run_module(name, CASES[name], tmp_path)
    result = json.loads(out[out.index("{"):])
    # The module ran as far as connecting (so the arguments were accepted and would have been printed).
    assert result["failed"] and "virtfleet-no-log.sock" in result["msg"], out
    assert "invocation" in result
    assert SECRET not in out
