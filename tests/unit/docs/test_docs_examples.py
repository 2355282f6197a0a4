"""The examples of the user guides are tested, so they cannot rot.

Every YAML or JSON block of the guides below carries a marker in the HTML comment before it, saying how it is
checked:

``<!-- check: state valid [name=NAME] [base=NAME] [compute_hosts=a,b] -->``
    The block is inventory variables (``virtfleet_*``); validated, it must have no error. ``base=NAME`` first takes
    the state of the block named NAME and appends this block's entries to its lists.
``<!-- check: state invalid [base=NAME] [compute_hosts=a,b] -->``
    Same, but it must fail with exactly the lines of the ``text`` block that follows it.
``<!-- check: playbook -->``
    ``ansible-playbook --syntax-check`` passes.
``<!-- check: survey playbook=NAME -->``
    An AWX survey spec whose every variable is read by ``playbooks/NAME.yml``.
``<!-- check: ee-definition -->``
    An ansible-builder (v3) execution environment definition; tests/integration/test_distribution.py also builds
    its context with ``ansible-builder create``.
``<!-- check: yaml -->``
    Parses as YAML (one or more documents).

docs/reference-state.md is generated from the schemas and must be current.
"""
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from ansible_collections.virtfleet.compute.plugins.module_utils import _state_validation as sv
from tests.conftest import COLLECTIONS_PATH, REPO_ROOT

GUIDES = ("docs/declaring-servers.md", "docs/awx.md", "docs/adding-hosts.md", "docs/maintenance.md")
_BLOCK = re.compile(r"(?:<!-- check: (?P<marker>[^>]*?) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)
SURVEY_TYPES = ("text", "textarea", "password", "integer", "float", "multiplechoice", "multiselect")


def blocks(path):
    """(marker words dict, language, body, index) of every fenced block of a guide, in order."""
    with open(os.path.join(REPO_ROOT, path)) as handle:
        text = handle.read()
    out = []
    for index, match in enumerate(_BLOCK.finditer(text)):
        marker = None
        if match.group("marker"):
            words = match.group("marker").split()
            marker = {"kind": words[0], "flags": [w for w in words[1:] if "=" not in w]}
            marker.update(w.split("=", 1) for w in words[1:] if "=" in w)
        out.append((marker, match.group("lang"), match.group("body"), index))
    return out


def _all_blocks():
    for path in GUIDES:
        for marker, lang, body, index in blocks(path):
            yield pytest.param(path, marker, lang, body, index, id="%s#%d" % (os.path.basename(path), index))


def test_every_example_is_checked():
    unchecked = []
    for path in GUIDES:
        for marker, lang, _body, index in blocks(path):
            if lang in ("yaml", "json") and marker is None:
                unchecked.append("%s block %d" % (path, index))
    assert unchecked == []


def _state_of(variables):
    assert all(k.startswith("virtfleet_") for k in variables), sorted(variables)
    return dict((k[len("virtfleet_"):], v) for k, v in variables.items())


def _named_states():
    named = {}
    for path in GUIDES:
        for marker, _lang, body, _index in blocks(path):
            if marker and marker["kind"] == "state" and "name" in marker:
                named[marker["name"]] = _state_of(yaml.safe_load(body))
    return named


def _hosts(marker):
    return marker["compute_hosts"].split(",") if "compute_hosts" in marker else None


STATE_BLOCKS = [p for p in _all_blocks() if p.values[1] and p.values[1]["kind"] == "state"]


@pytest.mark.parametrize("path, marker, lang, body, index", STATE_BLOCKS)
def test_state_examples(path, marker, lang, body, index):
    state = _state_of(yaml.safe_load(body))
    if "base" in marker:
        merged = dict((k, list(v)) for k, v in _named_states()[marker["base"]].items())
        for kind, entries in state.items():
            merged[kind] = merged.get(kind, []) + entries
        state = merged
    report = sv.validate_state(state, compute_hosts=_hosts(marker))
    if "valid" in marker["flags"]:
        assert report.messages == []
        return
    assert "invalid" in marker["flags"]
    following = blocks(path)[index + 1]
    assert following[1] == "text", "an invalid example is followed by its exact output"
    assert report.messages == following[2].strip().splitlines()


@pytest.mark.parametrize("path, marker, lang, body, index",
                         [p for p in _all_blocks() if p.values[1] and p.values[1]["kind"] == "yaml"])
def test_yaml_examples_parse(path, marker, lang, body, index):
    assert [doc for doc in yaml.safe_load_all(body) if doc is not None]


@pytest.mark.parametrize("path, marker, lang, body, index",
                         [p for p in _all_blocks() if p.values[1] and p.values[1]["kind"] == "playbook"])
def test_playbook_examples_pass_syntax_check(path, marker, lang, body, index, tmp_path):
    playbook = tmp_path / "example.yml"
    playbook.write_text(body)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS_PATH, ANSIBLE_NOCOLOR="1")
    env.pop("ANSIBLE_CONFIG", None)
    checked = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "--syntax-check",
                              "-i", "localhost,", str(playbook)], capture_output=True, text=True, env=env,
                             cwd=str(tmp_path), check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("path, marker, lang, body, index",
                         [p for p in _all_blocks() if p.values[1] and p.values[1]["kind"] == "survey"])
def test_surveys_ask_what_their_playbook_reads(path, marker, lang, body, index):
    survey = json.loads(body)
    assert survey["name"] and survey["description"] and survey["spec"]
    with open(os.path.join(REPO_ROOT, "playbooks", marker["playbook"] + ".yml")) as handle:
        playbook = handle.read()
    variables = []
    for question in survey["spec"]:
        assert set(question) >= {"question_name", "question_description", "variable", "type", "required"}
        assert question["type"] in SURVEY_TYPES
        assert re.match(r"^[a-z_][a-z0-9_]*$", question["variable"])
        assert re.search(r"\b%s\b" % question["variable"], playbook), \
            "%s does not read %s" % (marker["playbook"], question["variable"])
        if question["type"] in ("multiplechoice", "multiselect"):
            assert question["choices"] and question["default"] in question["choices"]
        if question["type"] in ("text", "textarea", "password") and question["default"]:
            assert question["min"] <= len(question["default"]) <= question["max"]
        if question["type"] in ("integer", "float"):
            assert question["min"] <= question["default"] <= question["max"]
        variables.append(question["variable"])
    assert len(set(variables)) == len(variables)


def test_the_server_action_survey_offers_the_actions_the_playbook_accepts():
    (survey,) = [json.loads(b) for m, _l, b, _i in blocks("docs/awx.md")
                 if m and m["kind"] == "survey" and m["playbook"] == "server_action"]
    choices = next(q["choices"] for q in survey["spec"] if q["variable"] == "server_action")
    with open(os.path.join(REPO_ROOT, "playbooks", "server_action.yml")) as handle:
        plays = yaml.safe_load(handle)
    assert plays[0]["vars"]["__action_choices"] == choices


def test_ee_definition_is_a_valid_ansible_builder_v3_file():
    (definition,) = [yaml.safe_load(b) for m, _l, b, _i in blocks("docs/awx.md") if m and m["kind"] == "ee-definition"]
    assert definition["version"] == 3
    schema = pytest.importorskip("ansible_builder.ee_schema")
    schema.validate_schema(definition)


def test_reference_is_generated_from_the_current_schemas():
    path = os.path.join(REPO_ROOT, "scripts", "state_reference.py")
    spec = importlib.util.spec_from_file_location("state_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with open(module.OUTPUT) as handle:
        assert handle.read() == module.render(), "run python scripts/state_reference.py"
