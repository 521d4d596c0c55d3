"""Secret rotation against the API emulator: the real operator reads the Secrets a pipeline
references (by name, never a list or a watch), rolls the workers when their data changes, and
not when an object is re-applied with the same data; with `--secrets=none` it reads none, and
`worker.secretsVersion` rolls the workers instead."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from docpipe_operator.observation import SecretsPolicy
from docpipe_operator.rendering import (
    LABEL_REVISION,
    SECRETS_HASH_ANNOTATION,
    SECRETS_VERSION_ANNOTATION,
)
from tests.support.cluster import NAMESPACE, OperatorProcess, pipeline, pipeline_body
from tests.support.emulator import DEPLOYMENTS, DOCPIPE_RESOURCE, SECRETS, KubernetesApi
from tests.support.fleet import Fleet
from tests.support.polling import eventually
from tests.support.ports import free_port

REFRESH_S = 1.0  # the operator reads each Secret again after this long
FAST_CANARY = {
    "intervalSeconds": 1,
    "minJobs": 3,
    "successIntervals": 2,
    "failureLimit": 2,
    "progressDeadlineSeconds": 20,
}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _secret(name: str, **data: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "data": {k: _b64(v) for k, v in data.items()}}


def _set_data(api: KubernetesApi, name: str, **data: str) -> None:
    api.update_object(
        SECRETS, NAMESPACE, name, lambda o: {**o, "data": {k: _b64(v) for k, v in data.items()}}
    )


def _annotate(api: KubernetesApi, name: str, key: str, value: str) -> dict[str, Any]:
    """What `kubectl apply` of the same data does: the metadata changes, the data does not."""

    def change(o: dict[str, Any]) -> dict[str, Any]:
        annotations = {**(o["metadata"].get("annotations") or {}), key: value}
        return {**o, "metadata": {**o["metadata"], "annotations": annotations}}

    return api.update_object(SECRETS, NAMESPACE, name, change)


def _template(api: KubernetesApi, name: str = "docs-worker") -> dict[str, Any]:
    deployment = api.read_object(DEPLOYMENTS, NAMESPACE, name) or {}
    template: dict[str, Any] = (deployment.get("spec") or {}).get("template") or {}
    return template


def _annotation(template: dict[str, Any], key: str) -> str | None:
    value = ((template.get("metadata") or {}).get("annotations") or {}).get(key)
    return None if value is None else str(value)


def _revision(template: dict[str, Any]) -> str | None:
    value = ((template.get("metadata") or {}).get("labels") or {}).get(LABEL_REVISION)
    return None if value is None else str(value)


@pytest.fixture
async def reading_operator(api: KubernetesApi) -> AsyncIterator[OperatorProcess]:
    """The operator, reading each referenced Secret again every REFRESH_S seconds."""
    process = OperatorProcess(
        liveness_url=f"http://127.0.0.1:{free_port()}/healthz",
        secret_reads=SecretsPolicy(read=True, refresh_seconds=REFRESH_S),
    )
    await process.start()
    try:
        yield process
    finally:
        await process.halt()


async def test_new_secret_data_rolls_the_workers_and_the_same_data_reapplied_does_not(
    api: KubernetesApi, reading_operator: OperatorProcess
) -> None:
    api.create_object(SECRETS, NAMESPACE, _secret("db", url="postgresql://a@db/docpipe"))
    api.create_object(SECRETS, NAMESPACE, _secret("openai", key="sk-1"))
    body = pipeline_body(
        rollout={"strategy": "Rolling"},
        embedder={"apiKeySecretRef": {"name": "openai", "key": "key"}},
    )
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, body)
    first = await eventually(
        lambda: _annotation(_template(api), SECRETS_HASH_ANNOTATION) and _template(api),
        what="the worker template with the Secrets' hash",
    )
    first_hash = _annotation(first, SECRETS_HASH_ANNOTATION)

    # Re-applied with the same data (a new resourceVersion): read again, nothing rolls.
    before = api.requests_by["get secrets"]
    _annotate(api, "openai", "kubectl.kubernetes.io/last-applied-configuration", "{}")
    await eventually(
        lambda: api.requests_by["get secrets"] >= before + 4,
        within=10 * REFRESH_S,
        what="both Secrets read again twice",
    )
    assert _revision(_template(api)) == _revision(first)
    assert _annotation(_template(api), SECRETS_HASH_ANNOTATION) == first_hash

    # New data in one of them: a new revision, which the Rolling strategy puts on the Deployment.
    _set_data(api, "openai", key="sk-2")
    second = await eventually(
        lambda: (t := _template(api)) and _revision(t) != _revision(first) and t,
        within=10 * REFRESH_S,
        what="the template of the rotated key",
    )
    assert _annotation(second, SECRETS_HASH_ANNOTATION) not in (None, first_hash)
    # Only the hash differs: the pods read the new value from the same secretKeyRef.
    assert second["spec"] == {
        **first["spec"],
        "containers": [
            {
                **first["spec"]["containers"][0],
                "env": [
                    e if e["name"] != "DOCPIPE_REVISION" else {**e, "value": _revision(second)}
                    for e in first["spec"]["containers"][0]["env"]
                ],
            }
        ],
    }


async def test_a_rotated_secret_goes_through_the_canary_when_the_rollout_says_so(
    api: KubernetesApi, fleet: Fleet, reading_operator: OperatorProcess
) -> None:
    fleet.jobs_per_second_per_pod, fleet.busy_per_pod = 10, 1
    api.create_object(SECRETS, NAMESPACE, _secret("db", url="postgresql://a@db/docpipe"))
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, pipeline_body(replicas=3, rollout=FAST_CANARY))
    await eventually(lambda: len(fleet.workers) == 3, what="three stable workers")
    stable = _template(api)

    _set_data(api, "db", url="postgresql://b@db/docpipe")
    canary = await eventually(
        lambda: _template(api, "docs-worker-canary"),
        within=10 * REFRESH_S,
        what="a canary of the rotated Secret",
    )
    assert _annotation(canary, SECRETS_HASH_ANNOTATION) != _annotation(
        stable, SECRETS_HASH_ANNOTATION
    )
    # The stable Deployment keeps its template while the canary is analysed.
    assert _revision(_template(api)) == _revision(stable)
    await eventually(
        lambda: (
            ((pipeline(api) or {}).get("status") or {}).get("rollout", {}).get("phase")
            == "Promoted"
        ),
        within=20,
        what="the promotion",
    )
    assert _revision(_template(api)) == _revision(canary)


async def test_secret_reads_are_shared_by_the_pipelines_and_bounded_by_the_refresh_interval(
    api: KubernetesApi, reading_operator: OperatorProcess
) -> None:
    api.create_object(SECRETS, NAMESPACE, _secret("db", url="postgresql://a@db/docpipe"))
    shared, own = 5, 3
    for i in range(shared):
        api.create_object(DOCPIPE_RESOURCE, NAMESPACE, pipeline_body(f"s{i}"))
    for i in range(own):
        # Two Secrets of its own each: they take turns, one read per pipeline per interval.
        api.create_object(SECRETS, NAMESPACE, _secret(f"db{i}", url="postgresql://b@db/docpipe"))
        api.create_object(SECRETS, NAMESPACE, _secret(f"key{i}", key="sk"))
        body = pipeline_body(
            f"o{i}",
            database={"urlSecretRef": {"name": f"db{i}", "key": "url"}},
            embedder={"apiKeySecretRef": {"name": f"key{i}", "key": "key"}},
        )
        api.create_object(DOCPIPE_RESOURCE, NAMESPACE, body)
    names = [f"s{i}" for i in range(shared)] + [f"o{i}" for i in range(own)]
    await eventually(
        lambda: all(
            _annotation(_template(api, f"{n}-worker"), SECRETS_HASH_ANNOTATION) for n in names
        ),
        what="every pipeline's workers",
    )
    before = api.requests_by["get secrets"]
    intervals = 6
    await asyncio.sleep(intervals * REFRESH_S)
    reads = api.requests_by["get secrets"] - before
    # The shared Secret once per interval, whatever the number of pipelines; each pipeline with
    # Secrets of its own one read per interval, not one per Secret (and one at each end).
    assert 1 <= reads <= (1 + own) * (intervals + 1)
    # Only GETs by name: no list or watch of Secrets.
    assert {verb for group, resource, verb in api.calls if resource == "secrets"} == {"get"}


async def test_without_secret_reads_no_secret_is_read_and_secrets_version_rolls_the_workers(
    api: KubernetesApi,
) -> None:
    process = OperatorProcess(
        liveness_url=f"http://127.0.0.1:{free_port()}/healthz",
        secret_reads=SecretsPolicy(read=False),
    )
    await process.start()
    try:
        api.create_object(SECRETS, NAMESPACE, _secret("db", url="postgresql://a@db/docpipe"))
        api.create_object(
            DOCPIPE_RESOURCE, NAMESPACE, pipeline_body(rollout={"strategy": "Rolling"})
        )
        first = await eventually(lambda: _template(api), what="the worker template")
        assert _annotation(first, SECRETS_HASH_ANNOTATION) is None

        def bump(o: dict[str, Any]) -> dict[str, Any]:
            worker = {**o["spec"]["worker"], "secretsVersion": "2"}
            return {**o, "spec": {**o["spec"], "worker": worker}}

        api.update_object(DOCPIPE_RESOURCE, NAMESPACE, "docs", bump)
        second = await eventually(
            lambda: (t := _template(api)) and _revision(t) != _revision(first) and t,
            what="the template of the new secretsVersion",
        )
        assert _annotation(second, SECRETS_VERSION_ANNOTATION) == "2"
        _set_data(api, "db", url="postgresql://b@db/docpipe")
        await asyncio.sleep(3 * REFRESH_S)
        assert _revision(_template(api)) == _revision(second)
        assert not [c for c in api.calls if c[1] == "secrets"]
    finally:
        await process.halt()
