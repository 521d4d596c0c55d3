"""Where the chart tests find their command-line tools, and what they do when one is missing.

helm and kubectl come from `.tools/bin/` (scripts/fetch-k8s-tools); promtool and shellcheck from
Debian's packages (.ci/run installs them); hadolint and kubernetes-validate from the dev extra.
A missing tool fails the test in CI (CI=true), where .ci/run must have installed it, and skips it
elsewhere with the command that installs it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = ROOT / ".tools" / "bin"
# The running interpreter's scripts folder: pip-installed tools live there, in any venv.
VENV_BIN = Path(sys.executable).parent

INSTALL_HINTS = {
    "helm": "scripts/fetch-k8s-tools (or `make tools`)",
    "kubectl": "scripts/fetch-k8s-tools (or `make tools`)",
    "promtool": "apt-get install prometheus",
    "shellcheck": "apt-get install shellcheck",
    "hadolint": "pip install -e '.[dev]'",
    "kubernetes-validate": "pip install -e '.[dev]'",
}


def in_ci() -> bool:
    """CI sets CI=true; there every tool must be present."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def find_tool(name: str) -> str:
    """The path of `name`; fail the test in CI when it is missing, skip it elsewhere."""
    for folder in (TOOLS_BIN, VENV_BIN):
        candidate = folder / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed; install it with: {INSTALL_HINTS[name]}"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)
