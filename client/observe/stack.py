"""The observability processes: the span collector and Prometheus on loopback, for the
tests (free ports, a temporary folder) and ``make observe`` (fixed ports, ``build/observe``).

Prometheus's scrape config is rendered by :func:`prometheus_config` from the targets; the
committed ``deploy/prometheus/prometheus.yml`` is that render for the default ports (a unit
test keeps them one), so an operator deploys what the tests scraped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from client.local.services import running, wait_http
from python_backend import settings, tracing
from python_backend.paths import MESH_STATE, OBSERVE, ROOT

RULES = ROOT / "deploy" / "prometheus" / "fraud.rules.yml"
PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"
#: Scrape jobs: what each one scrapes (the image API serves ``/metrics`` too).
JOBS = ("triton", "stream-consumer", "watchdog", "fraud-analysis", "image-api", "envoy")
#: Where a job's metrics are when not at ``/metrics`` (Envoy's admin interface).
METRICS_PATHS = {"envoy": "/stats/prometheus"}


def default_targets(mesh_state: Path | None = None) -> dict[str, list[str]]:
    """The jobs' targets on one machine with the default ports; with ``make serve
    REPLICAS=N`` running (its ``mesh.json``), each replica's and watchdog's ports."""
    targets = {
        "triton": [f"127.0.0.1:{settings.TRITON_METRICS_PORT.get()}"],
        "stream-consumer": [f"127.0.0.1:{settings.CONSUMER_METRICS_PORT.get()}"],
        "watchdog": [f"127.0.0.1:{settings.WATCHDOG_METRICS_PORT.get()}"],
        "fraud-analysis": [f"127.0.0.1:{settings.ANALYSIS_METRICS_PORT.get()}"],
        "image-api": [f"127.0.0.1:{settings.IMAGE_API_PORT.get()}"],
        "envoy": [f"127.0.0.1:{settings.ENVOY_ADMIN_PORT.get()}"],
    }
    if mesh_state is not None and mesh_state.exists():
        replicas = json.loads(mesh_state.read_text())["replicas"]
        targets["triton"] = [f"127.0.0.1:{r['metrics']}" for r in replicas]
        targets["watchdog"] = [f"127.0.0.1:{r['watchdog_metrics']}" for r in replicas]
    return targets


def prometheus_config(
    targets: dict[str, list[str]], interval_s: float = 5, rules: Path | str = RULES
) -> dict:
    """A Prometheus config scraping ``targets`` (by job) every ``interval_s``, evaluating
    the project's rules as often."""
    return {
        "global": {
            "scrape_interval": f"{interval_s:g}s",
            "evaluation_interval": f"{interval_s:g}s",
        },
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": job,
                **({"metrics_path": METRICS_PATHS[job]} if job in METRICS_PATHS else {}),
                "static_configs": [{"targets": targets[job]}],
            }
            for job in JOBS
            if targets.get(job)
        ],
    }


def committed_config_text() -> str:
    """What ``deploy/prometheus/prometheus.yml`` holds: the render for the default ports,
    with the rules beside it."""
    config = prometheus_config(default_targets(), rules="fraud.rules.yml")
    header = (
        "# Prometheus scraping the fraud service on one machine (the default ports), rendered\n"
        "# by client/observe/stack.py:prometheus_config (a unit test keeps them one). In a\n"
        "# cluster the chart's ServiceMonitor / pod annotations replace the static targets.\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False)


@dataclass
class Process:
    name: str
    port: int
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        from client.local.services import stop_process

        stop_process(self.process, grace_s=5)


def start_collector(port: int, folder: Path, detach: bool = False) -> Process:
    """``python -m client collector`` on ``127.0.0.1:port``, spans into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "collector.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "client", "collector", "--port", str(port), "--spans", folder],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=detach,
        )
    wait_http(f"http://127.0.0.1:{port}/health", process, "the span collector", log, None, 30, 0.1)
    return Process("collector", port, process, log)


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise FileNotFoundError(
            "prometheus not found: run `make setup` (it installs Debian's prometheus package)"
        )
    return found


def start_prometheus(
    port: int,
    folder: Path,
    targets: dict[str, list[str]],
    interval_s: float = 5,
    detach: bool = False,
) -> Process:
    """Prometheus on ``127.0.0.1:port`` with the project's rules, its data in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(targets, interval_s), sort_keys=False))
    log = folder / "prometheus.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={folder / 'data'}",
                "--storage.tsdb.retention.time=2d",
                "--web.enable-lifecycle",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=detach,
        )
    wait_http(f"http://127.0.0.1:{port}/-/ready", process, "Prometheus", log, None, 30, 0.1)
    return Process("prometheus", port, process, log)


# --- make observe -------------------------------------------------------------------------

PIDS = OBSERVE / "pids.json"


def start_beside_serve(log=print) -> None:
    """``make observe``: the collector (OTLP/HTTP on the port of
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, 4318) and
    Prometheus (``PROMETHEUS_PORT``, 9090) scraping ``make serve``'s Triton, its watchdog,
    a stream consumer, the analysis consumer and the image API on their default ports;
    stopped by ``make stop``."""
    from client.observe import dashboards, traces

    if PIDS.exists() and any(running(p) for p in json.loads(PIDS.read_text()).values()):
        raise RuntimeError(f"observability already running ({PIDS}): `make stop` first")
    collector_port = tracing.endpoint_port(tracing.endpoint())
    prometheus_port = settings.PROMETHEUS_PORT.get_int()
    collector = start_collector(collector_port, traces.SPANS_DIR, detach=True)
    prometheus = start_prometheus(
        prometheus_port, OBSERVE / "prometheus", default_targets(MESH_STATE), detach=True
    )
    PIDS.write_text(
        json.dumps({"collector": collector.process.pid, "prometheus": prometheus.process.pid})
    )
    endpoint = settings.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT.get()
    log(
        f"collector: {endpoint} -> {traces.SPANS_DIR / 'spans.jsonl'}\n"
        f"Prometheus: http://127.0.0.1:{prometheus_port}/ (rules and alerts: /rules, /alerts;"
        f" targets: /targets)\n"
        f"dashboards: {dashboards.DASHBOARDS} (Grafana JSON; provisioning in "
        f"{dashboards.PROVISIONING})\n"
        "trace a decision: `.venv/bin/python -m client score --card-id 1 --terminal-id 1 "
        "--amount 20 --trace`, then `python -m client trace <its id>`\n"
        "sample a share of a load: TRACE_SAMPLE=0.01 (the Python clients); `make trace-report`"
        " aggregates a traced load run\n"
        "stop: `make stop`"
    )


def stop(log=print) -> None:
    """Stop what :func:`start_beside_serve` started."""
    if not PIDS.exists():
        return
    for name, pid in json.loads(PIDS.read_text()).items():
        if running(pid):
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            log(f"stopped the {name} (pid {pid})")
    PIDS.unlink()
