"""``make perf``: every system measured side by side in one run, on one machine.

1. Builds what is missing, starts Redis (filled from the offline store), Triton (the served
   models plus the benchmark's ``fraud_fused``, ``perf_hop`` and ``perf_empty``), the plain
   FastAPI peer and the BentoML peer.
2. perf_analyzer against ``fraud_scoring``, ``fraud_fused`` and ``perf_hop``: a concurrency
   sweep and a Poisson request-rate sweep, P99 as the stability percentile, count windows, one
   invocation per load level with Triton's statistics read before and after it.
3. One Python Poisson generator against ``triton_bls``, ``fused_triton``, ``plain_service``,
   ``bentoml`` and ``hop_floor``, the systems taking turns at each rate; the in-process
   ``floor`` at the same rates. Every level also measures the serving processes' CPU per
   decision (``perf.cpu``), the load generator's apart.
4. ``summary.json``, ``report.md`` and plots in ``perf/results`` (see ``perf.report``).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from perf import cpu, loadgen, workload
from perf.tools import ensure_perf_analyzer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "perf" / "results"
PERF_MODELS = Path(__file__).resolve().parent / "models"
SYSTEMS = ("triton_bls", "fused_triton", "plain_service", "bentoml", "floor", "hop_floor")
MODEL_OF = {"triton_bls": "fraud_scoring", "fused_triton": "fraud_fused", "hop_floor": "perf_hop"}
#: The systems served by this run's Triton (their CPU is the server's and its stubs').
ON_TRITON = tuple(MODEL_OF)
COMPOSING = ("fraud_primary", "fraud_fallback")
PA_PARTS = ("Client Send", "Network+Server Send/Recv", "Server Queue", "Server Compute Input",
            "Server Compute Infer", "Server Compute Output", "Client Recv")  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """How much to measure: the full run or ``PERF_QUICK=1``."""

    quick: bool
    concurrencies: tuple[int, ...]
    pa_rates: tuple[int, ...]
    pa_window: int
    py_rates: tuple[int, ...]
    py_seconds: float
    rows: int

    @classmethod
    def smoke(cls) -> Plan:
        """The least that runs every step: for the test suite, not for numbers."""
        return cls(True, (1,), (50,), 50, (20,), 2.0, 200)

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(True, (1, 8), (100, 500), 300, (100, 200, 500), 2.0, 600)
        return cls(
            False,
            (1, 2, 4, 8, 16),
            (100, 200, 300, 400, 500, 600, 800),
            1000,
            (50, 100, 200, 300, 400, 500, 600, 800, 1000, 1200, 1500, 2000),
            6.0,
            2000,
        )


# ---------------------------------------------------------------- the systems under test
def perf_repository(out: Path, repository: Path) -> Path:
    """A second model repository with the benchmark's own models."""
    from build_engines.triton_config import scoring_config

    root = out / "model_repository"
    shutil.rmtree(root, ignore_errors=True)
    fused = root / "fraud_fused"
    (fused / "1").mkdir(parents=True)
    shutil.copy(PERF_MODELS / "fraud_fused" / "1" / "model.py", fused / "1" / "model.py")
    params = {"REPOSITORY": str(repository)}
    (fused / "config.pbtxt").write_text(
        scoring_config(name="fraud_fused", parameters=params, instances=2)
    )
    empty = root / "perf_empty"
    (empty / "1").mkdir(parents=True)
    shutil.copy(PERF_MODELS / "perf_empty" / "1" / "model.py", empty / "1" / "model.py")
    (empty / "config.pbtxt").write_text(
        'name: "perf_empty"\nbackend: "python"\nmax_batch_size: 64\n'
        'input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'output [ { name: "OUTPUT" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        "instance_group [ { count: 1, kind: KIND_CPU } ]\n"
    )
    hop = root / "perf_hop"
    (hop / "1").mkdir(parents=True)
    shutil.copy(PERF_MODELS / "perf_hop" / "1" / "model.py", hop / "1" / "model.py")
    # fraud_scoring's batcher and instances: the floor differs from it only in the work.
    (hop / "config.pbtxt").write_text(scoring_config(name="perf_hop"))
    return root


@contextlib.contextmanager
def plain_service(
    env: dict[str, str], repository: Path, log_path: Path
) -> Iterator[tuple[str, int]]:
    """The FastAPI peer under uvicorn, one worker per core; yields its ``/score`` URL and
    the master's pid."""
    from feature_repo.local_services import free_port, stop_process

    port = free_port()
    workers = str(os.cpu_count() or 1)
    cmd = [sys.executable, "-m", "uvicorn", "perf.plain_service:app", "--host", "127.0.0.1",
           "--port", str(port), "--workers", workers, "--log-level", "warning",
           "--no-access-log"]  # fmt: skip
    full_env = {**os.environ, **env, "PLAIN_REPOSITORY": str(repository)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_http(
            f"http://127.0.0.1:{port}/health",
            process,
            "plain_service",
            log_path,
            ready=lambda body: json.loads(body).get("ready"),
            timeout_s=120,
        )
        yield f"http://127.0.0.1:{port}/score", process.pid
    finally:
        stop_process(process, grace_s=10)


def _wait_http(
    url: str, process: subprocess.Popen, name: str, log_path: Path, ready=None, timeout_s=180
):
    """Until ``url`` answers 200 (and ``ready(body)``, where given)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited at start; see {log_path}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200 and (ready is None or ready(r.read())):
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not ready in {timeout_s} s; see {log_path}")
        time.sleep(0.3)


@contextlib.contextmanager
def bento_service(
    env: dict[str, str], repository: Path, log_path: Path, log=print
) -> Iterator[tuple[str, int]]:
    """The BentoML peer (``perf.bento_service``) under ``bentoml serve``, in its own
    environment; yields its ``/score`` URL and the server's pid."""
    from feature_repo.local_services import free_port, stop_process
    from perf.tools import ensure_bentoml

    bentoml = ensure_bentoml(log=log)
    port = free_port()
    cmd = [
        str(bentoml),
        "serve",
        "perf.bento_service:FraudBento",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    full_env = {
        **os.environ,
        **env,
        "BENTO_REPOSITORY": str(repository),
        "BENTOML_HOME": str(log_path.parent / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "True",
    }
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_http(f"http://127.0.0.1:{port}/readyz", process, "bento_service", log_path)
        yield f"http://127.0.0.1:{port}/score", process.pid
    finally:
        stop_process(process, grace_s=10)


# ---------------------------------------------------------------- Triton's statistics
def model_statistics(client, models: tuple[str, ...]) -> dict[str, dict]:
    out = {}
    for name in models:
        stats = client.get_inference_statistics(model_name=name, as_json=True)
        entry = stats["model_stats"][0]
        inf = entry["inference_stats"]
        out[name] = {
            "inference_count": int(entry.get("inference_count", 0)),
            "execution_count": int(entry.get("execution_count", 0)),
            **{
                k: (int(inf[k].get("count", 0)), int(inf[k].get("ns", 0)))
                for k in ("success", "queue", "compute_input", "compute_infer", "compute_output")
            },
        }
    return out


def statistics_delta(before: dict, after: dict) -> dict[str, dict]:
    """Per model: requests, average batch, and mean µs per request in each server stage."""
    out = {}
    for name, a in after.items():
        b = before[name]
        requests = a["success"][0] - b["success"][0]
        executions = a["execution_count"] - b["execution_count"]
        inferences = a["inference_count"] - b["inference_count"]
        row = {
            "requests": requests,
            "avg_batch": round(inferences / executions, 2) if executions else None,
        }
        for k in ("queue", "compute_input", "compute_infer", "compute_output"):
            n = a[k][0] - b[k][0]
            row[f"{k}_us"] = round((a[k][1] - b[k][1]) / n / 1000, 1) if n else None
        out[name] = row
    return out


def served(client, model: str) -> int:
    """Requests ``model`` has answered successfully so far."""
    return model_statistics(client, (model,))[model]["success"][0]


# ---------------------------------------------------------------- perf_analyzer
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
    cmd = [str(binary), "-m", model, "-u", url, "-i", "grpc", *inputs,
           "--percentile=99", "--measurement-mode", "count_windows",
           "--measurement-request-count", str(window), "-s", "50", "-r", str(trials),
           "-f", str(csv_path)]  # fmt: skip
    if model.startswith("fraud_scoring"):
        # Not the fallback: a model that has not run yet has no statistics per version,
        # and perf_analyzer then fails ("failed to find the requested model version").
        cmd += ["--bls-composing-models", COMPOSING[0]]
    if rate is not None:
        # Asynchronous sends: in its default synchronous mode perf_analyzer keeps at most
        # --max-threads (4) requests in flight, which capped the offered rate at
        # 4 / latency (about 230/s at 17 ms) whatever rate was asked for.
        cmd += ["--request-rate-range", f"{rate}:{rate}:1", "--request-distribution", "poisson",
                "--async"]  # fmt: skip
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
    import tritonclient.grpc as grpcclient

    binary, env = ensure_perf_analyzer(log=progress.write)
    client = grpcclient.InferenceServerClient(server.grpc_url)
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
                        binary, env, server.grpc_url, model, None, path, plan.pa_window,
                        concurrency=level, shape="INPUT:1",
                    )  # fmt: skip
                    return pa_point(row, None, level)
            else:

                def run(model=model, path=path, kind=kind, level=level):
                    return measure(
                        binary, env, server.grpc_url, model, data, path, plan.pa_window,
                        kind, level,
                    )  # fmt: skip

            point = cpu.measured(meter, lambda m=model: served(client, m), run)
            point["triton"] = statistics_delta(before, model_statistics(client, watched))
            results[model][kind].append(point)
            progress.update(1)
    client.close()
    return results


# ---------------------------------------------------------------- Python generator
def _within_budget(row: dict) -> bool:
    return (
        row["p99_ms"] is not None
        and row["p99_ms"] <= 95
        and not row["errors"]
        and row["achieved_rps"] >= 0.9 * row["offered_rps"]
    )


def sweep_python(plan, loop, calls: dict, floor, n_rows: int, stats, meters, progress) -> dict:
    """Every system at each rate in turn; a system leaves the sweep after a rate it failed.
    ``stats()`` reads Triton's statistics, kept per rate for ``triton_bls``; ``meters`` maps
    each networked system to the :class:`~perf.cpu.CpuMeter` of its processes, whose CPU
    per decision is kept per rate (the floor's is this process's)."""
    results = {name: {"rates": [], "stages": [], "triton": []} for name in SYSTEMS}
    active = set(SYSTEMS)
    for k, rate in enumerate(plan.py_rates):
        requests = max(100, int(rate * plan.py_seconds))
        order = list(SYSTEMS) if k % 2 == 0 else list(reversed(SYSTEMS))
        for name in order:
            if name not in active:
                progress.update(1)
                continue
            progress.set_description(f"poisson {name} {rate}/s")
            meter = meters.get(name) or cpu.CpuMeter()
            # A rate that fails is run once more before the system leaves the sweep: on this
            # shared machine one stall (a GC pause, a neighbour) can sink a single run.
            for attempt in (1, 2):
                before = stats() if name == "triton_bls" else None
                cpu_before = meter.sample()
                if name == "floor":
                    result = floor.poisson_run(rate, requests, seed=k)
                else:
                    result = loop.run_until_complete(
                        loadgen.poisson_run(calls[name], rate, requests, n_rows, seed=k)
                    )
                cpu_after = meter.sample()
                row = result.row(target_rps=rate)
                row["attempt"] = attempt
                if _within_budget(row):
                    break
            cost = cpu.in_process if name == "floor" else cpu.per_decision
            row["cpu"] = cost(cpu_before, cpu_after, result.ok)
            results[name]["rates"].append(row)
            results[name]["stages"].append(
                {s: round(float(np.mean(v)), 1) for s, v in result.stage_us.items()}
            )
            if before is not None:
                results[name]["triton"].append(statistics_delta(before, stats()))
            if not _within_budget(row):
                active.discard(name)
            progress.update(1)
    return results


def max_rps_within(rates: list[dict]) -> float:
    ok = [r["achieved_rps"] for r in rates if _within_budget(r)]
    return max(ok, default=0.0)


# ---------------------------------------------------------------- the run
def run(
    quick: bool,
    scale: str,
    out: Path = RESULTS,
    log=print,
    plan: Plan | None = None,
    repository: Path | None = None,
    data_dir: Path | None = None,
    work: Path = ROOT / "build" / "perf",
) -> dict:
    """The whole run. ``repository`` and ``data_dir`` default to the built models and their
    data (built at ``scale`` when missing); the tests pass their own and a smoke plan."""
    import tritonclient.grpc as grpcclient

    from client.launcher import ensure_models, warm_up
    from client.triton_server import FRAUD_MODELS, MODEL_REPOSITORY, Ports
    from client.triton_server import start as start_triton
    from feature_repo.local_services import redis_server
    from feature_repo.store import StoreSettings, feature_store, materialize
    from perf import report
    from perf.floor import Floor
    from python_backend.online_features import open_reader

    plan = plan or Plan.make(quick)
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    ensure_perf_analyzer(log=log)
    if repository is None:
        scale = ensure_models(scale, log)
        repository = MODEL_REPOSITORY
        data_dir = ROOT / "build" / "data" / scale
    frame = workload.sample_transactions(data_dir, plan.rows)
    rows = workload.rows(frame)
    data = workload.perf_analyzer_data(frame, work / "input_data.json")
    log(
        f"workload: {len(rows):,} transactions of the last {scale} day, "
        f"{int(frame['is_fraud'].sum())} frauds, {frame['card_id'].nunique():,} cards, "
        f"{frame['terminal_id'].nunique():,} terminals"
    )
    # The online store every system reads: Redis (as in production) or the embedded SQLite
    # store (PERF_STORE=sqlite), filled from the same offline data.
    store = os.environ.get("PERF_STORE", "redis")
    with redis_server() if store == "redis" else contextlib.nullcontext() as redis:
        settings = StoreSettings.from_env(
            kind=store,
            data_dir=data_dir,
            repo_dir=work / "features",
            **({"redis_url": f"redis://127.0.0.1:{redis.port}/0"} if redis else {}),
        )
        log(f"features: materializing the {scale} store into {store} ({settings.reader_location})")
        materialize(feature_store(settings), settings, log=log)
        location = "REDIS_URL" if store == "redis" else "FEATURE_SQLITE_PATH"
        env = {
            "FEATURE_STORE": store,
            location: settings.reader_location,
            "FEATURE_REPO_DIR": str(settings.repo_dir),
            "FEATURE_DATA": str(data_dir),
        }
        extra = perf_repository(work, repository)
        server = start_triton(
            repository=repository,
            ports=Ports.free(),
            env=env,
            log_path=work / "server.log",
            extra_repositories=(extra,),
            models=[*FRAUD_MODELS, "fraud_fused", "perf_empty", "perf_hop"],
        )
        try:
            warm_up(server, requests=100)
            with (
                plain_service(env, repository, work / "plain_service.log") as (plain_url, pid),
                bento_service(env, repository, work / "bento_service.log", log) as (bento, b_pid),
            ):
                meters = {name: cpu.CpuMeter(server.process.pid) for name in ON_TRITON}
                meters["plain_service"] = cpu.CpuMeter(pid)
                meters["bentoml"] = cpu.CpuMeter(b_pid)
                reader = open_reader(store, settings.reader_location)
                floor = Floor(repository, reader, rows)
                reader.close()
                loop = asyncio.new_event_loop()
                asyncio.set_event_loop(loop)
                calls, closers = {}, []

                async def make_clients() -> None:
                    for name, model in MODEL_OF.items():
                        calls[name], close = loadgen.grpc_call(server.grpc_url, model, rows)
                        closers.append(close)
                    calls["plain_service"], close = loadgen.http_call(plain_url, rows)
                    closers.append(close)
                    calls["bentoml"], close = loadgen.http_call(bento, rows, answer=lambda b: b[0])
                    closers.append(close)

                loop.run_until_complete(make_clients())
                # Warm every path once (first calls load sessions and open connections).
                for name in ("fused_triton", "plain_service", "bentoml", "triton_bls", "hop_floor"):
                    for i in range(50):
                        loop.run_until_complete(calls[name](i % len(rows)))
                floor.service_times_ms(200)
                stats_client = grpcclient.InferenceServerClient(server.grpc_url)

                def stats() -> dict:
                    return model_statistics(stats_client, ("fraud_scoring", *COMPOSING))

                steps = (
                    len(MODEL_OF) * (len(plan.concurrencies) + len(plan.pa_rates))
                    + 1
                    + len(plan.py_rates) * len(SYSTEMS)
                )
                with tqdm(total=steps, unit="run", desc="perf", file=sys.stderr) as progress:
                    pa = sweep_perf_analyzer(plan, server, data, out, progress)
                    python = sweep_python(
                        plan, loop, calls, floor, len(rows), stats, meters, progress
                    )
                floor_service = floor.service_times_ms(2000 if not plan.quick else 300)
                for close in closers:
                    loop.run_until_complete(close())
                loop.close()
                stats_client.close()
                admin = grpcclient.InferenceServerClient(server.grpc_url)
                config = {
                    m: admin.get_model_config(m, as_json=True)["config"]
                    for m in ("fraud_scoring", "fraud_primary", "fraud_fallback", "fraud_fused")
                }
                admin.close()
        finally:
            server.stop()
    summary = report.summarize(plan, scale, pa, python, floor_service, config)
    summary["store"] = store
    summary["seconds"] = round(time.perf_counter() - started, 1)
    report.write(summary, out)
    log(report.console(summary))
    log(f"perf: wrote {out}/ in {summary['seconds']:.0f} s")
    return summary
