"""Server-side Table output (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`) for custom
resources, as the API server builds it from a CRD's `additionalPrinterColumns`: a Name column,
then each printer column, its cells read with the column's JSONPath and typed by its `type`
(`date` cells become ages like `5m` or `3h12m`)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]

NAME_COLUMN = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "description": "Name must be unique within a namespace. Is required when creating resources, "
    "although some resources may allow a client to request the generation of an appropriate name "
    "automatically. Name is primarily intended for creation idempotence and configuration "
    "definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
    "priority": 0,
}
AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

_STEP = re.compile(
    r"\.(?P<field>[A-Za-z0-9_$-]+)"
    r"|\[(?P<index>-?\d+)\]"
    r"|\['(?P<quoted>[^']*)'\]"
    r"|\[\*\]|\.\*"
    r"|\[\?\(@\.(?P<filter>[A-Za-z0-9_.-]+)\s*==\s*(?P<wanted>'[^']*'|\"[^\"]*\"|[^)\s]+)\s*\)\]"
)


def wants_table(accept: str) -> bool:
    """Whether an Accept header asks for a meta.k8s.io Table (kubectl get does)."""
    return any("as=Table" in part and "g=meta.k8s.io" in part for part in accept.split(","))


def json_path(obj: Any, path: str) -> list[Any]:
    """The values a printer column's JSONPath (`.status.x`, `[0]`, `['k']`, `[*]`,
    `[?(@.type=="Ready")]`) finds in `obj`; raise ValueError for other syntax."""
    text = path.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    text = text.removeprefix("$")
    nodes = [obj]
    position = 0
    while position < len(text):
        match = _STEP.match(text, position)
        if match is None:
            raise ValueError(f"unsupported JSONPath {path!r} at {text[position:]!r}")
        position = match.end()
        found: list[Any] = []
        for node in nodes:
            found += _step(match, node)
        nodes = found
    return nodes


def _step(match: re.Match[str], node: Any) -> list[Any]:
    if match["field"] is not None or match["quoted"] is not None:
        key = match["field"] if match["field"] is not None else match["quoted"]
        return [node[key]] if isinstance(node, dict) and key in node else []
    if match["index"] is not None:
        index = int(match["index"])
        ok = isinstance(node, list) and -len(node) <= index < len(node)
        return [node[index]] if ok else []
    if match["filter"] is not None:
        wanted = match["wanted"]
        if wanted[0] in "'\"":
            wanted = wanted[1:-1]
        items = node if isinstance(node, list) else []
        return [item for item in items if _filter_value(item, match["filter"]) == wanted]
    if isinstance(node, dict):
        return list(node.values())
    return list(node) if isinstance(node, list) else []


def _filter_value(item: Any, dotted: str) -> str | None:
    for part in dotted.split("."):
        if not isinstance(item, dict) or part not in item:
            return None
        item = item[part]
    return item if isinstance(item, str) else json.dumps(item)


def human_duration(seconds: float) -> str:
    """An age as the API server's Table prints it (`duration.HumanDuration` in apimachinery)."""
    whole = int(seconds)
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
    if whole < 120:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 10:
        rest = whole % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = whole // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def cell(kind: str, value: Any, now: datetime) -> Any:
    """A column's cell from the first value its JSONPath found (None: printed as <none>)."""
    if value is None:
        return None
    if kind == "integer" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if kind == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind == "boolean":
        return value if isinstance(value, bool) else None
    if kind == "date":
        if not isinstance(value, str):
            return None
        try:
            stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return "<invalid>"
        return human_duration((now - stamp).total_seconds())
    if kind == "string":
        if isinstance(value, str):
            return value
        return json.dumps(value) if not isinstance(value, bool) else str(value).lower()
    return None


def printer_columns(version: Obj) -> list[Obj]:
    """A CRD version's printer columns, or the Age column the server shows when it has none."""
    columns: list[Obj] = version.get("additionalPrinterColumns") or [AGE_COLUMN]
    return columns


def column_definitions(columns: list[Obj]) -> list[Obj]:
    """The Table's columnDefinitions: Name, then the printer columns."""
    defined = [dict(NAME_COLUMN)]
    for column in columns:
        description = column.get("description") or (
            f"Custom resource definition column (in JSONPath format): {column['jsonPath']}"
        )
        defined.append(
            {
                "name": column["name"],
                "type": column["type"],
                "format": column.get("format", ""),
                "description": description,
                "priority": column.get("priority", 0),
            }
        )
    return defined


def table(
    columns: list[Obj],
    objects: list[Obj],
    *,
    resource_version: str,
    include_object: str = "Metadata",
    now: datetime | None = None,
    with_definitions: bool = True,
) -> Obj:
    """A meta.k8s.io/v1 Table of `objects`."""
    moment = now or datetime.now(tz=UTC)
    rows = []
    for obj in objects:
        cells: list[Any] = [obj["metadata"]["name"]]
        for column in columns:
            found = json_path(obj, column["jsonPath"])
            cells.append(cell(column["type"], found[0] if found else None, moment))
        row: Obj = {"cells": cells}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            }
        rows.append(row)
    result: Obj = {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": column_definitions(columns) if with_definitions else [],
        "rows": rows,
    }
    return result
