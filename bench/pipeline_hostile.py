# ruff: noqa: E402  (imports follow the sys.path fix below, on purpose)
"""The hostile-documents parts of bench/pipeline.py (issue 15), measured in the same run:

- the whale: one healthy HTML page of about 8 MB (several thousand chunks, like Node's
  `all.html`) through one worker, processed in parts: `whale_s` from its insert to processed,
  and `whale_slot_max_s`, the longest it held a worker's slot in one go (it hands the slot back
  between parts every DOCPIPE_PART_SLICE_SECONDS, its job's `progress.longest_slot_s`), beside
  the same whale held whole (`whale_whole_s`, DOCPIPE_PART_SLICE_SECONDS=0);
- the hostile mix: healthy markdown documents through two workers, once alone and once with
  copies of the hostile corpus (tests/support/hostile.py: nesting, decompression bombs,
  thousands of pages, a huge line, NUL bytes, wrong extensions) queued before them;
  `hostile_mix_throughput_ratio` is the healthy documents' throughput with the hostile ones in
  the queue over their throughput alone (target >= 0.8).

Each case starts its own mocks and `docpipe worker` processes, with the default parse limits.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, bench/ is sys.path[0] and its queue.py would shadow the standard library's:
# the repository root instead (as bench/pipeline.py does).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncio
import contextlib
import hashlib
import os
import signal
import time
from typing import Any

import aiohttp
import asyncpg
from tests.support.hostile import Hostile, corpus, whale_html
from tests.support.ports import free_port

from bench.corpus import make_document
from docpipe_queue.database import create_pool
from docpipe_queue.jobs import NewJob, enqueue

PIPELINE = "hostile"
WHALE_SECTIONS = 4_800  # about 8 MB of HTML


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not ready in {timeout_s}s")


async def _insert(pool: asyncpg.Pool, documents: list[tuple[str, str, str, bytes]]) -> list[Any]:
    """(owner, filename, content type, bytes) documents and their jobs; their ids."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "insert into docpipe.documents"
            " (pipeline, owner, filename, content_type, size_bytes, sha256, content)"
            " select $1, o, f, t, length(c), s, c"
            " from unnest($2::text[], $3::text[], $4::text[], $5::bytea[], $6::text[])"
            " as d(o, f, t, c, s) returning id, owner",
            PIPELINE,
            [d[0] for d in documents],
            [d[1] for d in documents],
            [d[2] for d in documents],
            [d[3] for d in documents],
            [hashlib.sha256(d[3]).hexdigest() for d in documents],
        )
        await enqueue(conn, [NewJob(pipeline=PIPELINE, document_id=r[0], owner=r[1]) for r in rows])
    return [r[0] for r in rows]


class _Stack:
    """Mocks and `workers` worker processes, stopped on the way out."""

    def __init__(
        self,
        url: str,
        workdir: Path,
        name: str,
        workers: int,
        concurrency: int,
        env: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self.workdir = workdir
        self.name = name
        self.workers = workers
        self.concurrency = concurrency
        self.env = env or {}
        self.procs: list[asyncio.subprocess.Process] = []

    async def __aenter__(self) -> _Stack:
        base = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        mock_port = free_port()
        mocks = f"http://127.0.0.1:{mock_port}"
        await self._spawn(
            ["-m", "docpipe_cli.main", "mocks", "--port", str(mock_port)], base, "mocks"
        )
        await _wait_http(f"{mocks}/_admin/stats")
        for w in range(self.workers):
            port = free_port()
            env = {
                **base,
                "DATABASE_URL": self.url,
                "OPENAI_BASE_URL": f"{mocks}/v1",
                "OPENAI_API_KEY": "bench",
                "DOCPIPE_PIPELINE": PIPELINE,
                "DOCPIPE_CONCURRENCY": str(self.concurrency),
                "DOCPIPE_METRICS_HOST": "127.0.0.1",
                "DOCPIPE_METRICS_PORT": str(port),
                "DOCPIPE_LOG_LEVEL": os.environ.get("BENCH_WORKER_LOG_LEVEL", "WARNING"),
                **self.env,
            }
            await self._spawn(["-m", "docpipe_cli.main", "worker"], env, f"worker-{w}")
            await _wait_http(f"http://127.0.0.1:{port}/readyz")
        return self

    async def _spawn(self, args: list[str], env: dict[str, str], what: str) -> None:
        with (self.workdir / f"{self.name}-{what}.log").open("ab") as out:
            self.procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable, *args, env=env, stdout=out, stderr=out
                )
            )

    async def __aexit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 40)
            except TimeoutError:
                proc.kill()


async def _reset(pool: asyncpg.Pool) -> None:
    await pool.execute("truncate docpipe.jobs, docpipe.chunks, docpipe.documents cascade")


async def _wait_settled(pool: asyncpg.Pool, ids: list[Any], timeout_s: float) -> float:
    """Seconds until every document of `ids` is processed or failed."""
    start = time.monotonic()
    while True:
        done = await pool.fetchval(
            "select count(*) from docpipe.documents"
            " where id = any($1) and status in ('processed', 'failed')",
            ids,
        )
        if done >= len(ids):
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise RuntimeError(f"only {done}/{len(ids)} settled in {timeout_s}s")
        await asyncio.sleep(0.05)


async def measure_whale(
    pool: asyncpg.Pool, url: str, workdir: Path, *, slice_s: str | None = None
) -> dict[str, Any]:
    """The whale through one worker; `slice_s`: its DOCPIPE_PART_SLICE_SECONDS (None: default)."""
    await _reset(pool)
    whale = whale_html(WHALE_SECTIONS)
    env = {} if slice_s is None else {"DOCPIPE_PART_SLICE_SECONDS": slice_s}
    name = "whale" if slice_s is None else f"whale-slice-{slice_s}"
    async with _Stack(url, workdir, name, workers=1, concurrency=8, env=env):
        (doc_id,) = await _insert(pool, [("bench", "whale.html", "text/html", whale)])
        seconds = await _wait_settled(pool, [doc_id], timeout_s=900)
    row = await pool.fetchrow(
        "select status, error, chunk_count from docpipe.documents where id = $1", doc_id
    )
    progress = await pool.fetchval(
        "select progress from docpipe.jobs where document_id = $1", doc_id
    )
    assert row is not None
    if row["status"] != "processed":
        raise RuntimeError(f"the whale failed: {row['error']}")
    return {
        "whale_s": round(seconds, 2),
        # Held whole (before hand-backs, or DOCPIPE_PART_SLICE_SECONDS=0): about whale_s.
        "whale_slot_max_s": progress.get("longest_slot_s"),
        "whale": {
            "bytes": len(whale),
            "chunks": row["chunk_count"],
            "progress": progress,
        },
    }


def _healthy(count: int) -> list[tuple[str, str, str, bytes]]:
    return [("bench", f"doc-{i}.md", "text/markdown", make_document(i)) for i in range(count)]


def _hostile(copies: int, bomb_mb: int) -> list[tuple[str, str, str, bytes]]:
    docs: list[Hostile] = corpus(bomb_mb=bomb_mb)
    # Each copy is another owner's: the same bytes from one owner would be one document.
    return [
        (f"hostile-{c}", d.filename, d.content_type, d.data) for c in range(copies) for d in docs
    ]


async def measure_mix(
    pool: asyncpg.Pool, url: str, workdir: Path, *, healthy: int, copies: int, bomb_mb: int
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    hostile = _hostile(copies, bomb_mb)
    for case in ("alone", "with_hostile"):
        await _reset(pool)
        async with _Stack(url, workdir, f"mix-{case}", workers=2, concurrency=16):
            hostile_ids = await _insert(pool, hostile) if case == "with_hostile" else []
            healthy_ids = await _insert(pool, _healthy(healthy))
            seconds = await _wait_settled(pool, healthy_ids, timeout_s=900)
            hostile_s = await _wait_settled(pool, hostile_ids, timeout_s=900) if hostile_ids else 0
        failed = await pool.fetchval(
            "select count(*) from docpipe.documents where id = any($1) and status = 'failed'",
            healthy_ids,
        )
        if failed:
            raise RuntimeError(f"{failed} healthy documents failed")
        outcomes = await pool.fetch(
            "select d.status, j.attempts, count(*) from docpipe.documents d"
            " join docpipe.jobs j on j.document_id = d.id where d.id = any($1)"
            " group by 1, 2 order by 1, 2",
            hostile_ids,
        )
        figures[case] = {
            "healthy_documents": healthy,
            "healthy_seconds": round(seconds, 2),
            "healthy_docs_per_s": round(healthy / seconds, 1),
        }
        if hostile_ids:
            figures[case]["hostile_documents"] = len(hostile_ids)
            figures[case]["hostile_settled_s"] = round(hostile_s, 2)
            figures[case]["hostile_outcomes"] = [
                {"status": r[0], "attempts": r[1], "count": r[2]} for r in outcomes
            ]
        log(f"  {case}: {healthy / seconds:.1f} healthy documents/s")
    ratio = figures["with_hostile"]["healthy_docs_per_s"] / figures["alone"]["healthy_docs_per_s"]
    return {"hostile_mix_throughput_ratio": round(ratio, 3), "hostile_mix": figures}


async def measure(args: Any, url: str, workdir: Path) -> dict[str, Any]:
    pool = await create_pool(url, min_size=1, max_size=4)
    try:
        whale: dict[str, Any] = {}
        if not args.hostile_skip_whale:
            log(f"whale: one HTML page of about 8 MB ({WHALE_SECTIONS} sections), 1 worker")
            whale = await measure_whale(pool, url, workdir)
            log(
                f"  {whale['whale_s']} s, {whale['whale']['chunks']} chunks,"
                f" slot held at most {whale['whale_slot_max_s']} s"
            )
            # The same whale holding its slot to the end (no hand-back): what hand-backs cost.
            whole = await measure_whale(pool, url, workdir, slice_s="0")
            whale["whale_whole_s"] = whole["whale_s"]
            whale["whale_whole_slot_max_s"] = whole["whale_slot_max_s"]
            log(f"  held whole (DOCPIPE_PART_SLICE_SECONDS=0): {whole['whale_s']} s")
        log(
            f"hostile mix: {args.hostile_healthy} healthy documents, alone and behind"
            f" {args.hostile_copies} copies of the hostile corpus; 2 workers x 16"
        )
        mix = await measure_mix(
            pool,
            url,
            workdir,
            healthy=args.hostile_healthy,
            copies=args.hostile_copies,
            bomb_mb=args.hostile_bomb_mb,
        )
    finally:
        await pool.close()
    return {**whale, **mix}


def print_figures(result: dict[str, Any]) -> None:
    if "hostile_mix" not in result:
        return
    if "whale_s" in result:
        whale = result["whale"]
        print(
            f"whale        {result['whale_s']:>8.1f} s  ({whale['bytes'] / 1e6:.1f} MB of HTML,"
            f" {whale['chunks']} chunks, in parts, 1 worker)"
        )
        print(
            f"whale slot   {result['whale_slot_max_s']:>8.1f} s  longest held in one go"
            f" (handed back {whale['progress'].get('handed_back', 0)} times between parts)"
        )
        print(
            f"whale whole  {result['whale_whole_s']:>8.1f} s  held to the end"
            f" (DOCPIPE_PART_SLICE_SECONDS=0; slot {result['whale_whole_slot_max_s']} s)"
        )
    mix = result["hostile_mix"]
    alone, mixed = mix["alone"], mix["with_hostile"]
    print(
        f"hostile mix  {result['hostile_mix_throughput_ratio']:>8.2f}  (target >= 0.80):"
        f" {mixed['healthy_docs_per_s']} healthy documents/s behind"
        f" {mixed['hostile_documents']} hostile ones, {alone['healthy_docs_per_s']} alone"
    )
    outcomes = ", ".join(
        f"{o['count']} {o['status']} after {o['attempts']} attempt(s)"
        for o in mixed["hostile_outcomes"]
    )
    print(f"             hostile documents: {outcomes}; settled in {mixed['hostile_settled_s']} s")


async def _standalone(args: Any) -> dict[str, Any]:
    import tempfile

    from docpipe_queue.embedded import start_embedded_postgres
    from docpipe_queue.migrator import migrate

    workdir = Path(tempfile.mkdtemp(prefix="docpipe-bench-hostile-"))
    log(f"bench/pipeline_hostile: data and logs in {workdir}")
    url = start_embedded_postgres(workdir / "pg")
    conn = await asyncpg.connect(url)
    await migrate(conn)
    await conn.close()
    result = await measure(args, url, workdir)
    return {**result, "cpus": os.cpu_count()}


def add_arguments(parser: Any) -> None:
    parser.add_argument("--hostile-healthy", type=int, default=1000)
    parser.add_argument("--hostile-copies", type=int, default=3)
    parser.add_argument("--hostile-bomb-mb", type=int, default=1500)
    parser.add_argument("--hostile-skip-whale", action="store_true")


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="bench/pipeline.py's hostile-documents part alone")
    parser.add_argument("--json", action="store_true")
    add_arguments(parser)
    arguments = parser.parse_args()
    outcome = asyncio.run(_standalone(arguments))
    if arguments.json:
        print(json.dumps(outcome))
    else:
        print_figures(outcome)
