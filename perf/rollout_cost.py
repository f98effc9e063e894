"""``python -m perf rollout-cost``: what a rollout costs the serving path, side by side.

One Triton server with the fraud models and a second ``fraud_primary`` version (a copy of the
champion), the same Poisson load (200/s, unary gRPC) under three plans of
``python_backend.fraud.rollout``, in alternating order: no rollout; a canary deciding 50% of
the batches; a shadow scoring every batch beside the champion. Reported per plan: p50, p99,
the share within 95 ms and the CPU per decision of the server (tritonserver and its stubs).
Beside them, the memory of the server process tree: what a replica per version (Envoy's
weighted clusters, the other way to split traffic) would cost on top.

Output: ``perf/results/rollout_cost/summary.json`` and ``report.md``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np

from python_backend.fraud.rollout import RolloutPlan
from python_backend.paths import PERF_RESULTS, TRITON_STATE

PLANS = {
    "none": RolloutPlan(),
    "canary 50%": RolloutPlan(1, canary=2, canary_share=0.5),
    "shadow 100%": RolloutPlan(1, shadow=2, shadow_share=1.0),
}


def _rss_mb(pid: int) -> float:
    import psutil

    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in (root, *root.children(recursive=True))) / 2**20


def run(scale: str = "small", quick: bool = False, out: Path | None = None, log=print) -> dict:
    from tqdm import tqdm

    from client.launcher import warm_up
    from client.local.operator import admin_client, override_parameters
    from client.local.triton import FRAUD_MODELS, Ports, start
    from client.rollout import MODEL, pin, publish
    from perf import cpu, loadgen, workload
    from python_backend.paths import MODEL_REPOSITORY

    out = out or PERF_RESULTS / "rollout_cost"
    out.mkdir(parents=True, exist_ok=True)
    rate, requests, repeats = (200, 1500, 1) if quick else (200, 3000, 2)
    scale, env, rows = workload.prepared(scale, log)
    repository = TRITON_STATE / "rollout-cost" / "model_repository"
    if repository.exists():
        shutil.rmtree(repository)
    shutil.copytree(MODEL_REPOSITORY, repository)
    publish(repository, 2, "copy", log=log)
    pin(repository, [1, 2])  # both versions loaded; the plans name which one is called
    server = start(
        repository=repository,
        ports=Ports.free(),
        models=list(FRAUD_MODELS),
        env=env,
        log_path=TRITON_STATE / "rollout-cost.log",
    )
    results: dict[str, list[dict]] = {name: [] for name in PLANS}
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # the gRPC channel is made for this loop
    try:
        warm_up(server, 100)
        admin = admin_client(server.grpc_url)
        meter = cpu.CpuMeter(server.process.pid)
        call, close = loadgen.grpc_call(server.grpc_url, "fraud_scoring", rows)
        progress = tqdm(total=repeats * len(PLANS), desc="rollout-cost", unit="run")
        for k in range(repeats):
            for name in list(PLANS) if k % 2 == 0 else list(reversed(PLANS)):
                override_parameters(admin, "fraud_scoring", **PLANS[name].params())
                loop.run_until_complete(loadgen.poisson_run(call, rate, 200, len(rows)))  # warm
                before = meter.sample()
                result = loop.run_until_complete(
                    loadgen.poisson_run(call, rate, requests, len(rows), seed=k)
                )
                after = meter.sample()
                row = result.row(target_rps=rate)
                row["cpu"] = cpu.per_decision(before, after, result.ok)
                row["rss_mb"] = round(_rss_mb(server.process.pid), 1)
                results[name].append(row)
                progress.update(1)
        progress.close()
        loop.run_until_complete(close())
        admin.close()
    finally:
        loop.close()
        server.stop()
    summary = {
        "rate": rate,
        "requests_per_run": requests,
        "model": MODEL,
        "plans": {
            name: {
                "repeats": len(rows_),
                "p50_ms": _median(rows_, "p50_ms"),
                "p99_ms": _median(rows_, "p99_ms"),
                "within_95ms": _median(rows_, "within_95ms"),
                "cpu_ms_per_decision": round(
                    float(np.median([r["cpu"]["cpu_ms_per_decision"] for r in rows_])), 3
                ),
                "server_rss_mb": _median(rows_, "rss_mb"),
                "runs": rows_,
            }
            for name, rows_ in results.items()
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(markdown(summary))
    log(markdown(summary))
    return summary


def _median(rows: list[dict], key: str) -> float:
    return round(float(np.median([r[key] for r in rows])), 3)


def markdown(summary: dict) -> str:
    none = summary["plans"]["none"]
    lines = [
        "# What a rollout costs the serving path",
        "",
        f"{summary['rate']:.0f} requests/s (Poisson), {summary['requests_per_run']:,} requests "
        f"per run, {none['repeats']} runs per plan in alternating order; medians.",
        "",
        "| plan | p50 ms | p99 ms | within 95 ms | CPU ms/decision | vs none | server RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, p in summary["plans"].items():
        ratio = p["cpu_ms_per_decision"] / none["cpu_ms_per_decision"]
        lines.append(
            f"| {name} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {p['within_95ms']:.2%} "
            f"| {p['cpu_ms_per_decision']:.3f} | {ratio:.2f}x | {p['server_rss_mb']:.0f} |"
        )
    lines += [
        "",
        f"A replica per version (Envoy's weighted clusters) would add a whole server: about "
        f"{none['server_rss_mb']:.0f} MB here and its own idle CPU, for the rollout's length.",
        "",
    ]
    return "\n".join(lines)
