"""The decision log: every decision appended to the Kafka topic ``decisions``, keyed by
transaction id, off the hot path, and never silently lost.

``append`` only queues (``Producer.produce``); a background thread serves delivery reports.
A record the broker did not acknowledge within ``message_timeout_ms`` (broker away, queue
full, server shutting down) goes to a local spool file, bounded by ``spool_max_bytes``; the
thread replays the spool once the broker acknowledges again, and a new instance replays what
an earlier one left. A record is dropped only when the spool is full, and then counted.

Each record carries a ``decision_id`` made when the decision was made: a record delivered
twice (acknowledged late, after it was spooled) has the same ``decision_id`` and is told apart
from a second decision on the same transaction (a client retry, with its own ``request_id``).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

TOPIC_DECISIONS = "decisions"
#: Spool size above which records are dropped (and counted): 64 MiB, some 200,000 decisions.
SPOOL_MAX_BYTES = 64 * 1024 * 1024


def record(
    transaction_id: str,
    decision: str,
    score: float,
    path: str,
    reasons: list[str],
    request_id: str = "",
    model: str = "fraud_scoring",
) -> dict:
    """One log record (JSON-ready)."""
    return {
        "transaction_id": transaction_id,
        "decision_id": uuid.uuid4().hex,
        "request_id": request_id,
        "decision": decision,
        "score": None if score != score else round(float(score), 6),  # NaN: not scored
        "path": path,
        "reasons": reasons,
        "decided_at_ms": int(time.time() * 1000),
        "model": model,
    }


class Journal:
    """What the decision log has taken but the broker has not acknowledged yet, on disk.

    ``produce`` only queues in memory (librdkafka, ``linger.ms``): a process killed with
    SIGKILL loses what was queued, decisions its callers already have. So each batch's
    records are first appended to a segment file (one ``write``, no fsync: the page cache
    outlives the process, not the machine), named by the writing process's pid. A segment is
    deleted once every record in it was delivered or spooled, and a new one started every
    ``rotate_s``. A process that starts hands every segment of a process no longer running to
    the spool (:meth:`recover`), which replays it: a record the broker had after all comes
    twice, with its ``decision_id`` (a redelivery), none is lost."""

    def __init__(self, spool_path: Path, rotate_s: float = 2.0, log=print) -> None:
        self.folder = spool_path.parent / "journal"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.spool_path = spool_path
        self.rotate_s = rotate_s
        self.log = log
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._seq = 0
        self._pending: dict[int, int] = {}  # segment -> records not yet resolved
        self._open_segment()

    def _path(self, seq: int) -> Path:
        return self.folder / f"{self.pid}-{seq}.jsonl"

    def _open_segment(self) -> None:
        self._seq += 1
        self._pending[self._seq] = 0
        self._fd = os.open(self._path(self._seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._opened = time.monotonic()

    def write(self, values: list[bytes]) -> Callable[[], None]:
        """Append ``values`` to the open segment; the callable marks one of them resolved."""
        with self._lock:
            seq = self._seq
            os.write(self._fd, b"".join(v + b"\n" for v in values))
            self._pending[seq] += len(values)

        def resolved() -> None:
            with self._lock:
                self._pending[seq] -= 1
                if self._pending[seq] <= 0 and seq != self._seq:
                    self._drop(seq)

        return resolved

    def _drop(self, seq: int) -> None:
        self._pending.pop(seq, None)
        with contextlib.suppress(FileNotFoundError):
            self._path(seq).unlink()

    def rotate(self) -> None:
        """A new segment every ``rotate_s``; the old one goes once all its records did."""
        with self._lock:
            if time.monotonic() - self._opened < self.rotate_s:
                return
            old = self._seq
            os.close(self._fd)
            self._open_segment()
            if self._pending.get(old, 0) <= 0:
                self._drop(old)

    def recover(self) -> int:
        """Hand the segments of dead processes to the spool; how many records they held."""
        found = 0
        for path in sorted(self.folder.glob("*.jsonl")):
            pid = int(path.name.split("-", 1)[0])
            if pid == self.pid or _running(pid):
                continue
            target = self.spool_path.with_name(f"{self.spool_path.name}.journal-{path.stem}")
            try:
                path.rename(target)  # several instances may race: one wins
            except FileNotFoundError:
                continue
            with target.open("rb") as f:
                found += sum(1 for line in f if line.strip())
        if found:
            self.log(f"decision log: {found} records of a process that died, to be replayed")
        return found

    def close(self) -> None:
        """After the producer's flush: every record is delivered or spooled."""
        with self._lock:
            os.close(self._fd)
            for seq in list(self._pending):
                self._drop(seq)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DecisionLog:
    """Appends decisions to ``topic``; spools what the broker does not take."""

    def __init__(
        self,
        bootstrap: str,
        spool_path: Path,
        topic: str = TOPIC_DECISIONS,
        message_timeout_ms: int = 5000,
        spool_max_bytes: int = SPOOL_MAX_BYTES,
        replay_every_s: float = 1.0,
        log: Callable[[str], None] = print,
    ) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self.spool_path = Path(spool_path)
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        self.spool_max_bytes = spool_max_bytes
        self.replay_every_s = replay_every_s
        #: Replays not tried because the broker was away (the spool kept for the next one).
        self.replays_deferred = 0
        self.log = log
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._last_ack = 0.0
        self._last_failure = 0.0
        self._last_replay = 0.0
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "linger.ms": 100,  # off the hot path: large batches, little broker CPU
                "acks": "all",
                "enable.idempotence": False,
                "message.timeout.ms": message_timeout_ms,
                "queue.buffering.max.messages": 200_000,
                "reconnect.backoff.max.ms": 1000,
            }
        )
        self.journal = Journal(self.spool_path, log=log)
        #: Records a journal left by a process that died (kill -9) before the broker had
        #: them, handed to the spool for replay.
        self.counts["recovered"] = self.journal.recover()
        self.counts["spooled"] += self.counts["recovered"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="decision-log", daemon=True)
        self._thread.start()

    # -- the hot path ------------------------------------------------------------------

    def append(self, records: Iterable[dict]) -> None:
        """Journal the records (one write, before the caller is answered), then queue them
        for the broker; never blocks, never raises."""
        records = list(records)
        if not records:
            return
        values = [json.dumps(rec, separators=(",", ":")).encode() for rec in records]
        resolved = self.journal.write(values)
        spill = []
        for rec, value in zip(records, values, strict=True):
            try:
                self.producer.produce(
                    self.topic,
                    key=rec["transaction_id"].encode(),
                    value=value,
                    on_delivery=lambda err, message, done=resolved: self._delivered(
                        err, message, done
                    ),
                )
            except BufferError:
                spill.append(value)
        if spill:
            self._spool(spill)
            for _ in spill:
                resolved()

    # -- delivery, spool and replay ----------------------------------------------------

    def _delivered(self, err, message, resolved=None) -> None:
        if err is None:
            self._last_ack = time.monotonic()
            self.counts["delivered"] += 1
        else:
            self._spool([message.value()])
        if resolved is not None:  # delivered or spooled: its journal no longer needs it
            resolved()

    def _spool(self, values: list[bytes]) -> None:
        self._last_failure = time.monotonic()
        with self._lock:
            size = self.spool_path.stat().st_size if self.spool_path.exists() else 0
            keep = []
            for value in values:
                if size + len(value) + 1 > self.spool_max_bytes:
                    self.counts["dropped"] += 1
                    continue
                keep.append(value)
                size += len(value) + 1
            if keep:
                with self.spool_path.open("ab") as spool:
                    spool.write(b"".join(v + b"\n" for v in keep))
                    spool.flush()
                    os.fsync(spool.fileno())
                self.counts["spooled"] += len(keep)
        if len(keep) < len(values):
            self.log(
                f"decision log: spool {self.spool_path} is full ({self.spool_max_bytes} bytes); "
                f"{len(values) - len(keep)} decisions dropped"
            )

    def spooled(self) -> int:
        """Records waiting in the spool (and in files an earlier replay left)."""
        total = 0
        for path in self._spool_files():
            with path.open("rb") as f:
                total += sum(1 for _ in f)
        return total

    def _spool_files(self) -> list[Path]:
        return sorted(self.spool_path.parent.glob(self.spool_path.name + "*"))

    def _broker_reachable(self) -> bool:
        if self._last_ack > self._last_failure:  # acknowledged since the last failure
            return True
        try:
            self.producer.list_topics(self.topic, timeout=1)
        except Exception:
            return False
        return True

    def replay(self) -> int:
        """Send the spooled records again (failures return to the spool). Returns how many."""
        with self._lock:
            files = self._spool_files()
            if not files:
                return 0
            # Take the spool away first: new failures start a new spool meanwhile.
            taken = []
            for path in files:
                if path == self.spool_path:
                    moved = path.with_name(f"{path.name}.replay-{uuid.uuid4().hex[:8]}")
                    path.rename(moved)
                    taken.append(moved)
                else:
                    taken.append(path)
        sent = 0
        for path in taken:
            with path.open("rb") as f:
                values = [line.rstrip(b"\n") for line in f if line.strip()]
            spill = []
            for value in values:
                key = json.loads(value)["transaction_id"].encode()
                try:
                    self.producer.produce(
                        self.topic, key=key, value=value, on_delivery=self._delivered
                    )
                    sent += 1
                except BufferError:
                    spill.append(value)
            if spill:
                self._spool(spill)
            path.unlink()
        self.counts["replayed"] += sent
        return sent

    def _serve(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.1)
            self.journal.rotate()
            now = time.monotonic()
            if now - self._last_replay >= self.replay_every_s:
                self._last_replay = now
                try:
                    if self.spool_path.parent.exists() and self._spool_files():
                        if self._broker_reachable():
                            self.replay()
                        else:
                            self.replays_deferred += 1
                except Exception as err:  # keep serving deliveries whatever happens
                    self.log(f"decision log: replay failed: {err!r}")

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued within ``timeout_s``; spool the rest."""
        self._stop.set()
        self._thread.join(timeout_s)
        remaining = self.producer.flush(timeout_s)
        if remaining:
            # Purged messages get a delivery report with an error: they go to the spool.
            self.producer.purge(in_queue=True, in_flight=True)
            self.producer.flush(1)
        self.journal.close()


def read_all(
    bootstrap: str, topic: str = TOPIC_DECISIONS, timeout_s: float = 60, decode=json.loads
) -> list:
    """Every record in ``topic`` (``decode``d), from the beginning to the end as of now (for
    reconciliation and tests)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"decision-log-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        # Read to each partition's end-of-partition event (this broker's ListOffsets does
        # not report high watermarks, so they are not asked for).
        partitions = list(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        records: list = []
        deadline = time.monotonic() + timeout_s
        done: set[int] = set()
        while len(done) < len(partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {len(records)} records of {topic}; the rest timed out")
            for message in consumer.consume(1000, timeout=0.5):
                error = message.error()
                if error is None:
                    records.append(decode(message.value()))
                elif error.code() == KafkaError._PARTITION_EOF:
                    done.add(message.partition())
        return records
    finally:
        consumer.close()
