"""The emulator's Table output matches the API server's: the Name column, the CRD's printer
columns read by JSONPath and typed, ages as `kubectl get` shows them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.apiserver_table import (
    cell,
    column_definitions,
    human_duration,
    json_path,
    printer_columns,
    table,
    wants_table,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
OBJ: dict[str, Any] = {
    "metadata": {"name": "docs", "creationTimestamp": "2026-01-02T02:59:05Z"},
    "status": {
        "readyReplicas": 2,
        "phase": "Running",
        "conditions": [
            {"type": "Scaling", "status": "False"},
            {"type": "Ready", "status": "True"},
        ],
    },
}


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (-5, "<invalid>"),
        (-1, "0s"),
        (0, "0s"),
        (119, "119s"),
        (120, "2m"),
        (125, "2m5s"),
        (600, "10m"),
        (179 * 60, "179m"),
        (3 * 3600, "3h"),
        (3 * 3600 + 12 * 60, "3h12m"),
        (8 * 3600 + 59, "8h"),
        (47 * 3600, "47h"),
        (2 * 86400, "2d"),
        (2 * 86400 + 3 * 3600, "2d3h"),
        (30 * 86400, "30d"),
        (800 * 86400, "2y70d"),
        (3000 * 86400, "8y"),
    ],
)
def test_ages_read_as_kubectl_shows_them(seconds: int, shown: str) -> None:
    assert human_duration(seconds) == shown


@given(st.integers(min_value=0, max_value=10**9))
def test_an_age_is_never_empty_and_starts_with_a_digit(seconds: int) -> None:
    assert human_duration(seconds)[0].isdigit()


@pytest.mark.parametrize(
    ("path", "found"),
    [
        (".status.readyReplicas", [2]),
        (".status.missing", []),
        (".status.conditions[1].type", ["Ready"]),
        (".status.conditions[-1].status", ["True"]),
        (".status.conditions[*].type", ["Scaling", "Ready"]),
        ('.status.conditions[?(@.type=="Ready")].status', ["True"]),
        ("{.metadata['name']}", ["docs"]),
    ],
)
def test_json_paths_find_what_kubectl_finds(path: str, found: list[Any]) -> None:
    assert json_path(OBJ, path) == found


def test_a_json_path_with_unsupported_syntax_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported JSONPath"):
        json_path(OBJ, ".status..phase")


def test_cells_are_typed_by_the_column_type() -> None:
    assert cell("integer", 2.0, NOW) == 2
    assert cell("number", 2, NOW) == 2.0
    assert cell("boolean", "yes", NOW) is None
    assert cell("string", 3, NOW) == "3"
    assert cell("date", "2026-01-02T02:59:05Z", NOW) == "5m"
    assert cell("date", "yesterday", NOW) == "<invalid>"
    assert cell("integer", None, NOW) is None


def test_a_table_has_the_name_then_the_printer_columns_and_the_row_metadata() -> None:
    columns: list[dict[str, Any]] = [
        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
        {"name": "Queue", "type": "integer", "jsonPath": ".status.queueDepth"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Reason", "type": "string", "jsonPath": ".status.phase", "priority": 1},
    ]
    answer = table(columns, [OBJ], resource_version="7", now=NOW)
    assert (answer["kind"], answer["apiVersion"]) == ("Table", "meta.k8s.io/v1")
    assert answer["metadata"] == {"resourceVersion": "7"}
    definitions = answer["columnDefinitions"]
    assert [d["name"] for d in definitions] == ["Name", "Ready", "Queue", "Age", "Reason"]
    assert definitions[0]["format"] == "name"
    assert definitions[4]["priority"] == 1
    assert definitions[1]["description"] == (
        "Custom resource definition column (in JSONPath format): .status.readyReplicas"
    )
    (row,) = answer["rows"]
    assert row["cells"] == ["docs", 2, None, "5m", "Running"]
    assert row["object"] == {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": OBJ["metadata"],
    }
    assert (
        "object"
        not in table(columns, [OBJ], resource_version="7", include_object="None")["rows"][0]
    )


def test_a_crd_without_printer_columns_shows_its_age() -> None:
    assert [d["name"] for d in column_definitions(printer_columns({}))] == ["Name", "Age"]
    later = NOW + timedelta(hours=1)
    (row,) = table(printer_columns({}), [OBJ], resource_version="1", now=later)["rows"]
    assert row["cells"] == ["docs", "65m"]


def test_kubectls_accept_header_asks_for_a_table() -> None:
    kubectl = (
        "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;"
        "g=meta.k8s.io,application/json"
    )
    assert wants_table(kubectl)
    assert not wants_table("application/json")
    assert not wants_table("")
