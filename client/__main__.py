"""``python -m client {score,replay,open-world,serve,stop,demo,image-api,classify,recommend,
click,watchdog,trace,collector,observe,case,cases,settings}``:
call and operate the services.

- ``score``: one transaction, the decision as JSON.
- ``replay``: simulated transactions of the last day at a concurrency or a rate, summary.
- ``open-world``: genuine purchases as they were, at terminals and from cards the store has
  never seen, and 45 days later: the shares declined and flagged.
- ``serve`` / ``stop``: the server in the background (``make serve`` / ``make stop``).
- ``demo``: ``make demo`` (build, serve, replay, fail the primary on purpose, stop).
- ``image-api``: ``make image-api`` (the image classification web API and its server).
- ``classify``: send an image file to the web API and print its answer.
- ``recommend``: the top five items for a user (``recommend_top5``), as JSON.
- ``click``: publish a click to the ``clicks`` topic (``KAFKA_BOOTSTRAP``).
- ``watchdog``: reload models whose Python stub process died (``client.local.watchdog``).
- ``trace``: one traced decision's spans as a waterfall, printed and drawn (``client.observe``).
- ``collector``: the OTLP/HTTP span receiver in the foreground (``make observe`` starts it).
- ``observe``: ``make observe`` (the collector and Prometheus beside ``make serve``).
- ``case``: one transaction's case from the case store: the decision, the heavy model's score
  and why, the card's and terminal's history (``client.investigation``).
- ``cases``: the review queue, newest first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import uuid
from pathlib import Path

import pandas as pd

from client.local.triton import Ports
from python_backend import settings
from python_backend.paths import DATA, REPORTS


def _url(args) -> str:
    return args.url or f"127.0.0.1:{Ports.from_env().grpc}"


def _last_day(scale: str, limit: int | None) -> pd.DataFrame:
    from client.demo import last_day

    return last_day(DATA / scale, limit)


def cmd_score(args) -> int:
    from client.scoring import FraudClient

    row = {
        "transaction_id": args.transaction_id or f"cli-{uuid.uuid4().hex[:12]}",
        "card_id": args.card_id,
        "terminal_id": args.terminal_id,
        "amount": args.amount,
        "ts_ms": args.timestamp_ms or int(time.time() * 1000),
    }
    client = FraudClient(_url(args))
    (decision,) = client.score([row], budget_ms=args.budget_ms, trace=args.trace or None)
    client.close()
    print(json.dumps(decision.as_dict(), indent=2))
    if args.trace:
        from python_backend import tracing

        tracing.shutdown()  # the client's span goes out before the process ends
        print(f"traced: `python -m client trace {row['transaction_id']}` draws it")
    return 0


def cmd_replay(args) -> int:
    from client.launcher import built_scale
    from client.replay import replay

    scale = args.scale or built_scale() or "small"
    summary = replay(_url(args), _last_day(scale, args.limit), args.concurrency, args.rate)
    print(summary.table())
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    return 0 if summary.decided == summary.sent else 1


def cmd_open_world(args) -> int:
    from client.launcher import built_scale
    from client.open_world import score_variants, table

    scale = args.scale or built_scale() or "small"
    day = _last_day(scale, None)
    genuine = day[day["is_fraud"] == 0].head(args.limit)
    outcomes = score_variants(_url(args), genuine)
    print(table(outcomes))
    if args.json:
        print(json.dumps({k: o.as_dict() for k, o in outcomes.items()}, indent=2))
    return 0


def cmd_serve(args) -> int:
    from client.launcher import serve

    serve(args.scale, replicas=args.replicas, analysis=args.analysis)
    return 0


def cmd_stop(_args) -> int:
    from client.launcher import stop

    stop()
    return 0


def cmd_demo(args) -> int:
    from client.demo import run

    result = run(args.scale, limit=args.limit, outage=args.outage, concurrency=args.concurrency)
    return 0 if result.every_request_decided else 1


def cmd_image_api(args) -> int:
    from client.launcher import serve_image_api

    serve_image_api(args.port)
    return 0


def cmd_classify(args) -> int:
    import mimetypes
    import urllib.request
    from pathlib import Path

    from client.image_api import multipart

    path = Path(args.image)
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    body, content_type = multipart(path.name, path.read_bytes(), kind)
    request = urllib.request.Request(
        f"{args.api}/classify", data=body, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            print(json.dumps(json.loads(response.read()), indent=2))
            print(f"Server-Timing: {response.headers.get('Server-Timing')}")
    except urllib.error.HTTPError as err:
        print(f"HTTP {err.code}: {err.read().decode()}", file=sys.stderr)
        return 1
    return 0


def cmd_recommend(args) -> int:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from client.recommender import recommend

    client = grpcclient.InferenceServerClient(_url(args))
    try:
        for rec in recommend(client, args.user_id):
            print(json.dumps(rec.as_dict(), indent=2))
    except InferenceServerException as err:
        print(f"recommend_top5 refused: {err.message()}", file=sys.stderr)
        if "unknown model" in str(err) or "not found" in str(err):
            print(
                "Build it (`make recommender`) and start the server (`make serve`).",
                file=sys.stderr,
            )
        return 1
    finally:
        client.close()
    return 0


def cmd_click(args) -> int:
    from feature_repo.recommender import click_now, publish_clicks

    bootstrap = settings.kafka_bootstrap()
    click = click_now(args.user_id, args.item_id)
    publish_clicks(bootstrap, [click])
    print(f"published {click} to {bootstrap}")
    return 0


def cmd_watchdog(args) -> int:
    from client.local.watchdog import Watchdog
    from python_backend.paths import MESH_STATE

    watchdog = Watchdog(_url(args), tuple(args.models.split(",")), mesh_state=MESH_STATE)
    print(f"watchdog: probing {args.models} on {watchdog.url} every {watchdog.interval_s} s")
    if args.metrics_port:
        watchdog.serve_metrics(args.metrics_port)
    with contextlib.suppress(KeyboardInterrupt):
        watchdog.run()
    return 0


def cmd_trace(args) -> int:
    from client.observe import traces

    folder = args.spans or traces.SPANS_DIR
    found = traces.find_decision(traces.load(folder), args.transaction_id)
    if found is None:
        print(
            f"no trace of {args.transaction_id} in {folder / 'spans.jsonl'}: was it traced "
            "(TRACE_SAMPLE, or `python -m client score --trace`) and is the collector "
            "running (`make observe`)?",
            file=sys.stderr,
        )
        return 1
    print(traces.waterfall_text(found))
    png = args.png or REPORTS / "traces" / f"trace-{args.transaction_id}.png"
    traces.waterfall_png([found], png, title=f"decision {args.transaction_id}")
    print(f"\nwaterfall: {png}")
    return 0


def cmd_collector(args) -> int:
    from client.observe import collector, traces
    from python_backend import tracing

    folder = args.spans or traces.SPANS_DIR
    port = args.port or tracing.endpoint_port(tracing.endpoint())
    print(f"collector: OTLP/HTTP on 127.0.0.1:{port}/v1/traces -> {folder / 'spans.jsonl'}")
    collector.serve(port, folder, args.ready_file)
    return 0


def cmd_observe(args) -> int:
    from client.observe import stack

    stack.start_beside_serve()
    return 0


def cmd_rollout(args) -> int:
    from client import rollout
    from client.launcher import _mesh_alive
    from python_backend.paths import MESH_STATE, MODEL_REPOSITORY

    repository = args.repository or MODEL_REPOSITORY
    if args.publish:
        rollout.publish(repository, args.version, args.publish)
    pids: dict[str, int] = {}
    if args.replicas:
        replicas = args.replicas.split(",")
    elif _mesh_alive():
        state = json.loads(MESH_STATE.read_text())
        replicas = [f"127.0.0.1:{r['grpc']}" for r in state["replicas"]]
        pids = {f"127.0.0.1:{r['grpc']}": r["pid"] for r in state["replicas"]}
    else:
        replicas = [args.url or f"127.0.0.1:{settings.TRITON_GRPC_PORT.get()}"]
    prometheus = rollout.Prometheus(args.prometheus)
    try:
        prometheus.query("up", time.time())
    except OSError as err:
        print(
            f"rollout: no Prometheus at {args.prometheus} ({err}): the rollout decides on its "
            "numbers; start it with `make observe` (beside `make serve`) or pass --prometheus",
            file=sys.stderr,
        )
        return 2
    steps = tuple(float(s) / 100 for s in args.steps.split(","))
    from client.mesh.rotation import Rotation

    report = rollout.Rollout(
        repository,
        args.version,
        replicas,
        prometheus,
        shadow_share=args.shadow_share,
        steps=steps,
        step_s=args.step_s,
        rotation=Rotation.from_state(MESH_STATE) if _mesh_alive() else None,
        replica_pids=pids,
    ).run()
    return 0 if report["outcome"] == "promoted" else 1


def cmd_case(args) -> int:
    from client.investigation import show_case

    return show_case(args.transaction_id, store=args.store, as_json=args.json, plot=args.plot)


def cmd_cases(args) -> int:
    from client.investigation import show_review_queue

    return show_review_queue(store=args.store, limit=args.limit, as_json=args.json)


def cmd_settings(args) -> int:
    from python_backend import parameters

    rows = settings.table()
    width = max(len(name) for name, *_ in rows)
    print("Environment variables (python_backend/settings.py), the values in effect:")
    for name, value, default, doc in rows:
        shown = value if value == default else f"{value}  (default {default or 'unset'})"
        print(f"{name:<{width}}  {shown or '-':<40}  {doc}")
    print(
        "\nModel config parameters (python_backend/parameters.py; config.pbtxt, set by the "
        "build, the rollout and the chaos tools), their defaults:"
    )
    params = parameters.table()
    width = max(len(f"{model}.{name}") for model, name, *_ in params)
    for model, name, default, doc in params:
        print(f"{model + '.' + name:<{width}}  {default or '-':<40}  {doc}")
    return 0


def cmd_labels(args) -> int:
    import pandas as pd
    from tqdm import tqdm

    from client import labels as stream_labels
    from client.launcher import built_scale
    from python_backend import settings as env
    from python_backend.events import TOPIC_LABELS
    from python_backend.paths import BUILD
    from python_backend.settings import kafka_bootstrap

    bootstrap = kafka_bootstrap()
    data = args.data or BUILD / "data" / (built_scale() or "small")
    if not (data / "transactions.parquet").exists():
        print(f"no simulated data in {data}: run `make engines` first", file=sys.stderr)
        return 2

    topic = args.topic or TOPIC_LABELS
    decisions_topic = args.decisions_topic or env.DECISIONS_TOPIC.get()
    decisions = stream_labels.served_decisions(bootstrap, decisions_topic)
    if decisions.empty:
        print(
            f"no decisions on {decisions_topic}: serve and replay first (`make serve`, then "
            "`python -m client replay`); labels are reported of what was decided",
            file=sys.stderr,
        )
        return 2
    transactions = pd.read_parquet(data / "transactions.parquet")
    queued = stream_labels.queued_for_review(bootstrap, args.review_topic or env.REVIEW_TOPIC.get())
    labels, unknown = stream_labels.labels_for(decisions, transactions, queued, args.seed)
    later = 0
    if args.until:
        until = stream_labels.world_ms(args.until)
        later = int((labels["reported_ms"] > until).sum())
        labels = labels[labels["reported_ms"] <= until]
    stream_labels.ensure_topic(bootstrap, topic)
    started = time.perf_counter()
    with tqdm(total=len(labels), desc=f"labels -> {topic}", unit="label", mininterval=1) as bar:
        sent = stream_labels.publish(bootstrap, labels, topic, args.speedup, bar.update)
    counts = {
        "decisions": len(decisions),
        "not_in_the_simulation": unknown,
        "published": sent,
        "still_to_come": later,
        "by_kind": labels["kind"].value_counts().to_dict(),
        "fraud": int(labels["is_fraud"].sum()),
    }
    if args.stats_file:
        args.stats_file.write_text(json.dumps(counts))
    print(
        f"published {sent:,} labels of {len(decisions):,} decisions in "
        f"{time.perf_counter() - started:.1f} s: "
        + ", ".join(f"{k} {v:,}" for k, v in counts["by_kind"].items())
        + (f"; {later:,} reported after {args.until}, still to come" if args.until else "")
        + (f"; {unknown:,} decided transactions are not simulated (no label)" if unknown else "")
    )
    return 0


def cmd_retrain(args) -> int:
    from build_engines.primary import PrimaryConfig
    from build_engines.retrain import RetrainSettings
    from client import retrain
    from client.launcher import built_scale, ensure_models
    from python_backend.paths import BUILD, MODEL_REPOSITORY
    from python_backend.priority import as_batch_job

    print(f"retrain: batch work, at {as_batch_job()}")
    scale = args.scale or built_scale() or "small"
    ensure_models(scale, print)
    settings = RetrainSettings(
        primary=PrimaryConfig(**({"epochs": args.epochs} if args.epochs else {}))
    )
    report = retrain.run(
        scale,
        MODEL_REPOSITORY,
        BUILD,
        settle_days=args.settle_days,
        settings=settings,
        publish_passed=not args.no_publish,
    )
    return 0 if report["gate"]["passed"] else 1


def cmd_loop(args) -> int:
    from client.loop import run

    summary = run(args.scale, args.replay_days, args.settle_days, epochs=args.epochs)
    return 0 if summary.get("outcome") == "promoted" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", help="Triton gRPC address (default 127.0.0.1:TRITON_GRPC_PORT)")
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser("score", help="score one transaction")
    score.add_argument("--card-id", type=int, required=True)
    score.add_argument("--terminal-id", type=int, required=True)
    score.add_argument("--amount", type=float, required=True)
    score.add_argument("--timestamp-ms", type=int, help="default: now")
    score.add_argument("--transaction-id")
    score.add_argument("--budget-ms", type=float, help="override the 95 ms budget")
    score.add_argument("--trace", action="store_true", help="trace this decision")
    rep = sub.add_parser("replay", help="replay the last simulated day")
    rep.add_argument("--scale", help="data to replay (default: the built one)")
    rep.add_argument("--limit", type=int)
    rep.add_argument("--concurrency", type=int, default=4)
    rep.add_argument(
        "--rate",
        type=float,
        help="requests per second (default: as fast as the concurrency allows)",
    )
    rep.add_argument("--json", action="store_true")
    world = sub.add_parser(
        "open-world",
        help="genuine purchases as they were, at new terminals, from new cards, and 45 days later",
    )
    world.add_argument("--scale", help="data to take them from (default: the built one)")
    world.add_argument("--limit", type=int, default=400)
    world.add_argument("--json", action="store_true")
    serve = sub.add_parser("serve", help="start the server in the background")
    serve.add_argument("--scale", default="small", help="scale to build if nothing is built")
    serve.add_argument(
        "--replicas",
        type=int,
        default=settings.REPLICAS.get_int(),
        help="Triton replicas behind Envoy on the gRPC port (0: one server, no Envoy)",
    )
    serve.add_argument(
        "--analysis",
        action="store_true",
        default=settings.ANALYSIS.get() == "1",
        help="the heavy model's analysis consumer beside it (and a broker unless "
        "KAFKA_BOOTSTRAP names one)",
    )
    sub.add_parser("stop", help="stop the background server")
    demo = sub.add_parser("demo", help="the whole job, start to finish")
    demo.add_argument("--scale", default="small", help="scale to build if nothing is built")
    demo.add_argument("--limit", type=int, default=3_000)
    demo.add_argument("--outage", type=int, default=500)
    demo.add_argument("--concurrency", type=int, default=4)
    image_api = sub.add_parser("image-api", help="start the image web API in the background")
    image_api.add_argument("--port", type=int, default=settings.IMAGE_API_PORT.get_int())
    classify = sub.add_parser("classify", help="classify an image file through the web API")
    classify.add_argument("image")
    classify.add_argument("--api", default=f"http://127.0.0.1:{settings.IMAGE_API_PORT.get()}")
    rec = sub.add_parser("recommend", help="top five items for users")
    rec.add_argument("--user-id", type=int, nargs="+", required=True)
    click = sub.add_parser("click", help="publish a click (KAFKA_BOOTSTRAP)")
    click.add_argument("--user-id", type=int, required=True)
    click.add_argument("--item-id", type=int, required=True)
    dog = sub.add_parser("watchdog", help="reload models whose Python stub died (foreground)")
    dog.add_argument("--models", default="fraud_primary,fraud_fallback")
    dog.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    trace = sub.add_parser("trace", help="one decision's spans as a waterfall (and a PNG)")
    trace.add_argument("transaction_id")
    trace.add_argument("--spans", type=Path, default=None, help="the collector's folder")
    trace.add_argument("--png", type=Path, default=None, help="where the picture goes")
    col = sub.add_parser("collector", help="receive OTLP/HTTP spans into a folder (foreground)")
    col.add_argument(
        "--port", type=int, default=None, help="default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT's"
    )
    col.add_argument("--spans", type=Path, default=None, help="folder of spans.jsonl")
    col.add_argument("--ready-file", type=Path, default=None)
    sub.add_parser("observe", help="start the collector and Prometheus beside `make serve`")
    roll = sub.add_parser(
        "rollout",
        help="a new fraud_primary version: shadow, canary 1-10-50-100%%, promote or roll back",
    )
    roll.add_argument("--version", type=int, required=True, help="the fraud_primary version")
    roll.add_argument(
        "--publish",
        help="put the candidate in the repository first: copy (the champion again), inverted "
        "(a deliberately bad one) or an ONNX file",
    )
    roll.add_argument("--repository", type=Path, help="default: model_repository/")
    roll.add_argument("--replicas", help="gRPC addresses (default: make serve's)")
    roll.add_argument(
        "--prometheus",
        default=f"http://127.0.0.1:{settings.PROMETHEUS_PORT.get()}",
        help="where the metrics are read (make observe's by default)",
    )
    roll.add_argument("--shadow-share", type=float, default=0.2, help="0: no shadow step")
    roll.add_argument("--steps", default="1,10,50,100", help="canary shares, in percent")
    roll.add_argument("--step-s", type=float, default=15.0, help="each step's window")
    case = sub.add_parser("case", help="one transaction's case: decision, heavy score and why")
    case.add_argument("transaction_id")
    case.add_argument("--json", action="store_true", help="the case as JSON")
    case.add_argument("--plot", type=Path, default=None, help="write its timeline to this PNG")
    cases = sub.add_parser("cases", help="the review queue, newest first")
    cases.add_argument("--limit", type=int, default=50)
    cases.add_argument("--json", action="store_true")
    for reader in (case, cases):
        reader.add_argument("--store", help="the case store (default: CASE_STORE_PATH)")
    lab = sub.add_parser(
        "labels", help="the labels of the decided transactions onto the labels topic, in time"
    )
    lab.add_argument("--topic", default=None, help="default: labels")
    lab.add_argument("--decisions-topic", default=None, help="default: DECISIONS_TOPIC")
    lab.add_argument("--review-topic", default=None, help="default: REVIEW_TOPIC")
    lab.add_argument(
        "--speedup",
        type=float,
        default=None,
        help="simulated seconds per wall second (default: as fast as possible)",
    )
    lab.add_argument("--until", help="ISO time of the simulated world: what is reported by then")
    lab.add_argument("--seed", type=int, default=7)
    lab.add_argument(
        "--data", type=Path, help="the simulated world (default: build/data/<built scale>)"
    )
    lab.add_argument("--stats-file", type=Path, help="write the counts here (JSON)")
    ret = sub.add_parser(
        "retrain",
        help="a challenger from the newest labelled window, gated against the champion, "
        "published as the next fraud_primary version when it passes",
    )
    ret.add_argument("--scale", help="the simulated world (default: the built one)")
    ret.add_argument(
        "--settle-days",
        type=float,
        default=30.0,
        help="days the labels have had to arrive after the last transaction",
    )
    ret.add_argument("--no-publish", action="store_true", help="gate only; publish nothing")
    ret.add_argument("--epochs", type=int, help="training epochs (default: the primary's)")
    loop = sub.add_parser(
        "loop",
        help="serve, replay days, let the labels arrive, retrain, gate, roll out and promote",
    )
    loop.add_argument("--scale", default="small", help="scale to build if none is (small)")
    loop.add_argument(
        "--replay-days",
        type=int,
        default=1,
        help="newest days served (1: the store holds the state as of its start)",
    )
    loop.add_argument("--settle-days", type=float, default=30.0, help="days of labels (30)")
    loop.add_argument("--epochs", type=int, help="training epochs (default: the primary's)")
    sub.add_parser("settings", help="every environment variable read, its value and default")
    args = parser.parse_args(argv)
    return {
        "trace": cmd_trace,
        "collector": cmd_collector,
        "observe": cmd_observe,
        "watchdog": cmd_watchdog,
        "recommend": cmd_recommend,
        "click": cmd_click,
        "image-api": cmd_image_api,
        "classify": cmd_classify,
        "score": cmd_score,
        "replay": cmd_replay,
        "open-world": cmd_open_world,
        "serve": cmd_serve,
        "stop": cmd_stop,
        "demo": cmd_demo,
        "settings": cmd_settings,
        "rollout": cmd_rollout,
        "case": cmd_case,
        "cases": cmd_cases,
        "labels": cmd_labels,
        "retrain": cmd_retrain,
        "loop": cmd_loop,
    }[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
