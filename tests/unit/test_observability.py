"""Pure logic of the observability pieces: trace contexts, the timeline a traced batch
records, the collector's decoding of both OTLP encodings, the stage breakdown of a trace,
the BLS's latency histograms and their timer flush, and the committed operator artefacts
(dashboards, scrape config) against their one declaration."""

from __future__ import annotations

import json
import random
import shutil
import subprocess

import numpy as np
import pytest
import yaml

from client.observe import collector, dashboards, promql, stack, traces
from python_backend import tracing
from python_backend.fraud import run_now
from python_backend.fraud.metrics import LATENCY_BUCKETS, ServiceMetrics
from tests.support import wait_until
from tests.unit.test_ladder import Clock, FakeReader, _request, _service
from tests.unit.test_metrics import FakeFamily


def test_traceparent_round_trips_and_malformed_ones_are_refused() -> None:
    made = tracing.traceparent("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    assert made == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert tracing.parse_traceparent(made) == (
        "0af7651916cd43dd8448eb211c80319c",
        "b7ad6b7169203331",
    )
    for bad in ("", None, "00-abc-def-01", "00-" + "z" * 32 + "-" + "1" * 16 + "-01"):
        assert tracing.parse_traceparent(bad) is None


def test_sampler_traces_the_share_asked_for() -> None:
    sampler = tracing.Sampler(0.1, random.Random(3))
    share = np.mean([sampler() for _ in range(20_000)])
    assert 0.09 < share < 0.11
    assert not any(tracing.Sampler(0.0)() for _ in range(100))
    assert all(tracing.Sampler(1.0)() for _ in range(100))
    with pytest.raises(ValueError, match="TRACE_SAMPLE"):
        tracing.Sampler(1.5)


def test_triton_is_traced_at_rate_zero_only_when_an_endpoint_is_set() -> None:
    assert tracing.triton_trace_arguments(None) == []
    flags = tracing.triton_trace_arguments("http://127.0.0.1:1/v1/traces")
    assert "--trace-config=mode=opentelemetry" in flags
    assert "--trace-config=rate=0" in flags  # the client decides what is traced
    assert tracing.endpoint({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "off"}) is None
    assert tracing.endpoint_port("http://127.0.0.1:4999/v1/traces") == 4999
    assert tracing.endpoint_port(None) == 4318  # the default endpoint's


class _Trace:
    def __init__(self, context):
        self.context = context

    def get_context(self):
        return self.context


def test_the_triton_context_is_read_from_the_request_trace() -> None:
    parent = tracing.traceparent("a" * 32, "b" * 16)
    assert tracing.triton_context(_Trace(json.dumps({"traceparent": parent}))) == parent
    assert tracing.triton_context(_Trace(None)) is None  # an untraced request
    assert tracing.triton_context(None) is None


def test_a_traced_batch_notes_every_stage_and_an_untraced_one_nothing() -> None:
    clock = Clock()
    service = _service(clock, FakeReader())
    timeline = tracing.Timeline()
    batch = run_now(service.handle([_request([1, 2]), _request([3])], timeline))
    names = [m.name for m in timeline.marks]
    assert names == ["fraud.validate", "fraud.features", "fraud.primary", "fraud.rules"]
    primary = next(m for m in timeline.marks if m.name == "fraud.primary")
    assert primary.end - primary.start == pytest.approx(0.002)  # the fake's 2 ms
    assert primary.attributes == {"outcome": "ok"}
    assert [a.offset for a in batch.answers] == [0, 2]  # where each request's rows are
    untraced = run_now(service.handle([_request([1])]))
    assert untraced.decided.path == "primary"


def test_collector_reads_triton_json_and_sdk_protobuf_alike() -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    body = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "triton"}}]
                },
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "AB" * 16,
                                "spanId": "cd" * 8,
                                "parentSpanId": "ef" * 8,
                                "name": "fraud_scoring",
                                "startTimeUnixNano": "1000",
                                "endTimeUnixNano": "5000",
                                "attributes": [
                                    {"key": "triton.model_version", "value": {"intValue": "1"}}
                                ],
                                "events": [{"name": "QUEUE_START", "timeUnixNano": "1200"}],
                            }
                        ]
                    }
                ],
            }
        ]
    }
    (span,) = collector.spans_from_json(body)
    assert span["trace_id"] == "ab" * 16 and span["service"] == "triton"
    assert span["attributes"] == {"triton.model_version": 1}
    assert span["events"] == [["QUEUE_START", 1200]]

    request = ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    kv = resource.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "fraud-scoring"
    pb = resource.scope_spans.add().spans.add()
    pb.trace_id, pb.span_id = bytes.fromhex("ab" * 16), bytes.fromhex("12" * 8)
    pb.name, pb.start_time_unix_nano, pb.end_time_unix_nano = "fraud.bls", 2000, 4000
    attr = pb.attributes.add()
    attr.key = "fraud.transaction_ids"
    attr.value.array_value.values.add().string_value = "t1"
    (decoded,) = collector.spans_from_protobuf(request.SerializeToString())
    assert decoded["parent_id"] == "" and decoded["service"] == "fraud-scoring"
    assert decoded["attributes"] == {"fraud.transaction_ids": ["t1"]}


def _span(name, span_id, parent, start, end, service="triton", events=(), **attributes):
    return {
        "trace_id": "t" * 32,
        "span_id": span_id,
        "parent_id": parent,
        "name": name,
        "service": service,
        "start_ns": start * 1000,
        "end_ns": end * 1000,
        "attributes": attributes,
        "events": [[n, t * 1000] for n, t in events],
    }


def _decision_trace() -> list[dict]:
    """A decision as the spans show it, in µs: client 0-1000, Triton's queue 100-200, the
    BLS 200-900 (features 210-400, primary 400-800 of which queue 420-500), answer 1000."""
    return [
        _span("client.score", "c", "", 0, 1000, "fraud-client", **{"fraud.stage_us.features": 190}),
        _span("InferRequest", "i", "c", 50, 950),
        _span("fraud_scoring", "m", "i", 90, 910, events=[("QUEUE_START", 100)]),
        _span("compute", "mc", "m", 200, 900),
        _span("fraud.bls", "b", "m", 200, 890, "fraud-scoring", **{"fraud.transaction_ids": ["x"]}),
        _span("fraud.features", "f", "b", 210, 400, "fraud-scoring"),
        _span("store.redis", "s", "f", 220, 380, "fraud-scoring"),
        _span("fraud.primary", "p", "b", 400, 800, "fraud-scoring"),
        _span("fraud_primary", "pm", "m", 405, 795, events=[("QUEUE_START", 420)]),
        _span("compute", "pc", "pm", 500, 790),
        _span("fraud.rules", "r", "b", 800, 850, "fraud-scoring"),
        _span("stream.apply", "a", "b", 3000, 3100, "fraud-stream-consumer"),
    ]


def test_stages_of_a_trace_are_read_from_its_spans() -> None:
    found = traces.stages(_decision_trace())
    us = found.stage_us
    assert us["client"] == 1000
    assert us["triton_queue"] == 100  # QUEUE_START to the model's compute span
    assert us["bls_compute"] == 700
    assert us["features"] == 190 and us["store"] == 160
    assert us["primary_queue"] == 80 and us["primary_compute"] == 290
    assert us["request_in"] == 90 and us["response_out"] == 100
    assert us["stub_in"] == 0  # fraud.bls starts as the model's compute does, here
    assert us["primary_hop"] == 400 - 390  # the BLS's wait less Triton's span
    assert traces.coverage(found) == pytest.approx((90 + 100 + 700 + 100) / 1000)
    assert found.client_stage_us == {"features": 190}
    assert traces.find_decision(_decision_trace(), "x") is not None
    assert traces.find_decision(_decision_trace(), "y") is None


def test_waterfall_nests_spans_and_marks_what_came_after_the_answer() -> None:
    text = traces.waterfall_text(_decision_trace())
    lines = text.splitlines()
    assert "1.00 ms to answer" in lines[0]
    store = next(line for line in lines if "store.redis" in line)
    # client > InferRequest > fraud_scoring > fraud.bls > fraud.features > store.redis
    assert store.startswith(" " * 10 + "store.redis")
    assert "after the answer" in next(line for line in lines if "stream.apply" in line)


def test_breakdown_reports_percentiles_and_shares(tmp_path) -> None:
    rows = {r["stage"]: r for r in traces.breakdown([traces.stages(_decision_trace())] * 3)}
    assert rows["features"]["p50_ms"] == pytest.approx(0.19)
    assert rows["features"]["share_of_total"] == pytest.approx(0.19)
    assert "| features | 3 |" in traces.breakdown_table(list(rows.values()))
    assert traces.breakdown_png(list(rows.values()), tmp_path / "s.png").stat().st_size > 5000
    waterfall = traces.waterfall_png([_decision_trace()], tmp_path / "w.png")
    assert waterfall.stat().st_size > 5000


def test_latency_histograms_count_every_decision_in_cumulative_buckets() -> None:
    clock = Clock()
    service = _service(clock, FakeReader())
    FakeFamily.made.clear()
    metrics = ServiceMetrics(FakeFamily, service.breakers, clock=clock)
    batch = run_now(service.handle([_request([1, 2, 3])]))
    metrics.observe(batch, total_us=3_000)  # 3 ms: above the 2 ms bound, within 5 ms
    metrics.observe(batch, total_us=150_000)  # over budget
    metrics.flush(force=True)
    buckets = FakeFamily.made["fraud_decision_seconds_bucket"].values
    le = {dict(k)["le"]: v for k, v in buckets.items()}
    assert le.get("0.002", 0) == 0 and le["0.005"] == 3 and le["0.095"] == 3
    assert le["0.2"] == 6 and le["+Inf"] == 6
    assert FakeFamily.made["fraud_decision_seconds_count"].values[()] == 6
    assert FakeFamily.made["fraud_decision_seconds_sum"].values[()] == pytest.approx(0.459)
    stages = FakeFamily.made["fraud_stage_seconds_count"].values
    assert stages[(("stage", "primary"),)] == 6  # the fake primary's 2 ms, every row
    assert (("stage", "fallback"),) not in stages  # it did not run: not observed
    assert f"{LATENCY_BUCKETS[9]:g}" == "0.095"  # a bucket ends at the budget


def test_the_timer_hands_counts_over_while_no_batch_comes() -> None:
    service = _service(Clock(), FakeReader())
    FakeFamily.made.clear()
    metrics = ServiceMetrics(FakeFamily, service.breakers, flush_s=0.05)
    metrics.observe(run_now(service.handle([_request([1, 2])])), total_us=1_000)
    metrics.start_timer()
    try:
        wait_until(
            lambda: FakeFamily.made["fraud_decisions_total"].values,
            timeout_s=5,
            what="the timer's flush",
        )
    finally:
        metrics.stop_timer()
    assert sum(FakeFamily.made["fraud_decisions_total"].values.values()) == 2
    assert metrics.timer_errors == 0


def test_committed_dashboards_are_the_declared_ones() -> None:
    for uid in dashboards.ALL:
        board = dashboards.dashboard(uid)
        assert board == dashboards.committed(uid), "run `python -m client.observe.dashboards`"
        assert all(exprs for _title, exprs in dashboards.expressions(board))
        ids = [p["id"] for p in board["panels"]]
        assert len(set(ids)) == len(ids)


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not found: run `make setup` (it installs Debian's prometheus)")
    return found


def test_every_panel_query_is_valid_promql(tmp_path) -> None:
    rules = [
        {"record": f"panel:{uid.replace('-', '_')}:{i}", "expr": expr}
        for uid in dashboards.ALL
        for i, (_t, exprs) in enumerate(dashboards.expressions(dashboards.dashboard(uid)))
        for expr in exprs
    ]
    path = tmp_path / "panels.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    done = subprocess.run(
        [_promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_committed_scrape_config_is_the_rendered_one_and_valid() -> None:
    assert stack.PROMETHEUS_YML.read_text() == stack.committed_config_text()
    done = subprocess.run(
        [_promtool(), "check", "config", stack.PROMETHEUS_YML.name],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=stack.PROMETHEUS_YML.parent,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_metrics_read_are_the_series_names_less_functions_labels_and_operators() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (stage, le) (rate(fraud_stage_seconds_bucket{le!="1"}'
        "[1m]))) / on () group_left fraud:degraded_share:rate5m > bool 1e3 or vector(0)"
    )
    assert dashboards.metrics_read(expr) == {
        "fraud_stage_seconds_bucket",
        "fraud:degraded_share:rate5m",
    }


def test_only_panels_reading_nothing_but_metrics_off_the_live_stack_skip_the_live_check(
    monkeypatch,
) -> None:
    analysis = dashboards.ANALYSIS
    assert analysis in dashboards.ALL["fraud-scoring"][1]
    off_stack = {p.title for p in analysis.panels}
    assert dashboards.not_live(["fraud_analysis:review:rate5m"])
    # A panel that reads a metric of the live stack beside them is checked.
    assert dashboards.not_live(["fraud_analysis:review:rate5m / fraud:decisions:rate1m"]) is None
    queried = []

    def no_series(_port: int, expr: str) -> list:
        queried.append(expr)
        return []

    monkeypatch.setattr(promql, "query", no_series)
    for uid in dashboards.ALL:
        titles = [title for title, _exprs in dashboards.expressions(dashboards.dashboard(uid))]
        empty = dashboards.panels_without_series(1, uid)
        assert set(titles) - set(empty) == (off_stack if uid == "fraud-scoring" else set())
    # The skipped panels' queries still run against the live Prometheus (it refuses bad ones).
    assert {e for p in analysis.panels for e, _legend in p.targets} <= set(queried)


def test_every_recording_rule_a_panel_reads_is_recorded() -> None:
    rules = yaml.safe_load(stack.RULES.read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    read = {
        name
        for uid in dashboards.ALL
        for _title, exprs in dashboards.expressions(dashboards.dashboard(uid))
        for expr in exprs
        for name in dashboards.metrics_read(expr)
        if ":" in name
    }
    assert read and not read - recorded, f"not recorded: {sorted(read - recorded)}"
