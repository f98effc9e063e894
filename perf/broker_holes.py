"""``make broker-holes``: does the broker serve a later record before an earlier one, and does
the stream consumer lose events when it does?

Several producer processes (as the BLS instances are) write transaction events to one
topic at once, while two stream consumers read it side by side, each in its own group:
one re-reads from any hole in a partition's offsets (the default, ``gap_wait_s=2``), the
other takes what it is served (``gap_wait_s=0``, the consumer before this check). After the
producers stop and both consumers are idle, every record on the topic is read back from the
beginning and compared with what each consumer applied.

Writes ``build/reports/broker_holes.json``. ``HOLES_EVENTS`` (default 40,000),
``HOLES_PRODUCERS`` (4) and ``HOLES_RATE`` (events/s over all producers, 1,000) size it.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import threading
import time
import uuid

import numpy as np
import pandas as pd

from client.local.services import kafka_broker
from feature_repo.stream import (
    CARD_SPEC,
    BufferConsumer,
    MemoryWriter,
    ensure_topic,
    replay,
)
from python_backend import settings
from python_backend.events import decode
from python_backend.fraud.decision_log import read_all
from python_backend.paths import REPORTS

OUT = REPORTS / "broker_holes.json"
TOPIC = "transactions-holes"


def _produce(bootstrap: str, producer: int, count: int, rate: float, run: str) -> None:
    """One producer process, as each BLS instance is (linger 20 ms, as the BLS publishes)."""
    events = pd.DataFrame(
        {
            "transaction_id": [f"{run}-{producer}-{i}" for i in range(count)],
            "card_id": np.arange(count) % 997,
            "terminal_id": np.arange(count) % 31,
            "amount": 10.0,
            "ts_ms": 1_700_000_000_000,
        }
    )
    replay(bootstrap, events, rate, TOPIC, linger_ms=20)


def _consume(consumer: BufferConsumer, stop: threading.Event) -> None:
    """Run the consumer until the producers are done, then until idle for 3 s."""
    while not stop.is_set():
        consumer.poll_once()
    consumer.run(until_idle_s=3)
    consumer.close()


def run(events: int, producers: int, rate: float) -> dict:
    run_id = uuid.uuid4().hex[:8]
    with kafka_broker() as broker:
        bootstrap = f"127.0.0.1:{broker.port}"
        ensure_topic(bootstrap, TOPIC)
        # Unbounded buffers: every applied id stays in the store, to be counted.
        spec = dataclasses.replace(CARD_SPEC, limit=10**9)
        sides = {}
        for name, wait in (("rereads_holes", 2.0), ("takes_what_is_served", 0.0)):
            writer = MemoryWriter()
            consumer = BufferConsumer(
                bootstrap,
                spec,
                writer.read,
                writer,
                f"holes-{name}-{run_id}",
                TOPIC,
                log=lambda m, name=name: print(f"{name}: {m}"),
                gap_wait_s=wait,
            )
            sides[name] = (consumer, writer)
        stop = threading.Event()
        threads = [
            threading.Thread(target=_consume, args=(c, stop), daemon=True)
            for c, _w in sides.values()
        ]
        for t in threads:
            t.start()
        per = events // producers
        procs = [
            mp.get_context("spawn").Process(
                target=_produce, args=(bootstrap, k, per, rate / producers, run_id)
            )
            for k in range(producers)
        ]
        started = time.perf_counter()
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        produced_s = time.perf_counter() - started
        stop.set()
        for t in threads:
            t.join(120)
        on_topic = [decode(v).transaction_id for v in read_all(bootstrap, TOPIC, decode=bytes)]
    distinct = set(on_topic)
    result = {
        "events": per * producers,
        "producers": producers,
        "rate_per_s": rate,
        "produce_seconds": round(produced_s, 1),
        "on_topic": len(on_topic),
        "on_topic_distinct": len(distinct),
    }
    for name, (consumer, writer) in sides.items():
        applied = {entry[-1] for buf in writer.buffers.values() for entry in buf}
        stats = consumer.stats
        result[name] = {
            "consumed": stats.consumed,
            "applied": stats.applied,
            "missing": len(distinct - applied),
            "holes_seen": stats.offset_gaps,
            "holes_accepted": stats.offset_gaps_accepted,
        }
    return result


def main() -> int:
    result = run(
        settings.HOLES_EVENTS.get_int(),
        settings.HOLES_PRODUCERS.get_int(),
        settings.HOLES_RATE.get_float(),
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"wrote {OUT}")
    return 0 if result["rereads_holes"]["missing"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
