# ruff: noqa: E402  (imports follow the sys.path fix below, on purpose)
"""Pipeline benchmark: the whole system on this machine (embedded Postgres, the mock services and
worker processes) ingesting ~4 KB markdown documents.

Two runs:
- throughput: zero-latency mocks, two workers; documents/s from the moment the documents are
  queued to the moment the last one is processed;
- latency hiding: 100 ms added to every mock call, one worker at concurrency 32, documents parsed
  through the LlamaParse protocol; compared with the bound the latency sets,
  concurrency / (mock calls per document x latency), with the calls counted by the mocks.
A third, shorter run profiles one worker (cProfile) and prints where its CPU time goes by stage.

    python bench/pipeline.py            # a table
    python bench/pipeline.py --json     # one JSON object (docs_per_s, latency_bound_ratio, ...)
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/queue.py shares its name with the standard library's queue module: keep bench/ off the
# import path (it is sys.path[0] when a script here runs), here and in the processes we start.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
# The repository root instead, for the shared corpus generator (bench.corpus).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import contextlib
import json
import os
import pstats
import signal
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
from tests.support.ports import free_port

from bench import pipeline_hostile, pipeline_throughput
from bench.corpus import make_document
from docpipe_queue.database import create_pool
from docpipe_queue.embedded import start_embedded_postgres
from docpipe_queue.jobs import NewJob, enqueue
from docpipe_queue.migrator import migrate


@dataclass
class Run:
    name: str
    documents: int
    seconds: float
    workers: int
    concurrency: int
    parser: str
    latency_ms: float
    mock_calls: int = 0

    @property
    def docs_per_s(self) -> float:
        return self.documents / self.seconds


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def spawn(args: list[str], env: dict[str, str], log_path: Path) -> asyncio.subprocess.Process:
    with log_path.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, *args, env=env, stdout=out, stderr=out
        )


async def wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not ready in {timeout_s}s")


async def mock_calls(mocks: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{mocks}/_admin/stats") as resp:
        body: dict[str, Any] = await resp.json()
    total = 0
    for endpoint, by_status in body["requests"].items():
        if not endpoint.startswith("/_admin"):
            total += sum(by_status.values())
    return total


async def reset_database(pool: asyncpg.Pool) -> None:
    await pool.execute("truncate docpipe.jobs, docpipe.chunks, docpipe.documents cascade")


async def insert_documents(pool: asyncpg.Pool, count: int, pipeline: str) -> None:
    """Documents first, then their jobs in one statement: queueing is not what is measured."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "insert into docpipe.documents"
            " (pipeline, owner, filename, content_type, size_bytes, sha256, content)"
            " select $1, 'bench', 'doc-' || i || '.md', 'text/markdown', length(c), md5(c), c"
            " from unnest($2::bytea[]) with ordinality as t(c, i) returning id",
            pipeline,
            [make_document(i) for i in range(count)],
        )
        await enqueue(conn, [NewJob(pipeline=pipeline, document_id=r[0]) for r in rows])


async def wait_processed(pool: asyncpg.Pool, count: int, timeout_s: float) -> float:
    start = time.monotonic()
    last = -1
    while True:
        done = await pool.fetchval(
            "select count(*) from docpipe.documents where status in ('processed', 'failed')"
        )
        if done != last and done % 500 < 50:
            log(f"  {done}/{count}")
        last = done
        if done >= count:
            failed = await pool.fetch(
                "select error, count(*) from docpipe.documents where status = 'failed'"
                " group by error"
            )
            if failed:
                raise RuntimeError(f"documents failed: {[tuple(r) for r in failed]}")
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise RuntimeError(f"only {done}/{count} processed in {timeout_s}s")
        await asyncio.sleep(0.05)


async def run_case(
    *,
    name: str,
    url: str,
    pool: asyncpg.Pool,
    workdir: Path,
    documents: int,
    workers: int,
    concurrency: int,
    parser: str,
    latency_ms: float,
    profile: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> Run:
    await reset_database(pool)
    mock_port = free_port()
    mocks = f"http://127.0.0.1:{mock_port}"
    base_env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    mock_args = ["-m", "docpipe_cli.main", "mocks", "--port", str(mock_port)]
    mock_args += ["--latency-ms", str(latency_ms), "--pending-polls", "0"]
    procs = [await spawn(mock_args, base_env, workdir / f"{name}-mocks.log")]
    try:
        await wait_http(f"{mocks}/_admin/stats")
        for w in range(workers):
            port = free_port()
            env = {
                **base_env,
                "DATABASE_URL": url,
                "OPENAI_BASE_URL": f"{mocks}/v1",
                "OPENAI_API_KEY": "bench",
                "LLAMAPARSE_BASE_URL": mocks,
                "LLAMA_CLOUD_API_KEY": "bench",
                "DOCPIPE_LLAMAPARSE_POLL_SECONDS": "0.001",
                "DOCPIPE_PARSER": parser,
                "DOCPIPE_PIPELINE": "bench",
                "DOCPIPE_CONCURRENCY": str(concurrency),
                "DOCPIPE_METRICS_HOST": "127.0.0.1",
                "DOCPIPE_METRICS_PORT": str(port),
                "DOCPIPE_LOG_LEVEL": os.environ.get("BENCH_WORKER_LOG_LEVEL", "WARNING"),
                **(extra_env or {}),
            }
            cmd = ["-m", "docpipe_cli.main", "worker"]
            if profile is not None:
                cmd = ["-m", "cProfile", "-o", str(profile), *cmd]
            procs.append(await spawn(cmd, env, workdir / f"{name}-worker-{w}.log"))
            await wait_http(f"http://127.0.0.1:{port}/readyz")
        calls_before = await mock_calls(mocks)
        await insert_documents(pool, documents, "bench")
        seconds = await wait_processed(pool, documents, timeout_s=600)
        calls = await mock_calls(mocks) - calls_before
    finally:
        for proc in reversed(procs):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
    return Run(name, documents, seconds, workers, concurrency, parser, latency_ms, calls)


# Functions whose cumulative CPU time is a stage's (their callees included).
STAGE_FUNCTIONS = {
    "parse": [("parsers.py", "parse"), ("llamaparse.py", "parse")],
    "chunk": [("chunking.py", "chunk_markdown")],
    "embed": [("embeddings.py", "embed")],
    "store": [("pipeline.py", "_store")],
    "load": [("pipeline.py", "_load")],
    "queue": [
        ("queue.py", "claim"),
        ("queue.py", "complete"),
        ("queue.py", "heartbeat"),
        ("queue.py", "stats"),
    ],
}


def cpu_by_stage(profile: Path) -> dict[str, float]:
    """Seconds of CPU per stage from a cProfile dump of a worker; 'idle' is the event loop wait."""
    stats = pstats.Stats(str(profile))
    table: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    result: dict[str, float] = {}
    for stage, functions in STAGE_FUNCTIONS.items():
        total = 0.0
        for (filename, _line, func), (_cc, _nc, _tt, cumtime, _callers) in table.items():
            if any(filename.endswith(f) and func == name for f, name in functions):
                total += cumtime
        result[stage] = total
    idle = sum(
        v[3] for k, v in table.items() if k[2] in ("<method 'poll' of 'select.epoll' objects>",)
    )
    result["idle"] = idle
    # Imports at start-up: a fixed cost, reported apart so a short run does not drown the stages.
    result["startup"] = sum(
        v[3] for k, v in table.items() if k[0].endswith("_bootstrap>") and k[2] == "_find_and_load"
    )
    result["total"] = float(getattr(stats, "total_tt", 0.0))
    result["other"] = max(
        0.0,
        result["total"] - idle - result["startup"] - sum(result[s] for s in STAGE_FUNCTIONS),
    )
    return result


async def main(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="docpipe-bench-"))
    log(f"bench/pipeline: data and logs in {workdir}")
    url = start_embedded_postgres(workdir / "pg")
    conn = await asyncpg.connect(url)
    await migrate(conn)
    await conn.close()
    pool = await create_pool(url, min_size=1, max_size=4)
    try:
        log(f"throughput: {args.documents} documents, 2 workers, zero-latency mocks")
        throughput = await run_case(
            name="throughput",
            url=url,
            pool=pool,
            workdir=workdir,
            documents=args.documents,
            workers=2,
            concurrency=16,
            parser="local",
            latency_ms=0,
        )
        log(f"  {throughput.docs_per_s:.1f} documents/s")
        log("latency: 100 ms per mock call, 1 worker at concurrency 32, LlamaParse protocol")
        latency = await run_case(
            name="latency",
            url=url,
            pool=pool,
            workdir=workdir,
            documents=args.latency_documents,
            workers=1,
            concurrency=32,
            parser="llamaparse",
            latency_ms=100,
            # The bound counts each document's calls as its own chain; a shared embeddings
            # request is not one document's call, and its window is a wait on purpose: this case
            # measures the consumer's latency hiding, so per-document requests (issue 14's
            # 100 ms figures with shared requests are pipeline_throughput's).
            extra_env={"DOCPIPE_EMBEDDING_SHARED_REQUESTS": "false"},
        )
        calls_per_doc = latency.mock_calls / latency.documents
        bound = 32 / (calls_per_doc * 0.1)
        ratio = latency.docs_per_s / bound
        log(f"  {latency.docs_per_s:.1f} documents/s, bound {bound:.1f}, ratio {ratio:.2f}")
        profile_path = workdir / "worker.prof"
        log(f"profile: {args.profile_documents} documents, 1 worker under cProfile")
        await run_case(
            name="profile",
            url=url,
            pool=pool,
            workdir=workdir,
            documents=args.profile_documents,
            workers=1,
            concurrency=16,
            parser="local",
            latency_ms=0,
            profile=profile_path,
        )
        cpu = cpu_by_stage(profile_path)
        throughput_figures = await pipeline_throughput.measure(args, url, workdir)
        # Issue 15: the whale and the healthy documents' throughput behind hostile ones.
        hostile_figures = await pipeline_hostile.measure(args, url, workdir)
    finally:
        await pool.close()
    return {
        **throughput_figures,
        **hostile_figures,
        "docs_per_s": round(throughput.docs_per_s, 1),
        "latency_bound_ratio": round(ratio, 3),
        "throughput": {
            "documents": throughput.documents,
            "seconds": round(throughput.seconds, 2),
            "workers": 2,
            "concurrency_per_worker": 16,
            "parser": "local",
            "mock_calls_per_document": round(throughput.mock_calls / throughput.documents, 2),
        },
        "latency": {
            "documents": latency.documents,
            "seconds": round(latency.seconds, 2),
            "docs_per_s": round(latency.docs_per_s, 1),
            "latency_ms": 100,
            "concurrency": 32,
            "parser": "llamaparse",
            "mock_calls_per_document": round(calls_per_doc, 2),
            "bound_docs_per_s": round(bound, 1),
        },
        "worker_cpu_s_by_stage": {k: round(v, 3) for k, v in cpu.items()},
        "document_bytes": 4096,
        "cpus": os.cpu_count(),
    }


def print_table(result: dict[str, Any]) -> None:
    t, lat = result["throughput"], result["latency"]
    print(f"throughput   {result['docs_per_s']:>8.1f} documents/s  (target >= 100)")
    print(f"             {t['documents']} documents in {t['seconds']} s, 2 workers x 16")
    print(
        f"latency      {lat['docs_per_s']:>8.1f} documents/s of a {lat['bound_docs_per_s']} bound"
        f" = {result['latency_bound_ratio']:.2f}  (target >= 0.80)"
    )
    print(
        f"             {lat['mock_calls_per_document']} mock calls per document x 100 ms,"
        " 1 worker x 32"
    )
    cpu = result["worker_cpu_s_by_stage"]
    busy = cpu["total"] - cpu["idle"] - cpu["startup"]
    print(
        "worker CPU by stage (one worker, cProfile; 'other' is the event loop and socket"
        f" callbacks; start-up imports {cpu['startup']:.2f} s not counted):"
    )
    for stage in [*STAGE_FUNCTIONS, "other"]:
        share = cpu[stage] / busy * 100 if busy else 0.0
        print(f"  {stage:<8} {cpu[stage]:>7.2f} s  {share:5.1f} %")
    pipeline_throughput.print_figures(result)
    pipeline_hostile.print_figures(result)


def _int_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"positive integers, comma-separated: {text!r}")
    return values


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--latency-documents", type=int, default=1000)
    parser.add_argument("--profile-documents", type=int, default=500)
    # Issue 14 (bench/pipeline_throughput.py): docpipe beside pgai, the store's ceiling, corpus.
    parser.add_argument("--peer-documents", type=int, default=2000)
    parser.add_argument(
        "--peer-concurrency", type=_int_list, default=[32, 64],
        help="docpipe's jobs at once per worker, comma-separated; its best is compared",
    )  # fmt: skip
    parser.add_argument(
        "--pgai-concurrency", type=_int_list, default=[1, 4],
        help="pgai's --concurrency (default 1, at most 10), comma-separated; its best is compared",
    )  # fmt: skip
    parser.add_argument("--peer-rounds", type=int, default=1, help="docpipe/pgai turns; best kept")
    parser.add_argument("--store-documents", type=int, default=600)
    parser.add_argument("--store-rounds", type=int, default=1, help="COPY/store turns; best kept")
    parser.add_argument("--corpus", type=Path, default=None, help="e.g. /usr/share/doc")
    parser.add_argument("--corpus-limit-mb", type=float, default=None)
    parser.add_argument("--corpus-concurrency", type=int, default=8)
    parser.add_argument(
        "--corpus-rounds", type=int, default=1, help="before/after pairs; best kept"
    )
    # Issue 15 (bench/pipeline_hostile.py; alone: python bench/pipeline_hostile.py).
    pipeline_hostile.add_arguments(parser)
    arguments = parser.parse_args()
    outcome = asyncio.run(main(arguments))
    if arguments.json:
        print(json.dumps(outcome))
    else:
        print_table(outcome)
