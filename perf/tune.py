"""``python -m perf tune``: what each serving change bought, measured side by side in one run.

Each variant is the committed ``fraud_scoring`` code loaded under its own name with its own
configuration, cumulative from ``v0`` (the design before tuning: the fallback a Triton model
hedged beside every primary call, metrics handed to Triton on every execute, no dynamic
batching, the primary's batcher waiting up to 500 µs); the last row is the floor this
architecture sets (``perf/models/perf_hop``: one BLS hop to an empty model, no work). The
primary's queue delay is a property of the shared ``fraud_primary``, so it is reloaded with
the variant's value before each measurement. Every variant gets the same perf_analyzer runs
(concurrency 1, 8 and 16, Poisson 200/s and, with the batcher, 500/s), with the serving
processes' CPU per decision over each run (perf_analyzer's own apart); the variants take
turns, twice, in alternating order, and the run with the better P99 of each is kept (once
with ``--quick``).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from build_engines.triton_config import PRIMARY_QUEUE_DELAY_US
from client.local.operator import admin_client
from perf import cpu
from perf.analyzer import measure
from perf.cpu import CpuMeter
from perf.peers import perf_repository
from perf.systems import PERF_MODELS
from perf.tools import ensure_perf_analyzer
from perf.triton_stats import served
from python_backend.paths import BUILD, DATA, MODEL_REPOSITORY, PERF_RESULTS


@dataclass(frozen=True)
class Variant:
    name: str
    change: str
    parameters: dict = field(default_factory=dict)
    batching: bool = True
    instances: int = 2
    primary_delay_us: int = 0
    #: Poisson rates perf_analyzer offers (open loop) besides the closed loops.
    rates: tuple[int, ...] = (200, 500)
    #: The model's code: the committed fraud_scoring, or a stand-in from perf/models.
    code: Path = MODEL_REPOSITORY / "fraud_scoring" / "1" / "model.py"


#: The design before this round: the fallback a Triton model hedged beside every primary
#: call, the primary's wait bounded by the budget alone, the collector left alone.
BEFORE = {
    "FALLBACK": "triton",
    "HEDGE_FALLBACK": "always",
    "PRIMARY_TIMEOUT_MS": "1000",
    "GC_FREEZE": "0",
}
VARIANTS = (
    Variant(
        "v0_before",
        "before tuning",
        {**BEFORE, "METRICS_FLUSH_S": "0"},
        batching=False,
        instances=4,
        primary_delay_us=500,
        rates=(200,),
    ),
    Variant(
        "v1_metrics",
        "metrics counted in process, flushed each second",
        BEFORE,
        batching=False,
        instances=4,
        primary_delay_us=500,
        rates=(200,),
    ),
    Variant(
        "v3_batching",
        "v1 + dynamic batching of the BLS: one feature read, one primary call per batch",
        BEFORE,
        instances=4,
        primary_delay_us=500,
    ),
    Variant(
        "v5_two_instances",
        "v3 + the primary's batcher adds no delay, two BLS instances instead of four "
        "(the design before this round)",
        BEFORE,
    ),
    Variant(
        "v6_in_process_fallback",
        "v5 + the fallback in the BLS (ONNX Runtime): no third request per decision; the "
        "primary's wait capped at 40 ms (shipped)",
        {},
    ),
    Variant(
        "v7_gc_freeze",
        "v6 + gc.freeze() after initialize (not adopted: no measurable change)",
        {"GC_FREEZE": "1"},
    ),
    Variant(
        "v8_in_process_primary",
        "v6 + the primary in the BLS's process, given up at its deadline by ONNX Runtime's "
        "terminate flag: no hop to fraud_primary",
        {"PRIMARY": "in_process", "SYNC_EXECUTE": "0"},
    ),
    Variant(
        "v9_sync_execute",
        "v8 + a batch with every call in process decided in Triton's calling thread, not on "
        "the Python backend's event loop (shipped)",
        {"PRIMARY": "in_process"},
    ),
    Variant(
        "v8t_in_process_thread",
        "v8 with the session in a worker thread, abandoned at the deadline (not adopted: "
        "the hand-off costs most of what the hop did)",
        {"PRIMARY": "in_process_thread", "SYNC_EXECUTE": "0"},
    ),
    Variant(
        "v8u_in_process_unguarded",
        "v8 with no deadline at all (never shippable: what the guard costs)",
        {"PRIMARY": "in_process_unguarded", "SYNC_EXECUTE": "0"},
    ),
    Variant(
        "floor_one_hop",
        "the floor: a BLS with one async_exec hop to an empty model, no work",
        code=PERF_MODELS / "perf_hop" / "1" / "model.py",
    ),
)
LOADS = (("concurrency", 1), ("concurrency", 8), ("concurrency", 16))


def variant_repository(root: Path, repository: Path) -> Path:
    from build_engines.triton_config import scoring_config

    shutil.rmtree(root, ignore_errors=True)
    source = repository / "fraud_scoring" / "1"
    fallback_onnx = repository / "fraud_fallback" / "1" / "model.onnx"
    for v in VARIANTS:
        version = root / v.name / "1"
        version.mkdir(parents=True)
        shutil.copy(v.code, version / "model.py")
        shutil.copy(source / "decision_policy.json", version)
        parameters = {
            "FALLBACK_ONNX": str(fallback_onnx),
            "PRIMARY_DIR": str(repository / "fraud_primary"),
            **v.parameters,
        }
        (root / v.name / "config.pbtxt").write_text(
            scoring_config(
                instances=v.instances, name=v.name, parameters=parameters, batching=v.batching
            )
        )
    return root


def set_primary_delay(client, delay_us: int) -> None:
    config = client.get_model_config("fraud_primary", as_json=True)["config"]
    current = int(config["dynamic_batching"].get("max_queue_delay_microseconds", 0))
    if current == delay_us:
        return
    config["dynamic_batching"]["max_queue_delay_microseconds"] = str(delay_us)
    client.load_model("fraud_primary", config=json.dumps(config))


def tune(
    scale: str,
    out: Path = PERF_RESULTS / "tuning",
    log=print,
    quick: bool = False,
    only: tuple[str, ...] = (),
) -> dict:
    """Every variant (``only``: those named, the floor always) measured side by side."""
    chosen = [v for v in VARIANTS if not only or v.name in only or v is VARIANTS[-1]]
    unknown = set(only) - {v.name for v in VARIANTS}
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}: {[v.name for v in VARIANTS]}")

    from client.launcher import ensure_models, warm_up
    from client.local.services import redis_server
    from client.local.triton import FRAUD_MODELS, Ports
    from client.local.triton import start as start_triton
    from feature_repo.store import StoreSettings, fill
    from perf import workload
    from python_backend.paths import MODEL_REPOSITORY

    binary, env = ensure_perf_analyzer(log=log)
    scale = ensure_models(scale, log)
    data_dir = DATA / scale
    work = BUILD / "perf"
    out.mkdir(parents=True, exist_ok=True)
    frame = workload.sample_transactions(data_dir, 2000)
    data = workload.perf_analyzer_data(frame, work / "input_data.json")
    results: dict = {v.name: {} for v in chosen}
    with redis_server() as redis:
        redis_url = f"redis://127.0.0.1:{redis.port}/0"
        settings = StoreSettings.from_env(
            kind="redis", redis_url=redis_url, data_dir=data_dir, repo_dir=work / "features"
        )
        server_env = fill(settings, log=lambda _m: None)
        variants = variant_repository(work / "tuning_repository", MODEL_REPOSITORY)
        server = start_triton(
            ports=Ports.free(),
            env=server_env,
            log_path=work / "tuning_server.log",
            extra_repositories=(variants, perf_repository(work, MODEL_REPOSITORY)),
            models=[*FRAUD_MODELS, "perf_empty", *(v.name for v in chosen)],
        )
        try:
            warm_up(server, requests=50)
            admin = admin_client(server.grpc_url)
            rounds = [chosen] if quick else [chosen, list(reversed(chosen))]
            total = sum(len(LOADS) + len(v.rates) for r in rounds for v in r)
            meter = CpuMeter(server.process.pid)
            with tqdm(total=total, unit="run", desc="tune", file=sys.stderr) as progress:
                for order in rounds:
                    for v in order:
                        set_primary_delay(admin, v.primary_delay_us)
                        loads = [*LOADS, *(("request_rate", r) for r in v.rates)]
                        for kind, level in loads:
                            progress.set_description(f"tune {v.name} {kind} {level}")
                            path = out / f"{v.name}_{kind}_{level}.csv"

                            def run(v=v, path=path, kind=kind, level=level):
                                return measure(
                                    binary,
                                    env,
                                    server.grpc_url,
                                    v.name,
                                    data,
                                    path,
                                    500,
                                    kind,
                                    level,
                                    trials=4,
                                )

                            point = cpu.measured(meter, lambda v=v: served(admin, v.name), run)
                            key = f"{kind}_{level}"
                            best = results[v.name].get(key)
                            if "error" not in point and (
                                best is None or point["p99_ms"] < best["p99_ms"]
                            ):
                                results[v.name][key] = point
                            progress.update(1)
            set_primary_delay(admin, PRIMARY_QUEUE_DELAY_US)
            admin.close()
        finally:
            server.stop()
    summary = {
        "scale": scale,
        "variants": [{"name": v.name, "change": v.change, **results[v.name]} for v in chosen],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    base, floor = summary["variants"][0], summary["variants"][-1]
    summary["ratios_against"] = base["name"]
    for entry in summary["variants"]:
        entry["ratios_to_v0"] = _ratios(entry, base)
        entry["cpu_vs_one_hop_floor"] = {
            key: _cpu_ratio(entry, floor, key)
            for key in ("concurrency_8", "request_rate_200", "request_rate_500")
        }
    (out / "tuning.json").write_text(json.dumps(summary, indent=2))
    (out / "tuning.md").write_text(markdown(summary))
    log(markdown(summary))
    return summary


def _ratios(entry: dict, base: dict) -> dict:
    def get(e, key, field_):
        return (e.get(key) or {}).get(field_)

    pairs = {
        "p50_c1": ("concurrency_1", "p50_ms"),
        "rps_c8": ("concurrency_8", "achieved_rps"),
        "rps_c16": ("concurrency_16", "achieved_rps"),
        "p99_c16": ("concurrency_16", "p99_ms"),
    }
    out = {}
    for name, (key, field_) in pairs.items():
        a, b = get(entry, key, field_), get(base, key, field_)
        out[name] = round(a / b, 2) if a and b else None
    return out


def _cpu(entry: dict, key: str) -> float | None:
    return ((entry.get(key) or {}).get("cpu") or {}).get("cpu_ms_per_decision")


def _cpu_ratio(entry: dict, floor: dict, key: str) -> float | None:
    a, b = _cpu(entry, key), _cpu(floor, key)
    return round(a / b, 2) if a and b else None


def markdown(summary: dict) -> str:
    lines = [
        "| variant | change | p50 c=1 ms | rps c=8 | rps c=16 | p99 c=16 ms "
        f"| rps c=16 / {summary['ratios_against']} "
        "| CPU ms/decision c=8 | at 200/s | at 500/s | p99 500/s ms | CPU / floor 200/s "
        "| CPU / floor 500/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in summary["variants"]:

        def cell(key, field_, digits, v=v):
            value = (v.get(key) or {}).get(field_)
            return "n/a" if value is None else f"{value:,.{digits}f}"

        ratio = v["ratios_to_v0"].get("rps_c16")
        lines.append(
            f"| {v['name']} | {v['change']} | {cell('concurrency_1', 'p50_ms', 2)} | "
            f"{cell('concurrency_8', 'achieved_rps', 0)} | "
            f"{cell('concurrency_16', 'achieved_rps', 0)} | "
            f"{cell('concurrency_16', 'p99_ms', 2)} | {ratio if ratio else 'n/a'} | "
            + " | ".join(
                "n/a" if _cpu(v, k) is None else f"{_cpu(v, k):.2f}"
                for k in ("concurrency_8", "request_rate_200", "request_rate_500")
            )
            + f" | {cell('request_rate_500', 'p99_ms', 2)} | "
            + " | ".join(
                str(v["cpu_vs_one_hop_floor"].get(k) or "n/a")
                for k in ("request_rate_200", "request_rate_500")
            )
            + " |"
        )
    return "\n".join(lines) + "\n"
