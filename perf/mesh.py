"""``make perf-mesh`` (``python -m perf mesh``): what Envoy adds, measured side by side.

One Triton server with the fraud models, and Envoy in front of it with the configuration
``make serve REPLICAS=N`` runs (``client.mesh``, one replica behind it). The same Poisson
load (200/s, one transaction per request, unary gRPC) goes straight to Triton and through
Envoy in alternating order, ``repeats`` times each; the report gives the medians of p50 and
p99, their differences, and the CPU per decision of Triton and of Envoy.

Output: ``perf/results/mesh/summary.json``, ``report.md`` and ``latency.png`` (the latency
distributions of both paths, every run).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np

from python_backend.paths import PERF_RESULTS, TRITON_STATE

PATHS = ("direct", "envoy")
#: What Envoy may add (the issue's targets), in ms.
TARGETS = {"p50_ms": 1.0, "p99_ms": 2.0}


def run(scale: str = "small", quick: bool = False, out: Path | None = None, log=print) -> dict:
    from tqdm import tqdm

    from client.launcher import warm_up
    from client.local.services import free_port
    from client.local.triton import FRAUD_MODELS, Ports, start
    from client.mesh.config import MeshConfig
    from client.mesh.mesh import Mesh
    from perf import cpu, loadgen, workload

    out = out or PERF_RESULTS / "mesh"
    out.mkdir(parents=True, exist_ok=True)
    rate, requests, repeats = (200, 1500, 2) if quick else (200, 4000, 3)
    scale, env, rows = workload.prepared(scale, log)
    mesh = Mesh(
        TRITON_STATE / "perf-mesh",
        MeshConfig(listen_port=free_port(), admin_port=free_port()),
        [Ports.free()],
        lambda replica: start(
            ports=replica.ports,
            models=list(FRAUD_MODELS),
            env=env,
            log_path=TRITON_STATE / "perf-mesh.log",
        ),
        lambda server: warm_up(server, 100),
        log=log,
    )
    mesh.start()
    server = mesh.replicas[0].server
    urls = {"direct": server.grpc_url, "envoy": mesh.url}
    meters = {
        "triton": cpu.CpuMeter(server.process.pid),
        "envoy": cpu.CpuMeter(mesh.envoy.process.pid),
    }
    results: dict[str, list[dict]] = {p: [] for p in PATHS}
    latencies: dict[str, list[np.ndarray]] = {p: [] for p in PATHS}
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # the gRPC channels are made for this loop
    try:
        calls = {p: loadgen.grpc_call(urls[p], "fraud_scoring", rows) for p in PATHS}
        for path in PATHS:  # both channels connected and warm before anything is measured
            loop.run_until_complete(loadgen.poisson_run(calls[path][0], rate, 200, len(rows)))
        progress = tqdm(total=repeats * len(PATHS), desc="perf-mesh", unit="run")
        for k in range(repeats):
            for path in PATHS if k % 2 == 0 else tuple(reversed(PATHS)):
                before = {name: m.sample() for name, m in meters.items()}
                result = loop.run_until_complete(
                    loadgen.poisson_run(calls[path][0], rate, requests, len(rows), seed=k)
                )
                after = {name: m.sample() for name, m in meters.items()}
                row = result.row(target_rps=rate)
                row["cpu_ms_per_decision"] = {
                    name: cpu.per_decision(before[name], after[name], result.ok)[
                        "cpu_ms_per_decision"
                    ]
                    for name in meters
                }
                results[path].append(row)
                latencies[path].append(result.latencies_ms)
                progress.update(1)
        progress.close()
        for _call, close in calls.values():
            loop.run_until_complete(close())
    finally:
        loop.close()
        mesh.stop()
    summary = _summary(results, rate, requests)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(markdown(summary))
    _plot(latencies, out / "latency.png")
    log(markdown(summary))
    log(f"results: {out}")
    return summary


def _cpu(row: dict, process: str) -> float:
    return row["cpu_ms_per_decision"][process]


def _median(rows: list[dict], key) -> float:
    return round(float(np.median([key(r) for r in rows])), 3)


def _summary(results: dict[str, list[dict]], rate: float, requests: int) -> dict:
    paths = {
        path: {
            "repeats": len(rows),
            "p50_ms": _median(rows, lambda r: r["p50_ms"]),
            "p99_ms": _median(rows, lambda r: r["p99_ms"]),
            "within_95ms": _median(rows, lambda r: r["within_95ms"]),
            "achieved_rps": _median(rows, lambda r: r["achieved_rps"]),
            "errors": sum(sum(r["errors"].values()) for r in rows),
            "triton_cpu_ms_per_decision": _median(rows, lambda r: _cpu(r, "triton")),
            "envoy_cpu_ms_per_decision": _median(rows, lambda r: _cpu(r, "envoy")),
            "runs": rows,
        }
        for path, rows in results.items()
    }
    added = {
        key: round(paths["envoy"][key] - paths["direct"][key], 3) for key in ("p50_ms", "p99_ms")
    }
    # Paired: each repeat's difference (the two paths ran back to back), then the median.
    paired = {
        key: round(
            float(
                np.median(
                    [
                        e[key] - d[key]
                        for e, d in zip(results["envoy"], results["direct"], strict=True)
                    ]
                )
            ),
            3,
        )
        for key in ("p50_ms", "p99_ms")
    }
    return {
        "rate": rate,
        "requests_per_run": requests,
        "paths": paths,
        "added_ms": added,
        "added_ms_paired": paired,
        "targets_ms": TARGETS,
        "targets_met": {k: added[k] <= TARGETS[k] for k in TARGETS},
    }


def markdown(summary: dict) -> str:
    d, e = summary["paths"]["direct"], summary["paths"]["envoy"]
    lines = [
        "# What Envoy adds (direct to Triton vs through Envoy, side by side)",
        "",
        f"{summary['rate']:.0f} requests/s (Poisson), {summary['requests_per_run']:,} requests per "
        f"run, {d['repeats']} runs per path in alternating order; medians over runs.",
        "",
        "| path | p50 ms | p99 ms | within 95 ms | achieved rps | errors | Triton CPU ms/decision "
        "| Envoy CPU ms/decision |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, p in (("direct", d), ("envoy", e)):
        lines.append(
            f"| {name} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {p['within_95ms']:.2%} "
            f"| {p['achieved_rps']:.0f} | {p['errors']} | {p['triton_cpu_ms_per_decision']:.3f} "
            f"| {p['envoy_cpu_ms_per_decision']:.3f} |"
        )
    a, paired, met = summary["added_ms"], summary["added_ms_paired"], summary["targets_met"]
    lines += [
        "",
        f"Envoy adds {a['p50_ms']:+.2f} ms at p50 (target <= {TARGETS['p50_ms']:g}: "
        f"{'met' if met['p50_ms'] else 'missed'}) and {a['p99_ms']:+.2f} ms at p99 (target <= "
        f"{TARGETS['p99_ms']:g}: {'met' if met['p99_ms'] else 'missed'}); paired by repeat: "
        f"{paired['p50_ms']:+.2f} / {paired['p99_ms']:+.2f} ms.",
        "",
    ]
    return "\n".join(lines)


def _plot(latencies: dict[str, list[np.ndarray]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = {"direct": "#4c72b0", "envoy": "#dd8452"}
    for name, runs in latencies.items():
        for k, lat in enumerate(runs):
            x = np.sort(lat)
            y = np.arange(1, len(x) + 1) / len(x)
            ax.plot(x, y, color=colors[name], lw=1, alpha=0.8, label=name if k == 0 else None)
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms (log)")
    ax.set_ylabel("share of requests")
    ax.axhline(0.99, color="grey", lw=0.6, ls=":")
    ax.legend()
    ax.set_title("Direct to Triton vs through Envoy: every run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
