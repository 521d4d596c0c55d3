# ruff: noqa: E402  (imports follow the sys.path fix below, on purpose)
"""Tracing overhead: ingest throughput with tracing on (exporting to an OTLP/HTTP receiver on this
machine) against tracing off, in one run, on the same database, mocks and workers' settings.

Rounds alternate off and on (off, on, off, on...) so that a machine that gets busier or quieter
during the run moves both sides; the best round of each is compared. The receiver decodes every
export request as a collector would (tests/support/otlp.py), in this process, on the same cores.
Also: what one span costs in-process with tracing off (the shared no-op) and on.

    python bench/tracing.py              # a table; about 2 minutes
    python bench/tracing.py --json       # one JSON object (on_vs_off_ratio, ...)
"""

from __future__ import annotations

import sys
from pathlib import Path

# As bench/pipeline.py: bench/ off the import path (bench/queue.py shadows the standard library's
# queue), the repository root on it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import json
import os
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
from tests.support.otlp import OtlpReceiver, otlp_receiver

from bench.pipeline import Run, log, run_case
from docpipe_contracts import tracing
from docpipe_queue.database import create_pool
from docpipe_queue.embedded import start_embedded_postgres
from docpipe_queue.migrator import migrate


def span_cost_ns(spans: int) -> float:
    """Nanoseconds per `with tracing.span(...)` with attributes, in whatever state tracing is."""
    started = time.perf_counter_ns()
    for number in range(spans):
        with tracing.span("bench", attributes={"docpipe.stage": "embed", "n": number}):
            pass
    return (time.perf_counter_ns() - started) / spans


async def measure_span_costs(receiver: OtlpReceiver, spans: int) -> dict[str, float]:
    # In a thread: the receiver answers the exporter on this event loop meanwhile.
    off = await asyncio.to_thread(span_cost_ns, spans)
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.url
    try:
        handle = tracing.configure("docpipe-bench")
        try:
            on = await asyncio.to_thread(span_cost_ns, spans)
        finally:
            # The exporter thread posts to the receiver on this loop: flush off the loop.
            await asyncio.to_thread(handle.shutdown)
    finally:
        del os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"]
    return {"span_ns_off": round(off, 1), "span_ns_on": round(on, 1)}


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Measured:
    run: Run
    # CPU of the workers and the mocks (children, counted once they exit), and of this process
    # (the receiver decoding the exports, and the polling).
    children_cpu_s: float
    own_cpu_s: float
    spans: int


async def measure(
    args: argparse.Namespace,
    receiver: OtlpReceiver,
    *,
    mode: str,
    documents: int,
    name: str,
    url: str,
    pool: asyncpg.Pool,
    workdir: Path,
) -> Measured:
    extra = {"DOCPIPE_PARSER": args.parser}
    if mode == "on":
        extra["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.url
    spans_before = len(receiver.spans)
    children, own = cpu_seconds(resource.RUSAGE_CHILDREN), cpu_seconds(resource.RUSAGE_SELF)
    run = await run_case(
        name=name, url=url, pool=pool, workdir=workdir, documents=documents,
        workers=args.workers, concurrency=args.concurrency, parser=args.parser, latency_ms=0,
        extra_env=extra,
    )  # fmt: skip
    # run_case waited for every process it started: their CPU is counted now, and the workers
    # flushed their last spans as they stopped.
    measured = Measured(
        run,
        cpu_seconds(resource.RUSAGE_CHILDREN) - children,
        cpu_seconds(resource.RUSAGE_SELF) - own,
        len(receiver.spans) - spans_before,
    )
    if mode == "off" and measured.spans:
        raise RuntimeError("tracing off, but spans reached the receiver")
    if mode == "on" and documents and not measured.spans:
        raise RuntimeError("tracing on, but no span reached the receiver")
    return measured


async def main(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="docpipe-bench-tracing-"))
    log(f"bench/tracing: data and logs in {workdir}")
    url = start_embedded_postgres(workdir / "pg")
    conn = await asyncpg.connect(url)
    await migrate(conn)
    await conn.close()
    pool = await create_pool(url, min_size=1, max_size=4)
    runs: dict[str, list[Measured]] = {"off": [], "on": []}
    idle: dict[str, Measured] = {}
    try:
        async with otlp_receiver() as receiver:
            costs = await measure_span_costs(receiver, args.spans)
            receiver.spans.clear()

            async def measured(mode: str, documents: int, name: str) -> Measured:
                return await measure(
                    args, receiver, mode=mode, documents=documents, name=name, url=url,
                    pool=pool, workdir=workdir,
                )  # fmt: skip

            for mode in ("off", "on"):
                # Start-up and shutdown with nothing to do: the fixed CPU cost of a run.
                log(f"tracing {mode}: start and stop, no documents")
                idle[mode] = await measured(mode, 0, f"idle-{mode}")
            for round_number in range(args.rounds):
                for mode in ("off", "on"):
                    log(f"round {round_number + 1}, tracing {mode}: {args.documents} documents")
                    found = await measured(mode, args.documents, f"tracing-{mode}-{round_number}")
                    runs[mode].append(found)
                    log(
                        f"  {found.run.docs_per_s:.1f} documents/s, workers and mocks"
                        f" {found.children_cpu_s:.1f} s CPU, {found.spans} spans"
                    )
            refused = receiver.refused
    finally:
        await pool.close()

    documents: int = args.documents

    def cpu_ms(mode: str, found: Measured) -> float:
        return (found.children_cpu_s - idle[mode].children_cpu_s) / documents * 1000

    best = {mode: max(m.run.docs_per_s for m in found) for mode, found in runs.items()}
    cpu = {mode: statistics.median(cpu_ms(mode, m) for m in found) for mode, found in runs.items()}
    own = {mode: statistics.median(m.own_cpu_s for m in found) for mode, found in runs.items()}
    return {
        "on_vs_off_ratio": round(best["on"] / best["off"], 3),
        "docs_per_s_off": round(best["off"], 1),
        "docs_per_s_on": round(best["on"], 1),
        "rounds_docs_per_s": {
            mode: [round(m.run.docs_per_s, 1) for m in found] for mode, found in runs.items()
        },
        "cpu_ms_per_document_off": round(cpu["off"], 2),
        "cpu_ms_per_document_on": round(cpu["on"], 2),
        "cpu_on_vs_off_ratio": round(cpu["on"] / cpu["off"], 3),
        "rounds_cpu_ms_per_document": {
            mode: [round(cpu_ms(mode, m), 2) for m in found] for mode, found in runs.items()
        },
        "receiver_cpu_ms_per_document": round((own["on"] - own["off"]) / args.documents * 1000, 3),
        "startup_cpu_s": {mode: round(m.children_cpu_s, 2) for mode, m in idle.items()},
        "spans_per_document": round(min(m.spans for m in runs["on"]) / args.documents, 2),
        "exports_refused": len(refused),
        **costs,
        "documents": args.documents,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "parser": args.parser,
        "cpus": os.cpu_count(),
    }


def print_table(result: dict[str, Any]) -> None:
    rounds, cpu = result["rounds_docs_per_s"], result["rounds_cpu_ms_per_document"]
    print("                 documents/s (best)     CPU ms per document (median; workers and mocks)")
    for mode in ("off", "on"):
        print(
            f"tracing {mode:<4} {result[f'docs_per_s_{mode}']:>10.1f}  {rounds[mode]!s:<22}"
            f" {result[f'cpu_ms_per_document_{mode}']:>8.2f}  {cpu[mode]}"
        )
    print(
        f"on / off      {result['on_vs_off_ratio']:>10.3f}  (throughput)"
        f"{'':<12} {result['cpu_on_vs_off_ratio']:>8.3f}  (CPU per document)"
    )
    print(
        f"spans exported per document: {result['spans_per_document']};"
        f" receiver decoding them: {result['receiver_cpu_ms_per_document']} ms CPU per document"
    )
    print(
        f"one span in-process: {result['span_ns_off']:.0f} ns off (no-op), "
        f"{result['span_ns_on']:.0f} ns on (recorded and queued for export)"
    )
    print(
        f"{result['documents']} documents, {result['workers']} workers x {result['concurrency']},"
        f" parser {result['parser']}, zero-latency mocks, {result['cpus']} CPUs;"
        f" start-up and shutdown CPU (subtracted): {result['startup_cpu_s']}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs; best of each kept")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--parser", choices=("local", "llamaparse"), default="llamaparse",
        help="llamaparse: three more provider calls (spans) per document, through the mocks",
    )  # fmt: skip
    parser.add_argument(
        "--spans", type=int, default=500, help="in-process span cost (below one export batch)"
    )
    arguments = parser.parse_args()
    outcome = asyncio.run(main(arguments))
    if arguments.json:
        print(json.dumps(outcome))
    else:
        print_table(outcome)
