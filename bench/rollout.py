"""Rollouts: how fast the default policy rolls back a revision that fails every job, and how many
jobs that canary touched against its replica share.

The real operator (in this process) against the Kubernetes API emulator of the operator tests;
each pod is a real `docpipe worker` process (started by the tests' simulated kubelet with the pod's
environment) on its own 127.0.0.x address, against the embedded Postgres and the embedding mock.
Documents arrive at a steady rate; the spec then changes the embedder's URL to a closed port, so
the new revision fails every job it claims. Measured, with the default rollout policy:

- rollback_s: from the canary's first failed job to status.rollout.phase RolledBack;
- canary_claims: jobs the canary claimed (each failed one went back to the queue);
- canary_share_ratio: the canary's share of the jobs claimed during its analysis over its share
  of the replicas (1.0: exactly its share; the target is at most 2);
- canary_share_error: |the canary's share of the jobs' first claims − its weight| / its weight
  (DOCPIPE_CANARY_WEIGHT, status.rollout.canaryWeight), over the jobs queued from the canary's
  registration to the rollback (bound: 0.2);
- every document processed afterwards, none dead.

Then, in a fresh cluster and database, a silent regression: the new revision's parser keeps 30 %
of each page (the mock's `truncate=0.3` output fault), and every job succeeds. Measured:

- silent_regression_rollback_s: from the canary's first finished document to RolledBack (the
  output analysis; bound: failure limit × interval + one interval);
- documents_left_with_rejected_output: documents still holding a chunk of the rejected revision
  once the operator's undo re-enqueued them and the queue drained (must be 0).

    python bench/rollout.py            # a table on stdout
    python bench/rollout.py --json     # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# `python bench/rollout.py` puts bench/ first on sys.path, where bench/queue.py would shadow the
# standard library's `queue`: replace it with the repository root.
if sys.path and os.path.realpath(sys.path[0] or os.curdir) == str(ROOT / "bench"):
    del sys.path[0]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from tests.support.cluster import (  # noqa: E402
    NAMESPACE,
    OperatorProcess,
    emulated_cluster,
    pipeline_body,
)
from tests.support.databases import fresh_database  # noqa: E402
from tests.support.documents import feed_documents  # noqa: E402
from tests.support.emulator import DOCPIPE_RESOURCE, SECRETS, KubernetesApi  # noqa: E402
from tests.support.fleet import Fleet, kubelet  # noqa: E402
from tests.support.mocks import serve  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

from docpipe_mocks.server import MockConfig  # noqa: E402
from docpipe_operator import telemetry  # noqa: E402
from docpipe_operator.model import RolloutSpec  # noqa: E402
from docpipe_queue.database import create_pool  # noqa: E402

REPLICAS = 5  # the default canary share (20 %) makes one of them the canary
CONCURRENCY = 4
ARRIVALS_PER_SECOND = 20


async def _claims(
    session: aiohttp.ClientSession, fleet: Fleet, port: int
) -> dict[str, tuple[float, float]]:
    """Per worker process: (jobs claimed, jobs failed), summed over revisions."""
    out: dict[str, tuple[float, float]] = {}
    for name, worker in list(fleet.running.items()):
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(f"http://{worker.ip}:{port}/metrics") as response:
                reading = telemetry.parse_worker_metrics(await response.text(), "docs")
            claimed = sum(c.claimed for c in reading.revisions.values())
            failed = sum(c.retried + c.dead for c in reading.revisions.values())
            out[name] = (claimed, failed)
    return out


def _rollout(api: KubernetesApi) -> dict[str, Any]:
    body = api.read_object(DOCPIPE_RESOURCE, NAMESPACE, "docs") or {}
    rollout: dict[str, Any] = (body.get("status") or {}).get("rollout") or {}
    return rollout


async def _canary_documents(session: aiohttp.ClientSession, fleet: Fleet, port: int) -> float:
    done = 0.0
    for name, worker in list(fleet.running.items()):
        if "canary" not in name:
            continue
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(f"http://{worker.ip}:{port}/metrics") as response:
                reading = telemetry.parse_worker_metrics(await response.text(), "docs")
            done += sum(c.output.documents for c in reading.revisions.values())
    return done


async def run_silent(data_dir: Path) -> dict[str, Any]:
    """A revision whose parser keeps 30 % of each page, default rollout policy."""
    database_url = await fresh_database(data_dir, "bench_rollout_silent")
    kubeconfig = data_dir / "kubeconfig-silent"
    async with (
        emulated_cluster(kubeconfig) as api,
        serve("127.0.0.1", 0, MockConfig()) as mocks,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session,
        kubelet(Fleet(api, processes=True)) as fleet,
    ):
        os.environ["KUBECONFIG"] = str(kubeconfig)
        for name, key, value in (("db", "url", database_url), ("llama", "key", "bench")):
            data = {key: base64.b64encode(value.encode()).decode()}
            api.create_object(SECRETS, NAMESPACE, {"metadata": {"name": name}, "data": data})
        operator = OperatorProcess(liveness_url=f"http://127.0.0.1:{free_port()}/healthz")
        await operator.start()
        pool = await create_pool(database_url, min_size=1, max_size=2)
        stop, added = asyncio.Event(), list[int]()
        feeder = asyncio.create_task(
            feed_documents(pool, stop, added, per_second=ARRIVALS_PER_SECOND, owner="bench")
        )
        try:
            poll = {"name": "DOCPIPE_LLAMAPARSE_POLL_SECONDS", "value": "0.05"}
            body = pipeline_body(
                replicas=REPLICAS,
                worker={
                    "image": "docpipe:1",
                    "concurrency": CONCURRENCY,
                    "metricsPort": 9000,
                    "extraEnv": [poll],
                },
                parser={
                    "kind": "llamaparse",
                    "baseUrl": mocks,
                    "apiKeySecretRef": {"name": "llama", "key": "key"},
                },
                embedder={"baseUrl": f"{mocks}/v1"},
                scaling={},
            )
            port = body["spec"]["worker"]["metricsPort"] = free_port()
            api.create_object(DOCPIPE_RESOURCE, NAMESPACE, body)
            while sum(w.ready for w in fleet.running.values()) < REPLICAS:
                await asyncio.sleep(0.1)
            await asyncio.sleep(10)

            def truncating(o: dict[str, Any]) -> dict[str, Any]:
                parser = {**o["spec"]["parser"], "baseUrl": f"{mocks}/_faults/truncate=0.3"}
                return {**o, "spec": {**o["spec"], "parser": parser}}

            api.update_object(DOCPIPE_RESOURCE, NAMESPACE, "docs", truncating)
            first_output: float | None = None
            deadline = time.monotonic() + 180
            while _rollout(api).get("phase") != "RolledBack":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no rollback within 180 s: {_rollout(api)}")
                if first_output is None and await _canary_documents(session, fleet, port) > 0:
                    first_output = time.monotonic()
                await asyncio.sleep(0.1)
            rolled_back = time.monotonic()
            stop.set()
            await feeder
            assert first_output is not None
            rejected = _rollout(api)["rejectedRevision"]
            while (_rollout(api).get("lastRollback") or {}).get("revision") != rejected:
                if time.monotonic() - rolled_back > 120:
                    raise RuntimeError(f"no undo within 120 s: {_rollout(api)}")
                await asyncio.sleep(0.1)
            undone = time.monotonic()
            while await pool.fetchval(
                "select count(*) from docpipe.jobs where status in ('queued', 'running')"
            ):
                if time.monotonic() - undone > 120:
                    raise RuntimeError("the re-enqueued documents were not processed")
                await asyncio.sleep(0.2)
            drained = time.monotonic()
            left = await pool.fetchval(
                "select count(distinct document_id) from docpipe.chunks where revision = $1",
                rejected,
            )
            rollout = _rollout(api)
            policy = RolloutSpec()
            return {
                "silent_regression_rollback_s": round(rolled_back - first_output, 2),
                "silent_regression_rollback_bound_s": policy.failure_limit * policy.interval_seconds
                + policy.interval_seconds,
                "silent_regression_reason": rollout.get("rejectedReason"),
                "documents_left_with_rejected_output": int(left),
                "reprocessed_documents": rollout["lastRollback"]["reprocessedDocuments"],
                "undo_s_after_rollback": round(undone - rolled_back, 2),
                "reprocessed_drained_s_after_undo": round(drained - undone, 2),
                "silent_regression_documents": len(added),
                # The judged intervals, to tell where the time went.
                "silent_regression_intervals": [
                    f"{i['outcome']}: {i['reason'][:120]}" for i in rollout.get("intervals", [])
                ],
            }
        finally:
            stop.set()
            await asyncio.gather(feeder, return_exceptions=True)
            await pool.close()
            await operator.halt()


async def run(data_dir: Path) -> dict[str, Any]:
    database_url = await fresh_database(data_dir, "bench_rollout")
    kubeconfig = data_dir / "kubeconfig"
    async with (
        emulated_cluster(kubeconfig) as api,
        serve("127.0.0.1", 0, MockConfig()) as mocks,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session,
        kubelet(Fleet(api, processes=True)) as fleet,
    ):
        os.environ["KUBECONFIG"] = str(kubeconfig)
        url = base64.b64encode(database_url.encode()).decode()
        api.create_object(SECRETS, NAMESPACE, {"metadata": {"name": "db"}, "data": {"url": url}})
        operator = OperatorProcess(liveness_url=f"http://127.0.0.1:{free_port()}/healthz")
        await operator.start()
        pool = await create_pool(database_url, min_size=1, max_size=2)
        stop, added = asyncio.Event(), list[int]()
        feeder = asyncio.create_task(
            feed_documents(pool, stop, added, per_second=ARRIVALS_PER_SECOND, owner="bench")
        )
        try:
            body = pipeline_body(
                replicas=REPLICAS,
                worker={"image": "docpipe:1", "concurrency": CONCURRENCY, "metricsPort": 9000},
                embedder={"baseUrl": f"{mocks}/v1"},
                scaling={},  # the defaults: a 5 s interval
            )
            port = body["spec"]["worker"]["metricsPort"] = free_port()
            api.create_object(DOCPIPE_RESOURCE, NAMESPACE, body)
            while sum(w.ready for w in fleet.running.values()) < REPLICAS:
                await asyncio.sleep(0.1)
            await asyncio.sleep(10)  # steady state: the stable revision's job time is measured

            def bad(o: dict[str, Any]) -> dict[str, Any]:
                embedder = {"baseUrl": "http://127.0.0.1:9/v1"}  # closed: every job fails
                return {**o, "spec": {**o["spec"], "embedder": embedder}}

            before = await _claims(session, fleet, port)
            api.update_object(DOCPIPE_RESOURCE, NAMESPACE, "docs", bad)
            first_failure: float | None = None
            # The jobs queued after the canary registered its share, up to the rollback.
            first_job: int | None = None
            registered = 0.0
            last: dict[str, tuple[float, float]] = {}
            deadline = time.monotonic() + 180
            while _rollout(api).get("phase") != "RolledBack":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no rollback within 180 s: {_rollout(api)}")
                if first_job is None and await pool.fetchval(
                    "select count(*) from docpipe.canary_shares"
                ):
                    first_job = await pool.fetchval(
                        "select coalesce(max(id), 0) + 1 from docpipe.jobs"
                    )
                    registered = time.monotonic()
                now = await _claims(session, fleet, port)
                last.update(now)
                canary_failed = sum(f for n, (_, f) in now.items() if "canary" in n)
                if first_failure is None and canary_failed > 0:
                    first_failure = time.monotonic()
                await asyncio.sleep(0.1)
            rolled_back = time.monotonic()
            last_job = await pool.fetchval("select max(id) from docpipe.jobs")
            stop.set()
            await feeder
            assert first_failure is not None, f"the canary failed no job: {_rollout(api)}"
            assert first_job is not None, "the canary never registered its share"
            canary_claims = sum(c for n, (c, _) in last.items() if "canary" in n)
            stable_claims = sum(
                c - before.get(n, (0.0, 0.0))[0] for n, (c, _) in last.items() if "canary" not in n
            )
            rollout = _rollout(api)
            canary_replicas = int(rollout.get("canaryReplicas") or 1)
            share = canary_replicas / REPLICAS
            ratio = (canary_claims / max(canary_claims + stable_claims, 1)) / share

            settle_start = time.monotonic()
            while True:
                rows = await pool.fetch(
                    "select status, count(*) from docpipe.documents group by status"
                )
                statuses = {r["status"]: r["count"] for r in rows}
                if statuses == {"processed": len(added)}:
                    break
                if time.monotonic() - settle_start > 120:
                    raise RuntimeError(f"documents not all processed: {statuses}")
                await asyncio.sleep(0.2)
            dead = await pool.fetchval("select count(*) from docpipe.jobs where status = 'dead'")
            # The canary's share of the jobs' first claims: it failed each job it claimed, which
            # marks the job (handed_back_by), and never claims a job a canary failed; the stable
            # workers fail none. So the marked jobs are those the canary claimed first.
            window = await pool.fetchrow(
                "select count(*) filter (where handed_back_by is not null) as canary,"
                " count(*) as jobs from docpipe.jobs where id between $1 and $2",
                first_job,
                last_job,
            )
            assert window is not None
            weight = float(rollout.get("canaryWeight") or 0.2)
            measured_share = window["canary"] / max(window["jobs"], 1)
            policy = RolloutSpec()
            return {
                "rollback_s": round(rolled_back - first_failure, 2),
                "rollback_bound_s": policy.failure_limit * policy.interval_seconds
                + policy.interval_seconds,
                "required_s": 60,
                "canary_claims": int(canary_claims),
                "stable_claims_during_analysis": int(stable_claims),
                "canary_replica_share": share,
                "canary_share_ratio": round(ratio, 2),
                "canary_weight": weight,
                "canary_first_claims": int(window["canary"]),
                "jobs_during_analysis": int(window["jobs"]),
                "canary_share": round(measured_share, 4),
                "canary_share_error": round(abs(measured_share - weight) / weight, 4),
                "canary_share_error_bound": 0.2,
                # What the feeder achieved (it falls behind 20/s on a loaded machine): the canary's
                # jobs per interval are weight × this × intervalSeconds, against minJobs.
                "arrivals_per_second_during_analysis": round(
                    window["jobs"] / max(rolled_back - registered, 1e-9), 2
                ),
                "rejected_reason": rollout.get("rejectedReason"),
                "documents": len(added),
                "documents_processed_s_after_rollback": round(time.monotonic() - rolled_back, 2),
                "dead_jobs": int(dead),
                "policy": {
                    "intervalSeconds": policy.interval_seconds,
                    "failureLimit": policy.failure_limit,
                    "minJobs": policy.min_jobs,
                    "maxErrorRatio": policy.max_error_ratio,
                    "canaryPercent": 20,
                },
                "setup": {
                    "replicas": REPLICAS,
                    "concurrency": CONCURRENCY,
                    "arrivals_per_second": ARRIVALS_PER_SECOND,
                },
            }
        finally:
            stop.set()
            await asyncio.gather(feeder, return_exceptions=True)
            await pool.close()
            await operator.halt()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--scenario",
        choices=("all", "failing", "silent"),
        default="all",
        help="run only the failing-jobs or the silent-regression scenario (default: both)",
    )
    args = parser.parse_args()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="docpipe-bench-rollout-") as tmp:
        if args.scenario in ("all", "failing"):
            result.update(asyncio.run(run(Path(tmp))))
        if args.scenario in ("all", "silent"):
            result.update(asyncio.run(run_silent(Path(tmp))))
    if args.json:
        print(json.dumps(result))
        return
    if "rollback_s" in result:
        print("Rollback of a revision that fails every job, default rollout policy")
        for key in (
            "rollback_s",
            "rollback_bound_s",
            "required_s",
            "canary_claims",
            "stable_claims_during_analysis",
            "canary_replica_share",
            "canary_share_ratio",
            "canary_weight",
            "canary_first_claims",
            "jobs_during_analysis",
            "canary_share",
            "canary_share_error",
            "canary_share_error_bound",
            "arrivals_per_second_during_analysis",
            "documents",
            "dead_jobs",
            "documents_processed_s_after_rollback",
        ):
            print(f"  {key:40} {result[key]}")
        print(f"  reason: {result['rejected_reason']}")
    if "silent_regression_rollback_s" in result:
        print("Rollback of a revision that keeps 30 % of each page (no job fails), default policy")
        for key in (
            "silent_regression_rollback_s",
            "silent_regression_rollback_bound_s",
            "documents_left_with_rejected_output",
            "reprocessed_documents",
            "undo_s_after_rollback",
            "reprocessed_drained_s_after_undo",
            "silent_regression_documents",
        ):
            print(f"  {key:40} {result[key]}")
        print(f"  reason: {result['silent_regression_reason']}")
        for interval in result["silent_regression_intervals"]:
            print(f"  interval: {interval}")


if __name__ == "__main__":
    main()
