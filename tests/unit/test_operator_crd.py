"""The generated CRD: up to date, structural, and agreeing with the model on defaults and rules.

The API server's part is played by three small steps it documents: defaulting from `default`,
OpenAPI validation (jsonschema's draft 4, which shares the boolean exclusive bounds), and the
CEL rules (cel-python).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import pytest
import yaml
from celpy.adapter import json_to_cel

from docpipe_operator.crd import (
    CRD_PATH,
    REGENERATE_COMMAND,
    build_crd,
    render_crd_yaml,
    write_crd,
)
from docpipe_operator.model import SpecError, dump, parse_spec

EXAMPLE_SPEC: dict[str, Any] = {
    "worker": {
        "image": "ghcr.io/example/docpipe:1.0",
        "concurrency": 6,
        "resources": {"requests": {"cpu": "500m"}, "limits": {"memory": "2Gi"}},
        "extraEnv": [{"name": "LOG_LEVEL", "value": "DEBUG"}],
    },
    "database": {"urlSecretRef": {"name": "docpipe-db", "key": "url"}},
    "parser": {"kind": "llamaparse", "apiKeySecretRef": {"name": "llama", "key": "api-key"}},
    "embedder": {"apiKeySecretRef": {"name": "openai", "key": "api-key"}},
    "scaling": {"minReplicas": 0, "maxReplicas": 20, "scaleToZero": {"enabled": True}},
    "quotas": {"openai": {"requestsPerMinute": 3000, "tokensPerMinute": 1_000_000}},
}


def crd_version() -> dict[str, Any]:
    version: dict[str, Any] = build_crd()["spec"]["versions"][0]
    return version


def root_schema() -> dict[str, Any]:
    schema: dict[str, Any] = crd_version()["schema"]["openAPIV3Schema"]
    return schema


def spec_schema() -> dict[str, Any]:
    schema: dict[str, Any] = root_schema()["properties"]["spec"]
    return schema


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Fill absent fields from `default`, recursively, as the API server does."""
    if isinstance(value, dict):
        for name, prop in schema.get("properties", {}).items():
            if name not in value and "default" in prop:
                value[name] = copy.deepcopy(prop["default"])
            if name in value:
                value[name] = apply_defaults(prop, value[name])
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            for key in value:
                value[key] = apply_defaults(additional, value[key])
    if isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], item) for item in value]
    return value


def cel_violations(schema: dict[str, Any], value: Any) -> list[str]:
    """The messages of the CEL rules `value` breaks, at every level of the schema."""
    env = celpy.Environment()
    broken = []
    for rule in schema.get("x-kubernetes-validations", []):
        program = env.program(env.compile(rule["rule"]))
        if not bool(program.evaluate({"self": json_to_cel(value)})):
            broken.append(str(rule["message"]))
    if isinstance(value, dict):
        for name, prop in schema.get("properties", {}).items():
            if name in value:
                broken += cel_violations(prop, value[name])
    if isinstance(value, list) and "items" in schema:
        for item in value:
            broken += cel_violations(schema["items"], item)
    return broken


def admit(spec: dict[str, Any]) -> dict[str, Any]:
    """Default and validate a spec as the API server would; raise ValueError if refused."""
    defaulted = apply_defaults(spec_schema(), copy.deepcopy(spec))
    jsonschema.Draft4Validator(spec_schema()).validate(defaulted)
    broken = cel_violations(spec_schema(), defaulted)
    if broken:
        raise ValueError("; ".join(broken))
    result: dict[str, Any] = defaulted
    return result


def walk(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for name, prop in node.get("properties", {}).items():
            yield from walk(prop, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            yield from walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_checked_in_crd_equals_the_generated_one() -> None:
    checked_in = CRD_PATH.read_text(encoding="utf-8") if CRD_PATH.exists() else ""

    assert checked_in == render_crd_yaml(), (
        f"{CRD_PATH} is stale: regenerate it with `{REGENERATE_COMMAND}` and commit it"
    )


def test_write_crd_writes_yaml_that_loads_to_the_built_crd(tmp_path: Path) -> None:
    written = write_crd(tmp_path / "crd.yaml")

    assert yaml.safe_load(written.read_text(encoding="utf-8")) == build_crd()


def test_crd_names_group_kind_plural_and_short_name() -> None:
    crd = build_crd()

    assert crd["metadata"]["name"] == "documentpipelines.docpipe.io"
    assert crd["spec"]["group"] == "docpipe.io"
    assert crd["spec"]["names"]["kind"] == "DocumentPipeline"
    assert crd["spec"]["names"]["shortNames"] == ["dp"]
    assert crd_version()["name"] == "v1alpha1"


def test_schema_has_no_json_schema_constructs_the_api_server_refuses() -> None:
    for path, node in walk(root_schema()):
        assert not {"$ref", "$defs", "anyOf", "allOf", "oneOf", "title", "const"} & set(node), path
        assert node.get("type") != "null", path


def test_every_schema_node_has_a_type() -> None:
    for path, node in walk(root_schema()):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path


def test_unknown_fields_are_preserved_only_in_pod_spec_passthroughs() -> None:
    preserved = {
        path
        for path, node in walk(root_schema())
        if node.get("x-kubernetes-preserve-unknown-fields")
    }

    assert preserved == {
        ".spec.worker.extraEnv[].valueFrom",
        ".spec.worker.extraVolumes[].projected",
        ".spec.worker.extraVolumes[].downwardAPI",
        ".spec.worker.extraVolumes[].csi",
        ".spec.worker.extraVolumes[].ephemeral",
    }


def test_an_unknown_spec_field_is_pruned_by_the_api_server_and_refused_by_the_operator() -> None:
    # No preserve-unknown-fields on the way down: a real API server prunes the field (or, with
    # kubectl's strict field validation, refuses it); the operator refuses what reaches it.
    worker = spec_schema()["properties"]["worker"]
    assert "x-kubernetes-preserve-unknown-fields" not in spec_schema()
    assert "x-kubernetes-preserve-unknown-fields" not in worker
    assert "nodeSelecter" not in worker["properties"]
    spec = {**EXAMPLE_SPEC, "worker": {**EXAMPLE_SPEC["worker"], "nodeSelecter": {"a": "b"}}}

    with pytest.raises(SpecError, match=r"spec\.worker\.nodeSelecter: unknown field"):
        parse_spec(spec)


def test_every_default_is_valid_against_its_own_schema() -> None:
    for path, node in walk(root_schema()):
        if "default" in node:
            defaulted = apply_defaults(node, copy.deepcopy(node["default"]))
            errors = list(jsonschema.Draft4Validator(node).iter_errors(defaulted))
            assert errors == [], f"{path}: {errors}"


def test_bounds_reach_the_schema() -> None:
    scaling = spec_schema()["properties"]["scaling"]["properties"]

    assert scaling["minReplicas"]["minimum"] == 0
    assert scaling["maxReplicas"]["maximum"] == 1000
    assert scaling["intervalSeconds"]["default"] == 5
    quotas = spec_schema()["properties"]["quotas"]["properties"]
    assert quotas["openai"]["properties"]["requestsPerMinute"]["minimum"] == 1
    assert quotas["openai"]["properties"]["tokensPerMinute"]["type"] == "integer"
    assert quotas["llamaparse"]["properties"]["uploadsPerMinute"]["minimum"] == 1


def test_quota_limited_is_a_condition_type_the_schema_admits() -> None:
    condition = root_schema()["properties"]["status"]["properties"]["conditions"]["items"]

    assert "QuotaLimited" in condition["properties"]["type"]["enum"]


def test_example_spec_is_admitted_and_defaulted_as_the_model_defaults_it() -> None:
    admitted = admit(EXAMPLE_SPEC)

    assert admitted == dump(parse_spec(EXAMPLE_SPEC))
    assert admitted["scaling"]["intervalSeconds"] == 5
    assert admitted["worker"]["probes"]["liveness"]["periodSeconds"] == 10
    assert admitted["quotas"]["openai"] == {"requestsPerMinute": 3000, "tokensPerMinute": 1_000_000}
    assert admitted["quotas"]["llamaparse"] == {}


def test_cross_field_rules_are_cel_validations_on_the_schema() -> None:
    rules = {
        path: [rule["rule"] for rule in node["x-kubernetes-validations"]]
        for path, node in walk(root_schema())
        if "x-kubernetes-validations" in node
    }

    assert "self.minReplicas <= self.maxReplicas" in rules[".spec.scaling"]
    assert "self.scaleToZero.enabled == (self.minReplicas == 0)" in rules[".spec.scaling"]
    assert "self.source != 'prometheus' || has(self.prometheus)" in rules[".spec.metrics"]
    assert any("metadata.name" in rule for rule in rules[""])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"scaling": {"minReplicas": 5, "maxReplicas": 2}}, "minReplicas must be <="),
        ({"scaling": {"minReplicas": 1, "scaleToZero": {"enabled": True}}}, "exactly when"),
        ({"scaling": {"minReplicas": 0}}, "exactly when"),
        ({"metrics": {"source": "prometheus"}}, "prometheus.url is required"),
        ({"chunking": {"maxChars": 1000, "overlapChars": 500}}, "less than half"),
        ({"parser": {"kind": "llamaparse"}}, "parser.apiKeySecretRef is required"),
        ({"embedder": {}}, "embedder.apiKeySecretRef is required"),
        (
            {"worker": {"image": "x", "extraEnv": [{"name": "DOCPIPE_REVISION", "value": "x"}]}},
            "may not set a variable the operator sets",
        ),
        (
            {"worker": {"image": "x", "extraEnv": [{"name": "A", "value": "1", "valueFrom": {}}]}},
            "value or valueFrom, not both",
        ),
        (
            {
                "worker": {
                    "image": "x",
                    "extraEnv": [{"name": "DOCPIPE_OPENAI_TOKENS_PER_MINUTE", "value": "9"}],
                }
            },
            "may not set a variable the operator sets",
        ),
        ({"worker": {"image": "Not A Valid Image!!"}}, "must be an image reference"),
        ({"worker": {"image": "ghcr.io/Example/docpipe:1.0"}}, "must be an image reference"),
        ({"worker": {"image": "docpipe:"}}, "must be an image reference"),
        (
            {"worker": {"image": "x", "podLabels": {"docpipe.io/pipeline": "other"}}},
            "may not set the labels docpipe selects its pods by",
        ),
        (
            {"worker": {"image": "x", "podAnnotations": {"docpipe.io/secrets-version": "1"}}},
            "podAnnotations may not set",
        ),
        (
            {"worker": {"image": "x", "extraVolumes": [{"name": "tmp", "emptyDir": {}}]}},
            "names of docpipe's own volumes",
        ),
        (
            {
                "worker": {
                    "image": "x",
                    "extraVolumes": [{"name": "data", "emptyDir": {}}],
                    "extraVolumeMounts": [{"name": "data", "mountPath": "/tmp/data"}],
                }
            },
            "at or below docpipe's own mount paths",
        ),
        (
            {
                "worker": {
                    "image": "x",
                    "extraVolumeMounts": [{"name": "data", "mountPath": "/data"}],
                }
            },
            "each mount names one of worker.extraVolumes",
        ),
        (
            {"worker": {"image": "x", "extraVolumes": [{"name": "data"}]}},
            "exactly one source",
        ),
        (
            {"worker": {"image": "x", "tolerations": [{"operator": "Equal", "value": "v"}]}},
            "an empty key needs operator Exists",
        ),
        (
            {
                "worker": {
                    "image": "x",
                    "topologySpreadConstraints": [{"topologyKey": "zone", "minDomains": 2}],
                }
            },
            "minDomains needs whenUnsatisfiable DoNotSchedule",
        ),
    ],
)
def test_api_server_and_model_refuse_an_inconsistent_spec_with_the_same_message(
    change: dict[str, Any], message: str
) -> None:
    spec = {**EXAMPLE_SPEC, **change}

    with pytest.raises(ValueError, match=message):
        admit(spec)
    with pytest.raises(SpecError, match=message):
        parse_spec(spec)


@pytest.mark.parametrize(
    "change",
    [
        {"scaling": {"minReplicas": 3, "maxReplicas": 3}},
        {"metrics": {"source": "prometheus", "prometheus": {"url": "http://prom:9090"}}},
        {"embedder": {"baseUrl": "http://mocks:8080/v1"}},
        {"parser": {"kind": "local"}},
        {"worker": {"image": "registry.example.com:5000/team/docpipe@sha256:" + "a" * 64}},
        {"worker": {"image": "localhost/docpipe_worker:2026.1-rc.1"}},
        {
            "worker": {
                "image": "docpipe",
                "nodeSelector": {"pool": "ingest"},
                "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                "topologySpreadConstraints": [],
                "priorityClassName": "ingest",
                "podLabels": {"team": "search"},
                "podAnnotations": {"example.com/owner": "search"},
                "extraVolumes": [{"name": "models", "configMap": {"name": "models"}}],
                "extraVolumeMounts": [{"name": "models", "mountPath": "/models"}],
            }
        },
        {"rollout": {"noTraffic": {"action": "Wait"}}},
    ],
)
def test_api_server_and_model_both_admit_a_consistent_spec(change: dict[str, Any]) -> None:
    spec = {**EXAMPLE_SPEC, **change}

    assert admit(spec) == dump(parse_spec(spec))


@pytest.mark.parametrize(
    ("name", "admitted"), [("docs", True), ("my.docs", False), ("x" * 49, False)]
)
def test_root_rule_limits_the_object_name(name: str, admitted: bool) -> None:
    body = {"metadata": {"name": name}, "spec": admit(EXAMPLE_SPEC)}
    root_rules = {k: v for k, v in root_schema().items() if k != "properties"}

    assert (cel_violations(root_rules, body) == []) is admitted


def test_status_and_scale_subresources_point_at_replica_fields() -> None:
    subresources = crd_version()["subresources"]

    assert subresources["status"] == {}
    assert subresources["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    status = root_schema()["properties"]["status"]["properties"]
    assert status["selector"]["type"] == "string"
    assert status["replicas"]["type"] == "integer"
    assert spec_schema()["properties"]["replicas"]["type"] == "integer"


def test_printer_columns_show_ready_desired_queue_phase_age() -> None:
    columns = {c["name"]: c for c in crd_version()["additionalPrinterColumns"]}

    assert [c for c in columns if "priority" not in columns[c]] == [
        "Ready",
        "Desired",
        "Queue",
        "Phase",
        "Rollout",
        "Age",
    ]
    assert columns["Queue"]["jsonPath"] == ".status.queueDepth"
    assert columns["Rollout"]["jsonPath"] == ".status.rollout.phase"
    assert [c for c in columns if columns[c].get("priority") == 1] == ["Image", "Reason"]
    assert columns["Age"]["type"] == "date"


def test_conditions_are_a_map_list_keyed_by_type() -> None:
    conditions = root_schema()["properties"]["status"]["properties"]["conditions"]

    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]


def test_cel_rules_use_no_escape_sequence_cel_strings_refuse() -> None:
    # cel-go accepts only \\ \' \" \` \? \a \b \f \n \r \t \v and numeric escapes in a string
    # literal; a regex's `\.` in a rule would make the API server refuse the whole CRD.
    allowed = set("\\'\"`?abfnrtvxuU01234567")
    for path, node in walk(root_schema()):
        for rule in node.get("x-kubernetes-validations", []):
            text = rule["rule"]
            escapes = {text[i + 1] for i, c in enumerate(text[:-1]) if c == "\\"}
            assert escapes <= allowed, f"{path}: {text}"
