"""`ansible-galaxy collection build` gives a tarball that installs, documents itself and works."""
import json
import os
import subprocess
import sys

from tests.conftest import REPO_ROOT

BIN = os.path.dirname(sys.executable)
PLUGIN_DIRS = {"modules": "module", "lookup": "lookup", "inventory": "inventory"}


def _plugins():
    for directory, plugin_type in PLUGIN_DIRS.items():
        path = os.path.join(REPO_ROOT, "plugins", directory)
        if not os.path.isdir(path):
            continue
        for name in sorted(os.listdir(path)):
            if name.endswith(".py") and not name.startswith("_"):
                yield plugin_type, "virtfleet.compute." + name[:-3]


def _env(collections):
    # Only the installed copy may be found: no ansible.cfg of the checkout, no link to it on the collections path.
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_NOCOLOR="1")
    env.pop("ANSIBLE_CONFIG", None)
    return env


def test_built_tarball_installs_documents_and_runs(tmp_path, uri):
    out = tmp_path / "dist"
    subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--output-path", str(out), REPO_ROOT],
                   check=True, capture_output=True, text=True)
    (tarball,) = list(out.iterdir())
    collections = tmp_path / "collections"
    subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "--force", "-p", str(collections),
                    str(tarball)], check=True, capture_output=True, text=True, env=_env(str(collections)),
                   cwd=str(tmp_path))
    installed = collections / "ansible_collections" / "virtfleet" / "compute"
    assert (installed / "MANIFEST.json").exists()
    assert not (installed / ".venv").exists() and not (installed / "build").exists()

    plugins = list(_plugins())
    assert ("module", "virtfleet.compute.server") in plugins
    for plugin_type, name in plugins:
        doc = subprocess.run([os.path.join(BIN, "ansible-doc"), "-t", plugin_type, "--json", name],
                             capture_output=True, text=True, env=_env(str(collections)), check=False,
                             cwd=str(tmp_path))
        assert doc.returncode == 0, (name, doc.stderr)
        data = json.loads(doc.stdout)[name]
        assert data["doc"]["description"], name
        assert data["examples"], "%s has no EXAMPLES" % name

    ran = subprocess.run([os.path.join(BIN, "ansible"), "localhost", "-c", "local", "-m",
                          "virtfleet.compute.server_info", "-a", "uri=%s" % uri,
                          "-e", "ansible_python_interpreter=%s" % sys.executable],
                         capture_output=True, text=True, env=_env(str(collections)), check=False,
                         cwd=str(tmp_path))
    assert ran.returncode == 0 and "SUCCESS" in ran.stdout, ran.stdout + ran.stderr
