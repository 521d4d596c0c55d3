"""The alert rules and the dashboard: promtool checks them, unit-tests every alert, parses every
dashboard query, and every metric they name is one the worker exports (or kube-state-metrics)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from docpipe_contracts import metrics
from tests.chart.promql import exported_series, metric_names
from tests.chart.rendering import CHART, Manifest, find, run

HERE = Path(__file__).resolve().parent
ALERT_TESTS = HERE / "alerts-test.yaml"
DASHBOARD = CHART / "dashboards" / "docpipe.json"

# Series that do not come from docpipe: kube-state-metrics, for replica counts of Deployments.
# Names starting with docpipe_ are never accepted from here: they must be exported by the worker.
KUBE_STATE_METRICS = frozenset(
    {"kube_deployment_spec_replicas", "kube_deployment_status_replicas_available"}
)

# Grafana's own variables, replaced by what Grafana puts there before the query is sent.
GRAFANA_BUILTINS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def rule_groups(render: Callable[..., list[Manifest]]) -> dict[str, Any]:
    rule = find(render(**{"monitoring.prometheusRule.enabled": True}), "PrometheusRule")
    spec: dict[str, Any] = rule["spec"]
    return spec


def alert_rules(render: Callable[..., list[Manifest]]) -> list[dict[str, Any]]:
    return [r for g in rule_groups(render)["groups"] for r in g["rules"] if "alert" in r]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def dashboard_variables() -> list[str]:
    return [v["name"] for v in dashboard()["templating"]["list"]]


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expression) of every panel target and every query variable."""
    queries = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            queries.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            # label_values(EXPR, label): the expression is the selector inside.
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            assert inner, f"variable {variable['name']}: expected label_values(EXPR, label)"
            queries.append((f"variable {variable['name']}", inner.group(1)))
    return queries


def textbox_values() -> dict[str, str]:
    """The dashboard's free-text variables (prices) and their default values."""
    return {
        v["name"]: v["query"] for v in dashboard()["templating"]["list"] if v["type"] == "textbox"
    }


def as_promql(expr: str) -> str:
    """A dashboard expression as Prometheus receives it: Grafana's variables substituted."""
    for name, value in GRAFANA_BUILTINS.items():
        expr = expr.replace(name, value)
    # Free-text variables (prices) are numbers in the expression, not matchers.
    for name, value in textbox_values().items():
        expr = re.sub(rf"\$\{{?{name}\}}?(?![a-z_])", value, expr)
    # Multi-value variables become regex alternatives inside =~ matchers.
    return re.sub(r"\$\{?([a-z_]+)\}?", lambda m: "a|b" if m.group(1) != "1" else "$1", expr)


def test_rules_pass_promtool_check(
    promtool: str, render: Callable[..., list[Manifest]], tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule_groups(render)), encoding="utf-8")
    done = run([promtool, "check", "rules", str(rules)])
    assert "SUCCESS: 7 rules found" in done.stdout


def test_alerts_pass_their_promtool_unit_tests(
    promtool: str, render: Callable[..., list[Manifest]], tmp_path: Path
) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups(render)), encoding="utf-8")
    shutil.copy(ALERT_TESTS, tmp_path / "alerts-test.yaml")
    done = run([promtool, "test", "rules", str(tmp_path / "alerts-test.yaml")], check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_catch_a_changed_threshold(
    promtool: str, render: Callable[..., list[Manifest]], tmp_path: Path
) -> None:
    groups = rule_groups(render)
    for group in groups["groups"]:
        for rule in group["rules"]:
            rule["expr"] = rule["expr"].replace("> 120", "> 500")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups), encoding="utf-8")
    shutil.copy(ALERT_TESTS, tmp_path / "alerts-test.yaml")
    done = run([promtool, "test", "rules", str(tmp_path / "alerts-test.yaml")], check=False)
    assert done.returncode != 0
    assert "DocpipeQueueWaitOverTarget" in done.stdout + done.stderr


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not(
    render: Callable[..., list[Manifest]],
) -> None:
    cases = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in alert_rules(render)}
    assert alerts == {
        "DocpipeQueueWaitOverTarget",
        "DocpipeDeadJobsRising",
        "DocpipeErrorRatioHigh",
        "DocpipeWorkersNotReady",
        "DocpipeQuotaSaturated",
        "DocpipeQuotaHeld",
        "DocpipeOperatorDown",
    }
    assert alerts - firing == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested staying quiet"


def test_alert_thresholds_follow_the_values(render: Callable[..., list[Manifest]]) -> None:
    rule = find(
        render(
            **{
                "monitoring.prometheusRule.enabled": True,
                "monitoring.prometheusRule.queueWaitSeconds": 45,
                "monitoring.prometheusRule.errorRatio": 0.25,
            }
        ),
        "PrometheusRule",
    )
    exprs = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "> 45" in exprs["DocpipeQueueWaitOverTarget"]
    assert "> 0.25" in exprs["DocpipeErrorRatioHigh"]


def test_every_alert_has_severity_summary_and_description(
    render: Callable[..., list[Manifest]],
) -> None:
    for rule in alert_rules(render):
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]


def test_every_dashboard_query_parses(promtool: str, tmp_path: Path) -> None:
    queries = dashboard_queries()
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": as_promql(expr)}
                    for i, (_, expr) in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    done = run([promtool, "check", "rules", str(path)], check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(queries)} rules found" in done.stdout


def test_a_broken_dashboard_query_fails_the_parse(promtool: str, tmp_path: Path) -> None:
    broken = {"groups": [{"name": "d", "rules": [{"record": "d:q", "expr": "sum(rate(x[5m])"}]}]}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken), encoding="utf-8")
    assert run([promtool, "check", "rules", str(path)], check=False).returncode != 0


def known_metric(name: str) -> bool:
    if name.startswith("docpipe_"):
        return name in exported_series(metrics.all_specs())
    return name in KUBE_STATE_METRICS


def test_every_metric_in_the_dashboard_is_exported() -> None:
    unknown = {
        (where, name)
        for where, expr in dashboard_queries()
        for name in metric_names(as_promql(expr))
        if not known_metric(name)
    }
    assert unknown == set()


def test_every_metric_in_the_alerts_is_exported(render: Callable[..., list[Manifest]]) -> None:
    unknown = {
        (rule["alert"], name)
        for rule in alert_rules(render)
        for name in metric_names(rule["expr"])
        if not known_metric(name)
    }
    assert unknown == set()


def test_dashboard_and_alerts_use_every_job_metric_the_worker_exports(
    render: Callable[..., list[Manifest]],
) -> None:
    used = {n for _, e in dashboard_queries() for n in metric_names(e)}
    used |= {n for r in alert_rules(render) for n in metric_names(r["expr"])}
    job_series = {
        name
        for name in exported_series(metrics.all_specs())
        if name.startswith(("docpipe_jobs_", "docpipe_queue_", "docpipe_stage_"))
        and not name.endswith(("_created", "_bucket", "_count", "_sum"))
    }
    assert job_series - used == set()


@pytest.mark.parametrize(
    ("expr", "name"),
    [
        ("sum(rate(docpipe_jobs_claimed[5m]))", "docpipe_jobs_claimed"),
        ("docpipe_jobs_in_flight_total", "docpipe_jobs_in_flight_total"),
        ('max by (pipeline) (docpipe_queue_depth{pipeline="a"})', "docpipe_queue_depth"),
    ],
)
def test_a_metric_the_worker_does_not_export_is_caught(expr: str, name: str) -> None:
    assert name in metric_names(expr)
    assert not known_metric(name)


def test_dashboard_panels_have_unique_ids_and_use_the_datasource_variable() -> None:
    panels = dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]


def test_dashboard_queries_use_only_defined_variables() -> None:
    defined = set(dashboard_variables())
    for where, expr in dashboard_queries():
        used = set(re.findall(r"\$\{?([a-z_]+)\}?", expr)) - {"__rate_interval", "__range"}
        assert used <= defined, where


def test_dashboard_shows_replicas_desired_and_ready_and_stage_latency() -> None:
    exprs = " ".join(expr for _, expr in dashboard_queries())
    for needed in (
        "kube_deployment_spec_replicas",
        "kube_deployment_status_replicas_available",
        "docpipe_stage_duration_seconds_bucket",
        "docpipe_queue_oldest_ready_age_seconds",
    ):
        assert needed in exprs


def test_dashboard_shows_quotas_waits_429s_holds_and_cost() -> None:
    exprs = " ".join(expr for _, expr in dashboard_queries())
    for spec in (
        metrics.QUOTA_LIMIT_PER_MINUTE,
        metrics.QUOTA_USED,
        metrics.QUOTA_WAIT_SECONDS,
        metrics.QUOTA_RATE_LIMITED,
        metrics.QUOTA_HELD,
        metrics.USAGE_TOKENS,
        metrics.USAGE_PAGES,
    ):
        assert spec.sample_name in exprs, spec.name
    assert {"price_per_million_tokens", "price_per_thousand_pages"} <= textbox_values().keys()
    assert "$price_per_million_tokens" in exprs
    assert "$price_per_thousand_pages" in exprs
