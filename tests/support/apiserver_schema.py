"""What the API server does with a custom resource before storing it, from its CRD's structural
schema, with the API server's (1.30) error messages:

- pruning: fields the schema does not know are dropped (unless
  `x-kubernetes-preserve-unknown-fields`); `unknown_fields` names them for `fieldValidation`;
- defaulting: absent fields (and nulls in non-nullable ones) get their `default`, top-down;
- validation: types, required, enum, bounds, lengths, items, patterns, date-time formats,
  `x-kubernetes-list-type: map` keys, then the `x-kubernetes-validations` CEL rules (cel-python),
  skipped when a blocking error was found, as the server skips them;
- ratcheting (on by default since 1.30): on an update, errors at a value that did not change
  are dropped, so an object stored before a rule existed can still have its status written.

Each error is a `FieldError` whose `str` is the API server's `field: body` text;
`invalid_status` builds the 422 Status with `details.causes`, `strict_decoding_status` the 400
of `fieldValidation=Strict`.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

Path = tuple[str | int, ...]
Obj = dict[str, Any]

# The error types of k8s.io/apimachinery/pkg/util/validation/field: (cause reason, text).
REQUIRED = ("FieldValueRequired", "Required value")
INVALID = ("FieldValueInvalid", "Invalid value")
TYPE_INVALID = ("FieldValueTypeInvalid", "Invalid value")
NOT_SUPPORTED = ("FieldValueNotSupported", "Unsupported value")
TOO_LONG = ("FieldValueTooLong", "Too long")
TOO_MANY = ("FieldValueTooMany", "Too many")
FORBIDDEN = ("FieldValueForbidden", "Forbidden")
DUPLICATE = ("FieldValueDuplicate", "Duplicate value")
_VALUELESS = {REQUIRED, TOO_LONG, FORBIDDEN}
# Errors after which the server does not run the CEL rules (hasBlockingErr in apiextensions).
_BLOCKING = {NOT_SUPPORTED, REQUIRED, TOO_LONG, TOO_MANY, TYPE_INVALID}
_NIL = object()  # a Go nil: printed as "null" in a value position
_ROOT_KEYS = frozenset({"apiVersion", "kind", "metadata"})


def go_float(value: float) -> str:
    """A float as Go's `%v` prints it (shortest digits; exponent form from 1e+06 and below
    1e-04)."""
    if value == 0:
        return "0"
    digits = Decimal(repr(float(value))).normalize()
    sign, numerals, exponent = digits.as_tuple()
    assert isinstance(exponent, int)
    mantissa = "".join(map(str, numerals))
    point = len(mantissa) + exponent - 1  # the decimal exponent of the first digit
    prefix = "-" if sign else ""
    if point < -4 or point >= 21 or (point >= 6 and point >= len(mantissa)):
        head = mantissa[0] + ("." + mantissa[1:] if len(mantissa) > 1 else "")
        return f"{prefix}{head}e{'+' if point >= 0 else '-'}{abs(point):02d}"
    return prefix + format(digits.copy_abs(), "f")


def go_value(value: Any) -> str:
    """A bad value as field.Error prints it: strings quoted, numbers and booleans plain, maps
    and lists in Go's `%#v` syntax."""
    if value is _NIL or value is None:
        return '"null"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return _go_syntax(value)


def _go_syntax(value: Any) -> str:
    if isinstance(value, dict):
        inner = ", ".join(
            f"{json.dumps(k)}:{_go_syntax(v)}" for k, v in sorted(value.items(), key=str)
        )
        return "map[string]interface {}{" + inner + "}"
    if isinstance(value, list):
        return "[]interface {}{" + ", ".join(_go_syntax(v) for v in value) + "}"
    if value is None:
        return "interface {}(nil)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}"
    if isinstance(value, float):
        return go_float(value)
    return json.dumps(value, ensure_ascii=False)


def field_path(path: Path) -> str:
    """A path as field.Path prints it: `spec.worker.extraEnv[0].name`; `<nil>` for the root."""
    if not path:
        return "<nil>"
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else ("." if text else "") + part
    return text


@dataclass(frozen=True)
class FieldError:
    """One field error of the API server."""

    kind: tuple[str, str]
    path: Path
    detail: str = ""
    value: Any = ""

    @property
    def field(self) -> str:
        return field_path(self.path)

    @property
    def body(self) -> str:
        """The message without the field (`ErrorBody` in apimachinery)."""
        text = self.kind[1]
        if self.kind not in _VALUELESS:
            text += f": {go_value(self.value)}"
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return f"{self.field}: {self.body}"


def invalid_status(group: str, kind: str, name: str, errors: list[FieldError]) -> Obj:
    """The 422 Status the API server answers for an invalid object (`apierrors.NewInvalid`)."""
    texts = list(dict.fromkeys(str(e) for e in errors))
    qualified = f"{kind}.{group}" if group else kind
    summary = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"{qualified} {json.dumps(name)} is invalid: {summary}",
        "reason": "Invalid",
        "details": {
            "name": name,
            "group": group,
            "kind": kind,
            "causes": [{"reason": e.kind[0], "message": e.body, "field": e.field} for e in errors],
        },
        "code": 422,
    }


def strict_decoding_status(kind: str, version: str, unknown: list[str]) -> Obj:
    """The 400 Status of `fieldValidation=Strict` for unknown fields."""
    fields = ", ".join(f"unknown field {json.dumps(path)}" for path in unknown)
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"{kind} in version {json.dumps(version)} cannot be handled as a {kind}: "
        f"strict decoding error: {fields}",
        "reason": "BadRequest",
        "code": 400,
    }


# ---- pruning and defaulting ----


def _object_schema(schema: Obj, key: str) -> Obj | None:
    """The schema of property `key` of an object node, None if the node does not know it."""
    properties = schema.get("properties") or {}
    if key in properties:
        sub: Obj = properties[key]
        return sub
    additional = schema.get("additionalProperties")
    if isinstance(additional, dict):
        return additional
    if additional is True or schema.get("x-kubernetes-preserve-unknown-fields"):
        return {"x-kubernetes-preserve-unknown-fields": True}
    return None


def prune(schema: Obj, value: Any, path: Path = ()) -> list[str]:
    """Drop, in place, the fields `schema` does not know; return their paths (`spec.foo`)."""
    dropped: list[str] = []
    if isinstance(value, dict):
        for key in list(value):
            if not path and key in _ROOT_KEYS:
                continue
            sub = _object_schema(schema, key)
            if sub is None:
                del value[key]
                dropped.append(field_path((*path, key)))
            else:
                dropped += prune(sub, value[key], (*path, key))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            dropped += prune(schema["items"], item, (*path, index))
    return dropped


def apply_defaults(schema: Obj, value: Any) -> None:
    """Fill, in place and top-down, absent fields from `default`; nulls in non-nullable fields
    take the default or are dropped."""
    if isinstance(value, dict):
        for key in list(value):
            sub = _object_schema(schema, key)
            if value[key] is None and sub is not None and not sub.get("nullable"):
                if "default" in sub:
                    value[key] = copy.deepcopy(sub["default"])
                else:
                    del value[key]
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
        for key, item in value.items():
            sub = _object_schema(schema, key)
            if sub is not None:
                apply_defaults(sub, item)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(schema["items"], item)


# ---- OpenAPI validation ----


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _type_ok(expected: str, value: Any) -> bool:
    actual = _json_type(value)
    if expected == "integer":
        return actual == "integer" or (actual == "number" and float(value).is_integer())
    if expected == "number":
        return actual in ("integer", "number")
    return actual == expected


def _bound(limit: float, value: Any) -> str:
    """A bound as the server prints it: as an integer when both are integers."""
    if isinstance(value, int) and float(limit).is_integer():
        return str(int(limit))
    return go_float(float(limit))


def _name(path: Path) -> str:
    return field_path(path) if path else "."


def openapi_errors(schema: Obj, value: Any, path: Path = (), old: Any = _NIL) -> list[FieldError]:
    """The OpenAPI v3 errors of `value` against a structural schema; with `old`, an unchanged
    value is not checked again (ratcheting)."""
    errors: list[FieldError] = []
    if old is not _NIL and value == old:
        return errors
    if value is None and schema.get("nullable"):
        return errors
    expected = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            actual = _json_type(value)
            detail = f"{_name(path)} in body must be of type int-or-string: {json.dumps(actual)}"
            errors.append(FieldError(TYPE_INVALID, path, detail, actual))
        return errors
    if expected and not _type_ok(expected, value):
        actual = _json_type(value)
        detail = f"{_name(path)} in body must be of type {expected}: {json.dumps(actual)}"
        return [FieldError(TYPE_INVALID, path, detail, actual)]
    where = f"{_name(path)} in body"
    if "enum" in schema and value not in schema["enum"]:
        allowed = [v if isinstance(v, str) else json.dumps(v) for v in schema["enum"]]
        detail = "supported values: " + ", ".join(json.dumps(v) for v in allowed)
        errors.append(FieldError(NOT_SUPPORTED, path, detail, value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "maximum" in schema:
            limit, exclusive = schema["maximum"], schema.get("exclusiveMaximum", False)
            if value > limit or (exclusive and value == limit):
                than = "less than" if exclusive else "less than or equal to"
                detail = f"{where} should be {than} {_bound(limit, value)}"
                errors.append(FieldError(INVALID, path, detail, value))
        if "minimum" in schema:
            limit, exclusive = schema["minimum"], schema.get("exclusiveMinimum", False)
            if value < limit or (exclusive and value == limit):
                than = "greater than" if exclusive else "greater than or equal to"
                detail = f"{where} should be {than} {_bound(limit, value)}"
                errors.append(FieldError(INVALID, path, detail, value))
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            detail = f"may not be longer than {schema['maxLength']}"
            errors.append(FieldError(TOO_LONG, path, detail, value))
        if "minLength" in schema and len(value) < schema["minLength"]:
            detail = f"{where} should be at least {schema['minLength']} chars long"
            errors.append(FieldError(INVALID, path, detail, value))
        if "pattern" in schema and not re.search(schema["pattern"], value):
            detail = f"{where} should match '{schema['pattern']}'"
            errors.append(FieldError(INVALID, path, detail, value))
        if schema.get("format") == "date-time" and not _is_date_time(value):
            detail = f"{where} must be of type date-time: {json.dumps(value)}"
            errors.append(FieldError(TYPE_INVALID, path, detail, value))
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            detail = f"must have at most {schema['maxItems']} items"
            errors.append(FieldError(TOO_MANY, path, detail, len(value)))
        if "minItems" in schema and len(value) < schema["minItems"]:
            detail = f"{where} should have at least {schema['minItems']} items"
            errors.append(FieldError(INVALID, path, detail, len(value)))
        items = schema.get("items")
        if isinstance(items, dict):
            for index, item in enumerate(value):
                old_item = old[index] if isinstance(old, list) and index < len(old) else _NIL
                errors += openapi_errors(items, item, (*path, index), old_item)
        errors += _list_map_errors(schema, value, path)
    if isinstance(value, dict):
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            detail = f"must have at most {schema['maxProperties']} items"
            errors.append(FieldError(TOO_MANY, path, detail, len(value)))
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            detail = f"{where} should have at least {schema['minProperties']} properties"
            errors.append(FieldError(INVALID, path, detail, len(value)))
        for required in schema.get("required") or []:
            if required not in value:
                errors.append(FieldError(REQUIRED, (*path, required)))
        for key, item in value.items():
            if not path and key in _ROOT_KEYS:
                continue
            sub = _object_schema(schema, key)
            if sub is not None:
                old_item = old.get(key, _NIL) if isinstance(old, dict) else _NIL
                errors += openapi_errors(sub, item, (*path, key), old_item)
    return errors


def _is_date_time(text: str) -> bool:
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return False
    return "T" in text.upper() or " " in text


def _list_map_errors(schema: Obj, value: list[Any], path: Path) -> list[FieldError]:
    kind = schema.get("x-kubernetes-list-type")
    seen: set[str] = set()
    errors = []
    for index, item in enumerate(value):
        if kind == "map" and isinstance(item, dict):
            keys = {k: item.get(k) for k in schema.get("x-kubernetes-list-map-keys") or []}
            marker, shown = json.dumps(keys, sort_keys=True), keys
        elif kind == "set":
            marker, shown = json.dumps(item, sort_keys=True), item
        else:
            continue
        if marker in seen:
            errors.append(FieldError(DUPLICATE, (*path, index), "", shown))
        seen.add(marker)
    return errors


# ---- CEL rules ----

_ENVIRONMENT = celpy.Environment()
_PROGRAMS: dict[str, celpy.Runner] = {}


def _program(expression: str) -> celpy.Runner:
    if expression not in _PROGRAMS:
        _PROGRAMS[expression] = _ENVIRONMENT.program(_ENVIRONMENT.compile(expression))
    return _PROGRAMS[expression]


def _to_cel(schema: Obj, value: Any) -> celtypes.Value:
    """A JSON value as CEL sees it, typed by the schema (a `number` is a double even when it is
    written as an integer)."""
    if isinstance(value, dict):
        return celtypes.MapType(
            {
                celtypes.StringType(k): _to_cel(_object_schema(schema, k) or {}, v)
                for k, v in value.items()
            }
        )
    if isinstance(value, list):
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        return celtypes.ListType([_to_cel(items or {}, v) for v in value])
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return celtypes.DoubleType(value)
    return json_to_cel(value)


def _seen(expression: str, variable: str, value: Any) -> Any:
    """The part of an object a rule can reach: when `variable` is only ever used as
    `variable.field`, the other fields are left out (sparing their conversion to CEL)."""
    if not isinstance(value, dict) or re.search(rf"\b{variable}\b(?!\.[A-Za-z_])", expression):
        return value
    used = set(re.findall(rf"\b{variable}\.([A-Za-z_][A-Za-z0-9_]*)", expression))
    return {k: v for k, v in value.items() if k in used}


def _root_for_cel(obj: Obj) -> Obj:
    """The root object as rules see it: metadata has only name and generateName."""
    shown = dict(obj)
    if isinstance(obj.get("metadata"), dict):
        meta = obj["metadata"]
        shown["metadata"] = {k: meta[k] for k in ("name", "generateName") if k in meta}
    return shown


_RESULTS: dict[tuple[int, str, str], tuple[Obj, Any]] = {}  # (schema kept alive, result)


def _evaluate(expression: str, activation: dict[str, Any]) -> Any:
    try:
        return _program(expression).evaluate(activation)
    except CELEvalError as error:
        return error


def _eval_text(error: CELEvalError) -> str:
    """A CEL runtime error as cel-go words it (`no such key: x`, `division by zero`)."""
    args = error.args
    message = str(args[0]) if args else str(error)
    cause = args[1] if len(args) > 1 else None
    if cause is KeyError:
        missing = re.search(r"'([^']*)'", message)
        return f"no such key: {missing[1] if missing else message}"
    if cause is ZeroDivisionError:
        return "division by zero"
    if cause is TypeError:
        return "no such overload"
    return message


def _rule_errors(schema: Obj, value: Any, old: Any, path: Path) -> list[FieldError]:
    errors: list[FieldError] = []
    kind = str(schema.get("type") or "object")
    for rule in schema.get("x-kubernetes-validations") or []:
        expression = str(rule["rule"])
        uses_old = "oldSelf" in expression
        if uses_old and old is _NIL:
            continue  # a transition rule: only on updates that had a value
        seen = _seen(expression, "self", value)
        seen_old = _seen(expression, "oldSelf", old) if uses_old else _NIL
        activation: dict[str, Any] = {"self": _to_cel(schema, seen)}
        if uses_old:
            activation["oldSelf"] = _to_cel(schema, seen_old)
        # Rules are pure: the same rule on the same values (many pipelines share their settings)
        # gives the same answer, and celpy is slow enough for that to matter.
        memo = (id(schema), expression, json.dumps([seen, seen_old], sort_keys=True, default=str))
        remembered = _RESULTS.get(memo)
        if remembered is not None and remembered[0] is schema:
            result = remembered[1]
        else:
            result = _evaluate(expression, activation)
            if len(_RESULTS) > 10_000:
                _RESULTS.clear()
            _RESULTS[memo] = (schema, result)
        described = str(rule.get("message") or expression).strip()
        if isinstance(result, CELEvalError):
            text = _eval_text(result)
            if text == "no such overload":
                detail = (
                    f"'{text}': call arguments did not match a supported operator, function or "
                    f"macro signature for rule: {described}"
                )
            else:
                detail = f"{text} evaluating rule: {described}"
            errors.append(FieldError(INVALID, path, detail, kind))
            continue
        if result is True or result == celtypes.BoolType(True):
            continue
        detail = rule.get("message") or f"failed rule: {expression.strip()}"
        if rule.get("messageExpression"):
            made = _evaluate(str(rule["messageExpression"]), activation)
            if isinstance(made, str) and made.strip():
                detail = str(made)
        where = path + _relative_path(str(rule.get("fieldPath") or ""))
        reason = rule.get("reason") or "FieldValueInvalid"
        error_kind = {
            "FieldValueForbidden": FORBIDDEN,
            "FieldValueRequired": REQUIRED,
            "FieldValueDuplicate": DUPLICATE,
        }.get(reason, INVALID)
        errors.append(FieldError(error_kind, where, str(detail), kind))
    return errors


def _relative_path(text: str) -> Path:
    """`.spec.foo['bar'][0]` → ("spec", "foo", "bar", 0)."""
    parts: list[str | int] = []
    for dotted, quoted, index in re.findall(r"\.([^.\[]+)|\['([^']*)'\]|\[(\d+)\]", text):
        parts.append(int(index) if index else (dotted or quoted))
    return tuple(parts)


def rule_errors(schema: Obj, value: Any, old: Any = _NIL, path: Path = ()) -> list[FieldError]:
    """The errors of the `x-kubernetes-validations` rules at every level of `value`; with `old`,
    an unchanged value is not checked again (ratcheting)."""
    if (old is not _NIL and value == old) or not has_rules(schema):
        return []
    errors = (
        _rule_errors(schema, value, old, path) if schema.get("x-kubernetes-validations") else []
    )
    if isinstance(value, dict):
        for key, item in value.items():
            sub = _object_schema(schema, key)
            if sub is None:
                continue
            old_item = old.get(key, _NIL) if isinstance(old, dict) else _NIL
            errors += rule_errors(sub, item, old_item, (*path, key))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        old_items = _correlated_items(schema, value, old)
        for index, item in enumerate(value):
            errors += rule_errors(schema["items"], item, old_items[index], (*path, index))
    return errors


def _correlated_items(schema: Obj, value: list[Any], old: Any) -> list[Any]:
    """The old item of each new one: by key in a map list (cel's correlation), else none."""
    if schema.get("x-kubernetes-list-type") != "map" or not isinstance(old, list):
        return [_NIL] * len(value)
    keys = schema.get("x-kubernetes-list-map-keys") or []

    def key(item: Any) -> str:
        return json.dumps([item.get(k) for k in keys] if isinstance(item, dict) else item)

    by_key = {key(item): item for item in old}
    return [by_key.get(key(item), _NIL) for item in value]


# ---- the whole admission ----


def value_at(obj: Any, path: Path) -> Any:
    """The value at `path`, or _NIL."""
    node = obj
    for part in path:
        in_list = isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node)
        in_map = isinstance(part, str) and isinstance(node, dict) and part in node
        if not (in_list or in_map):
            return _NIL
        node = node[part]
    return node


def _unchanged(error: FieldError, new: Obj, old: Obj) -> bool:
    path = error.path
    if error.kind == REQUIRED:
        path = path[:-1]  # a missing field: ratcheted when its parent did not change
    return bool(value_at(new, path) == value_at(old, path))


_HAS_RULES: dict[int, tuple[Any, bool]] = {}  # id: (the schema, kept alive; the answer)


def has_rules(schema: Any) -> bool:
    """Whether a schema has an `x-kubernetes-validations` rule anywhere."""
    cached = _HAS_RULES.get(id(schema))
    if cached is not None and cached[0] is schema:
        return cached[1]
    if isinstance(schema, dict):
        found = bool(schema.get("x-kubernetes-validations")) or any(
            has_rules(v) for v in schema.values()
        )
    else:
        found = isinstance(schema, list) and any(has_rules(v) for v in schema)
    if isinstance(schema, (dict, list)):
        _HAS_RULES[id(schema)] = (schema, found)
    return found


def validation_errors(schema: Obj, obj: Obj, old: Obj | None = None) -> list[FieldError]:
    """Every error the server reports for `obj` (already pruned and defaulted); with `old`, an
    update: errors at unchanged values are ratcheted away."""
    errors = openapi_errors(schema, obj, (), _NIL if old is None else old)
    if old is not None:
        errors = [e for e in errors if not _unchanged(e, obj, old)]
    if not has_rules(schema):
        return errors  # the server builds no CEL validator, so says nothing of skipped rules
    if any(e.kind in _BLOCKING for e in errors):
        detail = (
            "some validation rules were not checked because the object was invalid; "
            "correct the existing errors to complete validation"
        )
        return [*errors, FieldError(INVALID, (), detail, _NIL)]
    cel = rule_errors(schema, _root_for_cel(obj), _root_for_cel(old) if old else _NIL)
    if old is not None:
        cel = [e for e in cel if not _unchanged(e, obj, old)]
    return errors + cel


@dataclass
class Admission:
    """What admission made of an object: the object to store, the fields it pruned, and the
    errors that refuse it."""

    obj: Obj
    pruned: list[str]
    errors: list[FieldError]


def admit(schema: Obj, obj: Obj, old: Obj | None = None) -> Admission:
    """Prune, default and validate a custom resource as the API server does before storing."""
    result = copy.deepcopy(obj)
    pruned = prune(schema, result)
    apply_defaults(schema, result)
    return Admission(result, pruned, validation_errors(schema, result, old))
