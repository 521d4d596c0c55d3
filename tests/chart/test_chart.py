"""The Helm chart: lints, renders valid objects for Kubernetes 1.30 and the newest known version
with default values and with every option on, refuses bad values with a message naming them."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from docpipe_cli.main import build_argument_parser
from docpipe_operator import rendering as worker_rendering
from docpipe_operator.runtime import peering_name
from tests.chart.admission import admission_problems, crd_schemas
from tests.chart.rendering import (
    CHART,
    NAMESPACE,
    Manifest,
    find,
    helm_template_args,
    pod_specs,
    run,
    schema_problems,
    split_custom,
)

HERE = Path(__file__).resolve().parent
ALL_OPTIONS = str(HERE / "values-all-options.yaml")
VALUE_SETS = {
    "default": ((), {}),
    "all-options": ((ALL_OPTIONS,), {}),
    "cluster-scope-with-extras": (
        (ALL_OPTIONS,),
        {"rbac.scope": "cluster", "examplePipeline.useMocks": False, "images.pullSecrets": []},
    ),
}
CRDS = sorted((CHART / "crds").glob("*.yaml"))


def rendered(
    render: Callable[..., list[Manifest]], value_set: str, *, include_crds: bool = False
) -> list[Manifest]:
    files, settings = VALUE_SETS[value_set]
    return render(*files, include_crds=include_crds, **settings)


@pytest.mark.parametrize("value_files", [[], [ALL_OPTIONS]], ids=["default", "all-options"])
def test_chart_passes_helm_lint_strict(helm: str, value_files: list[str]) -> None:
    args = [helm, "lint", "--strict", str(CHART)]
    for path in value_files:
        args += ["--values", path]
    done = run(args, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout
    assert "[ERROR]" not in done.stdout


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_rendered_objects_validate_strictly_against_kubernetes_schemas(
    render: Callable[..., list[Manifest]], kubernetes_validate: str, value_set: str
) -> None:
    core, _ = split_custom(rendered(render, value_set, include_crds=True))
    assert schema_problems(kubernetes_validate, core) == []


def test_schema_validation_reports_an_unknown_field(kubernetes_validate: str) -> None:
    bad = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "x"},
        "data": {"a": "b"},
        "dataa": {},
    }
    problems = schema_problems(kubernetes_validate, [bad])
    assert problems
    assert "dataa" in problems[0]


def test_schema_validation_counts_a_kind_without_schema_as_a_failure(
    kubernetes_validate: str,
) -> None:
    unknown = {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "x"}}
    assert any(p.startswith("WARN") for p in schema_problems(kubernetes_validate, [unknown]))


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_custom_resources_are_admitted_by_the_crds_the_chart_ships(
    render: Callable[..., list[Manifest]], value_set: str
) -> None:
    schemas = crd_schemas(*CRDS)
    _, custom = split_custom(rendered(render, value_set))
    for manifest in custom:
        key = (manifest["apiVersion"], manifest["kind"])
        if key[0].startswith("monitoring.coreos.com/"):
            continue  # prometheus-operator kinds: checked in test_monitoring.py
        assert key in schemas, f"no CRD in the chart for {key}"
        assert admission_problems(schemas[key], manifest) == [], manifest["metadata"]["name"]


def test_only_known_custom_kinds_are_left_to_other_checks(
    render: Callable[..., list[Manifest]],
) -> None:
    _, custom = split_custom(rendered(render, "all-options"))
    assert {m["kind"] for m in custom} == {
        "KopfPeering",  # all-options is namespaced: a peering per watched namespace
        "DocumentPipeline",
        "PodMonitor",
        "PrometheusRule",
        "ServiceMonitor",
    }


def test_chart_crd_is_the_generated_crd() -> None:
    generated = (CHART.parents[1] / "crds" / "documentpipelines.docpipe.io.yaml").read_text()
    assert (CHART / "crds" / "documentpipelines.docpipe.io.yaml").read_text() == generated


def test_peering_object_has_the_name_the_operator_uses(
    render: Callable[..., list[Manifest]], monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = render()
    peering = find(objects, "ClusterKopfPeering")
    operator = find(objects, "Deployment", "docpipe-operator")
    env = operator["spec"]["template"]["spec"]["containers"][0]["env"]
    for variable in env:
        monkeypatch.setenv(variable["name"], variable["value"])
    assert peering["metadata"]["name"] == peering_name()


BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"rbac.scope": "everywhere"}, "/rbac/scope"),
    ({"rbac.watchNamespaces": ["Team_A"]}, "/rbac/watchNamespaces/0"),
    ({"operator.replicas": -1}, "/operator/replicas"),
    ({"operator.healthPort": 80}, "/operator/healthPort"),
    ({"operator.logLevl": "DEBUG"}, "additional properties 'logLevl' not allowed"),
    ({"images.pullPolicy": "Sometimes"}, "/images/pullPolicy"),
    ({"images.worker.repository": ""}, "/images/worker/repository"),
    ({"mocks.faults.errorRate": 1.5}, "/mocks/faults/errorRate"),
    ({"api.enabled": True}, "/api/databaseUrlSecretRef/name"),
    ({"migrations.enabled": True}, "/migrations/databaseUrlSecretRef/name"),
    ({"examplePipeline.name": "Docs_1"}, "/examplePipeline/name"),
    ({"monitoring.podMonitor.interval": "15 seconds"}, "/monitoring/podMonitor/interval"),
    ({"monitoring.prometheusRule.errorRatio": 0}, "/monitoring/prometheusRule/errorRatio"),
    ({"monitoring.dashboard.labels": {"grafana_dashboard": 1}}, "/monitoring/dashboard/labels"),
]


@pytest.mark.parametrize(("settings", "message"), BAD_VALUES, ids=[m for _, m in BAD_VALUES])
def test_schema_refuses_a_bad_value_naming_it(
    helm: str, settings: dict[str, Any], message: str
) -> None:
    done = run(helm_template_args(helm, settings=settings), check=False)
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr
    assert message in done.stderr


def test_example_pipeline_with_min_above_max_replicas_is_refused(helm: str) -> None:
    settings = {
        "examplePipeline.enabled": True,
        "mocks.enabled": True,
        "examplePipeline.minReplicas": 6,
        "examplePipeline.maxReplicas": 2,
    }
    done = run(helm_template_args(helm, settings=settings), check=False)
    assert done.returncode != 0
    assert "examplePipeline.minReplicas must be <= examplePipeline.maxReplicas" in done.stderr


def test_example_pipeline_on_mocks_needs_the_mocks(helm: str) -> None:
    done = run(helm_template_args(helm, settings={"examplePipeline.enabled": True}), check=False)
    assert done.returncode != 0
    assert "examplePipeline.useMocks needs mocks.enabled: true" in done.stderr


def test_every_value_in_values_yaml_is_described_by_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: Any, schema_node: dict[str, Any], path: str) -> list[str]:
        missing = []
        if isinstance(node, dict) and "properties" in schema_node:
            for key, value in node.items():
                if key not in schema_node["properties"]:
                    missing.append(f"{path}.{key}")
                else:
                    missing += walk(value, schema_node["properties"][key], f"{path}.{key}")
        return missing

    assert walk(values, schema, "") == []


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_every_pod_runs_non_root_with_a_read_only_root_filesystem(
    render: Callable[..., list[Manifest]], value_set: str
) -> None:
    specs = pod_specs(rendered(render, value_set))
    assert specs
    for where, spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert "limits" in container["resources"], where


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_only_the_operator_gets_a_kubernetes_api_token(
    render: Callable[..., list[Manifest]], value_set: str
) -> None:
    for where, spec in pod_specs(rendered(render, value_set)):
        # The operator, and the CRD upgrade hook (which applies the CRDs: test_platform.py).
        if where.endswith(("-operator", "-crds")):
            assert spec["serviceAccountName"]
            assert spec.get("automountServiceAccountToken", True) is True
        else:
            assert spec["automountServiceAccountToken"] is False, where


def test_operator_command_is_one_the_docpipe_cli_accepts(
    render: Callable[..., list[Manifest]],
) -> None:
    deployment = find(render(), "Deployment", "docpipe-operator")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][0] == "docpipe"
    args = build_argument_parser().parse_args([*container["command"][1:], *container["args"]])
    assert args.command == "operator"
    assert args.liveness == "http://0.0.0.0:8080/healthz"


def test_operator_probes_its_liveness_port(render: Callable[..., list[Manifest]]) -> None:
    deployment = find(render(**{"operator.healthPort": 8081}), "Deployment", "docpipe-operator")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--liveness=http://0.0.0.0:8081/healthz" in container["args"]
    assert container["ports"] == [{"name": "health", "containerPort": 8081, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


@pytest.mark.parametrize("component", ["mocks", "migrate"])
def test_helper_commands_are_ones_the_docpipe_cli_accepts(
    render: Callable[..., list[Manifest]], component: str
) -> None:
    for where, spec in pod_specs(rendered(render, "all-options")):
        if where.endswith(f"-{component}"):
            container = spec["containers"][0]
            args = build_argument_parser().parse_args(
                [*container["command"][1:], *container.get("args", [])]
            )
            assert args.command == component
            return
    pytest.fail(f"no {component} workload rendered")


def test_api_environment_names_settings_the_api_reads(
    render: Callable[..., list[Manifest]],
) -> None:
    from docpipe_api.settings import ApiSettings
    from docpipe_contracts.configuration import env_name

    read = {env_name(ApiSettings, field) for field in ApiSettings.model_fields}
    deployment = find(rendered(render, "all-options"), "Deployment", "docpipe-dp-api")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    # OTEL_* are OpenTelemetry's own (tracing.endpoint: see the tracing test below).
    names = {e["name"] for e in container["env"] if not e["name"].startswith("OTEL_")}
    assert "DOCPIPE_API_PORT" in names
    assert names <= read, names - read
    port = next(e["value"] for e in container["env"] if e["name"] == "DOCPIPE_API_PORT")
    assert container["ports"][0]["containerPort"] == int(port)


def test_tracing_endpoint_turns_tracing_on_in_the_api_and_the_example_pipelines_workers(
    render: Callable[..., list[Manifest]],
) -> None:
    from docpipe_contracts.tracing import decide_tracing

    manifests = rendered(render, "all-options")
    api = find(manifests, "Deployment", "docpipe-dp-api")["spec"]["template"]["spec"]
    pipeline = find(manifests, "DocumentPipeline")
    for env in (api["containers"][0]["env"], pipeline["spec"]["worker"]["extraEnv"]):
        values = {e["name"]: e["value"] for e in env if e["name"].startswith("OTEL_")}
        assert values["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
        assert values["OTEL_TRACES_SAMPLER_ARG"] == "0.25"
        assert values["OTEL_RESOURCE_ATTRIBUTES"] == f"k8s.namespace.name={NAMESPACE}"
        assert decide_tracing(values).enabled
    for _, spec in pod_specs(rendered(render, "default")):
        for container in spec["containers"]:
            assert not [e for e in container.get("env", []) if e["name"].startswith("OTEL_")]


# API installs the chart should accept, each with what `docpipe api` must then accept.
API_BASE = {"api.enabled": True, "api.databaseUrlSecretRef.name": "db"}
API_VALUE_SETS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "all-options": ((ALL_OPTIONS,), {}),
    "openai-hs256": (
        (),
        {**API_BASE, "api.jwtSecretRef.name": "jwt", "api.openaiApiKeySecretRef.name": "oa"},
    ),
    "openai-rs256": (
        (),
        {
            **API_BASE,
            "api.openaiApiKeySecretRef.name": "oa",
            "api.extraEnv[0].name": "DOCPIPE_API_JWT_JWKS_FILE",
            "api.extraEnv[0].value": "/keys/jwks.json",
        },
    ),
}
# A stand-in for every Secret's value: long enough for an HS256 secret, not the development one.
SECRET_STAND_IN = "chart-test-secret-" + "x" * 46


@pytest.mark.parametrize("value_set", sorted(API_VALUE_SETS))
def test_api_environment_is_a_configuration_docpipe_api_accepts(
    render: Callable[..., list[Manifest]], monkeypatch: pytest.MonkeyPatch, value_set: str
) -> None:
    from docpipe_api.settings import ApiSettings
    from docpipe_contracts.configuration import load_settings

    files, settings = API_VALUE_SETS[value_set]
    deployment = next(
        m
        for m in render(*files, **settings)
        if m["kind"] == "Deployment" and m["metadata"]["name"].endswith("-api")
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert [*container["command"], *container.get("args", [])] == ["docpipe", "api"]
    # Only what the chart sets: `docpipe api` in the pod sees nothing else of ours.
    for name in list(os.environ):
        if name.startswith(("DOCPIPE_", "OPENAI_")) or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    for entry in container["env"]:
        value = entry.get("value", SECRET_STAND_IN)
        assert "secretKeyRef" in entry.get("valueFrom", {}) or "value" in entry, entry
        monkeypatch.setenv(entry["name"], value)

    api = load_settings(ApiSettings)  # SettingsError names what `docpipe api` would refuse

    assert api.database_url == SECRET_STAND_IN
    assert str(api.port) == str(container["ports"][0]["containerPort"])
    if api.jwt_secret is not None:
        api.verification_keys()  # an HS256 secret the API can use


def test_api_without_a_token_key_is_refused_at_install(helm: str) -> None:
    settings = {**API_BASE, "api.openaiApiKeySecretRef.name": "oa"}
    done = run(helm_template_args(helm, settings=settings), check=False)
    assert done.returncode != 0
    assert "api.jwtSecretRef.name is required when api.enabled is true" in done.stderr


def test_api_needs_an_openai_key_unless_it_uses_the_mocks(helm: str) -> None:
    settings = {**API_BASE, "api.jwtSecretRef.name": "jwt"}
    done = run(helm_template_args(helm, settings=settings), check=False)
    assert done.returncode != 0
    assert "api.openaiApiKeySecretRef.name is required unless api.useMocks" in done.stderr


def test_images_default_to_the_chart_app_version(render: Callable[..., list[Manifest]]) -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    objects = render(
        **{"mocks.enabled": True, "examplePipeline.enabled": True, "migrations.enabled": True}
        | {"migrations.databaseUrlSecretRef.name": "db"}
    )
    # The CRD upgrade hook runs kubectl's own image (crds.kubectlImage).
    images = [
        c["image"]
        for where, s in pod_specs(objects)
        if not where.endswith("-crds")
        for c in s["containers"]
    ]
    images.append(find(objects, "DocumentPipeline")["spec"]["worker"]["image"])
    assert len(images) == 4
    assert all(image.endswith(f":{app_version}") for image in images), images


def test_pod_monitor_selects_the_worker_pods_the_operator_renders(
    render: Callable[..., list[Manifest]],
) -> None:
    monitor = find(render(**{"monitoring.podMonitor.enabled": True}), "PodMonitor")
    pod_labels = {
        worker_rendering.LABEL_COMPONENT: "worker",
        worker_rendering.LABEL_MANAGED_BY: "docpipe-operator",
        worker_rendering.LABEL_PIPELINE: "docs",
    }
    selector = monitor["spec"]["selector"]
    assert selector["matchLabels"].items() <= pod_labels.items()
    for expression in selector["matchExpressions"]:
        assert expression["operator"] == "Exists"
        assert expression["key"] in pod_labels
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == worker_rendering.METRICS_PORT_NAME


def test_service_monitor_scrapes_the_api_service_port(
    render: Callable[..., list[Manifest]],
) -> None:
    objects = rendered(render, "all-options")
    monitor = find(objects, "ServiceMonitor")
    service = find(objects, "Service", "docpipe-dp-api")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_pod_monitor_in_namespaced_scope_watches_only_those_namespaces(
    render: Callable[..., list[Manifest]],
) -> None:
    monitor = find(rendered(render, "all-options"), "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {
        "matchNames": ["docpipe-system", "team-a", "team-b"]
    }


def test_dashboard_config_map_holds_the_dashboard_for_the_sidecar(
    render: Callable[..., list[Manifest]],
) -> None:
    objects = render(**{"monitoring.dashboard.enabled": True})
    config_map = find(objects, "ConfigMap", "docpipe-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = (CHART / "dashboards" / "docpipe.json").read_text()
    assert json.loads(config_map["data"]["docpipe.json"]) == json.loads(dashboard)


def test_notes_name_the_operator_and_the_example_pipeline_secret(helm: str) -> None:
    args = [
        helm, "install", "docpipe", str(CHART), "--dry-run=client", "--namespace", NAMESPACE,
        "--values", ALL_OPTIONS,
    ]  # fmt: skip
    notes = run(args).stdout.split("NOTES:", 1)[1]
    assert "deployment/docpipe-dp-operator" in notes
    assert "in: docpipe-system,team-a,team-b" in notes
    assert "create secret generic docpipe-db" in notes
