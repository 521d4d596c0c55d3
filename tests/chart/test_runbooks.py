"""Every alert links to its runbook: a `runbook_url` annotation pointing at a section of
docs/runbooks.md that exists and says what to do, in the chart and in its kustomize copy."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.rendering import Manifest, find

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = ROOT / "docs" / "runbooks.md"
KUSTOMIZE_RULES = ROOT / "manifests" / "monitoring" / "prometheusrule.yaml"
DEFAULT_BASE = "docs/runbooks.md"

# What each section must cover (kube-prometheus' runbooks: meaning, diagnosis, mitigation).
PARTS = ("**Meaning.**", "**Confirm.**", "**Act.**", "**Escalate**")


def github_anchor(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading: lower case, punctuation
    other than '-' and '_' dropped, spaces as '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_sections() -> dict[str, str]:
    """Each `##` section of the runbook page by its anchor, with its text."""
    sections: dict[str, str] = {}
    anchor = None
    for line in RUNBOOKS.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            anchor = github_anchor(line[3:])
            sections[anchor] = ""
        elif anchor is not None:
            sections[anchor] += line + "\n"
    return sections


def alerts(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for g in spec["groups"] for r in g["rules"] if "alert" in r]


def rendered_alerts(render: Callable[..., list[Manifest]], **settings: Any) -> list[dict[str, Any]]:
    rule = find(render(**{"monitoring.prometheusRule.enabled": True}, **settings), "PrometheusRule")
    return alerts(rule["spec"])


def test_every_alert_has_a_runbook_url_to_an_existing_section(
    render: Callable[..., list[Manifest]],
) -> None:
    sections = runbook_sections()
    found = rendered_alerts(render)
    assert found
    for rule in found:
        url = rule["annotations"].get("runbook_url")
        assert url, f"{rule['alert']} has no runbook_url annotation"
        base, _, anchor = url.partition("#")
        assert base == DEFAULT_BASE, url
        assert anchor == rule["alert"].lower(), f"{rule['alert']}: {url}"
        assert anchor in sections, f"{url}: docs/runbooks.md has no section with this anchor"


def test_every_runbook_section_says_what_it_means_how_to_confirm_act_and_escalate() -> None:
    for anchor, text in runbook_sections().items():
        missing = [part for part in PARTS if part not in text]
        assert not missing, f"docs/runbooks.md#{anchor} lacks {', '.join(missing)}"


def test_the_runbook_page_has_no_section_for_an_alert_that_does_not_exist(
    render: Callable[..., list[Manifest]],
) -> None:
    names = {rule["alert"].lower() for rule in rendered_alerts(render)}
    assert set(runbook_sections()) == names


def test_in_page_links_of_the_runbooks_point_at_sections_that_exist() -> None:
    sections = runbook_sections()
    links = re.findall(r"\]\(#([^)]+)\)", RUNBOOKS.read_text(encoding="utf-8"))
    assert links
    assert [link for link in links if link not in sections] == []


@pytest.mark.parametrize(
    "base", ["https://github.com/example/docpipe/blob/main/docs/runbooks.md", "/runbooks"]
)
def test_the_runbook_base_url_is_a_chart_value(
    render: Callable[..., list[Manifest]], base: str
) -> None:
    for rule in rendered_alerts(render, **{"monitoring.prometheusRule.runbookBaseUrl": base}):
        assert rule["annotations"]["runbook_url"] == f"{base}#{rule['alert'].lower()}"


def test_the_kustomize_copy_carries_the_same_runbook_urls(
    render: Callable[..., list[Manifest]],
) -> None:
    copy = yaml.safe_load(KUSTOMIZE_RULES.read_text(encoding="utf-8"))
    expected = {r["alert"]: r["annotations"]["runbook_url"] for r in rendered_alerts(render)}
    assert {r["alert"]: r["annotations"].get("runbook_url") for r in alerts(copy["spec"])} == (
        expected
    )
