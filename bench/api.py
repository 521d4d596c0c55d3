# ruff: noqa: E402  (imports follow the sys.path fix below, on purpose)
"""Intake API latency under load: status reads and searches over 10,000 stored chunks.

Starts an embedded Postgres, the mock services and `docpipe api` as separate processes, stores
documents and chunks (with the mock embedder's vectors) straight in the database, then drives the
API from this process over loopback with N concurrent clients. Beside the API's figures it prints
the same reads issued straight to Postgres from this process, at the same concurrency: the floor
the API's HTTP, auth and JSON layers add to.

The stored chunks are paragraphs of documents with topics and Zipf-like word frequencies
(bench/corpus.py, shared with bench/pipeline.py), as real text has; `--corpus uniform` stores
sentences of uniformly random words from a 70-word list instead, whose embeddings are all about
equally far apart, the HNSW index's worst case.

The load generator is this one process on one event loop (uvloop unless `--loop asyncio`), over
keep-alive connections; it shares the machine's cores with the API, the mocks and Postgres, and
the CPU seconds each of them used are printed with the figures.

    python bench/api.py            # table
    python bench/api.py --json     # one JSON object (status_p95_ms, search_p95_ms, ...)
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/queue.py would shadow the standard library's queue: take this folder off the import path
# (it is sys.path[0] when a script here runs), here and in the processes we start.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
# The repository root instead, for the shared corpus generator (bench.corpus).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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
from tests.support.ports import free_port

from bench.corpus import make_paragraph, pick_topic
from docpipe_api.auth import DEVELOPMENT_SECRET, mint_token
from docpipe_api.settings import ApiSettings
from docpipe_api.store import GET_DOCUMENT, SEARCH_APPROXIMATE, SEARCH_EXACT
from docpipe_mocks.embedding import embed_text
from docpipe_queue.database import create_pool
from docpipe_queue.embedded import start_embedded_postgres
from docpipe_queue.migrator import DEFAULT_EMBEDDING_DIMENSIONS, migrate

DIMS = DEFAULT_EMBEDDING_DIMENSIONS
OWNER = "bench"
PIPELINE = "default"
TARGETS_MS = {"status": 50.0, "search": 100.0}
TOP_K = 5

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


def document_chunks(rng: random.Random, corpus: str, count: int) -> tuple[list[str], str]:
    """One document's chunk texts and a query made from it (its first chunk's first sentence
    for the topics corpus, its first chunk for the uniform one, whose chunks are one sentence)."""
    if corpus == "uniform":
        texts = [_sentence(rng) for _ in range(count)]
        return texts, texts[0]
    topic = pick_topic(rng)
    texts = [make_paragraph(rng, topic) for _ in range(count)]
    return texts, texts[0].split(". ")[0] + "."


async def seed(
    pool: asyncpg.Pool, *, chunks: int, per_document: int, corpus: str, owners: int = 1
) -> tuple[list[str], list[str]]:
    """Store processed documents holding `chunks` chunks, every `owners`-th one the bench's (the
    others belong to other owners); return the bench owner's document ids and query texts."""
    rng = random.Random(7)
    documents = chunks // per_document
    doc_ids: list[str] = []
    queries: list[str] = []
    rows: list[tuple[Any, ...]] = []
    async with pool.acquire() as conn:
        for d in range(documents):
            texts, query = document_chunks(rng, corpus, per_document)
            document_id = uuid.uuid4()
            owner = OWNER if d % owners == 0 else f"other-{d % owners}"
            await conn.execute(
                "insert into docpipe.documents (id, pipeline, owner, filename, content_type,"
                " size_bytes, sha256, content, status, chunk_count, processed_at)"
                " values ($1, $2, $3, $4, 'text/markdown', $5, $6, $7, 'processed', $8, now())",
                document_id, PIPELINE, owner, f"doc-{d}.md", 100, uuid.uuid4().hex, b"x",
                per_document,
            )  # fmt: skip
            if owner == OWNER:
                doc_ids.append(str(document_id))
                queries.append(query)
            offset = 0
            for ordinal, text in enumerate(texts):
                rows.append(
                    (document_id, PIPELINE, owner, ordinal, text, None, offset,
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
        # The seed leaves tens of MB of dirty buffers: written out now, not by the checkpointer
        # in the middle of the first measured run.
        await conn.execute("checkpoint")
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
            sys.executable, "-m", "docpipe_cli.main", *args, env=env, stdout=out, stderr=out
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux), 0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds(data_dir: Path) -> float:
    """CPU seconds of the Postgres server whose data dir is `data_dir`, with its backends."""
    try:
        postmaster = int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    total = cpu_seconds(postmaster)
    for child in Path("/proc").iterdir():
        if not child.name.isdigit():
            continue
        try:
            fields = (child / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def search_exact_count(session: aiohttp.ClientSession, api_url: str) -> float:
    """Searches the API answered with the exact scan so far (its /metrics)."""
    async with session.get(f"{api_url}/metrics") as response:
        text = await response.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("docpipe_api_search_exact_total{")
    )


async def search_quality(
    pool: asyncpg.Pool,
    probes: list[tuple[str, Vector]],
    *,
    ef_searches: list[int],
    top_k: int,
) -> dict[str, Any]:
    """For each ef_search: recall@top_k of the API's approximate search against the exact one,
    and how often the chunk the query came from (its document's first) is among the hits; and
    whether the plan of the approximate statement (custom and generic) uses the HNSW index."""
    by_ef: dict[str, dict[str, float]] = {}
    async with pool.acquire() as conn:
        exact = [
            {r["id"] for r in await conn.fetch(SEARCH_EXACT, v, PIPELINE, OWNER, top_k, None)}
            for _, v in probes
        ]
        sources = [
            await conn.fetchval(
                "select id from docpipe.chunks where document_id = $1 and ordinal = 0",
                uuid.UUID(document_id),
            )
            for document_id, _ in probes
        ]
        for ef_search in ef_searches:
            await conn.execute(f"set hnsw.ef_search = {int(ef_search)}")
            found = source_found = short = 0
            for (_, vector), best, source in zip(probes, exact, sources, strict=True):
                rows = await conn.fetch(SEARCH_APPROXIMATE, vector, PIPELINE, OWNER, top_k)
                hits = {r["id"] for r in rows}
                short += len(rows) < top_k
                found += len(hits & best)
                source_found += source in hits
            by_ef[str(ef_search)] = {
                "recall_at_k": round(found / (len(probes) * top_k), 3),
                "source_in_top_k": round(source_found / len(probes), 3),
                "approximate_short_of_k": short,
            }
        plans = {}
        for mode in ("force_custom_plan", "force_generic_plan"):
            await conn.execute(f"set plan_cache_mode = {mode}")
            statement = await conn.prepare("explain (format json) " + SEARCH_APPROXIMATE)
            plan = await statement.fetchval(probes[0][1], PIPELINE, OWNER, top_k)
            plans[mode] = "chunks_embedding_hnsw" in str(plan)
        await conn.execute("reset plan_cache_mode")
    return {
        "queries": len(probes),
        "by_ef_search": by_ef,
        "plan_uses_hnsw_custom": plans["force_custom_plan"],
        "plan_uses_hnsw_generic": plans["force_generic_plan"],
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="docpipe-bench-api-"))
    processes: dict[str, asyncio.subprocess.Process] = {}
    load_before = os.getloadavg()
    try:
        url = start_embedded_postgres(data_dir)
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        pool = await create_pool(url, min_size=2, max_size=args.clients)
        t0 = time.perf_counter()
        doc_ids, queries = await seed(
            pool, chunks=args.chunks, per_document=args.per_document, corpus=args.corpus,
            owners=args.owners,
        )  # fmt: skip
        seed_s = time.perf_counter() - t0

        mocks_port = free_port()
        mocks_url = f"http://127.0.0.1:{mocks_port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        processes["mocks"] = await spawn(
            ["mocks", "--port", str(mocks_port)], env, data_dir / "mocks.log"
        )
        await wait_ready(f"{mocks_url}/_admin/faults", processes["mocks"], data_dir / "mocks.log")
        base_env = {
            **env,
            "DATABASE_URL": url,
            "OPENAI_BASE_URL": f"{mocks_url}/v1",
            "OPENAI_API_KEY": "bench",
            "DOCPIPE_API_DEV_MODE": "true",
            "DOCPIPE_API_HOST": "127.0.0.1",
            "DOCPIPE_API_RATE_LIMIT_PER_SECOND": "1000000",
            "DOCPIPE_API_RATE_LIMIT_BURST": "1000000",
            "DOCPIPE_API_EVENT_LOOP": args.api_loop,
            "DOCPIPE_API_POOL_SIZE": str(args.pool_size),
            "DOCPIPE_API_SEARCH_EF_SEARCH": str(args.ef_search),
            "DOCPIPE_API_JWT_CACHE_SECONDS": str(args.jwt_cache_seconds),
            "DOCPIPE_LOG_LEVEL": "WARNING",
        }
        base_env.pop("DOCPIPE_API_JWT_SECRET", None)
        token = mint_token(DEVELOPMENT_SECRET, subject=OWNER, ttl_s=3600)
        headers = {"Authorization": f"Bearer {token}"}

        compared: dict[str, Any] = {}

        async def measure(overrides: dict[str, str]) -> dict[str, Any]:
            """Start `docpipe api` with the settings overridden, load it, stop it."""
            api_port = free_port()
            api_env = {**base_env, "DOCPIPE_API_PORT": str(api_port)}
            api_env.update({f"DOCPIPE_API_{k.upper()}": v for k, v in overrides.items()})
            log = data_dir / f"api-{len(compared)}.log"
            api = processes["api"] = await spawn(["api"], api_env, log)
            api_url = f"http://127.0.0.1:{api_port}"
            await wait_ready(f"{api_url}/readyz", api, log)
            failures: list[str] = []
            # Bodies and URLs made up front, no cookie jar: the load generator's own CPU comes
            # from the same cores as the server's, so it does as little per request as it can.
            status_urls = [f"{api_url}/v1/documents/{d}" for d in doc_ids]
            search_url = f"{api_url}/v1/pipelines/{PIPELINE}/search"
            search_bodies = [json.dumps({"query": q, "top_k": TOP_K}).encode() for q in queries]
            search_headers = {**headers, "Content-Type": "application/json"}

            def cpu_now() -> dict[str, float]:
                return {
                    "bench": time.process_time(),
                    "api": cpu_seconds(api.pid),
                    "mocks": cpu_seconds(processes["mocks"].pid),
                    "postgres": postgres_cpu_seconds(data_dir),
                }

            connector = aiohttp.TCPConnector(limit=args.clients)
            async with aiohttp.ClientSession(
                connector=connector, headers=headers, cookie_jar=aiohttp.DummyCookieJar()
            ) as session:

                async def status(rng: random.Random) -> bool:
                    async with session.get(rng.choice(status_urls)) as response:
                        await response.read()
                        return response.status == 200

                async def search(rng: random.Random) -> bool:
                    async with session.post(
                        search_url, data=rng.choice(search_bodies), headers=search_headers
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
                before = cpu_now()
                api_status = await load(status, clients=args.clients, seconds=args.seconds)
                between = cpu_now()
                exact_before = await search_exact_count(session, api_url)
                between = {**between, "bench": time.process_time()}
                api_search = await load(search, clients=args.clients, seconds=args.seconds)
                after = cpu_now()
                exact_after = await search_exact_count(session, api_url)
            api.send_signal(signal.SIGTERM)
            await asyncio.wait_for(api.wait(), 15)
            searches = api_search["requests"] + api_search["errors"]
            return {
                "api_status": api_status,
                "api_search": api_search,
                "search_exact_fallbacks": int(exact_after - exact_before),
                "search_exact_fallback_share": round(
                    (exact_after - exact_before) / max(1, searches), 4
                ),
                "cpu_s": {
                    "status": {k: round(between[k] - before[k], 2) for k in before},
                    "search": {k: round(after[k] - between[k], 2) for k in before},
                },
            }

        measured = await measure({})
        api_status, api_search = measured["api_status"], measured["api_search"]
        for spec in args.compare:
            overrides = dict(item.split("=", 1) for item in spec.split(","))
            result = await measure(overrides)
            # The same setting given twice is measured twice (a repeat shows the run's noise).
            key = spec if spec not in compared else f"{spec} #{len(compared) + 1}"
            compared[key] = {
                "status_p95_ms": result["api_status"]["p95_ms"],
                "status_rps": result["api_status"]["rps"],
                "search_p95_ms": result["api_search"]["p95_ms"],
                "search_rps": result["api_search"]["rps"],
                **result,
            }

        vectors = [Vector(embed_text(q, DIMS)) for q in queries]

        async def sql_status(rng: random.Random) -> bool:
            row = await pool.fetchrow(GET_DOCUMENT, uuid.UUID(rng.choice(doc_ids)), OWNER)
            return row is not None

        async def sql_search(rng: random.Random) -> bool:
            async with pool.acquire() as conn:
                await conn.execute(f"set hnsw.ef_search = {int(args.ef_search)}")
                rows = await conn.fetch(
                    SEARCH_APPROXIMATE, rng.choice(vectors), PIPELINE, OWNER, TOP_K
                )
            return len(rows) == TOP_K

        await load(sql_status, clients=args.clients, seconds=1.0)
        db_status = await load(sql_status, clients=args.clients, seconds=args.seconds)
        db_search = await load(sql_search, clients=args.clients, seconds=args.seconds)
        probes = random.Random(3).sample(
            list(zip(doc_ids, vectors, strict=True)), min(200, len(vectors))
        )
        quality = await search_quality(
            pool, probes, top_k=TOP_K,
            ef_searches=sorted({40, 64, 100, args.ef_search}),
        )  # fmt: skip
        chunk_count = await pool.fetchval("select count(*) from docpipe.chunks")
        await pool.close()
    finally:
        for proc in processes.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in processes.values():
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
        "search_exact_fallbacks": measured["search_exact_fallbacks"],
        "search_exact_fallback_share": measured["search_exact_fallback_share"],
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
        "search_quality": quality,
        "cpu_s": measured["cpu_s"],
        "compared": compared,
        "settings": {
            "corpus": args.corpus,
            "owners": args.owners,
            "clients": args.clients,
            "seconds": args.seconds,
            "chunks": chunk_count,
            "documents": args.chunks // args.per_document,
            "bench_owner_documents": len(doc_ids),
            "top_k": TOP_K,
            "embedding_dimensions": DIMS,
            "ef_search": args.ef_search,
            "api_pool_size": args.pool_size,
            "api_loop": args.api_loop,
            "api_jwt_cache_seconds": args.jwt_cache_seconds,
            "load_generator_loop": args.loop,
            "seed_s": round(seed_s, 1),
        },
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
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
    q = result["search_quality"]
    print(
        f"search: {s['corpus']} corpus, API at ef_search {s['ef_search']}; exact fallbacks "
        f"{result['search_exact_fallbacks']} ({result['search_exact_fallback_share']:.2%}); "
        f"plan through the HNSW index: custom {q['plan_uses_hnsw_custom']}, "
        f"generic {q['plan_uses_hnsw_generic']}"
    )
    for ef, figures in q["by_ef_search"].items():
        print(
            f"  ef_search {ef}: recall@{s['top_k']} {figures['recall_at_k']:.3f} against the "
            f"exact search, source chunk in the hits {figures['source_in_top_k']:.1%} "
            f"({q['queries']} queries)"
        )
    for run_name, used in result["cpu_s"].items():
        shares = ", ".join(f"{name} {seconds:.1f}" for name, seconds in used.items())
        print(f"CPU seconds during the {run_name} run ({s['seconds']:g} s x 2 cores): {shares}")
    for spec, c in result["compared"].items():
        print(
            f"  with {spec}: status {c['status_rps']:,.0f} req/s p95 {c['status_p95_ms']:.2f} ms; "
            f"search {c['search_rps']:,.0f} req/s p95 {c['search_p95_ms']:.2f} ms"
        )
    m = result["machine"]
    print(f"load average before {m['load_average_before']}, after {m['load_average_after']}")
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
    parser.add_argument(
        "--corpus", choices=("topics", "uniform"), default="topics",
        help="topics: paragraphs of documents with topics (bench/corpus.py); uniform: sentences "
        "of uniformly random words, every embedding about equally far from every other",
    )  # fmt: skip
    parser.add_argument(
        "--ef-search", type=int, default=ApiSettings.model_fields["search_ef_search"].default
    )
    parser.add_argument(
        "--pool-size", type=int, default=ApiSettings.model_fields["pool_size"].default
    )
    parser.add_argument("--api-loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument(
        "--jwt-cache-seconds", type=float,
        default=ApiSettings.model_fields["jwt_cache_seconds"].default,
        help="the API's verified-token cache (0: verify every request's token)",
    )  # fmt: skip
    parser.add_argument(
        "--loop", choices=("uvloop", "asyncio"), default="uvloop",
        help="the load generator's event loop",
    )  # fmt: skip
    parser.add_argument(
        "--owners", type=int, default=1,
        help="spread the documents over this many owners; the load is the first owner's (its "
        "searches then meet other owners' chunks among the HNSW candidates)",
    )  # fmt: skip
    parser.add_argument(
        "--compare", action="append", default=[], metavar="SETTING=VALUE[,...]",
        help="also measure the API with these ApiSettings changed, on the same data in the same "
        "run (e.g. event_loop=asyncio, jwt_cache_seconds=0, search_ef_search=40); repeatable",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    args = parser.parse_args()
    loop_factory = None
    if args.loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        result = runner.run(run(args))
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
