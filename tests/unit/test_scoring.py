"""Request validation and decisions, without a server."""

from __future__ import annotations

import json

import numpy as np
import pytest

from python_backend.fraud.features import MS_PER_DAY, MS_PER_HOUR
from python_backend.fraud.online import empty_features
from python_backend.fraud.scoring import (
    DecisionPolicy,
    InvalidRequest,
    StreamHeartbeat,
    Transactions,
    reasons_json,
    unavailable_views,
    validate,
)

NOW = 1_780_000_000_000


def _arrays(n=2, **overrides):
    arrays = {
        "TRANSACTION_ID": np.array([[f"t{i}".encode()] for i in range(n)], dtype=np.object_),
        "CARD_ID": np.arange(1, n + 1, dtype=np.int64).reshape(-1, 1),
        "TERMINAL_ID": np.arange(1, n + 1, dtype=np.int64).reshape(-1, 1),
        "AMOUNT": np.full((n, 1), 12.5, dtype=np.float32),
        "TIMESTAMP_MS": np.full((n, 1), NOW - 1000, dtype=np.int64),
    }
    arrays.update(overrides)
    return arrays


def test_valid_request_has_no_row_errors() -> None:
    tx, errors = validate(_arrays(), now_ms=NOW)
    assert errors == [None, None] and tx.transaction_id == ["t0", "t1"]


@pytest.mark.parametrize(
    ("name", "values", "message"),
    [
        ("AMOUNT", [[1.0], [np.inf]], "AMOUNT[1]: must be a finite number"),
        ("AMOUNT", [[np.nan], [1.0]], "AMOUNT[0]"),
        ("TIMESTAMP_MS", [[NOW], [NOW + 3 * 86_400_000]], "TIMESTAMP_MS[1]"),
        ("CARD_ID", [[-3], [1]], "CARD_ID[0]: must be a positive id"),
        ("TRANSACTION_ID", [[b"ok"], [b"\xff\xfe"]], "TRANSACTION_ID[1]: must be valid UTF-8"),
        ("TRANSACTION_ID", [[b""], [b"ok"]], "TRANSACTION_ID[0]: must be 1..128 bytes"),
    ],
)
def test_bad_values_flag_their_row_only(name, values, message) -> None:
    dtype = _arrays()[name].dtype
    _tx, errors = validate(_arrays(**{name: np.array(values, dtype=dtype)}), now_ms=NOW)
    bad = [e for e in errors if e]
    assert len(bad) == 1 and bad[0].startswith(message)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"AMOUNT": None}, "AMOUNT: missing input"),
        ({"AMOUNT": np.ones((2, 1), dtype=np.float64)}, "AMOUNT: must be FLOAT32"),
        ({"CARD_ID": np.ones((2, 2), dtype=np.int64)}, "CARD_ID: shape must be"),
        ({"CARD_ID": np.ones((3, 1), dtype=np.int64)}, "CARD_ID: 3 rows"),
    ],
)
def test_malformed_requests_are_refused_whole(overrides, message) -> None:
    with pytest.raises(InvalidRequest, match=message.replace("(", r"\(")):
        validate(_arrays(**overrides), now_ms=NOW)


def test_thresholds_decide_per_path(tmp_path) -> None:
    path = tmp_path / "decision_policy.json"
    path.write_text(
        json.dumps(
            {
                "thresholds": {
                    p: {"review": 0.5, "decline": 0.9} for p in ("primary", "fallback", "rules")
                }
            }
        )
    )
    policy = DecisionPolicy.load(path)
    assert policy.decide(np.array([0.1, 0.5, 0.95]), "primary") == ["APPROVE", "REVIEW", "DECLINE"]


def test_reasons_are_a_json_list_without_duplicates() -> None:
    assert json.loads(reasons_json(["A", "B", "A"])) == ["A", "B"]


def test_a_daily_row_past_its_freshness_is_stale_and_each_row_says_so() -> None:
    tx = Transactions(
        ["a", "b", "c"],
        np.array([1, 2, 3]),
        np.array([1, 2, 3]),
        np.ones(3, dtype=np.float32),
        np.full(3, 10 * MS_PER_DAY),
    )
    features = empty_features(3)
    midnight = 10 * MS_PER_DAY
    # a: today's snapshot; b: a materialization missed two days ago; c: never seen (0).
    features.event_ms["card_daily"][:] = [midnight, midnight - 2 * MS_PER_DAY, 0]
    features.event_ms["terminal_daily"][:] = midnight - MS_PER_HOUR
    reasons: list[list[str]] = [[], [], []]
    unavailable = unavailable_views(tx, features, True, reasons)
    assert list(unavailable) == ["card_daily"]
    assert unavailable["card_daily"].tolist() == [False, True, False]
    assert reasons == [[], ["FEATURES_STALE:card_daily"], []]
    # The store did not answer: every view is unavailable, and no row is called stale.
    nothing = unavailable_views(tx, features, False, [[], [], []])
    assert set(nothing) == {"card_daily", "terminal_daily", "card_recent"}
    assert all(rows.all() for rows in nothing.values())
    # The stream stopped: every row's recent buffer is stale.
    reasons = [[], [], []]
    stream = unavailable_views(tx, features, True, reasons, stream_stale=True)
    assert stream["card_recent"].all()
    assert all("FEATURES_STALE:card_recent" in r for r in reasons)


class _HeartbeatStore:
    """The store's answer for the heartbeat row: its event time, 0 for none."""

    def __init__(self) -> None:
        self.beat_ms = 0
        self.reads = 0

    def read(self, card_ids, terminal_ids, with_tx_ids=False):
        self.reads += 1
        features = empty_features(len(card_ids))
        features.event_ms["card_recent"][:] = self.beat_ms
        return features


def test_stream_heartbeat_judges_silence_not_absence() -> None:
    store, now = _HeartbeatStore(), [1_000.0]
    heartbeat = StreamHeartbeat(store, max_silence_ms=60_000, clock=lambda: now[0])
    assert not heartbeat.stale()  # no consumer ever ran: a materialized snapshot
    store.beat_ms = int((now[0] - 10) * 1000)
    now[0] += 1
    assert not heartbeat.stale()
    now[0] += 120  # the consumer has been silent for 130 s
    assert heartbeat.stale()
    store.beat_ms = int(now[0] * 1000)  # it is back...
    assert heartbeat.stale()  # ...seen at the next check, not on every request
    reads = store.reads
    now[0] += 1
    assert not heartbeat.stale() and store.reads == reads + 1
