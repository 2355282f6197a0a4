"""The collection as users get it: the built tarball's playbooks, and the execution environment AWX runs it in.

* ``ansible-galaxy collection install`` of the tarball, then ``ansible-playbook virtfleet.compute.validate``
  (a collection playbook, no checkout anywhere near) passes a valid state and fails an invalid one;
* ``ansible-builder create`` accepts the EE definition of docs/awx.md and writes a build context (no image is
  built: there is no container runtime here);
* ansible-builder's own introspection, the step that runs inside the image build, finds the collection's Python and
  system requirements through ``meta/execution-environment.yml``.
"""
import os
import re
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.unit.docs.test_docs_examples import blocks

BIN = os.path.dirname(sys.executable)


def _env(collections):
    # Only the installed copy may be found: no ansible.cfg of the checkout, no link to it on the collections path.
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_NOCOLOR="1",
               ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    env.pop("ANSIBLE_CONFIG", None)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    base = tmp_path_factory.mktemp("dist")
    subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--output-path", str(base / "dist"),
                    REPO_ROOT], check=True, capture_output=True, text=True)
    (tarball,) = list((base / "dist").iterdir())
    collections = base / "collections"
    subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "--force", "-p", str(collections),
                    str(tarball)], check=True, capture_output=True, text=True, env=_env(str(collections)),
                   cwd=str(base))
    return base, tarball, collections


def _inventory(directory, servers):
    (directory / "group_vars").mkdir(parents=True)
    hosts = dict((name, {"ansible_connection": "local"}) for name in ("compute-1", "compute-2"))
    (directory / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {"compute": {"hosts": hosts}}}}))
    (directory / "group_vars" / "all.yml").write_text(yaml.safe_dump({
        "virtfleet_flavors": [{"name": "m1.small", "vcpus": 1, "ram_mb": 1024, "disk_gb": 10}],
        "virtfleet_images": [{"name": "debian-12", "src": "/srv/debian-12.qcow2"}],
        "virtfleet_server_groups": [{"name": "web", "policy": "anti-affinity"}],
        "virtfleet_servers": servers,
    }))
    return str(directory)


def test_validate_is_a_collection_playbook_of_the_installed_tarball(installed, tmp_path):
    _base, _tarball, collections = installed
    root = collections / "ansible_collections" / "virtfleet" / "compute"
    for path in ("playbooks/validate.yml", "playbooks/tasks/validate.yml", "playbooks/tasks/report.yml",
                 "schemas/cloud.schema.json", "plugins/action/validate_state.py", "docs/reference-state.md"):
        assert (root / path).exists(), path

    web = [{"name": "web-%d" % i, "flavor": "m1.small", "image": "debian-12", "server_group": "web"}
           for i in (1, 2)]
    good = _inventory(tmp_path / "good", web)
    ran = subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", good, "virtfleet.compute.validate"],
                         capture_output=True, text=True, env=_env(str(collections)), cwd=str(tmp_path), check=False)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "ok=1" in ran.stdout

    # Three servers of an anti-affinity group on two hosts, and a typo: both reported, exit code 2.
    typo = {"name": "web-3", "flavor": "m1.smal", "image": "debian-12", "server_group": "web"}
    bad = _inventory(tmp_path / "bad", web + [typo])
    ran = subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", bad, "virtfleet.compute.validate"],
                         capture_output=True, text=True, env=_env(str(collections)), cwd=str(tmp_path), check=False)
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert "servers[2].flavor: 'm1.smal' is not a defined flavor" in ran.stdout
    assert "server_groups[0]: anti-affinity group 'web' has 3 servers, but its eligible hosts can take only 2" \
        in ran.stdout


def test_ansible_builder_create_accepts_the_documented_definition(installed, tmp_path):
    (definition,) = [b for m, _l, b, _i in blocks("docs/awx.md") if m and m["kind"] == "ee-definition"]
    (requirements,) = [b for m, _l, b, _i in blocks("docs/awx.md")
                       if m and m["kind"] == "yaml" and b.startswith("# requirements.yml")]
    (tmp_path / "execution-environment.yml").write_text(definition)
    (tmp_path / "requirements.yml").write_text(requirements)
    context = tmp_path / "context"
    created = subprocess.run([os.path.join(BIN, "ansible-builder"), "create", "-f", "execution-environment.yml",
                              "-c", str(context), "--output-filename", "Containerfile"], capture_output=True, text=True,
                             cwd=str(tmp_path), check=False)
    assert created.returncode == 0, created.stdout + created.stderr
    containerfile = (context / "Containerfile").read_text()
    assert 'ARG EE_BASE_IMAGE="quay.io/ansible/awx-ee:24.6.1"' in containerfile
    assert "ansible-galaxy collection install" in containerfile
    # The image build runs ansible-builder's introspection over the installed collections (next test).
    assert "introspect.py introspect" in containerfile
    assert (context / "_build" / "scripts" / "introspect.py").exists()
    assert yaml.safe_load((context / "_build" / "requirements.yml").read_text()) == yaml.safe_load(requirements)


def _introspect(collections):
    import ansible_builder

    script = os.path.join(os.path.dirname(ansible_builder.__file__), "_target_scripts", "introspect.py")
    out = subprocess.run([sys.executable, script, "introspect", str(collections)], capture_output=True, text=True,
                         check=True)
    return yaml.safe_load(out.stdout)


def _names(lines):
    return set(re.split(r"[\s\[<>=!;#]", line.strip(), maxsplit=1)[0].lower() for line in lines)


def _requirements(path):
    with open(os.path.join(REPO_ROOT, path)) as handle:
        return [line for line in handle.read().splitlines() if line.strip() and not line.startswith(("#", "-r"))]


def test_introspection_finds_the_collection_requirements(installed):
    _base, _tarball, collections = installed
    found = _introspect(collections)
    assert _names(found["python"]) == _names(_requirements("requirements.txt"))
    assert _names(found["system"]) == _names(_requirements("bindep.txt"))


def _bindep_runtime(platform):
    """Packages bindep installs in the final image on ``platform`` (dpkg or rpm): no profile but platforms."""
    packages = []
    for line in _requirements("bindep.txt"):
        name, _sep, rest = line.partition(" ")
        profiles = re.findall(r"\[(.*?)\]", rest)
        words = profiles[0].split() if profiles else []
        platforms = [w.split(":", 1)[1] for w in words if w.startswith("platform:")]
        others = [w for w in words if not w.startswith("platform:")]
        if (not platforms or platform in platforms) and not others:
            packages.append(name)
    return packages


def test_the_execution_environment_gets_the_libvirt_runtime_library():
    assert "libvirt-libs" in _bindep_runtime("rpm")
    assert "libvirt0" in _bindep_runtime("dpkg")
