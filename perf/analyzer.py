"""perf_analyzer: one measurement per load level, its CSV as a result point, the sweeps."""

from __future__ import annotations

import csv
import io
import subprocess
from pathlib import Path

from client.local import operator
from client.local.operator import admin_client
from perf import cpu
from perf.systems import COMPOSING, MODEL_OF
from perf.tools import ensure_perf_analyzer
from perf.triton_stats import model_statistics, served, statistics_delta

PA_PARTS = (
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
)


def _primary_in_process(url: str) -> bool:
    admin = admin_client(url)
    try:
        return operator.primary_in_process(admin)
    finally:
        admin.close()


def perf_analyzer(
    binary: Path,
    env: dict[str, str],
    url: str,
    model: str,
    data: Path | None,
    csv_path: Path,
    window: int,
    concurrency: int | None = None,
    rate: int | None = None,
    trials: int = 6,
    shape: str | None = None,
) -> dict:
    """One perf_analyzer measurement; its CSV row as numbers (µs, inferences/s). Inputs come
    from the ``data`` JSON file, or are generated with ``shape`` (``NAME:dims``)."""
    inputs = ["--input-data", str(data)] if data is not None else ["--shape", str(shape)]
    cmd = [
        str(binary),
        "-m",
        model,
        "-u",
        url,
        "-i",
        "grpc",
        *inputs,
        "--percentile=99",
        "--measurement-mode",
        "count_windows",
        "--measurement-request-count",
        str(window),
        "-s",
        "50",
        "-r",
        str(trials),
        "-f",
        str(csv_path),
        *operator.perf_analyzer_arguments(),
    ]
    if model.startswith("fraud_scoring") and not _primary_in_process(url):
        # Not the fallback: a model that has not run yet has no statistics per version,
        # and perf_analyzer then fails ("failed to find the requested model version"); nor
        # the primary when it runs in fraud_scoring's process (Triton's never runs then).
        cmd += ["--bls-composing-models", COMPOSING[0]]
    if rate is not None:
        # Asynchronous sends: in its default synchronous mode perf_analyzer keeps at most
        # --max-threads (4) requests in flight, which capped the offered rate at
        # 4 / latency (about 230/s at 17 ms) whatever rate was asked for.
        cmd += [
            "--request-rate-range",
            f"{rate}:{rate}:1",
            "--request-distribution",
            "poisson",
            "--async",
        ]
    else:
        cmd += ["--concurrency-range", f"{concurrency}:{concurrency}:1"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    (csv_path.with_suffix(".log")).write_text(done.stdout + done.stderr)
    if done.returncode != 0 or not csv_path.exists():
        tail = (done.stdout + done.stderr)[-600:]
        return {"error": f"perf_analyzer exited with {done.returncode}: {tail}"}
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    row = {k: float(v) for k, v in rows[0].items() if k and v not in (None, "")}
    return row


def measure(
    binary, env, url, model, data, path, window, kind: str, level: int, trials: int = 6
) -> dict:
    """One load level (``kind`` ``concurrency`` or ``request_rate``) as a result point."""
    concurrency = level if kind == "concurrency" else None
    rate = level if kind == "request_rate" else None
    row = perf_analyzer(binary, env, url, model, data, path, window, concurrency, rate, trials)
    return pa_point(row, float(rate) if rate else None, concurrency)


def pa_point(row: dict, offered: float | None, concurrency: int | None) -> dict:
    if "error" in row:
        return {"offered_rps": offered, "concurrency": concurrency, **row}
    return {
        "offered_rps": offered,
        "concurrency": concurrency,
        "achieved_rps": round(row["Inferences/Second"], 1),
        "p50_ms": round(row["p50 latency"] / 1000, 3),
        "p90_ms": round(row["p90 latency"] / 1000, 3),
        "p99_ms": round(row["p99 latency"] / 1000, 3),
        # perf_analyzer's CSV has no average column; its parts add up to the mean latency.
        "avg_ms": round(sum(row.get(k, 0) for k in PA_PARTS) / 1000, 3),
        "client_send_us": row.get("Client Send"),
        "network_us": row.get("Network+Server Send/Recv"),
        "server_queue_us": row.get("Server Queue"),
        "server_compute_input_us": row.get("Server Compute Input"),
        "server_compute_infer_us": row.get("Server Compute Infer"),
        "server_compute_output_us": row.get("Server Compute Output"),
        "client_recv_us": row.get("Client Recv"),
    }


def sweep_perf_analyzer(plan, server, data: Path, out: Path, progress) -> dict:

    binary, env = ensure_perf_analyzer(log=progress.write)
    client = admin_client(server.grpc_url)
    results: dict = {}
    csv_dir = out / "raw"
    csv_dir.mkdir(parents=True, exist_ok=True)
    models = (*MODEL_OF.values(), "perf_empty")
    meter = cpu.CpuMeter(server.process.pid)
    for model in models:
        results[model] = {"concurrency": [], "request_rate": []}
        model_data = data if model != "perf_empty" else None
        levels = [("concurrency", c) for c in plan.concurrencies]
        if model != "perf_empty":
            levels += [("request_rate", r) for r in plan.pa_rates]
        else:
            levels = [("concurrency", 1)]
        for kind, level in levels:
            progress.set_description(f"perf_analyzer {model} {kind} {level}")
            watched = (model, *COMPOSING) if model == "fraud_scoring" else (model,)
            before = model_statistics(client, watched)
            path = csv_dir / f"{model}_{kind}_{level}.csv"
            if model_data is None:

                def run(model=model, path=path, level=level):
                    row = perf_analyzer(
                        binary,
                        env,
                        server.grpc_url,
                        model,
                        None,
                        path,
                        plan.pa_window,
                        concurrency=level,
                        shape="INPUT:1",
                    )
                    return pa_point(row, None, level)
            else:

                def run(model=model, path=path, kind=kind, level=level):
                    return measure(
                        binary,
                        env,
                        server.grpc_url,
                        model,
                        data,
                        path,
                        plan.pa_window,
                        kind,
                        level,
                    )

            point = cpu.measured(meter, lambda m=model: served(client, m), run)
            point["triton"] = statistics_delta(before, model_statistics(client, watched))
            results[model][kind].append(point)
            progress.update(1)
    client.close()
    return results
