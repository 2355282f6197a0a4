# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write docs/reference-state.md from the JSON Schemas of schemas/: the schemas' descriptions are the reference.

    python scripts/state_reference.py           # rewrite docs/reference-state.md
    python scripts/state_reference.py --check   # exit 1 when it is out of date (the unit tests do the same)
"""

import argparse
import json
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA_DIR = os.path.join(REPO_ROOT, "schemas")
OUTPUT = os.path.join(REPO_ROOT, "docs", "reference-state.md")
# The kinds in the order the cloud schema lists them, with their schema files.
KIND_FILES = (
    ("flavors", "flavor.schema.json"),
    ("images", "image.schema.json"),
    ("networks", "network.schema.json"),
    ("server_groups", "server_group.schema.json"),
    ("servers", "server.schema.json"),
    ("hosts", "host.schema.json"),
)
HEADER = """\
<!-- Generated from schemas/*.schema.json by scripts/state_reference.py: edit the schemas, then run
     `python scripts/state_reference.py`. A unit test fails when this file is out of date. -->
"""


def load(directory=SCHEMA_DIR):
    schemas = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".schema.json"):
            with open(os.path.join(directory, name)) as handle:
                schemas[name] = json.load(handle)
    return schemas


class Renderer:
    def __init__(self, schemas):
        self.schemas = schemas

    def resolve(self, node, base):
        """Follow a $ref (other file or local fragment); returns (node, base file)."""
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            where, _sep, fragment = ref.partition("#")
            base = where or base
            target = self.schemas[base]
            for token in [t for t in fragment.split("/") if t]:
                target = target[token]
            merged = dict(target)
            merged.update((k, v) for k, v in node.items() if k != "$ref")
            # A schema that adds fields to the one it refers to (flavor.schema.json adds state) shows both.
            if "properties" in target and "properties" in node:
                merged["properties"] = dict(target["properties"], **node["properties"])
            if "$ref" not in target:
                merged.pop("$ref", None)
            node = merged
        return node, base

    def type_text(self, node, base):
        if node is True or node is False:
            return "anything" if node else "nothing"
        title = None
        if isinstance(node, dict) and "$ref" in node:
            target, _b = self.resolve({"$ref": node["$ref"]}, base)
            title = target.get("title")
        node, base = self.resolve(node, base)
        if "oneOf" in node or "anyOf" in node:
            branches = node.get("oneOf") or node.get("anyOf")
            return " or ".join(b.get("title") or self.type_text(b, base) for b in branches)
        if "enum" in node:
            return "one of %s" % ", ".join("`%s`" % v for v in node["enum"])
        kind = node.get("type")
        kinds = kind if isinstance(kind, list) else [kind]
        words = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean",
                 "object": "dict", "array": "list", None: "any"}
        text = " or ".join(words.get(k, str(k)) for k in kinds)
        if kind == "array" and isinstance(node.get("items"), dict):
            text = "list of %s" % self.type_text(node["items"], base)
        elif kind == "object" and isinstance(node.get("additionalProperties"), dict) and not node.get("properties"):
            text = "dict of %s" % self.type_text(node["additionalProperties"], base)
        bounds = []
        for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
            if key in node:
                bounds.append("%s %s" % (sign, node[key]))
        if bounds:
            text += " (%s)" % ", ".join(bounds)
        if title and kind == "string" and "enum" not in node:
            text = "%s: %s" % (text, title.lower() if not title.startswith(("IPv4", "MAC", "RFC")) else title)
        return text

    def required_text(self, schema, name):
        if name in (schema.get("required") or []):
            return "yes"
        other = schema.get("else") or {}
        cond = (schema.get("if") or {}).get("properties") or {}
        if name in (other.get("required") or []) and cond:
            key, value = next(iter(cond.items()))
            return "unless `%s: %s`" % (key, value.get("const"))
        then = schema.get("then") or {}
        if name in (then.get("required") or []) and cond:
            key, value = next(iter(cond.items()))
            return "with `%s: %s`" % (key, value.get("const"))
        return ""

    def table(self, schema, base, prefix, nested):
        rows = ["| Field | Type | Required | Default | Description |", "|---|---|---|---|---|"]
        resolved, rbase = self.resolve(schema, base)
        properties = dict(resolved.get("properties") or {})
        for name, node in properties.items():
            target, tbase = self.resolve(node, rbase)
            description = node.get("description") or target.get("description") or ""
            default = node.get("default", target.get("default"))
            default_text = "`%s`" % json.dumps(default) if default is not None else ""
            rows.append("| `%s` | %s | %s | %s | %s |" % (
                name, _cell(self.type_text(node, rbase)), self.required_text(resolved, name), default_text,
                _cell(description)))
            for sub_name, sub, sub_base in self._children(name, target, tbase):
                nested.append((prefix + sub_name, sub, sub_base))
        return rows

    def _children(self, name, node, base):
        """Nested objects of a field that get a table of their own: dicts with properties, list items, branches."""
        if node.get("type") == "object" and node.get("properties"):
            yield name, node, base
        items = node.get("items")
        if isinstance(items, dict):
            items, ibase = self.resolve(items, base)
            for branch in items.get("oneOf") or [items]:
                branch, bbase = self.resolve(branch, ibase)
                if branch.get("type") == "object" and branch.get("properties"):
                    yield name + "[]", branch, bbase
        for branch in node.get("oneOf") or []:
            branch, bbase = self.resolve(branch, base)
            if branch.get("type") == "object" and branch.get("properties"):
                yield name, branch, bbase

    def kind_section(self, kind, filename):
        schema = self.schemas[filename]
        lines = ["## %s" % schema["title"], "", "`virtfleet_%s`, each entry validated by `schemas/%s`." % (
            kind, filename), "", schema["description"], ""]
        nested = []
        lines += self.table(schema, filename, "", nested)
        lines.append("")
        seen = set()
        while nested:
            path, node, base = nested.pop(0)
            if path in seen:
                continue
            seen.add(path)
            title = node.get("title")
            lines += ["### `%s`%s" % (path, " (%s)" % title if title else ""), ""]
            if node.get("description") and node.get("title"):
                lines += [node["description"], ""]
            sub = []
            lines += self.table(node, base, path + ".", sub)
            lines.append("")
            nested = sub + nested
        return lines

    def render(self):
        cloud = self.schemas["cloud.schema.json"]
        lines = [HEADER, "# Declared state reference", "", cloud["description"], "",
                 "| Variable | Kind | Schema |", "|---|---|---|"]
        for kind, filename in KIND_FILES:
            title = self.schemas[filename]["title"]
            lines.append("| `virtfleet_%s` | [%s](#%s) | `schemas/%s` |" % (
                kind, title, title.lower().replace(" ", "-"), filename))
        lines += ["", "Every kind is a list. Names are unique per kind; what the schemas cannot say is checked too "
                  "(see [Declaring servers](declaring-servers.md#validation)): references to declared flavors, "
                  "images, networks, server groups and hosts, fixed IPs inside their network and used once, MAC "
                  "addresses used once, and server groups the hosts can satisfy.", ""]
        for kind, filename in KIND_FILES:
            lines += self.kind_section(kind, filename)
        return "\n".join(lines).rstrip("\n") + "\n"


def _cell(text):
    return text.replace("|", "\\|").replace("\n", " ")


def render(directory=SCHEMA_DIR):
    return Renderer(load(directory)).render()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when docs/reference-state.md is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        with open(OUTPUT) as handle:
            if handle.read() != text:
                print("%s is out of date: run python scripts/state_reference.py" % OUTPUT, file=sys.stderr)
                return 1
        return 0
    with open(OUTPUT, "w") as handle:
        handle.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
