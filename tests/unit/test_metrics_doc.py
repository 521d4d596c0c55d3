"""docs/metrics.md documents exactly the series the metrics module exports, with their labels."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from docpipe_worker import metrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"

# The suffix prometheus-client adds to the exposed family name, by metric type.
_EXPOSED_SUFFIX = {"counter": "_total", "info": "_info"}


def exported() -> dict[str, tuple[str, set[str]]]:
    """Exposed name -> (type, label names) for every metric defined in the metrics module."""
    result: dict[str, tuple[str, set[str]]] = {}
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        # prometheus-client keeps the type and the names privately.
        kind = str(value._type)
        name = str(value._name) + _EXPOSED_SUFFIX.get(kind, "")
        labels = {str(label) for label in value._labelnames}
        if kind == "info":
            labels = {"version", "revision"}  # the info's keys, set by the worker at start
        result[name] = (kind, labels)
    return result


def documented() -> dict[str, tuple[str, set[str]]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"\| `(docpipe_[a-z_]+)` \| (\w+) \| ([^|]*) \|", line)
        if match:
            labels = {x.strip() for x in match.group(3).split(",") if x.strip()}
            rows[match.group(1)] = (match.group(2), labels)
    return rows


def test_every_exported_metric_is_documented_with_its_type_and_labels() -> None:
    assert documented() == exported()


def test_the_module_defines_every_docpipe_metric_in_the_registry() -> None:
    registered = {m.name for m in REGISTRY.collect() if m.name.startswith("docpipe_")}
    defined = {name.removesuffix("_total").removesuffix("_info") for name in exported()}
    assert registered <= defined, registered - defined
