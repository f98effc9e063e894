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
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from client.local.operator import admin_client
from perf import cpu, loadgen, workload
from perf.analyzer import sweep_perf_analyzer
from perf.peers import bento_service, perf_repository, plain_service
from perf.poisson import sweep_python
from perf.systems import COMPOSING, MODEL_OF, ON_TRITON, SYSTEMS
from perf.tools import ensure_perf_analyzer
from perf.triton_stats import model_statistics
from python_backend import settings
from python_backend.paths import BUILD, DATA, PERF_RESULTS


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


def run(
    quick: bool,
    scale: str,
    out: Path = PERF_RESULTS,
    log=print,
    plan: Plan | None = None,
    repository: Path | None = None,
    data_dir: Path | None = None,
    work: Path = BUILD / "perf",
) -> dict:
    """The whole run. ``repository`` and ``data_dir`` default to the built models and their
    data (built at ``scale`` when missing); the tests pass their own and a smoke plan."""

    from client.launcher import ensure_models, warm_up
    from client.local.services import redis_server
    from client.local.triton import FRAUD_MODELS, Ports
    from client.local.triton import start as start_triton
    from feature_repo.store import StoreSettings, fill
    from perf import report
    from perf.floor import Floor
    from python_backend.fraud.online import open_reader
    from python_backend.paths import MODEL_REPOSITORY

    plan = plan or Plan.make(quick)
    started = time.perf_counter()
    built = repository is None  # `make perf` on the built models (the tests pass their own)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    ensure_perf_analyzer(log=log)
    if repository is None:
        scale = ensure_models(scale, log)
        repository = MODEL_REPOSITORY
        data_dir = DATA / scale
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
    store = settings.PERF_STORE.get()
    with redis_server() if store == "redis" else contextlib.nullcontext() as redis:
        store_settings = StoreSettings.from_env(
            kind=store,
            data_dir=data_dir,
            repo_dir=work / "features",
            **({"redis_url": f"redis://127.0.0.1:{redis.port}/0"} if redis else {}),
        )
        log(
            f"features: materializing the {scale} store into {store} "
            f"({store_settings.reader_location})"
        )
        env = fill(store_settings, log=log)
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
                reader = open_reader(store, store_settings.reader_location)
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
                stats_client = admin_client(server.grpc_url)

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
                admin = admin_client(server.grpc_url)
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
    if built:
        # Tracing's cost side by side (off, 1%, every request) and where the time goes.
        from perf import traces

        traces.run(scale, quick=quick, out=out / "traces", log=log)
    log(f"perf: wrote {out}/ in {time.perf_counter() - started:.0f} s")
    return summary
