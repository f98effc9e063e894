"""Command line of the offline pipeline:
``python -m build_engines {all,eval-real,image,recommender,selection-bias}``."""

from __future__ import annotations

import argparse
import sys

from build_engines.primary import PrimaryConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m build_engines", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("all", help="simulate data, train, convert, quantize, report")
    build.add_argument("--scale", default="default", choices=["tiny", "small", "default"])
    build.add_argument("--seed", type=int, default=7)
    build.add_argument("--epochs", type=int, default=PrimaryConfig.epochs)
    build.add_argument("--force", action="store_true", help="rebuild even if up to date")
    real = sub.add_parser("eval-real", help="evaluate on the ULB credit-card fraud data set")
    real.add_argument("--epochs", type=int, default=PrimaryConfig.epochs)
    image = sub.add_parser("image", help="EfficientNet-Lite0: ONNX, INT8, engines, repository")
    image.add_argument("--force", action="store_true", help="rebuild even if up to date")
    recommend = sub.add_parser("recommender", help="MovieLens: train, evaluate, ONNX, features")
    recommend.add_argument("--epochs", type=int, default=12)
    recommend.add_argument("--force", action="store_true", help="rebuild even if up to date")
    bias = sub.add_parser(
        "selection-bias", help="what unlabelled declines do to training, and the remedies"
    )
    bias.add_argument("--scale", default="small", choices=["tiny", "small", "default"])
    bias.add_argument("--epochs", type=int, default=PrimaryConfig.epochs)
    args = parser.parse_args(argv)

    if args.command == "all":
        from build_engines.pipeline import build_all

        build_all(
            args.scale,
            seed=args.seed,
            force=args.force,
            primary_cfg=PrimaryConfig(epochs=args.epochs),
        )
    elif args.command == "selection-bias":
        from build_engines.selection_bias import run

        run(args.scale, cfg=PrimaryConfig(epochs=args.epochs))
    elif args.command == "recommender":
        from build_engines.recommender import RecConfig, build, built

        if built() and not args.force:
            print("recommender: built (FORCE=1 rebuilds); report in build/reports/")
        else:
            build(RecConfig(epochs=args.epochs))
    elif args.command == "image":
        from build_engines.image import build_image

        build_image(force=args.force)
    else:
        from build_engines.real_data import evaluate_real

        evaluate_real(PrimaryConfig(epochs=args.epochs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
