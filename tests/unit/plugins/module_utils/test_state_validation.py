"""Validation of the declared state: the corpus of valid and invalid state files, and the parts it is made of.

Every file of ``tests/unit/fixtures/state/invalid/`` lists the errors it must produce in its header, in order, one
``# expect: PATH: MESSAGE`` each (long ones continue on ``#   `` lines); the test asserts exactly those, nothing
more and nothing less. Files of ``valid/`` must produce none. ``# compute_hosts: a, b`` gives the inventory's
compute hosts. To add a case, write the file and its expectations by hand: the expectations are the specification.
"""
import glob
import itertools
import json
import os
import random
import re

import pytest
import yaml

from ansible_collections.virtfleet.compute.plugins.module_utils import _state_validation as sv
from tests.conftest import REPO_ROOT

FIXTURES = os.path.join(REPO_ROOT, "tests", "unit", "fixtures", "state")
VALID = sorted(glob.glob(os.path.join(FIXTURES, "valid", "*.yml")))
INVALID = sorted(glob.glob(os.path.join(FIXTURES, "invalid", "*.yml")))


def load_case(path):
    """(state, compute_hosts, expected 'path: message' lines) of a corpus file."""
    with open(path) as handle:
        text = handle.read()
    expected = []
    compute_hosts = None
    for line in text.splitlines():
        if line.startswith("# expect: "):
            expected.append(line[len("# expect: "):])
        elif line.startswith("#   ") and expected:
            expected[-1] += " " + line[4:]
        elif line.startswith("# compute_hosts: "):
            compute_hosts = [h.strip() for h in line.split(":", 1)[1].split(",")]
    variables = yaml.safe_load(text) or {}
    unknown = [k for k in variables if not k.startswith("virtfleet_")]
    assert not unknown, "%s: only virtfleet_* variables belong in a state file: %s" % (path, unknown)
    state = dict((key[len("virtfleet_"):], value) for key, value in variables.items())
    return state, compute_hosts, expected


def test_the_corpus_is_there():
    assert len(VALID) >= 4 and len(INVALID) >= 10


@pytest.mark.parametrize("path", VALID, ids=os.path.basename)
def test_valid_state_files(path):
    state, compute_hosts, expected = load_case(path)
    assert expected == [], "a valid file expects no error"
    report = sv.validate_state(state, compute_hosts=compute_hosts)
    assert report.messages == []
    assert report.valid


@pytest.mark.parametrize("path", INVALID, ids=os.path.basename)
def test_invalid_state_files_report_exactly_their_errors(path):
    state, compute_hosts, expected = load_case(path)
    assert expected, "an invalid file must list the errors it expects"
    report = sv.validate_state(state, compute_hosts=compute_hosts)
    assert [e.path for e in report.errors] == [line.split(": ", 1)[0] for line in expected]
    assert report.messages == expected
    assert not report.valid


def test_the_demo_inventory_is_valid():
    with open(os.path.join(REPO_ROOT, "inventory", "local", "group_vars", "all.yml")) as handle:
        variables = yaml.safe_load(handle)
    report = sv.validate_state(sv.state_from_variables(variables), compute_hosts=["localhost"])
    assert report.messages == []
    assert report.summary["servers"] == len(variables["virtfleet_servers"])


def test_every_error_at_once_in_document_order():
    state = {
        "servers": [
            {"name": "b", "flavor": "nope", "image": "nope"},
            {"name": "a", "flavor": {"vcpus": 0, "ram_mb": 64, "disk_gb": 1}, "image": "img"},
        ],
        "images": [{"name": "img", "src": "/x"}],
        "flavors": [{"name": "f", "vcpus": 1, "ram_mb": 64}],
    }
    report = sv.validate_state(state)
    assert [e.path for e in report.errors] == [
        "flavors[0].disk_gb", "servers[0].flavor", "servers[0].image", "servers[1].flavor.vcpus"]


def test_warnings_when_no_host_is_known():
    state = {"images": [{"name": "i", "src": "/x"}], "server_groups": [{"name": "g", "policy": "anti-affinity"}],
             "servers": [{"name": n, "flavor": {"vcpus": 1, "ram_mb": 64, "disk_gb": 1}, "image": "i",
                          "server_group": "g", "host": "anywhere"} for n in ("a", "b")]}
    report = sv.validate_state(state)
    # Pinned to one host: an error whatever the host list; the capacity is not checked without one.
    assert report.messages == ["servers[1].host: server group 'g' (anti-affinity) allows 1 server per host, and "
                               "servers[0] is also on anywhere"]
    assert report.warnings == ["server_groups[0]: no compute host list is known (give compute_hosts or declare "
                               "virtfleet_hosts), so whether anti-affinity group 'g' can be placed was not checked"]


def test_a_server_pinned_to_a_disabled_host_warns():
    state = {"images": [{"name": "i", "src": "/x"}], "hosts": [{"name": "h1", "enabled": False}],
             "servers": [{"name": "a", "flavor": {"vcpus": 1, "ram_mb": 64, "disk_gb": 1}, "image": "i",
                          "host": "h1"}]}
    report = sv.validate_state(state)
    assert report.valid
    assert report.warnings == ["servers[0].host: h1 is disabled; a new server cannot be placed there (an existing "
                               "one stays)"]


def test_check_state_raises_with_every_error():
    with pytest.raises(sv.StateValidationError) as failed:
        sv.check_state({"servers": [{"name": "x"}, {"name": "x", "state": "absent"}]})
    assert [e.path for e in failed.value.errors] == ["servers[0].flavor", "servers[0].image", "servers[1].name"]
    assert str(failed.value).startswith("3 errors in the declared state:\nservers[0].flavor: is required")


def test_a_kind_left_empty_and_unknown_variables():
    state = sv.state_from_variables({"virtfleet_servers": None, "virtfleet_ssh_key": "/k", "other": 1})
    assert state == dict((kind, []) for kind in sv.KINDS)
    assert sv.validate_state({"servers": None}).valid
    report = sv.validate_state({"server": []})
    assert report.messages == ["server: unknown field (did you mean 'servers'?)"]


@pytest.mark.parametrize("parts, text", [
    (["servers", 3, "flavor"], "servers[3].flavor"),
    (["servers", 0, "networks", 1, "fixed_ip"], "servers[0].networks[1].fixed_ip"),
    (["flavors", 0, "extra_specs", "hw:cpu_policy"], "flavors[0].extra_specs.hw:cpu_policy"),
    (["servers", 0, "metadata", "a.b"], 'servers[0].metadata["a.b"]'),
    (["servers", 0, "metadata", 'say "hi"'], 'servers[0].metadata["say \\"hi\\""]'),
    ([], ""),
])
def test_paths_format_and_parse_back(parts, text):
    assert sv.format_path(parts) == text
    assert sv.parse_path(text) == parts


def _brute_force(classes, per_host):
    """The largest number of servers placeable, by trying every assignment (tiny cases only)."""
    servers = [eligible for eligible, count in classes.items() for _copy in range(count)]
    best = 0
    for size in range(len(servers), 0, -1):
        for subset in itertools.combinations(range(len(servers)), size):
            for choice in itertools.product(*[sorted(servers[i]) or [None] for i in subset]):
                if None in choice:
                    continue
                if all(choice.count(h) <= per_host for h in set(choice)):
                    return size
    return best


@pytest.mark.parametrize("seed", range(40))
def test_group_capacity_is_a_maximum_matching(seed):
    rng = random.Random(seed)
    hosts = ["h%d" % i for i in range(rng.randint(1, 4))]
    classes = {}
    for _class in range(rng.randint(1, 4)):
        eligible = frozenset(h for h in hosts if rng.random() < 0.5)
        classes[eligible] = classes.get(eligible, 0) + rng.randint(1, 2)
    per_host = rng.randint(1, 2)
    assert sv._max_placement(classes, per_host) == _brute_force(classes, per_host)


def test_group_capacity_moves_earlier_placements_to_make_room():
    # Greedy would put the first server (eligible on a and b) on a, and the second (only a) would not fit.
    classes = {frozenset(["a", "b"]): 1, frozenset(["a"]): 1}
    assert sv._max_placement(classes, 1) == 2


def test_large_groups_are_cheap():
    import time

    started = time.monotonic()
    classes = {frozenset("h%d" % i for i in range(500)): 800, frozenset(["h1"]): 1, frozenset(["x"]): 1}
    assert sv._max_placement(classes, 1) == 501
    assert time.monotonic() - started < 2.0


# -- the schemas ----------------------------------------------------------------------------------------------------

def _schemas():
    return sv.load_schemas()


def test_schemas_are_valid_draft_2020_12_with_consistent_ids():
    import jsonschema

    for key, schema in _schemas().items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"].endswith("/" + sv.SCHEMA_FILES[key])
    assert sorted(_schemas()["cloud"]["properties"]) == sorted(sv.KINDS)


def _walk_properties(schema, where):
    for name, sub in (schema.get("properties") or {}).items():
        yield "%s.%s" % (where, name), sub
        yield from _walk_properties(sub, "%s.%s" % (where, name))
        if isinstance(sub.get("items"), dict):
            yield from _walk_properties(sub["items"], "%s.%s[]" % (where, name))
    for key in ("$defs",):
        for name, sub in (schema.get(key) or {}).items():
            yield from _walk_properties(sub, "%s.%s" % (where, name))


def test_every_field_is_described_for_the_reference():
    missing = []
    for key, schema in _schemas().items():
        if key == "common":
            continue
        assert schema.get("title") and schema.get("description"), key
        for where, sub in _walk_properties(schema, key):
            if isinstance(sub, dict) and "description" not in sub and "x-errors" not in sub:
                missing.append(where)
    assert missing == []


def test_every_schema_file_is_loaded():
    on_disk = sorted(os.path.basename(p) for p in glob.glob(os.path.join(sv.schema_dir(), "*.json")))
    assert on_disk == sorted(sv.SCHEMA_FILES.values())
    for path in glob.glob(os.path.join(sv.schema_dir(), "*.json")):
        with open(path) as handle:
            json.load(handle)


def test_custom_messages_name_a_keyword_of_their_schema():
    """An x-errors entry only works for a keyword the same schema node uses."""
    def walk(node, where):
        if isinstance(node, dict):
            for keyword in node.get("x-errors") or {}:
                assert keyword in node, "%s: x-errors.%s without %s" % (where, keyword, keyword)
            for key, value in node.items():
                walk(value, "%s/%s" % (where, key))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, "%s/%d" % (where, index))

    for key, schema in _schemas().items():
        walk(schema, key)


def test_server_schema_covers_the_server_module_options():
    """Every option of the server module is a field of a declared server (the schema is what playbooks accept)."""
    from ansible_collections.virtfleet.compute.plugins.module_utils._server_batch import ITEM_OPTIONS

    fields = set(_schemas()["servers"]["properties"])
    assert set(ITEM_OPTIONS) == fields
    nic = set(_schemas()["servers"]["$defs"]["nic"]["properties"])
    assert set(ITEM_OPTIONS["networks"]["options"]) <= nic


@pytest.mark.parametrize("path", INVALID, ids=os.path.basename)
def test_messages_never_show_a_regular_expression(path):
    state, compute_hosts, _expected = load_case(path)
    report = sv.validate_state(state, compute_hosts=compute_hosts)
    assert not [m for m in report.messages if re.search(r"does not match|\^\[|\]\{", m)]


def test_the_lab_inventory_is_valid_with_what_the_inventory_knows_of_its_hosts():
    """inventory/lab declares no host records: zones come from the inventory plugin (virtfleet_host)."""
    with open(os.path.join(REPO_ROOT, "inventory", "lab", "group_vars", "all.yml")) as handle:
        variables = yaml.safe_load(handle)
    state = sv.state_from_variables(variables)
    hosts = ["lab-1", "lab-2", "lab-3"]
    facts = {"lab-1": {"availability_zone": "az-1", "up": True}, "lab-2": {"availability_zone": "az-1"},
             "lab-3": {"availability_zone": "az-2", "up": False, "error": "libvirtd did not answer"}}
    assert sv.validate_state(state, compute_hosts=hosts, host_facts=facts).messages == []
    # Without them every host is in zone nova, and a server asking for az-2 has nowhere to go.
    assert sv.validate_state(state, compute_hosts=hosts).messages == [
        "servers[5].availability_zone: no compute host is in availability zone 'az-2' (zones: nova)"]


def test_declared_host_records_win_over_the_inventory():
    state = {"images": [{"name": "i", "src": "/x"}],
             "server_groups": [{"name": "g", "policy": "anti-affinity"}],
             "hosts": [{"name": "h1", "enabled": True}, {"name": "h2", "availability_zone": "b"}],
             "servers": [{"name": n, "flavor": {"vcpus": 1, "ram_mb": 64, "disk_gb": 1}, "image": "i",
                          "server_group": "g", "availability_zone": "a"} for n in ("s1", "s2")]}
    facts = {"h1": {"enabled": False, "availability_zone": "a"}, "h2": {"availability_zone": "a"}}
    # h1: enabled by its declared record, in zone a as the inventory says; h2: moved to zone b by its record.
    assert sv.validate_state(state, compute_hosts=["h1", "h2"], host_facts=facts).messages == [
        "server_groups[0]: anti-affinity group 'g' has 2 servers, but its eligible hosts can take only 1 "
        "(max_server_per_host 1; eligible: h1)"]
