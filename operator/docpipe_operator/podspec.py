"""The parts of a Pod spec a DocumentPipeline passes into its worker pods: placement (node
selector, tolerations, affinity, topology spread, priority class), extra pod labels and
annotations, extra volumes and mounts.

Pydantic models that mirror the Kubernetes types closely enough to refuse a typo or a wrong value
before anything is rendered, with the same `x-kubernetes-validations` (CEL) rules the API server
evaluates, so a bad value is refused at `kubectl apply`. Only the rarely used volume sources
(projected, downwardAPI, csi, ephemeral) pass through unchecked, as in a Pod they are large
types of their own. What docpipe itself sets (its labels, annotations, the `/tmp` volume) is
reserved: these fields add to the pod, they never override the operator.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

# Labels the operator puts on every worker pod (the selector among them) and the prefix it owns:
# a pod label may not override them, or the Deployments, the Service and the PodDisruptionBudget
# would lose their pods.
RESERVED_LABEL_KEYS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
)
RESERVED_PREFIX = "docpipe.io/"
# Set on worker pods by the operator before a scale-down (drain-aware).
RESERVED_ANNOTATION_KEYS = ("controller.kubernetes.io/pod-deletion-cost",)
# Volumes docpipe mounts itself: the scratch emptyDir, the database CA, the golden set; `docpipe-`
# is kept for the ones it adds later.
RESERVED_VOLUME_NAMES = ("tmp", "postgres-ca", "golden-set")
RESERVED_VOLUME_PREFIX = "docpipe-"
# Paths docpipe mounts at (and everything below them).
RESERVED_MOUNT_PATHS = ("/tmp", "/etc/docpipe")

# The default spread: over nodes, never blocking scheduling.
DEFAULT_TOPOLOGY_KEY = "kubernetes.io/hostname"

_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = f"^{_DNS_SUBDOMAIN}$"


def cel(*rules: tuple[str, str]) -> dict[str, Any]:
    """The `json_schema_extra` that puts CEL rules (rule, message) on a schema node."""
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


# A bound on enum strings that CEL rules read: the API server estimates a rule's cost from the
# longest value a field may hold, and an enum alone does not bound it.
_SHORT: dict[str, Any] = {"maxLength": 32}


def _quoted(values: Sequence[str]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


class KubeModel(BaseModel):
    """A Kubernetes-shaped object: camelCase keys, unknown fields refused, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


def label_key_problem(key: str) -> str | None:
    """Why `key` is not a Kubernetes label (or annotation) key; None when it is one."""
    prefix, _, name = key.rpartition("/")
    if "/" in prefix:
        return "has more than one '/'"
    if prefix and (len(prefix) > 253 or not re.fullmatch(_DNS_SUBDOMAIN, prefix)):
        return "has a prefix that is not a DNS subdomain (lowercase a-z, 0-9, '-' and '.')"
    if len(name) > 63 or not re.fullmatch(_LABEL_NAME, name):
        return (
            "needs a name of at most 63 characters of A-Z, a-z, 0-9, '-', '_' and '.', "
            "starting and ending with a letter or digit"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why `value` is not a Kubernetes label value; None when it is one."""
    if value == "" or (len(value) <= 63 and re.fullmatch(_LABEL_NAME, value)):
        return None
    return (
        "must be empty or at most 63 characters of A-Z, a-z, 0-9, '-', '_' and '.', "
        "starting and ending with a letter or digit"
    )


def check_labels(field: str, labels: Mapping[str, str], *, values: bool = True) -> None:
    """Raise ValueError naming the first key (or value) of `labels` Kubernetes would refuse."""
    for key, value in labels.items():
        problem = label_key_problem(key)
        if problem:
            raise ValueError(f"{field}: key {key!r} {problem}")
        problem = label_value_problem(value) if values else None
        if problem:
            raise ValueError(f"{field}: the value of {key!r} {problem}")


# ---- Selectors and affinity ----

_SELECTOR_VALUES_RULE = (
    "(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
    "matchExpressions: operators In and NotIn need values, Exists and DoesNotExist take none",
)


class LabelSelectorRequirement(KubeModel):
    """One expression of a label selector."""

    model_config = ConfigDict(json_schema_extra=cel(_SELECTOR_VALUES_RULE))

    key: str = Field(min_length=1, max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(json_schema_extra=_SHORT)
    values: list[str] | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _check_values(self) -> LabelSelectorRequirement:
        if (self.operator in ("In", "NotIn")) != bool(self.values):
            raise ValueError(_SELECTOR_VALUES_RULE[1])
        return self


class LabelSelector(KubeModel):
    """A label selector, as in a Deployment's or a topology spread constraint's."""

    match_labels: dict[str, str] | None = Field(default=None, max_length=64)
    match_expressions: list[LabelSelectorRequirement] | None = Field(default=None, max_length=32)

    @model_validator(mode="after")
    def _check_labels(self) -> LabelSelector:
        check_labels("matchLabels", self.match_labels or {})
        return self


_NODE_VALUES_RULE = (
    "self.operator in ['Exists', 'DoesNotExist'] ? !has(self.values) || size(self.values) == 0 "
    ": self.operator in ['Gt', 'Lt'] ? has(self.values) && size(self.values) == 1 "
    ": has(self.values) && size(self.values) > 0",
    "node selector: In and NotIn need values, Gt and Lt exactly one, Exists and DoesNotExist none",
)


class NodeSelectorRequirement(KubeModel):
    """One expression of a node selector term."""

    model_config = ConfigDict(json_schema_extra=cel(_NODE_VALUES_RULE))

    key: str = Field(min_length=1, max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"] = Field(
        json_schema_extra=_SHORT
    )
    values: list[str] | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _check_values(self) -> NodeSelectorRequirement:
        count = len(self.values or ())
        ok = {"Exists": count == 0, "DoesNotExist": count == 0, "Gt": count == 1, "Lt": count == 1}
        if not ok.get(self.operator, count > 0):
            raise ValueError(_NODE_VALUES_RULE[1])
        return self


class NodeSelectorTerm(KubeModel):
    """Node selector requirements, all of which must hold."""

    match_expressions: list[NodeSelectorRequirement] | None = Field(default=None, max_length=32)
    match_fields: list[NodeSelectorRequirement] | None = Field(default=None, max_length=32)


class NodeSelector(KubeModel):
    """Terms of which at least one must hold."""

    node_selector_terms: list[NodeSelectorTerm] = Field(min_length=1, max_length=32)


class PreferredSchedulingTerm(KubeModel):
    weight: int = Field(ge=1, le=100)
    preference: NodeSelectorTerm


class NodeAffinity(KubeModel):
    """Which nodes the worker pods must, or should, run on."""

    required_during_scheduling_ignored_during_execution: NodeSelector | None = None
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] | None = (
        Field(default=None, max_length=32)
    )


class PodAffinityTerm(KubeModel):
    """Pods (by label) in a topology domain the worker pods should (not) share."""

    label_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    namespaces: list[str] | None = Field(default=None, max_length=64)
    topology_key: str = Field(min_length=1, max_length=317)
    match_label_keys: list[str] | None = Field(default=None, max_length=32)
    mismatch_label_keys: list[str] | None = Field(default=None, max_length=32)


class WeightedPodAffinityTerm(KubeModel):
    weight: int = Field(ge=1, le=100)
    pod_affinity_term: PodAffinityTerm


class PodAffinity(KubeModel):
    """Pod affinity or anti-affinity: required and preferred terms."""

    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] | None = Field(
        default=None, max_length=32
    )
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] | None = (
        Field(default=None, max_length=32)
    )


class Affinity(KubeModel):
    """The worker pods' affinity, as in a Pod spec."""

    node_affinity: NodeAffinity | None = None
    pod_affinity: PodAffinity | None = None
    pod_anti_affinity: PodAffinity | None = None


# ---- Tolerations and topology spread ----

_TOLERATION_RULES = (
    (
        "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
        "tolerations: operator Exists takes no value",
    ),
    (
        "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
        "tolerations: an empty key needs operator Exists (it then tolerates every taint)",
    ),
    (
        "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
        "tolerations: tolerationSeconds applies to effect NoExecute only",
    ),
)


class Toleration(KubeModel):
    """A toleration of node taints, as in a Pod spec."""

    model_config = ConfigDict(json_schema_extra=cel(*_TOLERATION_RULES))

    key: str | None = Field(default=None, max_length=317)
    operator: Literal["Exists", "Equal"] = Field(default="Equal", json_schema_extra=_SHORT)
    value: str | None = Field(default=None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, json_schema_extra=_SHORT
    )
    toleration_seconds: int | None = None

    @model_validator(mode="after")
    def _check(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError(_TOLERATION_RULES[0][1])
        if not self.key and self.operator != "Exists":
            raise ValueError(_TOLERATION_RULES[1][1])
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError(_TOLERATION_RULES[2][1])
        return self


_MIN_DOMAINS_MESSAGE = "topologySpreadConstraints: minDomains needs whenUnsatisfiable DoNotSchedule"


class TopologySpreadConstraint(KubeModel):
    """How the worker pods spread over a topology (nodes, zones); without a labelSelector it
    counts the pipeline's worker pods."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "!has(self.minDomains) || self.whenUnsatisfiable == 'DoNotSchedule'",
                _MIN_DOMAINS_MESSAGE,
            )
        )
    )

    max_skew: int = Field(default=1, ge=1, le=1000)
    topology_key: str = Field(min_length=1, max_length=317)
    when_unsatisfiable: Literal["DoNotSchedule", "ScheduleAnyway"] = Field(
        default="ScheduleAnyway", json_schema_extra=_SHORT
    )
    label_selector: LabelSelector | None = None
    min_domains: int | None = Field(default=None, ge=1, le=1000)
    node_affinity_policy: Literal["Honor", "Ignore"] | None = None
    node_taints_policy: Literal["Honor", "Ignore"] | None = None
    match_label_keys: list[str] | None = Field(default=None, max_length=32)

    @model_validator(mode="after")
    def _check(self) -> TopologySpreadConstraint:
        if self.min_domains is not None and self.when_unsatisfiable != "DoNotSchedule":
            raise ValueError(_MIN_DOMAINS_MESSAGE)
        return self


# ---- Volumes ----


class KeyToPath(KubeModel):
    key: str = Field(min_length=1, max_length=253)
    path: str = Field(min_length=1, max_length=4096, pattern=r"^[^/]")
    mode: int | None = Field(default=None, ge=0, le=0o777)


class ConfigMapVolumeSource(KubeModel):
    name: str = Field(min_length=1, max_length=253)
    items: list[KeyToPath] | None = Field(default=None, max_length=256)
    default_mode: int | None = Field(default=None, ge=0, le=0o777)
    optional: bool | None = None


class SecretVolumeSource(KubeModel):
    secret_name: str = Field(min_length=1, max_length=253)
    items: list[KeyToPath] | None = Field(default=None, max_length=256)
    default_mode: int | None = Field(default=None, ge=0, le=0o777)
    optional: bool | None = None


class EmptyDirVolumeSource(KubeModel):
    medium: Literal["", "Memory"] | None = None
    size_limit: int | str | None = Field(default=None, description="A quantity, e.g. 1Gi.")


class PersistentVolumeClaimVolumeSource(KubeModel):
    claim_name: str = Field(min_length=1, max_length=253)
    read_only: bool | None = None


_VOLUME_SOURCES = (
    "configMap",
    "secret",
    "emptyDir",
    "persistentVolumeClaim",
    "projected",
    "downwardAPI",
    "csi",
    "ephemeral",
)
_ONE_SOURCE_MESSAGE = "extraVolumes: each volume needs exactly one source of " + ", ".join(
    _VOLUME_SOURCES
)


class Volume(KubeModel):
    """An extra volume of the worker pods. Only the sources the `restricted` Pod Security profile
    allows; the common ones are checked field by field, the others passed through."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                " + ".join(f"(has(self.{s}) ? 1 : 0)" for s in _VOLUME_SOURCES) + " == 1",
                _ONE_SOURCE_MESSAGE,
            )
        )
    )

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)
    config_map: ConfigMapVolumeSource | None = None
    secret: SecretVolumeSource | None = None
    empty_dir: EmptyDirVolumeSource | None = None
    persistent_volume_claim: PersistentVolumeClaimVolumeSource | None = None
    projected: dict[str, Any] | None = Field(default=None, description="As in a Pod spec.")
    downward_api: dict[str, Any] | None = Field(
        default=None, alias="downwardAPI", description="As in a Pod spec."
    )
    csi: dict[str, Any] | None = Field(default=None, description="As in a Pod spec.")
    ephemeral: dict[str, Any] | None = Field(default=None, description="As in a Pod spec.")

    @model_validator(mode="after")
    def _check_source(self) -> Volume:
        sources = [n for n in type(self).model_fields if n != "name"]
        if sum(getattr(self, n) is not None for n in sources) != 1:
            raise ValueError(_ONE_SOURCE_MESSAGE)
        return self


class VolumeMount(KubeModel):
    """Where the worker container mounts an extra volume."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "!(has(self.subPath) && has(self.subPathExpr))",
                "extraVolumeMounts: set subPath or subPathExpr, not both",
            )
        )
    )

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)
    mount_path: str = Field(min_length=2, max_length=4096, pattern=r"^/")
    read_only: bool | None = None
    sub_path: str | None = Field(default=None, max_length=4096)
    sub_path_expr: str | None = Field(default=None, max_length=4096)

    @model_validator(mode="after")
    def _check_sub_path(self) -> VolumeMount:
        if self.sub_path is not None and self.sub_path_expr is not None:
            raise ValueError("extraVolumeMounts: set subPath or subPathExpr, not both")
        return self


# ---- The rules between the fields of spec.worker ----

LABELS_MESSAGE = (
    "worker.podLabels may not set the labels docpipe selects its pods by: "
    + ", ".join(RESERVED_LABEL_KEYS)
    + f", or any {RESERVED_PREFIX} label"
)
ANNOTATIONS_MESSAGE = (
    f"worker.podAnnotations may not set {RESERVED_PREFIX} annotations or "
    + ", ".join(RESERVED_ANNOTATION_KEYS)
    + " (the operator sets them)"
)
VOLUME_NAME_MESSAGE = (
    "worker.extraVolumes may not use the names of docpipe's own volumes: "
    + ", ".join(RESERVED_VOLUME_NAMES)
    + f", or names starting with {RESERVED_VOLUME_PREFIX}"
)
MOUNT_PATH_MESSAGE = (
    "worker.extraVolumeMounts may not mount at or below docpipe's own mount paths: "
    + ", ".join(RESERVED_MOUNT_PATHS)
)
MOUNT_VOLUME_MESSAGE = "worker.extraVolumeMounts: each mount names one of worker.extraVolumes"

# The keys docpipe sets today, for the CEL rules: a key lookup in a map costs the API server's
# rule budget a constant, where a scan of the keys (for the docpipe.io/ prefix) would be
# estimated at the longest key a request can hold. The operator also refuses the whole prefix.
SET_LABEL_KEYS = (
    *RESERVED_LABEL_KEYS,
    "docpipe.io/pipeline",
    "docpipe.io/revision",
    "docpipe.io/track",
)
SET_ANNOTATION_KEYS = (
    *RESERVED_ANNOTATION_KEYS,
    "docpipe.io/secrets-hash",
    "docpipe.io/secrets-version",
)


def _none_in(field: str, keys: Sequence[str]) -> str:
    return " && ".join(f"!('{k}' in self.{field})" for k in keys)


WORKER_RULES: tuple[tuple[str, str], ...] = (
    (_none_in("podLabels", SET_LABEL_KEYS), LABELS_MESSAGE),
    (_none_in("podAnnotations", SET_ANNOTATION_KEYS), ANNOTATIONS_MESSAGE),
    (
        "self.extraVolumes.all(v, !(v.name in "
        + _quoted(RESERVED_VOLUME_NAMES)
        + f") && !v.name.startsWith('{RESERVED_VOLUME_PREFIX}'))",
        VOLUME_NAME_MESSAGE,
    ),
    (
        "self.extraVolumeMounts.all(m, "
        + " && ".join(
            f"m.mountPath != '{p}' && !m.mountPath.startsWith('{p}/')" for p in RESERVED_MOUNT_PATHS
        )
        + ")",
        MOUNT_PATH_MESSAGE,
    ),
    (
        "self.extraVolumeMounts.all(m, self.extraVolumes.exists(v, v.name == m.name))",
        MOUNT_VOLUME_MESSAGE,
    ),
)


def _reserved_path(path: str) -> bool:
    normal = posixpath.normpath(path)
    return any(normal == p or normal.startswith(f"{p}/") for p in RESERVED_MOUNT_PATHS)


def check_worker_pod(
    *,
    node_selector: Mapping[str, str],
    pod_labels: Mapping[str, str],
    pod_annotations: Mapping[str, str],
    volumes: Sequence[Volume],
    mounts: Sequence[VolumeMount],
) -> None:
    """Raise ValueError when spec.worker's pod fields break a rule between them or override
    what docpipe sets; the messages are the CEL rules' (WORKER_RULES)."""
    check_labels("worker.nodeSelector", node_selector)
    check_labels("worker.podLabels", pod_labels)
    check_labels("worker.podAnnotations", pod_annotations, values=False)
    if any(k in RESERVED_LABEL_KEYS or k.startswith(RESERVED_PREFIX) for k in pod_labels):
        raise ValueError(LABELS_MESSAGE)
    if any(k in RESERVED_ANNOTATION_KEYS or k.startswith(RESERVED_PREFIX) for k in pod_annotations):
        raise ValueError(ANNOTATIONS_MESSAGE)
    names = [v.name for v in volumes]
    if len(names) != len(set(names)):
        raise ValueError("worker.extraVolumes names must be unique")
    if any(n in RESERVED_VOLUME_NAMES or n.startswith(RESERVED_VOLUME_PREFIX) for n in names):
        raise ValueError(VOLUME_NAME_MESSAGE)
    paths = [posixpath.normpath(m.mount_path) for m in mounts]
    if len(paths) != len(set(paths)):
        raise ValueError("worker.extraVolumeMounts mount paths must be unique")
    if any(_reserved_path(m.mount_path) for m in mounts):
        raise ValueError(MOUNT_PATH_MESSAGE)
    if any(m.name not in names for m in mounts):
        raise ValueError(MOUNT_VOLUME_MESSAGE)


# ---- Image references ----

# The grammar of github.com/distribution/reference: [host[:port]/]path[:tag][@digest].
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_HOST_PART = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)"
# `[.]`, not an escaped dot: the pattern goes into a CEL string, where `\.` is no valid escape.
_HOST = rf"{_HOST_PART}(?:[.]{_HOST_PART})*(?::[0-9]+)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_PATTERN = rf"^(?:{_HOST}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::{_TAG})?(?:@{_DIGEST})?$"
IMAGE_MESSAGE = (
    "worker.image must be an image reference: [registry[:port]/]repository[:tag][@digest], "
    "the repository in lowercase (e.g. ghcr.io/example/docpipe:1.0)"
)


def check_image(image: str) -> str:
    """Return `image` if it is a valid image reference; raise ValueError if not."""
    if not re.fullmatch(IMAGE_PATTERN, image):
        raise ValueError(IMAGE_MESSAGE)
    return image


# A field's type that refuses an invalid image reference, naming the field.
ImageReference = Annotated[str, AfterValidator(check_image)]


# ---- Resources ----

QUANTITY_PATTERN = (
    r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:[KMGTPE]i|[numkMGTPE]|[eE][+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))?$"
)
Quantity = int | str


def _check_quantities(field: str, values: Mapping[str, Quantity]) -> None:
    for name, value in values.items():
        if isinstance(value, str) and not re.fullmatch(QUANTITY_PATTERN, value):
            raise ValueError(
                f"worker.resources.{field}.{name}: {value!r} is not a quantity (e.g. 500m, 2, 1Gi)"
            )


class ResourceRequirements(KubeModel):
    """The worker container's resource requests and limits, as in a Pod spec."""

    requests: dict[str, Quantity] | None = Field(default=None, max_length=16)
    limits: dict[str, Quantity] | None = Field(default=None, max_length=16)

    @model_validator(mode="after")
    def _check(self) -> ResourceRequirements:
        _check_quantities("requests", self.requests or {})
        _check_quantities("limits", self.limits or {})
        return self
