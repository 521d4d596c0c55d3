"""The Dockerfiles, checked without Docker: hadolint, a pinned base, a non-root user, a command
the docpipe CLI accepts, a healthcheck, a build context holding what they copy, and dependencies
by role: each image installs only its role's extra of pyproject.toml, the operator's and the
mocks' sets leave out the worker's heavy packages, and their commands start without them."""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from docpipe_cli.main import build_argument_parser
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
    args = build_argument_parser().parse_args(command)
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


# Dependencies by role. The images and the extras of pyproject.toml they install; the worker image
# also serves the intake API (`docpipe api`) and runs `docpipe migrate`.
IMAGE_EXTRAS = {"worker": {"worker", "api"}, "operator": {"operator"}, "mocks": {"mocks"}}
# Distributions an image must not carry: the worker's embedded Postgres, parsers, pgvector and
# the API's JWT library stay out of the operator; the embedded Postgres and Kopf out of the mocks
# (which do parse: the mock LlamaParse uses docpipe's own extraction).
LEFT_OUT = {
    "operator": {
        "pgserver",
        "pypdf",
        "python-docx",
        "beautifulsoup4",
        "markdownify",
        "pgvector",
        "numpy",
        "pyjwt",
        "lxml",
        # Tracing is the worker's and the API's (docpipe_contracts.tracing imports it if there).
        "opentelemetry-sdk",
    },
    "mocks": {"pgserver", "kopf", "pyjwt", "pgvector", "opentelemetry-sdk"},
}
# Their import names, blocked outright in the start-up checks below.
LEFT_OUT_MODULES = {
    "operator": {
        "pgserver",
        "pypdf",
        "docx",
        "bs4",
        "markdownify",
        "pgvector",
        "numpy",
        "jwt",
        "opentelemetry",
    },
    "mocks": {"pgserver", "kopf", "jwt", "pgvector", "opentelemetry"},
}
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def project_installs(path: Path) -> list[set[str]]:
    """The extras of each `pip install .[...]` of the project in a Dockerfile's RUN steps."""
    installs = []
    for keyword, rest in instructions(path):
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|;", rest):
            words = shlex.split(command)
            if len(words) < 2 or not words[0].endswith("/pip") or words[1] != "install":
                continue
            for target in (word for word in words[2:] if not word.startswith("-")):
                found = re.fullmatch(r"\.(?:\[([\w,-]*)\])?", target)
                assert found, f"{path.name} installs {target!r}, not the project"
                installs.append({e for e in (found.group(1) or "").split(",") if e})
    return installs


def requirements(extras: Iterable[str]) -> list[Requirement]:
    """The base dependencies and those of `extras`, following self-references (docpipe[...])."""
    found = [Requirement(text) for text in PROJECT["dependencies"]]
    todo, seen = set(extras), set()
    while todo:
        extra = todo.pop()
        seen.add(extra)
        for text in PROJECT["optional-dependencies"][extra]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == "docpipe":
                todo |= requirement.extras - seen
            else:
                found.append(requirement)
    return [r for r in found if r.marker is None or r.marker.evaluate({"extra": ""})]


def closure(extras: Iterable[str]) -> set[str]:
    """Every distribution installing `extras` brings, direct or transitive (canonical names).

    Transitive requirements come from the metadata installed here (the dev venv holds every
    role), so the versions are this venv's; an image resolves the same names unless a dependency
    changes its own requirements between releases.
    """
    names: set[str] = set()
    todo = requirements(extras)
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        names.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{name} is not installed: pip install -e '.[dev]'")
        for text in requires:
            sub = Requirement(text)
            wanted = requirement.extras or {""}
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in wanted):
                todo.append(sub)
    return names


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_image_installs_exactly_its_roles_extras(image: str) -> None:
    assert project_installs(IMAGES[image]) == [IMAGE_EXTRAS[image]]


@pytest.mark.parametrize("image", sorted(LEFT_OUT))
def test_image_dependencies_leave_out_other_roles_packages(image: str) -> None:
    brought = closure(IMAGE_EXTRAS[image])
    assert not brought & LEFT_OUT[image], sorted(brought & LEFT_OUT[image])
    # Sanity: the names are spelled as the worker's set spells them.
    assert LEFT_OUT[image] - {"kopf"} <= closure(IMAGE_EXTRAS["worker"]) | closure({"mocks"})


def test_dev_extra_installs_every_role() -> None:
    every_role = set().union(*IMAGE_EXTRAS.values())
    assert closure(every_role) <= closure({"dev"})


# Run in a fresh interpreter: a meta-path finder refuses every third-party module whose
# distribution the image does not install (and the LEFT_OUT_MODULES outright), as a missing
# package would; then the image's commands parse, its packages import, and the mocks' parser runs.
STARTUP_CHECK = """
import importlib, importlib.abc, importlib.metadata, json, pkgutil, re, sys

allowed, forbidden, commands, packages = json.loads(sys.argv[1])
owners = importlib.metadata.packages_distributions()

def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()

class NotInTheImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in sys.stdlib_module_names or top.startswith("docpipe_"):
            return None
        dists = {canonical(d) for d in owners.get(top, ())}
        if top in forbidden or (dists and not dists & set(allowed)):
            raise ImportError(f"{name} is not installed in this image ({sorted(dists)})")
        return None

sys.meta_path.insert(0, NotInTheImage())
from docpipe_cli.main import extract_for_mocks, main

for argv in commands:
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code == 0, (argv, exc.code)
for package in packages:
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        importlib.import_module(info.name)
if "docpipe_mocks" in packages:
    text = extract_for_mocks(b"<h1>Quota</h1><p>per minute</p>", "q.html", "text/html")
    assert text.startswith("# Quota"), text
print(json.dumps(sorted(m for m in forbidden if m in sys.modules)))
"""

IMAGE_STARTUP = {
    "operator": ([["operator", "--help"]], ["docpipe_operator"]),
    "mocks": ([["mocks", "--help"]], ["docpipe_mocks"]),
    "worker": (
        [["worker", "--help"], ["api", "--help"], ["migrate", "--help"], ["jobs", "--help"]],
        [
            "docpipe_contracts",
            "docpipe_queue",
            "docpipe_providers",
            "docpipe_ingest",
            "docpipe_api",
            "docpipe_cli",
        ],
    ),
}


@pytest.mark.parametrize("image", sorted(IMAGE_STARTUP))
def test_image_starts_without_other_roles_packages(image: str) -> None:
    commands, packages = IMAGE_STARTUP[image]
    setup = [sorted(closure(IMAGE_EXTRAS[image])), sorted(LEFT_OUT_MODULES.get(image, set()))]
    done = subprocess.run(
        [sys.executable, "-c", STARTUP_CHECK, json.dumps([*setup, commands, packages])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
