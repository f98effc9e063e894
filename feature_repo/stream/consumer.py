"""The stream consumer: a consumer group reading a topic at least once, folding each event
into its entity's buffer, writing the buffers, and only then committing the offsets; holes in
the offsets (a transaction aborted or a record not yet visible) re-read, never skipped."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from feature_repo.stream.buffers import (
    CARD_SPEC,
    BufferSpec,
    Entry,
    buffers_from_store,
    merge_entries,
)
from feature_repo.stream.writers import RecentWriter
from python_backend import tracing
from python_backend.events import TOPIC_TRANSACTIONS, EventError
from python_backend.fraud.features import STREAM_HEARTBEAT_ID
from python_backend.fraud.online import OnlineFeatureReader


class RecentIds:
    """The last ``size`` ids added, for membership (a set with a first-in-first-out bound)."""

    def __init__(self, size: int = 200_000) -> None:
        self.size = size
        self._order: collections.deque = collections.deque()
        self._ids: set = set()

    def __contains__(self, item) -> bool:
        return item in self._ids

    def add(self, items) -> None:
        for item in items:
            if item in self._ids:
                continue
            self._ids.add(item)
            self._order.append(item)
            if len(self._order) > self.size:
                self._ids.discard(self._order.popleft())


@dataclass
class ConsumerStats:
    consumed: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    batches: int = 0
    store_retries: int = 0
    #: Offsets served out of order (a later record before an earlier one): re-read.
    offset_gaps: int = 0
    #: Gaps still there after ``gap_wait_s``: accepted and logged (see ``OffsetGaps``).
    offset_gaps_accepted: int = 0
    commit_failures: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        return self.consumed / self.seconds if self.seconds else 0.0


def _store_unavailable(err: Exception) -> bool:
    """A store that is down or too slow (retry), as opposed to a bug (raise)."""
    try:
        import redis
    except ImportError:  # pragma: no cover - redis-py is installed with Feast's extra
        return isinstance(err, (ConnectionError, TimeoutError))
    return isinstance(
        err, (redis.ConnectionError, redis.TimeoutError, ConnectionError, TimeoutError)
    )


def _traceparent(message) -> str | None:
    """The ``traceparent`` header of a record (the BLS's ``fraud.publish`` span), if any."""
    for key, value in message.headers() or ():
        if key == tracing.TRACEPARENT and value:
            return value.decode() if isinstance(value, bytes) else value
    return None


def consumer_config(bootstrap: str, group: str) -> dict:
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,  # commit only after the store write: at-least-once
        "enable.auto.offset.store": False,  # commits name their offsets (see OffsetGaps)
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        "fetch.wait.max.ms": 50,
    }


class OffsetGaps:
    """The next offset each partition must deliver, and what to do when a later one comes.

    Records of a partition are numbered without holes when the producers are neither
    transactional nor compacted away, as ours are. A later offset than the expected one
    means the broker served a record before an earlier one was readable: the in-memory
    tansu broker does this about once in 20,000 records when several producers write to a
    partition at once (two BLS instances do), and a consumer that commits past the hole
    loses that event for good. So the consumer re-reads from the hole (``rewind``) until
    it is filled, for at most ``wait_s`` per hole; a hole that stays is accepted and
    counted (``accept``): a topic with holes of its own (compaction, aborted transactions)
    then costs ``wait_s`` per hole, never a stall. ``wait_s=0`` accepts every hole at once
    (counted and logged, not re-read).
    """

    def __init__(self, wait_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.wait_s = wait_s
        self.clock = clock
        self.expected: dict[tuple[str, int], int] = {}
        self.since: dict[tuple[str, int], float] = {}
        self.holes = 0  # distinct holes seen

    def check(self, key: tuple[str, int], offset: int) -> str:
        """``"ok"``, ``"rewind"`` (re-read from ``expected[key]``) or ``"accept"``."""
        expected = self.expected.get(key)
        if expected is None or offset <= expected:
            verdict = "ok"  # in order, the first seen, or a redelivery (idempotent)
        else:
            if key not in self.since:
                self.since[key] = self.clock()
                self.holes += 1
            first = self.since[key]
            if self.clock() - first < self.wait_s:
                return "rewind"
            verdict = "accept"
        self.since.pop(key, None)
        self.expected[key] = offset + 1
        return verdict

    def forget(self, keys) -> None:
        """Partitions revoked or newly assigned: their next offset is the committed one."""
        for key in keys:
            self.expected.pop(key, None)
            self.since.pop(key, None)


class GroupConsumer:
    """A consumer group's member with the stream machinery's guarantees, whatever it does
    with the events: at least once (offsets committed only after :meth:`apply` made the
    batch durable, and exactly what was applied, never past a hole), holes in the offsets
    re-read (``OffsetGaps``), a record that does not decode counted, logged with its
    topic, partition and offset and skipped, lag measured from the broker's watermarks.
    Subclasses say how a record decodes (:meth:`decode`) and what a batch does
    (:meth:`apply`); the feature consumer (:class:`BufferConsumer`) and the analysis
    consumer (``feature_repo.analysis``) are two."""

    def __init__(
        self,
        bootstrap: str,
        group: str,
        topics: list[str],
        batch_size: int = 1000,
        log=print,
        gap_wait_s: float = 2.0,
    ) -> None:
        self.consumer = Consumer(consumer_config(bootstrap, group))
        self.assigned = False
        self.consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        self.gaps = OffsetGaps(gap_wait_s)
        self._unchecked: set[tuple[str, int]] = set()  # assigned, committed offset not read yet
        self.batch_size = batch_size
        self.stats = ConsumerStats()
        self.log = log
        #: Records not applied yet by (topic, partition), refreshed every ``lag_every_s``
        #: from the watermarks the broker sent with its last fetch (no extra request).
        self.lag: dict[tuple[str, int], int] = {}
        self.lag_every_s = 2.0
        self._lag_at = 0.0
        self.last_applied = time.time()
        #: Set (a signal handler may) to stop after the batch in hand is written and
        #: committed: a stop never lands inside a write or a flush.
        self.stopping = threading.Event()

    # -- what a subclass says ---------------------------------------------------------

    def decode(self, message):
        """The event a record holds; ``EventError`` (naming the rule) if it holds none."""
        raise NotImplementedError

    def apply(self, events: list[tuple[object, object]]) -> None:
        """Make the batch's ``(message, event)`` pairs durable; only then are their offsets
        committed. Raise to have the batch read again (nothing is committed)."""
        raise NotImplementedError

    def before_poll(self) -> None:
        """Called before each poll (the feature consumer's heartbeat)."""

    # -- the group ----------------------------------------------------------------------

    def _on_assign(self, _consumer, partitions) -> None:
        self.assigned = True
        keys = [(p.topic, p.partition) for p in partitions]
        self.gaps.forget(keys)
        self._unchecked.update(keys)

    def _on_revoke(self, _consumer, partitions) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        self.gaps.forget(keys)
        self._unchecked.difference_update(keys)

    def _expect_committed(self) -> None:
        """Newly assigned partitions start at their committed offsets: a hole right there
        is a hole too. (Read outside the assign callback, which must not block.)"""
        keys, self._unchecked = list(self._unchecked), set()
        try:
            committed = self.consumer.committed([TopicPartition(t, p) for t, p in keys], 10)
        except Exception as err:  # the coordinator is away: check from the first record on
            self.log(f"could not read committed offsets ({err!r}); gaps checked from the next")
            return
        for tp in committed:
            if tp.offset >= 0 and (tp.topic, tp.partition) not in self.gaps.expected:
                self.gaps.expected[(tp.topic, tp.partition)] = tp.offset

    def poll_once(self, timeout_s: float = 0.2, commit: bool = True) -> int:
        """Consume one batch, apply it, commit it. Returns messages consumed.

        ``commit=False`` leaves the offsets uncommitted, as a crash between the write and
        the commit would (for tests of the at-least-once path).
        """
        self.before_poll()
        messages = self.consumer.consume(num_messages=self.batch_size, timeout=timeout_s)
        if not messages:
            self._measure_lag()
            return 0
        if self._unchecked:
            self._expect_committed()
        started = time.perf_counter()
        rewind: dict[tuple[str, int], int] = {}
        events: list[tuple[object, object]] = []
        for message in messages:
            if message.error():
                if message.error().code() != KafkaError._PARTITION_EOF:
                    self.stats.errors.append(str(message.error()))
                continue
            key = (message.topic(), message.partition())
            if key in rewind:
                continue  # this partition is re-read from its hole: drop what came after it
            verdict = self.gaps.check(key, message.offset())
            if verdict == "rewind":
                rewind[key] = self.gaps.expected[key]
                continue
            if verdict == "accept":
                self.stats.offset_gaps_accepted += 1
                self.log(
                    f"{key[0]}[{key[1]}]: offsets before {message.offset()} never came "
                    f"within {self.gaps.wait_s:g} s; going on without them"
                )
            self.stats.consumed += 1
            try:
                event = self.decode(message)
            except EventError as err:
                # A poison message must not stop the stream: count it, log it, skip it.
                self.stats.rejected += 1
                self.log(
                    f"rejected {message.topic()}[{message.partition()}] offset "
                    f"{message.offset()}: {err}"
                )
                continue
            events.append((message, event))
        self.apply(events)
        if commit:
            # Exactly what was applied, never past a hole (the default would commit the
            # position of every record returned, those dropped above included).
            offsets = [
                TopicPartition(t, p, self.gaps.expected[(t, p)])
                for t, p in {(m.topic(), m.partition()) for m in messages if not m.error()}
                if (t, p) in self.gaps.expected
            ]
            if offsets:
                try:
                    self.consumer.commit(offsets=offsets, asynchronous=False)
                except KafkaException as err:
                    # The group moved on (a rebalance while the batch was written): whoever
                    # owns these partitions now re-reads the batch, and ids make that a no-op.
                    self.stats.commit_failures += 1
                    self.log(f"commit failed ({err}); the batch will be re-read, idempotently")
        self.stats.offset_gaps = self.gaps.holes
        for (topic, partition), offset in rewind.items():
            self.consumer.seek(TopicPartition(topic, partition, offset))
        self.stats.batches += 1
        self.stats.seconds += time.perf_counter() - started
        self.last_applied = time.time()
        self._measure_lag()
        return len(messages)

    def _measure_lag(self) -> None:
        now = time.monotonic()
        if now - self._lag_at < self.lag_every_s:
            return
        self._lag_at = now
        try:
            assigned = self.consumer.assignment()
        except KafkaException:
            return
        lag = {}
        for tp in assigned:
            key = (tp.topic, tp.partition)
            try:
                _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high < 0:
                continue
            position = self.gaps.expected.get(key)
            lag[key] = max(0, high - position) if position is not None else high
        self.lag = lag

    def run(self, until_idle_s: float | None = None, max_seconds: float | None = None) -> None:
        """Consume until the topics stay empty for ``until_idle_s`` once partitions are
        assigned (None: forever), or for at most ``max_seconds``."""
        started = idle_since = time.monotonic()
        while not self.stopping.is_set():
            if self.poll_once() or not self.assigned:
                idle_since = time.monotonic()
            now = time.monotonic()
            if until_idle_s is not None and now - idle_since >= until_idle_s:
                return
            if max_seconds is not None and now - started >= max_seconds:
                return

    def close(self) -> None:
        self.consumer.close()


class BufferConsumer(GroupConsumer):
    """Consumes one topic into per-entity buffers (``spec``); one instance per process.
    ``read_buffers(entities)`` returns the buffers the store holds now."""

    def __init__(
        self,
        bootstrap: str,
        spec: BufferSpec,
        read_buffers: Callable[[list[int]], dict[int, list[Entry]]],
        writer: RecentWriter,
        group: str,
        topic: str,
        batch_size: int = 1000,
        log=print,
        gap_wait_s: float = 2.0,
        heartbeat_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(bootstrap, group, [topic], batch_size, log, gap_wait_s)
        self.heartbeat_s = heartbeat_s
        self.clock = clock
        self._beat_at = float("-inf")
        self.spec = spec
        self.read_buffers = read_buffers
        self.writer = writer
        #: The ids this process applied last: a duplicate is known even once its buffer
        #: has let it go.
        self.recent_ids = RecentIds()

    def decode(self, message):
        return self.spec.decode(message.value())

    def before_poll(self) -> None:
        self._heartbeat()

    def apply(self, events: list[tuple[object, object]]) -> None:
        consumed_ns = time.time_ns()
        by_entity: dict[int, list[Entry]] = {}
        traced: list[tuple[str, int, object]] = []  # (traceparent, produced ns, event)
        for message, event in events:
            entry = self.spec.to_entry(event)
            if entry[-1] in self.recent_ids:
                # Applied already, though maybe no longer in its buffer (a newer entry pushed
                # it out): a decision made twice (a retry on another replica) publishes its
                # transaction twice.
                self.stats.duplicates += 1
                continue
            by_entity.setdefault(self.spec.entity(event), []).append(entry)
            context = _traceparent(message)
            if context is not None:
                traced.append((context, message.timestamp()[1] * 1_000_000, event))
        added = self._write_with_retry(by_entity)
        self.recent_ids.add(entry[-1] for entries in by_entity.values() for entry in entries)
        self.stats.applied += sum(added.values())
        self.stats.duplicates += sum(len(e) for e in by_entity.values()) - sum(added.values())
        if traced:
            self._trace(traced, consumed_ns, time.time_ns(), len(events))

    def _trace(self, traced, consumed_ns: int, applied_ns: int, batch: int) -> None:
        """Continue the trace of each traced record: ``kafka.queued`` (produced to
        consumed) and ``stream.apply`` (consumed to written and committed)."""
        spans = tracing.tracer("fraud-stream-consumer")
        if spans is None:
            return
        for context, produced_ns, event in traced:
            attributes = {
                "messaging.system": "kafka",
                "fraud.transaction_ids": [str(getattr(event, "transaction_id", ""))],
                "stream.batch": batch,
            }
            spans.span(
                "kafka.queued",
                context,
                min(produced_ns, consumed_ns),
                consumed_ns,
                attributes,
                kind="CONSUMER",
            )
            spans.span("stream.apply", context, consumed_ns, applied_ns, attributes)

    def _heartbeat(self) -> None:
        """Every ``heartbeat_s``: this poll's wall-clock time as the buffer of entity
        ``STREAM_HEARTBEAT_ID``, so serving tells a live stream from one that stopped (a
        buffer's own time is its entity's last event, which may rightly be weeks old)."""
        if self.heartbeat_s is None:
            return
        now = self.clock()
        if now - self._beat_at < self.heartbeat_s:
            return
        self._beat_at = now
        ms = int(now * 1000)
        middle = [0.0 if kind == "float32_list" else 0 for _, kind in self.spec.features[1:-1]]
        try:
            base = self.read_buffers([STREAM_HEARTBEAT_ID])
            self.writer.write({STREAM_HEARTBEAT_ID: [(ms, *middle, f"heartbeat-{ms}")]}, base)
        except Exception as err:  # the store is away: the next beat tries again
            self.log(f"heartbeat not written ({err!r})")

    def _write_with_retry(self, events: dict[int, list[Entry]]) -> dict[int, int]:
        """Merge and write, waiting out an online store that is away (nothing is committed
        meanwhile, so nothing is lost; the batch is held and written when it is back)."""
        delay = 0.1
        while True:
            try:
                return self._write(events)
            except Exception as err:
                if not _store_unavailable(err):
                    raise
                self.stats.store_retries += 1
                if self.stats.store_retries == 1 or self.stats.store_retries % 20 == 0:
                    self.log(f"online store unavailable ({err!r}); holding the batch, retrying")
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _write(self, events: dict[int, list[Entry]]) -> dict[int, int]:
        pending = list(events)
        added: dict[int, int] = {}
        for _attempt in range(5):
            base = self.read_buffers(pending)
            merged = {}
            for entity in pending:
                merged[entity], added[entity] = merge_entries(
                    base[entity], events[entity], self.spec.limit
                )
            # Cards another writer changed since the read are merged again from fresh state.
            pending = self.writer.write(merged, base)
            if not pending:
                break
        else:
            raise RuntimeError(f"{len(pending)} entities kept changing under the consumer")
        return added


class TransactionConsumer(BufferConsumer):
    """Consumes ``transactions`` into ``card_recent``."""

    def __init__(
        self,
        bootstrap: str,
        reader: OnlineFeatureReader,
        writer: RecentWriter,
        group: str = "card-recent-features",
        topic: str = TOPIC_TRANSACTIONS,
        batch_size: int = 1000,
        log=print,
        heartbeat_s: float | None = 5.0,
    ) -> None:
        self.reader = reader
        super().__init__(
            bootstrap,
            CARD_SPEC,
            lambda cards: buffers_from_store(reader, cards),
            writer,
            group,
            topic,
            batch_size,
            log,
            heartbeat_s=heartbeat_s,
        )


class ConsumerThread:
    """A stream consumer polling in a thread of this process until stopped (the benchmarks' and
    the tests' consumer beside their load)."""

    def __init__(self, consumer) -> None:
        self.consumer = consumer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.consumer.poll_once(timeout_s=0.05)

    def start(self, timeout_s: float = 60) -> ConsumerThread:
        deadline = time.monotonic() + timeout_s
        while not self.consumer.assigned:  # join the group before anyone measures
            self.consumer.poll_once(timeout_s=0.2)
            if time.monotonic() > deadline:
                raise TimeoutError("the consumer got no partitions")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.consumer.close()
