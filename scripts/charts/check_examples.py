#!/usr/bin/env python3
"""Validates every example custom resource in the documentation against its CRD's schema.

Examples are the YAML documents whose apiVersion is in a group that a CRD in crds/ defines
(confab.dev: `kind: Application`): YAML code blocks (```yaml / ```yml) in README.md and in every
Markdown file under docs/, deploy/ and charts/, and the YAML files under deploy/ and charts/
(chart templates excepted: those are Go templates, and what they render is checked by
kubernetes-validate). Each is validated, as the API server would on create, against:

- the CRD's openAPIV3Schema (jsonschema), made strict the way `kubectl apply` (field validation
  Strict) is: a field the schema does not declare is an error unless the schema says
  `x-kubernetes-preserve-unknown-fields`. OpenAPI's `nullable` and `x-kubernetes-int-or-string`
  are translated to JSON Schema; apiVersion must be a served version and kind the CRD's kind;
  metadata is checked as the API server checks a custom resource's (name a DNS subdomain,
  namespace a DNS label, labels and annotations string maps);
- the CRD's CEL rules (x-kubernetes-validations), evaluated with cel-python. Transition rules
  (those that read oldSelf) only apply on update, so on these create-time examples they are not
  evaluated, as on a cluster.

It fails when an example is invalid, when a YAML block that mentions a CRD's group does not
parse, when an example names a version or kind no CRD serves, and when it finds no example at all
(the check would then check nothing). Before the examples it makes sure the validator rejects
two broken copies of each (an unknown field in spec, the root's required fields removed), so a
schema translation that accepts anything cannot pass unnoticed.

With --out DIR each example is also written to DIR (one file each), for
`kubectl apply --dry-run=client -f DIR`.
"""

import argparse
import copy
import glob
import logging
import os
import re
import sys

import jsonschema
import yaml

from crds import served_versions

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
QUALIFIED_NAME = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                  r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"

# ObjectMeta as a client may write it in a manifest; anything else in metadata is an error.
METADATA_SCHEMA = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": DNS_SUBDOMAIN},
        "namespace": {"type": "string", "maxLength": 63, "pattern": DNS_LABEL},
        "labels": {
            "type": "object",
            "propertyNames": {"pattern": QUALIFIED_NAME},
            "additionalProperties": {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE},
        },
        "annotations": {
            "type": "object",
            "propertyNames": {"pattern": QUALIFIED_NAME},
            "additionalProperties": {"type": "string"},
        },
        "finalizers": {"type": "array", "items": {"type": "string"}},
    },
}


def to_json_schema(node):
    """A CRD structural schema node as strict JSON Schema (a new dict; the input is untouched)."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {k: to_json_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
            out[key] = to_json_schema(value)
        elif key in ("nullable", "description", "default", "example", "format", "title",
                     "x-kubernetes-validations", "x-kubernetes-list-type",
                     "x-kubernetes-list-map-keys", "x-kubernetes-map-type",
                     "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource",
                     "x-kubernetes-int-or-string"):
            continue  # handled below, or not a validation keyword
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    if (out.get("type") == "object" and "additionalProperties" not in out
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = out["enum"] + [None]
    return out


def child(path, key):
    return str(key) if path == "(root)" else f"{path}.{key}"


class Kind:
    """One served version of one CRD: its JSON Schema validator and its CEL rules."""

    def __init__(self, crd_file, group, kind, version, schema):
        self.crd_file, self.group, self.kind, self.version = crd_file, group, kind, version
        self.api_version = f"{group}/{version}"
        self.structural = schema
        root = to_json_schema(schema)
        props = root.setdefault("properties", {})
        props["apiVersion"] = {"const": self.api_version}
        props["kind"] = {"const": kind}
        props["metadata"] = METADATA_SCHEMA
        root["required"] = sorted(set(root.get("required", [])) | {"apiVersion", "kind", "metadata"})
        root["additionalProperties"] = False
        self.json_schema = root
        jsonschema.Draft7Validator.check_schema(root)
        self.validator = jsonschema.Draft7Validator(root)
        self.cel_env = None

    def errors(self, obj):
        found = []
        for err in sorted(self.validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
            path = ".".join(str(p) for p in err.absolute_path) or "(root)"
            found.append(f"{path}: {err.message}")
        if not found:
            found.extend(self.cel_errors(self.structural, obj, "(root)"))
        return found

    def cel_errors(self, schema, value, path):
        if value is None or not isinstance(schema, dict):
            return []
        found = []
        for rule in schema.get("x-kubernetes-validations", []):
            if re.search(r"\boldSelf\b", rule["rule"]):
                continue  # a transition rule: the API server evaluates it on update only
            ok, detail = self.evaluate(rule["rule"], value)
            if not ok:
                found.append(f"{path}: {rule.get('message') or rule['rule']} (CEL rule "
                             f"{rule['rule']!r}{': ' + detail if detail else ''})")
        props = schema.get("properties", {})
        if isinstance(value, dict):
            for key, sub in value.items():
                if key in props:
                    found.extend(self.cel_errors(props[key], sub, child(path, key)))
                elif isinstance(schema.get("additionalProperties"), dict):
                    found.extend(self.cel_errors(schema["additionalProperties"], sub, child(path, key)))
        if isinstance(value, list) and isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                found.extend(self.cel_errors(schema["items"], item, child(path, i)))
        return found

    def evaluate(self, rule, value):
        import celpy  # imported here: only CRDs with CEL rules need it
        if self.cel_env is None:
            logging.getLogger("celpy").setLevel(logging.ERROR)
            self.cel_env = celpy.Environment()
        try:
            program = self.cel_env.program(self.cel_env.compile(rule))
            result = program.evaluate({"self": celpy.json_to_cel(value)})
        except Exception as exc:  # a rule cel-python cannot evaluate is an error, not a pass
            return False, f"cel-python could not evaluate it: {exc}"
        if isinstance(result, Exception):
            return False, f"evaluation error: {result}"
        return bool(result), ""


def load_kinds(crd_files):
    kinds = {}
    for path, spec, version in served_versions(crd_files):
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if schema is None:
            raise SystemExit(f"{path}: {spec['names']['kind']} {version['name']} "
                             "has no openAPIV3Schema")
        key = (spec["group"], version["name"], spec["names"]["kind"])
        if key not in kinds:
            kinds[key] = Kind(path, spec["group"], spec["names"]["kind"], version["name"], schema)
    return kinds


FENCE = re.compile(r"^(\s*)(```|~~~)\s*(yaml|yml)\b.*$", re.IGNORECASE)


def yaml_blocks(path):
    """(line, text) of each YAML code block of a Markdown file, or of the whole YAML file."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not path.endswith(".md"):
        return [(1, text)]
    blocks, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, start, body = m.group(1), m.group(2), i + 2, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            line = lines[i]
            body.append(line[len(indent):] if line.startswith(indent) else line)
            i += 1
        blocks.append((start, "\n".join(body)))
        i += 1
    return blocks


def sources(root):
    files = [os.path.join(root, "README.md")]
    for top in ("docs", "deploy", "charts"):
        for ext in ("md", "yaml", "yml"):
            files += glob.glob(os.path.join(root, top, "**", f"*.{ext}"), recursive=True)
    # Chart templates are Go templates; their rendered output is kubernetes-validate's.
    files = [f for f in files if os.path.isfile(f) and f"{os.sep}templates{os.sep}" not in f]
    return sorted(set(files))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--root", default=".", help="the repository (default: .)")
    parser.add_argument("--crds", nargs="+", help="CRD files (default: <root>/crds/*.yaml)")
    parser.add_argument("--out", help="write each example to a file in this directory")
    args = parser.parse_args()

    crd_files = args.crds or sorted(os.path.relpath(p, args.root) if args.root == "." else p
                                    for p in glob.glob(os.path.join(args.root, "crds", "*.yaml")))
    kinds = load_kinds(crd_files)
    if not kinds:
        print(f"no CustomResourceDefinition in {crd_files}", file=sys.stderr)
        return 1
    groups = {g for g, _, _ in kinds}
    group_re = re.compile(r"\b(" + "|".join(re.escape(g) for g in sorted(groups)) + r")/")

    failures, examples = [], []
    for path in sources(args.root):
        rel = os.path.relpath(path, args.root)
        for line, text in yaml_blocks(path):
            if not group_re.search(text):
                continue
            try:
                docs = list(yaml.safe_load_all(text))
            except yaml.YAMLError as exc:
                failures.append(f"{rel}:{line}: a YAML block naming {'/'.join(sorted(groups))} "
                                f"does not parse: {exc}")
                continue
            for doc in docs:
                if not isinstance(doc, dict) or not isinstance(doc.get("apiVersion"), str):
                    continue
                group, _, version = doc["apiVersion"].rpartition("/")
                if group not in groups:
                    continue
                examples.append((f"{rel}:{line}", (group, version, doc.get("kind")), doc))

    if not examples:
        print(f"no example resource of {', '.join(sorted(groups))} found in README.md, docs/, "
              "deploy/ or charts/: keep at least one, so that this check checks something",
              file=sys.stderr)
        return 1

    # The validator must bite: broken copies of each kind's first example are rejected.
    seen = set()
    for where, key, doc in examples:
        if key not in kinds or key in seen:
            continue
        seen.add(key)
        kind = kinds[key]
        unknown = copy.deepcopy(doc)
        if isinstance(unknown.get("spec"), dict):
            unknown["spec"]["notAFieldOfTheCrd"] = 1
        else:
            unknown["notAFieldOfTheCrd"] = 1
        mutations = [("an unknown field", unknown)]
        required = kind.structural.get("required", [])
        if required:
            mutations.append((f"{', '.join(required)} removed",
                           {k: v for k, v in doc.items() if k not in required}))
        for what, broken in mutations:
            if not kind.errors(broken):
                failures.append(f"self-check: {where} with {what} was accepted: the schema "
                                f"translation of {kind.crd_file} is too lax")

    if args.out:
        os.makedirs(args.out, exist_ok=True)
    for n, (where, key, doc) in enumerate(examples, 1):
        name = (doc.get("metadata") or {}).get("name", "?")
        ns = (doc.get("metadata") or {}).get("namespace")
        label = f"{doc.get('kind')} {ns + '/' if ns else ''}{name} ({doc['apiVersion']})"
        if args.out:
            slug = re.sub(r"[^A-Za-z0-9]+", "-", where).strip("-")
            with open(os.path.join(args.out, f"{n:03d}-{slug}.yaml"), "w", encoding="utf-8") as f:
                yaml.safe_dump(doc, f, sort_keys=False)
        if key not in kinds:
            served = ", ".join(sorted(f"{k} {g}/{v}" for g, v, k in kinds))
            failures.append(f"{where}: {label}: no CRD in {', '.join(crd_files)} serves it "
                            f"(served: {served})")
            continue
        errors = kinds[key].errors(doc)
        for err in errors:
            failures.append(f"{where}: {label}: {err}")
        if not errors:
            print(f"ok {where}: {label}")

    for failure in failures:
        print(f"FAIL {failure}")
    print(f"{len(examples)} example(s) checked against {', '.join(crd_files)}: "
          f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
