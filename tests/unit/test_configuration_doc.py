"""docs/configuration.md lists every environment variable the worker reads, with its default."""

from __future__ import annotations

import re
from pathlib import Path

from docpipe_contracts.configuration import env_name
from docpipe_ingest.settings import WorkerSettings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def documented_defaults() -> dict[str, str]:
    rows = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"\| `([A-Z0-9_]+)` \| ([^|]*) \|", line)
        if match:
            rows[match.group(1)] = match.group(2).strip().strip("`")
    return rows


def test_every_worker_setting_is_documented() -> None:
    names = {env_name(WorkerSettings, field) for field in WorkerSettings.model_fields}
    missing = names - documented_defaults().keys()
    assert not missing, f"document these in docs/configuration.md: {sorted(missing)}"


def test_documented_defaults_are_the_real_defaults() -> None:
    doc = documented_defaults()
    for field, info in WorkerSettings.model_fields.items():
        default = info.default
        if default is None:
            continue  # secrets, optional URLs and derived values are described in words
        shown = doc[env_name(WorkerSettings, field)]
        expected = str(default)
        if isinstance(default, bool):
            expected = expected.lower()
        elif isinstance(default, float) and default.is_integer():
            expected = str(int(default))
        assert shown == expected, (
            f"{env_name(WorkerSettings, field)}: doc {shown!r}, code {expected!r}"
        )
