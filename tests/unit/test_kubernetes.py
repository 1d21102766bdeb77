"""deploy/kubernetes/: every manifest valid against the Kubernetes schemas (kubernetes-validate,
strict: an unknown or misspelt field fails), and the parts agreeing with each other and with the
gateway: probes on the right paths, a termination grace above the drain, selectors that select
the pods, settings that exist."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.settings import Settings

FOLDER = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())  # oldest supported, newest known


def manifests() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((FOLDER / "kustomization.yaml").read_text(encoding="utf-8"))
    found = []
    for name in kustomization["resources"]:
        found.extend(yaml.safe_load_all((FOLDER / name).read_text(encoding="utf-8")))
    return found


def by_kind(kind: str) -> dict[str, Any]:
    (found,) = [manifest for manifest in manifests() if manifest["kind"] == kind]
    return found


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((FOLDER / "kustomization.yaml").read_text())["resources"])
    present = {path.name for path in FOLDER.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    assert {m["kind"] for m in manifests()} == {"Deployment", "Service", "PodDisruptionBudget"}


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid(version: str) -> None:
    for manifest in manifests():
        kubernetes_validate.validate(manifest, version, strict=True)


def test_a_misspelt_field_is_caught() -> None:
    """The validation above can fail: strict mode refuses an unknown field."""
    deployment = by_kind("Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def _container() -> dict[str, Any]:
    (container,) = by_kind("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _env() -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in _container()["env"]}


def test_probes_use_readiness_for_traffic_and_liveness_for_the_process() -> None:
    container = _container()
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    port_names = {port["name"] for port in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in port_names


def test_termination_grace_outlasts_the_pause_and_the_drain() -> None:
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    drain = float(_env()["RTGW_SHUTDOWN_GRACE_S"]["value"])
    pause = _container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pause + drain


def test_every_setting_exists_and_secrets_come_from_a_secret() -> None:
    env = _env()
    fields = Settings.model_fields
    unknown = {name for name in env if name.removeprefix("RTGW_").lower() not in fields}
    assert not unknown, f"not fields of gateway.settings.Settings: {sorted(unknown)}"
    for secret in ("RTGW_DATABASE_URL", "RTGW_JWT_SECRET", "RTGW_REDIS_URL"):
        assert "value" not in env[secret] and env[secret]["valueFrom"]["secretKeyRef"]["name"]
    assert env["RTGW_BUS"]["value"] == "redis"
    assert env["RTGW_CHANNELS"]["value"] in {m["mountPath"] for m in _container()["volumeMounts"]}


def test_selectors_select_the_gateway_pods() -> None:
    deployment = by_kind("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    budget = by_kind("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = by_kind("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"].get("sessionAffinity", "None") == "None"  # no sticky sessions
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in _container()["ports"]}


def test_a_disruption_leaves_a_replica_serving() -> None:
    replicas = by_kind("Deployment")["spec"]["replicas"]
    assert by_kind("PodDisruptionBudget")["spec"]["maxUnavailable"] < replicas
    assert by_kind("Deployment")["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
