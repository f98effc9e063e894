"""Feature jobs: ``python -m feature_repo {apply,materialize,consume,replay,recommender,
consume-clicks,analyze}``.

The store comes from the environment (``FEATURE_STORE``, ``REDIS_URL``, ``FEATURE_DATA``,
``FEATURE_REPO_DIR``; see ``feature_repo.store``), the broker from ``KAFKA_BOOTSTRAP``.
The read-latency benchmark and the online/offline parity check are ``python -m perf
feature-bench`` and ``feature-parity`` (they start their own Redis and broker).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

from python_backend import tracing
from python_backend.settings import kafka_bootstrap


def _as_of_ms(text: str | None) -> int | None:
    return None if text is None else int(datetime.fromisoformat(text).timestamp() * 1000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m feature_repo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("apply", help="register entities and feature views (feast apply)")
    mat = sub.add_parser("materialize", help="apply, then fill the online store")
    mat.add_argument("--as-of", help="ISO time (default: start of the last simulated day)")
    con = sub.add_parser("consume", help="run the stream consumer into the online store")
    con.add_argument(
        "--until-idle",
        type=float,
        default=None,
        help="stop after this many idle seconds (default: run forever)",
    )
    con.add_argument("--topic", default=None, help="topic to consume (default: transactions)")
    con.add_argument("--group", default="card-recent-features", help="consumer group")
    con.add_argument("--stats-file", type=Path, help="write the consumer's counts here (JSON)")
    con.add_argument("--ready-file", type=Path, help="created once partitions are assigned")
    con.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on this port (make observe scrapes 9108)",
    )
    rep = sub.add_parser("replay", help="publish simulated transactions onto the topic")
    rep.add_argument("--rate", type=float, default=None, help="events per second")
    rep.add_argument("--limit", type=int, default=None)
    sub.add_parser("recommender", help="register the user views and fill the online store")
    clicks = sub.add_parser("consume-clicks", help="run the clicks consumer into the store")
    clicks.add_argument("--topic", default=None, help="topic to consume (default: clicks)")
    clicks.add_argument("--ready-file", type=Path, help="created once partitions are assigned")
    ana = sub.add_parser(
        "analyze", help="the heavy model on every decision, into the case store (off the hot path)"
    )
    ana.add_argument("--until-idle", type=float, default=None, help="stop after idle seconds")
    ana.add_argument("--group", default="fraud-analysis", help="consumer group")
    ana.add_argument("--decisions-topic", default=None, help="default: DECISIONS_TOPIC")
    ana.add_argument("--transactions-topic", default=None, help="default: SCORED_TOPIC")
    ana.add_argument("--model", type=Path, default=None, help="default: HEAVY_MODEL_DIR")
    ana.add_argument("--store", default=None, help="the case store (default: CASE_STORE_PATH)")
    ana.add_argument("--no-explain", action="store_true", help="scores only, no attributions")
    ana.add_argument("--stats-file", type=Path, help="write the consumer's counts here (JSON)")
    ana.add_argument("--ready-file", type=Path, help="created once partitions are assigned")
    ana.add_argument(
        "--metrics-port", type=int, default=None, help="Prometheus metrics (make observe: 9110)"
    )
    args = parser.parse_args(argv)
    if args.command == "analyze":
        return _analyze(args)

    from feature_repo.store import StoreSettings, apply, feature_store, materialize

    if args.command in ("recommender", "consume-clicks"):
        return _recommender(args, StoreSettings.from_env())

    settings = StoreSettings.from_env()
    bootstrap = kafka_bootstrap()
    if not (settings.data_dir / "transactions.parquet").exists():
        print(
            f"no simulated data in {settings.data_dir}: run `make engines` first "
            "(or set FEATURE_DATA)",
            file=sys.stderr,
        )
        return 2
    if args.command == "apply":
        apply(feature_store(settings), settings)
        print(f"applied to {settings.repo_dir} ({settings.kind})")
    elif args.command == "materialize":
        from python_backend.priority import as_batch_job

        priority = as_batch_job()
        started = time.perf_counter()
        store = feature_store(settings)
        counts = materialize(store, settings, _as_of_ms(args.as_of))
        print(
            f"online store ({settings.kind}, {settings.reader_location}): "
            + ", ".join(f"{k} {v:,}" for k, v in counts.items())
            + f"; {time.perf_counter() - started:.1f} s at {priority}"
        )
    elif args.command == "consume":
        from feature_repo.stream import TransactionConsumer, ensure_topic, writer_for
        from python_backend.events import TOPIC_TRANSACTIONS
        from python_backend.fraud.online import open_reader

        topic = args.topic or TOPIC_TRANSACTIONS
        ensure_topic(bootstrap, topic)
        consumer = TransactionConsumer(
            bootstrap,
            open_reader(settings.kind, settings.reader_location),
            writer_for(settings, feature_store(settings)),
            group=args.group,
            topic=topic,
        )
        if args.metrics_port:
            from feature_repo.stream.metrics import serve_metrics

            serve_metrics(consumer, topic, args.metrics_port)
        try:
            _consume(consumer, args.ready_file, args.until_idle)
        finally:
            consumer.close()
            tracing.shutdown()  # the spans of the last traced records go out
            if args.stats_file:
                args.stats_file.write_text(json.dumps(dataclasses.asdict(consumer.stats)))
            print(
                f"consumed {consumer.stats.consumed:,} ({consumer.stats.applied:,} applied, "
                f"{consumer.stats.duplicates:,} duplicates, {consumer.stats.rejected:,} "
                f"rejected), {consumer.stats.events_per_s:,.0f} events/s"
            )
    elif args.command == "replay":
        import pandas as pd

        from feature_repo.stream import ensure_topic, replay

        tx = pd.read_parquet(settings.data_dir / "transactions.parquet")
        tx = tx.head(args.limit) if args.limit else tx
        ensure_topic(bootstrap)
        started = time.perf_counter()
        sent = replay(bootstrap, tx, args.rate)
        print(f"published {sent:,} events in {time.perf_counter() - started:.1f} s")
    return 0


def _consume(consumer, ready_file: Path | None, until_idle_s: float | None) -> None:
    """Run a stream consumer until Ctrl-C or SIGTERM, which stop it between batches (the
    batch in hand is written and committed: a signal raised inside a store write or a
    producer's flush broke one, seen with confluent-kafka); ``ready_file`` is created once
    it has its partitions."""

    def stop(_signum, _frame) -> None:
        consumer.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if ready_file:
        while not consumer.assigned and not consumer.stopping.is_set():
            consumer.poll_once()
        ready_file.touch()
    consumer.run(until_idle_s=until_idle_s)


def _analyze(args) -> int:
    from feature_repo.analysis import AnalysisConsumer, AnalysisMetrics
    from feature_repo.stream import ensure_topic
    from python_backend import settings
    from python_backend.fraud.cases import open_case_store
    from python_backend.fraud.heavy_model import HeavyModel
    from python_backend.priority import as_batch_job

    folder = args.model or Path(settings.HEAVY_MODEL_DIR.get())
    if not (folder / "metadata.json").exists():
        print(f"no heavy model in {folder}: run `make engines` first", file=sys.stderr)
        return 2
    priority = as_batch_job()
    bootstrap = kafka_bootstrap()
    topics = {
        "transactions_topic": args.transactions_topic or settings.SCORED_TOPIC.get(),
        "decisions_topic": args.decisions_topic or settings.DECISIONS_TOPIC.get(),
        "analysis_topic": settings.ANALYSIS_TOPIC.get(),
        "review_topic": settings.REVIEW_TOPIC.get(),
    }
    for topic in topics.values():
        ensure_topic(bootstrap, topic)
    model = HeavyModel(folder)
    explainer = None
    if not args.no_explain:
        from python_backend.fraud.explain import Explainer

        explainer = Explainer(model)
    store = open_case_store(location=args.store)
    drift = _drift_window()
    consumer = AnalysisConsumer(
        bootstrap, model, store, explainer=explainer, group=args.group, drift=drift, **topics
    )
    if args.metrics_port:
        AnalysisMetrics(consumer, args.metrics_port)
    print(
        f"analysis: heavy model {model.version} on {topics['decisions_topic']} and "
        f"{topics['transactions_topic']}, cases in {getattr(store, 'path', store)}, at {priority}",
        flush=True,
    )
    try:
        _consume(consumer, args.ready_file, args.until_idle)
    finally:
        consumer.close()
        counts = {**consumer.counts, "rejected": consumer.stats.rejected}
        if args.stats_file:
            args.stats_file.write_text(json.dumps(counts))
        explained = f"; explained in {explainer.seconds:.1f} s" if explainer else ""
        print(f"analysis: {dict(counts)}{explained}", flush=True)
        store.close()
    return 0


def _drift_window():
    """Drift against DRIFT_REFERENCE (a reference file, a version's folder, or a model
    repository whose newest fraud_primary version's is used; default: the project's
    repository), or None with a line saying why."""
    from python_backend import settings
    from python_backend.fraud.drift import (
        REFERENCE_FILE,
        DriftWindow,
        Reference,
        newest_reference,
    )
    from python_backend.paths import MODEL_REPOSITORY

    path = settings.DRIFT_REFERENCE.get() or MODEL_REPOSITORY
    if Path(path, REFERENCE_FILE).exists():  # a version's folder
        path = Path(path, REFERENCE_FILE)
    elif Path(path).is_dir():  # a model repository: its newest fraud_primary version's
        path = newest_reference(Path(path)) or f"none in {path}"
    if not Path(path).exists():
        print(
            f"analysis: no drift reference ({path}): drift "
            "is not measured; `make engines` writes one beside fraud_primary",
            flush=True,
        )
        return None
    rows = int(settings.DRIFT_WINDOW_ROWS.get())
    print(f"analysis: drift over the newest {rows:,} decisions against {path}", flush=True)
    return DriftWindow(Reference.read(Path(path)), rows)


def _recommender(args, settings) -> int:
    from feature_repo import recommender
    from feature_repo.store import feature_store
    from python_backend.paths import MOVIELENS_DATA
    from python_backend.recommender.core import user_source

    if not user_source(MOVIELENS_DATA).exists():
        print("no recommender features: run `make recommender` first", file=sys.stderr)
        return 2
    if args.command == "recommender":
        started = time.perf_counter()
        counts = recommender.materialize(feature_store(settings), MOVIELENS_DATA)
        print(
            f"online store ({settings.kind}, {settings.reader_location}): {counts}; "
            f"{time.perf_counter() - started:.1f} s"
        )
        return 0
    from feature_repo.stream import ensure_topic, writer_for
    from python_backend.recommender.core import TOPIC_CLICKS
    from python_backend.recommender.online import open_user_reader

    bootstrap = kafka_bootstrap()
    topic = args.topic or TOPIC_CLICKS
    ensure_topic(bootstrap, topic)
    consumer = recommender.ClickConsumer(
        bootstrap,
        open_user_reader(settings.kind, settings.reader_location),
        writer_for(settings, feature_store(settings), recommender.CLICK_SPEC),
        topic=topic,
    )
    try:
        _consume(consumer, args.ready_file, None)
    finally:
        consumer.close()
        print(f"clicks: consumed {consumer.stats.consumed:,} ({consumer.stats.applied:,} applied)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
