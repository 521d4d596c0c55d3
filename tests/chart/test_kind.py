"""The kind path, checked without Docker: the cluster config, the script, the documented targets."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.chart.binaries import ROOT, find_tool
from tests.chart.rendering import CHART, run

DOC = ROOT / "docs" / "kubernetes.md"
KIND_SCRIPT = ROOT / "scripts" / "kind"


def minor(version: str) -> tuple[int, int]:
    match = re.search(r"(\d+)\.(\d+)", version)
    assert match, version
    return int(match.group(1)), int(match.group(2))


def test_kind_config_is_a_cluster_on_a_version_the_chart_supports() -> None:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = [node["role"] for node in config["nodes"]]
    assert roles.count("control-plane") == 1
    assert "worker" in roles
    oldest = minor(yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"])
    for node in config["nodes"]:
        image = node["image"]
        assert re.fullmatch(r"kindest/node:v\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?", image)
        assert minor(image.split(":v")[1]) >= oldest


def test_kind_script_passes_shellcheck() -> None:
    shellcheck = find_tool("shellcheck")
    done = run([shellcheck, str(KIND_SCRIPT)], check=False)
    assert done.returncode == 0, done.stdout


def test_kind_script_uses_the_cluster_name_of_the_config() -> None:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert f"CLUSTER={config['name']}\n" in KIND_SCRIPT.read_text()


def test_kind_script_refuses_an_unknown_command() -> None:
    done = run(["bash", str(KIND_SCRIPT), "launch"], check=False)
    assert done.returncode == 2
    assert "scripts/kind smoke" in done.stderr


def documented_make_targets() -> list[str]:
    return sorted(set(re.findall(r"`make ([a-z][a-z-]*)`", DOC.read_text())))


def test_the_page_documents_the_kind_targets() -> None:
    assert {"kind-up", "kind-images", "kind-install", "kind-smoke", "kind-down"} <= set(
        documented_make_targets()
    )


@pytest.mark.parametrize("target", documented_make_targets())
def test_documented_make_target_exists(target: str) -> None:
    done = run(["make", "-n", "-C", str(ROOT), target], check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("target", ["kind-up", "kind-images", "kind-install", "kind-smoke"])
def test_kind_make_target_runs_the_script_command_of_its_name(target: str) -> None:
    done = run(["make", "-n", "-C", str(ROOT), target])
    command = target.removeprefix("kind-")
    assert f"scripts/kind {command}" in done.stdout
    assert re.search(rf"^\s+{command}\)|\b{command} \|", KIND_SCRIPT.read_text(), re.M)


def test_kind_script_uses_paths_the_repository_has() -> None:
    text = KIND_SCRIPT.read_text()
    paths = re.findall(r"(?:-k|--config|upgrade --install docpipe) (\S+)", text)
    assert len(paths) >= 3
    for path in paths:
        assert (ROOT / path).exists(), path


def test_kind_script_builds_every_image_there_is_a_dockerfile_for() -> None:
    match = re.search(r"^IMAGES=\((.*)\)$", KIND_SCRIPT.read_text(), re.M)
    assert match
    dockerfiles = {p.name.removesuffix(".Dockerfile") for p in (ROOT / "docker").glob("*")}
    assert set(match.group(1).split()) == dockerfiles
