"""The golden set: reading the set, comparing two revisions' runs (worker side), and the verdict
on the comparison (operator side)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from docpipe_ingest.golden import (
    GoldenChunk,
    GoldenRun,
    GoldenSetError,
    compare,
    load_golden_set,
    recall_at_k,
)
from docpipe_operator import rendering, telemetry
from docpipe_operator.model import parse_spec
from docpipe_operator.no_traffic import NoTrafficAction, NoTrafficPolicy
from docpipe_operator.quality import GoldenFigures, GoldenPolicy, judge_golden
from docpipe_operator.rollout import IntervalOutcome, RevisionSample, RolloutPolicy, judge_interval

TEXTS = {
    "seals.md": "Harbour seals rest on sandbanks at low tide.",
    "tides.md": "Spring tides follow the full and the new moon.",
    "ferns.md": "Ferns spread by spores rather than by seeds.",
}


def run(
    texts: dict[str, str] | None = None, *, vector: tuple[float, ...] = (1.0, 0.0)
) -> GoldenRun:
    chunks = tuple(GoldenChunk(name, 0, text, vector) for name, text in (texts or TEXTS).items())
    return GoldenRun(chunks)


def test_a_golden_set_directory_reads_documents_and_questions(tmp_path: Path) -> None:
    for name, text in TEXTS.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "questions.json").write_text(
        json.dumps([{"question": "Where do seals rest?", "document": "seals.md"}])
    )
    # A mounted ConfigMap's bookkeeping entries are not documents.
    (tmp_path / "..data").mkdir()
    golden = load_golden_set(tmp_path)
    assert [d.name for d in golden.documents] == sorted(TEXTS)
    assert golden.documents[0].content_type == "text/markdown"
    assert golden.questions[0].document == "seals.md"


@pytest.mark.parametrize(
    ("questions", "message"),
    [
        ('{"question": "x"}', "expected a JSON list"),
        ('[{"question": "x", "document": "nope.md"}]', "unknown documents ['nope.md']"),
        ("not json", "expected a JSON list"),
    ],
)
def test_a_bad_questions_file_is_named_with_its_problem(
    tmp_path: Path, questions: str, message: str
) -> None:
    (tmp_path / "seals.md").write_text("seals")
    (tmp_path / "questions.json").write_text(questions)
    with pytest.raises(GoldenSetError, match=r"questions\.json") as caught:
        load_golden_set(tmp_path)
    assert message in str(caught.value)


def test_an_empty_golden_set_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GoldenSetError, match="no document"):
        load_golden_set(tmp_path)


def test_identical_runs_compare_as_identical() -> None:
    figures = compare(run(), run())
    assert figures.text_overlap == 1.0
    assert figures.chunk_ratio == 1.0
    assert figures.cosine == pytest.approx(1.0)


def test_a_truncated_parse_shows_in_the_text_overlap() -> None:
    cut = {name: text[: int(len(text) * 0.3)] for name, text in TEXTS.items()}
    figures = compare(run(cut), run())
    assert figures.text_overlap < 0.4
    assert figures.chunk_ratio == 1.0


def test_zero_vectors_and_other_dimensions_show_in_the_cosine() -> None:
    assert compare(run(vector=(0.0, 0.0)), run()).cosine == 0.0
    assert compare(run(vector=(1.0, 0.0, 0.0)), run()).cosine == 0.0


def test_missing_chunks_count_as_dissimilar_and_in_the_ratio() -> None:
    fewer = run(dict(list(TEXTS.items())[:1]))
    figures = compare(fewer, run())
    assert figures.chunk_ratio == pytest.approx(1 / 3)
    assert figures.cosine == pytest.approx(1 / 3)


def test_recall_at_k_counts_questions_whose_document_is_among_the_nearest_chunks() -> None:
    chunks = (
        GoldenChunk("seals.md", 0, "seals", (1.0, 0.0)),
        GoldenChunk("tides.md", 0, "tides", (0.0, 1.0)),
    )
    questions = ((0, "seals.md", (0.9, 0.1)), (1, "tides.md", (0.9, 0.1)))
    assert recall_at_k(GoldenRun(chunks, questions), 1) == 0.5
    assert recall_at_k(GoldenRun(chunks, questions), 2) == 1.0
    assert recall_at_k(GoldenRun(chunks), 1) is None


words = st.text(alphabet="abcdefgh ", min_size=1, max_size=60)


@given(st.dictionaries(st.sampled_from(sorted(TEXTS)), words, min_size=1))
def test_a_run_compared_with_itself_never_loses_text_or_chunks(texts: dict[str, str]) -> None:
    figures = compare(run(texts), run(texts))
    assert figures.text_overlap == 1.0
    assert figures.chunk_ratio == 1.0


# ---- The verdict on the comparison ----

POLICY = GoldenPolicy(enabled=True)


@pytest.mark.parametrize(
    ("figures", "named"),
    [
        (GoldenFigures(0.3, 1.0, 1.0), "text overlap 0.30 below 0.9"),
        (GoldenFigures(1.0, 2.0, 1.0), "chunk count ratio 2.00 outside 0.70..1.30"),
        (GoldenFigures(1.0, 1.0, 0.0), "mean cosine 0.00 below 0.9"),
        (GoldenFigures(1.0, 1.0, 1.0, 0.5, 0.9), "recall@k 0.50 below the stable's 0.90"),
    ],
)
def test_a_golden_regression_names_the_metric_and_figures(
    figures: GoldenFigures, named: str
) -> None:
    verdict = judge_golden(figures, POLICY)
    assert verdict.regression is not None
    assert named in verdict.regression


def test_golden_figures_within_the_thresholds_pass() -> None:
    verdict = judge_golden(GoldenFigures(0.95, 1.1, 0.97, 0.8, 0.85), POLICY)
    assert verdict.judged
    assert verdict.regression is None


def test_no_golden_set_or_no_comparison_judges_nothing() -> None:
    assert not judge_golden(GoldenFigures(0.0, 0.0, 0.0), GoldenPolicy()).judged
    assert not judge_golden(None, POLICY).judged


def sample(claimed: float, golden: GoldenFigures | None) -> RevisionSample:
    return RevisionSample(
        claimed=claimed,
        retried=0,
        dead=0,
        stage_p95_s=None,
        pods_desired=1,
        pods_ready=1,
        golden=golden,
    )


def test_a_golden_regression_fails_an_interval_even_without_traffic() -> None:
    policy = RolloutPolicy(golden=POLICY)
    result = judge_interval(sample(0, GoldenFigures(0.3, 1.0, 1.0)), None, policy)
    assert result.outcome is IntervalOutcome.FAILED
    assert "golden set regression" in result.reason


def test_with_no_traffic_golden_a_passing_golden_set_passes_an_idle_interval() -> None:
    golden = NoTrafficPolicy(action=NoTrafficAction.GOLDEN, golden_set=True)
    policy = RolloutPolicy(golden=POLICY, no_traffic=golden)
    passing = sample(0, GoldenFigures(1.0, 1.0, 1.0))
    assert judge_interval(passing, None, policy).outcome is IntervalOutcome.PASSED
    # Under any other noTraffic action an idle interval stays inconclusive.
    assert (
        judge_interval(passing, None, RolloutPolicy(golden=POLICY)).outcome
        is IntervalOutcome.INCONCLUSIVE
    )


def test_the_golden_gauges_are_read_per_revision() -> None:
    labels = 'pipeline="docs",revision="r2"'
    text = "".join(
        f"# TYPE {name} gauge\n{name}{{{labels}}} {value}\n"
        for name, value in (
            ("docpipe_golden_text_overlap", 0.3),
            ("docpipe_golden_chunk_ratio", 1.0),
            ("docpipe_golden_cosine", 0.99),
        )
    )
    reading = telemetry.parse_worker_metrics(text, "docs")
    assert reading.revisions["r2"].golden == GoldenFigures(0.3, 1.0, 0.99)
    assert telemetry.parse_worker_metrics("", "docs").revisions == {}


BASE = {
    "worker": {"image": "docpipe:1"},
    "database": {"urlSecretRef": {"name": "db", "key": "url"}},
    "embedder": {"baseUrl": "http://mocks:8000/v1"},
}


def test_a_golden_set_configmap_is_mounted_and_the_canary_told_its_stable() -> None:
    spec = parse_spec({**BASE, "rollout": {"goldenSet": {"configMap": "samples"}}})
    template = rendering.render_pod_template("docs", spec)
    pod = template["spec"]
    assert {"name": "golden-set", "configMap": {"name": "samples"}} in pod["volumes"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["DOCPIPE_GOLDEN_DIR"] == rendering.GOLDEN_PATH
    assert env["DOCPIPE_GOLDEN_INTERVAL_SECONDS"] == "10"
    assert "DOCPIPE_STABLE_REVISION" not in env
    canary = rendering.render_canary_deployment(
        "docs", "ns", spec, replicas=1, canary_weight=0.2, stable_revision="abc"
    )
    canary_env = {
        e["name"]: e.get("value")
        for e in canary["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert canary_env["DOCPIPE_STABLE_REVISION"] == "abc"
    # The stable revision is not part of the canary's revision (it is promoted as is).
    assert rendering.revision_of(canary["spec"]["template"]) == rendering.revision_of(template)


def test_a_golden_set_needs_exactly_one_source() -> None:
    from docpipe_operator.model import SpecError

    with pytest.raises(SpecError, match="configMap or path"):
        parse_spec({**BASE, "rollout": {"goldenSet": {}}})
    with pytest.raises(SpecError, match="configMap or path"):
        parse_spec({**BASE, "rollout": {"goldenSet": {"configMap": "a", "path": "/b"}}})
    path = parse_spec({**BASE, "rollout": {"goldenSet": {"path": "/srv/golden"}}})
    template = rendering.render_pod_template("docs", path)
    env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0]["env"]}
    assert env["DOCPIPE_GOLDEN_DIR"] == "/srv/golden"
    assert not any(v["name"] == "golden-set" for v in template["spec"]["volumes"])
