"""The output analysis of a canary: its output ratios against the stable's over one interval,
the interval verdict it feeds, and the undo of a rolled-back revision."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from docpipe_operator import decision, rollout, telemetry
from docpipe_operator.conditions import Observation
from docpipe_operator.decision import Children, read_pipeline
from docpipe_operator.model import DocumentPipelineStatus, LastRollback, RolloutStatus
from docpipe_operator.quality import (
    OutputCounters,
    OutputPolicy,
    OutputSample,
    judge_output,
    sample_output,
)
from docpipe_operator.rendering import LABEL_REVISION
from docpipe_operator.rollout import (
    IntervalOutcome,
    RevisionSample,
    RolloutPolicy,
    RolloutState,
    Undo,
    judge_interval,
    undo_due,
)

POLICY = OutputPolicy()
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def output(
    documents: float = 20,
    *,
    chars_per_byte: float = 0.9,
    chunks_per_document: float = 2.0,
    empty: float = 0,
    zero_vectors: float = 0,
    norm: float = 1.0,
) -> OutputSample:
    chunks = documents * chunks_per_document
    return OutputSample(
        OutputCounters(
            documents=documents,
            input_bytes=documents * 1000,
            extracted_chars=documents * 1000 * chars_per_byte,
            chunks=chunks,
            empty_documents=empty,
            vectors=chunks,
            degenerate_vectors=zero_vectors,
            norm_sum=(chunks - zero_vectors) * norm,
            norm_count=chunks,
        )
    )


STABLE = output(80)


@pytest.mark.parametrize(
    ("canary", "metric"),
    [
        # The parser keeps 30 % of each document.
        (output(chars_per_byte=0.27), "extracted chars per input byte"),
        # ... or emits twice the text (garbage, duplicated pages).
        (output(chars_per_byte=1.8), "extracted chars per input byte"),
        # The chunker shreds the text.
        (output(chunks_per_document=6.0), "chunks per document"),
        # Every vector is zero.
        (output(zero_vectors=40), "degenerate vector share"),
        # A tenth of the documents come out empty.
        (output(empty=3), "empty document share"),
        # Vectors no longer unit length (a model or dimension mix-up).
        (output(norm=0.5), "mean vector norm"),
    ],
)
def test_a_worse_output_is_a_regression_that_names_its_metric(
    canary: OutputSample, metric: str
) -> None:
    verdict = judge_output(canary, STABLE, POLICY)
    assert verdict.judged
    assert verdict.regression is not None
    assert metric in verdict.regression
    assert "stable" in verdict.regression


@pytest.mark.parametrize(
    "canary",
    [
        output(),
        output(chars_per_byte=0.9 * 0.75),  # within 0.7x..1.3x
        output(chunks_per_document=2.5),
        output(zero_vectors=0.2),  # 0.5 % of the vectors
        output(empty=0.5),
    ],
)
def test_an_output_within_the_thresholds_passes(canary: OutputSample) -> None:
    verdict = judge_output(canary, STABLE, POLICY)
    assert verdict.judged
    assert verdict.regression is None


def test_too_few_documents_are_not_judged() -> None:
    verdict = judge_output(output(4, chars_per_byte=0.1), STABLE, POLICY)
    assert not verdict.judged
    assert verdict.regression is None
    assert "fewer than the 5" in verdict.summary


def test_a_disabled_analysis_judges_nothing() -> None:
    off = OutputPolicy(enabled=False)
    assert judge_output(output(zero_vectors=40), STABLE, off).regression is None


def test_without_stable_output_shares_are_held_to_zero_and_ratios_not_compared() -> None:
    # A stable image older than the output counters reports none.
    silent = OutputSample()
    assert judge_output(output(chars_per_byte=0.1), silent, POLICY).regression is None
    zero = judge_output(output(zero_vectors=40), silent, POLICY).regression
    assert zero is not None
    assert "stable reported none" in zero
    assert judge_output(output(zero_vectors=40), None, POLICY).regression is not None


def test_the_sample_is_the_counters_increase_with_restarted_and_new_pods() -> None:
    before = {"a": OutputCounters(documents=10, extracted_chars=900), "b": OutputCounters(5)}
    after = {
        "a": OutputCounters(documents=16, extracted_chars=1500),
        "b": OutputCounters(documents=2),  # restarted: counters reset
        "c": OutputCounters(documents=3),  # new pod
    }
    sampled = sample_output(before, after)
    assert sampled.documents == 6 + 2 + 3
    assert sampled.counters.extracted_chars == 600


def test_empty_documents_count_beside_the_completed_ones() -> None:
    # An empty document fails its job: it is never among the documents completed.
    assert OutputSample(OutputCounters(documents=0, empty_documents=4)).empty_share == 1.0
    assert OutputSample(OutputCounters(documents=3, empty_documents=1)).empty_share == 0.25


def test_policy_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="max_relative_change"):
        OutputPolicy(max_relative_change=1.0)
    with pytest.raises(ValueError, match="min_documents"):
        OutputPolicy(min_documents=0)


ratios = st.floats(min_value=0.05, max_value=5.0)
documents = st.integers(min_value=5, max_value=10_000)


@given(documents, ratios, st.floats(1, 8), st.integers(0, 50), st.floats(0.5, 2))
def test_identical_output_never_regresses(
    n: int, chars: float, chunks: float, empty: int, norm: float
) -> None:
    same = output(n, chars_per_byte=chars, chunks_per_document=chunks, empty=empty, norm=norm)
    stable = output(
        n * 3, chars_per_byte=chars, chunks_per_document=chunks, empty=empty * 3, norm=norm
    )
    assert judge_output(same, stable, POLICY).regression is None


@given(documents, st.floats(0.01, 1.0), st.floats(0.01, 1.0))
def test_keeping_less_text_never_passes_where_keeping_more_failed(
    n: int, kept: float, less: float
) -> None:
    more_kept = output(n, chars_per_byte=0.9 * kept)
    less_kept = output(n, chars_per_byte=0.9 * kept * less)
    if judge_output(more_kept, STABLE, POLICY).regression is not None:
        assert judge_output(less_kept, STABLE, POLICY).regression is not None


@given(documents, st.floats(0, 1), st.floats(0, 1))
def test_more_zero_vectors_never_pass_where_fewer_failed(n: int, share: float, more: float) -> None:
    vectors = n * 2.0
    fewer = output(n, zero_vectors=vectors * share)
    worse = output(n, zero_vectors=vectors * min(1.0, share + more))
    if judge_output(fewer, STABLE, POLICY).regression is not None:
        assert judge_output(worse, STABLE, POLICY).regression is not None


# ---- The interval verdict ----


def revision(out: OutputSample | None, claimed: float = 20) -> RevisionSample:
    return RevisionSample(
        claimed=claimed,
        retried=0,
        dead=0,
        stage_p95_s=0.1,
        pods_desired=1,
        pods_ready=1,
        output=out,
    )


def test_an_interval_with_no_failed_job_fails_on_an_output_regression() -> None:
    result = judge_interval(
        revision(output(chars_per_byte=0.27)), revision(STABLE, 80), RolloutPolicy()
    )
    assert result.outcome is IntervalOutcome.FAILED
    assert "output regression: extracted chars per input byte" in result.reason
    assert "0.30x" in result.reason


def test_an_interval_with_equal_output_passes_and_says_so() -> None:
    result = judge_interval(revision(output()), revision(STABLE, 80), RolloutPolicy())
    assert result.outcome is IntervalOutcome.PASSED
    assert "output of 20 documents" in result.reason


def test_failed_jobs_are_reported_before_the_output() -> None:
    failing = replace(revision(output(zero_vectors=40)), retried=10)
    result = judge_interval(failing, revision(STABLE, 80), RolloutPolicy())
    assert result.outcome is IntervalOutcome.FAILED
    assert "error ratio" in result.reason


def test_jobs_enough_but_documents_too_few_to_judge_is_inconclusive() -> None:
    result = judge_interval(revision(output(3)), revision(STABLE, 80), RolloutPolicy())
    assert result.outcome is IntervalOutcome.INCONCLUSIVE
    assert "fewer than the 5" in result.reason


def test_a_worker_without_output_counters_is_judged_on_its_jobs() -> None:
    result = judge_interval(revision(None), revision(None, 80), RolloutPolicy())
    assert result.outcome is IntervalOutcome.PASSED


def test_the_spec_thresholds_reach_the_verdict() -> None:
    from docpipe_operator.model import RolloutSpec

    spec = RolloutSpec.model_validate(
        {"outputAnalysis": {"maxRelativeChange": 0.8, "minDocuments": 50}}
    )
    policy = decision.policy_of(spec)
    assert policy.output.max_relative_change == 0.8
    assert policy.output.min_documents == 50
    assert RolloutSpec().output_analysis.max_relative_change == POLICY.max_relative_change


# ---- Reading the counters ----


def test_the_output_counters_are_read_per_revision() -> None:
    labels = 'pipeline="docs",revision="r2"'
    text = (
        f"# TYPE docpipe_output_documents_total counter\n"
        f"docpipe_output_documents_total{{{labels}}} 7\n"
        f"# TYPE docpipe_output_extracted_chars_total counter\n"
        f"docpipe_output_extracted_chars_total{{{labels}}} 700\n"
        f"# TYPE docpipe_output_degenerate_vectors_total counter\n"
        f'docpipe_output_degenerate_vectors_total{{{labels},kind="zero"}} 3\n'
        f'docpipe_output_degenerate_vectors_total{{{labels},kind="non_finite"}} 1\n'
        f"# TYPE docpipe_output_vector_norm histogram\n"
        f'docpipe_output_vector_norm_bucket{{{labels},le="+Inf"}} 4\n'
        f"docpipe_output_vector_norm_sum{{{labels}}} 2.5\n"
        f"docpipe_output_vector_norm_count{{{labels}}} 4\n"
        f'docpipe_output_documents_total{{pipeline="other",revision="r2"}} 99\n'
    )
    reading = telemetry.parse_worker_metrics(text, "docs")
    counters = reading.revisions["r2"].output
    assert counters == OutputCounters(
        documents=7, extracted_chars=700, degenerate_vectors=4, norm_sum=2.5, norm_count=4
    )


# ---- Undo ----


def due(state: RolloutState, *, left: bool, after_s: float = 1.0) -> str | None:
    return undo_due(
        state, revision_pods_left=left, now=NOW + timedelta(seconds=after_s), grace_s=60
    )


def test_the_undo_is_due_once_per_rejection_after_the_last_pod_of_the_revision() -> None:
    rejected = RolloutState(
        phase=rollout.Phase.ROLLED_BACK, rejected_revision="r2", rejected_at=NOW
    )
    assert due(rejected, left=True) is None
    assert due(rejected, left=False) == "r2"
    done = replace(rejected, last_rollback=Undo("r2", 12, NOW))
    assert due(done, left=False) is None
    # A later rejection of another revision is undone too.
    again = replace(done, rejected_revision="r3")
    assert due(again, left=False) == "r3"
    assert due(RolloutState(), left=False) is None


def test_a_pod_stuck_terminating_holds_the_undo_back_only_for_the_grace_period() -> None:
    rejected = RolloutState(
        phase=rollout.Phase.ROLLED_BACK, rejected_revision="r2", rejected_at=NOW
    )
    assert due(rejected, left=True, after_s=60) is None
    assert due(rejected, left=True, after_s=60 + rollout.UNDO_GRACE_MARGIN_S) == "r2"


def test_an_undone_round_records_the_count_and_tells_it_in_an_event() -> None:
    status = DocumentPipelineStatus(
        rollout=RolloutStatus(phase="RolledBack", rejected_revision="r2")
    )
    decided = decision.Round(
        changes=(),
        deletion_costs={},
        status=status,
        previous=status,
        seen=Observation(generation=1),
        undo="r2",
    )
    done = decided.undone(12, NOW)
    assert done.undo is None
    assert done.status.rollout is not None
    assert done.status.rollout.last_rollback == LastRollback(
        revision="r2", reprocessed_documents=12, at=NOW
    )
    assert [e.reason for e in done.events] == ["RollbackReprocessing"]
    assert "12 document(s)" in done.events[0].message
    # The record survives the round trip through the stored status.
    state = decision.state_of(done.status.rollout)
    assert due(state, left=False) is None
    assert decision.status_of(state).last_rollback == done.status.rollout.last_rollback


def body(image: str, **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "docpipe.io/v1alpha1",
        "kind": "DocumentPipeline",
        "metadata": {"name": "docs", "namespace": "ns", "uid": "u-1", **metadata},
        "spec": {
            "worker": {"image": image},
            "database": {"urlSecretRef": {"name": "db", "key": "url"}},
            "embedder": {"baseUrl": "http://mocks:8000/v1"},
            "replicas": 3,
        },
    }


def run(
    image: str, children: Children, memory: decision.Memory, now: float, **metadata: Any
) -> tuple[decision.Round, decision.Memory]:
    decided, memory = decision.decide(
        read_pipeline(body(image, **metadata)),
        children,
        memory,
        load=None,
        now=now,
        wall=NOW + timedelta(seconds=now),
        monitoring=True,
    )
    return decided, replace(memory, status=decided.status)


def applied(children: Children, decided: decision.Round, *pods: dict[str, Any]) -> Children:
    """`children` with the round's changes applied, its Deployments rolled, and `pods`."""
    objects = dict(children.objects)
    for change in decided.changes:
        if change.verb == "delete":
            objects.pop((change.kind, change.name), None)
        elif change.body is not None:
            obj = copy.deepcopy(dict(change.body))
            obj["metadata"]["generation"] = 1
            wanted = obj.get("spec", {}).get("replicas", 1)
            obj["status"] = {
                "observedGeneration": 1,
                **dict.fromkeys(
                    ("replicas", "readyReplicas", "updatedReplicas", "availableReplicas"), wanted
                ),
            }
            objects[(change.kind, change.name)] = obj
    return Children(objects, pods)


def test_a_round_asks_for_the_undo_once_the_rejected_revisions_pods_are_gone() -> None:
    first, memory = run("docpipe:1", Children(), decision.Memory(), 100)
    children = applied(Children(), first)
    started, memory = run("docpipe:2", children, memory, 101)
    assert started.status.rollout is not None
    canary = started.status.rollout.canary_revision
    pod = {"metadata": {"name": "docs-worker-canary-1", "labels": {LABEL_REVISION: canary}}}
    with_canary = applied(children, started, pod)
    asked = {decision.ROLLBACK_ANNOTATION: "true"}

    rolled, memory = run("docpipe:2", with_canary, memory, 102, annotations=asked)
    assert rolled.status.rollout is not None
    assert rolled.status.rollout.phase == "RolledBack"
    assert rolled.undo is None  # its pod may still be finishing a job
    gone = applied(with_canary, rolled)
    later, memory = run("docpipe:2", gone, memory, 103)
    assert later.undo == canary
    done = later.undone(5, NOW)
    after, _ = run("docpipe:2", gone, replace(memory, status=done.status), 104)
    assert after.undo is None
