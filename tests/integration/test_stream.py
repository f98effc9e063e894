"""The transaction stream: a real Kafka-protocol broker, real Redis and SQLite stores."""

from __future__ import annotations

import dataclasses
import time
import uuid

import numpy as np
import pandas as pd
import pytest
from confluent_kafka import Producer

from feature_repo.store import StoreSettings, feature_store, materialize
from feature_repo.stream import (
    CARD_SPEC,
    BufferConsumer,
    OffsetGaps,
    TransactionConsumer,
    ensure_topic,
    merge,
    replay,
    writer_for,
)
from perf.feature_parity import run_parity, waves
from python_backend.events import EventError, TransactionEvent, decode
from python_backend.fraud.features import MS_PER_DAY, RECENT_BUFFER, RECENT_MAX_AGE_MS
from python_backend.fraud.offline import recent_buffers
from python_backend.fraud.online import open_reader
from tests.conftest import STORE_URL_FIXTURES


def _event(i: int, ts: int, card: int = 1) -> TransactionEvent:
    return TransactionEvent(f"t{i}", card, 7, 10.0 + i, ts)


def test_merge_skips_replayed_ids_and_keeps_the_newest() -> None:
    buffer, added = merge([], [_event(i, 1_000 + i) for i in range(20)])
    assert added == 20 and len(buffer) == RECENT_BUFFER
    assert [e[3] for e in buffer] == [f"t{i}" for i in range(4, 20)]
    again, added = merge(buffer, [_event(19, 1_019), _event(3, 1_003)])
    assert added == 1, "t19 is a replay; t3 is new (and then too old to keep)"
    assert again == buffer
    late, added = merge(buffer, [_event(99, 1_010)])  # out of order: lands in time order
    assert added == 1 and late[-10][3] == "t99"


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (b"not json", "not JSON"),
        (b'{"v": 2}', "v: schema version"),
        (
            b'{"v":1,"transaction_id":"a","card_id":"x","terminal_id":1,"amount":1,"ts_ms":1}',
            "card_id",
        ),
        (
            b'{"v":1,"transaction_id":"a","card_id":1,"terminal_id":1,"amount":-1,"ts_ms":1}',
            "amount",
        ),
        (
            b'{"v":1,"transaction_id":"","card_id":1,"terminal_id":1,"amount":1,"ts_ms":1}',
            "transaction_id",
        ),
    ],
)
def test_bad_events_name_the_field(message: bytes, field: str) -> None:
    with pytest.raises(EventError, match=field):
        decode(message)


def test_event_round_trips() -> None:
    event = TransactionEvent("tx-1", 42, 7, 12.5, 1_700_000_000_000)
    assert decode(event.encode()) == event


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


def _consumer(settings, fs, bootstrap, topic, group, batch_size=1000):
    return TransactionConsumer(
        bootstrap,
        open_reader(settings.kind, settings.reader_location),
        writer_for(settings, fs),
        group=group,
        topic=topic,
        batch_size=batch_size,
        log=lambda _m: None,
    )


def _drain(consumer, expected, timeout_s=60, **kwargs):
    deadline = time.monotonic() + timeout_s
    while consumer.stats.consumed < expected:
        consumer.poll_once(0.1, **kwargs)
        assert time.monotonic() < deadline, f"consumed {consumer.stats.consumed}/{expected}"


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


def test_poison_message_is_counted_and_skipped(
    tiny_build, tmp_path, kafka_service, request
) -> None:
    settings, fs, _tx, day = _stream_store("redis", tiny_build, tmp_path, request)
    bootstrap = f"127.0.0.1:{kafka_service.port}"
    topic = f"transactions-{uuid.uuid4().hex[:8]}"
    ensure_topic(bootstrap, topic, partitions=1)
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, value=b'{"v": 1, "card_id": "oops"}')
    producer.flush(10)
    replay(bootstrap, day.head(20), topic=topic)
    consumer = _consumer(settings, fs, bootstrap, topic, f"g-{uuid.uuid4().hex[:8]}")
    _drain(consumer, 21)
    consumer.close()
    assert consumer.stats.rejected == 1
    assert consumer.stats.applied == 20


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


def test_waves_never_hold_a_card_twice() -> None:
    cards = np.array([1, 2, 3, 1, 4, 2, 2, 5])
    slices = waves(cards)
    assert [cards[s].tolist() for s in slices] == [[1, 2, 3], [1, 4, 2], [2, 5]]


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


def test_offset_gaps_rewind_until_the_hole_fills_then_accept_after_the_wait() -> None:
    now = [0.0]
    gaps = OffsetGaps(wait_s=2.0, clock=lambda: now[0])
    key = ("t", 0)
    assert gaps.check(key, 5) == "ok", "the first offset seen sets the expectation"
    assert gaps.check(key, 7) == "rewind" and gaps.expected[key] == 6
    now[0] = 1.0
    assert gaps.check(key, 7) == "rewind", "still inside the wait: read again"
    assert gaps.check(key, 6) == "ok" and gaps.check(key, 7) == "ok", "the hole filled"
    assert gaps.holes == 1
    assert gaps.check(key, 4) == "ok" and gaps.expected[key] == 5, "a redelivery is fine"
    assert gaps.check(key, 9) == "rewind"  # 5..8 missing
    now[0] = 3.5
    assert gaps.check(key, 9) == "accept" and gaps.expected[key] == 10
    assert gaps.holes == 2
    gaps.forget([key])
    assert gaps.check(key, 100) == "ok", "a reassigned partition starts where it is told"


class _Message:
    def __init__(self, partition: int, offset: int) -> None:
        self._partition, self._offset = partition, offset

    def error(self):
        return None

    def topic(self) -> str:
        return "tx"

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return _event(self._partition * 1000 + self._offset, 1_000 + self._offset).encode()

    def headers(self):
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_000 + self._offset)


class _ScriptedKafka:
    """Batches as a broker that serves out of order would (pure consumer logic: the real
    broker's race is measured by ``perf/broker_holes.py``)."""

    def __init__(self, batches: list[list[tuple[int, int]]], committed: dict[int, int]) -> None:
        self.batches = batches
        self.committed_offsets = committed
        self.commits: list[list[tuple[int, int]]] = []
        self.seeks: list[tuple[int, int]] = []
        self.fail_commits = 0

    def consume(self, num_messages: int, timeout: float):
        return [_Message(p, o) for p, o in self.batches.pop(0)] if self.batches else []

    def committed(self, partitions, timeout):
        from confluent_kafka import TopicPartition

        offsets = self.committed_offsets
        return [
            TopicPartition(tp.topic, tp.partition, offsets.get(tp.partition, -1001))
            for tp in partitions
        ]

    def commit(self, offsets, asynchronous):
        if self.fail_commits:
            from confluent_kafka import KafkaError, KafkaException

            self.fail_commits -= 1
            raise KafkaException(KafkaError(KafkaError.UNKNOWN_MEMBER_ID))
        self.commits.append(sorted((tp.partition, tp.offset) for tp in offsets))

    def seek(self, tp) -> None:
        self.seeks.append((tp.partition, tp.offset))

    def assignment(self):
        from confluent_kafka import TopicPartition

        return [TopicPartition("tx", 0), TopicPartition("tx", 1)]

    def get_watermark_offsets(self, tp, cached: bool = False):
        """The partition's high watermark: one past the last offset the script holds."""
        served = [o for batch in self.batches for p, o in batch if p == tp.partition]
        return (0, max(served, default=-1) + 1)


def _memory_consumer(kafka: _ScriptedKafka, gap_wait_s: float = 2.0) -> tuple:
    from confluent_kafka import TopicPartition

    from feature_repo.stream import MemoryWriter

    writer = MemoryWriter()
    spec = dataclasses.replace(CARD_SPEC, limit=10**6)
    consumer = BufferConsumer(
        "127.0.0.1:9",
        spec,
        writer.read,
        writer,
        "g",
        "tx",
        gap_wait_s=gap_wait_s,
        log=lambda m: None,
    )
    consumer.consumer.close()
    consumer.consumer = kafka
    consumer._on_assign(kafka, [TopicPartition("tx", 0), TopicPartition("tx", 1)])
    return consumer, writer.buffers


def test_consumer_rereads_from_a_hole_and_never_commits_past_it() -> None:
    # Partition 0 serves 3 before 2 is readable; partition 1 is in order.
    kafka = _ScriptedKafka(
        [[(0, 0), (0, 1), (0, 3), (0, 4), (1, 10)], [(0, 2), (0, 3), (0, 4), (1, 11)]],
        committed={0: 0, 1: 10},
    )
    consumer, store = _memory_consumer(kafka)
    consumer.lag_every_s = 0  # measured at every poll (seconds apart by default)
    consumer.poll_once()
    assert kafka.seeks == [(0, 2)], "re-read partition 0 from its hole"
    # The lag is what the broker holds past the next offset to apply: partition 0 waits
    # at its hole (2) below a high watermark of 5, partition 1 at 11 below 12.
    assert consumer.lag == {("tx", 0): 3, ("tx", 1): 1}
    assert kafka.commits == [[(0, 2), (1, 11)]], "committed up to the hole, not past it"
    consumer.poll_once()
    assert kafka.commits[-1] == [(0, 5), (1, 12)]
    applied = sorted(entry[-1] for buffer in store.values() for entry in buffer)
    assert applied == sorted([f"t{o}" for o in range(5)] + ["t1010", "t1011"])
    assert consumer.stats.applied == 7 and consumer.stats.duplicates == 0
    assert consumer.stats.offset_gaps == 1 and consumer.stats.offset_gaps_accepted == 0


def test_consumer_catches_a_hole_at_the_committed_offset_and_accepts_one_that_stays() -> None:
    # The first record after assignment is already past the committed offset (5).
    kafka = _ScriptedKafka([[(0, 6)], [(0, 6)]], committed={0: 5})
    consumer, _store = _memory_consumer(kafka, gap_wait_s=0.05)
    now = [100.0]
    consumer.gaps.clock = lambda: now[0]  # OffsetGaps' injected clock: no sleeping
    consumer.poll_once()
    assert kafka.seeks == [(0, 5)] and kafka.commits == [[(0, 5)]]
    now[0] += 0.06
    consumer.poll_once()  # still not there after the wait: go on, counted
    assert kafka.commits[-1] == [(0, 7)]
    assert consumer.stats.offset_gaps == 1 and consumer.stats.offset_gaps_accepted == 1


def test_a_commit_refused_after_a_rebalance_is_counted_not_fatal() -> None:
    kafka = _ScriptedKafka([[(0, 0), (0, 1)], [(0, 2)]], committed={0: 0})
    kafka.fail_commits = 1
    consumer, store = _memory_consumer(kafka)
    consumer.poll_once()  # written, the commit refused: re-read later, idempotently
    consumer.poll_once()
    assert consumer.stats.commit_failures == 1 and kafka.commits == [[(0, 3)]]
    assert sorted(e[-1] for b in store.values() for e in b) == ["t0", "t1", "t2"]
