"""Property test: validating any document, however malformed, gives errors with paths and never raises.

Documents are built from the schemas' own property names (so they reach deep into the checks, past "unknown key")
with values of every JSON type in every place: a number where a list is expected, a list where a name is, etc.
"""
import copy
import glob
import json
import os

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.virtfleet.compute.plugins.module_utils import _state_validation as sv
from tests.conftest import REPO_ROOT


def _property_names():
    names = set()

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "properties" and isinstance(value, dict):
                    names.update(value)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    directory = os.path.join(REPO_ROOT, "schemas")
    for name in os.listdir(directory):
        with open(os.path.join(directory, name)) as handle:
            walk(json.load(handle))
    return sorted(names)


KEYS = _property_names()
# Values that mean something to the checks: names, addresses, subnets, MACs, states, policies.
WORDS = ["m1.tiny", "debian", "net1", "g1", "kvm-01", "absent", "running", "bridge", "nat", "affinity",
         "anti-affinity", "soft-affinity", "soft-anti-affinity", "10.0.0.0/24", "10.0.0.5", "10.0.0.1",
         "10.0.0.255", "10.0.0.0", "52:54:00:00:00:01", "00:00:00:00:00:00", "nova", "trait:HW_CPU_X86_AVX2",
         "required", "forbidden", "", "\x00", "../x", "0", "1.5"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2 ** 70, max_value=2 ** 70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(WORDS), st.text(max_size=8))
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=6))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=12)
items = st.one_of(st.dictionaries(keys, values, max_size=8), values)
kinds = st.one_of(st.lists(items, max_size=4), values)
states = st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(sv.KINDS), st.text(max_size=5)), kinds, max_size=6),
    values)
hosts = st.one_of(st.none(), st.lists(st.sampled_from(["kvm-01", "kvm-02", ""]), max_size=3))


def assert_well_formed(report):
    for error in report.errors:
        assert isinstance(error.path, str) and isinstance(error.message, str) and error.message
    assert isinstance(report.summary, dict)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(state=states, compute_hosts=hosts)
def test_validation_never_raises(state, compute_hosts):
    assert_well_formed(sv.validate_state(state, compute_hosts=compute_hosts))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(state=st.dictionaries(st.sampled_from(sv.KINDS),
                             st.lists(st.dictionaries(keys, values, max_size=8), max_size=4), max_size=6),
       compute_hosts=hosts)
def test_cross_checks_never_raise_on_items_the_schema_rejects(state, compute_hosts):
    # The cross-reference pass runs even when the schema pass found errors (so every error is reported at once):
    # it must cope with any value in any field.
    errors, _warnings = sv._CrossCheck(sv.normalize_state(state), compute_hosts).run()
    for error in errors:
        assert error.path and error.message


def _valid_states():
    states = []
    for path in sorted(glob.glob(os.path.join(REPO_ROOT, "tests", "unit", "fixtures", "state", "valid", "*.yml"))):
        with open(path) as handle:
            variables = yaml.safe_load(handle) or {}
        states.append(dict((key[len("virtfleet_"):], value) for key, value in variables.items()))
    return states


VALID_STATES = _valid_states()


def _places(node, path=()):
    """Every (container path, key) in a document: the places a mutation can hit."""
    places = []
    if isinstance(node, dict):
        for key, value in node.items():
            places.append((path, key))
            places.extend(_places(value, path + (key,)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            places.append((path, index))
            places.extend(_places(value, path + (index,)))
    return places


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), compute_hosts=hosts)
def test_valid_documents_with_any_field_broken_never_raise(data, compute_hosts):
    # Start from a valid document, so every check runs, and put a wrong value somewhere in it: one to three times.
    state = copy.deepcopy(data.draw(st.sampled_from(VALID_STATES)))
    for _round in range(data.draw(st.integers(min_value=1, max_value=3))):
        places = _places(state)
        if not places:
            break
        path, key = data.draw(st.sampled_from(places))
        container = state
        for step in path:
            container = container[step]
        container[key] = data.draw(values)
    report = sv.validate_state(state, compute_hosts=compute_hosts)
    assert_well_formed(report)


def test_a_number_or_boolean_as_reserved_hosts_is_an_error_with_its_path():
    for bad in (3, True):
        state = {"networks": [{"name": "net1", "cidr": "10.0.0.0/24", "hosts": bad}]}
        report = sv.validate_state(state)
        assert "networks[0].hosts" in [e.path for e in report.errors], report.errors


WRONG_VALUES = [3, True, "x", [1], {"a": 1}]


def test_every_field_of_the_valid_documents_with_every_wrong_type():
    # The exhaustive complement of the property tests: each place of each valid document, one at a time, given a
    # value of each JSON type (the crash on networks[].hosts: 3 was one such place).
    # The richest valid document only (the others are subsets of it): the sweep costs a validation per place.
    richest = max(VALID_STATES, key=lambda state: len(_places(state)))
    crashes = []
    for number, original in enumerate([richest]):
        for path, key in _places(original):
            for wrong in WRONG_VALUES:
                state = copy.deepcopy(original)
                container = state
                for step in path:
                    container = container[step]
                container[key] = copy.deepcopy(wrong)
                try:
                    assert_well_formed(sv.validate_state(state))
                except Exception as exc:  # noqa: BLE001 - collected, so one run lists every crash
                    crashes.append("%d %s=%r: %s: %s" % (number, sv.format_path(list(path) + [key]), wrong,
                                                         type(exc).__name__, exc))
    assert crashes == []
