"""What the API server does with a custom resource before storing it, for the tests: apply the
CRD schema's defaults, refuse unknown fields (the server would prune them silently, which in an
example is a mistake), validate against the OpenAPI schema, and evaluate the CEL rules."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml
from celpy.adapter import json_to_cel


def crd_schemas(*paths: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """{(apiVersion, kind): openAPIV3Schema} of the served versions of the CRDs in `paths`."""
    schemas = {}
    for path in paths:
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        spec = crd["spec"]
        for version in spec["versions"]:
            if version["served"]:
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


def _apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    if isinstance(value, dict):
        for name, prop in schema.get("properties", {}).items():
            if name not in value and "default" in prop:
                value[name] = copy.deepcopy(prop["default"])
            if name in value:
                value[name] = _apply_defaults(prop, value[name])
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            for key in value:
                value[key] = _apply_defaults(additional, value[key])
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_apply_defaults(schema["items"], item) for item in value]
    return value


def _unknown_fields(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found = []
    if isinstance(value, dict):
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        for key, item in value.items():
            if properties is not None and key in properties:
                found += _unknown_fields(properties[key], item, f"{path}.{key}")
            elif isinstance(additional, dict):
                found += _unknown_fields(additional, item, f"{path}.{key}")
            elif properties is not None or additional is False:
                found.append(f"{path}.{key}: unknown field")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            found += _unknown_fields(schema["items"], item, f"{path}[{index}]")
    return found


def _cel_violations(env: celpy.Environment, schema: dict[str, Any], value: Any) -> list[str]:
    broken = []
    for rule in schema.get("x-kubernetes-validations", []):
        program = env.program(env.compile(rule["rule"]))
        if not bool(program.evaluate({"self": json_to_cel(value)})):
            broken.append(str(rule.get("message", rule["rule"])))
    if isinstance(value, dict):
        for name, prop in schema.get("properties", {}).items():
            if name in value:
                broken += _cel_violations(env, prop, value[name])
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            broken += _cel_violations(env, schema["items"], item)
    return broken


def admission_problems(schema: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    """Why the API server (with the CRD's schema) would refuse `manifest`; empty if it admits it."""
    # apiVersion, kind and metadata are every object's; a CRD's schema need not list them.
    body = {k: v for k, v in manifest.items() if k not in {"apiVersion", "kind", "metadata"}}
    problems = _unknown_fields(schema, body, "")
    defaulted = _apply_defaults(schema, copy.deepcopy(manifest))
    validator = jsonschema.Draft4Validator(schema)
    for error in validator.iter_errors(defaulted):
        where = ".".join(str(p) for p in error.absolute_path)
        problems.append(f"{where}: {error.message}")
    if not problems:
        problems += _cel_violations(celpy.Environment(), schema, defaulted)
    return problems
