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
- every document processed afterwards, none dead.

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
            last: dict[str, tuple[float, float]] = {}
            deadline = time.monotonic() + 180
            while _rollout(api).get("phase") != "RolledBack":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no rollback within 180 s: {_rollout(api)}")
                now = await _claims(session, fleet, port)
                last.update(now)
                canary_failed = sum(f for n, (_, f) in now.items() if "canary" in n)
                if first_failure is None and canary_failed > 0:
                    first_failure = time.monotonic()
                await asyncio.sleep(0.1)
            rolled_back = time.monotonic()
            stop.set()
            await feeder
            assert first_failure is not None
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
                "failure_hold_seconds": rollout.get("failureHoldSeconds"),
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="docpipe-bench-rollout-") as tmp:
        result = asyncio.run(run(Path(tmp)))
    if args.json:
        print(json.dumps(result))
        return
    print("Rollback of a revision that fails every job, default rollout policy")
    for key in (
        "rollback_s",
        "rollback_bound_s",
        "required_s",
        "canary_claims",
        "stable_claims_during_analysis",
        "canary_replica_share",
        "canary_share_ratio",
        "failure_hold_seconds",
        "documents",
        "dead_jobs",
        "documents_processed_s_after_rollback",
    ):
        print(f"  {key:40} {result[key]}")
    print(f"  reason: {result['rejected_reason']}")


if __name__ == "__main__":
    main()
