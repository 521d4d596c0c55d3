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
    WorkerSpec,
    check_name,
    dump,
)
from docpipe_operator.podspec import DEFAULT_TOPOLOGY_KEY
from docpipe_operator.quantities import canonical

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
# Pod-template annotations that roll the workers when Secrets change: the hash of the referenced
# Secrets' data (the operator reads them) and the spec's own worker.secretsVersion.
SECRETS_HASH_ANNOTATION = "docpipe.io/secrets-hash"
SECRETS_VERSION_ANNOTATION = "docpipe.io/secrets-version"
# spec.database.caSecretRef is mounted here (read-only), as the chart mounts its databaseTls CA.
DATABASE_CA_VOLUME = "postgres-ca"
DATABASE_CA_PATH = "/etc/docpipe/postgres-ca"


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


def referenced_secret_keys(spec: DocumentPipelineSpec) -> tuple[SecretKeyRef, ...]:
    """Every Secret key the worker pods read, in a fixed order: the database URL and CA, the
    provider keys, and extraEnv's secretKeyRefs (image pull secrets do not reach a running pod)."""
    refs = [spec.database.url_secret_ref]
    for ref in (
        spec.database.ca_secret_ref,
        spec.embedder.api_key_secret_ref,
        spec.parser.api_key_secret_ref,
    ):
        if ref is not None:
            refs.append(ref)
    for extra in spec.worker.extra_env:
        source = (extra.value_from or {}).get("secretKeyRef") or {}
        if isinstance(source.get("name"), str) and isinstance(source.get("key"), str):
            refs.append(SecretKeyRef(name=source["name"], key=source["key"]))
    unique = {(r.name, r.key): r for r in refs}
    return tuple(unique[k] for k in sorted(unique))


def hash_secret_versions(versions: Mapping[tuple[str, str], str]) -> str:
    """A short hash of (Secret, key) → version of its value: equal inputs, equal hashes."""
    canonical = json.dumps(sorted([n, k, v] for (n, k), v in versions.items()))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


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
    env.extend(_database_ca_env(spec))
    env.extend(_golden_env(spec))
    for extra in worker.extra_env:
        env.append(extra.model_dump(by_alias=True, exclude_none=True, mode="json"))
    return env


# Where a golden set ConfigMap is mounted on the workers.
GOLDEN_VOLUME = "golden-set"
GOLDEN_PATH = "/etc/docpipe/golden"


def _golden_env(spec: DocumentPipelineSpec) -> list[dict[str, Any]]:
    golden = spec.rollout.golden_set
    if golden is None:
        return []
    return [
        {"name": "DOCPIPE_GOLDEN_DIR", "value": golden.path or GOLDEN_PATH},
        {"name": "DOCPIPE_GOLDEN_INTERVAL_SECONDS", "value": str(spec.rollout.interval_seconds)},
        {"name": "DOCPIPE_GOLDEN_K", "value": str(golden.k)},
    ]


def database_ca_file(spec: DocumentPipelineSpec) -> str | None:
    """Where a worker finds the database CA of spec.database.caSecretRef; None without one."""
    ref = spec.database.ca_secret_ref
    return None if ref is None else f"{DATABASE_CA_PATH}/{ref.key}"


def _database_ca_env(spec: DocumentPipelineSpec) -> list[dict[str, Any]]:
    """libpq's variables (asyncpg reads them) for the mounted CA; DATABASE_URL's own sslmode and
    sslrootcert win, and so does worker.extraEnv."""
    path = database_ca_file(spec)
    if path is None:
        return []
    own = {e.name for e in spec.worker.extra_env}
    wanted = (("PGSSLROOTCERT", path), ("PGSSLMODE", "verify-full"))
    return [{"name": n, "value": v} for n, v in wanted if n not in own]


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
        # Quantities as the API server returns them: canonical strings, never numbers.
        "resources": {
            kind: {name: canonical(q) for name, q in values.items()}
            for kind, values in _stored(worker.resources).items()
        },
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
    ca = spec.database.ca_secret_ref
    if ca is not None:
        container["volumeMounts"].append(
            {"name": DATABASE_CA_VOLUME, "mountPath": DATABASE_CA_PATH, "readOnly": True}
        )
        pod_spec["volumes"].append(
            {
                "name": DATABASE_CA_VOLUME,
                "secret": {"secretName": ca.name, "items": [{"key": ca.key, "path": ca.key}]},
            }
        )
    golden = spec.rollout.golden_set
    if golden is not None and golden.config_map is not None:
        container["volumeMounts"].append(
            {"name": GOLDEN_VOLUME, "mountPath": GOLDEN_PATH, "readOnly": True}
        )
        pod_spec["volumes"].append(
            {"name": GOLDEN_VOLUME, "configMap": {"name": golden.config_map}}
        )
    if worker.service_account_name is not None:
        pod_spec["serviceAccountName"] = worker.service_account_name
    if worker.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in worker.image_pull_secrets]
    _place(pipeline, worker, pod_spec)
    container["volumeMounts"].extend(_stored(m) for m in worker.extra_volume_mounts)
    metadata: dict[str, Any] = {"labels": {**worker.pod_labels, **_labels(pipeline)}}
    if worker.pod_annotations:
        metadata["annotations"] = dict(worker.pod_annotations)
    return {"metadata": metadata, "spec": pod_spec}


def topology_spread(pipeline: str, worker: WorkerSpec) -> list[dict[str, Any]]:
    """The pods' topology spread: the spec's constraints, each counting the pipeline's worker pods
    unless it names its own labelSelector; unset, one over nodes that never blocks scheduling."""
    selector = {"matchLabels": selector_labels(pipeline)}
    if worker.topology_spread_constraints is None:
        return [
            {
                "maxSkew": 1,
                "topologyKey": DEFAULT_TOPOLOGY_KEY,
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": selector,
            }
        ]
    return [{"labelSelector": selector, **_stored(c)} for c in worker.topology_spread_constraints]


# Fields of the pod types that are maps, not objects: empty, the API server leaves them out.
_MAP_FIELDS = frozenset({"matchLabels", "nodeSelector", "requests", "limits"})


def _with_canonical_size(volume: dict[str, Any]) -> dict[str, Any]:
    """A volume with its emptyDir's sizeLimit (a quantity) as the API server stores it."""
    empty = volume.get("emptyDir")
    if isinstance(empty, dict) and empty.get("sizeLimit") is not None:
        return {**volume, "emptyDir": {**empty, "sizeLimit": canonical(empty["sizeLimit"])}}
    return volume


def _stored(model: Any) -> Any:
    """A spec part in the form the API server stores it: empty lists and maps left out (an empty
    object stays), so that the stored object contains the rendered one and shows no drift."""

    def compact(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: compact(v)
                for k, v in node.items()
                if not (v == [] or (v == {} and k in _MAP_FIELDS))
            }
        if isinstance(node, list):
            return [compact(item) for item in node]
        return node

    return compact(dump(model))


def _place(pipeline: str, worker: WorkerSpec, pod_spec: dict[str, Any]) -> None:
    """Add the spec's placement and extra volumes to a pod spec (empty ones are left out, as
    the API server leaves them out of what it stores)."""
    placement = {
        "nodeSelector": dict(worker.node_selector),
        "tolerations": [_stored(t) for t in worker.tolerations],
        "affinity": _stored(worker.affinity) if worker.affinity is not None else {},
        "topologySpreadConstraints": topology_spread(pipeline, worker),
        "priorityClassName": worker.priority_class_name,
    }
    pod_spec.update({k: v for k, v in placement.items() if v})
    pod_spec["volumes"].extend(_with_canonical_size(_stored(v)) for v in worker.extra_volumes)


def template_revision(template: dict[str, Any]) -> str:
    """A short hash of a pod template: equal templates give equal revisions, on any machine."""
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:10]


def render_pod_template(
    pipeline: str, spec: DocumentPipelineSpec, *, secrets_hash: str | None = None
) -> dict[str, Any]:
    """The worker pod template, labelled with its revision and told it in DOCPIPE_REVISION.

    `secrets_hash`: the referenced Secrets' data as last read (None: not read), an annotation, so
    that new data makes a new revision."""
    template = _pod_template_without_revision(check_name(pipeline), spec)
    versions = {
        SECRETS_HASH_ANNOTATION: secrets_hash,
        SECRETS_VERSION_ANNOTATION: spec.worker.secrets_version,
    }
    for key, value in versions.items():
        if value is not None:
            template["metadata"].setdefault("annotations", {})[key] = value
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
    secrets_hash: str | None = None,
) -> dict[str, Any]:
    """The worker Deployment running `replicas` pods of the spec's template.

    `template` keeps another pod template instead (the stable revision's, while a canary of the
    spec's revision is analysed or after it was rolled back). `secrets_hash`: see
    `render_pod_template`.
    """
    template = (
        copy.deepcopy(dict(template))
        if template is not None
        else render_pod_template(pipeline, spec, secrets_hash=secrets_hash)
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
    canary_weight: float,
    secrets_hash: str | None = None,
    stable_revision: str | None = None,
) -> dict[str, Any]:
    """The canary Deployment: `replicas` pods of the spec's revision, told they are a canary.

    DOCPIPE_CANARY makes their failures hand a job's attempt back (a bad revision kills no
    document); DOCPIPE_CANARY_WEIGHT is the share of the jobs they claim (the jobs whose bucket
    falls in it: docpipe_queue.shares), however fast they fail or succeed. Both are added after
    the revision hash: the canary's revision is the one the stable takes on promotion.
    """
    template = render_pod_template(pipeline, spec, secrets_hash=secrets_hash)
    template["metadata"]["labels"][LABEL_TRACK] = TRACK_CANARY
    env = template["spec"]["containers"][0]["env"]
    env.append({"name": "DOCPIPE_CANARY", "value": "true"})
    env.append({"name": "DOCPIPE_CANARY_WEIGHT", "value": f"{canary_weight:g}"})
    if spec.rollout.golden_set is not None and stable_revision is not None:
        # The revision whose golden set output the canary compares its own with.
        env.append({"name": "DOCPIPE_STABLE_REVISION", "value": stable_revision})
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
    secrets_hash: str | None = None,
) -> list[dict[str, Any]]:
    """Every child object of a pipeline but the canary; the PodMonitor only when
    `metrics.podMonitor.enabled`. `template`, `secrets_hash`: see `render_deployment`."""
    children = [
        render_deployment(
            pipeline,
            namespace,
            spec,
            replicas=replicas,
            template=template,
            secrets_hash=secrets_hash,
        ),
        render_metrics_service(pipeline, namespace, spec),
        render_pod_disruption_budget(pipeline, namespace, spec),
    ]
    if spec.metrics.pod_monitor.enabled:
        children.append(render_pod_monitor(pipeline, namespace, spec))
    return children
