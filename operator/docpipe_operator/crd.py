"""The DocumentPipeline CustomResourceDefinition, generated from the pydantic models.

`python -m docpipe_operator.crd [PATH]` writes it; the copy checked in under `crds/` must equal the
generated one (a unit test says so). Pydantic emits JSON Schema; the API server wants a structural
OpenAPI v3 schema, so `structural_schema` rewrites the differences: `$ref`s are inlined, `Optional`
(`anyOf` with null) becomes a plain optional field, exclusive bounds become OpenAPI 3.0 booleans,
free-form objects get `x-kubernetes-preserve-unknown-fields`, nested objects get `default: {}`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from docpipe_operator.model import (
    GROUP,
    KIND,
    MAX_NAME_LENGTH,
    NAME_PATTERN,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    DocumentPipelineSpec,
    DocumentPipelineStatus,
)

CRD_NAME = f"{PLURAL}.{GROUP}"
CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / f"{CRD_NAME}.yaml"
REGENERATE_COMMAND = ".venv/bin/python -m docpipe_operator.crd"

_HEADER = f"# Generated from docpipe_operator/model.py by `{REGENERATE_COMMAND}`; do not edit.\n"

# Keys of JSON Schema that mean the same in the API server's OpenAPI v3 subset.
_KEPT_KEYS = frozenset(
    {
        "type",
        "description",
        "enum",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "pattern",
        "format",
        "required",
        "default",
        "x-kubernetes-validations",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-int-or-string",
    }
)


class SchemaError(ValueError):
    """A model uses a construct that has no structural OpenAPI equivalent."""


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's schema in the structural OpenAPI v3 form the API server accepts."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    defs: dict[str, Any] = schema.pop("$defs", {})
    return _convert(schema, defs, model.__name__)


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A node with its `$ref` replaced by the referenced definition, sibling keys winning."""
    if "$ref" not in node:
        return node
    target = defs[node["$ref"].rsplit("/", 1)[-1]]
    siblings = {k: v for k, v in node.items() if k != "$ref"}
    return {**_resolve(target, defs), **siblings}


def _convert(node: dict[str, Any], defs: dict[str, Any], where: str) -> dict[str, Any]:
    node = _resolve(node, defs)
    if "anyOf" in node:
        node = _collapse_any_of(node, defs, where)
    if "const" in node:
        node = {**node, "enum": [node.pop("const")]}
    out: dict[str, Any] = {k: v for k, v in node.items() if k in _KEPT_KEYS}
    if out.get("default", 0) is None:
        # A null default means "absent"; the API server prunes nulls of non-nullable fields.
        del out["default"]
    for bound, keyword in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node:
            out[keyword] = node[bound]
            out[bound] = True
    if "properties" in node:
        required = set(node.get("required", ()))
        properties = {}
        for name, prop in node["properties"].items():
            converted = _convert(prop, defs, f"{where}.{name}")
            if "$ref" in prop and "default" not in prop and name not in required:
                # A nested object whose fields all have defaults: `{}` lets the API server
                # default it recursively, as pydantic's default_factory does.
                converted["default"] = {}
            properties[name] = converted
        out["properties"] = properties
    if "items" in node:
        out["items"] = _convert(node["items"], defs, f"{where}[]")
    additional = node.get("additionalProperties")
    if additional is True:
        out["x-kubernetes-preserve-unknown-fields"] = True
    elif isinstance(additional, dict):
        out["additionalProperties"] = _convert(additional, defs, f"{where}{{}}")
    if "type" not in out and not out.get("x-kubernetes-int-or-string"):
        raise SchemaError(f"{where}: no type in {node}")
    return _ordered(out)


# Order of keys in the generated YAML, for a CRD that reads top-down: what a node is, its bounds,
# then its children.
_ORDER = ("type", "description", "x-kubernetes-int-or-string", "enum", "format", "pattern")
_LAST = ("required", "properties", "additionalProperties", "items")


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    first = [k for k in _ORDER if k in node]
    last = [k for k in _LAST if k in node]
    middle = sorted(k for k in node if k not in _ORDER and k not in _LAST)
    return {k: node[k] for k in (*first, *middle, *last)}


def _collapse_any_of(node: dict[str, Any], defs: dict[str, Any], where: str) -> dict[str, Any]:
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    choices = [c for c in node["anyOf"] if c != {"type": "null"}]
    if len(choices) == 1:
        return {**_resolve(choices[0], defs), **rest}
    if {c.get("type") for c in choices} == {"integer", "string"} and len(choices) == 2:
        return {**rest, "x-kubernetes-int-or-string": True}
    raise SchemaError(f"{where}: a union of {choices} has no structural schema")


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition object (apiextensions.k8s.io/v1) as a plain dict."""
    spec = structural_schema(DocumentPipelineSpec)
    status = structural_schema(DocumentPipelineStatus)
    root = {
        "type": "object",
        "description": "A document pipeline: a fleet of docpipe workers sized to its queue.",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "required": ["spec"],
        "x-kubernetes-validations": [
            {
                "rule": f"self.metadata.name.matches('{NAME_PATTERN}') "
                f"&& size(self.metadata.name) <= {MAX_NAME_LENGTH}",
                "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters of a-z, "
                "0-9 and '-', starting with a letter and ending with a letter or digit",
            }
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["docpipe"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {
                        "status": {},
                        # `kubectl scale` writes spec.replicas, which pins the worker count;
                        # status.selector lets HPA/VPA-style tools find the pods.
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": [
                        _column("Ready", "integer", ".status.readyReplicas"),
                        _column("Desired", "integer", ".status.desiredReplicas"),
                        _column("Queue", "integer", ".status.queueDepth"),
                        _column("Phase", "string", ".status.phase"),
                        _column("Rollout", "string", ".status.rollout.phase"),
                        _column("Age", "date", ".metadata.creationTimestamp"),
                        {**_column("Image", "string", ".spec.worker.image"), "priority": 1},
                        {**_column("Reason", "string", ".status.lastScaleReason"), "priority": 1},
                    ],
                }
            ],
        },
    }


def _column(name: str, kind: str, path: str) -> dict[str, Any]:
    return {"name": name, "type": kind, "jsonPath": path}


class _Dumper(yaml.SafeDumper):
    """Writes shared sub-objects out in full: anchors and aliases would puzzle readers."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_crd_yaml() -> str:
    """The CRD as the YAML text checked in under `crds/`."""
    body = yaml.dump(build_crd(), Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
    return _HEADER + body


def write_crd(path: Path = CRD_PATH) -> Path:
    """Write the generated CRD to `path` (the checked-in copy by default) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_crd_yaml(), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line: write the CRD to the path given, or to the checked-in copy."""
    args = sys.argv[1:] if argv is None else argv
    written = write_crd(Path(args[0])) if args else write_crd()
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
