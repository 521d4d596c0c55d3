"""The DocumentPipeline custom resource: its spec and status as pydantic models.

This module is the contract between users, the API server and the operator: the CRD schema in
`crds/` is generated from these models (see `crd.py`), so a field, default or bound is changed here
and nowhere else. Cross-field rules are written twice, side by side: as CEL for the API server
(`x-kubernetes-validations`) and as a model validator for the operator and the tests.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from docpipe_operator.podspec import (
    DNS_SUBDOMAIN_PATTERN,
    IMAGE_MESSAGE,
    IMAGE_PATTERN,
    WORKER_RULES,
    Affinity,
    ImageReference,
    ResourceRequirements,
    Toleration,
    TopologySpreadConstraint,
    Volume,
    VolumeMount,
    check_worker_pod,
)

GROUP = "docpipe.io"
VERSION = "v1alpha1"
KIND = "DocumentPipeline"
PLURAL = "documentpipelines"
SINGULAR = "documentpipeline"
SHORT_NAMES = ("dp",)

# A DocumentPipeline's name becomes a label value and part of a Service name
# (`<name>-worker-metrics`, a DNS-1035 label of at most 63 characters): it is held to that shape.
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MAX_NAME_LENGTH = 48

# Environment variables the operator sets itself; extraEnv may not override them, because a
# silently shadowed DATABASE_URL or DOCPIPE_REVISION would be very hard to debug.
RESERVED_ENV_NAMES = (
    "DATABASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "LLAMA_CLOUD_API_KEY",
    "LLAMAPARSE_BASE_URL",
    "DOCPIPE_PIPELINE",
    "DOCPIPE_REVISION",
    "DOCPIPE_CONCURRENCY",
    "DOCPIPE_METRICS_PORT",
    "DOCPIPE_PARSER",
    "DOCPIPE_EMBEDDING_MODEL",
    "DOCPIPE_EMBEDDING_DIMENSIONS",
    "DOCPIPE_CHUNK_MAX_CHARS",
    "DOCPIPE_CHUNK_OVERLAP_CHARS",
    "DOCPIPE_SHUTDOWN_GRACE_SECONDS",
    "DOCPIPE_CANARY",
    "DOCPIPE_CANARY_WEIGHT",
    "DOCPIPE_GOLDEN_DIR",
    "DOCPIPE_GOLDEN_INTERVAL_SECONDS",
    "DOCPIPE_GOLDEN_K",
    "DOCPIPE_STABLE_REVISION",
    "DOCPIPE_OPENAI_REQUESTS_PER_MINUTE",
    "DOCPIPE_OPENAI_TOKENS_PER_MINUTE",
    "DOCPIPE_LLAMAPARSE_UPLOADS_PER_MINUTE",
)


def _cel(*rules: tuple[str, str]) -> dict[str, Any]:
    """The `json_schema_extra` that puts CEL rules (rule, message) on a model's schema."""
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


class _Model(BaseModel):
    # Unknown spec fields are refused (InvalidSpec), never silently ignored: a misspelt field,
    # or one an older operator does not know, would otherwise do nothing without a word.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class _Observed(_Model):
    # The status is the operator's own, and Kopf keeps its own fields in it: a status written by
    # a newer operator (or by Kopf) still reads.
    model_config = ConfigDict(extra="ignore")


class SecretKeyRef(_Model):
    """A key of a Secret in the DocumentPipeline's namespace."""

    name: str = Field(min_length=1, max_length=253, description="Name of the Secret.")
    key: str = Field(min_length=1, max_length=253, description="Key within the Secret.")


_RESERVED_ENV_MESSAGE = "worker.extraEnv may not set a variable the operator sets itself: " + (
    ", ".join(RESERVED_ENV_NAMES)
)


class EnvVar(_Model):
    """An extra environment variable for the worker container, as in a Pod spec."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!(self.name in [" + ", ".join(f"'{n}'" for n in RESERVED_ENV_NAMES) + "])",
                _RESERVED_ENV_MESSAGE,
            ),
            ("!(has(self.value) && has(self.valueFrom))", "env: set value or valueFrom, not both"),
        )
    )

    name: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    value: str | None = Field(default=None, description="A literal value.")
    value_from: dict[str, Any] | None = Field(
        default=None, description="A source for the value (secretKeyRef, configMapKeyRef, ...)."
    )

    @model_validator(mode="after")
    def _check_env(self) -> EnvVar:
        if self.name in RESERVED_ENV_NAMES:
            raise ValueError(_RESERVED_ENV_MESSAGE)
        if self.value is not None and self.value_from is not None:
            raise ValueError("env: set value or valueFrom, not both")
        return self


class LivenessProbeSpec(_Model):
    """Timing of the liveness probe on the worker's /healthz."""

    initial_delay_seconds: int = Field(default=10, ge=0, le=3600)
    period_seconds: int = Field(default=10, ge=1, le=300)
    timeout_seconds: int = Field(default=2, ge=1, le=60)
    failure_threshold: int = Field(default=3, ge=1, le=30)


class ReadinessProbeSpec(_Model):
    """Timing of the readiness probe on the worker's /readyz."""

    initial_delay_seconds: int = Field(default=0, ge=0, le=3600)
    period_seconds: int = Field(default=5, ge=1, le=300)
    timeout_seconds: int = Field(default=2, ge=1, le=60)
    failure_threshold: int = Field(default=2, ge=1, le=30)


class ProbesSpec(_Model):
    """Probe settings for the worker's health endpoints."""

    liveness: LivenessProbeSpec = Field(default_factory=LivenessProbeSpec)
    readiness: ReadinessProbeSpec = Field(default_factory=ReadinessProbeSpec)


_DEFAULT_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "250m", "memory": "256Mi"},
    "limits": {"memory": "1Gi"},
}


class WorkerSpec(_Model):
    """The worker pods: image, resources, concurrency, lifecycle, placement and extra volumes."""

    model_config = ConfigDict(json_schema_extra=_cel(*WORKER_RULES))

    image: ImageReference = Field(
        min_length=1,
        max_length=512,
        description="The docpipe image; it runs `docpipe worker`.",
        json_schema_extra=_cel((f"self.matches('{IMAGE_PATTERN}')", IMAGE_MESSAGE)),
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    image_pull_secrets: list[str] = Field(
        default=[], max_length=20, description="Names of Secrets for pulling the image."
    )
    service_account_name: str | None = Field(default=None, max_length=253)
    concurrency: int = Field(default=8, ge=1, le=256, description="Jobs one worker runs at once.")
    metrics_port: int = Field(
        default=9000, ge=1024, le=65535, description="Port serving /metrics, /healthz, /readyz."
    )
    resources: ResourceRequirements = Field(
        default=ResourceRequirements.model_validate(_DEFAULT_RESOURCES),
        description="Resource requests and limits, as in a Pod spec.",
    )
    termination_grace_period_seconds: int = Field(
        default=60,
        ge=0,
        le=3600,
        description="Time a stopping worker has to finish or release its jobs.",
    )
    probes: ProbesSpec = Field(default_factory=ProbesSpec)
    node_selector: dict[str, str] = Field(
        default={}, max_length=64, description="Node labels the worker pods must run on."
    )
    tolerations: list[Toleration] = Field(
        default=[], max_length=64, description="Node taints the worker pods tolerate."
    )
    affinity: Affinity | None = Field(
        default=None, description="Node and pod (anti-)affinity, as in a Pod spec."
    )
    topology_spread_constraints: list[TopologySpreadConstraint] | None = Field(
        default=None,
        max_length=16,
        description="How the worker pods spread over nodes or zones. Unset: over nodes "
        "(kubernetes.io/hostname, maxSkew 1, ScheduleAnyway); [] for no constraint. A constraint "
        "without labelSelector counts the pipeline's worker pods.",
    )
    priority_class_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="An existing PriorityClass for the worker pods.",
    )
    pod_labels: dict[str, str] = Field(
        default={},
        max_length=64,
        description="Extra labels of the worker pods; never those docpipe selects pods by.",
    )
    pod_annotations: dict[str, str] = Field(
        default={},
        max_length=64,
        description="Extra annotations of the worker pods; never docpipe.io/ ones.",
    )
    extra_volumes: list[Volume] = Field(
        default=[],
        max_length=32,
        description="More volumes of the worker pods (the sources the restricted Pod Security "
        "profile allows).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    extra_volume_mounts: list[VolumeMount] = Field(
        default=[],
        max_length=32,
        description="Where the worker container mounts worker.extraVolumes.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["mountPath"],
        },
    )
    secrets_version: str | None = Field(
        default=None,
        max_length=63,
        description="Any text; changing it rolls the workers (under the rollout policy). For "
        "Secret rotation when the operator may not read Secrets: the operator otherwise rolls "
        "the workers itself when a referenced Secret's data changes.",
    )
    extra_env: list[EnvVar] = Field(
        default=[],
        max_length=100,
        description="More environment variables.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    @model_validator(mode="after")
    def _check_extra_env(self) -> WorkerSpec:
        names = [e.name for e in self.extra_env]
        if len(names) != len(set(names)):
            raise ValueError("worker.extraEnv names must be unique")
        return self

    @model_validator(mode="after")
    def _check_pod(self) -> WorkerSpec:
        check_worker_pod(
            node_selector=self.node_selector,
            pod_labels=self.pod_labels,
            pod_annotations=self.pod_annotations,
            volumes=self.extra_volumes,
            mounts=self.extra_volume_mounts,
        )
        return self


class DatabaseSpec(_Model):
    """Where the queue and the vectors live."""

    url_secret_ref: SecretKeyRef = Field(
        description="Secret key holding the PostgreSQL URL (DATABASE_URL)."
    )
    ca_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the PEM CA certificate that signed the database server's "
        "certificate: mounted read-only in the workers at /etc/docpipe/postgres-ca/<key>, named "
        "by PGSSLROOTCERT, with PGSSLMODE=verify-full (the URL's sslmode and sslrootcert, and "
        "worker.extraEnv, win when set).",
    )


_LLAMAPARSE_KEY_MESSAGE = "parser.apiKeySecretRef is required when parser.kind is llamaparse"
_OPENAI_KEY_MESSAGE = (
    "embedder.apiKeySecretRef is required unless embedder.baseUrl points at a compatible server"
)


class ParserSpec(_Model):
    """How documents are turned into text."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("self.kind != 'llamaparse' || has(self.apiKeySecretRef)", _LLAMAPARSE_KEY_MESSAGE)
        )
    )

    kind: Literal["local", "llamaparse"] = Field(
        default="local", description="`local` parses in the worker; `llamaparse` calls LlamaParse."
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key with the LlamaParse API key (LLAMA_CLOUD_API_KEY)."
    )
    base_url: str | None = Field(
        default=None, pattern=r"^https?://", description="LlamaParse base URL (e.g. the mocks)."
    )

    @model_validator(mode="after")
    def _check_key(self) -> ParserSpec:
        if self.kind == "llamaparse" and self.api_key_secret_ref is None:
            raise ValueError(_LLAMAPARSE_KEY_MESSAGE)
        return self


class EmbedderSpec(_Model):
    """How chunks are embedded."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("has(self.apiKeySecretRef) || has(self.baseUrl)", _OPENAI_KEY_MESSAGE)
        )
    )

    model: str = Field(default="text-embedding-3-small", min_length=1)
    dimensions: int | None = Field(
        default=None,
        ge=1,
        le=2000,
        description="Embedding size; must match the database's vectors. Unset: the worker default.",
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key with the OpenAI API key (OPENAI_API_KEY)."
    )
    base_url: str | None = Field(
        default=None, pattern=r"^https?://", description="OpenAI-compatible base URL."
    )

    @model_validator(mode="after")
    def _check_key(self) -> EmbedderSpec:
        if self.api_key_secret_ref is None and self.base_url is None:
            raise ValueError(_OPENAI_KEY_MESSAGE)
        return self


_OVERLAP_MESSAGE = "chunking.overlapChars must be less than half of chunking.maxChars"


class ChunkingSpec(_Model):
    """How parsed text is split before embedding."""

    model_config = ConfigDict(
        json_schema_extra=_cel(("self.overlapChars * 2 < self.maxChars", _OVERLAP_MESSAGE))
    )

    max_chars: int = Field(default=1500, ge=100, le=100_000)
    overlap_chars: int = Field(default=200, ge=0, le=50_000)

    @model_validator(mode="after")
    def _check_overlap(self) -> ChunkingSpec:
        if self.overlap_chars * 2 >= self.max_chars:
            raise ValueError(_OVERLAP_MESSAGE)
        return self


class ScaleToZeroSpec(_Model):
    """Removing every worker when the pipeline has had no work for a while."""

    enabled: bool = Field(default=False, description="Requires minReplicas: 0.")
    idle_seconds: int = Field(
        default=600,
        ge=0,
        le=86_400,
        description="How long the queue must be empty with no job in flight before scaling to 0.",
    )


_SCALE_TO_ZERO_MESSAGE = (
    "scaling.scaleToZero.enabled must be true exactly when scaling.minReplicas is 0"
)


class ScalingSpec(_Model):
    """The autoscaling policy: replicas are sized to keep the queue wait near the target."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "self.minReplicas <= self.maxReplicas",
                "scaling.minReplicas must be <= scaling.maxReplicas",
            ),
            ("self.scaleToZero.enabled == (self.minReplicas == 0)", _SCALE_TO_ZERO_MESSAGE),
        )
    )

    min_replicas: int = Field(default=1, ge=0, le=1000)
    max_replicas: int = Field(default=10, ge=1, le=1000)
    target_queue_wait_seconds: int = Field(
        default=30, ge=1, le=86_400, description="How long a ready job should wait at most."
    )
    interval_seconds: int = Field(default=5, ge=1, le=3600, description="Time between decisions.")
    scale_down_stabilization_seconds: int = Field(
        default=300,
        ge=0,
        le=3600,
        description="Scale down only to the highest recommendation of this window.",
    )
    max_scale_up_step: int = Field(
        default=4, ge=1, le=1000, description="Most replicas added in one decision."
    )
    scale_to_zero: ScaleToZeroSpec = Field(default_factory=ScaleToZeroSpec)

    @model_validator(mode="after")
    def _check_bounds(self) -> ScalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("scaling.minReplicas must be <= scaling.maxReplicas")
        if self.scale_to_zero.enabled != (self.min_replicas == 0):
            raise ValueError(_SCALE_TO_ZERO_MESSAGE)
        return self


class PrometheusSpec(_Model):
    """A Prometheus server to query instead of scraping the pods."""

    url: str = Field(pattern=r"^https?://", description="Base URL of the Prometheus HTTP API.")


class PodMonitorSpec(_Model):
    """A prometheus-operator PodMonitor for the workers (needs its CRDs in the cluster)."""

    enabled: bool = False
    interval: str = Field(default="15s", pattern=r"^[0-9]+(ms|s|m|h)$")
    labels: dict[str, str] = Field(
        default={}, description="Extra labels, e.g. the ones your Prometheus selects on."
    )


class MetricsSpec(_Model):
    """Where the operator reads worker metrics from."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "self.source != 'prometheus' || has(self.prometheus)",
                "metrics.prometheus.url is required when metrics.source is prometheus",
            )
        )
    )

    source: Literal["pods", "prometheus"] = Field(
        default="pods", description="`pods` scrapes each worker; `prometheus` queries PromQL."
    )
    prometheus: PrometheusSpec | None = None
    scrape_timeout_seconds: int = Field(default=2, ge=1, le=30)
    pod_monitor: PodMonitorSpec = Field(default_factory=PodMonitorSpec)

    @model_validator(mode="after")
    def _check_prometheus(self) -> MetricsSpec:
        if self.source == "prometheus" and self.prometheus is None:
            raise ValueError("metrics.prometheus.url is required when metrics.source is prometheus")
        return self


class DisruptionSpec(_Model):
    """The PodDisruptionBudget of the workers."""

    max_unavailable: int = Field(
        default=1, ge=1, le=1000, description="Workers a voluntary disruption may stop at once."
    )


_CANARY_SIZE_MESSAGE = "rollout: set canaryReplicas or canaryPercent, not both"


class OutputAnalysisSpec(_Model):
    """How a canary's output is compared with the stable revision's at each analysis interval
    (from the workers' `docpipe_output_*` counters): a revision that writes worse output fails
    the interval as one that fails jobs does."""

    enabled: bool = Field(default=True, description="Judge the canary's output at all.")
    max_relative_change: float = Field(
        default=0.3,
        gt=0,
        lt=1,
        description="Extracted chars per input byte, chunks per document and mean vector norm of "
        "the canary may differ from the stable's by at most this share (0.3: 0.7x..1.3x).",
    )
    max_empty_share_increase: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="The canary's share of documents with no text may exceed the stable's by at "
        "most this.",
    )
    max_degenerate_share_increase: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="The canary's share of zero or non-finite vectors may exceed the stable's by "
        "at most this.",
    )
    min_documents: int = Field(
        default=5,
        ge=1,
        le=1_000_000,
        description="Documents the canary must finish in an interval for its output to be judged.",
    )


NoTrafficAction = Literal["Promote", "Wait", "Golden"]


_GOLDEN_SOURCE_MESSAGE = "rollout.goldenSet: set configMap or path, exactly one"


class GoldenSetSpec(_Model):
    """Sample documents with questions that the canary and the stable revision process in shadow
    at each analysis interval (never stored as user documents); the verdict compares what they
    made of them. The set: every file is a document, except `questions.json`, a JSON list of
    `{"question": ..., "document": "<file name>"}`."""

    model_config = ConfigDict(
        json_schema_extra=_cel(("has(self.configMap) != has(self.path)", _GOLDEN_SOURCE_MESSAGE))
    )

    config_map: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="A ConfigMap of the pipeline's namespace holding the set (binaryData for "
        "PDFs), mounted read-only on the workers.",
    )
    path: str | None = Field(
        default=None,
        pattern=r"^/",
        max_length=1024,
        description="A directory in the worker image holding the set (instead of configMap).",
    )
    min_text_overlap: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="Share of the stable's parsed words the canary's parse must keep.",
    )
    max_chunk_ratio_change: float = Field(
        default=0.3,
        gt=0,
        lt=1,
        description="The canary's chunk count over the stable's must be within 1 ± this.",
    )
    min_cosine: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="Mean cosine similarity of the two revisions' embeddings of the same chunks.",
    )
    max_recall_drop: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Recall@k of the questions may be at most this below the stable's.",
    )
    k: int = Field(default=5, ge=1, le=100, description="The k of recall@k.")

    @model_validator(mode="after")
    def _check_source(self) -> GoldenSetSpec:
        if (self.config_map is None) == (self.path is None):
            raise ValueError(_GOLDEN_SOURCE_MESSAGE)
        return self


class NoTrafficSpec(_Model):
    """What a rollout does when its canary gets no work (an idle pipeline): no interval can be
    judged on jobs, so without a rule it would never end."""

    action: NoTrafficAction = Field(
        default="Promote",
        description="`Promote`: promote the ready canary once it has had no job for afterSeconds "
        "(no failed interval, no restart); `Wait`: keep waiting for work, with no deadline; "
        "`Golden`: judge it on rollout.goldenSet (without one: as `Wait`).",
    )
    after_seconds: int = Field(
        default=600,
        ge=1,
        le=604_800,
        description="How long the canary must have had no job before `Promote` promotes it.",
    )


class RolloutSpec(_Model):
    """How a new worker revision (a changed pod template) replaces the running one."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("!(has(self.canaryReplicas) && has(self.canaryPercent))", _CANARY_SIZE_MESSAGE)
        )
    )

    strategy: Literal["Canary", "Rolling"] = Field(
        default="Canary",
        description="`Canary` runs the new revision beside the stable one and promotes it only "
        "after analysis; `Rolling` updates the worker Deployment at once.",
    )
    canary_replicas: int | None = Field(
        default=None, ge=1, le=1000, description="Canary pods, a fixed number (else canaryPercent)."
    )
    canary_percent: int | None = Field(
        default=None,
        ge=1,
        le=50,
        description="Canary pods as a share of all workers, at least 1 (default 20).",
    )
    interval_seconds: int = Field(
        default=10, ge=1, le=3600, description="Length of one analysis interval."
    )
    max_error_ratio: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Failed attempts (retried + dead) over jobs claimed above which an interval "
        "fails.",
    )
    max_latency_ratio: float = Field(
        default=1.5,
        ge=1,
        le=100,
        description="Canary stage p95 over the stable's above which an interval fails.",
    )
    min_jobs: int = Field(
        default=10,
        ge=1,
        le=1_000_000,
        description="Jobs the canary must claim in an interval for the interval to pass.",
    )
    success_intervals: int = Field(
        default=3, ge=1, le=100, description="Consecutive passing intervals that promote."
    )
    failure_limit: int = Field(
        default=2, ge=1, le=100, description="Failing intervals that roll the revision back."
    )
    progress_deadline_seconds: int = Field(
        default=120,
        ge=1,
        le=86_400,
        description="Time the canary's pods have to become ready before the revision is rolled "
        "back.",
    )
    max_surge_percent: int = Field(
        default=25,
        ge=1,
        le=100,
        description="Extra pods (percent of replicas) while the stable Deployment takes the "
        "promoted template.",
    )
    paused: bool = Field(
        default=False,
        description="Holds a running analysis: no interval is judged, nothing is promoted or "
        "rolled back by the analysis (a manual rollback still works).",
    )
    output_analysis: OutputAnalysisSpec = Field(
        default_factory=OutputAnalysisSpec,
        description="Judging the canary's output (text, chunks, vectors) against the stable's.",
    )
    golden_set: GoldenSetSpec | None = Field(
        default=None,
        description="Sample documents and questions both revisions process in shadow at each "
        "interval; the canary fails an interval when its output on them regresses.",
    )
    no_traffic: NoTrafficSpec = Field(
        default_factory=NoTrafficSpec,
        description="What happens when the canary gets no work: promote after a deadline, wait, "
        "or judge on the golden set.",
    )

    @model_validator(mode="after")
    def _check_size(self) -> RolloutSpec:
        if self.canary_replicas is not None and self.canary_percent is not None:
            raise ValueError(_CANARY_SIZE_MESSAGE)
        return self


class OpenAIQuotaSpec(_Model):
    """The OpenAI quota of the embedder's key and model, shared by every worker that uses it."""

    requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=100_000_000,
        description="Requests per minute (RPM). Unset: learned from the x-ratelimit headers.",
    )
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description="Input tokens per minute (TPM). Unset: learned from the x-ratelimit headers.",
    )


class LlamaParseQuotaSpec(_Model):
    """The LlamaParse quota of the parser's key, shared by every worker that uses it."""

    uploads_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=100_000_000,
        description="Document uploads per minute. Unset: no limit until LlamaParse answers 429.",
    )


class QuotasSpec(_Model):
    """Provider quotas: the workers keep the fleet's aggregate under them, and the autoscaler
    runs no more workers than they can feed. Never set a limit above what the provider grants."""

    openai: OpenAIQuotaSpec = Field(default_factory=OpenAIQuotaSpec)
    llamaparse: LlamaParseQuotaSpec = Field(default_factory=LlamaParseQuotaSpec)


class DocumentPipelineSpec(_Model):
    """The desired state of a document pipeline's worker fleet."""

    worker: WorkerSpec
    database: DatabaseSpec
    parser: ParserSpec = Field(default_factory=ParserSpec)
    embedder: EmbedderSpec
    chunking: ChunkingSpec = Field(default_factory=ChunkingSpec)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    disruption: DisruptionSpec = Field(default_factory=DisruptionSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    quotas: QuotasSpec = Field(default_factory=QuotasSpec)
    replicas: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="Pins the worker count and turns autoscaling off (`kubectl scale` sets it).",
    )


ConditionType = Literal["Ready", "Scaling", "Degraded", "QuotaLimited"]
Phase = Literal["Pending", "Running", "ScaledToZero", "Degraded"]


class Condition(_Observed):
    """One aspect of the pipeline's state, in the Kubernetes convention."""

    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(default="", max_length=1024)
    message: str = Field(default="", max_length=32_768)
    last_transition_time: datetime | None = None
    observed_generation: int | None = Field(
        default=None, description="The spec generation this condition was set from."
    )


RolloutPhase = Literal["Progressing", "Paused", "Promoting", "Promoted", "RolledBack"]


class AnalysisInterval(_Observed):
    """One judged analysis interval of a canary."""

    outcome: Literal["Passed", "Failed", "Inconclusive"]
    reason: str = Field(default="", max_length=1024)
    at: datetime


class LastRollback(_Observed):
    """The undo of a rolled-back revision's output."""

    revision: str = Field(description="The rejected revision.")
    reprocessed_documents: int = Field(
        default=0, ge=0, description="Documents re-enqueued for the stable revision."
    )
    at: datetime | None = None


class NoTrafficStatus(_Observed):
    """A canary without work: since when, what is done about it, and until when."""

    action: NoTrafficAction = Field(
        description="The action in force (Golden without a golden set acts as Wait)."
    )
    since: datetime = Field(description="End of the first analysis interval without a job.")
    deadline: datetime | None = Field(
        default=None, description="When `Promote` promotes the canary; unset: no deadline."
    )
    message: str = Field(default="", max_length=4096)


class RolloutStatus(_Observed):
    """The state of the latest rollout; enough to resume an analysis after an operator restart."""

    phase: RolloutPhase | None = None
    stable_revision: str | None = Field(default=None, description="Revision of the stable pods.")
    canary_revision: str | None = Field(
        default=None, description="Revision under analysis (or last analysed)."
    )
    started_at: datetime | None = Field(default=None, description="When the canary was started.")
    canary_replicas: int | None = None
    canary_weight: float | None = Field(
        default=None,
        description="DOCPIPE_CANARY_WEIGHT of the canary: its share of the jobs (0 to 1).",
    )
    intervals: list[AnalysisInterval] = Field(
        default=[], max_length=200, description="Judged intervals of the analysis, oldest first."
    )
    message: str | None = Field(default=None, max_length=4096)
    rejected_revision: str | None = Field(
        default=None, description="A rolled-back revision: not tried again until the spec changes."
    )
    rejected_reason: str | None = Field(default=None, max_length=4096)
    rejected_at: datetime | None = None
    no_traffic: NoTrafficStatus | None = Field(
        default=None,
        description="Set while the canary gets no work: what rollout.noTraffic does about it, "
        "and until when.",
    )
    last_rollback: LastRollback | None = Field(
        default=None,
        description="The undo of the latest rollback: documents whose chunks the rejected "
        "revision wrote, re-enqueued for the stable revision.",
    )


class DocumentPipelineStatus(_Observed):
    """The observed state, written by the operator only."""

    phase: Phase | None = None
    conditions: list[Condition] = Field(
        default=[],
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = None
    replicas: int | None = Field(default=None, description="Worker pods that exist.")
    ready_replicas: int | None = None
    desired_replicas: int | None = None
    selector: str | None = Field(default=None, description="Label selector of the worker pods.")
    last_scale_reason: str | None = None
    queue_depth: int | None = Field(default=None, description="Jobs ready to run.")
    oldest_ready_age_seconds: float | None = None
    throughput_per_second: float | None = Field(default=None, description="Jobs done per second.")
    rollout: RolloutStatus | None = None


class DocumentPipeline(_Model):
    """A whole DocumentPipeline object as the API server returns it."""

    api_version: Literal["docpipe.io/v1alpha1"] = "docpipe.io/v1alpha1"
    kind: Literal["DocumentPipeline"] = "DocumentPipeline"
    metadata: dict[str, Any] = Field(default={})
    spec: DocumentPipelineSpec
    status: DocumentPipelineStatus = Field(default_factory=DocumentPipelineStatus)


class SpecError(ValueError):
    """A DocumentPipeline spec that does not validate; the message names each bad field."""


_UNKNOWN_FIELD = (
    "unknown field: not in the DocumentPipeline schema this operator serves (check its spelling, "
    "and that the operator is as new as the CRD)"
)


def parse_spec(spec: Mapping[str, Any]) -> DocumentPipelineSpec:
    """Validate a spec as read from the API; raise SpecError naming each offending field."""
    try:
        return DocumentPipelineSpec.model_validate(spec)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(["spec", *(str(p) for p in error["loc"])])
            message = _UNKNOWN_FIELD if error["type"] == "extra_forbidden" else error["msg"]
            if error["type"] == "value_error":
                message = str(error["ctx"]["error"])  # without pydantic's "Value error, "
            problems.append(f"{where}: {message}")
        raise SpecError("; ".join(problems)) from None


def check_name(name: str) -> str:
    """Return `name` if it can name a DocumentPipeline's children; raise SpecError if not."""
    if len(name) > MAX_NAME_LENGTH or not re.fullmatch(NAME_PATTERN, name):
        raise SpecError(
            f"metadata.name {name!r}: must be at most {MAX_NAME_LENGTH} characters of a-z, 0-9 "
            "and '-', starting with a letter and ending with a letter or digit"
        )
    return name


def dump(model: BaseModel) -> dict[str, Any]:
    """The model as Kubernetes JSON: camelCase keys, absent optionals left out."""
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")
