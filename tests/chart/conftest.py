"""Fixtures of the chart tests: the tools, and the chart rendered once per set of values."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.chart.binaries import find_tool
from tests.chart.rendering import Manifest, render_chart


@pytest.fixture(scope="session")
def helm() -> str:
    return find_tool("helm")


@pytest.fixture(scope="session")
def kubectl() -> str:
    return find_tool("kubectl")


@pytest.fixture(scope="session")
def promtool() -> str:
    return find_tool("promtool")


@pytest.fixture(scope="session")
def kubernetes_validate() -> str:
    return find_tool("kubernetes-validate")


@pytest.fixture(scope="session")
def render(helm: str) -> Callable[..., list[Manifest]]:
    """`render(*value_files, **settings)`: the chart's objects, rendered once per arguments."""
    cache: dict[Any, list[Manifest]] = {}

    def rendered(*value_files: str, include_crds: bool = False, **settings: Any) -> list[Manifest]:
        key = (value_files, include_crds, json.dumps(settings, sort_keys=True))
        if key not in cache:
            cache[key] = render_chart(
                helm, value_files=value_files, settings=settings, include_crds=include_crds
            )
        return cache[key]

    return rendered
