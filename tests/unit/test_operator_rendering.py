"""Rendering the children of a DocumentPipeline: Deployment, Service, PDB and PodMonitor."""

from __future__ import annotations

import json
from typing import Any

import pytest

from docpipe_operator.model import (
    RESERVED_ENV_NAMES,
    DocumentPipelineSpec,
    SpecError,
    parse_spec,
)
from docpipe_operator.rendering import (
    LABEL_PIPELINE,
    LABEL_REVISION,
    LABEL_TRACK,
    label_selector,
    render_canary_deployment,
    render_children,
    render_deployment,
    render_metrics_service,
    render_pod_disruption_budget,
    render_pod_monitor,
    selector_labels,
)

NAME = "docs"
NAMESPACE = "ingest"


def make_spec(**overrides: Any) -> DocumentPipelineSpec:
    spec: dict[str, Any] = {
        "worker": {
            "image": "ghcr.io/example/docpipe:1.0",
            "concurrency": 6,
            "terminationGracePeriodSeconds": 120,
            "resources": {"requests": {"cpu": "1"}, "limits": {"memory": "2Gi"}},
            "probes": {"liveness": {"periodSeconds": 15}, "readiness": {"failureThreshold": 4}},
        },
        "database": {"urlSecretRef": {"name": "docpipe-db", "key": "url"}},
        "embedder": {
            "apiKeySecretRef": {"name": "openai", "key": "api-key"},
            "model": "text-embedding-3-large",
            "dimensions": 1024,
        },
        "chunking": {"maxChars": 3000, "overlapChars": 300},
    }
    spec.update(overrides)
    return parse_spec(spec)


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    """Each variable's value, or its valueFrom for variables read from elsewhere."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(deployment)["env"]}


def deployment(spec: DocumentPipelineSpec | None = None, replicas: int = 3) -> dict[str, Any]:
    return render_deployment(NAME, NAMESPACE, spec or make_spec(), replicas=replicas)


def revision_of(rendered: dict[str, Any]) -> str:
    revision: str = rendered["spec"]["template"]["metadata"]["labels"][LABEL_REVISION]
    return revision


def test_deployment_has_a_deterministic_name_namespace_and_replicas() -> None:
    rendered = deployment(replicas=7)

    assert rendered["apiVersion"] == "apps/v1"
    assert rendered["kind"] == "Deployment"
    assert rendered["metadata"]["name"] == "docs-worker"
    assert rendered["metadata"]["namespace"] == NAMESPACE
    assert rendered["spec"]["replicas"] == 7


def test_rendering_twice_gives_identical_objects() -> None:
    first = render_children(NAME, NAMESPACE, make_spec(), replicas=2)
    second = render_children(NAME, NAMESPACE, make_spec(), replicas=2)

    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def test_children_carry_no_owner_references() -> None:
    for child in render_children(NAME, NAMESPACE, make_spec(), replicas=2):
        assert "ownerReferences" not in child["metadata"]


def test_deployment_and_pods_are_labelled_with_pipeline_and_revision() -> None:
    rendered = deployment()
    revision = revision_of(rendered)

    assert rendered["metadata"]["labels"][LABEL_PIPELINE] == NAME
    assert rendered["metadata"]["labels"][LABEL_REVISION] == revision
    assert rendered["spec"]["template"]["metadata"]["labels"][LABEL_PIPELINE] == NAME
    assert len(revision) == 10


def test_selector_is_the_stable_labels_without_the_revision() -> None:
    rendered = deployment()
    selector = rendered["spec"]["selector"]["matchLabels"]

    assert selector == selector_labels(NAME)
    assert LABEL_REVISION not in selector
    assert selector.items() <= rendered["spec"]["template"]["metadata"]["labels"].items()


def test_label_selector_string_lists_the_selector_labels() -> None:
    assert label_selector(NAME) == "app.kubernetes.io/component=worker,docpipe.io/pipeline=docs"


def test_revision_changes_when_the_pod_template_changes() -> None:
    before = revision_of(deployment(make_spec()))
    after = revision_of(deployment(make_spec(worker={"image": "ghcr.io/example/docpipe:1.1"})))

    assert before != after


def test_revision_ignores_the_replica_count() -> None:
    assert revision_of(deployment(replicas=1)) == revision_of(deployment(replicas=9))


def test_worker_is_told_its_revision_in_docpipe_revision() -> None:
    rendered = deployment()

    assert env_of(rendered)["DOCPIPE_REVISION"] == revision_of(rendered)


def test_worker_env_carries_the_pipeline_and_its_settings() -> None:
    env = env_of(deployment())

    assert env["DOCPIPE_PIPELINE"] == NAME
    assert env["DOCPIPE_CONCURRENCY"] == "6"
    assert env["DOCPIPE_METRICS_PORT"] == "9000"
    assert env["DOCPIPE_PARSER"] == "local"
    assert env["DOCPIPE_EMBEDDING_MODEL"] == "text-embedding-3-large"
    assert env["DOCPIPE_EMBEDDING_DIMENSIONS"] == "1024"
    assert env["DOCPIPE_CHUNK_MAX_CHARS"] == "3000"
    assert env["DOCPIPE_CHUNK_OVERLAP_CHARS"] == "300"


def test_unset_dimensions_leave_the_worker_default_in_force() -> None:
    spec = make_spec(embedder={"apiKeySecretRef": {"name": "openai", "key": "api-key"}})

    assert "DOCPIPE_EMBEDDING_DIMENSIONS" not in env_of(deployment(spec))


def test_secrets_reach_the_worker_by_reference_not_by_value() -> None:
    env = env_of(deployment())

    assert env["DATABASE_URL"] == {"secretKeyRef": {"name": "docpipe-db", "key": "url"}}
    assert env["OPENAI_API_KEY"] == {"secretKeyRef": {"name": "openai", "key": "api-key"}}


def test_optional_service_settings_are_set_only_when_given() -> None:
    plain = env_of(deployment())
    with_mocks = env_of(
        deployment(
            make_spec(
                parser={
                    "kind": "llamaparse",
                    "apiKeySecretRef": {"name": "llama", "key": "key"},
                    "baseUrl": "http://mocks:8080",
                },
                embedder={"baseUrl": "http://mocks:8080/v1"},
            )
        )
    )

    assert not {"OPENAI_BASE_URL", "LLAMAPARSE_BASE_URL", "LLAMA_CLOUD_API_KEY"} & set(plain)
    assert with_mocks["OPENAI_BASE_URL"] == "http://mocks:8080/v1"
    assert with_mocks["LLAMAPARSE_BASE_URL"] == "http://mocks:8080"
    assert with_mocks["LLAMA_CLOUD_API_KEY"] == {"secretKeyRef": {"name": "llama", "key": "key"}}
    assert with_mocks["DOCPIPE_PARSER"] == "llamaparse"
    assert "OPENAI_API_KEY" not in with_mocks


def test_provider_quotas_reach_the_worker_only_where_the_spec_sets_them() -> None:
    plain = env_of(deployment())
    limited = env_of(
        deployment(make_spec(quotas={"openai": {"tokensPerMinute": 90_000}, "llamaparse": {}}))
    )
    every = env_of(
        deployment(
            make_spec(
                quotas={
                    "openai": {"requestsPerMinute": 3000, "tokensPerMinute": 1_000_000},
                    "llamaparse": {"uploadsPerMinute": 300},
                }
            )
        )
    )

    names = {
        "DOCPIPE_OPENAI_REQUESTS_PER_MINUTE",
        "DOCPIPE_OPENAI_TOKENS_PER_MINUTE",
        "DOCPIPE_LLAMAPARSE_UPLOADS_PER_MINUTE",
    }
    assert not names & set(plain)
    assert names & set(limited) == {"DOCPIPE_OPENAI_TOKENS_PER_MINUTE"}
    assert limited["DOCPIPE_OPENAI_TOKENS_PER_MINUTE"] == "90000"
    assert every["DOCPIPE_OPENAI_REQUESTS_PER_MINUTE"] == "3000"
    assert every["DOCPIPE_OPENAI_TOKENS_PER_MINUTE"] == "1000000"
    assert every["DOCPIPE_LLAMAPARSE_UPLOADS_PER_MINUTE"] == "300"


def test_a_changed_quota_is_a_new_revision() -> None:
    before = deployment(make_spec(quotas={"openai": {"tokensPerMinute": 90_000}}))
    after = deployment(make_spec(quotas={"openai": {"tokensPerMinute": 120_000}}))

    assert revision_of(before) != revision_of(after)


def test_extra_env_follows_the_operator_set_variables() -> None:
    spec = make_spec(
        worker={
            "image": "x",
            "extraEnv": [
                {"name": "DOCPIPE_LOG_LEVEL", "value": "DEBUG"},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k"}}},
            ],
        }
    )

    names = [e["name"] for e in container(deployment(spec))["env"]]

    assert names[-2:] == ["DOCPIPE_LOG_LEVEL", "TOKEN"]
    assert env_of(deployment(spec))["TOKEN"] == {"secretKeyRef": {"name": "t", "key": "k"}}


def test_every_variable_the_operator_sets_is_reserved_from_extra_env() -> None:
    spec = make_spec(
        parser={
            "kind": "llamaparse",
            "apiKeySecretRef": {"name": "l", "key": "k"},
            "baseUrl": "http://l",
        },
        embedder={
            "apiKeySecretRef": {"name": "o", "key": "k"},
            "baseUrl": "http://o",
            "dimensions": 256,
        },
        quotas={
            "openai": {"requestsPerMinute": 3000, "tokensPerMinute": 1_000_000},
            "llamaparse": {"uploadsPerMinute": 300},
        },
        rollout={"goldenSet": {"configMap": "samples"}},
    )

    canary = render_canary_deployment(
        NAME, NAMESPACE, spec, replicas=1, canary_weight=0.2, stable_revision="abc"
    )
    assert set(env_of(deployment(spec))) | set(env_of(canary)) == set(RESERVED_ENV_NAMES)


def test_canary_runs_the_spec_revision_told_it_is_a_canary_with_its_weight() -> None:
    spec = make_spec()
    canary = render_canary_deployment(NAME, NAMESPACE, spec, replicas=2, canary_weight=0.25)

    assert canary["metadata"]["name"] == "docs-worker-canary"
    assert canary["spec"]["replicas"] == 2
    # Same revision as the stable Deployment will get on promotion: the canary env is not hashed.
    assert revision_of(canary) == revision_of(deployment(spec))
    assert env_of(canary)["DOCPIPE_REVISION"] == revision_of(canary)
    assert env_of(canary)["DOCPIPE_CANARY"] == "true"
    assert env_of(canary)["DOCPIPE_CANARY_WEIGHT"] == "0.25"
    assert "DOCPIPE_CANARY" not in env_of(deployment(spec))


def test_canary_pods_are_told_apart_from_stable_pods_but_share_the_pipeline_selector() -> None:
    canary = render_canary_deployment(NAME, NAMESPACE, make_spec(), replicas=1, canary_weight=0.2)
    stable = deployment()
    canary_selector = canary["spec"]["selector"]["matchLabels"]
    pod_labels = canary["spec"]["template"]["metadata"]["labels"]

    assert canary_selector == {**selector_labels(NAME), LABEL_TRACK: "canary"}
    assert all(pod_labels[k] == v for k, v in canary_selector.items())
    # The stable's own pods never match the canary's selector.
    stable_labels = stable["spec"]["template"]["metadata"]["labels"]
    assert LABEL_TRACK not in stable_labels
    # Both are workers of the pipeline: scraped, counted and disrupted together.
    assert all(pod_labels[k] == v for k, v in selector_labels(NAME).items())


def test_a_kept_template_stays_byte_for_byte_while_replicas_follow() -> None:
    old = deployment(make_spec())
    new_spec = make_spec(worker={"image": "ghcr.io/example/docpipe:2.0"})

    kept = render_deployment(
        NAME, NAMESPACE, new_spec, replicas=5, template=old["spec"]["template"]
    )

    assert kept["spec"]["template"] == old["spec"]["template"]
    assert kept["metadata"]["labels"][LABEL_REVISION] == revision_of(old)
    assert kept["spec"]["replicas"] == 5
    assert revision_of(deployment(new_spec)) != revision_of(old)


def test_stable_surge_comes_from_the_rollout_policy() -> None:
    rendered = deployment(make_spec(rollout={"maxSurgePercent": 50}))

    assert rendered["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": "50%", "maxUnavailable": 0}


def test_metrics_port_is_named_metrics() -> None:
    ports = container(deployment(make_spec(worker={"image": "x", "metricsPort": 9100})))["ports"]

    assert ports == [{"name": "metrics", "containerPort": 9100, "protocol": "TCP"}]


def test_liveness_probes_healthz_and_readiness_probes_readyz_with_spec_timings() -> None:
    rendered = container(deployment())

    assert rendered["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert rendered["livenessProbe"]["periodSeconds"] == 15
    assert rendered["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert rendered["readinessProbe"]["failureThreshold"] == 4


def test_grace_period_comes_from_spec_and_the_worker_stops_waiting_before_it() -> None:
    rendered = deployment()

    assert rendered["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 120
    assert int(env_of(rendered)["DOCPIPE_SHUTDOWN_GRACE_SECONDS"]) < 120


def test_worker_runs_as_non_root_on_a_read_only_root_filesystem() -> None:
    rendered = deployment()
    pod = rendered["spec"]["template"]["spec"]
    security = container(rendered)["securityContext"]

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "tmp", "mountPath": "/tmp"} in container(rendered)["volumeMounts"]


def test_worker_gets_the_spec_resources_and_runs_docpipe_worker() -> None:
    rendered = container(deployment())

    assert rendered["resources"] == {"requests": {"cpu": "1"}, "limits": {"memory": "2Gi"}}
    assert rendered["command"] == ["docpipe", "worker"]
    assert rendered["image"] == "ghcr.io/example/docpipe:1.0"


def test_mutating_a_rendered_object_does_not_change_the_spec() -> None:
    spec = make_spec()
    container(deployment(spec))["resources"]["limits"]["memory"] = "1Ti"

    assert container(deployment(spec))["resources"]["limits"]["memory"] == "2Gi"


def test_metrics_service_is_headless_and_selects_the_workers() -> None:
    service = render_metrics_service(NAME, NAMESPACE, make_spec())

    assert service["metadata"]["name"] == "docs-worker-metrics"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == selector_labels(NAME)
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


def test_disruption_budget_limits_unavailable_workers() -> None:
    budget = render_pod_disruption_budget(
        NAME, NAMESPACE, make_spec(disruption={"maxUnavailable": 2})
    )

    assert budget["apiVersion"] == "policy/v1"
    assert budget["metadata"]["name"] == "docs-worker"
    assert budget["spec"] == {
        "maxUnavailable": 2,
        "selector": {"matchLabels": selector_labels(NAME)},
    }


def test_pod_monitor_scrapes_the_metrics_port_with_the_requested_labels() -> None:
    spec = make_spec(
        metrics={"podMonitor": {"enabled": True, "interval": "30s", "labels": {"release": "prom"}}}
    )

    monitor = render_pod_monitor(NAME, NAMESPACE, spec)

    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "PodMonitor"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"] == selector_labels(NAME)
    assert monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s"}
    ]


@pytest.mark.parametrize(
    ("enabled", "kinds"),
    [
        (False, ["Deployment", "Service", "PodDisruptionBudget"]),
        (True, ["Deployment", "Service", "PodDisruptionBudget", "PodMonitor"]),
    ],
)
def test_children_include_a_pod_monitor_only_when_enabled(enabled: bool, kinds: list[str]) -> None:
    spec = make_spec(metrics={"podMonitor": {"enabled": enabled}})

    rendered = render_children(NAME, NAMESPACE, spec, replicas=1)

    assert [child["kind"] for child in rendered] == kinds


def test_name_unfit_for_child_objects_is_refused() -> None:
    with pytest.raises(SpecError, match="metadata"):
        render_children("My.Docs", NAMESPACE, make_spec(), replicas=1)
