"""The decision log against a real Kafka-protocol broker: delivered, spooled while the broker
is away, replayed when it is back (by the same or a later writer), bounded; what a writer that
died left (its pid reused or not) adopted and replayed; torn lines set aside; a stopping
writer hands its spool over."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter

import pytest

from client.local.services import free_port, kafka_broker
from feature_repo.stream import ensure_topic
from python_backend.fraud.decision_log import QUARANTINE, DecisionLog, read_all, record, waiting
from tests.support import wait_until


def _records(n: int, prefix: str) -> list[dict]:
    return [
        record(f"{prefix}-{i}", "APPROVE", 0.1, "primary", [], f"{prefix}-{i}#1") for i in range(n)
    ]


def _wait(predicate, timeout_s: float = 30, what: str = "the decision log") -> None:
    wait_until(predicate, timeout_s=timeout_s, what=what)


@pytest.fixture
def broker():
    with kafka_broker() as service:
        bootstrap = f"127.0.0.1:{service.port}"
        ensure_topic(bootstrap, "decisions", partitions=2)
        yield service, bootstrap


def test_every_decision_reaches_the_topic_keyed_by_transaction(broker, tmp_path) -> None:
    _service, bootstrap = broker
    log = DecisionLog(bootstrap, tmp_path, log=lambda _m: None)
    sent = _records(200, "a")
    log.append(sent)
    _wait(lambda: log.counts["delivered"] == 200)
    log.close()
    got = read_all(bootstrap)
    assert sorted(r["decision_id"] for r in got) == sorted(r["decision_id"] for r in sent)
    assert log.counts["spooled"] == 0


def test_broker_away_spools_then_replays_without_loss(broker, tmp_path) -> None:
    service, bootstrap = broker
    log = DecisionLog(bootstrap, tmp_path, message_timeout_ms=1000, log=lambda _m: None)
    log.append(_records(5, "warm"))
    _wait(lambda: log.counts["delivered"] == 5)
    service.pause()  # the broker stops answering
    try:
        away = _records(300, "away")
        log.append(away)
        _wait(lambda: log.counts["spooled"] >= 300, timeout_s=20)
        deferred = log.replays_deferred
        # Two replay rounds while the broker is still away: each must keep the spool.
        _wait(lambda: log.replays_deferred >= deferred + 2, timeout_s=20)
        assert log.spooled() >= 300, "the spool was emptied while the broker was away"
    finally:
        service.resume()
    _wait(lambda: log.spooled() == 0 and log.counts["replayed"] >= 300, timeout_s=30)
    log.close()
    got = read_all(bootstrap)
    ids = Counter(r["decision_id"] for r in got)
    assert all(ids[r["decision_id"]] >= 1 for r in away), "a spooled decision was lost"
    by_tx = Counter(r["transaction_id"] for r in got)
    # A transaction seen twice is only ever the same decision delivered twice.
    for tx, n in by_tx.items():
        if n > 1:
            assert len({r["decision_id"] for r in got if r["transaction_id"] == tx}) == 1


def test_a_later_instance_replays_what_an_earlier_one_spooled(broker, tmp_path) -> None:
    _service, bootstrap = broker
    spool = tmp_path
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens: every record is spooled
    first = DecisionLog(nowhere, spool, message_timeout_ms=500, log=lambda _m: None)
    left = _records(50, "left")
    first.append(left)
    _wait(lambda: first.counts["spooled"] == 50)
    first.close(timeout_s=1)
    second = DecisionLog(bootstrap, spool, log=lambda _m: None)
    _wait(lambda: second.counts["delivered"] == 50)
    second.close()
    assert waiting(tmp_path) == 0 and not any(tmp_path.iterdir()), "files left behind"
    assert {r["decision_id"] for r in read_all(bootstrap)} == {r["decision_id"] for r in left}


#: A process that appends decisions, says so, and waits to be killed: what a BLS instance
#: killed with SIGKILL right after answering leaves behind. Its pid is printed too.
_KILLED = """
import os, sys, time
from pathlib import Path
from python_backend.fraud.decision_log import DecisionLog, record
log = DecisionLog(sys.argv[1], Path(sys.argv[2]), log=lambda _m: None)
n = int(sys.argv[3])
log.append(record(f"killed-{i}", "APPROVE", 0.1, "primary", [], f"killed-{i}#1") for i in range(n))
print("appended", os.getpid(), flush=True)
time.sleep(60)
"""

#: A writer answering batch after batch until it is killed: each line it prints is a batch
#: whose callers were answered (``append`` returned), as the BLS answers after it.
_BATCHES = """
import sys
from pathlib import Path
from python_backend.fraud.decision_log import DecisionLog, record
log = DecisionLog(sys.argv[1], Path(sys.argv[2]), log=lambda _m: None)
for b in range(1_000_000):
    log.append(record(f"b{b}-{i}", "APPROVE", 0.1, "primary", [], f"b{b}-{i}#1") for i in range(16))
    print(b, flush=True)
"""


def _killed_writer(tmp_path, n: int) -> int:
    """A child that journaled ``n`` decisions (a broker address that never answers keeps
    them in its producer's memory, as ``linger.ms`` does on a live broker when the kill
    comes) and was killed with SIGKILL; its pid."""
    nowhere = f"127.0.0.1:{free_port()}"
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED, nowhere, str(tmp_path), str(n)],
        stdout=subprocess.PIPE,
        text=True,
    )
    said, pid = child.stdout.readline().split()
    assert said == "appended"
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    return int(pid)


def _journaled(tmp_path) -> list:
    return [p for p in tmp_path.glob("*/journal-*.jsonl") if p.stat().st_size]


def test_decisions_of_a_process_killed_minus_9_are_replayed_by_the_next(broker, tmp_path) -> None:
    _service, bootstrap = broker
    _killed_writer(tmp_path, 300)
    assert _journaled(tmp_path), "nothing journaled"
    second = DecisionLog(bootstrap, tmp_path, log=lambda _m: None)
    assert second.counts["recovered"] == 300
    _wait(lambda: second.counts["delivered"] == 300)
    second.close()
    got = {r["transaction_id"] for r in read_all(bootstrap)}
    assert got == {f"killed-{i}" for i in range(300)}, "a decision of the killed process was lost"
    assert not list(tmp_path.rglob("*.jsonl")), "journal segments left behind"


def test_a_restart_that_reuses_the_dead_process_pid_replays_its_decisions(
    broker, tmp_path, monkeypatch
) -> None:
    """In a container a restarted process usually gets the pid of the one that died: the
    new writer must still see the dead one's journal as someone else's."""
    _service, bootstrap = broker
    dead_pid = _killed_writer(tmp_path, 3)
    monkeypatch.setattr("os.getpid", lambda: dead_pid)  # the restart got the same pid
    second = DecisionLog(bootstrap, tmp_path, log=lambda _m: None)
    assert second.counts["recovered"] == 3
    second.append(_records(2, "after-restart"))  # its own first segment, resolved, rotated
    _wait(lambda: second.counts["delivered"] == 5)
    second.journal.rotate_s = 0
    second.journal.rotate()
    second.close()
    got = {r["transaction_id"] for r in read_all(bootstrap)}
    assert {f"killed-{i}" for i in range(3)} <= got, "the dead process's decisions were lost"


def test_kill_minus_9_in_the_middle_of_batches_loses_no_answered_decision(broker, tmp_path) -> None:
    _service, bootstrap = broker
    nowhere = f"127.0.0.1:{free_port()}"
    child = subprocess.Popen(
        [sys.executable, "-c", _BATCHES, nowhere, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    answered = [int(child.stdout.readline()) for _ in range(200)]  # batches still coming
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    answered += [int(line) for line in child.stdout.read().split()]
    second = DecisionLog(bootstrap, tmp_path, log=lambda _m: None)
    _wait(lambda: waiting(tmp_path) == 0, what="the killed writer's journal replayed")
    second.close()
    got = {r["transaction_id"] for r in read_all(bootstrap)}
    lost = {f"b{b}-{i}" for b in answered for i in range(16)} - got
    assert not lost, f"{len(lost)} answered decisions lost, e.g. {sorted(lost)[:3]}"
    # A batch being written when the kill came may be torn: set aside, never a wall.
    assert second.counts["recovered"] >= 16 * len(answered)


def test_two_live_writers_in_one_folder_never_take_each_others_files(tmp_path) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    first = DecisionLog(nowhere, tmp_path, message_timeout_ms=300, log=lambda _m: None)
    first.append(_records(20, "first"))
    _wait(lambda: first.counts["spooled"] == 20)
    second = DecisionLog(nowhere, tmp_path, message_timeout_ms=300, log=lambda _m: None)
    assert second.counts["recovered"] == 0
    assert first.spooled() == 20, "a live writer's spool was taken"
    first.close(timeout_s=1)
    second._adopt()  # the first is gone now: its spool is the second's to replay
    assert second.counts["recovered"] == 20 and second.spooled() == 20
    second.close(timeout_s=1)


def test_a_torn_line_in_the_middle_of_a_spool_is_set_aside_and_the_rest_replayed(
    broker, tmp_path
) -> None:
    _service, bootstrap = broker
    nowhere = f"127.0.0.1:{free_port()}"
    first = DecisionLog(nowhere, tmp_path, message_timeout_ms=300, log=lambda _m: None)
    first.append(_records(10, "torn"))
    _wait(lambda: first.counts["spooled"] == 10)
    first.close(timeout_s=1)
    (spool,) = tmp_path.glob("*/spool.jsonl")
    lines = spool.read_bytes().splitlines(keepends=True)
    torn = lines[4][: len(lines[4]) // 2] + b"\n"  # a write cut short, then more records
    spool.write_bytes(b"".join([*lines[:4], torn, b"\x00\xff junk\n", *lines[5:]]))
    messages: list[str] = []
    second = DecisionLog(bootstrap, tmp_path, log=messages.append)
    _wait(lambda: second.counts["delivered"] == 9, what="the records around the torn line")
    second.close()
    got = {r["transaction_id"] for r in read_all(bootstrap)}
    assert got == {f"torn-{i}" for i in range(10)} - {"torn-4"}
    assert second.counts["quarantined"] == 2
    quarantined = [
        json.loads(line) for q in (tmp_path / QUARANTINE).glob("*.jsonl") for line in q.open()
    ]
    assert sorted(q["line"] for q in quarantined) == [5, 6]
    assert all("spool.jsonl" in q["source"] for q in quarantined)
    assert sum("set aside" in m for m in messages) == 2


def test_a_stopping_writer_hands_its_spool_to_the_broker(broker, tmp_path) -> None:
    service, bootstrap = broker
    log = DecisionLog(bootstrap, tmp_path, message_timeout_ms=1000, log=lambda _m: None)
    log.append(_records(5, "warm"))
    _wait(lambda: log.counts["delivered"] == 5)
    log.replay_every_s = 3600  # only the shutdown's drain may send them
    service.pause()
    try:
        log.append(_records(100, "stopping"))
        _wait(lambda: log.counts["spooled"] >= 100, timeout_s=20)
    finally:
        service.resume()
    log.close(drain_s=20)
    assert waiting(tmp_path) == 0, "the spool was left on disk with the broker back"
    got = {r["transaction_id"] for r in read_all(bootstrap)}
    assert {f"stopping-{i}" for i in range(100)} <= got


def test_a_writer_stopping_with_the_broker_away_leaves_its_spool_for_the_next(
    broker, tmp_path
) -> None:
    _service, bootstrap = broker
    nowhere = f"127.0.0.1:{free_port()}"
    first = DecisionLog(nowhere, tmp_path, message_timeout_ms=300, log=lambda _m: None)
    first.append(_records(30, "left"))
    _wait(lambda: first.counts["spooled"] == 30)
    first.close(timeout_s=1, drain_s=2)
    assert waiting(tmp_path) == 30
    second = DecisionLog(bootstrap, tmp_path, log=lambda _m: None)
    _wait(lambda: second.counts["delivered"] == 30)
    second.close()
    assert {r["transaction_id"] for r in read_all(bootstrap)} >= {f"left-{i}" for i in range(30)}


def test_files_of_the_pid_named_layout_are_adopted(broker, tmp_path) -> None:
    """A folder written by the version before writer folders (an upgrade): its loose spool
    and the journal of a pid no longer running are replayed."""
    _service, bootstrap = broker
    (tmp_path / "journal").mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lines = [json.dumps(r).encode() + b"\n" for r in _records(6, "legacy")]
    (tmp_path / "journal" / f"{dead.pid}-1.jsonl").write_bytes(b"".join(lines[:3]))
    (tmp_path / "spool-fraud_scoring_0_0.jsonl").write_bytes(b"".join(lines[3:]))
    log = DecisionLog(bootstrap, tmp_path, log=lambda _m: None)
    assert log.counts["recovered"] == 6
    _wait(lambda: log.counts["delivered"] == 6)
    log.close()
    assert {r["transaction_id"] for r in read_all(bootstrap)} == {f"legacy-{i}" for i in range(6)}


def test_spool_is_bounded_and_drops_are_counted(tmp_path) -> None:
    messages = []
    log = DecisionLog(
        f"127.0.0.1:{free_port()}",
        tmp_path,
        message_timeout_ms=300,
        spool_max_bytes=20_000,
        log=messages.append,
    )
    log.append(_records(400, "full"))
    _wait(lambda: log.counts["spooled"] + log.counts["dropped"] == 400)
    assert log.spool_path.stat().st_size <= 20_000
    log.close(timeout_s=1)
    assert log.counts["dropped"] > 0 and log.counts["spooled"] > 0
    assert any("spool" in m and "dropped" in m for m in messages)
