"""Every overlay rendered and checked offline: the Kubernetes schemas, and the gateway itself.

The schemas are kubernetes-validate's (strict: an unknown field is an error) for the oldest
Kubernetes these manifests support and the newest it ships; ServiceMonitor and PrometheusRule
go through the vendored Prometheus Operator schemas (``deploy.crds``). Then what no schema
knows: that the probes and the scrape ask routes the app serves, that every variable is a
setting the app reads (pydantic-settings ignores unknown ones), that the selectors select the
pods, that the drain fits in the grace period, and that no overlay carries a real secret.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import kubernetes_validate
import pytest
from pydantic import BaseModel

from app.main import create_app
from app.settings import Settings
from deploy import crds
from deploy.kustomize import Resource

from .conftest import OVERLAYS, ROOT

KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]  # the oldest supported; the newest schemas shipped
PLACEHOLDER = "CHANGE-ME"
# Variables read by the OpenTelemetry SDK rather than by Settings (README, "Observability").
OTEL_VARIABLES = {
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
}
# Read by `cachegw serve` itself (app/cli.py): where it listens and how many workers it runs.
SERVE_VARIABLES = {"PORT", "WORKERS", "HOST"}
REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
DRAIN_MARGIN_S = 5  # for the lifespan's shutdown after uvicorn's drain


def _all(rendered: dict[str, list[Resource]]) -> Iterator[tuple[str, Resource]]:
    for overlay, resources in rendered.items():
        for resource in resources:
            yield overlay, resource


def _one(resources: list[Resource], kind: str, component: str = "gateway") -> Resource:
    (found,) = [
        r
        for r in resources
        if r["kind"] == kind
        and r["metadata"]["labels"].get("app.kubernetes.io/component", component) == component
    ]
    return found


def _pod_specs(resources: list[Resource]) -> Iterator[tuple[str, dict[str, Any]]]:
    for resource in resources:
        template = resource.get("spec", {}).get("template")
        if template is not None:
            yield resource["kind"], template["spec"]


def _gateway(resources: list[Resource]) -> dict[str, Any]:
    (container,) = _one(resources, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def test_every_overlay_renders(rendered: dict[str, list[Resource]]) -> None:
    assert {o.name for o in OVERLAYS} == {"dev", "production"}
    kinds = {"Deployment", "Service", "PodDisruptionBudget", "Job"}
    for resources in rendered.values():
        assert kinds <= {r["kind"] for r in resources}
        assert "HorizontalPodAutoscaler" in {r["kind"] for r in resources}
    assert {"ServiceMonitor", "PrometheusRule"} <= {r["kind"] for r in rendered["production"]}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_built_in_kinds_match_the_kubernetes_schemas(
    rendered: dict[str, list[Resource]], version: str
) -> None:
    checked = 0
    for overlay, resource in _all(rendered):
        if resource["kind"] in crds.KINDS:
            continue
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(part) for part in exc.absolute_path)
            name = f"{resource['kind']}/{resource['metadata']['name']}"
            pytest.fail(f"{overlay} {name} ({version}): {where}: {exc.message}", pytrace=False)
        checked += 1
    assert checked >= 14


def test_a_wrong_field_fails_the_kubernetes_schema(rendered: dict[str, list[Resource]]) -> None:
    deployment = copy.deepcopy(_one(rendered["production"], "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_operator_kinds_match_the_vendored_schemas(rendered: dict[str, list[Resource]]) -> None:
    checked = 0
    for overlay, resource in _all(rendered):
        if resource["kind"] in crds.KINDS:
            assert crds.errors(resource) == [], (overlay, resource["kind"])
            checked += 1
    assert checked == 2


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    # No lifespan: the routes are there without a gateway behind them.
    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield client


async def test_probes_and_scrape_ask_routes_the_app_serves(
    rendered: dict[str, list[Resource]], http: httpx.AsyncClient
) -> None:
    paths = (await http.get("/openapi.json")).json()["paths"]
    for resources in rendered.values():
        gateway = _gateway(resources)
        port_names = {p["name"]: p["containerPort"] for p in gateway["ports"]}
        assert port_names == {"http": 8000}
        probes = {
            name: gateway[name]["httpGet"]
            for name in ("startupProbe", "livenessProbe", "readinessProbe")
        }
        assert {name: p["path"] for name, p in probes.items()} == {
            "startupProbe": "/livez",
            "livenessProbe": "/livez",
            "readinessProbe": "/readyz",
        }
        for probe in probes.values():
            assert probe["port"] in port_names
            assert "get" in paths[probe["path"]]
        for monitor in (r for r in resources if r["kind"] == "ServiceMonitor"):
            for endpoint in monitor["spec"]["endpoints"]:
                assert endpoint["port"] in {
                    p["name"] for p in _one(resources, "Service")["spec"]["ports"]
                }
                response = await http.get(endpoint["path"])
                assert response.status_code == 200
                assert "redis_fallback_routing_attempts_total" in response.text


def _field_path(name: str) -> list[str]:
    """The Settings fields a CACHEGW_ variable sets, or AssertionError when it sets none."""
    parts = name.removeprefix("CACHEGW_").lower().split("__")
    model: type[BaseModel] = Settings
    for i, part in enumerate(parts):
        assert part in model.model_fields, f"{name}: {part!r} is not a setting"
        annotation = model.model_fields[part].annotation
        if i < len(parts) - 1:
            assert isinstance(annotation, type), name
            assert issubclass(annotation, BaseModel), name
            model = annotation
    return parts


def _env_values(env: list[dict[str, Any]]) -> dict[str, str]:
    """The variables as the pod would see them; Secret references get a stand-in value."""
    values = {}
    for var in env:
        if "value" in var:
            values[var["name"]] = var["value"]
        elif "secretKeyRef" in var["valueFrom"]:
            stand_in = "postgresql://u:p@db:5432/d" if var["name"].endswith("DSN") else "s"
            values[var["name"]] = stand_in
    return values


@pytest.mark.parametrize("overlay", [o.name for o in OVERLAYS])
def test_every_variable_is_a_setting_and_loads(
    rendered: dict[str, list[Resource]], overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for kind, pod in _pod_specs(rendered[overlay]):
        (container,) = pod["containers"]
        env = container["env"]
        names = [var["name"] for var in env]
        assert len(names) == len(set(names)), f"{kind}: a variable is set twice"
        referenced = {ref for var in env for ref in REFERENCE.findall(var.get("value", ""))}
        for i, var in enumerate(env):
            # $(NAME) expands only to a variable defined before it.
            for ref in REFERENCE.findall(var.get("value", "")):
                assert ref in names[:i], f"{kind}: {var['name']} uses $({ref}) before it is set"
            if var["name"].startswith("CACHEGW_"):
                _field_path(var["name"])
            else:
                assert var["name"] in OTEL_VARIABLES | SERVE_VARIABLES | referenced, var["name"]
        for name in list(os.environ):
            if name.upper().startswith("CACHEGW_"):
                monkeypatch.delenv(name)
        values = _env_values(env)
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        settings = Settings()
        for name, value in values.items():
            if not name.startswith("CACHEGW_"):
                continue
            got: Any = settings
            for part in _field_path(name):
                got = getattr(got, part)
            shown = got.get_secret_value() if hasattr(got, "get_secret_value") else got
            if isinstance(shown, float):
                assert shown == float(value), name
            else:
                assert str(shown).lower() == value.lower(), name


def test_the_command_is_the_images_with_a_bounded_drain(
    rendered: dict[str, list[Resource]],
) -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    (cmd,) = [line for line in dockerfile.splitlines() if line.startswith("CMD [")]
    image_command = json.loads(cmd.removeprefix("CMD "))
    for resources in rendered.values():
        deployment = _one(resources, "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        gateway = _gateway(resources)
        assert gateway["command"] == image_command
        env = {item["name"]: item.get("value") for item in gateway["env"]}
        server = Settings(
            server={
                "drain_pause_s": env["CACHEGW_SERVER__DRAIN_PAUSE_S"],
                "graceful_timeout_s": env["CACHEGW_SERVER__GRACEFUL_TIMEOUT_S"],
            }
        ).server
        pre_stop = gateway["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        pause_s = int(pre_stop[1])
        assert pause_s >= 5  # endpoint removal reaches every node's proxy in a few seconds
        assert server.drain_pause_s == 0  # the preStop hook pauses; a second pause only delays
        assert pod["terminationGracePeriodSeconds"] >= (
            pause_s + server.drain_pause_s + server.graceful_timeout_s + DRAIN_MARGIN_S
        )


def test_the_pods_run_as_the_image_user_read_only(rendered: dict[str, list[Resource]]) -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "USER 10001:10001" in dockerfile
    for _overlay, resource in _all(rendered):
        template = resource.get("spec", {}).get("template")
        if template is None:
            continue
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["automountServiceAccountToken"] is False
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts
            assert set(mounts.values()) <= volumes
            assert container["resources"]["limits"]["memory"]
            assert container["resources"]["requests"]["cpu"]


def test_the_migration_job_runs_the_projects_command(rendered: dict[str, list[Resource]]) -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    # `python -m app.cli` finds alembic.ini beside the app/ it imports from the working directory.
    assert "WORKDIR /app" in dockerfile
    assert "COPY alembic.ini ./" in dockerfile
    for resources in rendered.values():
        job = _one(resources, "Job", component="migration")
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["python", "-m", "app.cli", "migrate", "up"]
        assert container["workingDir"] == "/app"
        assert container["image"] == _gateway(resources)["image"]
        # Applied alone, first: nothing it needs may come from the rest of the overlay.
        assert "serviceAccountName" not in job["spec"]["template"]["spec"]
        gateway_dsn = next(v for v in _gateway(resources)["env"] if v["name"] == "CACHEGW_PG__DSN")
        assert gateway_dsn in container["env"]


def test_selectors_select_the_gateway_pods(rendered: dict[str, list[Resource]]) -> None:
    for resources in rendered.values():
        deployment = _one(resources, "Deployment")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items()
        service = _one(resources, "Service")
        assert service["spec"]["selector"] == selector
        assert _one(resources, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
        for constraint in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]:
            assert constraint["labelSelector"]["matchLabels"] == selector
        for monitor in (r for r in resources if r["kind"] == "ServiceMonitor"):
            assert monitor["spec"]["selector"]["matchLabels"].items() <= (
                service["metadata"]["labels"].items()
            )
        port_names = {p["name"] for p in _gateway(resources)["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names


def test_the_autoscaler_owns_the_replica_count(rendered: dict[str, list[Resource]]) -> None:
    for resources in rendered.values():
        deployment = _one(resources, "Deployment")
        hpa = _one(resources, "HorizontalPodAutoscaler")
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
        # A replicas field would reset the autoscaler's count on every apply.
        assert "replicas" not in deployment["spec"]
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert "cpu" in _gateway(resources)["resources"]["requests"]  # utilisation is of this
    production = _one(rendered["production"], "HorizontalPodAutoscaler")["spec"]
    assert (production["minReplicas"], production["maxReplicas"]) == (3, 20)


def test_no_overlay_carries_a_real_secret(rendered: dict[str, list[Resource]]) -> None:
    assert not [r for r in rendered["production"] if r["kind"] == "Secret"]
    for overlay, resource in _all(rendered):
        if resource["kind"] != "Secret":
            continue
        assert "data" not in resource, overlay  # placeholders are readable stringData
        for key, value in resource["stringData"].items():
            assert PLACEHOLDER in value, f"{overlay} {resource['metadata']['name']}/{key}"


def test_dev_has_every_secret_it_references(rendered: dict[str, list[Resource]]) -> None:
    secrets = {
        (r["metadata"]["name"], key)
        for r in rendered["dev"]
        if r["kind"] == "Secret"
        for key in r["stringData"]
    }
    for _kind, pod in _pod_specs(rendered["dev"]):
        for container in pod["containers"]:
            for var in container["env"]:
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None and not ref.get("optional"):
                    assert (ref["name"], ref["key"]) in secrets, var["name"]
