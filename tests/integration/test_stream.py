"""The transaction stream: a real Kafka-protocol broker, real Redis and SQLite stores."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid

import numpy as np
import pandas as pd
import pytest
from confluent_kafka import Producer, TopicPartition

from feature_repo.store import StoreSettings, feature_store, materialize
from feature_repo.stream import (
    TransactionConsumer,
    buffers_from_store,
    ensure_topic,
    replay,
    writer_for,
)
from feature_repo.stream.metrics import ConsumerCollector
from perf.feature_parity import run_parity
from python_backend.events import TransactionEvent
from python_backend.fraud.features import MS_PER_DAY, RECENT_MAX_AGE_MS
from python_backend.fraud.offline import recent_buffers
from python_backend.fraud.online import open_reader
from tests.conftest import STORE_URL_FIXTURES
from tests.support import wait_until


def _stream_store(kind, tiny_build, tmp_path, request):
    overrides = {
        "kind": kind,
        "repo_dir": tmp_path / "repo",
        "data_dir": tiny_build.build_dir / "data" / "tiny",
    }
    if kind in STORE_URL_FIXTURES:
        overrides["redis_url"] = request.getfixturevalue(STORE_URL_FIXTURES[kind])
    settings = StoreSettings.from_env(**overrides)
    fs = feature_store(settings)
    materialize(fs, settings, log=lambda _m: None)
    tx = pd.read_parquet(settings.data_dir / "transactions.parquet")
    day_start = int(tx["ts_ms"].max()) // MS_PER_DAY * MS_PER_DAY
    return settings, fs, tx, tx[tx["ts_ms"] >= day_start]


def _consumer(settings, fs, bootstrap, topic, group, batch_size=1000, log=lambda _m: None):
    return TransactionConsumer(
        bootstrap,
        open_reader(settings.kind, settings.reader_location),
        writer_for(settings, fs),
        group=group,
        topic=topic,
        batch_size=batch_size,
        log=log,
    )


def _drain(consumer, expected, timeout_s=60, **kwargs):
    """Poll until ``expected`` records were consumed."""

    def drained() -> bool:
        if consumer.stats.consumed < expected:
            consumer.poll_once(0.1, **kwargs)
        return consumer.stats.consumed >= expected

    wait_until(
        drained,
        timeout_s,
        what=lambda: f"{expected} records consumed (got {consumer.stats.consumed})",
        interval_s=0,
    )


@pytest.mark.parametrize("kind", ["redis", "redis_cluster", "sqlite"])
def test_consumer_restart_neither_loses_nor_double_counts(
    kind, tiny_build, tmp_path, kafka_service, request
) -> None:
    """A consumer writes a batch and dies before committing; its successor re-reads those
    events. The buffers end exactly as the offline computation over all events says."""
    settings, fs, tx, day = _stream_store(kind, tiny_build, tmp_path, request)
    bootstrap = f"127.0.0.1:{kafka_service.port}"
    topic, group = f"transactions-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    ensure_topic(bootstrap, topic, partitions=1)
    replay(bootstrap, day, topic=topic)

    first = _consumer(settings, fs, bootstrap, topic, group, batch_size=150)
    _drain(first, 1, commit=False)  # written, never committed: a crash
    first.close()
    second = _consumer(settings, fs, bootstrap, topic, group)
    _drain(second, len(day))
    second.close()

    assert first.stats.applied > 0
    assert second.stats.duplicates == first.stats.applied, "replayed events were skipped"
    assert first.stats.applied + second.stats.applied == len(day), "nothing lost"
    cards = np.unique(day["card_id"].to_numpy())
    end = np.full(len(cards), int(tx["ts_ms"].max()) + 1)
    expected = recent_buffers(tx, cards, end)
    # A card back from a dormancy past the view's TTL had no materialized buffer: the
    # consumer started it afresh from today's events (the old ones were not "recent").
    day_start = int(day["ts_ms"].min()) // MS_PER_DAY * MS_PER_DAY
    newest = recent_buffers(tx, cards, np.full(len(cards), day_start))["recent_ts_ms"].max(axis=1)
    expired = (newest > 0) & (newest <= day_start - RECENT_MAX_AGE_MS)
    fresh = recent_buffers(day, cards, end)
    for name in expected:
        expected[name] = np.where(expired[:, None], fresh[name], expected[name])
    online = open_reader(settings.kind, settings.reader_location).read(cards, None)
    for name, values in expected.items():
        np.testing.assert_array_equal(online.stored[name], values, err_msg=name)


def test_bad_events_are_counted_logged_skipped_and_committed_past(
    tiny_build, tmp_path, kafka_service, request
) -> None:
    """On one partition: a valid event, three that break a rule or are not JSON, a valid
    one. The valid ones are applied; each bad one is counted, logged with its topic,
    partition, offset and rule, kept out of the store, and committed past: a restarted
    consumer of the group reads only what comes after."""
    settings, fs, _tx, day = _stream_store("redis", tiny_build, tmp_path, request)
    bootstrap = f"127.0.0.1:{kafka_service.port}"
    topic, group = f"transactions-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    ensure_topic(bootstrap, topic, partitions=1)
    first, second, later = (
        TransactionEvent(
            str(r.transaction_id), int(r.card_id), int(r.terminal_id), 10.0, int(r.ts_ms)
        )
        for r in day.head(3).itertuples(index=False)
    )

    def bad(transaction_id: str, **fields) -> bytes:
        event = {"v": 1, **dataclasses.asdict(first), "transaction_id": transaction_id}
        return json.dumps({**event, **fields}).encode()

    messages = [
        first.encode(),
        bad("bad-amount", amount=float("inf")),  # json writes the literal Infinity
        bad("bad-card", card_id=0),
        b"not json",
        second.encode(),
    ]
    assert b"Infinity" in messages[1]
    producer = Producer({"bootstrap.servers": bootstrap})
    for value in messages:
        producer.produce(topic, value=value, partition=0)
    assert producer.flush(10) == 0

    logs: list[str] = []
    consumer = _consumer(settings, fs, bootstrap, topic, group, log=logs.append)
    _drain(consumer, len(messages))
    committed = consumer.consumer.committed([TopicPartition(topic, 0)], 10)[0].offset
    counter = next(
        family
        for family in ConsumerCollector(consumer, topic).collect()
        if family.name == "stream_events_rejected"
    )
    consumer.close()

    assert consumer.stats.applied == 2 and consumer.stats.rejected == 3
    assert counter.samples[0].value == 3, "the Prometheus counter says so too"
    for offset, rule in ((1, "amount: must be"), (2, "card_id: must be"), (3, "not JSON")):
        lines = [line for line in logs if f"{topic}[0] offset {offset}: " in line]
        assert len(lines) == 1 and rule in lines[0], (offset, logs)
    reader = open_reader(settings.kind, settings.reader_location)
    # Card 0 is the consumer's heartbeat row: the event of card 0 must not land there.
    stored = buffers_from_store(reader, [first.card_id, second.card_id, 0])
    ids = {entry[-1] for buffer in stored.values() for entry in buffer}
    assert {first.transaction_id, second.transaction_id} <= ids
    assert not {"bad-amount", "bad-card"} & ids, "no bad event reached the store"
    assert all(entry[-1].startswith("heartbeat-") for entry in stored[0]), stored[0]
    assert committed == len(messages), "committed past the bad events"

    producer.produce(topic, value=later.encode(), partition=0)
    assert producer.flush(10) == 0
    restarted = _consumer(settings, fs, bootstrap, topic, group, log=logs.append)
    _drain(restarted, 1)
    for _ in range(3):  # anything re-read would come in these polls
        restarted.poll_once(0.2)
    restarted.close()
    assert restarted.stats.consumed == 1 and restarted.stats.applied == 1, restarted.stats
    assert restarted.stats.rejected == 0


@pytest.mark.parametrize("kind", ["redis", "redis_cluster", "sqlite"])
def test_consumer_stamps_a_heartbeat_serving_reads_as_alive_then_stopped(
    kind, tiny_build, tmp_path, kafka_service, request
) -> None:
    """The consumer writes its heartbeat into the store on an idle topic too; the serving
    side's check reads it as alive, and as stopped once it is older than the limit."""
    from python_backend.fraud.features import STREAM_HEARTBEAT_ID
    from python_backend.fraud.scoring import StreamHeartbeat

    settings, fs, _tx, _day = _stream_store(kind, tiny_build, tmp_path, request)
    bootstrap = f"127.0.0.1:{kafka_service.port}"
    topic = f"transactions-{uuid.uuid4().hex[:8]}"
    ensure_topic(bootstrap, topic, partitions=1)
    reader = open_reader(settings.kind, settings.reader_location)
    heartbeat = StreamHeartbeat(reader, check_every_s=0)
    assert not heartbeat.stale() and heartbeat.beat_ms == 0, "no consumer yet: not judged"
    consumer = _consumer(settings, fs, bootstrap, topic, f"g-{uuid.uuid4().hex[:8]}")
    before = time.time() * 1000
    consumer.poll_once(0.1)
    consumer.close()
    beat = reader.read(np.array([STREAM_HEARTBEAT_ID]), None).event_ms["card_recent"][0]
    assert before - 1000 <= beat <= time.time() * 1000
    assert not heartbeat.stale() and heartbeat.beat_ms == beat
    later = StreamHeartbeat(reader, check_every_s=0, clock=lambda: beat / 1000 + 61)
    assert later.stale(), "silent for over a minute: the recent buffers are stale"


def test_small_parity_run_has_no_mismatches(tiny_build, tmp_path, kafka_service, redis_url) -> None:
    settings = StoreSettings.from_env(
        kind="redis",
        redis_url=redis_url,
        repo_dir=tmp_path / "repo",
        data_dir=tiny_build.build_dir / "data" / "tiny",
    )
    result = run_parity(settings, f"127.0.0.1:{kafka_service.port}", limit=500, log=lambda _m: None)
    assert result["checked"] >= 300
    assert result["mismatches"] == 0, result
