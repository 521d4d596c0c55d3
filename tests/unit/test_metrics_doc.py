"""docs/metrics.md documents exactly the series the metrics contract names, with their labels."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import REGISTRY

import docpipe_api.metrics
import docpipe_ingest.metrics
import docpipe_providers.metrics
import docpipe_queue.metrics
from docpipe_contracts import metrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"

# The layers' instrument modules, imported so that the registry holds what every process exports.
INSTRUMENTS = (
    docpipe_queue.metrics,
    docpipe_providers.metrics,
    docpipe_ingest.metrics,
    docpipe_api.metrics,
)


def exported() -> dict[str, tuple[str, set[str]]]:
    """Exposed name -> (type, label names) for every metric the contract names."""
    result: dict[str, tuple[str, set[str]]] = {}
    for spec in metrics.all_specs():
        labels = set(spec.labels)
        if spec.kind == "info":
            labels = set(metrics.BUILD_INFO_KEYS)  # the info's keys, set by each process at start
        result[spec.sample_name] = (spec.kind, labels)
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


def test_the_contract_names_every_docpipe_metric_in_the_registry() -> None:
    registered = {m.name for m in REGISTRY.collect() if m.name.startswith("docpipe_")}
    defined = {spec.name for spec in metrics.all_specs()}
    assert registered <= defined, registered - defined


def test_every_metric_the_contract_names_has_an_instrument() -> None:
    registered = {m.name for m in REGISTRY.collect() if m.name.startswith("docpipe_")}
    assert {spec.name for spec in metrics.all_specs()} <= registered
