"""Metric names: the series the worker exports, read from the metrics contract, and the names a
PromQL expression refers to."""

from __future__ import annotations

import re
from collections.abc import Iterable

from docpipe_contracts.metrics import MetricSpec

# The series a client_python metric of each type exposes, by suffix.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
}

# Words of PromQL that look like metric names: operators, modifiers, and the number literals.
_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"offset", "bool", "inf", "nan", "atan2", "start", "end"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_NAME = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()")
_NUMBER_UNIT = re.compile(r"\b\d+(?:\.\d+)?(?:ms|s|m|h|d|w|y)\b")


def exported_series(specs: Iterable[MetricSpec]) -> frozenset[str]:
    """Every series name the metric families `specs` expose when scraped."""
    return frozenset(spec.name + suffix for spec in specs for suffix in SUFFIXES[spec.kind])


def metric_names(expr: str) -> frozenset[str]:
    """The metric names an expression selects (its functions, labels and keywords left out)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _NUMBER_UNIT.sub(" ", text)
    return frozenset(name for name in _NAME.findall(text) if name.lower() not in _KEYWORDS)
