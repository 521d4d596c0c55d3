"""The DocumentPipeline model: defaults, camelCase aliases, bounds and cross-field rules."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from docpipe_operator.model import (
    Condition,
    DocumentPipeline,
    DocumentPipelineStatus,
    SpecError,
    check_name,
    dump,
    parse_spec,
)


def minimal_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "worker": {"image": "ghcr.io/example/docpipe:1.0"},
        "database": {"urlSecretRef": {"name": "db", "key": "url"}},
        "embedder": {"apiKeySecretRef": {"name": "openai", "key": "api-key"}},
    }
    spec.update(overrides)
    return spec


def test_minimal_spec_gets_working_defaults() -> None:
    spec = parse_spec(minimal_spec())

    assert spec.scaling.min_replicas == 1
    assert spec.scaling.max_replicas == 10
    assert spec.scaling.interval_seconds == 5
    assert spec.scaling.scale_to_zero.enabled is False
    assert spec.worker.metrics_port == 9000
    assert spec.worker.image_pull_policy == "IfNotPresent"
    assert spec.parser.kind == "local"
    assert spec.metrics.source == "pods"
    assert spec.replicas is None


def test_dump_uses_camel_case_keys_and_leaves_out_unset_optionals() -> None:
    dumped = dump(parse_spec(minimal_spec()))

    assert dumped["scaling"]["scaleDownStabilizationSeconds"] == 300
    assert dumped["worker"]["terminationGracePeriodSeconds"] == 60
    assert "prometheus" not in dumped["metrics"]
    assert "replicas" not in dumped


def test_dumped_spec_parses_back_to_the_same_spec() -> None:
    spec = parse_spec(minimal_spec(scaling={"minReplicas": 2, "maxReplicas": 4}))

    assert parse_spec(dump(spec)) == spec


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"scaling": {"minReplicas": -1}}, "spec.scaling.minReplicas"),
        ({"scaling": {"maxReplicas": 0}}, "spec.scaling.maxReplicas"),
        ({"scaling": {"intervalSeconds": 0}}, "spec.scaling.intervalSeconds"),
        ({"scaling": {"maxScaleUpStep": 0}}, "spec.scaling.maxScaleUpStep"),
        ({"worker": {"image": "x", "concurrency": 0}}, "spec.worker.concurrency"),
        ({"worker": {"image": ""}}, "spec.worker.image"),
        ({"worker": {"image": "x", "imagePullPolicy": "Sometimes"}}, "spec.worker.imagePullPolicy"),
        ({"embedder": {"baseUrl": "http://m", "dimensions": 4096}}, "spec.embedder.dimensions"),
        ({"database": {}}, "spec.database.urlSecretRef"),
    ],
)
def test_out_of_bounds_value_is_refused_naming_the_field(
    overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        parse_spec(minimal_spec(**overrides))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"scaling": {"minReplicas": 5, "maxReplicas": 2}}, "minReplicas must be <="),
        ({"scaling": {"minReplicas": 0}}, "scaleToZero.enabled must be true exactly when"),
        (
            {"scaling": {"minReplicas": 1, "scaleToZero": {"enabled": True}}},
            "scaleToZero.enabled must be true exactly when",
        ),
        ({"metrics": {"source": "prometheus"}}, "metrics.prometheus.url is required"),
        ({"chunking": {"maxChars": 1000, "overlapChars": 500}}, "less than half"),
        ({"parser": {"kind": "llamaparse"}}, "parser.apiKeySecretRef is required"),
        ({"embedder": {}}, "embedder.apiKeySecretRef is required"),
        (
            {"worker": {"image": "x", "extraEnv": [{"name": "DATABASE_URL", "value": "x"}]}},
            "may not set a variable the operator sets",
        ),
        (
            {"worker": {"image": "x", "extraEnv": [{"name": "A"}, {"name": "A"}]}},
            "names must be unique",
        ),
        (
            {"worker": {"image": "x", "extraEnv": [{"name": "A", "value": "1", "valueFrom": {}}]}},
            "value or valueFrom, not both",
        ),
    ],
)
def test_inconsistent_fields_are_refused_with_a_message(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec(minimal_spec(**overrides))


def test_scale_to_zero_with_min_replicas_zero_is_accepted() -> None:
    spec = parse_spec(minimal_spec(scaling={"minReplicas": 0, "scaleToZero": {"enabled": True}}))

    assert spec.scaling.scale_to_zero.idle_seconds == 600


def test_prometheus_source_with_url_is_accepted() -> None:
    spec = parse_spec(
        minimal_spec(metrics={"source": "prometheus", "prometheus": {"url": "http://prom:9090"}})
    )

    assert spec.metrics.prometheus is not None
    assert spec.metrics.prometheus.url == "http://prom:9090"


def test_embedder_without_key_is_accepted_when_it_points_at_a_compatible_server() -> None:
    spec = parse_spec(minimal_spec(embedder={"baseUrl": "http://mocks:8080/v1"}))

    assert spec.embedder.api_key_secret_ref is None


def test_spec_error_is_a_message_not_a_validation_traceback() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(minimal_spec(scaling={"minReplicas": -1, "maxReplicas": 0}))

    assert "spec.scaling.minReplicas" in str(caught.value)
    assert "spec.scaling.maxReplicas" in str(caught.value)
    assert caught.value.__cause__ is None


def test_status_dumps_camel_case_with_rfc3339_transition_times() -> None:
    status = DocumentPipelineStatus(
        phase="Running",
        ready_replicas=3,
        conditions=[
            Condition(
                type="Ready",
                status="True",
                reason="WorkersReady",
                last_transition_time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
            )
        ],
    )

    dumped = dump(status)

    assert dumped["readyReplicas"] == 3
    assert dumped["conditions"][0]["lastTransitionTime"] == "2026-01-02T03:04:05Z"
    assert "queueDepth" not in dumped


def test_whole_object_parses_with_an_empty_status() -> None:
    body = {
        "apiVersion": "docpipe.io/v1alpha1",
        "kind": "DocumentPipeline",
        "metadata": {"name": "docs", "namespace": "default"},
        "spec": minimal_spec(),
    }

    pipeline = DocumentPipeline.model_validate(body)

    assert pipeline.status.phase is None
    assert pipeline.spec.worker.image == "ghcr.io/example/docpipe:1.0"


@pytest.mark.parametrize("name", ["docs", "a", "team-a-pipeline-2", "x" * 48])
def test_valid_pipeline_name_is_accepted(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["Docs", "1docs", "docs-", "my.docs", "x" * 49, ""])
def test_pipeline_name_unfit_for_child_names_is_refused(name: str) -> None:
    with pytest.raises(SpecError, match=r"metadata\.name"):
        check_name(name)


@pytest.mark.parametrize(
    ("where", "spec"),
    [
        ("spec.worker.nodeSelecter", minimal_spec(worker={"image": "x", "nodeSelecter": {}})),
        ("spec.scaling.maxReplica", minimal_spec(scaling={"maxReplica": 3})),
        ("spec.autoscale", minimal_spec(autoscale=True)),
    ],
)
def test_an_unknown_spec_field_is_refused_naming_it(where: str, spec: dict[str, Any]) -> None:
    with pytest.raises(SpecError, match=where.replace(".", r"\.") + ": unknown field"):
        parse_spec(spec)


@pytest.mark.parametrize(
    "image",
    [
        "Not A Valid Image!!",
        "ghcr.io/Example/docpipe:1.0",
        "docpipe:",
        "docpipe:1.0:2",
        "ghcr.io/example/docpipe@sha256:short",
        "/docpipe",
        "docpipe worker",
    ],
)
def test_an_invalid_image_reference_is_refused(image: str) -> None:
    with pytest.raises(SpecError, match=r"spec\.worker.*must be an image reference"):
        parse_spec(minimal_spec(worker={"image": image}))


@pytest.mark.parametrize(
    "image",
    [
        "docpipe",
        "ghcr.io/example/docpipe:1.0",
        "localhost:5000/docpipe-worker:0.1.0",
        "registry.example.com/a/b/c/docpipe_worker:v1.2.3-rc.1",
        "docpipe@sha256:" + "0123456789abcdef" * 4,
        "ghcr.io/example/docpipe:1.0@sha256:" + "0123456789abcdef" * 4,
    ],
)
def test_a_valid_image_reference_is_accepted(image: str) -> None:
    assert parse_spec(minimal_spec(worker={"image": image})).worker.image == image


def test_a_status_with_fields_this_operator_does_not_know_still_reads() -> None:
    # Kopf keeps its own fields in the status, and a newer operator may have written more.
    status = DocumentPipelineStatus.model_validate(
        {
            "phase": "Running",
            "kopf": {"progress": {}},
            "conditions": [{"type": "Ready", "status": "True", "severity": "Info"}],
            "rollout": {"phase": "Progressing", "futureField": 1},
        }
    )

    assert status.phase == "Running"
    assert status.rollout is not None
    assert status.rollout.phase == "Progressing"


def test_a_condition_carries_the_generation_it_was_set_from() -> None:
    condition = Condition(type="Ready", status="True", observed_generation=4)

    assert dump(condition)["observedGeneration"] == 4
