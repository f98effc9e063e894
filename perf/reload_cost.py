"""``python -m perf reload-cost``: what a rollout step's reload costs the callers, in place
against out of Envoy's rotation, side by side.

Two Triton replicas behind Envoy (``client.mesh``), the same Poisson load through Envoy
(200/s, one transaction per request) for a window in which each replica's ``fraud_scoring``
is reloaded with a changed parameter, one replica after the other: what every rollout step
does (``client.local.operator.override_parameters``). Two ways, alternating, ``repeats``
each:

- ``in_place``: the reload with requests in flight (what the rollout tool did before);
- ``quiesced``: out of rotation first (``client.mesh.rotation``: drained, reloaded, warmed
  on its own port, readmitted).

Per run: decisions over the budget in the window, failed calls, p99, the reload's seconds,
and any replica that died (Triton 2.51 crashed reloading a model with requests to it in
flight; a dead replica is booted again before the next run and counted).

Output: ``perf/results/reload/summary.json`` and ``report.md``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import numpy as np

from python_backend.fraud.scoring import DEFAULT_BUDGET_MS
from python_backend.paths import PERF_RESULTS, TRITON_STATE

WAYS = ("in_place", "quiesced")


def _reload_all(mesh, way: str, n: int) -> dict:
    """``fraud_scoring`` reloaded on each replica in turn; the seconds it took."""
    from client.local.operator import admin_client, override_parameters

    started = time.perf_counter()
    steps = []
    for replica in mesh.replicas:
        admin = admin_client(replica.address)
        try:
            if way == "quiesced":
                with mesh.reloading(replica) as step:
                    override_parameters(admin, "fraud_scoring", RELOAD_RUN=str(n))
                steps.append(step)
            else:
                override_parameters(admin, "fraud_scoring", RELOAD_RUN=str(n))
        except Exception as err:  # a replica that died in its reload: counted by the caller
            steps.append({"error": repr(err)[:200]})
        finally:
            admin.close()
    return {"reload_s": round(time.perf_counter() - started, 2), "steps": steps}


def run(scale: str = "small", quick: bool = False, out: Path | None = None, log=print) -> dict:
    from tqdm import tqdm

    from client.launcher import warm_up
    from client.local.services import free_port
    from client.local.triton import FRAUD_MODELS, Ports, start
    from client.mesh.config import MeshConfig
    from client.mesh.mesh import Mesh
    from perf import loadgen, workload

    out = out or PERF_RESULTS / "reload"
    out.mkdir(parents=True, exist_ok=True)
    rate, seconds, repeats = (200, 12, 2) if quick else (200, 20, 4)
    scale, env, rows = workload.prepared(scale, log)
    work = TRITON_STATE / "perf-reload"
    mesh = Mesh(
        work,
        MeshConfig(listen_port=free_port(), admin_port=free_port()),
        [Ports.free(), Ports.free()],
        lambda replica: start(
            ports=replica.ports,
            models=list(FRAUD_MODELS),
            env=env,
            log_path=work / f"replica-{replica.index}.log",
            nice=replica.nice,
        ),
        lambda server: warm_up(server, 100),
        log=log,
    )
    mesh.start()
    results: dict[str, list[dict]] = {w: [] for w in WAYS}
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # the gRPC channel is made for this loop
    try:
        call, close = loadgen.grpc_call(mesh.url, "fraud_scoring", rows)
        loop.run_until_complete(loadgen.poisson_run(call, rate, 200, len(rows)))
        progress = tqdm(total=repeats * len(WAYS), desc="reload-cost", unit="run")
        n = 0
        for k in range(repeats):
            for way in WAYS if k % 2 == 0 else tuple(reversed(WAYS)):
                n += 1
                reload: dict = {}
                pids = [r.server.process.pid for r in mesh.replicas]

                def reload_later(way=way, n=n, reload=reload) -> None:
                    time.sleep(2)  # the load is steady before the step begins
                    reload.update(_reload_all(mesh, way, n))

                thread = threading.Thread(target=reload_later, daemon=True)
                thread.start()
                result = loop.run_until_complete(
                    loadgen.poisson_run(call, rate, rate * seconds, len(rows), seed=k)
                )
                thread.join()
                died = [r.index for r in mesh.replicas if r.server.process.poll() is not None]
                for index in died:  # as an orchestrator restarts a crashed pod
                    log(f"reload-cost: replica {index} died during a {way} reload; booting it")
                    mesh.stop_replica(mesh.replicas[index])
                    mesh.boot(mesh.replicas[index])
                lat = result.latencies_ms
                results[way].append(
                    {
                        "offered": result.sent,
                        "decided": result.ok,
                        "failed": sum(result.errors.values()),
                        "errors": result.errors,
                        "over_budget": int((lat > DEFAULT_BUDGET_MS).sum()),
                        "within_95ms": round(float(np.mean(lat <= DEFAULT_BUDGET_MS)), 4),
                        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
                        "replicas_died": died,
                        "pids": pids,
                        **reload,
                    }
                )
                progress.update(1)
        progress.close()
        loop.run_until_complete(close())
    finally:
        loop.close()
        mesh.stop()
    summary = {
        "rate": rate,
        "window_s": seconds,
        "ways": {
            way: {
                "runs": len(rows_),
                "over_budget_median": float(np.median([r["over_budget"] for r in rows_])),
                "failed_median": float(np.median([r["failed"] for r in rows_])),
                "within_95ms_median": float(np.median([r["within_95ms"] for r in rows_])),
                "p99_ms_median": float(np.median([r["p99_ms"] or 0 for r in rows_])),
                "reload_s_median": float(np.median([r.get("reload_s", 0) for r in rows_])),
                "replicas_died": sum(len(r["replicas_died"]) for r in rows_),
                "detail": rows_,
            }
            for way, rows_ in results.items()
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(markdown(summary))
    log(markdown(summary))
    return summary


def markdown(summary: dict) -> str:
    lines = [
        "# What a rollout step's reload costs the callers",
        "",
        f"{summary['rate']} requests/s (Poisson) through Envoy to two replicas, a "
        f"{summary['window_s']} s window per run in which `fraud_scoring` is reloaded on each "
        "replica in turn; alternating order; medians per run.",
        "",
        "| way | runs | over budget | failed | within 95 ms | p99 ms | reload s | replicas died |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for way, w in summary["ways"].items():
        lines.append(
            f"| {way} | {w['runs']} | {w['over_budget_median']:.0f} | {w['failed_median']:.0f} "
            f"| {w['within_95ms_median']:.2%} | {w['p99_ms_median']:.1f} "
            f"| {w['reload_s_median']:.1f} | {w['replicas_died']} |"
        )
    return "\n".join(lines) + "\n"
