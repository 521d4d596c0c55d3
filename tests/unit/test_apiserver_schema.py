"""The emulator's admission of custom resources answers what a real API server (1.30) answers:
the same pruning, defaults and refusals, word for word. The expected texts are refusals real
clusters gave (quoted in public issues) or built from apimachinery's message formats."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from docpipe_operator.crd import build_crd
from tests.support.apiserver_schema import (
    admit,
    apply_defaults,
    go_float,
    invalid_status,
    prune,
    strict_decoding_status,
    validation_errors,
)

SCHEMA: dict[str, Any] = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def pipeline(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "worker": {"image": "docpipe:1"},
        "database": {"urlSecretRef": {"name": "db", "key": "url"}},
        "embedder": {"baseUrl": "http://mocks:8000/v1"},
    }
    base.update(spec)
    return {
        "apiVersion": "docpipe.io/v1alpha1",
        "kind": "DocumentPipeline",
        "metadata": {"name": "docs", "namespace": "default"},
        "spec": base,
    }


def messages(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    return [str(e) for e in admit(SCHEMA, obj, old).errors]


# ---- message shapes seen from real clusters ----


def test_a_wrong_type_is_named_as_the_server_names_it() -> None:
    # Real: 'spec.info.value: Invalid value: "integer": spec.info.value in body must be of type
    # string: "integer"' (kubernetes-sigs/application#224).
    schema = {"type": "object", "properties": {"spec": {"type": "object", "properties": {
        "info": {"type": "object", "properties": {"value": {"type": "string"}}}}}}}  # fmt: skip
    errors = validation_errors(schema, {"spec": {"info": {"value": 3}}})
    assert str(errors[0]) == (
        'spec.info.value: Invalid value: "integer": spec.info.value in body must be of type '
        'string: "integer"'
    )


def test_a_rule_that_cannot_evaluate_names_the_missing_key_and_the_message() -> None:
    # Real: 'spec.resources: Invalid value: "object": no such key: limits evaluating rule:
    # resources.limits is mandatory to register with Grafana Cloud k6' (grafana/k6-operator#697).
    rule = {"rule": "size(self.limits) > 0", "message": "resources.limits is mandatory"}
    schema = {"type": "object", "properties": {"spec": {"type": "object", "properties": {
        "resources": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                      "x-kubernetes-validations": [rule]}}}}}  # fmt: skip
    errors = validation_errors(schema, {"spec": {"resources": {"requests": {}}}})
    assert [str(e) for e in errors] == [
        'spec.resources: Invalid value: "object": no such key: limits evaluating rule: '
        "resources.limits is mandatory"
    ]


def test_unknown_fields_under_strict_validation_are_a_bad_request_naming_them() -> None:
    # Real: 'HelloWorldService in version "v1alpha1" cannot be handled as a HelloWorldService:
    # strict decoding error: unknown field "spec.replicas"' (cloud-ark/kubeplus#1381).
    status = strict_decoding_status("DocumentPipeline", "v1alpha1", ["spec.size", "spec.x.y"])
    assert status["code"] == 400
    assert status["reason"] == "BadRequest"
    assert status["message"] == (
        'DocumentPipeline in version "v1alpha1" cannot be handled as a DocumentPipeline: strict '
        'decoding error: unknown field "spec.size", unknown field "spec.x.y"'
    )


# ---- the DocumentPipeline CRD ----


def test_a_value_below_the_minimum_gets_the_422_with_one_cause() -> None:
    obj = pipeline(worker={"image": "docpipe:1", "concurrency": 0})
    errors = admit(SCHEMA, obj).errors
    status = invalid_status("docpipe.io", "DocumentPipeline", "docs", errors)
    assert status == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'DocumentPipeline.docpipe.io "docs" is invalid: spec.worker.concurrency: '
        "Invalid value: 0: spec.worker.concurrency in body should be greater than or equal to 1",
        "reason": "Invalid",
        "details": {
            "name": "docs",
            "group": "docpipe.io",
            "kind": "DocumentPipeline",
            "causes": [
                {
                    "reason": "FieldValueInvalid",
                    "message": "Invalid value: 0: spec.worker.concurrency in body should be "
                    "greater than or equal to 1",
                    "field": "spec.worker.concurrency",
                }
            ],
        },
        "code": 422,
    }


def test_several_errors_are_listed_in_brackets() -> None:
    obj = pipeline(worker={"image": "docpipe:1", "concurrency": 0, "metricsPort": 70000})
    status = invalid_status("docpipe.io", "DocumentPipeline", "docs", admit(SCHEMA, obj).errors)
    assert status["message"].startswith('DocumentPipeline.docpipe.io "docs" is invalid: [')
    assert (
        "spec.worker.metricsPort in body should be less than or equal to 65535"
        in (status["message"])
    )
    assert len(status["details"]["causes"]) == 2


def test_a_missing_required_field_is_required_and_blocks_the_rules() -> None:
    obj = pipeline()
    del obj["spec"]["database"]
    obj["spec"]["scaling"] = {"minReplicas": 5, "maxReplicas": 2}
    assert messages(obj) == [
        "spec.database: Required value",
        '<nil>: Invalid value: "null": some validation rules were not checked because the '
        "object was invalid; correct the existing errors to complete validation",
    ]


def test_a_value_outside_an_enum_lists_the_supported_values() -> None:
    obj = pipeline(worker={"image": "docpipe:1", "imagePullPolicy": "Sometimes"})
    assert messages(obj)[0] == (
        'spec.worker.imagePullPolicy: Unsupported value: "Sometimes": supported values: '
        '"Always", "IfNotPresent", "Never"'
    )


def test_lengths_and_patterns_are_worded_as_the_server_words_them() -> None:
    obj = pipeline(
        worker={"image": "", "serviceAccountName": "a" * 300},
        embedder={"baseUrl": "mocks:8000"},
    )
    assert sorted(messages(obj)[:3]) == [
        'spec.embedder.baseUrl: Invalid value: "mocks:8000": spec.embedder.baseUrl in body '
        "should match '^https?://'",
        'spec.worker.image: Invalid value: "": spec.worker.image in body should be at least 1 '
        "chars long",
        "spec.worker.serviceAccountName: Too long: may not be longer than 253",
    ]


def test_a_failing_rule_gives_its_message_at_its_field() -> None:
    obj = pipeline(chunking={"maxChars": 200, "overlapChars": 150})
    assert messages(obj) == [
        'spec.chunking: Invalid value: "object": chunking.overlapChars must be less than half '
        "of chunking.maxChars"
    ]


def test_a_rule_on_the_root_is_reported_at_nil() -> None:
    obj = pipeline()
    obj["metadata"]["name"] = "Docs"
    (message,) = messages(obj)
    assert message.startswith('<nil>: Invalid value: "object": metadata.name must be at most 48')


def test_a_rule_on_list_items_names_the_item() -> None:
    env = [{"name": "LOG", "value": "1"}, {"name": "DATABASE_URL", "value": "x"}]
    obj = pipeline(worker={"image": "docpipe:1", "extraEnv": env})
    (message,) = messages(obj)
    assert message.startswith('spec.worker.extraEnv[1]: Invalid value: "object": worker.extraEnv')


def test_duplicate_keys_of_a_map_list_are_duplicate_values() -> None:
    env = [{"name": "LOG", "value": "1"}, {"name": "LOG", "value": "2"}]
    obj = pipeline(worker={"image": "docpipe:1", "extraEnv": env})
    assert messages(obj) == [
        'spec.worker.extraEnv[1]: Duplicate value: map[string]interface {}{"name":"LOG"}'
    ]


def test_unknown_fields_are_pruned_but_preserved_where_the_schema_says_so() -> None:
    obj = pipeline(size=3)
    obj["spec"]["database"]["urlSecretRef"]["extra"] = True
    admitted = admit(SCHEMA, obj)
    assert admitted.pruned == ["spec.database.urlSecretRef.extra", "spec.size"]
    assert "size" not in admitted.obj["spec"]
    assert admitted.obj["metadata"] == obj["metadata"]
    free = {"type": "object", "properties": {"spec": {"type": "object",
            "x-kubernetes-preserve-unknown-fields": True}}}  # fmt: skip
    kept = {"spec": {"gpu": {"any": 1}}, "status": {"x": 1}}
    assert prune(free, kept) == ["status"]
    assert kept == {"spec": {"gpu": {"any": 1}}}


def test_too_many_properties_is_too_many() -> None:
    schema = {"type": "object", "properties": {"labels": {"type": "object", "maxProperties": 2,
              "additionalProperties": {"type": "string"}}}}  # fmt: skip
    errors = validation_errors(schema, {"labels": {"a": "1", "b": "2", "c": "3"}})
    assert [str(e) for e in errors] == ["labels: Too many: 3: must have at most 2 items"]


def test_defaults_fill_absent_fields_top_down_and_replace_nulls() -> None:
    obj = pipeline(rollout=None)
    admitted = admit(SCHEMA, obj)
    spec = admitted.obj["spec"]
    assert admitted.errors == []
    assert spec["worker"]["concurrency"] == 8
    assert spec["worker"]["probes"]["liveness"]["periodSeconds"] == 10
    assert spec["scaling"]["scaleToZero"] == {"enabled": False, "idleSeconds": 600}
    assert spec["rollout"]["strategy"] == "Canary"
    assert "replicas" not in spec  # no default: stays absent


def test_an_update_ratchets_errors_at_unchanged_values() -> None:
    stored = admit(SCHEMA, pipeline(scaling={"minReplicas": 5, "maxReplicas": 2})).obj
    status_written = copy.deepcopy(stored)
    status_written["status"] = {"phase": "Degraded"}
    assert messages(status_written, old=stored) == []
    respecified = copy.deepcopy(stored)
    respecified["spec"]["scaling"]["maxReplicas"] = 3
    assert messages(respecified, old=stored) == [
        'spec.scaling: Invalid value: "object": scaling.minReplicas must be <= scaling.maxReplicas'
    ]


def test_a_transition_rule_runs_only_on_updates() -> None:
    rule = {"rule": "self == oldSelf", "message": "is immutable"}
    schema = {"type": "object", "properties": {"spec": {"type": "object", "properties": {
        "kind": {"type": "string", "x-kubernetes-validations": [rule]}}}}}  # fmt: skip
    assert validation_errors(schema, {"spec": {"kind": "a"}}) == []
    errors = validation_errors(schema, {"spec": {"kind": "b"}}, old={"spec": {"kind": "a"}})
    assert [str(e) for e in errors] == ['spec.kind: Invalid value: "string": is immutable']


def test_a_rule_reason_and_field_path_shape_the_error() -> None:
    rule = {
        "rule": "!has(self.b)",
        "message": "b is not allowed",
        "reason": "FieldValueForbidden",
        "fieldPath": ".b",
    }
    spec = {"type": "object", "x-kubernetes-validations": [rule],
            "properties": {"b": {"type": "string"}}}  # fmt: skip
    schema = {"type": "object", "properties": {"spec": spec}}
    errors = validation_errors(schema, {"spec": {"b": "x"}})
    assert [str(e) for e in errors] == ["spec.b: Forbidden: b is not allowed"]
    assert errors[0].kind[0] == "FieldValueForbidden"


@pytest.mark.parametrize(
    ("value", "printed"),
    [(1.0, "1"), (0.5, "0.5"), (1e6, "1e+06"), (123456.0, "123456"), (1.5e-5, "1.5e-05")],
)
def test_floats_print_as_go_prints_them(value: float, printed: str) -> None:
    assert go_float(value) == printed


_SPECS = st.fixed_dictionaries(
    {},
    optional={
        "size": st.integers(),
        "worker": st.fixed_dictionaries(
            {"image": st.text(max_size=5)},
            optional={"concurrency": st.integers(-5, 300), "junk": st.booleans()},
        ),
        "chunking": st.fixed_dictionaries(
            {}, optional={"maxChars": st.integers(0, 3000), "overlapChars": st.integers(0, 3000)}
        ),
    },
)


@given(_SPECS)
def test_admission_is_idempotent(spec: dict[str, Any]) -> None:
    obj = {"apiVersion": "docpipe.io/v1alpha1", "kind": "DocumentPipeline",
           "metadata": {"name": "docs"}, "spec": spec}  # fmt: skip
    once = admit(SCHEMA, obj)
    twice = admit(SCHEMA, once.obj)
    assert twice.obj == once.obj
    assert twice.pruned == []
    assert [str(e) for e in twice.errors] == [str(e) for e in once.errors]
    again = copy.deepcopy(once.obj)
    assert prune(SCHEMA, again) == []
    apply_defaults(SCHEMA, again)
    assert again == once.obj
