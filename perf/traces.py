"""``make trace-report`` (``python -m perf trace-report``): what tracing costs, and where the
milliseconds of a decision go.

Two Triton servers on the same build, side by side: one with tracing off, one in
OpenTelemetry mode exporting to a real span collector. The same Poisson load (Python
asyncio clients, unary gRPC) runs against them in alternating order, repeated: tracing
off, 1% of requests traced, every request traced. Reported per mode: the median over
repeats of the achieved rate, p50 and p99, and the server's CPU per decision.

The spans of the fully traced runs make the per-stage breakdown (p50 / p99 per stage, its
median share of the client's latency) and a waterfall of the slowest 1% of decisions, so
the stage that owns the tail is named; the breakdown is checked against ``STAGE_US`` and
Triton's own statistics where they overlap. Results: ``perf/results/traces/``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from client.local.operator import admin_client
from python_backend.paths import PERF_RESULTS

MODES = {"off": None, "1%": 0.01, "100%": 1.0}
#: Transaction ids of a mode's runs start with ``tr-<tag>-``: the report reads the spans
#: of the fully traced runs by it.
TAGS = {"off": "off", "1%": "1pct", "100%": "all"}
MODELS = ("fraud_scoring", "fraud_primary")


async def _run(url: str, mode: str, rows: list[dict], rate: float, requests: int, seed: int):
    from client.scoring import AsyncFraudClient
    from perf import loadgen

    client = AsyncFraudClient(url, trace_share=MODES[mode] or 0.0)

    async def call(i: int) -> dict[str, int]:
        row = dict(rows[i % len(rows)])
        row["transaction_id"] = f"tr-{TAGS[mode]}-{seed}-{i}"
        (decision,) = await client.score([row])
        return decision.stage_us

    try:
        return await loadgen.poisson_run(call, rate, requests, len(rows), seed=seed)
    finally:
        await client.close()


def run(scale: str = "small", quick: bool = False, out: Path | None = None, log=print) -> dict:
    from tqdm import tqdm

    from client.launcher import warm_up
    from client.local.services import free_port
    from client.local.triton import Ports, start
    from client.observe import stack, traces
    from perf import cpu, workload
    from perf.triton_stats import model_statistics, statistics_delta
    from python_backend import tracing
    from python_backend.paths import TRITON_STATE

    out = out or PERF_RESULTS / "traces"
    out.mkdir(parents=True, exist_ok=True)
    rate, requests, repeats = (150, 1500, 2) if quick else (200, 4000, 3)
    scale, env, rows = workload.prepared(scale, log)
    spans_dir = out / "spans"
    if (spans_dir / "spans.jsonl").exists():
        (spans_dir / "spans.jsonl").unlink()
    collector = stack.start_collector(free_port(), spans_dir)
    endpoint = f"http://127.0.0.1:{collector.port}/v1/traces"
    os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = endpoint  # the clients' spans
    tracing.tracer("fraud-client")  # the SDK imported now, not in the first traced call
    servers = {}
    try:
        servers["off"] = start(
            ports=Ports.free(),
            env={**env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "off"},
            log_path=TRITON_STATE / "trace-report-off.log",
        )
        servers["on"] = start(
            ports=Ports.free(),
            env={**env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint},
            log_path=TRITON_STATE / "trace-report-on.log",
        )
        for server in servers.values():
            warm_up(server, 100)
        stats = {n: admin_client(s.grpc_url) for n, s in servers.items()}
        results: dict[str, list[dict]] = {m: [] for m in MODES}
        loop = asyncio.new_event_loop()
        progress = tqdm(total=repeats * len(MODES), desc="trace-report", unit="run")
        for k in range(repeats):
            order = list(MODES) if k % 2 == 0 else list(reversed(MODES))
            for mode in order:
                name = "off" if MODES[mode] is None else "on"
                server = servers[name]
                meter = cpu.CpuMeter(server.process.pid)
                before_stats = model_statistics(stats[name], MODELS)
                before = meter.sample()
                result = loop.run_until_complete(
                    _run(server.grpc_url, mode, rows, rate, requests, seed=k)
                )
                after = meter.sample()
                row = result.row(target_rps=rate)
                row["cpu"] = cpu.per_decision(before, after, result.ok)
                row["triton"] = statistics_delta(
                    before_stats, model_statistics(stats[name], MODELS)
                )
                results[mode].append(row)
                progress.update(1)
        progress.close()
        loop.close()
        for client in stats.values():
            client.close()
        tracing.shutdown()
        time.sleep(2)  # the BLS's and Triton's last spans reach the collector
    finally:
        for server in servers.values():
            server.stop()
        collector.stop()
        os.environ.pop("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None)
    spans = traces.load(spans_dir)
    full = f"tr-{TAGS['100%']}-"
    decided = [
        d
        for d in traces.decisions(spans)
        if any(
            s["name"] == "client.score"
            and s["attributes"].get("fraud.transaction_ids", [""])[0].startswith(full)
            for s in d.spans
        )
    ]
    summary = _summary(results, decided, out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(_markdown(summary))
    log(_markdown(summary))
    log(f"\nresults: {out}")
    return summary


def _median(rows: list[dict], key) -> float:
    return float(np.median([key(r) for r in rows]))


def _summary(results: dict[str, list[dict]], decided: list, out: Path) -> dict:
    from client.observe import traces

    modes = {}
    for mode, rows in results.items():
        modes[mode] = {
            "repeats": len(rows),
            "achieved_rps": _median(rows, lambda r: r["achieved_rps"]),
            "p50_ms": _median(rows, lambda r: r["p50_ms"]),
            "p99_ms": _median(rows, lambda r: r["p99_ms"]),
            "server_cpu_ms_per_decision": _median(rows, lambda r: r["cpu"]["cpu_ms_per_decision"]),
            "client_cpu_ms_per_decision": _median(
                rows, lambda r: r["cpu"]["load_generator_ms_per_decision"]
            ),
            "errors": sum(sum(r.get("errors", {}).values()) for r in rows),
        }
    off = modes["off"]
    for mode in ("1%", "100%"):
        modes[mode]["p99_vs_off"] = modes[mode]["p99_ms"] / off["p99_ms"]
        modes[mode]["rps_vs_off"] = modes[mode]["achieved_rps"] / off["achieved_rps"]
        modes[mode]["cpu_vs_off"] = (
            modes[mode]["server_cpu_ms_per_decision"] / off["server_cpu_ms_per_decision"]
        )
    breakdown = traces.breakdown(decided)
    if breakdown:
        traces.breakdown_png(
            breakdown, out / "stages.png", f"per-stage latency, {len(decided)} traced decisions"
        )
    slowest = sorted(decided, key=lambda d: d.total_us, reverse=True)
    tail = slowest[: max(1, len(slowest) // 100)] if slowest else []
    png = None
    if tail:
        png = traces.waterfall_png(
            [d.spans for d in tail[:6]], out / "slowest.png", title="slowest 1%:"
        )
    coverage = [c for c in (traces.coverage(d) for d in decided) if c is not None]
    # Where they overlap: STAGE_US (the client received it) against the spans, and
    # Triton's statistics (every request of the traced runs) against the spans' queues.
    features_gap = [
        abs(d.stage_us["features"] - d.client_stage_us["features"])
        for d in decided
        if "features" in d.stage_us and "features" in d.client_stage_us
    ]
    traced_stats = [r["triton"] for r in results["100%"]]
    stats_queue = {
        model: float(np.mean([t[model]["queue_us"] for t in traced_stats if model in t]))
        for model in ("fraud_scoring", "fraud_primary")
    }
    spans_queue = {
        "fraud_scoring": float(np.mean([d.stage_us.get("triton_queue", 0) for d in decided]))
        if decided
        else None,
        "fraud_primary": float(np.mean([d.stage_us.get("primary_queue", 0) for d in decided]))
        if decided
        else None,
    }
    # Per slow decision, the sequential stage that took most of it; counted over the tail.
    owners = Counter(
        max(traces.SEQUENTIAL, key=lambda stage, d=d: d.stage_us.get(stage, 0)) for d in tail
    )
    return {
        "modes": modes,
        "runs": results,
        "traced_decisions": len(decided),
        "breakdown": breakdown,
        "coverage_median": float(np.median(coverage)) if coverage else None,
        "coverage_p10": float(np.percentile(coverage, 10)) if coverage else None,
        "stage_us_features_gap_us_p99": float(np.percentile(features_gap, 99))
        if features_gap
        else None,
        "queue_us_triton_statistics": stats_queue,
        "queue_us_spans": spans_queue,
        "slowest_1pct": {
            "decisions": len(tail),
            "client_ms": [round(d.total_us / 1000, 2) for d in tail],
            "owning_stages": dict(owners.most_common()),
            "png": str(png) if png else None,
        },
    }


def _markdown(summary: dict) -> str:
    from client.observe import traces

    lines = [
        "## Tracing overhead (medians over repeats, same load side by side)",
        "",
        "| mode | achieved rps | p50 ms | p99 ms | server CPU ms/decision | client CPU "
        "ms/decision | p99 vs off | CPU vs off | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, m in summary["modes"].items():
        lines.append(
            f"| {mode} | {m['achieved_rps']:.1f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
            f"{m['server_cpu_ms_per_decision']:.2f} | {m['client_cpu_ms_per_decision']:.2f} | "
            f"{m.get('p99_vs_off', 1):.3f} | "
            f"{m.get('cpu_vs_off', 1):.3f} | {m['errors']} |"
        )
    lines += [
        "",
        f"## Where the milliseconds go ({summary['traced_decisions']} traced decisions)",
        "",
        traces.breakdown_table(summary["breakdown"]),
        "",
        f"Coverage (request in + Triton queue + BLS compute + response out over the client's "
        f"latency): median {summary['coverage_median']}, p10 {summary['coverage_p10']}.",
        f"STAGE_US features vs the span: p99 gap {summary['stage_us_features_gap_us_p99']} µs.",
        f"Queue µs per request, Triton statistics: {summary['queue_us_triton_statistics']}; "
        f"spans: {summary['queue_us_spans']}.",
        f"Slowest 1%: {summary['slowest_1pct']['decisions']} decisions, client ms "
        f"{summary['slowest_1pct']['client_ms'][:10]}; the stage that took most of each: "
        f"{summary['slowest_1pct']['owning_stages']} ({summary['slowest_1pct']['png']}).",
    ]
    return "\n".join(lines) + "\n"
