"""Performance regression gate: run short versions of the benchmarks and compare their ratios with
the baselines in bench/baselines.json.

Only ratios are compared, never absolute times: each one is docpipe against a peer measured in the
same run on the same machine (PgQueuer's drain, Postgres queried directly, KEDA simulated on the
same jobs, the exact search), so a machine twice as fast or slow moves both sides. A ratio that got
worse than its baseline by more than its tolerance fails the gate; a better one is reported (run
`--update` to raise the bar). Each tolerance comes from the run-to-run spread measured when the
baselines were written (`--update --runs 3`): twice the distance from the median to the worst
run, and never less than a floor per kind of ratio, so that noise on a shared machine does not
fail it.

    .venv/bin/python bench/check.py                    # run, compare, print the table
    .venv/bin/python bench/check.py --only queue,autoscaling
    .venv/bin/python bench/check.py --update --runs 3  # rewrite baselines, spread, tolerances
    .venv/bin/python bench/check.py --json             # the comparison as one JSON object

Exit status: 0 all within tolerance, 1 a ratio dropped beyond it, 2 a benchmark failed to run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BASELINES = HERE / "baselines.json"

# How long one benchmark run may take before the gate gives up on it.
RUN_TIMEOUT_S = 300.0

# Tolerance = max(floor, SPREAD_FACTOR × the relative spread measured over the baseline's runs).
SPREAD_FACTOR = 2.0
MEASURED_FLOOR = 0.15  # timed ratios: both sides measured, on a machine other work may share
QUALITY_FLOOR = 0.03  # recall against the exact search: seeded data, a few queries may flip
DETERMINISTIC_FLOOR = 0.02  # the seeded simulation: the same code gives the same figure

Result = Mapping[str, Any]


@dataclass(frozen=True)
class Bench:
    """A benchmark's short version: its script and arguments; it prints one JSON object."""

    name: str
    script: str
    args: str  # split on spaces
    about: str

    def command(self) -> list[str]:
        return [sys.executable, str(HERE / self.script), "--json", *self.args.split()]


@dataclass(frozen=True)
class Ratio:
    """One figure the gate compares: taken from a benchmark's JSON, better when higher or lower."""

    name: str
    bench: str
    higher_is_better: bool
    floor: float
    about: str
    get: Callable[[Result], float | None]
    # False: printed beside the others but never failing the gate (its spread is too wide here).
    gate: bool = True


BENCHES = (
    Bench(
        "queue",
        "queue.py",
        "--jobs 20000 --warmup 1000 --systems docpipe,pgqueuer --fairness-jobs 0",
        "enqueue and drain 20,000 no-op jobs, docpipe and PgQueuer on one server (about 50 s)",
    ),
    Bench(
        "autoscaling",
        "autoscaling.py",
        "--sim-only --no-plot",
        "the seeded trace simulation, docpipe's decision against KEDA + HPA (about 20 s)",
    ),
    Bench(
        "api",
        "api.py",
        "--seconds 4 --chunks 3000 --clients 20",
        "the intake API under 20 clients for 4 s per run, beside Postgres queried directly "
        "(about a minute)",
    ),
)

TRACES = ("steady", "burst", "daily_wave", "spike_then_idle")


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _trace(name: str, result: Result) -> Mapping[str, Any]:
    trace: Mapping[str, Any] = result["traces"][name]
    return trace


def _vs_keda_usual(trace: str, result: Result) -> float | None:
    value: float | None = _trace(trace, result)["vs_keda_usual"]["replica_seconds_ratio"]
    return value


def _vs_work(trace: str, result: Result) -> float | None:
    t = _trace(trace, result)
    return _ratio(t["docpipe"]["replica_seconds"], t["work"]["replica_seconds"])


def _wait_vs_keda_same_cost(trace: str, result: Result) -> float | None:
    # p95 waits are whole seconds and can be 0: one second added to both keeps the ratio finite.
    t = _trace(trace, result)
    return _ratio(t["docpipe"]["p95_wait_s"] + 1, t["keda_same_cost"]["p95_wait_s"] + 1)


def _autoscaling_ratios() -> list[Ratio]:
    figures = (
        ("replica_seconds_vs_keda_usual", "docpipe's replica-seconds / KEDA's at the usual target",
         _vs_keda_usual),
        ("replica_seconds_vs_work", "docpipe's replica-seconds / the work's (the floor)",
         _vs_work),
        ("p95_wait_vs_keda_same_cost",
         "(docpipe's p95 wait + 1 s) / (KEDA's at the same replica-seconds + 1 s)",
         _wait_vs_keda_same_cost),
    )  # fmt: skip
    return [
        Ratio(
            f"autoscaling.{trace}.{name}",
            "autoscaling",
            False,
            DETERMINISTIC_FLOOR,
            f"{trace}: {about}",
            partial(get, trace),
        )
        for trace in TRACES
        for name, about, get in figures
    ]


def _api_run(result: Result, run: str, figure: str) -> float:
    value: float = result["runs"][run][figure]
    return value


def _recall(result: Result) -> float | None:
    by_ef: Mapping[str, Any] = result["search_quality"]["by_ef_search"]
    figures = by_ef.get(str(result["settings"]["ef_search"]))
    return None if figures is None else float(figures["recall_at_k"])


RATIOS: tuple[Ratio, ...] = (
    Ratio(
        "queue.drain_vs_pgqueuer",
        "queue",
        True,
        MEASURED_FLOOR,
        "docpipe's drain rate / PgQueuer's best (one consumer, no-op jobs)",
        lambda r: r["drain_ratio_docpipe_vs_pgqueuer"],
    ),
    Ratio(
        "queue.enqueue_vs_pgqueuer",
        "queue",
        True,
        MEASURED_FLOOR,
        "docpipe's batch enqueue rate / PgQueuer's",
        lambda r: r["enqueue_ratio_docpipe_vs_pgqueuer"],
    ),
    *_autoscaling_ratios(),
    Ratio(
        "api.status_rps_vs_postgres",
        "api",
        True,
        MEASURED_FLOOR,
        "GET /v1/documents/{id} requests/s / the same row read straight from Postgres",
        lambda r: _ratio(_api_run(r, "api_status", "rps"), _api_run(r, "postgres_status", "rps")),
        gate=False,
    ),
    Ratio(
        "api.search_p95_vs_postgres",
        "api",
        False,
        MEASURED_FLOOR,
        "search p95 through the API / the HNSW query straight to Postgres",
        lambda r: _ratio(
            _api_run(r, "api_search", "p95_ms"), _api_run(r, "postgres_search", "p95_ms")
        ),
        gate=False,
    ),
    Ratio(
        "api.search_recall_vs_exact",
        "api",
        True,
        QUALITY_FLOOR,
        "recall@5 of the API's search against the exact search, at its ef_search",
        _recall,
    ),
)


def run_bench(bench: Bench) -> Result:
    """One run of a benchmark's short version; its JSON result (SystemExit 2 when it fails)."""
    started = time.monotonic()
    print(f"bench-check: {bench.name}: {bench.about}", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(
            bench.command(), cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
            check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise SystemExit(
            f"bench-check: {bench.name} took longer than {RUN_TIMEOUT_S:g} s"
        ) from None
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-20:])
        raise SystemExit(f"bench-check: {bench.name} failed (exit {done.returncode}):\n{tail}")
    try:
        result: Result = json.loads(done.stdout)
    except ValueError:
        raise SystemExit(f"bench-check: {bench.name} printed no JSON object") from None
    print(
        f"bench-check: {bench.name} done in {time.monotonic() - started:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    return result


def measure(benches: Sequence[Bench], runs: int) -> dict[str, list[float]]:
    """Each selected ratio's value in each run (a run whose figure is missing adds none)."""
    values: dict[str, list[float]] = {}
    for _ in range(runs):
        for bench in benches:
            result = run_bench(bench)
            for ratio in RATIOS:
                if ratio.bench != bench.name:
                    continue
                value = ratio.get(result)
                if value is not None:
                    values.setdefault(ratio.name, []).append(float(value))
    return values


def relative_spread(values: Sequence[float]) -> float:
    """(max - min) / median: how far apart runs on one machine land."""
    median = statistics.median(values)
    return (max(values) - min(values)) / abs(median) if median else 0.0


def downside_spread(ratio: Ratio, values: Sequence[float]) -> float:
    """How far the worst run lands from the median, as a fraction of it: only drops fail the
    gate, so this, not the whole spread, is the noise a tolerance must cover."""
    median = statistics.median(values)
    worst = min(values) if ratio.higher_is_better else max(values)
    return abs(median - worst) / abs(median) if median else 0.0


def tolerance_for(ratio: Ratio, downside: float) -> float:
    return round(max(ratio.floor, SPREAD_FACTOR * downside), 3)


def verdict(ratio: Ratio, baseline: Mapping[str, Any], value: float) -> tuple[str, float]:
    """'ok', 'better' or 'DROP', and the change as a signed fraction (positive: better)."""
    base = float(baseline["value"])
    change = (value - base) / abs(base) if base else 0.0
    if not ratio.higher_is_better:
        change = -change
    if change < -float(baseline["tolerance"]):
        return "DROP", change
    if change > float(baseline["tolerance"]):
        return "better", change
    return "ok", change


def load_baselines() -> dict[str, Any]:
    if not BASELINES.exists():
        return {"ratios": {}}
    loaded: dict[str, Any] = json.loads(BASELINES.read_text(encoding="utf-8"))
    return loaded


def write_baselines(values: Mapping[str, list[float]], runs: int, old: Mapping[str, Any]) -> None:
    ratios: dict[str, Any] = dict(old.get("ratios", {}))
    for ratio in RATIOS:
        measured = values.get(ratio.name)
        if not measured:
            continue
        kept = ratios.get(ratio.name, {})
        if len(measured) > 1:
            spread: float | None = relative_spread(measured)
            downside: float | None = downside_spread(ratio, measured)
        else:
            # One run says nothing of the spread: keep the one measured before.
            spread, downside = kept.get("spread"), kept.get("downside")
        ratios[ratio.name] = {
            "value": round(statistics.median(measured), 4),
            "higher_is_better": ratio.higher_is_better,
            "gate": ratio.gate,
            "tolerance": tolerance_for(ratio, downside or 0.0),
            "spread": None if spread is None else round(spread, 4),
            "downside": None if downside is None else round(downside, 4),
            "runs": [round(v, 4) for v in measured],
            "about": ratio.about,
        }
    document = {
        "note": "Written by `bench/check.py --update`; compared by `make bench-check`. value: the "
        "median of the runs; spread: (max - min) / median over them; downside: how far the "
        "worst run lands from the median, over it; tolerance: max(floor, "
        f"{SPREAD_FACTOR:g} x downside), the drop that fails the gate.",
        "recorded": {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {_cores()} cores, "
            f"Python {platform.python_version()}",
            "runs": runs,
            "benches": {b.name: b.args for b in BENCHES},
        },
        "ratios": dict(sorted(ratios.items())),
    }
    BASELINES.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def _cores() -> int:
    import os

    return os.cpu_count() or 0


def best(ratio: Ratio, values: Sequence[float]) -> float:
    return max(values) if ratio.higher_is_better else min(values)


def compare(
    values: Mapping[str, list[float]],
    baselines: Mapping[str, Any],
    confirmed: frozenset[str] = frozenset(),
) -> tuple[list[dict[str, Any]], bool]:
    """One row per measured ratio, and whether any dropped beyond its tolerance: the median of the
    runs, or for the benches in `confirmed` (run again after a drop) the best run, so that a ratio
    fails only when every run dropped."""
    rows = []
    failed = False
    known: Mapping[str, Any] = baselines.get("ratios", {})
    for ratio in RATIOS:
        measured = values.get(ratio.name)
        if not measured:
            continue
        value = best(ratio, measured) if ratio.bench in confirmed else statistics.median(measured)
        baseline = known.get(ratio.name)
        if baseline is None:
            rows.append({"ratio": ratio.name, "value": value, "verdict": "no baseline"})
            continue
        outcome, change = verdict(ratio, baseline, value)
        if not ratio.gate:
            outcome = f"info ({outcome.lower()})"
        failed |= outcome == "DROP"
        rows.append(
            {
                "ratio": ratio.name,
                "baseline": baseline["value"],
                "value": round(value, 4),
                "runs": [round(v, 4) for v in measured],
                "change": round(change, 4),
                "tolerance": baseline["tolerance"],
                "better": "higher" if ratio.higher_is_better else "lower",
                "verdict": outcome,
            }
        )
    return rows, failed


def print_table(rows: Sequence[Mapping[str, Any]]) -> None:
    header = (
        f"{'ratio':<48} {'better':>6} {'baseline':>9} {'now':>9} {'change':>8} {'tol.':>6}  verdict"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        if "baseline" not in row:
            blank = ""
            print(
                f"{row['ratio']:<48} {blank:>6} {'-':>9} {row['value']:>9.4g} {blank:>8} "
                f"{blank:>6}  {row['verdict']}"
            )
            continue
        print(
            f"{row['ratio']:<48} {row['better']:>6} {row['baseline']:>9.4g} {row['value']:>9.4g} "
            f"{row['change']:>+8.1%} {row['tolerance']:>6.0%}  {row['verdict']}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of {','.join(b.name for b in BENCHES)}"
    )
    parser.add_argument("--runs", type=int, default=1, help="runs of each bench (median compared)")
    parser.add_argument(
        "--confirm",
        type=int,
        default=1,
        help="run a bench whose ratio dropped this many more times; it fails only if every run "
        "dropped (0: fail at once)",
    )
    parser.add_argument("--update", action="store_true", help="rewrite bench/baselines.json")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    args = parser.parse_args(argv)
    names = {n.strip() for n in args.only.split(",") if n.strip()}
    unknown = names - {b.name for b in BENCHES}
    if unknown:
        parser.error(f"unknown bench: {', '.join(sorted(unknown))}")
    if args.runs < 1 or args.confirm < 0:
        parser.error("--runs must be at least 1 and --confirm at least 0")
    benches = [b for b in BENCHES if not names or b.name in names]
    baselines = load_baselines()
    values = measure(benches, args.runs)
    if args.update:
        write_baselines(values, args.runs, baselines)
        baselines = load_baselines()
        print(f"bench-check: wrote {BASELINES.relative_to(ROOT)}", file=sys.stderr)
    rows, failed = compare(values, baselines)
    confirmed: set[str] = set()
    for _ in range(args.confirm if failed and not args.update else 0):
        dropped_ratios = {row["ratio"] for row in rows if row["verdict"] == "DROP"}
        dropped = {r.bench for r in RATIOS if r.name in dropped_ratios}
        print(
            f"bench-check: a ratio dropped; running {', '.join(sorted(dropped))} again to tell a "
            "regression from noise",
            file=sys.stderr,
        )
        for name, more in measure([b for b in BENCHES if b.name in dropped], 1).items():
            values.setdefault(name, []).extend(more)
        confirmed |= dropped
        rows, failed = compare(values, baselines, frozenset(confirmed))
        if not failed:
            break
    if args.json:
        print(json.dumps({"failed": failed, "ratios": rows}, indent=2))
    else:
        print_table(rows)
        if failed:
            print(
                "\nA ratio dropped beyond its tolerance. Rerun to rule out noise (other load on "
                "the machine); if the drop is intended, record it with `bench/check.py --update "
                "--runs 3` and say why in the commit."
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
