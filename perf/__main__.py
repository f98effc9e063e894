"""``python -m perf``: the side-by-side performance run (``make perf``).

    python -m perf [--quick] [--scale small] [--out perf/results]
    python -m perf tune       what each serving change bought, side by side (perf.tune)
    python -m perf image      the image API's latency per stage (perf.image, make perf-image)
    python -m perf chaos      faults injected under load, decisions reconciled (make chaos)
    python -m perf recommender  recommend_top5 sweep and click freshness (make perf-recommender)

``PERF_QUICK=1`` is the same as ``--quick`` (under five minutes). See ``perf.run``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from perf.run import RESULTS, run


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m perf", description=__doc__.split("\n")[0])
    parser.add_argument(
        "command",
        nargs="?",
        default="run",
        choices=("run", "tune", "image", "chaos", "recommender"),
    )
    parser.add_argument("--quick", action="store_true", default=os.environ.get("PERF_QUICK") == "1")
    parser.add_argument("--scale", default=os.environ.get("DEMO_SCALE", "small"),
                        help="scale to build when no model is built yet")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.command == "image":
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
    elif args.command == "tune":
        from perf.tune import tune

        tune(args.scale, quick=args.quick)
    else:
        run(args.quick, args.scale, args.out)


if __name__ == "__main__":
    main()
