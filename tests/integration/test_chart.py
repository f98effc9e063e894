"""The Helm chart validated offline: helm lint and template, every rendered manifest through
kubernetes-validate (strict), the rendered Envoy configuration through Envoy itself, the
operators' resources checked for what they point at, and checkov with every skip named."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml

from client import chart
from client.local.operator import RESTRICTED

#: Variants an operator would install: the defaults; GPU nodes, TLS, KEDA, Redis Cluster, no
#: image API; everything optional off.
VARIANTS = {
    "defaults": {},
    "gpu-tls-keda": {
        "triton": {"gpu": {"enabled": True}},
        "envoy": {"tls": {"enabled": True, "secretName": "callers-tls"}},
        "autoscaling": {"kind": "keda"},
        "redis": {"cluster": True, "url": "redis://redis-0:6379"},
        "imageApi": {"enabled": False},
    },
    "minimal": {
        "autoscaling": {"enabled": False},
        "networkPolicy": {"enabled": False},
        "monitoring": {"serviceMonitor": False, "prometheusRule": False, "dashboards": False},
        "consumer": {"enabled": False},
        "operatorKey": {"existingSecret": "ops-key"},
    },
}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: chart.template(values) for name, values in VARIANTS.items()}


def _one(manifests: list[dict], kind: str, suffix: str = "") -> dict:
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, (kind, suffix, [m["metadata"]["name"] for m in found])
    return found[0]


def test_the_chart_carries_its_files_from_their_one_source() -> None:
    assert chart.stale() == [], "run `python -m client.chart` (files/ differ from their source)"


def test_helm_lint_passes() -> None:
    for values in VARIANTS.values():
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            yaml.safe_dump(values, f)
            f.flush()
            done = chart.helm("lint", str(chart.CHART), "-f", f.name, "--strict")
        assert "0 chart(s) failed" in done.stdout, done.stdout


def test_every_rendered_manifest_is_valid_kubernetes(rendered) -> None:
    for name, manifests in rendered.items():
        done = chart.kubernetes_validate(manifests)
        assert done.returncode == 0, (name, done.stdout[-3000:], done.stderr[-2000:])


def test_kubernetes_validate_catches_a_bad_manifest(rendered) -> None:
    broken = [dict(m) for m in rendered["defaults"]]
    deployment = next(m for m in broken if m["kind"] == "Deployment")
    deployment["spec"] = {**deployment["spec"], "replicaz": 2}
    assert chart.kubernetes_validate(broken).returncode != 0, "a typo went through"


def test_triton_pods_restrict_the_admin_apis_and_probe_readiness(rendered) -> None:
    for name, manifests in rendered.items():
        pod = _one(manifests, "Deployment", "-triton")["spec"]["template"]["spec"]
        triton = pod["containers"][0]
        args = triton["args"]
        restricted = ",".join(RESTRICTED)
        assert f"--grpc-restricted-protocol={restricted}:operator-key=$(OPERATOR_KEY)" in args
        assert f"--http-restricted-api={restricted}:operator-key=$(OPERATOR_KEY)" in args
        assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert triton["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
        assert pod["initContainers"][0]["name"] == "models"
        gpu = triton["resources"]["limits"].get("nvidia.com/gpu")
        assert (gpu == 1) == (name == "gpu-tls-keda"), (name, triton["resources"])
        if name == "gpu-tls-keda":
            assert "nvidia.com/gpu.present" in pod["nodeSelector"]
            assert "--load-model=image_pipeline" not in args
        if name == "defaults":
            assert "--load-model=image_pipeline" in args


def test_envoy_runs_the_configuration_the_local_mesh_is_rendered_from(rendered, tmp_path) -> None:
    from client.mesh import envoy
    from client.mesh.config import per_try_timeout_s

    for name in ("defaults", "gpu-tls-keda"):
        config = _one(rendered[name], "ConfigMap", "-envoy")["data"]["envoy.yaml"]
        parsed = yaml.safe_load(config)
        cluster = parsed["static_resources"]["clusters"][0]
        (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        address = endpoint["endpoint"]["address"]["socket_address"]["address"]
        assert address == "fraud-fraud-scoring-triton-headless.fraud.svc.cluster.local"
        routes = str(parsed["static_resources"]["listeners"][0])
        assert f"{per_try_timeout_s(95):.3f}s" in routes and "ModelInfer" in routes
        if name == "defaults":  # the TLS variant needs its certificate files to validate
            path = tmp_path / f"{name}.yaml"
            path.write_text(config)
            envoy.validate(path)
        else:
            assert "/etc/envoy/tls/tls.crt" in config


def test_the_operators_resources_point_at_what_exists(rendered) -> None:
    manifests = rendered["defaults"]
    ports = {p["name"] for m in manifests if m["kind"] == "Service" for p in m["spec"]["ports"]}
    monitor = _one(manifests, "ServiceMonitor")
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    rule = _one(manifests, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(chart.RULES.read_text())
    dashboards = _one(manifests, "ConfigMap", "-dashboards")["data"]
    assert set(dashboards) == {p.name for p in chart.DASHBOARDS.glob("*.json")}
    hpa = _one(manifests, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"].endswith("-triton")
    scaled = _one(rendered["gpu-tls-keda"], "ScaledObject")
    assert (
        "triton:queue_us_per_request:rate1m" in scaled["spec"]["triggers"][0]["metadata"]["query"]
    )
    recorded = {r.get("record") for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "triton:queue_us_per_request:rate1m" in recorded, "the autoscaler's metric is recorded"
    for name, manifests in rendered.items():
        kinds = {m["kind"] for m in manifests}
        assert "PodDisruptionBudget" in kinds, name
        assert ("NetworkPolicy" in kinds) == (name != "minimal"), name
        for service in (m for m in manifests if m["kind"] == "Service"):
            if service["metadata"]["name"].endswith("-envoy"):
                assert [p["port"] for p in service["spec"]["ports"]] == [8001], "callers only"


def test_checkov_passes_with_every_skip_named_and_needed() -> None:
    report = chart.checkov()
    assert chart.failed_checks(report) == [], chart.failed_checks(report)
    # Each skip is for a check that does fail without it: none is kept out of habit.
    unskipped = chart.checkov(skip=False)
    failing = {c.split()[0] for c in chart.failed_checks(unskipped)}
    assert failing == set(chart.SKIPPED_CHECKS), failing ^ set(chart.SKIPPED_CHECKS)
    for check, reason in chart.SKIPPED_CHECKS.items():
        assert len(reason) > 40, check
        assert check in Path(chart.CHART.parent / "README.md").read_text(), check
