"""Placement and pod metadata of the worker pods (spec.worker): node selector, tolerations,
affinity, topology spread, priority class, extra labels, annotations, volumes and mounts. Rendered
into the pod template, refused where they would override what docpipe sets, and valid against the
real Kubernetes schema (kubernetes-validate, strict)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from kubernetes_validate import utils as kv_utils

from docpipe_operator.model import DocumentPipelineSpec, SpecError, parse_spec
from docpipe_operator.podspec import (
    RESERVED_ANNOTATION_KEYS,
    RESERVED_LABEL_KEYS,
    RESERVED_MOUNT_PATHS,
    RESERVED_PREFIX,
    RESERVED_VOLUME_NAMES,
    SET_ANNOTATION_KEYS,
    SET_LABEL_KEYS,
)
from docpipe_operator.rendering import (
    render_canary_deployment,
    render_deployment,
    selector_labels,
)

ROOT = Path(__file__).resolve().parents[2]
NAME = "docs"
NAMESPACE = "ingest"
# The oldest Kubernetes the chart supports and the newest kubernetes-validate knows.
VERSIONS = ("1.30.0", str(kv_utils.latest_version()))

PLACEMENT: dict[str, Any] = {
    "nodeSelector": {"node.example.com/pool": "ingest"},
    "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "ingest", "effect": "NoSchedule"},
        {
            "key": "node.kubernetes.io/unreachable",
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": 60,
        },
    ],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}
                        ]
                    }
                ]
            }
        },
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 50,
                    "podAffinityTerm": {
                        "labelSelector": {"matchLabels": {"app": "search"}},
                        "topologyKey": "kubernetes.io/hostname",
                    },
                }
            ]
        },
    },
    "topologySpreadConstraints": [
        {
            "maxSkew": 2,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "DoNotSchedule",
            "minDomains": 2,
        },
    ],
    "priorityClassName": "ingest-high",
    "podLabels": {"team": "search", "cost-center": "c-42"},
    "podAnnotations": {"example.com/owner": "search team"},
    "extraVolumes": [
        {"name": "models", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
        {
            "name": "config",
            "configMap": {"name": "ingest-config", "items": [{"key": "a.yaml", "path": "a.yaml"}]},
        },
        {"name": "cache", "emptyDir": {"sizeLimit": "1Gi"}},
        {"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}},
    ],
    "extraVolumeMounts": [
        {"name": "models", "mountPath": "/models", "readOnly": True},
        {"name": "config", "mountPath": "/etc/ingest"},
        {"name": "cache", "mountPath": "/var/cache/ingest"},
        {"name": "token", "mountPath": "/var/run/secrets/ingest", "readOnly": True},
    ],
}


def make_spec(**worker: Any) -> DocumentPipelineSpec:
    return parse_spec(
        {
            "worker": {"image": "ghcr.io/example/docpipe:1.0", **worker},
            "database": {"urlSecretRef": {"name": "docpipe-db", "key": "url"}},
            "embedder": {"apiKeySecretRef": {"name": "openai", "key": "api-key"}},
        }
    )


def pod_template(spec: DocumentPipelineSpec) -> dict[str, Any]:
    template: dict[str, Any] = render_deployment(NAME, NAMESPACE, spec, replicas=2)["spec"][
        "template"
    ]
    return template


def schema_errors(obj: dict[str, Any]) -> list[str]:
    errors = []
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{version}: {str(exc).splitlines()[0]}")
    return errors


def test_placement_reaches_the_pod_spec() -> None:
    pod = pod_template(make_spec(**PLACEMENT))["spec"]

    assert pod["nodeSelector"] == PLACEMENT["nodeSelector"]
    assert pod["tolerations"] == PLACEMENT["tolerations"]
    assert pod["affinity"] == PLACEMENT["affinity"]
    assert pod["priorityClassName"] == "ingest-high"
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"
    assert spread["minDomains"] == 2


def test_rendered_deployment_and_canary_pass_the_kubernetes_schema() -> None:
    spec = make_spec(**PLACEMENT)

    stable = render_deployment(NAME, NAMESPACE, spec, replicas=2)
    canary = render_canary_deployment(NAME, NAMESPACE, spec, replicas=1, canary_weight=0.2)

    assert schema_errors(stable) == []
    assert schema_errors(canary) == []
    assert schema_errors(render_deployment(NAME, NAMESPACE, make_spec(), replicas=1)) == []


def test_the_schema_check_catches_a_malformed_pod_spec() -> None:
    broken = render_deployment(NAME, NAMESPACE, make_spec(**PLACEMENT), replicas=2)
    broken["spec"]["template"]["spec"]["tolerations"][0]["tolerationSecs"] = 5

    assert schema_errors(broken) != []


def test_pods_spread_over_nodes_by_default_without_blocking_scheduling() -> None:
    (spread,) = pod_template(make_spec())["spec"]["topologySpreadConstraints"]

    assert spread == {
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": selector_labels(NAME)},
    }


def test_an_empty_spread_list_turns_the_default_spread_off() -> None:
    assert (
        "topologySpreadConstraints"
        not in pod_template(make_spec(topologySpreadConstraints=[]))["spec"]
    )


def test_a_spread_without_selector_counts_the_pipelines_workers_and_one_with_keeps_its_own() -> (
    None
):
    spec = make_spec(
        topologySpreadConstraints=[
            {"topologyKey": "topology.kubernetes.io/zone"},
            {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"a": "b"}}},
        ]
    )

    zone, host = pod_template(spec)["spec"]["topologySpreadConstraints"]

    assert zone["labelSelector"] == {"matchLabels": selector_labels(NAME)}
    assert zone["maxSkew"] == 1
    assert zone["whenUnsatisfiable"] == "ScheduleAnyway"
    assert host["labelSelector"] == {"matchLabels": {"a": "b"}}


def test_extra_labels_and_annotations_are_added_beside_docpipes_own() -> None:
    template = pod_template(make_spec(**PLACEMENT))

    labels = template["metadata"]["labels"]
    assert labels["team"] == "search"
    assert selector_labels(NAME).items() <= labels.items()
    assert template["metadata"]["annotations"]["example.com/owner"] == "search team"


def test_extra_volumes_and_mounts_follow_docpipes_own() -> None:
    pod = pod_template(make_spec(**PLACEMENT))["spec"]

    assert [v["name"] for v in pod["volumes"]] == ["tmp", "models", "config", "cache", "token"]
    mounts = pod["containers"][0]["volumeMounts"]
    assert mounts[0] == {"name": "tmp", "mountPath": "/tmp"}
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in mounts


def test_every_label_and_annotation_docpipe_puts_on_a_pod_is_refused_by_cel_and_the_model() -> None:
    canary = render_canary_deployment(
        NAME,
        NAMESPACE,
        make_spec(secretsVersion="2"),
        replicas=1,
        canary_weight=0.2,
        secrets_hash="abc",
    )
    metadata = canary["spec"]["template"]["metadata"]

    for key in metadata["labels"]:
        assert key in RESERVED_LABEL_KEYS or key.startswith(RESERVED_PREFIX), key
        assert key in SET_LABEL_KEYS, key
    assert metadata["annotations"]
    for key in metadata["annotations"]:
        assert key in RESERVED_ANNOTATION_KEYS or key.startswith(RESERVED_PREFIX), key
        assert key in SET_ANNOTATION_KEYS, key


def test_every_volume_and_mount_path_docpipe_uses_is_reserved() -> None:
    spec = parse_spec(
        {
            "worker": {"image": "ghcr.io/example/docpipe:1.0"},
            "database": {
                "urlSecretRef": {"name": "db", "key": "url"},
                "caSecretRef": {"name": "db-ca", "key": "ca.crt"},
            },
            "embedder": {"baseUrl": "http://mocks/v1"},
            "rollout": {"goldenSet": {"configMap": "golden"}},
        }
    )
    pod = pod_template(spec)["spec"]
    assert len(pod["volumes"]) == 3

    for volume in pod["volumes"]:
        assert volume["name"] in RESERVED_VOLUME_NAMES, volume
    for mount in pod["containers"][0]["volumeMounts"]:
        path = mount["mountPath"]
        assert any(path == p or path.startswith(f"{p}/") for p in RESERVED_MOUNT_PATHS), path


# Fields of the pod types that are maps (of labels, quantities): left out when empty.
MAPS = frozenset({"labels", "annotations", "matchLabels", "nodeSelector", "requests", "limits"})


def _walk(node: Any, path: str = "") -> list[str]:
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            # Empty objects (emptyDir: {}, podAffinity: {}) are stored as sent; maps are not.
            if value == [] or (value == {} and key in MAPS):
                found.append(f"{path}.{key}")
            found += _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            found += _walk(item, f"{path}[{index}]")
    return found


def test_the_pod_template_has_no_empty_list_or_map_the_api_server_would_drop() -> None:
    # The API server leaves empty fields out of what it stores; one in the template would look
    # like drift to the next round, which would patch the Deployment every time.
    spec = make_spec(
        **{
            **PLACEMENT,
            "nodeSelector": {},
            "tolerations": [],
            "affinity": {
                "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": []},
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "a", "operator": "Exists"}]}
                        ]
                    }
                },
            },
            "topologySpreadConstraints": [
                {
                    "topologyKey": "zone",
                    "labelSelector": {"matchLabels": {}, "matchExpressions": []},
                }
            ],
            "resources": {"requests": {"cpu": "1"}, "limits": {}},
        }
    )

    assert _walk(pod_template(spec)) == []


def test_placement_is_part_of_the_revision() -> None:
    plain = pod_template(make_spec())["metadata"]["labels"]["docpipe.io/revision"]
    placed = pod_template(make_spec(nodeSelector={"pool": "a"}))["metadata"]["labels"][
        "docpipe.io/revision"
    ]

    assert plain != placed


@pytest.mark.parametrize(
    ("worker", "message"),
    [
        ({"podLabels": {"docpipe.io/pipeline": "other"}}, "may not set the labels docpipe"),
        ({"podLabels": {"app.kubernetes.io/component": "api"}}, "may not set the labels docpipe"),
        ({"podLabels": {"docpipe.io/track": "canary"}}, "may not set the labels docpipe"),
        ({"podLabels": {"bad key!": "x"}}, r"worker\.podLabels: key 'bad key!'"),
        ({"podLabels": {"team": "x" * 64}}, r"worker\.podLabels: the value of 'team'"),
        ({"podAnnotations": {"docpipe.io/revision": "x"}}, "podAnnotations may not set"),
        (
            {"podAnnotations": {"controller.kubernetes.io/pod-deletion-cost": "9"}},
            "podAnnotations may not set",
        ),
        ({"nodeSelector": {"pool/": "a"}}, r"worker\.nodeSelector"),
        ({"extraVolumes": [{"name": "tmp", "emptyDir": {}}]}, "names of docpipe's own volumes"),
        (
            {"extraVolumes": [{"name": "docpipe-x", "emptyDir": {}}]},
            "names of docpipe's own volumes",
        ),
        (
            {
                "extraVolumes": [{"name": "a", "emptyDir": {}}],
                "extraVolumeMounts": [{"name": "a", "mountPath": "/tmp/a"}],
            },
            "at or below docpipe's own mount paths",
        ),
        (
            {
                "extraVolumes": [{"name": "a", "emptyDir": {}}],
                "extraVolumeMounts": [{"name": "a", "mountPath": "/etc/docpipe"}],
            },
            "at or below docpipe's own mount paths",
        ),
        (
            {"extraVolumeMounts": [{"name": "nowhere", "mountPath": "/data"}]},
            "each mount names one of worker.extraVolumes",
        ),
        (
            {"extraVolumes": [{"name": "a", "emptyDir": {}, "configMap": {"name": "c"}}]},
            "exactly one source",
        ),
        ({"extraVolumes": [{"name": "a"}]}, "exactly one source"),
        ({"extraVolumes": [{"name": "a", "hostPath": {"path": "/"}}]}, "unknown field"),
        (
            {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]},
            "operator Exists takes no value",
        ),
        ({"tolerations": [{"value": "v"}]}, "an empty key needs operator Exists"),
        (
            {"tolerations": [{"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5}]},
            "tolerationSeconds applies to effect NoExecute only",
        ),
        (
            {"topologySpreadConstraints": [{"topologyKey": "zone", "minDomains": 2}]},
            "minDomains needs whenUnsatisfiable DoNotSchedule",
        ),
        (
            {
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {"matchExpressions": [{"key": "k", "operator": "In"}]}
                            ]
                        }
                    }
                }
            },
            "In and NotIn need values",
        ),
        ({"priorityClassName": "High Priority"}, r"spec\.worker\.priorityClassName"),
        ({"resources": {"requests": {"cpu": "lots"}}}, "'lots' is not a quantity"),
        ({"resources": {"request": {"cpu": "1"}}}, r"spec\.worker\.resources\.request: unknown"),
    ],
)
def test_pod_fields_that_would_break_or_override_docpipe_are_refused(
    worker: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        make_spec(**worker)


def test_the_placement_example_renders_a_valid_deployment() -> None:
    example = yaml.safe_load(
        (ROOT / "manifests" / "examples" / "documentpipeline-placement.yaml").read_text()
    )
    spec = parse_spec(example["spec"])
    rendered = render_deployment(
        example["metadata"]["name"], example["metadata"]["namespace"], spec, replicas=2
    )

    assert schema_errors(rendered) == []
    pod = rendered["spec"]["template"]["spec"]
    assert [c["topologyKey"] for c in pod["topologySpreadConstraints"]] == [
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    ]


def test_resource_quantities_are_rendered_as_the_strings_the_api_server_stores() -> None:
    resources = pod_template(make_spec(resources={"requests": {"cpu": 2, "memory": "1Gi"}}))[
        "spec"
    ]["containers"][0]["resources"]

    assert resources == {"requests": {"cpu": "2", "memory": "1Gi"}}
