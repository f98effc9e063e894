"""``python -m perf``: the side-by-side performance run (``make perf``).

    python -m perf [--quick] [--scale small] [--out perf/results]
    python -m perf tune       what each serving change bought, side by side (perf.tune)
    python -m perf image      the image API's latency per stage (perf.image, make perf-image)
    python -m perf chaos      faults injected under load, decisions reconciled (make chaos)
    python -m perf recommender  recommend_top5 sweep and click freshness (make perf-recommender)
    python -m perf feature-bench   online read latency, reader vs Feast SDK (make feature-bench)
    python -m perf records         binary records against JSON (make records-bench)
    python -m perf feature-parity  a day through Kafka, online vs offline (make feature-parity)
    python -m perf trace-report    tracing's cost and the per-stage breakdown (make trace-report)
    python -m perf mesh       what Envoy adds, direct vs through it side by side (make perf-mesh)
    python -m perf rollout-cost    what a canary and a shadow cost the serving path
    python -m perf reload-cost     a rollout step's reload: in place vs out of rotation
    python -m perf analysis   the analysis consumer's lag and its cost to serving
    python -m perf feature-groups  each feature group's worth beside its serving cost

``PERF_QUICK=1`` is the same as ``--quick`` (under five minutes). See ``perf.run``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from perf.run import run
from python_backend import settings
from python_backend.paths import PERF_RESULTS


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m perf", description=__doc__.split("\n")[0])
    parser.add_argument(
        "command",
        nargs="?",
        default="run",
        choices=(
            "run",
            "tune",
            "image",
            "chaos",
            "recommender",
            "feature-bench",
            "feature-parity",
            "trace-report",
            "mesh",
            "rollout-cost",
            "reload-cost",
            "analysis",
            "feature-groups",
            "records",
        ),
    )
    parser.add_argument("--quick", action="store_true", default=settings.PERF_QUICK.get() == "1")
    parser.add_argument(
        "--scale",
        default=settings.DEMO_SCALE.get(),
        help="scale to build when no model is built yet",
    )
    parser.add_argument("--out", type=Path, default=PERF_RESULTS)
    parser.add_argument("--limit", type=int, default=10_000, help="feature-parity: events")
    parser.add_argument(
        "--variants", default="", help="tune: only these (comma-separated; the floor always)"
    )
    args = parser.parse_args()
    if args.command == "trace-report":
        from perf.traces import run as run_traces

        run_traces(args.scale, quick=args.quick)
    elif args.command == "mesh":
        from perf.mesh import run as run_mesh

        run_mesh(args.scale, quick=args.quick)
    elif args.command == "rollout-cost":
        from perf.rollout_cost import run as run_rollout_cost

        run_rollout_cost(args.scale, quick=args.quick)
    elif args.command == "reload-cost":
        from perf.reload_cost import run as run_reload_cost

        run_reload_cost(args.scale, quick=args.quick)
    elif args.command == "analysis":
        from perf.analysis import run as run_analysis

        run_analysis(args.scale, quick=args.quick)
    elif args.command == "feature-groups":
        from perf.feature_groups import run as run_feature_groups

        run_feature_groups(args.scale, args.out)
    elif args.command == "image":
        from perf.image import run as run_image

        run_image(args.quick)
    elif args.command == "recommender":
        from perf.recommender import run as run_recommender

        run_recommender(args.quick)
    elif args.command == "chaos":
        from perf.chaos import faults_from_env
        from perf.chaos import run as run_chaos

        summary = run_chaos(args.quick, args.scale, faults=faults_from_env())
        raise SystemExit(0 if summary["decision_log"]["missing"] == 0 else 1)
    elif args.command in ("feature-bench", "feature-parity"):
        _features(args.command, args.limit)
    elif args.command == "records":
        from perf.records import bench, write_report

        data_dir = Path(settings.FEATURE_DATA.get())
        if not (data_dir / "transactions.parquet").exists():
            raise SystemExit(f"no simulated data in {data_dir}: run `make engines` first")
        print(f"records: {write_report(bench(data_dir), args.out)}")
    elif args.command == "tune":
        from perf.tune import tune

        only = tuple(v for v in args.variants.split(",") if v)
        tune(args.scale, quick=args.quick, only=only)
    else:
        run(args.quick, args.scale, args.out)


def _features(command: str, limit: int) -> None:
    """The feature store's benchmark or parity check, on both stores, with their own Redis
    and Kafka-protocol broker on loopback."""
    import contextlib
    import tempfile

    from client.local.services import kafka_broker, redis_server
    from feature_repo.store import StoreSettings
    from python_backend.paths import REPORTS

    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(redis_server())
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        stores = {
            kind: StoreSettings.from_env(
                kind=kind, redis_url=f"redis://127.0.0.1:{redis.port}/0", repo_dir=tmp / kind
            )
            for kind in ("sqlite", "redis")
        }
        if not (stores["sqlite"].data_dir / "transactions.parquet").exists():
            raise SystemExit(
                f"no simulated data in {stores['sqlite'].data_dir}: run `make engines` first "
                "(or set FEATURE_DATA)"
            )
        kafka = stack.enter_context(kafka_broker())
        if command == "feature-bench":
            from perf.feature_bench import run_bench

            run_bench(stores, REPORTS / "feature_latency.json", f"127.0.0.1:{kafka.port}")
        else:
            from perf.feature_parity import write_parity_report

            write_parity_report(
                stores, f"127.0.0.1:{kafka.port}", limit, REPORTS / "feature_parity.json"
            )


if __name__ == "__main__":
    main()
