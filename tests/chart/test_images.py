"""The Dockerfiles, checked without Docker: hadolint, a pinned base, a non-root user, a command
the docpipe CLI accepts, a healthcheck, and a build context holding what they copy."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path

import pytest

from docpipe_cli.main import build_parser
from tests.chart.binaries import ROOT, find_tool
from tests.chart.rendering import run

DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
IMAGES = {path.name.removesuffix(".Dockerfile"): path for path in DOCKERFILES}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments left out."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def test_there_is_an_image_for_worker_operator_and_mocks() -> None:
    assert sorted(IMAGES) == ["mocks", "operator", "worker"]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_dockerfile_passes_hadolint(image: str) -> None:
    hadolint = find_tool("hadolint")
    done = run([hadolint, "--failure-threshold", "info", str(IMAGES[image])], check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_base_image_is_pinned_to_a_patch_release(image: str) -> None:
    steps = instructions(IMAGES[image])
    args = {}
    for keyword, rest in steps:
        if keyword == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = default
    froms = [rest.split()[0] for keyword, rest in steps if keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    for reference in froms:
        reference = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], reference)
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", reference)


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_image_runs_as_a_numeric_non_root_user(image: str) -> None:
    users = [rest for keyword, rest in final_stage(IMAGES[image]) if keyword == "USER"]
    assert users, "no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0
    # The chart and the operator run every pod as this uid.
    assert int(uid) == 10001


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_image_command_is_one_the_docpipe_cli_accepts(image: str) -> None:
    stage = dict(final_stage(IMAGES[image]))
    entrypoint = json.loads(stage["ENTRYPOINT"])
    command = json.loads(stage["CMD"])
    assert entrypoint == ["docpipe"]
    args = build_parser().parse_args(command)
    assert args.command == image


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_image_has_a_healthcheck_on_its_own_port(image: str) -> None:
    stage = dict(final_stage(IMAGES[image]))
    exposed = stage["EXPOSE"]
    assert "HEALTHCHECK" in stage
    assert f"'{exposed}'" in stage["HEALTHCHECK"] or f":{exposed}/" in stage["HEALTHCHECK"]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_image_writes_nothing_outside_tmp_at_run_time(image: str) -> None:
    stage = final_stage(IMAGES[image])
    env = " ".join(rest for keyword, rest in stage if keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "HOME=/tmp" in env
    build = " ".join(rest for keyword, rest in instructions(IMAGES[image]) if keyword == "RUN")
    assert "compileall" in build


def dockerignore_keeps(path: str) -> bool:
    """Whether the build context keeps `path`, by .dockerignore's last matching pattern."""
    kept = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            kept = negate
    return kept


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_build_context_holds_what_the_dockerfile_copies(image: str) -> None:
    for keyword, rest in instructions(IMAGES[image]):
        if keyword != "COPY" or rest.startswith("--from"):
            continue
        sources = shlex.split(rest)[:-1]
        for source in sources:
            assert (ROOT / source).exists(), source
            assert dockerignore_keeps(source.rstrip("/")), f"{source} is left out of the context"


def test_dockerignore_leaves_out_local_state() -> None:
    for path in (".venv", ".git", ".tools", "tests", "worker/docpipe_queue/__pycache__"):
        assert not dockerignore_keeps(path), path
