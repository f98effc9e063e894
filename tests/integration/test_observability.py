"""Traces, metrics and dashboards against real processes: the span collector, a Triton server
traced in OpenTelemetry mode, Redis, the Kafka-protocol broker, the stream consumer as a
process (with its metrics), the stub watchdog, and Prometheus scraping them all with the
project's rules."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from client.local.operator import admin_client
from client.observe import dashboards, promql, stack, traces
from python_backend.paths import ROOT
from tests.support import wait_for_live_panels, wait_until

TOPIC = "transactions-observe-test"


@dataclass
class Observed:
    server: object
    client: object
    spans: Path
    prometheus_port: int
    metrics_url: str


def _row(i: int, card: int = 1) -> dict:
    return {
        "transaction_id": f"obs-{uuid.uuid4().hex[:10]}-{i}",
        "card_id": card,
        "terminal_id": 1 + i % 5,
        "amount": 12.5 + i,
        "ts_ms": int(time.time() * 1000),
    }


@pytest.fixture(scope="module")
def observed(tiny_build, tmp_path_factory, redis_service, kafka_service):
    from client.launcher import warm_up
    from client.local.services import child_environment, free_port, stop_process
    from client.local.triton import Ports, running
    from client.scoring import FraudClient
    from feature_repo.store import StoreSettings, fill
    from tests.conftest import serving_repository

    root = tmp_path_factory.mktemp("observe")
    spans = root / "spans"
    collector = stack.start_collector(free_port(), spans)
    endpoint = f"http://127.0.0.1:{collector.port}/v1/traces"
    data_dir = tiny_build.build_dir / "data" / "tiny"
    redis_url = f"redis://127.0.0.1:{redis_service.port}/4"
    settings = StoreSettings.from_env(
        kind="redis", redis_url=redis_url, data_dir=data_dir, repo_dir=root / "features"
    )
    bootstrap = f"127.0.0.1:{kafka_service.port}"
    env = {
        **fill(settings, log=lambda _m: None),
        "KAFKA_BOOTSTRAP": bootstrap,
        "SCORED_TOPIC": TOPIC,
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint,
    }
    consumer_port, watchdog_port = free_port(), free_port()
    ready = root / "consumer.ready"
    consumer_env = child_environment(
        {
            **env,
            "FEATURE_STORE": "redis",
            "REDIS_URL": redis_url,
            "FEATURE_DATA": str(data_dir),
            "FEATURE_REPO_DIR": str(root / "features"),
        }
    )
    consumer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "feature_repo",
            "consume",
            "--topic",
            TOPIC,
            "--group",
            f"observe-{uuid.uuid4().hex[:6]}",
            "--metrics-port",
            str(consumer_port),
            "--ready-file",
            str(ready),
        ],
        cwd=ROOT,
        env=consumer_env,
        stdout=(root / "consumer.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = endpoint  # the client's spans too
    ports = Ports.free()
    try:
        with running(
            repository=serving_repository(tiny_build, root, primary="triton"),
            ports=ports,
            env=env,
            log_path=root / "server.log",
            watchdog=True,
            watchdog_metrics_port=watchdog_port,
        ) as server:
            warm_up(server)

            def assigned() -> bool:
                assert consumer.poll() is None, (root / "consumer.log").read_text()[-3000:]
                return ready.exists()

            wait_until(assigned, 90, what="the consumer's partitions", interval_s=0.2)
            prometheus = stack.start_prometheus(
                free_port(),
                root / "prometheus",
                {
                    "triton": [f"127.0.0.1:{ports.metrics}"],
                    "stream-consumer": [f"127.0.0.1:{consumer_port}"],
                    "watchdog": [f"127.0.0.1:{watchdog_port}"],
                },
                interval_s=1,
            )
            client = FraudClient(server.grpc_url)
            try:
                yield Observed(
                    server,
                    client,
                    spans,
                    prometheus.port,
                    f"http://127.0.0.1:{ports.metrics}/metrics",
                )
            finally:
                client.close()
                prometheus.stop()
    finally:
        os.environ.pop("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None)
        stop_process(consumer, grace_s=10)
        collector.stop()


def _wait_for_trace(folder: Path, transaction_id: str, names: set[str], timeout_s: float = 30):
    """The spans of ``transaction_id`` once every one of ``names`` is among them."""

    def spans() -> list[dict]:
        return traces.find_decision(traces.load(folder), transaction_id) or []

    def complete() -> list[dict] | None:
        found = spans()
        return found if names <= {s["name"] for s in found} else None

    def missing() -> str:
        seen = {s["name"] for s in spans()}
        return f"spans of {transaction_id} (missing {sorted(names - seen)}; seen {sorted(seen)})"

    return wait_until(complete, timeout_s, what=missing, interval_s=0.3)


EVERY_SPAN = {
    "client.score",
    "InferRequest",
    "fraud_scoring",
    "compute",
    "fraud.bls",
    "fraud.inputs",
    "fraud.validate",
    "fraud.features",
    "store.redis",
    "fraud.primary",
    "fraud_primary",
    "fraud.rules",
    "fraud.respond",
    "fraud.publish",
    "kafka.queued",
    "stream.apply",
}


def test_a_decision_is_one_trace_from_client_to_consumer(observed) -> None:
    from python_backend import tracing

    row = _row(0)
    for i in range(5):  # warm, untraced: only the traced request is exported
        observed.client.score([_row(100 + i)], trace=False)
    (decision,) = observed.client.score([row], trace=True)
    assert decision.trace_id is not None
    tracing.tracer("fraud-client").flush()
    trace = _wait_for_trace(observed.spans, row["transaction_id"], EVERY_SPAN)
    assert {s["trace_id"] for s in trace} == {decision.trace_id}
    by_name = {s["name"]: s for s in trace}
    parent = {s["span_id"]: s["name"] for s in trace}
    # Client -> Triton's gRPC span -> the model span; the BLS's spans and the primary's
    # Triton span under the model span; the consumer's under the BLS's publish span.
    assert parent[by_name["InferRequest"]["parent_id"]] == "client.score"
    assert parent[by_name["fraud_scoring"]["parent_id"]] == "InferRequest"
    assert parent[by_name["fraud.bls"]["parent_id"]] == "fraud_scoring"
    assert parent[by_name["fraud_primary"]["parent_id"]] == "fraud_scoring"
    assert parent[by_name["fraud.features"]["parent_id"]] == "fraud.bls"
    assert parent[by_name["store.redis"]["parent_id"]] == "fraud.features"
    assert parent[by_name["stream.apply"]["parent_id"]] == "fraud.publish"
    assert by_name["fraud.bls"]["service"] == "fraud-scoring"
    assert by_name["stream.apply"]["service"] == "fraud-stream-consumer"
    # Untraced requests left nothing behind: every stored client span is a traced one.
    stored = traces.load(observed.spans)
    assert len([s for s in stored if s["name"] == "client.score"]) >= 1
    assert not traces.find_decision(stored, "obs-never-sent")


def test_trace_stages_agree_with_stage_us_and_cover_the_latency(observed) -> None:
    from python_backend import tracing

    rows = [_row(i) for i in range(3)]
    (decision, *_rest) = observed.client.score(rows, trace=True)
    tracing.tracer("fraud-client").flush()
    trace = _wait_for_trace(
        observed.spans, rows[0]["transaction_id"], EVERY_SPAN - {"stream.apply"}
    )
    found = traces.stages(trace)
    # The same clock stamps make STAGE_US and the spans: they agree to rounding.
    assert found.stage_us["features"] == pytest.approx(decision.stage_us["features"], abs=50)
    assert found.stage_us["rules"] == pytest.approx(decision.stage_us["rules"], abs=50)
    assert found.client_stage_us["features"] == decision.stage_us["features"]
    # The primary's queue and compute are inside the BLS's wait on it.
    assert found.stage_us["primary_queue"] + found.stage_us["primary_compute"] <= (
        found.stage_us["primary"] + 50
    )
    # Request in, Triton's queue, the BLS's compute and the response out: consecutive
    # parts that make up the client's latency (what is left is the client's own work).
    covered = traces.coverage(found)
    assert covered is not None and 0.75 <= covered <= 1.01, (covered, found.stage_us)


def _traced_completely(observed, i: int) -> dict:
    """A transaction scored with a trace and every span of it collected. Once in a clean-
    clone CI run (2026-12-07) Triton exported no span at all for a traced request (only the
    client's arrived; the same code passed the run before and locally): that is a lost trace,
    not what the trace command is tested for, so a second traced request is sent; two lost
    in a row fail."""
    from python_backend import tracing

    for attempt in range(2):
        row = _row(i + 100 * attempt)
        observed.client.score([row], trace=True)
        tracing.tracer("fraud-client").flush()
        try:
            _wait_for_trace(observed.spans, row["transaction_id"], EVERY_SPAN, timeout_s=20)
            return row
        except pytest.fail.Exception:
            if attempt:
                raise
            print(f"trace of {row['transaction_id']} lost; tracing another request")
    raise AssertionError("unreachable")


def test_trace_command_prints_a_waterfall_and_draws_it(observed, tmp_path, capsys) -> None:
    from client.__main__ import main

    row = _traced_completely(observed, 7)
    png = tmp_path / "waterfall.png"
    code = main(["trace", row["transaction_id"], "--spans", str(observed.spans), "--png", str(png)])
    out = capsys.readouterr().out
    assert code == 0
    for name in (
        "client.score",
        "fraud_scoring",
        "fraud.features",
        "fraud_primary",
        "stream.apply",
    ):
        assert name in out
    assert png.stat().st_size > 10_000
    assert main(["trace", "obs-never-sent", "--spans", str(observed.spans)]) == 1
    assert "was it traced" in capsys.readouterr().err


def _metric_sum(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def test_metrics_reach_triton_while_the_server_idles(observed) -> None:
    # Whatever earlier tests counted is flushed: an absence, with no event to wait for.
    time.sleep(2.5)
    before = _metric_sum(observed.metrics_url, "fraud_decisions_total")
    histogram_before = _metric_sum(observed.metrics_url, "fraud_decision_seconds_count")
    observed.client.score([_row(i) for i in range(4)])
    observed.client.score([_row(10 + i) for i in range(3)])

    def counted() -> tuple[float, float]:
        return (
            _metric_sum(observed.metrics_url, "fraud_decisions_total") - before,
            _metric_sum(observed.metrics_url, "fraud_decision_seconds_count") - histogram_before,
        )

    # No request follows: only the BLS's timer (every second) can hand these over.
    wait_until(lambda: min(counted()) >= 7, 5, what="7 more decisions counted", interval_s=0.2)
    assert counted() == (7, 7)


def _drive(observed, seconds: float) -> None:
    """Traffic for the dashboards, with the primary away for a while (degradations)."""

    admin = admin_client(observed.server.grpc_url)
    deadline = time.monotonic() + seconds
    i = 0
    unloaded = False
    while time.monotonic() < deadline:
        observed.client.score([_row(i, card=1 + i % 50)])
        i += 1
        if i == 200 and not unloaded:
            admin.unload_model("fraud_primary")
            unloaded = True
        if i == 320 and unloaded:
            admin.load_model("fraud_primary")
    admin.close()


def test_prometheus_scrapes_every_target_and_evaluates_every_rule(observed) -> None:
    import json

    wait_until(
        lambda: set(promql.targets_up(observed.prometheus_port).values()) == {"up"},
        30,
        what=lambda: f"every target up: {promql.targets_up(observed.prometheus_port)}",
        interval_s=0.5,
    )
    url = f"http://127.0.0.1:{observed.prometheus_port}/api/v1/rules"
    with urllib.request.urlopen(url, timeout=10) as answer:
        groups = json.loads(answer.read())["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) >= 20
    assert not [r["name"] for r in rules if r.get("health") not in ("ok", "unknown")]


def test_every_dashboard_panel_returns_live_series(observed) -> None:
    _drive(observed, 25)
    assert dashboards.dashboard("fraud-scoring") == dashboards.committed("fraud-scoring")
    wait_for_live_panels(observed.prometheus_port, "fraud-scoring")
    # The load above went through the fallback while the primary was away.
    wait_until(
        lambda: {"primary", "fallback"} <= _decision_paths(observed.prometheus_port),
        30,
        what=lambda: f"both paths' decision rates: {_decision_paths(observed.prometheus_port)}",
        interval_s=1.0,
    )


def _decision_paths(prometheus_port: int) -> set[str]:
    rates = promql.query(prometheus_port, "fraud:decisions:rate1m")
    return {r["metric"]["path"] for r in rates}
