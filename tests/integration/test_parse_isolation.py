"""Parsing in isolation (docpipe_ingest.isolation): hostile documents end in a permanent error
that names their real cause, or in text, within the limits of their child process, while a
healthy document beside them is parsed at once; a cancelled parse and a dead child cost only
their own document."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import time
from collections.abc import AsyncIterator

import pytest

from docpipe_contracts.errors import PermanentError
from docpipe_ingest.extraction import DocumentError
from docpipe_ingest.isolation import ParseLimitError, ParseLimits, ParsePool, ParserCrashError
from tests.samples import html_bytes
from tests.support.hostile import corpus, nested_html, pdf_pages

MEMORY_MB = 320
HEALTHY = html_bytes("Tides", ["High water at noon.", "Low water at six."])


@pytest.fixture
async def parse_pool() -> AsyncIterator[ParsePool]:
    pool = ParsePool(3, ParseLimits(cpu_s=10, wall_s=60, memory_mb=MEMORY_MB))
    await pool.start()
    try:
        yield pool
    finally:
        await pool.close()


def peak_kib(pid: int) -> int:
    """The process's peak resident memory (VmHWM), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def child_pids(pool: ParsePool) -> list[int]:
    return [c.process.pid for c in [*pool._busy, *pool._idle]]


async def test_hostile_documents_end_in_a_cause_or_text_within_limits_beside_a_healthy_one(
    parse_pool: ParsePool,
) -> None:
    documents = corpus(bomb_mb=360)
    peaks: dict[int, int] = {}
    worker_peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    async def sample() -> None:
        while True:
            for pid in child_pids(parse_pool):
                peaks[pid] = max(peaks.get(pid, 0), peak_kib(pid))
            await asyncio.sleep(0.02)

    async def outcome(filename: str, content_type: str, data: bytes) -> str | BaseException:
        try:
            return await parse_pool.parse(data, filename=filename, content_type=content_type)
        except Exception as exc:
            return exc

    sampler = asyncio.create_task(sample())
    try:
        hostile = [
            asyncio.create_task(outcome(d.filename, d.content_type, d.data)) for d in documents
        ]
        await asyncio.sleep(0.2)  # the hostile documents hold the children
        started = time.monotonic()
        healthy = await outcome("tides.html", "text/html", HEALTHY)
        healthy_s = time.monotonic() - started
        results = dict(
            zip([d.filename for d in documents], await asyncio.gather(*hostile), strict=True)
        )
    finally:
        sampler.cancel()
    assert isinstance(healthy, str)
    assert "High water" in healthy
    assert healthy_s < 15, f"the healthy document waited {healthy_s:.1f} s"
    for name, result in results.items():
        if isinstance(result, BaseException):
            assert isinstance(result, PermanentError), f"{name}: {result!r}"
            assert name in str(result), f"{name}: the error names the document: {result}"
    errors = {n: str(r) for n, r in results.items() if isinstance(r, BaseException)}
    assert "nested too deeply" in errors["nested.html"]
    assert isinstance(results["bomb.docx"], ParseLimitError)
    assert "memory limit of 320 MB" in errors["bomb.docx"]
    assert "bomb.pdf" in errors  # pypdf's own decompression limit, or ours
    assert "NUL bytes" in errors["nul.txt"]
    assert "not a valid PDF" in errors["really-html.pdf"]
    assert "not a valid Word" in errors["really-pdf.docx"]
    assert isinstance(results["one-line.txt"], str)
    assert isinstance(results["thousands.pdf"], str)
    assert results["thousands.pdf"].count("Tide tables") == 2000
    assert peaks, "the children's memory was sampled"
    assert max(peaks.values()) <= MEMORY_MB * 1024, peaks
    worker_growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - worker_peak_before
    assert worker_growth_kib < 200 * 1024, "the worker's own memory did not parse anything"


async def test_a_parse_over_the_cpu_time_limit_fails_naming_it() -> None:
    pool = ParsePool(1, ParseLimits(cpu_s=1, wall_s=60, memory_mb=MEMORY_MB))
    try:
        with pytest.raises(ParseLimitError, match="CPU-time limit of 1 s") as caught:
            await pool.parse(pdf_pages(6000), filename="long.pdf", content_type="application/pdf")
        assert caught.value.limit == "cpu_time"
        # The slot works again, with a fresh child.
        assert "Tides" in await pool.parse(HEALTHY, filename="t.html", content_type="text/html")
    finally:
        await pool.close()


async def test_a_parse_over_the_wall_time_limit_is_killed_and_fails_naming_it() -> None:
    pool = ParsePool(1, ParseLimits(cpu_s=600, wall_s=0.5, memory_mb=MEMORY_MB))
    try:
        await pool.start()
        (pid,) = child_pids(pool)
        with pytest.raises(ParseLimitError, match=r"wall-time limit of 0\.5 s"):
            await pool.parse(pdf_pages(6000), filename="long.pdf", content_type="application/pdf")
        await asyncio.sleep(0.2)
        assert peak_kib(pid) == 0, "the child was killed"
    finally:
        await pool.close()


async def test_a_cancelled_parse_has_its_child_killed_at_once(parse_pool: ParsePool) -> None:
    task = asyncio.create_task(
        parse_pool.parse(pdf_pages(6000), filename="long.pdf", content_type="application/pdf")
    )
    await asyncio.sleep(0.5)
    (pid,) = [c.process.pid for c in parse_pool._busy]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.2)
    assert peak_kib(pid) == 0, "the abandoned parse no longer burns a core"


async def test_a_child_that_dies_takes_only_its_document(parse_pool: ParsePool) -> None:
    victim = asyncio.create_task(
        parse_pool.parse(nested_html(100_000), filename="deep.html", content_type="text/html")
    )
    await asyncio.sleep(0.3)
    (pid,) = [c.process.pid for c in parse_pool._busy]
    os.kill(pid, signal.SIGSEGV)
    with pytest.raises(ParserCrashError, match="SIGSEGV") as caught:
        await victim
    assert isinstance(caught.value, DocumentError)
    texts = await asyncio.gather(
        *(
            parse_pool.parse(HEALTHY, filename=f"{i}.html", content_type="text/html")
            for i in range(6)
        )
    )
    assert all("High water" in t for t in texts)
