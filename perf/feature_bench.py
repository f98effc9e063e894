"""``make feature-bench``: online read latency, our reader against Feast's SDK, side by side,
and the stream consumer's throughput.

For each store (sqlite, redis) and batch (1, 64 (card, terminal) pairs), both clients read
the same random pairs in alternating rounds, so a noisy machine slows both alike. Writes
``build/reports/feature_latency.json`` as ``<store>.<batch>.<client>.{p50_us,p99_us}``, plus
``ratios`` (Feast SDK / reader), ``cache`` (the BLS's cache of daily views on Redis, with
and without: latency, CPU per read, hit rates; :func:`bench_cache`) and ``stream.<store>``
(consumer events per second).
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from feature_repo.store import StoreSettings, feature_store, materialize
from python_backend.fraud.features import FEATURE_GROUPS, MODEL_STORED
from python_backend.fraud.online import open_reader

BATCHES = (1, 64)
FEATURE_REFS = [
    f"{g.name}:{f.name}" for g in FEATURE_GROUPS for f in g.features if f in MODEL_STORED
]


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    us = np.asarray(samples_ns) / 1_000
    return {
        "p50_us": round(float(np.percentile(us, 50)), 1),
        "p99_us": round(float(np.percentile(us, 99)), 1),
    }


def bench_store(settings: StoreSettings, rounds: int = 40, per_round: int = 25, log=print) -> dict:
    """Latency of both clients on one store, materialized beforehand."""
    store = feature_store(settings)
    materialize(store, settings, log=lambda _m: None)
    events = pd.read_parquet(
        settings.data_dir / "transactions.parquet", columns=["card_id", "terminal_id"]
    )
    rng = np.random.default_rng(0)
    reader = open_reader(settings.kind, settings.reader_location)

    def ours(cards, terminals):
        reader.read(cards, terminals)

    def feast_sdk(cards, terminals):
        store.get_online_features(
            features=FEATURE_REFS,
            entity_rows=[
                {"card_id": int(c), "terminal_id": int(t)}
                for c, t in zip(cards, terminals, strict=True)
            ],
        ).to_dict()

    clients = {"reader": ours, "feast_sdk": feast_sdk}
    result: dict = {}
    gc.collect()
    gc.freeze()  # long-lived objects out of the collector's way, as a server would
    for batch in BATCHES:
        samples: dict[str, list[int]] = {name: [] for name in clients}
        for r in range(rounds):
            order = list(clients) if r % 2 == 0 else list(reversed(clients))
            for name in order:
                for _ in range(per_round):
                    rows = rng.integers(0, len(events), batch)
                    cards = events["card_id"].to_numpy()[rows]
                    terminals = events["terminal_id"].to_numpy()[rows]
                    t0 = time.perf_counter_ns()
                    clients[name](cards, terminals)
                    samples[name].append(time.perf_counter_ns() - t0)
        result[str(batch)] = {name: _percentiles(s) for name, s in samples.items()}
        log(
            f"  {settings.kind:<6} batch {batch:>2}: "
            + ", ".join(
                f"{name} p50 {v['p50_us']:.0f} µs p99 {v['p99_us']:.0f} µs"
                for name, v in result[str(batch)].items()
            )
        )
    gc.unfreeze()
    reader.close()
    return result


def run_bench(
    settings_by_store: dict[str, StoreSettings],
    report: Path,
    bootstrap: str | None = None,
    log=print,
) -> dict:
    result: dict = {
        kind: bench_store(settings, log=log) for kind, settings in settings_by_store.items()
    }
    # Feast SDK time / reader time, per store and batch: how much the direct read buys.
    result["ratios"] = {
        f"{kind}.{batch}": {
            stat: round(clients["feast_sdk"][stat] / clients["reader"][stat], 1)
            for stat in ("p50_us", "p99_us")
        }
        for kind, batches in list(result.items())
        for batch, clients in batches.items()
    }
    if "redis" in settings_by_store:
        result["cache"] = bench_cache(settings_by_store["redis"], log=log)
    if bootstrap:
        result["stream"] = {
            kind: bench_stream(settings, bootstrap, log=log)
            for kind, settings in settings_by_store.items()
        }
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {report}")
    return result


def bench_stream(settings: StoreSettings, bootstrap: str, events: int = 20_000, log=print) -> dict:
    """Consumer throughput: ``events`` simulated transactions published first, then
    consumed into the store; events/s over the consumer's busy time and over wall time."""
    from feature_repo.stream import TransactionConsumer, ensure_topic, replay, writer_for

    store = feature_store(settings)
    tx = pd.read_parquet(settings.data_dir / "transactions.parquet").tail(events)
    topic = f"transactions-bench-{time.time_ns()}"
    ensure_topic(bootstrap, topic)
    replay(bootstrap, tx, topic=topic)
    consumer = TransactionConsumer(
        bootstrap,
        open_reader(settings.kind, settings.reader_location),
        writer_for(settings, store),
        group=f"bench-{time.time_ns()}",
        topic=topic,
        log=log,
    )
    while not consumer.assigned or consumer.stats.consumed == 0:
        consumer.poll_once(0.2)
    started = time.perf_counter() - consumer.stats.seconds
    while consumer.stats.consumed < len(tx):
        consumer.poll_once(0.2)
    wall = time.perf_counter() - started
    consumer.close()
    result = {
        "events": len(tx),
        "busy_events_per_s": round(consumer.stats.events_per_s),
        "wall_events_per_s": round(len(tx) / wall),
        "batches": consumer.stats.batches,
    }
    log(
        f"  stream {settings.kind}: {result['busy_events_per_s']:,} events/s busy, "
        f"{result['wall_events_per_s']:,} events/s wall ({len(tx):,} events)"
    )
    return result


def bench_cache(settings: StoreSettings, rounds: int = 60, per_round: int = 40, log=print) -> dict:
    """The BLS's cache of daily views (``python_backend.fraud.online.cache``) on Redis: the
    last simulated day's (card, terminal) pairs in time order, one batch at a time, read by
    a reader with the cache and one without, in alternating rounds (same batches, same
    Redis): latency, CPU per read and the cache's hit rates per entity."""
    from python_backend.fraud.features import MS_PER_DAY
    from python_backend.fraud.online.cache import DailyCache

    tx = pd.read_parquet(
        settings.data_dir / "transactions.parquet", columns=["card_id", "terminal_id", "ts_ms"]
    )
    day = tx[tx["ts_ms"] >= int(tx["ts_ms"].max()) // MS_PER_DAY * MS_PER_DAY]
    day = day.sort_values("ts_ms")
    cards, terminals = day["card_id"].to_numpy(), day["terminal_id"].to_numpy()
    out: dict = {"pairs_in_the_day": len(day)}
    for batch in (1, 8):
        readers = {
            "store": open_reader(settings.kind, settings.reader_location),
            "cached": open_reader(settings.kind, settings.reader_location),
        }
        readers["cached"].cache = cache = DailyCache()
        wall: dict[str, list[int]] = {name: [] for name in readers}
        cpu = dict.fromkeys(readers, 0)
        # The day read once, in order: a key is a hit only where the day repeats it.
        passes = max(1, min(rounds, (len(day) - batch) // (per_round * batch)))
        gc.disable()
        try:
            for r in range(passes):
                start = r * per_round * batch
                order = list(readers) if r % 2 == 0 else list(reversed(readers))
                for name in order:
                    reader = readers[name]
                    cpu_start = time.process_time_ns()
                    for k in range(per_round):
                        i = start + k * batch
                        began = time.perf_counter_ns()
                        reader.read(cards[i : i + batch], terminals[i : i + batch])
                        wall[name].append(time.perf_counter_ns() - began)
                    cpu[name] += time.process_time_ns() - cpu_start
        finally:
            gc.enable()
        reads = passes * per_round
        result = {
            name: {**_percentiles(wall[name]), "cpu_us_per_read": round(cpu[name] / reads / 1e3, 1)}
            for name in readers
        }
        result["reads"] = reads
        result["hit_rate"] = {e: round(cache.hit_rate(e), 3) for e in ("card_id", "terminal_id")}
        result["ratios"] = {
            stat: round(result["cached"][stat] / result["store"][stat], 2)
            for stat in ("p50_us", "p99_us", "cpu_us_per_read")
        }
        out[str(batch)] = result
        log(f"  cache, batch {batch}: {result}")
        for reader in readers.values():
            reader.close()
    return out
