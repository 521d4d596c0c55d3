"""Provider quotas: a backlog drained against one embeddings quota, by docpipe and by a fleet
driven the way KEDA would drive it, measured in the same run.

Both fleets are real `docpipe worker` processes started by the tests' simulated kubelet from the
Deployments the real operator (in this process) renders on the Kubernetes API emulator, against
the embedded Postgres and the mock OpenAI service, which enforces a tokens-per-minute and a
requests-per-minute quota like the real service (429 with retry-after when over).

- docpipe: the pipeline's `spec.quotas` tells the workers the quota; they share one budget
  through Postgres and the operator's autoscaler caps the fleet at what the quota can feed.
- queue_wait_only: the same pipeline with no quota in its spec and `DOCPIPE_QUOTA_MODE=off` (no
  budget; a 429 is a failed attempt of the job, as before quotas existed), its replicas set by
  this script every interval as KEDA's queue-length scaler would: ceil(backlog / target per
  replica), at most the maximum.

Each run starts from a backlog of `--documents` documents of one chunk each, enqueued at once,
and ends when every job has succeeded or died. Figures, per system:

- dead_documents: jobs that ended dead;
- rate_limited_share: 429s over all embeddings requests the mock answered;
- quota_utilisation: tokens (or requests, whichever binds) the mock served over the quota's
  allowance for the drain time;
- drain_s: from the backlog to the last job finished;
- replica_seconds: worker processes alive, integrated over the drain.
`quota_bound_s` is the quota's lower bound on the drain: total tokens / tokens per minute (or
requests likewise, whichever is larger).

    python bench/quota.py            # a table on stdout
    python bench/quota.py --json     # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# `python bench/quota.py` puts bench/ first on sys.path, where bench/queue.py would shadow the
# standard library's `queue`: replace it with the repository root.
if sys.path and os.path.realpath(sys.path[0] or os.curdir) == str(ROOT / "bench"):
    del sys.path[0]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402
from tests.support.cluster import (  # noqa: E402
    NAMESPACE,
    OperatorProcess,
    emulated_cluster,
    pipeline_body,
)
from tests.support.databases import fresh_database  # noqa: E402
from tests.support.emulator import DOCPIPE_RESOURCE, SECRETS, KubernetesApi  # noqa: E402
from tests.support.fleet import Fleet, kubelet  # noqa: E402
from tests.support.mocks import serve  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

from docpipe_mocks.faults import FaultConfig, ServiceFaults  # noqa: E402
from docpipe_mocks.openai import estimate_tokens  # noqa: E402
from docpipe_mocks.quotas import OpenAIQuotas, QuotaConfig  # noqa: E402
from docpipe_mocks.server import MockConfig  # noqa: E402
from docpipe_queue.database import create_pool  # noqa: E402
from docpipe_queue.documents import add_document  # noqa: E402


@dataclass(frozen=True)
class Setup:
    documents: int
    chars_per_document: int
    bound_s: float  # the drain time the quota allows: sets tokens per minute
    latency_ms: float  # the mock's answer time per request
    concurrency: int
    max_replicas: int
    target_per_replica: int  # KEDA's target queue length per replica
    interval_s: int
    # The mock enforces the minute's quota over this many seconds (OpenAI: "may be enforced over
    # shorter periods"), so a fleet that bursts meets 429s instead of a minute's head start.
    burst_s: int

    def document(self, n: int) -> str:
        # One chunk per document: the chunker's default keeps up to 1,500 characters together.
        head = f"Document {n}: harbour seals, tide tables and survey notes.\n\n"
        body = ("Seals haul out on sandbanks at low tide and are counted from the shore. " * 40)[
            : self.chars_per_document - len(head)
        ]
        return head + body

    def tokens_per_document(self) -> int:
        return estimate_tokens(self.document(0))

    def quota(self) -> tuple[int, int]:
        """(requests per minute, tokens per minute): tokens bind, requests have room to spare."""
        tokens = self.documents * self.tokens_per_document()
        tpm = math.ceil(tokens / (self.bound_s / 60))
        rpm = math.ceil(2 * self.documents / (self.bound_s / 60))
        return rpm, tpm


async def _backlog(pool: asyncpg.Pool, setup: Setup, pipeline: str) -> None:
    """Every document with its job, added as uploads add them (four connections at once)."""
    numbers = iter(range(setup.documents))

    async def add() -> None:
        async with pool.acquire() as conn:
            for n in numbers:
                await add_document(
                    conn,
                    pipeline=pipeline,
                    owner="bench",
                    filename=f"{n}.md",
                    content_type="text/markdown",
                    data=setup.document(n).encode(),
                )

    await asyncio.gather(*(add() for _ in range(4)))


async def _mock_counts(session: aiohttp.ClientSession, mocks: str) -> dict[str, int]:
    async with session.get(f"{mocks}/_admin/stats") as response:
        stats = await response.json()
    keys = stats.get("quotas", {}).get("openai", {}).values()
    return {
        field: sum(int(k.get(field) or 0) for k in keys)
        for field in ("requests", "tokens", "rate_limited", "max_tokens_in_60s")
    }


async def _drain(
    name: str,
    setup: Setup,
    data_dir: Path,
    api: KubernetesApi,
    fleet: Fleet,
    mocks: str,
    session: aiohttp.ClientSession,
    *,
    shared_quota: bool,
) -> dict[str, Any]:
    database_url = await fresh_database(data_dir, f"bench_quota_{name}")
    pipeline = name.replace("_", "-")
    secret = f"db-{pipeline}"
    url = base64.b64encode(database_url.encode()).decode()
    api.create_object(SECRETS, NAMESPACE, {"metadata": {"name": secret}, "data": {"url": url}})
    rpm, tpm = setup.quota()
    quota = {"requestsPerMinute": rpm, "tokensPerMinute": tpm}
    async with session.put(
        f"{mocks}/_admin/quotas?reset=true",
        json=QuotaConfig(
            openai=OpenAIQuotas(
                requests_per_minute=rpm, tokens_per_minute=tpm, burst_seconds=setup.burst_s
            )
        ).model_dump(),
    ) as response:
        response.raise_for_status()
    pool = await create_pool(database_url, min_size=1, max_size=4)
    worker: dict[str, Any] = {
        "image": "docpipe:1",
        "concurrency": setup.concurrency,
        "metricsPort": free_port(),
    }
    spec: dict[str, Any] = {
        "worker": worker,
        "database": {"urlSecretRef": {"name": secret, "key": "url"}},
        "embedder": {"baseUrl": f"{mocks}/v1"},
        "scaling": {"minReplicas": 1, "maxReplicas": setup.max_replicas},
    }
    if shared_quota:
        spec["quotas"] = {"openai": quota}
    else:
        worker["extraEnv"] = [{"name": "DOCPIPE_QUOTA_MODE", "value": "off"}]
        spec["replicas"] = 1
    try:
        await _backlog(pool, setup, pipeline)
        started = time.monotonic()
        api.create_object(DOCPIPE_RESOURCE, NAMESPACE, pipeline_body(pipeline, **spec))
        replica_seconds, last, next_scale = 0.0, started, started
        peak = 0
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            alive = sum(
                1 for w in fleet.running.values() if w.process and w.process.returncode is None
            )
            replica_seconds += alive * (now - last)
            peak = max(peak, alive)
            last = now
            row = await pool.fetchrow(
                "select count(*) filter (where status in ('queued', 'running')) as open,"
                " count(*) filter (where status = 'dead') as dead from docpipe.jobs"
            )
            assert row is not None
            if row["open"] == 0:
                break
            if not shared_quota and now >= next_scale:
                # KEDA's queue-length scaler: ceil(backlog / target), within [1, max].
                want = min(
                    setup.max_replicas, max(1, math.ceil(row["open"] / setup.target_per_replica))
                )

                def scaled(o: dict[str, Any], want: int = want) -> dict[str, Any]:
                    return {**o, "spec": {**o["spec"], "replicas": want}}

                api.update_object(DOCPIPE_RESOURCE, NAMESPACE, pipeline, scaled)
                next_scale = now + setup.interval_s
            if now - started > 1800:
                raise RuntimeError(f"{name}: not drained within 30 minutes: {dict(row)}")
        drain_s = time.monotonic() - started
        counts = await _mock_counts(session, mocks)
        dead = int(row["dead"])
        answered = counts["requests"] + counts["rate_limited"]
        allowance = tpm * drain_s / 60
        return {
            "dead_documents": dead,
            "rate_limited_share": round(counts["rate_limited"] / max(answered, 1), 4),
            "quota_utilisation": round(counts["tokens"] / allowance, 3),
            "drain_s": round(drain_s, 1),
            "replica_seconds": round(replica_seconds),
            "peak_replicas": peak,
            "requests": counts["requests"],
            "rate_limited": counts["rate_limited"],
            "tokens": counts["tokens"],
            "max_tokens_in_60s": counts["max_tokens_in_60s"],
        }
    finally:
        # Pinned at zero rather than deleted: the fleet's pods go the way scaling removes them.
        def stopped(o: dict[str, Any]) -> dict[str, Any]:
            return {**o, "spec": {**o["spec"], "replicas": 0}}

        with contextlib.suppress(Exception):
            api.update_object(DOCPIPE_RESOURCE, NAMESPACE, pipeline, stopped)
        deadline = time.monotonic() + 60
        while fleet.running and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await pool.close()


async def run(setup: Setup, data_dir: Path) -> dict[str, Any]:
    rpm, tpm = setup.quota()
    tokens = setup.documents * setup.tokens_per_document()
    kubeconfig = data_dir / "kubeconfig"
    mock = MockConfig(faults=FaultConfig(openai=ServiceFaults(latency_ms=setup.latency_ms)))
    async with (
        emulated_cluster(kubeconfig) as api,
        serve("127.0.0.1", 0, mock) as mocks,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        kubelet(Fleet(api, processes=True)) as fleet,
    ):
        os.environ["KUBECONFIG"] = str(kubeconfig)
        operator = OperatorProcess(liveness_url=f"http://127.0.0.1:{free_port()}/healthz")
        await operator.start()
        try:
            results = {}
            for name, shared in (("docpipe", True), ("queue_wait_only", False)):
                results[name] = await _drain(
                    name, setup, data_dir, api, fleet, mocks, session, shared_quota=shared
                )
        finally:
            await operator.halt()
    return {
        "quota_bound_s": round(max(tokens / tpm, setup.documents / rpm) * 60, 1),
        **results,
        "setup": {
            "documents": setup.documents,
            "tokens_per_document": setup.tokens_per_document(),
            "tokens_per_minute": tpm,
            "requests_per_minute": rpm,
            "mock_latency_ms": setup.latency_ms,
            "worker_concurrency": setup.concurrency,
            "max_replicas": setup.max_replicas,
            "keda_target_per_replica": setup.target_per_replica,
            "interval_s": setup.interval_s,
            "mock_burst_seconds": setup.burst_s,
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} cores,"
        f" Python {platform.python_version()}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--documents", type=int, default=5000, help="backlog size (5000)")
    parser.add_argument(
        "--bound-seconds",
        type=float,
        default=240.0,
        help="the drain time the quota allows; sets tokens per minute (240)",
    )
    parser.add_argument("--latency-ms", type=float, default=250.0, help="mock latency (250)")
    parser.add_argument("--concurrency", type=int, default=4, help="jobs per worker (4)")
    parser.add_argument("--max-replicas", type=int, default=10, help="fleet maximum (10)")
    parser.add_argument(
        "--burst-seconds",
        type=int,
        default=5,
        help="the mock enforces the minute's quota over this many seconds (5)",
    )
    args = parser.parse_args()
    if args.documents < 1 or args.bound_seconds <= 0:
        parser.error("--documents and --bound-seconds must be positive")
    setup = Setup(
        documents=args.documents,
        chars_per_document=1000,
        bound_s=args.bound_seconds,
        latency_ms=args.latency_ms,
        concurrency=args.concurrency,
        max_replicas=args.max_replicas,
        target_per_replica=100,
        interval_s=5,
        burst_s=args.burst_seconds,
    )
    with tempfile.TemporaryDirectory(prefix="docpipe-bench-quota-") as tmp:
        result = asyncio.run(run(setup, Path(tmp)))
    if args.json:
        print(json.dumps(result))
        return
    bound = result["quota_bound_s"]
    print(f"Backlog of {args.documents} documents against one quota; bound {bound} s")
    keys = (
        "dead_documents",
        "rate_limited_share",
        "quota_utilisation",
        "drain_s",
        "replica_seconds",
        "peak_replicas",
    )
    print(f"  {'':24} {'docpipe':>14} {'queue_wait_only':>16}")
    for key in keys:
        print(f"  {key:24} {result['docpipe'][key]!s:>14} {result['queue_wait_only'][key]!s:>16}")


if __name__ == "__main__":
    main()
