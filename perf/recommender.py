"""``make perf-recommender``: ``recommend_top5`` measured with perf_analyzer, and the freshness
of its real-time input, on real Redis, the real broker and the clicks consumer.

- A perf_analyzer sweep over known users: closed loops (concurrency) and Poisson arrivals
  (``--async``); the target is P99 at 200 requests/s within 10 ms (the budget is 80 ms).
- Freshness: for a sample of users, the top item is published as a click to ``clicks``;
  the time from the broker's acknowledgement to the first recommendation without that item
  (the item is now seen) is the click-to-recommendation freshness (target under 1 s).

Writes ``perf/results/recommender/summary.json``, ``report.md`` and ``latency.png``, beside
the fraud service's summary.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from client.local.operator import admin_client
from feature_repo.stream import ConsumerThread
from python_backend.paths import BUILD, PERF_RESULTS

RESULTS = PERF_RESULTS / "recommender"
TARGET_P99_MS = 10.0
TARGET_RATE = 200
TARGET_FRESHNESS_MS = 1000.0
#: Measurements of the target point (1,000 requests a window); the median is reported.
TARGET_REPEATS = 3


def input_data(user_ids: list[int], path: Path) -> Path:
    entries = [{"USER_ID": {"content": [int(u)], "shape": [1]}} for u in user_ids]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": entries}))
    return path


def freshness_ms(client, bootstrap: str, topic: str, users: list[int], poll_s: float = 0.01):
    """Per user: ms from a click's acknowledgement to the first recommendation that shows it
    (its item is dropped as seen), or None if it did not within 5 s."""
    from client.recommender import recommend
    from feature_repo.recommender import click_now, publish_clicks

    out = []
    for user in users:
        before = recommend(client, [user])[0]
        if before.path != "model":
            continue
        item = before.items[0]["item_id"]
        publish_clicks(bootstrap, [click_now(user, item)], topic=topic)
        acked = time.perf_counter()
        seen = None
        while time.perf_counter() - acked < 5:
            if item not in [i["item_id"] for i in recommend(client, [user])[0].items]:
                seen = (time.perf_counter() - acked) * 1000
                break
            time.sleep(poll_s)
        out.append(None if seen is None else round(seen, 1))
    return out


def run(
    quick: bool = False,
    out: Path = RESULTS,
    log=print,
    repository: Path | None = None,
    data_dir: Path | None = None,
    work: Path = BUILD / "perf" / "recommender",
) -> dict:
    from tqdm import tqdm

    from build_engines import recommender as build
    from client.local.services import kafka_broker, redis_server
    from client.local.triton import RECOMMEND_MODELS, Ports
    from client.local.triton import start as start_triton
    from client.recommender import recommend
    from feature_repo.recommender import CLICK_SPEC, ClickConsumer, materialize
    from feature_repo.store import StoreSettings, feature_store
    from feature_repo.stream import ensure_topic, writer_for
    from perf.analyzer import measure
    from perf.tools import ensure_perf_analyzer
    from python_backend.paths import MODEL_REPOSITORY
    from python_backend.recommender.core import user_source
    from python_backend.recommender.online import RedisUserReader

    started = time.perf_counter()
    if repository is None:
        repository, data_dir = MODEL_REPOSITORY, build.MOVIELENS_DATA
        if not build.built():
            log("recommender: not built yet, building it (`make recommender`)")
            build.build()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    binary, env = ensure_perf_analyzer(log=log)
    import pandas as pd

    users = pd.read_parquet(user_source(data_dir), columns=["user_id"])["user_id"].tolist()
    data = input_data(users, work / "users.json")
    concurrencies = (1, 8) if quick else (1, 4, 16)
    rates = (TARGET_RATE,) if quick else (100, TARGET_RATE, 400)
    window = 300 if quick else 1000
    topic = "clicks-perf"
    with redis_server() as redis, kafka_broker() as kafka:
        bootstrap = f"127.0.0.1:{kafka.port}"
        redis_url = f"redis://127.0.0.1:{redis.port}/0"
        settings = StoreSettings.from_env(
            kind="redis", redis_url=redis_url, data_dir=data_dir, repo_dir=work / "features"
        )
        store = feature_store(settings)
        log(f"features: user views into Redis on port {redis.port}")
        materialize(store, data_dir, log=log)
        ensure_topic(bootstrap, topic)
        consumer = ConsumerThread(
            ClickConsumer(
                bootstrap,
                RedisUserReader(redis_url, timeout_s=1.0),
                writer_for(settings, store, CLICK_SPEC),
                group="perf-clicks",
                topic=topic,
                log=lambda _m: None,
            )
        ).start()
        server = start_triton(
            repository=repository,
            ports=Ports.free(),
            models=list(RECOMMEND_MODELS),
            env={"FEATURE_STORE": "redis", "REDIS_URL": redis_url},
            log_path=work / "server.log",
        )
        try:
            client = admin_client(server.grpc_url)
            for u in users[:100]:  # warm both instances and the scorer
                recommend(client, [u])
            points = []
            levels = [("concurrency", c) for c in concurrencies]
            levels += [("request_rate", r) for r in rates]
            # The target point again, later: one P99 of a noisy 2-core machine is not a figure.
            levels += [("request_rate", TARGET_RATE)] * (0 if quick else TARGET_REPEATS - 1)
            for n, (kind, level) in enumerate(
                tqdm(levels, desc="perf_analyzer recommend_top5", file=sys.stderr)
            ):
                path = work / f"recommend_top5_{kind}_{level}_{n}.csv"
                point = measure(
                    binary, env, server.grpc_url, "recommend_top5", data, path, window, kind, level
                )
                points.append({"kind": kind, **point})
            sample = users[:: max(1, len(users) // (5 if quick else 20))]
            fresh = freshness_ms(client, bootstrap, topic, sample)
            client.close()
        finally:
            server.stop()
            consumer.stop()
    summary = summarize(points, fresh)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(markdown(summary))
    plot(summary, out / "latency.png")
    log(markdown(summary))
    return summary


def summarize(points: list[dict], fresh: list[float | None]) -> dict:
    at_target = [
        p["p99_ms"]
        for p in points
        if p["kind"] == "request_rate" and p["offered_rps"] == TARGET_RATE and "p99_ms" in p
    ]
    seen = np.array([f for f in fresh if f is not None])
    freshness = {
        "clicks": len(fresh),
        "not_seen_within_5s": sum(1 for f in fresh if f is None),
        "p50_ms": round(float(np.percentile(seen, 50)), 1) if len(seen) else None,
        "max_ms": round(float(seen.max()), 1) if len(seen) else None,
        "all_ms": fresh,
    }
    p99 = round(float(np.median(at_target)), 3) if at_target else None
    return {
        "model": "recommend_top5",
        "points": points,
        "freshness": freshness,
        "targets": {
            "p99_ms_at_200_rps": {
                "target": TARGET_P99_MS,
                "measured": p99,  # the median of the repeats
                "repeats": at_target,
                "met": p99 is not None and p99 <= TARGET_P99_MS,
            },
            "freshness_ms": {
                "target": TARGET_FRESHNESS_MS,
                "measured_max": freshness["max_ms"],
                "met": bool(len(seen))
                and freshness["not_seen_within_5s"] == 0
                and freshness["max_ms"] < TARGET_FRESHNESS_MS,
            },
        },
    }


def markdown(summary: dict) -> str:
    lines = [
        "# recommend_top5 (perf_analyzer, gRPC)",
        "",
        "| load | achieved rps | p50 ms | p90 ms | p99 ms | server queue µs | compute µs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in summary["points"]:
        if "error" in p:
            lines.append(f"| {p['kind']} | error: {p['error'][:80]} | | | | | |")
            continue
        load = (
            f"concurrency {p['concurrency']}"
            if p["kind"] == "concurrency"
            else f"Poisson {p['offered_rps']:.0f}/s"
        )
        compute = (p.get("server_compute_infer_us") or 0) + (p.get("server_compute_input_us") or 0)
        lines.append(
            f"| {load} | {p['achieved_rps']} | {p['p50_ms']} | {p['p90_ms']} | {p['p99_ms']} "
            f"| {p.get('server_queue_us')} | {compute:.0f} |"
        )
    f = summary["freshness"]
    t = summary["targets"]
    lines += [
        "",
        f"Freshness (click acknowledged by the broker -> a recommendation without the clicked "
        f"item): {f['clicks']} clicks, p50 {f['p50_ms']} ms, max {f['max_ms']} ms, "
        f"{f['not_seen_within_5s']} not seen within 5 s.",
        "",
        f"- P99 at 200/s: {t['p99_ms_at_200_rps']['measured']} ms, the median of "
        f"{t['p99_ms_at_200_rps'].get('repeats')} (target <= 10): "
        f"{'met' if t['p99_ms_at_200_rps']['met'] else 'missed'}",
        f"- freshness max: {t['freshness_ms']['measured_max']} ms (target < 1000): "
        f"{'met' if t['freshness_ms']['met'] else 'missed'}",
        "",
    ]
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for kind, marker in (("concurrency", "o"), ("request_rate", "s")):
        pts = sorted(
            (p for p in summary["points"] if p["kind"] == kind and "error" not in p),
            key=lambda p: p["achieved_rps"],
        )
        if pts:
            ax.plot(
                [p["achieved_rps"] for p in pts],
                [p["p99_ms"] for p in pts],
                marker=marker,
                label=f"p99, {kind.replace('_', ' ')}",
            )
    ax.axhline(TARGET_P99_MS, color="red", ls="--", lw=1, label="10 ms target")
    ax.set_xlabel("requests / s")
    ax.set_ylabel("p99 ms")
    ax.set_title("recommend_top5: p99 latency against throughput")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
