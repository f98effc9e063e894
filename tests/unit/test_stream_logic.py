"""The stream consumer's pure logic, without a broker or a store: merging events into a
card's buffer, the parity run's waves, offset holes (``OffsetGaps``) and the consumer over a
scripted broker that serves out of order (the real broker's race: ``perf/broker_holes.py``)."""

from __future__ import annotations

import dataclasses

import numpy as np

from feature_repo.stream import CARD_SPEC, BufferConsumer, OffsetGaps, merge
from perf.feature_parity import waves
from python_backend.events import TransactionEvent
from python_backend.fraud.features import RECENT_BUFFER

#: 2026-01-05: a time the events' rules accept (the scripted broker's records carry it).
T0_MS = 1_767_571_200_000


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


def test_waves_never_hold_a_card_twice() -> None:
    cards = np.array([1, 2, 3, 1, 4, 2, 2, 5])
    slices = waves(cards)
    assert [cards[s].tolist() for s in slices] == [[1, 2, 3], [1, 4, 2], [2, 5]]


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
        return _event(self._partition * 1000 + self._offset, T0_MS + self._offset).encode()

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
