# ruff: noqa: E402  (imports follow the sys.path fix below, on purpose)
"""Search quality and speed on a corpus none of us wrote: the Debian documentation of this
machine (/usr/share/doc), with the questions of bench/search_questions.json.

In one run, on one embedded Postgres, with the mock services and `docpipe api` as processes:

1. ingest: a fixed, deterministic subset of /usr/share/doc (every accepted document of the
   questions, and every n-th other supported file in path order) is stored and processed by the
   real ingest pipeline (local parser, mock embeddings over HTTP), twice per round, into a
   database with the text index (the tsvector trigger and its GIN index) and into one without;
   documents per second of each, best of the rounds (the rounds alternate, so that the load of
   a shared machine falls on both alike);
2. quality: each question through the API in each mode (vector, keyword, hybrid), top 5:
   hit@5, MRR and recall@5 (docpipe_cli.evaluation, as `docpipe eval`);
3. latency: 50 concurrent clients asking the questions, per mode, in the order vector, keyword,
   hybrid, hybrid, keyword, vector (each mode's two runs pooled): p50 and p95.

    python bench/search.py            # table
    python bench/search.py --json     # one JSON object (hit_at_5, p95_ms per mode, ...)
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/queue.py would shadow the standard library's queue: take this folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import gzip
import json
import os
import platform
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
from tests.support.ports import free_port

from bench.api import cpu_seconds, postgres_cpu_seconds, spawn, summarize, wait_ready
from docpipe_api.auth import DEVELOPMENT_SECRET, mint_token
from docpipe_cli.evaluation import MODES, Question, score_mode
from docpipe_contracts.content_types import SUPPORTED_CONTENT_TYPES, content_type_for
from docpipe_ingest.parsers import LocalParser
from docpipe_ingest.pipeline import ChunkingConfig, IngestPipeline
from docpipe_providers.embeddings import OpenAIEmbedder
from docpipe_queue.consumer import Consumer, ConsumerConfig
from docpipe_queue.database import create_pool
from docpipe_queue.documents import add_document
from docpipe_queue.embedded import start_embedded_postgres
from docpipe_queue.migrator import DEFAULT_EMBEDDING_DIMENSIONS, migrate

ROOT = Path("/usr/share/doc")
QUESTIONS = Path(__file__).with_name("search_questions.json")
OWNER = "bench"
PIPELINE = "default"
TOP_K = 5
MAX_FILE_BYTES = 300_000  # the few huge manuals would dominate the ingest time


@dataclass(frozen=True)
class CorpusFile:
    path: Path
    name: str
    data: bytes


def load_questions() -> list[Question]:
    raw = json.loads(QUESTIONS.read_text())
    questions = []
    for entry in raw["questions"]:
        # The accepted documents must hold the evidence: the questions were checked against
        # this machine's files, and a machine with other files would measure something else.
        found = []
        for accepted in entry["accepted"]:
            text = read_text(ROOT / accepted)
            found.append(text is not None and entry["evidence"].lower() in text.lower())
        if not any(found):
            raise SystemExit(f"no accepted document of {entry['question']!r} holds its evidence")
        questions.append(Question(entry["question"], tuple(entry["accepted"])))
    return questions


def read_bytes(path: Path) -> bytes | None:
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if path.suffix == ".gz" else data
    except (OSError, EOFError, gzip.BadGzipFile):
        return None


def read_text(path: Path) -> str | None:
    data = read_bytes(path)
    return data.decode("utf-8", "replace") if data is not None else None


def select_corpus(questions: list[Question], documents: int) -> list[CorpusFile]:
    """The accepted documents, then every n-th other supported file in path order."""
    accepted = {ROOT / a for q in questions for a in q.accepted}
    candidates = []
    for path in sorted(ROOT.rglob("*")):
        name = path.name.removesuffix(".gz")
        if path.is_file() and content_type_for(name) in SUPPORTED_CONTENT_TYPES:
            candidates.append(path)
    others = [p for p in candidates if p not in accepted]
    wanted = max(0, documents - len(accepted))
    stride = max(1, len(others) // wanted) if wanted else len(others) + 1
    chosen = sorted(accepted) + others[::stride][:wanted]
    files = []
    for path in chosen:
        data = read_bytes(path)
        if data and (len(data) <= MAX_FILE_BYTES or path in accepted):
            files.append(CorpusFile(path, path.name.removesuffix(".gz"), data))
    return files


async def ingest(
    url: str, files: list[CorpusFile], mocks_url: str, *, text_index: bool
) -> dict[str, Any]:
    """Store and process `files` in a new database; documents per second of the processing."""
    admin = await asyncpg.connect(url)
    name = f"bench_{'with' if text_index else 'without'}_{uuid.uuid4().hex[:6]}"
    try:
        await admin.execute(f"create database {name}")
    finally:
        await admin.close()
    db_url = url.replace("/postgres?", f"/{name}?")
    conn = await asyncpg.connect(db_url)
    try:
        await migrate(conn)
        if not text_index:
            await conn.execute(
                "drop trigger chunks_search_text on docpipe.chunks;"
                " drop index docpipe.chunks_search_text"
            )
    finally:
        await conn.close()
    pool = await create_pool(db_url, min_size=2, max_size=12)
    try:
        async with pool.acquire() as adder:
            for file in files:
                await add_document(
                    adder,
                    pipeline=PIPELINE,
                    owner=OWNER,
                    filename=file.name,
                    content_type=content_type_for(file.name),
                    data=file.data,
                    source_url=f"file://{file.path}",
                )
        async with aiohttp.ClientSession() as session:
            embedder = OpenAIEmbedder(
                session,
                api_key="bench",
                base_url=f"{mocks_url}/v1",
                dimensions=DEFAULT_EMBEDDING_DIMENSIONS,
                request_timeout=30.0,
            )
            handler = IngestPipeline(
                pool,
                LocalParser(),
                embedder,
                chunking=ChunkingConfig(),
                dimensions=DEFAULT_EMBEDDING_DIMENSIONS,
                revision="bench",
            )
            consumer = Consumer(
                pool, handler, ConsumerConfig(pipeline=PIPELINE, concurrency=8, batch_size=8)
            )
            started = time.perf_counter()
            running = asyncio.create_task(consumer.run())
            try:
                while await pool.fetchval(
                    "select count(*) from docpipe.documents"
                    " where status in ('pending', 'processing')"
                ):
                    await asyncio.sleep(0.05)
                seconds = time.perf_counter() - started
            finally:
                await consumer.drain(10.0)
                await running
        row = await pool.fetchrow(
            "select count(*) filter (where status = 'processed') as processed,"
            " count(*) filter (where status = 'failed') as failed,"
            " count(*) as documents, coalesce(sum(chunk_count), 0) as chunks"
            " from docpipe.documents"
        )
        assert row is not None
        await pool.execute("analyze docpipe.chunks")
    finally:
        await pool.close()
    return {
        "database_url": db_url,
        "files": len(files),
        "documents": row["documents"],  # files with the same bytes are one document
        "processed": row["processed"],
        "failed": row["failed"],
        "chunks": row["chunks"],
        "seconds": round(seconds, 2),
        "docs_per_s": round(row["documents"] / seconds, 2),
    }


async def search(
    session: aiohttp.ClientSession, url: str, question: str, mode: str
) -> list[dict[str, Any]]:
    body = {"query": question, "top_k": TOP_K, "mode": mode}
    async with session.post(url, json=body) as response:
        if response.status != 200:
            raise SystemExit(f"search failed: {response.status} {await response.text()}")
        hits: list[dict[str, Any]] = (await response.json())["hits"]
        return hits


async def latency(
    session: aiohttp.ClientSession, url: str, questions: list[Question], mode: str, *,
    clients: int, seconds: float,
) -> tuple[list[float], int]:  # fmt: skip
    latencies: list[float] = []
    errors = 0
    bodies = [
        json.dumps({"query": q.question, "top_k": TOP_K, "mode": mode}).encode() for q in questions
    ]
    deadline = time.perf_counter() + seconds

    async def client(index: int) -> None:
        nonlocal errors
        turn = index
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            async with session.post(
                url, data=bodies[turn % len(bodies)], headers={"Content-Type": "application/json"}
            ) as response:
                await response.read()
                if response.status == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1
            turn += clients

    await asyncio.gather(*(client(i) for i in range(clients)))
    return latencies, errors


CPU_PARTS = ("api", "postgres", "mocks", "clients")


def _cpu_parts(
    processes: dict[str, asyncio.subprocess.Process], data_dir: Path
) -> dict[str, float]:
    return {
        "api": cpu_seconds(processes["api"].pid),
        "postgres": postgres_cpu_seconds(data_dir),
        "mocks": cpu_seconds(processes["mocks"].pid),
        "clients": cpu_seconds(os.getpid()),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    questions = load_questions()
    files = select_corpus(questions, args.documents)
    data_dir = Path(tempfile.mkdtemp(prefix="docpipe-bench-search-"))
    os.chmod(data_dir, 0o755)  # as root, pgserver runs postgres as its own user
    processes: dict[str, asyncio.subprocess.Process] = {}
    load_before = os.getloadavg()
    try:
        url = start_embedded_postgres(data_dir)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(sys.path),
            "DOCPIPE_LOG_LEVEL": "WARNING",
        }
        mocks_port = free_port()
        mocks_url = f"http://127.0.0.1:{mocks_port}"
        processes["mocks"] = await spawn(
            ["mocks", "--port", str(mocks_port)], env, data_dir / "mocks.log"
        )
        await wait_ready(f"{mocks_url}/_admin/faults", processes["mocks"], data_dir / "mocks.log")

        runs: dict[str, list[dict[str, Any]]] = {"with": [], "without": []}
        for round_ in range(args.rounds):
            order = ["with", "without"] if round_ % 2 == 0 else ["without", "with"]
            for kind in order:
                result = await ingest(url, files, mocks_url, text_index=kind == "with")
                runs[kind].append(result)
                print(f"ingest {kind} text index: {result}", file=sys.stderr)
        best = {kind: max(r["docs_per_s"] for r in results) for kind, results in runs.items()}
        database_url = runs["with"][-1]["database_url"]

        api_port = free_port()
        api_url = f"http://127.0.0.1:{api_port}"
        api_env = {
            **env,
            "DATABASE_URL": database_url,
            "OPENAI_BASE_URL": f"{mocks_url}/v1",
            "OPENAI_API_KEY": "bench",
            "DOCPIPE_API_DEV_MODE": "true",
            "DOCPIPE_API_HOST": "127.0.0.1",
            "DOCPIPE_API_PORT": str(api_port),
            "DOCPIPE_API_RATE_LIMIT_PER_SECOND": "1000000",
            "DOCPIPE_API_RATE_LIMIT_BURST": "1000000",
        }
        api_env.pop("DOCPIPE_API_JWT_SECRET", None)
        processes["api"] = await spawn(["api"], api_env, data_dir / "api.log")
        await wait_ready(f"{api_url}/readyz", processes["api"], data_dir / "api.log")
        token = mint_token(DEVELOPMENT_SECRET, subject=OWNER, ttl_s=3600)
        search_url = f"{api_url}/v1/pipelines/{PIPELINE}/search"
        modes: dict[str, dict[str, Any]] = {}
        connector = aiohttp.TCPConnector(limit=args.clients)
        async with aiohttp.ClientSession(
            connector=connector,
            headers={"Authorization": f"Bearer {token}"},
            cookie_jar=aiohttp.DummyCookieJar(),
        ) as session:
            misses: dict[str, list[str]] = {}
            for mode in MODES:
                ranked = []
                for question in questions:
                    hits = await search(session, search_url, question.question, mode)
                    ranked.append([hit["source_url"] or hit["filename"] for hit in hits])
                scores = score_mode(mode, ranked, questions, TOP_K)
                modes[mode] = {
                    "hit_at_5": round(scores.hit_at_k, 3),
                    "mrr": round(scores.mrr, 3),
                    "recall_at_5": round(scores.recall_at_k, 3),
                }
                misses[mode] = [
                    q.question
                    for q, keys in zip(questions, ranked, strict=True)
                    if score_mode(mode, [keys], [q], TOP_K).hit_at_k == 0
                ]
            timings: dict[str, list[float]] = {mode: [] for mode in MODES}
            errors = dict.fromkeys(MODES, 0)
            # CPU seconds per mode: the API, Postgres (its backends), the mocks (the query
            # embeddings) and this process (the 50 clients).
            cpu: dict[str, dict[str, float]] = {
                mode: dict.fromkeys(CPU_PARTS, 0.0) for mode in MODES
            }
            for mode in [*MODES, *reversed(MODES)]:
                before = _cpu_parts(processes, data_dir)
                measured, failed = await latency(
                    session, search_url, questions, mode, clients=args.clients,
                    seconds=args.seconds,
                )  # fmt: skip
                after = _cpu_parts(processes, data_dir)
                for part in CPU_PARTS:
                    cpu[mode][part] += after[part] - before[part]
                timings[mode] += measured
                errors[mode] += failed
            for mode in MODES:
                summary = summarize(timings[mode], errors[mode], 2 * args.seconds)
                modes[mode].update(
                    p50_ms=summary["p50_ms"],
                    p95_ms=summary["p95_ms"],
                    rps=summary["rps"],
                    errors=summary["errors"],
                    api_cpu_ms_per_search=round(
                        1000 * cpu[mode]["api"] / max(1, len(timings[mode])), 3
                    ),
                    cpu_ms_per_search={
                        part: round(1000 * seconds / max(1, len(timings[mode])), 3)
                        for part, seconds in cpu[mode].items()
                    },
                )
    finally:
        for proc in processes.values():
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
        if not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    vector, keyword, hybrid = modes["vector"], modes["keyword"], modes["hybrid"]
    return {
        "modes": modes,
        "ingest_docs_per_s": {
            "with_text_index": best["with"],
            "without_text_index": best["without"],
        },
        "ingest_runs": {
            kind: [{k: v for k, v in r.items() if k != "database_url"} for r in results]
            for kind, results in runs.items()
        },
        "ratios": {
            "hybrid_vs_vector_hit_at_5": round(
                hybrid["hit_at_5"] / max(vector["hit_at_5"], 1e-9), 2
            ),
            "hybrid_vs_keyword_hit_at_5": round(
                hybrid["hit_at_5"] / max(keyword["hit_at_5"], 1e-9), 2
            ),
            "hybrid_vs_vector_p95": round(hybrid["p95_ms"] / vector["p95_ms"], 2),
            "ingest_with_vs_without_text_index": round(best["with"] / best["without"], 2),
        },
        "missed_by_hybrid": misses["hybrid"],
        "corpus": {
            "root": str(ROOT),
            "documents": len(files),
            "bytes": sum(len(f.data) for f in files),
            "chunks": runs["with"][-1]["chunks"],
            "questions": len(questions),
        },
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {"clients": args.clients, "seconds_per_run": args.seconds, "top_k": TOP_K},
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"corpus: {result['corpus']}")
    header = ("mode", "hit@5", "MRR", "recall@5", "p50 ms", "p95 ms", "rps")
    print(f"{header[0]:<8}" + "".join(f" {h:>9}" for h in header[1:]))
    for mode, m in result["modes"].items():
        print(
            f"{mode:<8} {m['hit_at_5']:>9.3f} {m['mrr']:>9.3f} {m['recall_at_5']:>9.3f}"
            f" {m['p50_ms']:>9.1f} {m['p95_ms']:>9.1f} {m['rps']:>9.1f}"
        )
    print(f"ingest docs/s: {result['ingest_docs_per_s']}")
    print(f"ratios: {result['ratios']}")
    print(f"machine: {result['machine']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--documents", type=int, default=300, help="corpus size (default 300)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0, help="per latency run")
    parser.add_argument("--rounds", type=int, default=2, help="ingest rounds (alternating)")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
