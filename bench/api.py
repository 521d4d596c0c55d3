# ruff: noqa: E402  (imports follow the sys.path fix below, on purpose)
"""Intake API latency under load: status reads and searches over 10,000 stored chunks.

Starts an embedded Postgres, the mock services and `docpipe api` as separate processes, stores
documents and chunks (with the mock embedder's vectors) straight in the database, then drives the
API from this process over loopback with N concurrent clients. Beside the API's figures it prints
the same reads issued straight to Postgres from this process, at the same concurrency: the floor
the API's HTTP, auth and JSON layers add to.

    python bench/api.py            # table
    python bench/api.py --json     # one JSON object (status_p95_ms, search_p95_ms, ...)
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/queue.py would shadow the standard library's queue: take this folder off the import path
# (it is sys.path[0] when a script here runs), here and in the processes we start.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
from pgvector import Vector

from docpipe_mocks.embedding import embed_text
from docpipe_worker.api.auth import DEVELOPMENT_SECRET, mint_token
from docpipe_worker.api.store import GET_DOCUMENT, SEARCH_APPROXIMATE
from docpipe_worker.database import create_pool
from docpipe_worker.devstack import free_port
from docpipe_worker.embedded import start_embedded_postgres
from docpipe_worker.migrator import DEFAULT_EMBEDDING_DIMENSIONS, migrate

DIMS = DEFAULT_EMBEDDING_DIMENSIONS
OWNER = "bench"
PIPELINE = "default"
TARGETS_MS = {"status": 50.0, "search": 100.0}

_WORDS = [
    *[
        "tide",
        "harbour",
        "seal",
        "ledger",
        "schooner",
        "keel",
        "sail",
        "anchor",
        "beacon",
        "lighthouse",
        "gull",
        "cormorant",
    ],
    *[
        "net",
        "trawler",
        "quay",
        "dune",
        "sandbank",
        "current",
        "storm",
        "chart",
        "compass",
        "rope",
        "mast",
        "deck",
        "hull",
    ],
    *[
        "rudder",
        "buoy",
        "pier",
        "crab",
        "oyster",
        "mussel",
        "kelp",
        "reef",
        "lagoon",
        "estuary",
        "channel",
        "pilot",
        "ferry",
    ],
    *[
        "cargo",
        "crane",
        "dock",
        "harvest",
        "grain",
        "mill",
        "bread",
        "oven",
        "starter",
        "flour",
        "yeast",
        "salt",
        "river",
    ],
    *[
        "bridge",
        "valley",
        "orchard",
        "apple",
        "pear",
        "barn",
        "hive",
        "honey",
        "wax",
        "candle",
        "lantern",
        "forge",
        "iron",
    ],
    *["anvil", "hammer", "chain", "bicycle", "wheel", "spoke"],
]


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(12, 24))).capitalize() + "."


async def seed(
    pool: asyncpg.Pool, *, chunks: int, per_document: int
) -> tuple[list[str], list[str]]:
    """Store processed documents holding `chunks` chunks; return document ids and query texts."""
    rng = random.Random(7)
    documents = chunks // per_document
    doc_ids: list[str] = []
    queries: list[str] = []
    rows: list[tuple[Any, ...]] = []
    async with pool.acquire() as conn:
        for d in range(documents):
            texts = [_sentence(rng) for _ in range(per_document)]
            document_id = uuid.uuid4()
            await conn.execute(
                "insert into docpipe.documents (id, pipeline, owner, filename, content_type,"
                " size_bytes, sha256, content, status, chunk_count, processed_at)"
                " values ($1, $2, $3, $4, 'text/markdown', $5, $6, $7, 'processed', $8, now())",
                document_id, PIPELINE, OWNER, f"doc-{d}.md", 100, uuid.uuid4().hex, b"x",
                per_document,
            )  # fmt: skip
            doc_ids.append(str(document_id))
            queries.append(texts[0])
            offset = 0
            for ordinal, text in enumerate(texts):
                rows.append(
                    (document_id, PIPELINE, OWNER, ordinal, text, None, offset,
                     offset + len(text), Vector(embed_text(text, DIMS)))
                )  # fmt: skip
                offset += len(text) + 2
        await conn.copy_records_to_table(
            "chunks",
            schema_name="docpipe",
            records=rows,
            columns=["document_id", "pipeline", "owner", "ordinal", "content", "heading",
                     "char_start", "char_end", "embedding"],
        )  # fmt: skip
        await conn.execute("vacuum analyze docpipe.chunks")
        await conn.execute("vacuum analyze docpipe.documents")
    return doc_ids, queries


def summarize(latencies: list[float], errors: int, seconds: float) -> dict[str, float]:
    ordered = sorted(latencies)
    if not ordered:
        raise SystemExit(f"no request succeeded ({errors} failed)")

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    return {
        "requests": len(ordered),
        "errors": errors,
        "rps": round(len(ordered) / seconds, 1),
        "p50_ms": round(pct(50), 2),
        "p95_ms": round(pct(95), 2),
        "p99_ms": round(pct(99), 2),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2),
    }


async def load(
    call: Callable[[random.Random], Awaitable[bool]], *, clients: int, seconds: float
) -> dict[str, float]:
    """Run `call` from `clients` concurrent loops for `seconds`; latency of each call."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client(seed_: int) -> None:
        nonlocal errors
        rng = random.Random(seed_)
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            ok = await call(rng)
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return summarize(latencies, errors, time.perf_counter() - started)


async def spawn(args: list[str], env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "docpipe_worker.cli", *args, env=env, stdout=out, stderr=out
        )


async def wait_ready(url: str, proc: asyncio.subprocess.Process, log: Path) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            if proc.returncode is not None:
                raise SystemExit(f"{url} exited with {proc.returncode}; see {log}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise SystemExit(f"{url} not ready after 30 s; see {log}")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="docpipe-bench-api-"))
    processes: list[asyncio.subprocess.Process] = []
    try:
        url = start_embedded_postgres(data_dir)
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        pool = await create_pool(url, min_size=2, max_size=args.clients)
        t0 = time.perf_counter()
        doc_ids, queries = await seed(pool, chunks=args.chunks, per_document=args.per_document)
        seed_s = time.perf_counter() - t0

        mocks_port, api_port = free_port(), free_port()
        mocks_url = f"http://127.0.0.1:{mocks_port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        processes.append(
            await spawn(["mocks", "--port", str(mocks_port)], env, data_dir / "mocks.log")
        )
        await wait_ready(f"{mocks_url}/_admin/faults", processes[-1], data_dir / "mocks.log")
        api_env = {
            **env,
            "DATABASE_URL": url,
            "OPENAI_BASE_URL": f"{mocks_url}/v1",
            "OPENAI_API_KEY": "bench",
            "DOCPIPE_API_DEV_MODE": "true",
            "DOCPIPE_API_HOST": "127.0.0.1",
            "DOCPIPE_API_PORT": str(api_port),
            "DOCPIPE_API_RATE_LIMIT_PER_SECOND": "1000000",
            "DOCPIPE_API_RATE_LIMIT_BURST": "1000000",
            "DOCPIPE_LOG_LEVEL": "WARNING",
        }
        api_env.pop("DOCPIPE_API_JWT_SECRET", None)
        processes.append(await spawn(["api"], api_env, data_dir / "api.log"))
        api_url = f"http://127.0.0.1:{api_port}"
        await wait_ready(f"{api_url}/readyz", processes[-1], data_dir / "api.log")

        token = mint_token(DEVELOPMENT_SECRET, subject=OWNER, ttl_s=3600)
        headers = {"Authorization": f"Bearer {token}"}
        failures: list[str] = []
        connector = aiohttp.TCPConnector(limit=args.clients)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

            async def status(rng: random.Random) -> bool:
                path = f"{api_url}/v1/documents/{rng.choice(doc_ids)}"
                async with session.get(path) as response:
                    await response.read()
                    return response.status == 200

            async def search(rng: random.Random) -> bool:
                body = {"query": rng.choice(queries), "top_k": 5}
                async with session.post(
                    f"{api_url}/v1/pipelines/{PIPELINE}/search", json=body
                ) as response:
                    answer = await response.read()
                    if response.status != 200 and not failures:
                        failures.append(f"search: {response.status} {answer[:300]!r}")
                    return response.status == 200

            # Warm-up: connections, caches, prepared statements.
            await load(status, clients=args.clients, seconds=1.0)
            try:
                await load(search, clients=args.clients, seconds=1.0)
            except SystemExit:
                raise SystemExit(f"searches fail: {failures}") from None
            api_status = await load(status, clients=args.clients, seconds=args.seconds)
            api_search = await load(search, clients=args.clients, seconds=args.seconds)

        vectors = [Vector(embed_text(q, DIMS)) for q in queries]
        await pool.execute(f"set hnsw.ef_search = {100}")

        async def sql_status(rng: random.Random) -> bool:
            row = await pool.fetchrow(GET_DOCUMENT, uuid.UUID(rng.choice(doc_ids)), OWNER)
            return row is not None

        async def sql_search(rng: random.Random) -> bool:
            async with pool.acquire() as conn:
                await conn.execute("set hnsw.ef_search = 100")
                rows = await conn.fetch(SEARCH_APPROXIMATE, rng.choice(vectors), PIPELINE, OWNER, 5)
            return len(rows) == 5

        await load(sql_status, clients=args.clients, seconds=1.0)
        db_status = await load(sql_status, clients=args.clients, seconds=args.seconds)
        db_search = await load(sql_search, clients=args.clients, seconds=args.seconds)
        chunk_count = await pool.fetchval("select count(*) from docpipe.chunks")
        await pool.close()
    finally:
        for proc in processes:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in processes:
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)

    return {
        "status_p50_ms": api_status["p50_ms"],
        "status_p95_ms": api_status["p95_ms"],
        "status_p99_ms": api_status["p99_ms"],
        "status_rps": api_status["rps"],
        "search_p50_ms": api_search["p50_ms"],
        "search_p95_ms": api_search["p95_ms"],
        "search_p99_ms": api_search["p99_ms"],
        "search_rps": api_search["rps"],
        "targets": {
            "status_p95_under_50ms": api_status["p95_ms"] < TARGETS_MS["status"],
            "search_p95_under_100ms": api_search["p95_ms"] < TARGETS_MS["search"],
        },
        "runs": {
            "api_status": api_status,
            "api_search": api_search,
            "postgres_status": db_status,
            "postgres_search": db_search,
        },
        "settings": {
            "clients": args.clients,
            "seconds": args.seconds,
            "chunks": chunk_count,
            "documents": len(doc_ids),
            "embedding_dimensions": DIMS,
            "seed_s": round(seed_s, 1),
        },
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "aiohttp": aiohttp.__version__,
            "asyncpg": asyncpg.__version__,
        },
    }


def print_table(result: dict[str, Any]) -> None:
    s = result["settings"]
    print(
        f"intake API under load: {s['clients']} clients, {s['seconds']:g} s per run, "
        f"{s['chunks']:,} chunks in {s['documents']} documents ({s['embedding_dimensions']} dims)"
    )
    header = f"{'run':<26} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>7}"
    print(header)
    names = {
        "api_status": "API  GET /v1/documents/{id}",
        "postgres_status": "  Postgres direct, same row",
        "api_search": "API  POST .../search",
        "postgres_search": "  Postgres direct, HNSW only",
    }
    for key in ("api_status", "postgres_status", "api_search", "postgres_search"):
        r = result["runs"][key]
        print(
            f"{names[key]:<26} {r['rps']:>8,.0f} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f}"
            f" {r['p99_ms']:>8.2f} {r['errors']:>7}"
        )
    t = result["targets"]
    print(
        f"targets: status p95 < 50 ms {'met' if t['status_p95_under_50ms'] else 'NOT met'}; "
        f"search p95 < 100 ms {'met' if t['search_p95_under_100ms'] else 'NOT met'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0, help="per measured run")
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--per-document", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
