"""The decision log against a real Kafka-protocol broker: delivered, spooled while the broker
is away, replayed when it is back (by the same or a later instance), bounded."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from client.local.services import free_port, kafka_broker
from feature_repo.stream import ensure_topic
from python_backend.fraud.decision_log import DecisionLog, read_all, record


def _records(n: int, prefix: str) -> list[dict]:
    return [
        record(f"{prefix}-{i}", "APPROVE", 0.1, "primary", [], f"{prefix}-{i}#1") for i in range(n)
    ]


def _wait(predicate, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("timed out")
        time.sleep(0.1)


@pytest.fixture
def broker():
    with kafka_broker() as service:
        bootstrap = f"127.0.0.1:{service.port}"
        ensure_topic(bootstrap, "decisions", partitions=2)
        yield service, bootstrap


def test_every_decision_reaches_the_topic_keyed_by_transaction(broker, tmp_path) -> None:
    _service, bootstrap = broker
    log = DecisionLog(bootstrap, tmp_path / "spool.jsonl", log=lambda _m: None)
    sent = _records(200, "a")
    log.append(sent)
    _wait(lambda: log.counts["delivered"] == 200)
    log.close()
    got = read_all(bootstrap)
    assert sorted(r["decision_id"] for r in got) == sorted(r["decision_id"] for r in sent)
    assert log.counts["spooled"] == 0


def test_broker_away_spools_then_replays_without_loss(broker, tmp_path) -> None:
    service, bootstrap = broker
    log = DecisionLog(
        bootstrap, tmp_path / "spool.jsonl", message_timeout_ms=1000, log=lambda _m: None
    )
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
    spool = tmp_path / "spool.jsonl"
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens: every record is spooled
    first = DecisionLog(nowhere, spool, message_timeout_ms=500, log=lambda _m: None)
    left = _records(50, "left")
    first.append(left)
    _wait(lambda: first.counts["spooled"] == 50)
    first.close(timeout_s=1)
    second = DecisionLog(bootstrap, spool, log=lambda _m: None)
    _wait(lambda: second.counts["delivered"] == 50)
    second.close()
    assert not list(tmp_path.glob("spool.jsonl*"))
    assert {r["decision_id"] for r in read_all(bootstrap)} == {r["decision_id"] for r in left}


#: A process that appends decisions, says so, and waits to be killed: what a BLS instance
#: killed with SIGKILL right after answering leaves behind.
_KILLED = """
import sys, time
from pathlib import Path
from python_backend.fraud.decision_log import DecisionLog, record
log = DecisionLog(sys.argv[1], Path(sys.argv[2]), log=lambda _m: None)
log.append(
    record(f"killed-{i}", "APPROVE", 0.1, "primary", [], f"killed-{i}#1") for i in range(300)
)
print("appended", flush=True)
time.sleep(60)
"""


def test_decisions_of_a_process_killed_minus_9_are_replayed_by_the_next(broker, tmp_path) -> None:
    import signal
    import subprocess
    import sys

    _service, bootstrap = broker
    spool = tmp_path / "spool.jsonl"
    # A broker address that never answers: the records stay in the producer's memory, as
    # they do for its linger.ms on a live broker when the kill comes.
    nowhere = f"127.0.0.1:{free_port()}"
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED, nowhere, str(spool)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "appended"
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    assert list((tmp_path / "journal").glob(f"{child.pid}-*.jsonl")), "nothing journaled"
    second = DecisionLog(bootstrap, spool, log=lambda _m: None)
    assert second.counts["recovered"] == 300
    _wait(lambda: second.counts["delivered"] == 300)
    second.close()
    got = {r["transaction_id"] for r in read_all(bootstrap)}
    assert got == {f"killed-{i}" for i in range(300)}, "a decision of the killed process was lost"
    assert not list((tmp_path / "journal").glob("*.jsonl")), "journal segments left behind"


def test_spool_is_bounded_and_drops_are_counted(tmp_path) -> None:
    messages = []
    log = DecisionLog(
        f"127.0.0.1:{free_port()}",
        tmp_path / "spool.jsonl",
        message_timeout_ms=300,
        spool_max_bytes=20_000,
        log=messages.append,
    )
    log.append(_records(400, "full"))
    _wait(lambda: log.counts["spooled"] + log.counts["dropped"] == 400)
    log.close(timeout_s=1)
    assert (tmp_path / "spool.jsonl").stat().st_size <= 20_000
    assert log.counts["dropped"] > 0 and log.counts["spooled"] > 0
    assert any("spool" in m and "dropped" in m for m in messages)
