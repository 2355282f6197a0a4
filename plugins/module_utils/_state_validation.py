# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validation of the declared cloud state, before anything changes (DESIGN.md principle 3).

The state is a dict of kinds (``flavors``, ``images``, ``networks``, ``server_groups``, ``servers``, ``hosts``), each
a list, as the inventory variables ``virtfleet_<kind>`` hold them. ``validate_state()`` checks it in two passes and
reports every error at once, each with its path (``servers[3].flavor: 'm1.hug' is not a defined flavor``):

1. the JSON Schemas of ``schemas/`` (the single source of what the playbooks accept; their descriptions are the
   reference documentation), with jsonschema's messages rewritten into ones a person can act on;
2. cross-references no schema can express: names unique per kind, servers naming declared flavors, images,
   networks, server groups and hosts, fixed IPs inside their network's subnet and used once (netaddr), and server
   group policies that the given hosts can satisfy at all.

Pure Python, no libvirt: it runs on the controller (the ``validate_state`` action) and in a Git CI job.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import difflib
import json
import os
import re

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import MissingLibraryError, VirtfleetError

KINDS = ("flavors", "images", "networks", "server_groups", "servers", "hosts")
# Inventory variable of each kind: the names site.yml and validate.yml read.
VARIABLES = dict((kind, "virtfleet_" + kind) for kind in KINDS)
SCHEMA_FILES = {
    "cloud": "cloud.schema.json",
    "flavors": "flavor.schema.json",
    "images": "image.schema.json",
    "networks": "network.schema.json",
    "server_groups": "server_group.schema.json",
    "servers": "server.schema.json",
    "hosts": "host.schema.json",
    "common": "common.schema.json",
}
DEFAULT_AZ = "nova"
_TRAIT_SCOPE = "trait:"
_PLAIN_KEY = re.compile(r"^[^\s.\[\]\"']+$")
_PATH_TOKEN = re.compile(r"\[(\d+)\]|\[\"((?:[^\"\\]|\\.)*)\"\]|\.?([^.\[]+)")
_TYPE_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "object": "a dict",
    "array": "a list",
    "null": "null",
}
_SCHEMA_CACHE = {}


class StateError:
    """One error of the declared state: where (``path``) and what is wrong (``message``)."""

    __slots__ = ("path", "message")

    def __init__(self, path, message):
        self.path = path
        self.message = message

    def __str__(self):
        return "%s: %s" % (self.path or "(state)", self.message)

    def __repr__(self):
        return "StateError(%r, %r)" % (self.path, self.message)

    def __eq__(self, other):
        return isinstance(other, StateError) and (self.path, self.message) == (other.path, other.message)

    def __hash__(self):
        return hash((self.path, self.message))

    def to_dict(self):
        return {"path": self.path, "message": self.message}


class Report:
    """The outcome of a validation: errors (sorted in document order), warnings and a summary of what is declared."""

    def __init__(self, errors, warnings, summary):
        self.errors = errors
        self.warnings = warnings
        self.summary = summary

    @property
    def valid(self):
        return not self.errors

    @property
    def messages(self):
        return [str(error) for error in self.errors]

    def to_result(self):
        return {
            "valid": self.valid,
            "errors": [error.to_dict() for error in self.errors],
            "messages": self.messages,
            "error_count": len(self.errors),
            "warnings": list(self.warnings),
            "summary": self.summary,
        }


class StateValidationError(VirtfleetError):
    """The declared state is invalid; ``errors`` holds every StateError."""

    def __init__(self, errors):
        self.errors = errors
        super(StateValidationError, self).__init__(
            "%d error%s in the declared state:\n%s" % (len(errors), "" if len(errors) == 1 else "s",
                                                       "\n".join(str(e) for e in errors)))


# -- paths ------------------------------------------------------------------------------------------------------------

def format_path(parts):
    """``("servers", 3, "networks", 0, "fixed_ip")`` -> ``servers[3].networks[0].fixed_ip``."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += "[%d]" % part
        elif _PLAIN_KEY.match(part):
            text += ("." if text else "") + part
        else:
            text += "[%s]" % json.dumps(part)
    return text


def parse_path(text):
    """The inverse of format_path, for sorting: ints for list indexes, strings for keys."""
    parts = []
    for index, quoted, plain in _PATH_TOKEN.findall(text or ""):
        if index:
            parts.append(int(index))
        elif quoted:
            parts.append(json.loads('"%s"' % quoted))
        else:
            parts.append(plain)
    return parts


def _sort_key(error):
    parts = parse_path(error.path)
    key = []
    for position, part in enumerate(parts):
        if position == 0 and part in KINDS:
            key.append((0, KINDS.index(part), ""))
        elif isinstance(part, int):
            key.append((1, part, ""))
        else:
            key.append((2, 0, part))
    return key


# -- schemas ----------------------------------------------------------------------------------------------------------

def schema_dir():
    """``schemas/`` of the collection this file belongs to (a checkout or an installed collection alike)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "..", "schemas"))


def load_schemas(directory=None):
    """Every schema of ``directory`` (default: the collection's), as ``{key: schema}`` with the keys of SCHEMA_FILES."""
    directory = directory or schema_dir()
    schemas = {}
    for key, filename in SCHEMA_FILES.items():
        with open(os.path.join(directory, filename)) as handle:
            schemas[key] = json.load(handle)
    return schemas


def _import_jsonschema():
    try:
        import jsonschema
        import referencing
    except ImportError:
        raise MissingLibraryError("validating the declared state needs the Python libraries jsonschema (>= 4.18) and "
                                  "referencing on the controller: pip install 'jsonschema>=4.18'")
    return jsonschema, referencing


def _import_netaddr():
    try:
        import netaddr
    except ImportError:
        raise MissingLibraryError("checking fixed IPs and subnets needs the Python library netaddr on the controller: "
                                  "pip install netaddr")
    return netaddr


class _Schemas:
    """The loaded schemas, a validator of the cloud schema, and $ref resolution for message rewriting."""

    def __init__(self, schemas):
        jsonschema, referencing = _import_jsonschema()
        self.by_id = {}
        resources = []
        for schema in schemas.values():
            self.by_id[schema["$id"]] = schema
            resources.append((schema["$id"], referencing.Resource.from_contents(schema)))
        registry = referencing.Registry().with_resources(resources)
        cls = jsonschema.Draft202012Validator
        for schema in schemas.values():
            cls.check_schema(schema)
        self.cloud = schemas["cloud"]
        self.base_of = {}
        for schema in schemas.values():
            _index_nodes(schema, schema["$id"], self.base_of)
        self.validator = cls(self.cloud, registry=registry, format_checker=cls.FORMAT_CHECKER)

    def resolve(self, ref, base):
        """``(schema, base id)`` a $ref points at, relative to the schema with id ``base``."""
        where, _sep, fragment = ref.partition("#")
        if where:
            base = _join_uri(base, where)
        node = self.by_id[base]
        for token in [t for t in fragment.split("/") if t]:
            node = node[token.replace("~1", "/").replace("~0", "~")]
        return node, base

    def known_properties(self, schema, base, seen=None):
        """Property names a schema declares, following $ref, allOf/anyOf/oneOf and if/then/else."""
        seen = seen if seen is not None else set()
        if not isinstance(schema, dict) or id(schema) in seen:
            return set()
        seen.add(id(schema))
        names = set(schema.get("properties") or {})
        if "$ref" in schema:
            target, target_base = self.resolve(schema["$ref"], base)
            names |= self.known_properties(target, target_base, seen)
        for keyword in ("allOf", "anyOf", "oneOf"):
            for sub in schema.get(keyword) or []:
                names |= self.known_properties(sub, base, seen)
        for keyword in ("then", "else"):
            names |= self.known_properties(schema.get(keyword), base, seen)
        return names


def _index_nodes(node, base, index):
    if isinstance(node, dict):
        index[id(node)] = base
        children = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return
    for child in children:
        _index_nodes(child, base, index)


def _join_uri(base, relative):
    if "://" in relative:
        return relative
    return base.rsplit("/", 1)[0] + "/" + relative


def _schemas(schemas=None):
    if schemas is not None:
        return _Schemas(schemas)
    directory = schema_dir()
    cached = _SCHEMA_CACHE.get(directory)
    if cached is None:
        cached = _SCHEMA_CACHE[directory] = _Schemas(load_schemas(directory))
    return cached


# -- pass 1: the schema, with readable messages ------------------------------------------------------------------------

def _describe(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a dict"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _either(words):
    if len(words) <= 2:
        return " or ".join(words)
    return "%s or %s" % (", ".join(words[:-1]), words[-1])


def _suggest(word, choices):
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, [c for c in choices if isinstance(c, str)], n=1, cutoff=0.6)
    return " (did you mean %r?)" % close[0] if close else ""


def _custom(error, keyword):
    messages = error.schema.get("x-errors") if isinstance(error.schema, dict) else None
    return (messages or {}).get(keyword)


def _branches(error):
    """The oneOf/anyOf branches whose type fits the value, each with its errors."""
    groups = {}
    for sub in error.context:
        groups.setdefault(sub.relative_schema_path[0], []).append(sub)
    viable = []
    for index in sorted(groups):
        errors = groups[index]
        if any(e.validator == "type" and not e.relative_path for e in errors):
            continue
        viable.append(errors)
    return viable


class _SchemaPass:
    def __init__(self, schemas):
        self.schemas = schemas
        self.errors = []

    def run(self, state):
        for error in self.schemas.validator.iter_errors(state):
            self._convert(error)
        return self.errors

    def _add(self, parts, message):
        self.errors.append(StateError(format_path(parts), message))

    def _convert(self, error):
        path = list(error.absolute_path)
        keyword = error.validator
        instance = error.instance
        custom = _custom(error, keyword)
        if keyword in ("oneOf", "anyOf"):
            # Exactly one branch fits the value's type: its own errors say more than "matches no branch".
            viable = _branches(error) if error.context else []
            if len(viable) == 1:
                for sub in viable[0]:
                    self._convert(sub)
                return
            if custom:
                self._add(path, custom)
            else:
                titles = [s.get("title", "?") for s in error.validator_value if isinstance(s, dict)]
                self._add(path, "must be %s" % " or ".join(titles))
            return
        if keyword == "required":
            for name in error.validator_value:
                if isinstance(instance, dict) and name not in instance and error.message == "%r is a required " \
                        "property" % name:
                    self._add(path + [name], custom or "is required")
            return
        if keyword == "dependentRequired":
            for trigger, needed in error.validator_value.items():
                for name in needed:
                    if error.message == "%r is a dependency of %r" % (name, trigger):
                        self._add(path + [name], custom or "is required with %s" % trigger)
            return
        if keyword in ("additionalProperties", "unevaluatedProperties"):
            base = self._base_of(error)
            known = self.schemas.known_properties(error.schema, base) if keyword == "unevaluatedProperties" \
                else set(error.schema.get("properties") or {})
            patterns = [re.compile(p) for p in error.schema.get("patternProperties") or {}]
            for key in instance:
                if key in known or any(p.search(key) for p in patterns):
                    continue
                hint = _suggest(key, known)
                if not hint:
                    hint = "; known fields: %s" % ", ".join(sorted(known))
                self._add(path + [key], "unknown field%s" % hint)
            return
        if "propertyNames" in error.absolute_schema_path:
            self._add(path + [instance] if isinstance(instance, str) else path,
                      custom or "is not an allowed key (%s)" % error.message)
            return
        self._add(path, custom or self._message(error))

    def _base_of(self, error):
        # The $id of the schema document an error's subschema belongs to (jsonschema's schema paths skip $refs).
        return self.schemas.base_of.get(id(error.schema), self.schemas.cloud["$id"])

    @staticmethod
    def _message(error):
        keyword = error.validator
        value = error.validator_value
        instance = error.instance
        if keyword == "type":
            wanted = value if isinstance(value, list) else [value]
            return "must be %s, got %s" % (_either([_TYPE_WORDS.get(t, t) for t in wanted]), _describe(instance))
        if keyword == "enum":
            choices = ", ".join(str(v) for v in value)
            return "must be one of %s, got %s%s" % (choices, _describe(instance), _suggest(instance, value))
        if keyword == "const":
            return "must be %s" % _describe(value)
        if keyword == "minimum":
            return "must be at least %s, got %s" % (value, _describe(instance))
        if keyword == "maximum":
            return "must be at most %s, got %s" % (value, _describe(instance))
        if keyword == "exclusiveMinimum":
            return "must be greater than %s, got %s" % (value, _describe(instance))
        if keyword == "exclusiveMaximum":
            return "must be less than %s, got %s" % (value, _describe(instance))
        if keyword == "minLength":
            return "must not be empty" if value == 1 else "must be at least %d characters long" % value
        if keyword == "maxLength":
            return "is %d characters long, at most %d are allowed" % (len(instance), value)
        if keyword == "pattern":
            return "%s does not match %s" % (_describe(instance), value)
        if keyword == "format":
            return "%s is not %s" % (_describe(instance), "an IPv4 address" if value == "ipv4" else "a valid " + value)
        if keyword == "uniqueItems":
            seen = []
            for item in instance:
                if item in seen:
                    return "lists %s twice" % _describe(item)
                seen.append(item)
            return "has duplicate items"
        if keyword == "not":
            return "is not allowed here"
        if keyword == "minItems":
            return "must have at least %d item%s" % (value, "" if value == 1 else "s")
        if keyword == "maxItems":
            return "must have at most %d item%s" % (value, "" if value == 1 else "s")
        if keyword is None or keyword is False:
            return "is not allowed here"
        return error.message


# -- pass 2: cross-references ----------------------------------------------------------------------------------------

def _items(state, kind):
    """(index, item) of the well-formed entries (dicts) of a kind."""
    value = state.get(kind)
    if not isinstance(value, list):
        return []
    return [(index, item) for index, item in enumerate(value) if isinstance(item, dict)]


def _name(item):
    name = item.get("name")
    return name if isinstance(name, str) and name else None


def _text(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class _CrossCheck:
    def __init__(self, state, compute_hosts, host_facts=None):
        self.state = state
        self.host_facts = host_facts or {}
        self.errors = []
        self.warnings = []
        self.compute_hosts = list(compute_hosts) if compute_hosts else None
        self.declared = {}  # kind -> {name: (index, item)}, first declaration wins
        for kind in KINDS:
            self.declared[kind] = {}
            for index, item in _items(state, kind):
                name = _name(item)
                if name is None:
                    continue
                first = self.declared[kind].get(name)
                if first is not None:
                    self._add("%s[%d].name" % (kind, index), "%r is declared twice (first as %s[%d])"
                              % (name, kind, first[0]))
                else:
                    self.declared[kind][name] = (index, item)
        self.hosts = self._host_table()
        self.inline_groups = {}  # name -> (group, field) of the first inline copy
        self._eligible_cache = {}  # (zone, required traits, forbidden traits) -> eligible host names

    def _add(self, path, message):
        self.errors.append(StateError(path, message))

    def run(self):
        netaddr = _import_netaddr()
        self.subnets = {}
        self._check_hosts()
        self._check_flavors()
        self._check_networks(netaddr)
        self._check_servers(netaddr)
        self._check_groups()
        return self.errors, self.warnings

    # -- hosts --------------------------------------------------------------------------------------------------------

    def _host_table(self):
        """{host name: {enabled, reason, az, traits}} of the known compute hosts, or None when none is known."""
        names = self.compute_hosts
        if names is None:
            names = list(self.declared["hosts"]) or None
        if names is None:
            return None
        table = {}
        for name in names:
            table[name] = {"enabled": True, "reason": None, "az": DEFAULT_AZ, "traits": set()}
        # What the inventory knows of each host (its record as the libvirt inventory plugin read it), then the
        # declared records, which the converge writes and so win.
        records = [(name, facts) for name, facts in self.host_facts.items() if isinstance(facts, dict)]
        records += [(name, entry[1]) for name, entry in self.declared["hosts"].items()]
        for name, record in records:
            if name not in table:
                continue
            entry = table[name]
            if record.get("enabled") is True:
                entry["enabled"], entry["reason"] = True, None
            if record.get("enabled") is False:
                entry["enabled"] = False
                entry["reason"] = record.get("disabled_reason")
            if isinstance(record.get("availability_zone"), str):
                entry["az"] = record["availability_zone"]
            if isinstance(record.get("traits"), list):
                entry["traits"] = set(t for t in record["traits"] if isinstance(t, str))
        return table

    def _check_hosts(self):
        if self.compute_hosts is None:
            return
        for name, (index, _record) in self.declared["hosts"].items():
            if name not in self.compute_hosts:
                self._add("hosts[%d].name" % index, "%r is not a compute host of the inventory%s"
                          % (name, _suggest(name, self.compute_hosts)))

    # -- flavors ------------------------------------------------------------------------------------------------------

    def _check_flavors(self):
        for index, flavor in _items(self.state, "flavors"):
            self._extra_specs(flavor.get("extra_specs"), "flavors[%d].extra_specs" % index)
        for index, server in _items(self.state, "servers"):
            if isinstance(server.get("flavor"), dict):
                self._extra_specs(server["flavor"].get("extra_specs"), "servers[%d].flavor.extra_specs" % index)

    def _extra_specs(self, specs, field):
        # The flavor module's own rules for hw: and quota: keys: one source for what the domain XML can express.
        if not isinstance(specs, dict) or not all(isinstance(k, str) for k in specs) or not all(
                isinstance(v, (str, int, float)) for v in specs.values()):
            return  # the schema pass reported it
        from ansible_collections.virtfleet.compute.plugins.module_utils._flavor import validate_extra_specs

        try:
            validate_extra_specs(dict(specs), field=field)
        except VirtfleetError as exc:
            self._add(exc.field or field, exc.message)

    def flavor_of(self, server):
        flavor = server.get("flavor")
        if isinstance(flavor, dict):
            return flavor
        entry = self.declared["flavors"].get(flavor) if isinstance(flavor, str) else None
        return entry[1] if entry else None

    # -- networks -----------------------------------------------------------------------------------------------------

    def _check_networks(self, netaddr):
        for index, network in _items(self.state, "networks"):
            where = "networks[%d]" % index
            subnet = self._subnet(netaddr, network, where)
            if subnet is None:
                continue
            self.subnets[_name(network)] = subnet
            for key in ("dhcp_start", "dhcp_end"):
                address = self._address(netaddr, network.get(key))
                if address is not None:
                    self._in_subnet(address, subnet, "%s.%s" % (where, key), gateway_ok=True)
            start, end = (self._address(netaddr, network.get(k)) for k in ("dhcp_start", "dhcp_end"))
            if start is not None and end is not None and end < start:
                self._add(where + ".dhcp_end", "%s is before dhcp_start %s" % (end, start))
            seen = {}
            # Any value may be here (the schema pass reports a wrong type with its path): only a list is walked.
            reserved = network.get("hosts")
            for position, host in enumerate(reserved if isinstance(reserved, list) else []):
                if not isinstance(host, dict):
                    continue
                field = "%s.hosts[%d]" % (where, position)
                address = self._address(netaddr, host.get("ip"))
                if address is not None:
                    self._in_subnet(address, subnet, field + ".ip")
                for key, value in (("ip", address), ("mac", _mac(host.get("mac"))), ("name", host.get("name"))):
                    if value is None:
                        continue
                    other = seen.get((key, str(value)))
                    if other is not None:
                        self._add("%s.%s" % (field, key), "%s is also in %s" % (value, other))
                    else:
                        seen[(key, str(value))] = field
                if address is not None:
                    subnet["used"].setdefault(address, (field, _mac(host.get("mac"))))

    def _subnet(self, netaddr, network, where):
        cidr = network.get("cidr")
        if not isinstance(cidr, str) or network.get("mode") == "bridge":
            return None
        try:
            net = netaddr.IPNetwork(cidr, version=4)
        except (netaddr.AddrFormatError, ValueError, TypeError):
            self._add(where + ".cidr", "%r is not an IPv4 subnet" % cidr)
            return None
        if net.prefixlen > 30:
            self._add(where + ".cidr", "a /%d subnet leaves no address for guests; use /30 or larger" % net.prefixlen)
            return None
        if net.ip != net.network:
            self._add(where + ".cidr", "%s has host bits set; the subnet is %s" % (cidr, net.cidr))
            return None
        gateway = self._address(netaddr, network.get("gateway"))
        if gateway is None:
            gateway = net.network + 1
        else:
            self._in_subnet(gateway, {"net": net, "gateway": None, "name": _name(network)}, where + ".gateway")
        return {"net": net, "gateway": gateway, "name": _name(network), "dhcp": network.get("dhcp") is not False,
                "used": {}}

    @staticmethod
    def _address(netaddr, value):
        if not isinstance(value, str):
            return None
        try:
            return netaddr.IPAddress(value, version=4)
        except (netaddr.AddrFormatError, ValueError, TypeError):
            return None  # the schema pass reported it

    def _in_subnet(self, address, subnet, field, gateway_ok=False):
        net = subnet["net"]
        if address not in net:
            self._add(field, "%s is outside network %s (%s)" % (address, subnet["name"], net.cidr)
                      if subnet.get("name") else "%s is outside %s" % (address, net.cidr))
            return False
        if address == net.network:
            self._add(field, "%s is the network address of %s" % (address, net.cidr))
            return False
        if address == net.broadcast:
            self._add(field, "%s is the broadcast address of %s" % (address, net.cidr))
            return False
        if not gateway_ok and subnet.get("gateway") is not None and address == subnet["gateway"]:
            self._add(field, "%s is the gateway of network %s (the host's own address on it)"
                      % (address, subnet["name"]))
            return False
        return True

    # -- servers ------------------------------------------------------------------------------------------------------

    def _check_servers(self, netaddr):
        macs = {}
        for index, server in _items(self.state, "servers"):
            where = "servers[%d]" % index
            absent = server.get("state") == "absent"
            if not absent:
                self._reference(server.get("flavor"), "flavors", "flavor", where + ".flavor")
                self._reference(server.get("image"), "images", "image", where + ".image")
                self._reference(server.get("server_group"), "server_groups", "server group", where + ".server_group",
                                allow_absent=True)
                self._inline_group(server.get("server_group"), where + ".server_group")
            self._placement(server, where)
            self._hints(server, where)
            networks = server.get("networks")
            if not isinstance(networks, list):
                continue
            for position, nic in enumerate(networks):
                field = "%s.networks[%d]" % (where, position)
                if isinstance(nic, str):
                    nic = {"network": nic}
                    network_field = field
                elif isinstance(nic, dict):
                    network_field = field + ".network"
                else:
                    continue
                if not absent and isinstance(nic.get("network"), str):
                    self._reference(nic["network"], "networks", "network", network_field)
                mac = _mac(nic.get("mac"))
                if mac is not None and not absent:
                    other = macs.get(mac)
                    if other is not None:
                        self._add(field + ".mac", "%s is also the MAC of %s" % (mac, other))
                    else:
                        macs[mac] = field
                if not absent and isinstance(nic.get("fixed_ip"), str) and isinstance(nic.get("network"), str):
                    self._fixed_ip(netaddr, nic, mac, field + ".fixed_ip")

    def _reference(self, name, kind, word, field, allow_absent=False):
        if not isinstance(name, str):
            return
        entry = self.declared[kind].get(name)
        if entry is None:
            self._add(field, "%r is not a defined %s%s" % (name, word, _suggest(name, self.declared[kind])))
        elif not allow_absent and entry[1].get("state") == "absent":
            self._add(field, "%r is declared absent (%s[%d])" % (name, kind, entry[0]))

    def _inline_group(self, group, field):
        """A group written inline must agree with the declared group of that name, and with other inline copies."""
        if not isinstance(group, dict) or _name(group) is None:
            return
        name = _name(group)
        declared = self.declared["server_groups"].get(name)
        if declared is not None:
            other, where = declared[1], "server_groups[%d]" % declared[0]
        elif name in self.inline_groups:
            other, where = self.inline_groups[name]
        else:
            self.inline_groups[name] = (group, field)
            return
        verb = "declared" if declared else "given"
        if group.get("policy") != other.get("policy"):
            self._add(field + ".policy", "server group %r is %s with policy %s in %s"
                      % (name, verb, _describe(other.get("policy")), where))
        elif _max_per_host(group) != _max_per_host(other):
            self._add(field + ".rules", "server group %r is %s with max_server_per_host %s in %s"
                      % (name, verb, _describe(_max_per_host(other)), where))

    def group(self, server):
        """(name, group dict) of a server's group, declared or inline; (None, None) without one."""
        group = server.get("server_group")
        if isinstance(group, str):
            entry = self.declared["server_groups"].get(group)
            return (group, entry[1]) if entry else (None, None)
        if isinstance(group, dict) and _name(group):
            entry = self.declared["server_groups"].get(_name(group))
            return _name(group), entry[1] if entry else self.inline_groups.get(_name(group), (group,))[0]
        return None, None

    def _placement(self, server, where):
        host = server.get("host")
        zone = server.get("availability_zone")
        if self.hosts is None:
            return
        if isinstance(host, str):
            entry = self.hosts.get(host)
            if entry is None:
                self._add(where + ".host", "%r is not a compute host%s" % (host, _suggest(host, self.hosts)))
            else:
                if not entry["enabled"] and server.get("state") != "absent":
                    self.warnings.append(
                        "%s.host: %s is disabled%s; a new server cannot be placed there (an existing one stays)"
                        % (where, host, " (%s)" % entry["reason"] if entry["reason"] else ""))
                if isinstance(zone, str) and entry["az"] != zone:
                    self._add(where + ".availability_zone", "host %s is in availability zone %r, not %r"
                              % (host, entry["az"], zone))
                    return
        if isinstance(zone, str) and not any(e["az"] == zone for e in self.hosts.values()):
            zones = sorted(set(e["az"] for e in self.hosts.values()))
            self._add(where + ".availability_zone", "no compute host is in availability zone %r (zones: %s)"
                      % (zone, ", ".join(zones)))

    def _hints(self, server, where):
        hints = server.get("hints")
        if not isinstance(hints, dict):
            return
        for key in ("same_host", "different_host"):
            names = hints.get(key)
            if not isinstance(names, list):
                continue
            for position, name in enumerate(names):
                field = "%s.hints.%s[%d]" % (where, key, position)
                if not isinstance(name, str):
                    continue
                if name == server.get("name"):
                    self._add(field, "a server cannot name itself")
                elif name not in self.declared["servers"]:
                    self._add(field, "%r is not a declared server%s" % (name, _suggest(name, self.declared["servers"])))

    def _fixed_ip(self, netaddr, nic, mac, field):
        name = nic["network"]
        entry = self.declared["networks"].get(name)
        if entry is None:
            return  # reported as an unknown network
        network = entry[1]
        address = self._address(netaddr, nic["fixed_ip"])
        if address is None:
            return
        if network.get("mode") == "bridge":
            self._add(field, "network %s is a bridge to the host's LAN without a subnet of its own; a fixed_ip needs "
                             "a nat, route or isolated network with DHCP" % name)
            return
        subnet = self.subnets.get(name)
        if subnet is None:
            if not isinstance(network.get("cidr"), str):
                self._add(field, "network %s declares no cidr, so %s cannot be checked; declare the network's subnet "
                                 "(networks[%d].cidr)" % (name, address, entry[0]))
            return
        if not subnet["dhcp"]:
            self._add(field, "network %s has dhcp: false, and a fixed_ip is handed out by its DHCP server" % name)
            return
        if not self._in_subnet(address, subnet, field):
            return
        other = subnet["used"].get(address)
        if other is not None and not (mac is not None and other[1] == mac and ".hosts[" in other[0]):
            owner = "reserved in %s" % other[0] if ".hosts[" in other[0] else "the fixed_ip of %s" % other[0]
            self._add(field, "%s is also %s" % (address, owner))
            return
        subnet["used"].setdefault(address, (field.rsplit(".", 1)[0], mac))

    # -- server groups ------------------------------------------------------------------------------------------------

    def _check_groups(self):
        members = {}
        groups = {}
        for index, server in _items(self.state, "servers"):
            name, group = self.group(server)
            if name is not None and server.get("state") != "absent":
                members.setdefault(name, []).append((index, server))
                groups[name] = group
        for name, servers in members.items():
            group = groups[name]
            declared = self.declared["server_groups"].get(name)
            where = "server_groups[%d]" % declared[0] if declared else "servers[%d].server_group" % servers[0][0]
            policy = group.get("policy")
            if policy == "affinity":
                self._affinity(name, where, servers)
            elif policy == "anti-affinity":
                limit = _max_per_host(group)
                if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                    continue
                self._anti_affinity(name, where, servers, limit)

    def _affinity(self, name, where, servers):
        before = len(self.errors)
        first_host = first_zone = None
        for index, server in servers:
            host, zone = server.get("host"), server.get("availability_zone")
            if isinstance(host, str):
                if first_host is None:
                    first_host = (host, index)
                elif host != first_host[0]:
                    self._add("servers[%d].host" % index, "server group %r has the affinity policy, but servers[%d] is "
                                                          "on host %s" % (name, first_host[1], first_host[0]))
            if isinstance(zone, str):
                if first_zone is None:
                    first_zone = (zone, index)
                elif zone != first_zone[0]:
                    self._add("servers[%d].availability_zone" % index,
                              "server group %r has the affinity policy, but servers[%d] asks for zone %r"
                              % (name, first_zone[1], first_zone[0]))
        if len(self.errors) > before or self.hosts is None:
            return
        common = None
        for _index, server in servers:
            eligible = set(self._eligible(server))
            common = eligible if common is None else common & eligible
        if not common:
            self._add(where,
                      "affinity group %r needs one host for all its %d servers, but no host is eligible for all of "
                      "them (enabled, in their zone, with their flavors' traits)" % (name, len(servers)))

    def _anti_affinity(self, name, where, servers, limit):
        pinned = {}
        for index, server in servers:
            host = server.get("host")
            if isinstance(host, str):
                pinned.setdefault(host, []).append(index)
                if len(pinned[host]) > limit:
                    self._add("servers[%d].host" % index,
                              "server group %r (anti-affinity) allows %d server%s per host, and %s %s also on %s"
                              % (name, limit, "" if limit == 1 else "s",
                                 ", ".join("servers[%d]" % i for i in pinned[host][:-1]),
                                 "is" if len(pinned[host]) == 2 else "are", host))
        if self.hosts is None:
            self.warnings.append("%s: no compute host list is known (give compute_hosts or declare virtfleet_hosts), "
                                 "so whether anti-affinity group %r can be placed was not checked" % (where, name))
            return
        classes = {}
        for _index, server in servers:
            eligible = frozenset(self._eligible(server))
            classes[eligible] = classes.get(eligible, 0) + 1
        placeable = _max_placement(classes, limit)
        if placeable < len(servers):
            usable = sorted(set().union(*classes.keys())) if classes else []
            self._add(where,
                      "anti-affinity group %r has %d servers, but its eligible hosts can take only %d "
                      "(max_server_per_host %d; eligible: %s)"
                      % (name, len(servers), placeable, limit, ", ".join(usable) or "none"))

    def _eligible(self, server):
        """The hosts a server of a group may run on: its pinned host, or the enabled hosts of its zone with its
        flavor's required traits and none of its forbidden ones. Aggregates and capacity are the scheduler's."""
        host = server.get("host")
        if isinstance(host, str):
            return [host]
        zone = server.get("availability_zone")
        required, forbidden = set(), set()
        flavor = self.flavor_of(server)
        specs = flavor.get("extra_specs") if isinstance(flavor, dict) else None
        for key, value in (specs or {}).items() if isinstance(specs, dict) else ():
            if isinstance(key, str) and key.startswith(_TRAIT_SCOPE):
                want = _text(value).lower()
                if want == "required":
                    required.add(key[len(_TRAIT_SCOPE):])
                elif want == "forbidden":
                    forbidden.add(key[len(_TRAIT_SCOPE):])
        key = (zone if isinstance(zone, str) else None, frozenset(required), frozenset(forbidden))
        cached = self._eligible_cache.get(key)
        if cached is None:
            cached = self._eligible_cache[key] = [
                name for name, entry in self.hosts.items()
                if entry["enabled"] and (key[0] is None or entry["az"] == key[0])
                and required <= entry["traits"] and not forbidden & entry["traits"]]
        return cached


def _group_rule(group, key):
    if key == "rules":
        rules = group.get("rules")
        return rules if isinstance(rules, dict) else {}
    return group.get(key)


def _max_per_host(group):
    return _group_rule(group, "rules").get("max_server_per_host", 1)


def _mac(value):
    return value.lower() if isinstance(value, str) and re.match(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$", value) \
        else None


def _max_placement(classes, per_host):
    """How many servers fit: a max flow from server classes (same eligible hosts) to hosts of capacity per_host."""
    hosts = sorted(set().union(*classes.keys())) if classes else []
    load = dict((h, 0) for h in hosts)
    # assignment[class][host] = servers of that class on that host
    assignment = dict((c, {}) for c in classes)
    placed = 0
    for cls, count in classes.items():
        for _server in range(count):
            if _augment(cls, classes, assignment, load, per_host):
                placed += 1
            else:
                break
    return placed


def _augment(start, classes, assignment, load, per_host):
    """One augmenting path (BFS) from a server of class ``start`` to a host with room, moving others along it."""
    from collections import deque

    parents = {("c", start): None}
    queue = deque([("c", start)])
    while queue:
        node = queue.popleft()
        kind, value = node
        if kind == "c":
            for host in value:
                nxt = ("h", host)
                if nxt in parents:
                    continue
                parents[nxt] = node
                if load[host] < per_host:
                    # Walk back: each (class -> host) step adds a server there, each (host -> class) step takes one.
                    load[host] += 1
                    cur = nxt
                    while parents[cur] is not None:
                        prev = parents[cur]
                        if prev[0] == "c":
                            counts = assignment[prev[1]]
                            counts[cur[1]] = counts.get(cur[1], 0) + 1
                        else:
                            counts = assignment[cur[1]]
                            counts[prev[1]] -= 1
                        cur = prev
                    return True
                queue.append(nxt)
        else:
            for cls in classes:
                if assignment[cls].get(value, 0) > 0 and ("c", cls) not in parents:
                    parents[("c", cls)] = node
                    queue.append(("c", cls))
    return False


# -- entry point ------------------------------------------------------------------------------------------------------

def normalize_state(state):
    """A plain copy of the state with every kind present; a kind that is None (``virtfleet_servers:`` with nothing
    after it) counts as empty."""
    if not isinstance(state, dict):
        return state
    out = {}
    for key, value in state.items():
        out[key] = [] if value is None and key in KINDS else copy.deepcopy(value)
    return out


def summarize(state):
    summary = {}
    for kind in KINDS:
        value = state.get(kind) if isinstance(state, dict) else None
        summary[kind] = len(value) if isinstance(value, list) else 0
    states = {}
    for _index, server in _items(state if isinstance(state, dict) else {}, "servers"):
        word = server.get("state") if isinstance(server.get("state"), str) else "running"
        states[word] = states.get(word, 0) + 1
    summary["server_states"] = states
    return summary


def validate_state(state, compute_hosts=None, schemas=None, host_facts=None):
    """Validate the declared state; returns a Report with every error (never raises for a bad state).

    :param state: ``{"flavors": [...], "servers": [...], ...}``.
    :param compute_hosts: names of the compute hosts (the inventory group); references to hosts are checked against
        them and anti-affinity groups are counted on them. When None, the names in ``hosts`` are used, and if none
        is declared those checks are skipped with a warning.
    :param schemas: schemas as load_schemas() returns them; the collection's own by default.
    :param host_facts: ``{host name: record}`` the inventory knows (enabled, disabled_reason, availability_zone,
        traits), for the hosts without a declared record; a declared record wins.
    """
    state = normalize_state(state)
    compiled = _schemas(schemas)
    errors = _SchemaPass(compiled).run(state)
    warnings = []
    if isinstance(state, dict):
        cross_errors, warnings = _CrossCheck(state, compute_hosts, host_facts).run()
        errors.extend(cross_errors)
    unique = []
    seen = set()
    for error in errors:
        if error not in seen:
            seen.add(error)
            unique.append(error)
    unique.sort(key=_sort_key)
    return Report(unique, warnings, summarize(state))


def check_state(state, compute_hosts=None, schemas=None, host_facts=None):
    """validate_state(), raising StateValidationError (all errors in one message) when the state is invalid."""
    report = validate_state(state, compute_hosts=compute_hosts, schemas=schemas, host_facts=host_facts)
    if not report.valid:
        raise StateValidationError(report.errors)
    return report


def state_from_variables(variables):
    """The state dict from inventory variables named ``virtfleet_<kind>`` (missing ones are empty)."""
    return dict((kind, variables.get(VARIABLES[kind]) or []) for kind in KINDS)
