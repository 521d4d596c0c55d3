"""The golden set: sample documents with questions that the workers of each revision process in
shadow at each analysis interval, so that a canary's output is compared with the stable
revision's on the same documents (issue 18, `spec.rollout.goldenSet`).

The set is a directory (a mounted ConfigMap, or a path in the image): every regular file is a
document (its content type from its name), except `questions.json`, a list of
`{"question": "...", "document": "<file name>"}`. The documents go through the worker's own
parser, chunker and embedder, never into `docpipe.documents`: the results go to
`docpipe.golden_outputs`, one run per revision per interval (`docpipe.golden_runs` elects the
worker). A canary worker (DOCPIPE_STABLE_REVISION set) then compares its revision's latest run
with the stable's and exports the comparison as gauges, which the operator's verdict reads.

`compare` is pure; `run_golden_set` and `golden_loop` are the shell.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from docpipe_contracts.content_types import content_type_for
from docpipe_ingest import metrics
from docpipe_ingest.chunking import chunk_markdown
from docpipe_ingest.pipeline import IngestPipeline

log = logging.getLogger(__name__)

QUESTIONS_FILE = "questions.json"
DEFAULT_K = 5
_WORD = re.compile(r"\w+", re.UNICODE)


class GoldenSetError(ValueError):
    """A golden set directory that cannot be read; the message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class GoldenDocument:
    name: str
    data: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class GoldenQuestion:
    question: str
    document: str  # the file name of the document that answers it


@dataclass(frozen=True, slots=True)
class GoldenSet:
    documents: tuple[GoldenDocument, ...]
    questions: tuple[GoldenQuestion, ...]


def load_golden_set(directory: Path) -> GoldenSet:
    """The documents and questions of a golden set directory (a mounted ConfigMap's hidden
    `..data` entries are skipped)."""
    if not directory.is_dir():
        raise GoldenSetError(f"golden set {directory}: not a directory")
    documents = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or path.name == QUESTIONS_FILE or not path.is_file():
            continue
        documents.append(GoldenDocument(path.name, path.read_bytes(), content_type_for(path.name)))
    if not documents:
        raise GoldenSetError(f"golden set {directory}: no document")
    names = {d.name for d in documents}
    questions: list[GoldenQuestion] = []
    file = directory / QUESTIONS_FILE
    if file.is_file():
        try:
            raw = json.loads(file.read_text(encoding="utf-8"))
            questions = [GoldenQuestion(str(q["question"]), str(q["document"])) for q in raw]
        except (ValueError, KeyError, TypeError) as exc:
            raise GoldenSetError(
                f"golden set {file}: expected a JSON list of"
                f' {{"question": ..., "document": ...}} ({exc})'
            ) from None
        unknown = sorted({q.document for q in questions} - names)
        if unknown:
            raise GoldenSetError(f"golden set {file}: questions name unknown documents {unknown}")
    return GoldenSet(tuple(documents), tuple(questions))


# ---- One revision's run, and the comparison of two (pure) ----


@dataclass(frozen=True, slots=True)
class GoldenChunk:
    document: str
    ordinal: int
    text: str
    embedding: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class GoldenRun:
    """What one revision made of the golden set."""

    chunks: tuple[GoldenChunk, ...]
    # (question number, the document it is about, the question's embedding)
    questions: tuple[tuple[int, str, tuple[float, ...]], ...] = ()


@dataclass(frozen=True, slots=True)
class GoldenComparison:
    text_overlap: float
    chunk_ratio: float
    cosine: float
    recall: float | None  # None: the set has no question
    stable_recall: float | None


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) != len(b):
        return 0.0
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    if na == 0 or nb == 0 or not math.isfinite(dot):
        return 0.0
    return dot / (na * nb)


def _words(run: GoldenRun) -> Counter[str]:
    # From the chunks: their overlaps count words twice, alike in both runs of one chunker.
    return Counter(w.lower() for c in run.chunks for w in _WORD.findall(c.text))


def recall_at_k(run: GoldenRun, k: int) -> float | None:
    """Share of the questions with a chunk of their document among their k nearest chunks."""
    if not run.questions:
        return None
    hits = 0
    for _, document, vector in run.questions:
        ranked = sorted(run.chunks, key=lambda c: _cosine(vector, c.embedding), reverse=True)
        if any(c.document == document for c in ranked[:k]):
            hits += 1
    return hits / len(run.questions)


def compare(canary: GoldenRun, stable: GoldenRun, *, k: int = DEFAULT_K) -> GoldenComparison:
    """The canary's golden run against the stable's: word overlap, chunk ratio, mean cosine of
    the same chunks (same document and ordinal), and each side's recall@k."""
    stable_words, canary_words = _words(stable), _words(canary)
    total = sum(stable_words.values())
    kept = sum((stable_words & canary_words).values())
    overlap = kept / total if total else (1.0 if not canary_words else 0.0)
    ratio = len(canary.chunks) / len(stable.chunks) if stable.chunks else 0.0
    theirs = {(c.document, c.ordinal): c.embedding for c in stable.chunks}
    # A chunk the canary has and the stable lacks (or the reverse) counts as 0.
    keys = {(c.document, c.ordinal) for c in canary.chunks} | set(theirs)
    ours = {(c.document, c.ordinal): c.embedding for c in canary.chunks}
    similarities = [
        _cosine(ours[key], theirs[key]) if key in ours and key in theirs else 0.0 for key in keys
    ]
    cosine = sum(similarities) / len(similarities) if similarities else 0.0
    return GoldenComparison(
        text_overlap=overlap,
        chunk_ratio=ratio,
        cosine=cosine,
        recall=recall_at_k(canary, k),
        stable_recall=recall_at_k(stable, k),
    )


# ---- The shell: run the set, store it, read it back, export the comparison ----


async def process_golden_set(pipeline: IngestPipeline, golden: GoldenSet) -> GoldenRun:
    """Parse, chunk and embed the golden documents and questions as `pipeline` would (nothing
    stored)."""
    chunks: list[GoldenChunk] = []
    for doc in golden.documents:
        text = await pipeline.parser.parse(
            doc.data, filename=doc.name, content_type=doc.content_type
        )
        pieces = chunk_markdown(
            text,
            max_chars=pipeline.chunking.max_chars,
            overlap_chars=pipeline.chunking.overlap_chars,
        )
        if not pieces:
            continue
        vectors = await pipeline.embedder.embed([p.text for p in pieces])
        chunks.extend(
            GoldenChunk(doc.name, i, p.text, tuple(v))
            for i, (p, v) in enumerate(zip(pieces, vectors, strict=True))
        )
    questions: tuple[tuple[int, str, tuple[float, ...]], ...] = ()
    if golden.questions:
        vectors = await pipeline.embedder.embed([q.question for q in golden.questions])
        questions = tuple(
            (i, q.document, tuple(v))
            for i, (q, v) in enumerate(zip(golden.questions, vectors, strict=True))
        )
    return GoldenRun(tuple(chunks), questions)


# A revision's first run always; then once per interval (a little less: the workers' timers
# drift), and for a stable revision ($4 false) only while another revision (a canary) runs the
# set too: no golden work between rollouts.
TAKE_RUN = """
insert into docpipe.golden_runs as r (pipeline, revision, started_at)
values ($1, $2, now())
on conflict (pipeline, revision) do update set started_at = now(), finished_at = null
    where r.started_at < now() - make_interval(secs => $3 * 0.9)
      and ($4 or exists (
          select 1 from docpipe.golden_runs o
          where o.pipeline = $1 and o.revision <> $2
            and o.started_at > now() - make_interval(secs => $3 * 2)))
returning true
"""


async def take_run(
    pool: asyncpg.Pool, pipeline: str, revision: str, interval_s: float, *, canary: bool
) -> bool:
    """Whether this worker runs its revision's golden set now: one worker per revision per
    interval."""
    return bool(await pool.fetchval(TAKE_RUN, pipeline, revision, interval_s, canary))


async def store_run(pool: asyncpg.Pool, pipeline: str, revision: str, run: GoldenRun) -> None:
    """Replace the revision's stored golden output with `run`."""
    rows = [
        (pipeline, revision, "chunk", c.document, c.ordinal, c.text, list(c.embedding))
        for c in run.chunks
    ] + [
        (pipeline, revision, "question", document, i, "", list(vector))
        for i, document, vector in run.questions
    ]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "delete from docpipe.golden_outputs where pipeline = $1 and revision = $2",
            pipeline,
            revision,
        )
        await conn.executemany(
            "insert into docpipe.golden_outputs"
            " (pipeline, revision, kind, document, ordinal, text, embedding, run_at)"
            " values ($1, $2, $3, $4, $5, $6, $7, now())",
            rows,
        )
        await conn.execute(
            "update docpipe.golden_runs set finished_at = now()"
            " where pipeline = $1 and revision = $2",
            pipeline,
            revision,
        )


async def read_run(pool: asyncpg.Pool, pipeline: str, revision: str) -> GoldenRun | None:
    """A revision's latest stored golden run (written whole, in one transaction); None before
    its first."""
    rows = await pool.fetch(
        "select kind, document, ordinal, text, embedding from docpipe.golden_outputs"
        " where pipeline = $1 and revision = $2 order by kind, document, ordinal",
        pipeline,
        revision,
    )
    if not rows:
        return None
    chunks = tuple(
        GoldenChunk(r["document"], r["ordinal"], r["text"], tuple(r["embedding"]))
        for r in rows
        if r["kind"] == "chunk"
    )
    questions = tuple(
        (r["ordinal"], r["document"], tuple(r["embedding"]))
        for r in rows
        if r["kind"] == "question"
    )
    return GoldenRun(chunks, questions)


def export(pipeline: str, revision: str, comparison: GoldenComparison) -> None:
    """The comparison into the golden gauges of the canary's revision."""
    labels = (pipeline, revision)
    metrics.GOLDEN_TEXT_OVERLAP.labels(*labels).set(comparison.text_overlap)
    metrics.GOLDEN_CHUNK_RATIO.labels(*labels).set(comparison.chunk_ratio)
    metrics.GOLDEN_COSINE.labels(*labels).set(comparison.cosine)
    if comparison.recall is not None and comparison.stable_recall is not None:
        metrics.GOLDEN_RECALL.labels(*labels).set(comparison.recall)
        metrics.GOLDEN_STABLE_RECALL.labels(*labels).set(comparison.stable_recall)


@dataclass(frozen=True, slots=True)
class GoldenConfig:
    directory: Path
    interval_s: float
    pipeline: str
    revision: str
    stable_revision: str | None  # set on canary workers
    k: int = DEFAULT_K


async def golden_round(
    pool: asyncpg.Pool, pipeline: IngestPipeline, golden: GoldenSet, config: GoldenConfig
) -> GoldenComparison | None:
    """One interval: run the set if this worker's turn, then (a canary) compare and export."""
    canary = config.stable_revision is not None and config.stable_revision != config.revision
    if await take_run(pool, config.pipeline, config.revision, config.interval_s, canary=canary):
        run = await process_golden_set(pipeline, golden)
        await store_run(pool, config.pipeline, config.revision, run)
    if not canary or config.stable_revision is None:
        return None
    ours = await read_run(pool, config.pipeline, config.revision)
    theirs = await read_run(pool, config.pipeline, config.stable_revision)
    if ours is None or theirs is None:
        return None
    comparison = compare(ours, theirs, k=config.k)
    export(config.pipeline, config.revision, comparison)
    return comparison


async def golden_loop(pool: asyncpg.Pool, pipeline: IngestPipeline, config: GoldenConfig) -> None:
    """Run `golden_round` every interval until cancelled; the set is read again each time (a
    mounted ConfigMap changes in place). A failed round is logged and retried at the next
    interval: the golden set never stops the worker's jobs."""
    while True:
        try:
            golden = load_golden_set(config.directory)
            await golden_round(pool, pipeline, golden, config)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the set, the parser, the embedder, the database
            log.warning("golden set round failed: %s", exc)
        await asyncio.sleep(config.interval_s)
