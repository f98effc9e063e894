"""The decision log: every decision appended to the Kafka topic ``decisions``, keyed by
transaction id, off the hot path, and never silently lost.

``append`` journals each batch on disk, then only queues (``Producer.produce``); a background
thread serves delivery reports. A record the broker did not acknowledge within
``message_timeout_ms`` (broker away, queue full, server shutting down) goes to a local spool
file, bounded by ``spool_max_bytes``; the thread replays the spool once the broker
acknowledges again. A record is dropped only when the spool is full, and then counted.

On disk, under the spool folder, each writer (one per model instance and process) has a
folder of its own, held by a lock for as long as it lives (``Owner``); a writer takes over the
folders of writers that are gone and replays what they left. A line that does not parse is
set aside in ``quarantine/`` (counted, logged with its file and line), never a wall.

Each record carries a ``decision_id`` made when the decision was made: a record delivered
twice (acknowledged late, after it was spooled) has the same ``decision_id`` and is told apart
from a second decision on the same transaction (a client retry, with its own ``request_id``).

On the topic a record is binary by default (``records.proto``'s ``DecisionRecord``: a byte
0x00, the schema version, the message; the model inputs raw float32 bytes), JSON with
``EVENT_FORMAT=json`` (the inputs base64); :func:`decode` reads both. On disk (journal and
spool, one record per line) a binary record is written as base64, a JSON one as it is.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from python_backend import events, records_pb2
from python_backend.fraud import served

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
    """One log record (:func:`encode` writes it)."""
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


#: The lock file that marks a writer's folder as held (``Owner``).
OWNER_LOCK = "owner.lock"
#: Where lines that are not records are set aside, under the spool folder.
QUARANTINE = "quarantine"
#: Prefix of a file taken over from a writer that is gone (``Owner.adopt``).
ADOPTED = "adopted-"
#: The spool of a writer, in its folder.
SPOOL = "spool.jsonl"


class Owner:
    """A writer's own folder under the spool folder, held for as long as its process lives.

    The folder is named for the writer (``label``, e.g. the Triton instance) and a random
    suffix, never a process id: in a container a restarted process usually gets the pid of
    the one that died, and a pid-named journal took the dead one's records for its own. The
    writer holds an exclusive ``flock`` on ``owner.lock`` inside it; the kernel lets go of it
    when the process ends, however it ends (``kill -9``, the OOM killer, a node's reboot
    before a replay). So a folder whose lock can be taken belongs to nobody: :meth:`adopt`
    moves its files into the caller's folder, which replays them. The folder becomes visible
    only once its lock is held, so a live writer is never adopted."""

    def __init__(self, root: Path, label: str) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in label) or "writer"
        self.name = f"{safe}-{uuid.uuid4().hex[:10]}"
        staging = root / f".{self.name}.new"
        staging.mkdir()
        self._fd = os.open(staging / OWNER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.folder = root / self.name
        staging.rename(self.folder)

    def adopt(self) -> list[Path]:
        """Move the files of every writer that is gone into this writer's folder (renamed
        ``adopted-<their folder>-<file>``); returns the files moved."""
        moved = []
        for folder in sorted(self.root.iterdir()):
            if folder == self.folder or folder.name.startswith(".") or not folder.is_dir():
                continue
            if folder.name in (QUARANTINE, LEGACY_JOURNAL):
                continue
            moved += self._take(folder)
        moved += self._adopt_legacy()
        return moved

    def _take(self, folder: Path) -> list[Path]:
        try:
            fd = os.open(folder / OWNER_LOCK, os.O_RDWR)
        except FileNotFoundError:
            fd = None  # a folder being removed by its writer, or left without its lock
        except OSError:
            return []
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return []  # its writer lives
            moved = []
            for path in sorted(folder.iterdir()):
                if path.name == OWNER_LOCK:
                    continue
                target = self.folder / f"{ADOPTED}{folder.name}-{path.name}"
                with contextlib.suppress(FileNotFoundError):  # another adopter was first
                    path.rename(target)
                    moved.append(target)
            with contextlib.suppress(OSError):
                (folder / OWNER_LOCK).unlink()
                folder.rmdir()
            return moved
        finally:
            if fd is not None:
                os.close(fd)

    def _adopt_legacy(self) -> list[Path]:
        """Files of the layout before writer folders: spools loose in the spool folder, and
        journal segments named by pid (taken when that pid no longer runs)."""
        moved = []
        loose = [p for p in self.root.glob("*.jsonl*") if p.is_file()]
        legacy = self.root / LEGACY_JOURNAL
        if legacy.is_dir():
            for path in legacy.glob("*.jsonl"):
                pid = path.name.split("-", 1)[0]
                if pid.isdigit() and not _running(int(pid)):
                    loose.append(path)
        for path in sorted(loose):
            target = self.folder / f"{ADOPTED}legacy-{path.parent.name}-{path.name}"
            with contextlib.suppress(FileNotFoundError):
                path.rename(target)
                moved.append(target)
        return moved

    def release(self) -> None:
        """Let go of the folder: removed when empty, else left (unlocked) for the next
        writer to adopt."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if [p.name for p in self.folder.iterdir()] == [OWNER_LOCK]:
                (self.folder / OWNER_LOCK).unlink()
                self.folder.rmdir()
        os.close(self._fd)  # the lock goes with the descriptor
        self._fd = None


#: The pid-named journal folder of the layout before writer folders (adopted, never written).
LEGACY_JOURNAL = "journal"


class Journal:
    """What the decision log has taken but the broker has not acknowledged yet, on disk.

    ``produce`` only queues in memory (librdkafka, ``linger.ms``): a process killed with
    SIGKILL loses what was queued, decisions its callers already have. So each batch's
    records are first appended to a segment file in the writer's folder (one ``write``, no
    fsync: the page cache outlives the process, not the machine). A segment is deleted once
    every record in it was delivered or spooled, and a new one started every ``rotate_s``.
    A writer that dies leaves its segments in its folder, which the next writer adopts
    (:class:`Owner`) and replays: a record the broker had after all comes twice, with its
    ``decision_id`` (a redelivery), none is lost."""

    def __init__(self, folder: Path, rotate_s: float = 2.0) -> None:
        self.folder = folder
        self.rotate_s = rotate_s
        self._lock = threading.Lock()
        self._seq = 0
        self._pending: dict[int, int] = {}  # segment -> records not yet resolved
        self._open_segment()

    def _path(self, seq: int) -> Path:
        return self.folder / f"journal-{seq}.jsonl"

    def _open_segment(self) -> None:
        self._seq += 1
        self._pending[self._seq] = 0
        self._fd = os.open(self._path(self._seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._opened = time.monotonic()

    def write(self, values: list[bytes]) -> Callable[[], None]:
        """Append ``values`` to the open segment; the callable marks one of them resolved."""
        with self._lock:
            seq = self._seq
            os.write(self._fd, b"".join(_line(v) + b"\n" for v in values))
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


def encode(record: dict, binary: bool | None = None) -> bytes:
    """A record as it goes on the topic: binary (``DecisionRecord``) or JSON; ``binary``
    None: as ``EVENT_FORMAT`` says. The inputs' rows (``served.logged``: raw bytes) are the
    message's bytes in binary, base64 text in JSON."""
    if binary is None:
        binary = events.binary_by_default()
    inputs = record.get("inputs")
    if binary:
        fields = {k: v for k, v in record.items() if v is not None and k != "inputs"}
        if inputs is not None:
            fields["inputs_layout"] = inputs["layout"]
            fields["inputs_rows"] = served.raw_rows(inputs["rows"])
        return events.binary_record(records_pb2.DecisionRecord(**fields))
    if inputs is not None:
        record = {**record, "inputs": served.json_ready(inputs)}
    return json.dumps(record, separators=(",", ":")).encode()


def decode(value: bytes) -> dict:
    """A record from the topic, binary or JSON, as a dict (the inputs' rows: bytes from a
    binary record, base64 text from JSON; ``served.decode`` reads both). ``ValueError``
    naming what is wrong when it is not a record of either."""
    if value[:1] != events.BINARY:
        record = json.loads(value)  # ValueError (JSONDecodeError, UnicodeDecodeError)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        return record
    record = events.parsed_binary(value, records_pb2.DecisionRecord)  # EventError
    record["reasons"] = list(record.get("reasons", ()))
    record.setdefault("score", None)
    layout, rows = record.pop("inputs_layout", None), record.pop("inputs_rows", None)
    if layout is not None:
        record["inputs"] = {"layout": layout, "rows": rows}
    return record


def _line(value: bytes) -> bytes:
    """A record as one line on disk: a binary one as base64 (it may hold newlines)."""
    return base64.b64encode(value) if value[:1] == events.BINARY else value


def _value(line: bytes) -> bytes:
    """The record a line on disk holds (a JSON one as it is; ``ValueError`` if neither)."""
    if line[:1] == b"{":
        return line
    try:
        return base64.b64decode(line, validate=True)
    except ValueError as err:  # binascii.Error
        raise ValueError(f"neither JSON nor a base64 record: {err}") from None


def _checked(record: dict) -> dict:
    """A decoded line's record, or ``ValueError`` when it is not one (a torn write, a disk
    error)."""
    if not isinstance(record.get("transaction_id"), str):
        raise ValueError("not a decision record (no transaction_id)")
    return record


def waiting(root: Path) -> int:
    """Records waiting in the spools under ``root`` (every writer's, in any folder below it;
    live journals and the quarantine left out)."""
    total = 0
    for path in root.rglob("*"):
        if path.name == OWNER_LOCK or path.name.startswith("journal-") or not path.is_file():
            continue
        if QUARANTINE in path.relative_to(root).parts:
            continue
        with path.open("rb") as f:
            total += sum(1 for line in f if line.strip())
    return total


class DecisionLog:
    """Appends decisions to ``topic``; spools what the broker does not take.

    ``spool_dir`` may be shared by several writers (the instances of a model, the processes
    a container ran one after the other): each writes only in its own folder (``Owner``)
    and takes over the folders of writers that are gone, at start and every ``adopt_every_s``.
    """

    def __init__(
        self,
        bootstrap: str,
        spool_dir: Path,
        topic: str = TOPIC_DECISIONS,
        label: str = "decisions",
        message_timeout_ms: int = 5000,
        spool_max_bytes: int = SPOOL_MAX_BYTES,
        replay_every_s: float = 1.0,
        adopt_every_s: float = 10.0,
        log: Callable[[str], None] = print,
    ) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self.spool_dir = Path(spool_dir)
        self.owner = Owner(self.spool_dir, label)
        self.spool_path = self.owner.folder / SPOOL
        self.spool_max_bytes = spool_max_bytes
        self.replay_every_s = replay_every_s
        self.adopt_every_s = adopt_every_s
        #: Replays not tried because the broker was away (the spool kept for the next one).
        self.replays_deferred = 0
        self.log = log
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._last_ack = 0.0
        self._last_failure = 0.0
        self._last_replay = 0.0
        self._last_adopt = time.monotonic()
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
        self.journal = Journal(self.owner.folder)
        self._adopt()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="decision-log", daemon=True)
        self._thread.start()

    def _adopt(self) -> int:
        """Take over what writers that are gone left (their journals and spools), to be
        replayed; how many records that was."""
        found = 0
        for path in self.owner.adopt():
            with path.open("rb") as f:
                found += sum(1 for line in f if line.strip())
        if found:
            #: Records a writer that died (kill -9) or stopped with the broker away left,
            #: handed to this one's spool for replay.
            self.counts["recovered"] += found
            self.counts["spooled"] += found
            self.log(f"decision log: {found} records left by a writer that is gone, to replay")
        return found

    # -- the hot path ------------------------------------------------------------------

    def append(self, records: Iterable[dict]) -> None:
        """Journal the records (one write, before the caller is answered), then queue them
        for the broker; never blocks, never raises."""
        records = list(records)
        if not records:
            return
        values = [encode(rec) for rec in records]
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
                line = _line(value)
                if size + len(line) + 1 > self.spool_max_bytes:
                    self.counts["dropped"] += 1
                    continue
                keep.append(line)
                size += len(line) + 1
            if keep:
                with self.spool_path.open("ab") as spool:
                    spool.write(b"".join(line + b"\n" for line in keep))
                    spool.flush()
                    os.fsync(spool.fileno())
                self.counts["spooled"] += len(keep)
        if len(keep) < len(values):
            self.log(
                f"decision log: spool {self.spool_path} is full ({self.spool_max_bytes} bytes); "
                f"{len(values) - len(keep)} decisions dropped"
            )

    def spooled(self) -> int:
        """Records waiting in the spool (and in files an earlier replay or writer left)."""
        total = 0
        for path in self._spool_files():
            with path.open("rb") as f:
                total += sum(1 for line in f if line.strip())
        return total

    def _spool_files(self) -> list[Path]:
        return sorted(
            p
            for p in self.owner.folder.iterdir()
            if p.name.startswith((SPOOL, ADOPTED)) and p.is_file()
        )

    def _broker_reachable(self) -> bool:
        if self._last_ack > self._last_failure:  # acknowledged since the last failure
            return True
        try:
            self.producer.list_topics(self.topic, timeout=1)
        except Exception:
            return False
        return True

    def _quarantine(self, source: Path, number: int, line: bytes, err: Exception) -> None:
        """A line that is not a record (a torn write, a disk error) is set aside with where
        it came from, counted and logged; the replay goes on with the rest."""
        folder = self.spool_dir / QUARANTINE
        folder.mkdir(exist_ok=True)
        target = folder / f"{self.owner.name}.jsonl"
        entry = {
            "source": str(source),
            "line": number,
            "error": str(err)[:200],
            "raw_base64": base64.b64encode(line).decode(),
            "quarantined_at_ms": int(time.time() * 1000),
        }
        with target.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        self.counts["quarantined"] += 1
        self.log(
            f"decision log: line {number} of {source} is not a record ({err}); set aside in "
            f"{target}, the replay goes on"
        )

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
            keyed = []
            with path.open("rb") as f:
                for number, raw in enumerate(f, 1):
                    line = raw.rstrip(b"\n")
                    if not line.strip():
                        continue
                    try:
                        value = _value(line)
                        key = _checked(decode(value))["transaction_id"].encode()
                        keyed.append((key, value))
                    except ValueError as err:
                        self._quarantine(path, number, line, err)
            # Journaled again before the file goes: a kill between the two replays them
            # twice (told apart by decision_id), never loses them.
            resolved = self.journal.write([value for _key, value in keyed])
            spill = []
            for key, value in keyed:
                try:
                    self.producer.produce(
                        self.topic,
                        key=key,
                        value=value,
                        on_delivery=lambda err, message, done=resolved: self._delivered(
                            err, message, done
                        ),
                    )
                    sent += 1
                except BufferError:
                    spill.append(value)
            if spill:
                self._spool(spill)
                for _ in spill:
                    resolved()
            path.unlink()
        self.counts["replayed"] += sent
        return sent

    def _serve(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.1)
            self.journal.rotate()
            now = time.monotonic()
            if now - self._last_adopt >= self.adopt_every_s:
                self._last_adopt = now
                try:
                    self._adopt()
                except Exception as err:  # a folder that cannot be read: try again later
                    self.log(f"decision log: adopting failed: {err!r}")
            if now - self._last_replay >= self.replay_every_s:
                self._last_replay = now
                try:
                    if self._spool_files():
                        if self._broker_reachable():
                            self.replay()
                        else:
                            self.replays_deferred += 1
                except Exception as err:  # keep serving deliveries whatever happens
                    self.log(f"decision log: replay failed: {err!r}")

    def close(self, timeout_s: float = 5.0, drain_s: float = 0.0) -> None:
        """Deliver what is queued within ``timeout_s``; then, for up to ``drain_s``, hand the
        spool to the broker if it answers (a stopping replica empties its disk). What is
        left stays spooled on disk for the next writer in ``spool_dir`` to adopt."""
        self._stop.set()
        self._thread.join(timeout_s)
        remaining = self.producer.flush(timeout_s)
        if not remaining and drain_s > 0 and self._spool_files():
            deadline = time.monotonic() + drain_s
            try:
                if self._broker_reachable():
                    sent = self.replay()
                    remaining = self.producer.flush(max(0.1, deadline - time.monotonic()))
                    self.log(
                        f"decision log: {sent} spooled records handed to the broker at "
                        f"shutdown; {self.spooled() + remaining} left on disk"
                    )
                else:
                    self.log(
                        f"decision log: broker away at shutdown; {self.spooled()} records stay "
                        f"in {self.owner.folder} for the next writer"
                    )
            except Exception as err:  # whatever is not sent stays on disk
                self.log(f"decision log: drain at shutdown failed: {err!r}")
        if remaining:
            # Purged messages get a delivery report with an error: they go to the spool.
            self.producer.purge(in_queue=True, in_flight=True)
            self.producer.flush(1)
        self.journal.close()
        self.owner.release()


def read_all(
    bootstrap: str, topic: str = TOPIC_DECISIONS, timeout_s: float = 60, decode=decode
) -> list:
    """Every record in ``topic`` (``decode``d: by default a decision record, binary or JSON,
    or any JSON object), from the beginning to the end as of now (for reconciliation and
    tests)."""
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
