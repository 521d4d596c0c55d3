"""The child objects of a DocumentPipeline, rendered from its spec as plain dicts.

Pure: the same name, namespace and spec always give the same objects, byte for byte. Owner
references are left to the caller (Kopf's `adopt`), which also applies the objects.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from docpipe_operator.model import (
    DocumentPipelineSpec,
    LivenessProbeSpec,
    ReadinessProbeSpec,
    SecretKeyRef,
    check_name,
)

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
# Every child and every worker pod carries it: the operator's watches select on it.
MANAGED_BY = "docpipe-operator"
LABEL_PIPELINE = "docpipe.io/pipeline"
LABEL_REVISION = "docpipe.io/revision"
# Only canary pods carry it: their Deployment selects on it, so the two Deployments' pods differ.
LABEL_TRACK = "docpipe.io/track"
TRACK_CANARY = "canary"

CONTAINER_NAME = "worker"
METRICS_PORT_NAME = "metrics"
WORKER_COMMAND = ("docpipe", "worker")
# Any non-root uid works with the read-only image; a fixed one makes runAsNonRoot checkable even
# when the image names its user rather than giving a number.
WORKER_UID = 10001


def worker_name(pipeline: str) -> str:
    """Name of the worker Deployment, PodDisruptionBudget and PodMonitor of a pipeline."""
    return f"{pipeline}-worker"


def canary_name(pipeline: str) -> str:
    """Name of the canary Deployment, which runs a new revision during its analysis."""
    return f"{pipeline}-worker-canary"


def metrics_service_name(pipeline: str) -> str:
    """Name of the headless Service over the workers' metrics ports."""
    return f"{pipeline}-worker-metrics"


def selector_labels(pipeline: str) -> dict[str, str]:
    """The labels that select a pipeline's worker pods; stable across revisions."""
    return {LABEL_PIPELINE: pipeline, LABEL_COMPONENT: "worker"}


def label_selector(pipeline: str) -> str:
    """The worker pods' selector in `k=v,k=v` form, for status.selector (the scale subresource)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(pipeline).items()))


def _labels(pipeline: str) -> dict[str, str]:
    return {
        LABEL_NAME: "docpipe",
        LABEL_INSTANCE: pipeline,
        LABEL_MANAGED_BY: MANAGED_BY,
        **selector_labels(pipeline),
    }


def _metadata(name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels}


def _secret_env(name: str, ref: SecretKeyRef) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def shutdown_grace_seconds(spec: DocumentPipelineSpec) -> int:
    """How long a stopping worker waits for its jobs: well within the pod's grace period."""
    # The kubelet kills the pod when terminationGracePeriodSeconds runs out; the worker must have
    # released its leases by then, so it stops waiting a quarter of the period earlier.
    return spec.worker.termination_grace_period_seconds * 3 // 4


def render_env(pipeline: str, spec: DocumentPipelineSpec) -> list[dict[str, Any]]:
    """The worker container's environment, without DOCPIPE_REVISION (it depends on the rest)."""
    worker = spec.worker
    env: list[dict[str, Any]] = [
        {"name": "DOCPIPE_PIPELINE", "value": pipeline},
        {"name": "DOCPIPE_CONCURRENCY", "value": str(worker.concurrency)},
        {"name": "DOCPIPE_METRICS_PORT", "value": str(worker.metrics_port)},
        {"name": "DOCPIPE_PARSER", "value": spec.parser.kind},
        {"name": "DOCPIPE_EMBEDDING_MODEL", "value": spec.embedder.model},
        {"name": "DOCPIPE_CHUNK_MAX_CHARS", "value": str(spec.chunking.max_chars)},
        {"name": "DOCPIPE_CHUNK_OVERLAP_CHARS", "value": str(spec.chunking.overlap_chars)},
        {"name": "DOCPIPE_SHUTDOWN_GRACE_SECONDS", "value": str(shutdown_grace_seconds(spec))},
        _secret_env("DATABASE_URL", spec.database.url_secret_ref),
    ]
    if spec.embedder.dimensions is not None:
        # Left to the worker's default otherwise: the database's vector size is fixed at migration.
        env.append({"name": "DOCPIPE_EMBEDDING_DIMENSIONS", "value": str(spec.embedder.dimensions)})
    if spec.embedder.api_key_secret_ref is not None:
        env.append(_secret_env("OPENAI_API_KEY", spec.embedder.api_key_secret_ref))
    if spec.embedder.base_url is not None:
        env.append({"name": "OPENAI_BASE_URL", "value": spec.embedder.base_url})
    if spec.parser.api_key_secret_ref is not None:
        env.append(_secret_env("LLAMA_CLOUD_API_KEY", spec.parser.api_key_secret_ref))
    if spec.parser.base_url is not None:
        env.append({"name": "LLAMAPARSE_BASE_URL", "value": spec.parser.base_url})
    env.extend(_quota_env(spec))
    for extra in worker.extra_env:
        env.append(extra.model_dump(by_alias=True, exclude_none=True, mode="json"))
    return env


def _quota_env(spec: DocumentPipelineSpec) -> list[dict[str, Any]]:
    """The provider quotas the spec sets (an unset one is learned from the provider's headers)."""
    quotas = spec.quotas
    limits = (
        ("DOCPIPE_OPENAI_REQUESTS_PER_MINUTE", quotas.openai.requests_per_minute),
        ("DOCPIPE_OPENAI_TOKENS_PER_MINUTE", quotas.openai.tokens_per_minute),
        ("DOCPIPE_LLAMAPARSE_UPLOADS_PER_MINUTE", quotas.llamaparse.uploads_per_minute),
    )
    return [{"name": name, "value": str(value)} for name, value in limits if value is not None]


def _probe(path: str, settings: LivenessProbeSpec | ReadinessProbeSpec) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": METRICS_PORT_NAME},
        "initialDelaySeconds": settings.initial_delay_seconds,
        "periodSeconds": settings.period_seconds,
        "timeoutSeconds": settings.timeout_seconds,
        "failureThreshold": settings.failure_threshold,
    }


def _pod_template_without_revision(pipeline: str, spec: DocumentPipelineSpec) -> dict[str, Any]:
    worker = spec.worker
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": worker.image,
        "imagePullPolicy": worker.image_pull_policy,
        "command": list(WORKER_COMMAND),
        "env": render_env(pipeline, spec),
        "ports": [
            {"name": METRICS_PORT_NAME, "containerPort": worker.metrics_port, "protocol": "TCP"}
        ],
        "livenessProbe": _probe("/healthz", worker.probes.liveness),
        "readinessProbe": _probe("/readyz", worker.probes.readiness),
        "resources": copy.deepcopy(worker.resources),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        # The root filesystem is read-only; parsers and tempfile still need a scratch directory.
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    pod_spec: dict[str, Any] = {
        # Workers talk to Postgres and HTTP APIs, never to the Kubernetes API.
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": worker.termination_grace_period_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if worker.service_account_name is not None:
        pod_spec["serviceAccountName"] = worker.service_account_name
    if worker.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in worker.image_pull_secrets]
    return {"metadata": {"labels": _labels(pipeline)}, "spec": pod_spec}


def template_revision(template: dict[str, Any]) -> str:
    """A short hash of a pod template: equal templates give equal revisions, on any machine."""
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:10]


def render_pod_template(pipeline: str, spec: DocumentPipelineSpec) -> dict[str, Any]:
    """The worker pod template, labelled with its revision and told it in DOCPIPE_REVISION."""
    template = _pod_template_without_revision(check_name(pipeline), spec)
    revision = template_revision(template)
    template["metadata"]["labels"][LABEL_REVISION] = revision
    env = template["spec"]["containers"][0]["env"]
    env.insert(1, {"name": "DOCPIPE_REVISION", "value": revision})
    return template


def revision_of(template: Mapping[str, Any]) -> str | None:
    """The revision a (rendered or stored) pod template carries in its labels."""
    labels = (template.get("metadata") or {}).get("labels") or {}
    revision: str | None = labels.get(LABEL_REVISION)
    return revision


def render_deployment(
    pipeline: str,
    namespace: str,
    spec: DocumentPipelineSpec,
    *,
    replicas: int,
    template: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The worker Deployment running `replicas` pods of the spec's template.

    `template` keeps another pod template instead (the stable revision's, while a canary of the
    spec's revision is analysed or after it was rolled back).
    """
    template = (
        copy.deepcopy(dict(template))
        if template is not None
        else render_pod_template(pipeline, spec)
    )
    labels = {**_labels(pipeline), LABEL_REVISION: revision_of(template) or ""}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(worker_name(pipeline), namespace, labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(pipeline)},
            # Never go below the decided capacity during an update: surge, then retire.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {
                    "maxSurge": f"{spec.rollout.max_surge_percent}%",
                    "maxUnavailable": 0,
                },
            },
            "revisionHistoryLimit": 3,
            "template": template,
        },
    }


def render_canary_deployment(
    pipeline: str,
    namespace: str,
    spec: DocumentPipelineSpec,
    *,
    replicas: int,
    failure_hold_seconds: float,
) -> dict[str, Any]:
    """The canary Deployment: `replicas` pods of the spec's revision, told they are a canary.

    DOCPIPE_CANARY makes their failures hand a job's attempt back (a bad revision kills no
    document); DOCPIPE_FAILURE_HOLD_SECONDS keeps a failed job's slot for as long as a stable
    worker takes per job, so a canary that fails fast claims no more than its share. Both are
    added after the revision hash: the canary's revision is the one the stable takes on promotion.
    """
    template = render_pod_template(pipeline, spec)
    template["metadata"]["labels"][LABEL_TRACK] = TRACK_CANARY
    env = template["spec"]["containers"][0]["env"]
    env.append({"name": "DOCPIPE_CANARY", "value": "true"})
    env.append({"name": "DOCPIPE_FAILURE_HOLD_SECONDS", "value": f"{failure_hold_seconds:g}"})
    labels = {
        **_labels(pipeline),
        LABEL_REVISION: revision_of(template) or "",
        LABEL_TRACK: TRACK_CANARY,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(canary_name(pipeline), namespace, labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {**selector_labels(pipeline), LABEL_TRACK: TRACK_CANARY}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
            },
            "revisionHistoryLimit": 1,
            "template": template,
        },
    }


def render_metrics_service(
    pipeline: str, namespace: str, spec: DocumentPipelineSpec
) -> dict[str, Any]:
    """A headless Service listing every worker pod's metrics port."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(
            metrics_service_name(check_name(pipeline)), namespace, _labels(pipeline)
        ),
        "spec": {
            "clusterIP": "None",
            # Metrics matter most when a pod is not ready (starting, stuck): list those too.
            "publishNotReadyAddresses": True,
            "selector": selector_labels(pipeline),
            "ports": [
                {
                    "name": METRICS_PORT_NAME,
                    "port": spec.worker.metrics_port,
                    "targetPort": METRICS_PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def render_pod_disruption_budget(
    pipeline: str, namespace: str, spec: DocumentPipelineSpec
) -> dict[str, Any]:
    """A PodDisruptionBudget limiting how many workers a drain may stop at once."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(worker_name(check_name(pipeline)), namespace, _labels(pipeline)),
        "spec": {
            "maxUnavailable": spec.disruption.max_unavailable,
            "selector": {"matchLabels": selector_labels(pipeline)},
        },
    }


def render_pod_monitor(pipeline: str, namespace: str, spec: DocumentPipelineSpec) -> dict[str, Any]:
    """A prometheus-operator PodMonitor scraping every worker's /metrics."""
    monitor = spec.metrics.pod_monitor
    labels = {**monitor.labels, **_labels(check_name(pipeline))}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": _metadata(worker_name(pipeline), namespace, labels),
        "spec": {
            "selector": {"matchLabels": selector_labels(pipeline)},
            "podMetricsEndpoints": [
                {"port": METRICS_PORT_NAME, "path": "/metrics", "interval": monitor.interval}
            ],
        },
    }


def render_children(
    pipeline: str,
    namespace: str,
    spec: DocumentPipelineSpec,
    *,
    replicas: int,
    template: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Every child object of a pipeline but the canary; the PodMonitor only when
    `metrics.podMonitor.enabled`. `template`: see `render_deployment`."""
    children = [
        render_deployment(pipeline, namespace, spec, replicas=replicas, template=template),
        render_metrics_service(pipeline, namespace, spec),
        render_pod_disruption_budget(pipeline, namespace, spec),
    ]
    if spec.metrics.pod_monitor.enabled:
        children.append(render_pod_monitor(pipeline, namespace, spec))
    return children
