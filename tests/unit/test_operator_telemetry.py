"""Parsing worker metrics and choosing pods to scrape (pure parts of telemetry and reconcile)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from docpipe_contracts import metrics
from docpipe_operator import telemetry
from docpipe_operator.decision import contains


def _exposition() -> str:
    """What a worker serves, written with the worker's own metric definitions' names."""
    registry = CollectorRegistry()
    in_flight = Gauge(telemetry.IN_FLIGHT, "x", metrics.JOB_LABELS, registry=registry)
    done = Counter(telemetry.SUCCEEDED, "x", metrics.JOB_LABELS, registry=registry)
    ready = Gauge(telemetry.QUEUE_READY, "x", ("pipeline",), registry=registry)
    oldest = Gauge(telemetry.QUEUE_OLDEST, "x", ("pipeline",), registry=registry)
    in_flight.labels("docs", "r1").set(2)
    in_flight.labels("docs", "r2").set(1)
    in_flight.labels("other", "r1").set(9)
    done.labels("docs", "r1").inc(10)
    done.labels("docs", "r2").inc(5)
    ready.labels("docs").set(40)
    oldest.labels("docs").set(12.5)
    ready.labels("other").set(99)
    return generate_latest(registry).decode()


def test_metric_names_are_the_workers_own() -> None:
    assert telemetry.IN_FLIGHT == "docpipe_jobs_in_flight"
    assert telemetry.SUCCEEDED == "docpipe_jobs_succeeded"


def test_a_pipelines_figures_are_summed_over_revisions_and_other_pipelines_ignored() -> None:
    reading = telemetry.parse_worker_metrics(_exposition(), "docs")
    assert reading.in_flight == 3
    assert reading.succeeded == 15
    assert reading.queue is not None
    assert reading.queue.ready_jobs == 40
    assert reading.queue.oldest_ready_age_seconds == 12.5


def test_a_worker_without_the_queue_gauges_reports_no_queue() -> None:
    reading = telemetry.parse_worker_metrics(_exposition(), "absent")
    assert reading.queue is None
    assert reading.in_flight == 0


def test_deleted_and_finished_pods_are_not_scraped() -> None:
    pods: list[dict[str, Any]] = [
        {
            "metadata": {"name": "a"},
            "status": {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
        },
        {"metadata": {"name": "b", "deletionTimestamp": "now"}, "status": {}},
        {"metadata": {"name": "c"}, "status": {"phase": "Failed"}},
        {"metadata": {"name": "d"}, "status": {"podIP": "10.0.0.4"}},
    ]
    targets = telemetry.pod_targets(pods)
    assert [(t.name, t.ready) for t in targets] == [("a", True), ("d", False)]


def test_server_defaults_are_not_drift_but_changed_values_and_list_lengths_are() -> None:
    wanted = {"spec": {"containers": [{"name": "w", "image": "i:1"}]}}
    defaulted = {"spec": {"containers": [{"name": "w", "image": "i:1", "tmp": "x"}], "x": 1}}
    assert contains(defaulted, wanted)
    assert not contains({"spec": {"containers": [{"name": "w", "image": "i:2"}]}}, wanted)
    assert not contains({"spec": {"containers": []}}, wanted)
