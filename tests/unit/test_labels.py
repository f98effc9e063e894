"""Late labels and the point-in-time label join (pure logic: no server).

The join must never use a label reported after its as-of time, nor a feature other than the
one served; a transaction younger than the maturity window is neither fraud nor genuine; the
declines are handled by the policy named."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from build_engines.label_join import JoinPolicy, join
from build_engines.labels import (
    CARDHOLDER,
    CHARGEBACK,
    DECLINE_CONFIRMATION,
    VERDICT,
    LabelModel,
    simulate_labels,
)
from python_backend.events import EventError, LabelEvent, decode_label
from python_backend.fraud import served
from python_backend.fraud.contract import PRIMARY
from python_backend.fraud.features import MS_PER_DAY, ModelInputs

T0 = 1_767_571_200_000  # the simulation's first day


def _transactions(n: int, fraud_rate: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(n)],
            "ts_ms": T0 + rng.integers(0, 60 * MS_PER_DAY, n),
            "is_fraud": (rng.random(n) < fraud_rate).astype(np.int8),
        }
    )


def test_labels_follow_the_world_s_rules() -> None:
    tx = _transactions(40_000, 0.2)
    rng = np.random.default_rng(1)
    declined = rng.random(len(tx)) < 0.1
    reviewed = rng.random(len(tx)) < 0.05
    labels = simulate_labels(tx, declined, reviewed, seed=3)
    by_id = tx.set_index("transaction_id")
    truth = by_id.loc[labels["transaction_id"], "is_fraud"].to_numpy()
    # Every label tells the truth, after the transaction, in order of report.
    assert (labels["is_fraud"].to_numpy() == truth).all()
    assert (labels["reported_ms"] > labels["ts_ms"]).all()
    assert labels["reported_ms"].is_monotonic_increasing
    was_declined = pd.Series(declined, index=tx["transaction_id"])
    kinds = labels.groupby("kind")["transaction_id"]
    # A declined transaction never gets a chargeback, nor a card holder's report.
    for kind in (CHARGEBACK, CARDHOLDER):
        assert not was_declined.loc[kinds.get_group(kind)].any(), kind
    # Genuine transactions are labelled only by a confirmation or a verdict.
    genuine_kinds = set(labels.loc[labels["is_fraud"] == 0, "kind"])
    assert genuine_kinds <= {DECLINE_CONFIRMATION, VERDICT}
    # About one decline in ten is confirmed; every reviewed approval gets a verdict.
    confirmed = kinds.get_group(DECLINE_CONFIRMATION).nunique() / declined.sum()
    assert 0.08 < confirmed < 0.12
    assert kinds.get_group(VERDICT).nunique() == (reviewed & ~declined).sum()
    # Some approved frauds are never reported; some chargebacks take over 60 days.
    model = LabelModel()
    approved_fraud = set(tx.loc[(tx["is_fraud"] == 1) & ~declined, "transaction_id"])
    reported = set(labels.loc[labels["kind"].isin([CARDHOLDER, CHARGEBACK]), "transaction_id"])
    share = len(reported & approved_fraud) / len(approved_fraud)
    assert abs(share - model.reported_share()) < 0.02
    chargebacks = labels[labels["kind"] == CHARGEBACK]
    late = (chargebacks["reported_ms"] - chargebacks["ts_ms"]) > 60 * MS_PER_DAY
    assert 0 < late.mean() < 0.1


def test_labels_are_repeatable_and_a_mask_leaves_other_draws_alone() -> None:
    tx = _transactions(5_000, 0.1)
    none = np.zeros(len(tx), dtype=bool)
    first = simulate_labels(tx, none, none, seed=5)
    assert first.equals(simulate_labels(tx, none, none, seed=5))
    reviewed = none.copy()
    reviewed[:100] = True
    with_verdicts = simulate_labels(tx, none, reviewed, seed=5)
    others = with_verdicts[with_verdicts["kind"] != VERDICT].reset_index(drop=True)
    assert others.equals(first)


def test_label_events_round_trip_and_bad_ones_name_the_field() -> None:
    event = LabelEvent("tx-1", CHARGEBACK, 1, T0, T0 + 30 * MS_PER_DAY)
    assert decode_label(event.encode()) == event
    for field, value, words in [
        ("kind", "rumour", "must be one of"),
        ("is_fraud", 2, "must be 0 or 1"),
        ("is_fraud", True, "expected int"),
        ("transaction_id", "", "1..128 bytes"),
        ("reported_ms", T0 - 1, "must not be before ts_ms"),
    ]:
        raw = json.loads(event.encode(binary=False))
        raw[field] = value
        with pytest.raises(EventError, match=f"{field}: .*{words}"):
            decode_label(json.dumps(raw).encode())


def _inputs(n: int, value: float) -> ModelInputs:
    dims = {s.name: tuple(s.dims) for s in PRIMARY.inputs}
    return ModelInputs(
        np.full((n, *dims["TABULAR"]), value, dtype=np.float32),
        np.full((n, *dims["SEQUENCE"]), value, dtype=np.float32),
        np.full((n, *dims["CATEGORICAL"]), int(value), dtype=np.int64),
        {},
    )


def _records(ts_days: list[float], decisions: list[str], value: float = 1.0) -> pd.DataFrame:
    n = len(ts_days)
    ts = [T0 + int(d * MS_PER_DAY) for d in ts_days]
    return pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(n)],
            "decision_id": [f"d{i}" for i in range(n)],
            "decision": decisions,
            "card_id": np.arange(1, n + 1),
            "ts_ms": ts,
            "decided_at_ms": ts,
            "inputs": served.logged(_inputs(n, value)),
        }
    )


def _label(tx: str, ts_day: float, reported_day: float, is_fraud: int = 1, kind=CHARGEBACK):
    return {
        "transaction_id": tx,
        "kind": kind,
        "is_fraud": is_fraud,
        "ts_ms": T0 + int(ts_day * MS_PER_DAY),
        "reported_ms": T0 + int(reported_day * MS_PER_DAY),
    }


def test_a_label_reported_after_the_as_of_time_is_never_used() -> None:
    records = _records([0, 0, 1], ["APPROVE"] * 3)
    labels = pd.DataFrame(
        [
            _label("t0", 0, 10),  # known at day 40
            _label("t1", 0, 40.0001),  # reported a moment after day 40
            _label("t2", 1, 35),
        ]
    )
    as_of = T0 + 40 * MS_PER_DAY
    joined = join(records, labels, as_of, JoinPolicy(maturity_days=30))
    y = dict(zip(joined.transaction_id, joined.y, strict=True))
    assert y == {"t0": 1, "t1": 0, "t2": 1}
    assert joined.facts["labels_reported_after_as_of"] == 1
    # A day later it is known.
    later = join(records, labels, as_of + MS_PER_DAY, JoinPolicy(maturity_days=30))
    assert dict(zip(later.transaction_id, later.y, strict=True))["t1"] == 1


def test_young_transactions_are_neither_fraud_nor_genuine() -> None:
    records = _records([0, 20, 25], ["APPROVE"] * 3)
    labels = pd.DataFrame([_label("t2", 25, 26, kind=CARDHOLDER)])
    joined = join(records, labels, T0 + 40 * MS_PER_DAY, JoinPolicy(maturity_days=30))
    assert list(joined.transaction_id) == ["t0"]
    assert joined.facts["young"] == 2
    assert joined.facts["young_with_fraud_label"] == 1
    # Decisions after the as-of time do not exist yet.
    assert join(records, labels, T0 + 10 * MS_PER_DAY, JoinPolicy(0)).facts["served"] == 1


def test_the_features_are_the_served_ones_never_recomputed() -> None:
    served_first = _records([0, 1], ["APPROVE", "APPROVE"], value=1.0)
    # The same transactions decided again later (a retry) with what the store held then.
    again = _records([0, 1], ["APPROVE", "APPROVE"], value=7.0)
    again["decided_at_ms"] += 5_000
    again["decision_id"] = ["e0", "e1"]
    records = pd.concat([again, served_first], ignore_index=True)
    joined = join(records, pd.DataFrame([_label("t0", 0, 2)]), T0 + 40 * MS_PER_DAY)
    expected = _inputs(2, 1.0)
    np.testing.assert_array_equal(joined.inputs.tabular, expected.tabular)
    np.testing.assert_array_equal(joined.inputs.sequence, expected.sequence)
    np.testing.assert_array_equal(joined.inputs.categorical, expected.categorical)


def test_records_without_served_inputs_are_refused_by_name() -> None:
    records = _records([0], ["APPROVE"]).drop(columns="inputs")
    with pytest.raises(ValueError, match="DECISION_LOG_INPUTS"):
        join(records, pd.DataFrame([_label("t0", 0, 1)]), T0 + 40 * MS_PER_DAY)


@pytest.mark.parametrize("policy", ["genuine", "dropped", "weighted", "imputed"])
def test_declines_are_handled_by_the_policy_named(policy: str) -> None:
    n = 20
    records = _records([0] * n, ["DECLINE"] * 10 + ["APPROVE"] * 10)
    # Two of the ten declines confirmed: one fraud, one genuine.
    labels = pd.DataFrame(
        [
            _label("t0", 0, 1, 1, DECLINE_CONFIRMATION),
            _label("t1", 0, 1, 0, DECLINE_CONFIRMATION),
        ]
    )
    joined = join(records, labels, T0 + 40 * MS_PER_DAY, JoinPolicy(30, policy))
    rows = dict(zip(joined.transaction_id, zip(joined.y, joined.weight, strict=True), strict=True))
    assert rows["t0"][0] == 1 and rows["t1"][0] == 0
    unlabelled_declines = [f"t{i}" for i in range(2, 10)]
    if policy == "genuine":
        assert all(rows[t] == (0, 1.0) for t in unlabelled_declines)
        assert len(joined) == n
    else:
        assert not set(unlabelled_declines) & set(rows)
        assert len(joined) == 12
        confirmed_weight = 5.0 if policy == "weighted" else 1.0  # 2 of 10 confirmed
        assert rows["t0"][1] == rows["t1"][1] == confirmed_weight
    assert joined.facts["declined_confirmed_share"] == 0.2
    if policy == "imputed":  # two confirmations are too few to estimate a share from
        assert "unlabelled declines dropped" in joined.facts["imputed_fallback"]
    with pytest.raises(ValueError, match="declined: 'ignore'"):
        JoinPolicy(declined="ignore")


def test_unlabelled_declines_are_imputed_from_the_confirmed_ones_fraud_share() -> None:
    n = 200
    records = _records([0] * n, ["DECLINE"] * 100 + ["APPROVE"] * 100)
    # 40 of the 100 declines confirmed, 30 of them fraud: the other 60 are 75% fraud.
    labels = pd.DataFrame(
        [_label(f"t{i}", 0, 1, int(i < 30), DECLINE_CONFIRMATION) for i in range(40)]
    )
    joined = join(records, labels, T0 + 40 * MS_PER_DAY, JoinPolicy(30, "imputed"))
    assert joined.facts["declined_fraud_share_estimate"] == 0.75
    assert joined.facts["imputed_declines"] == 60
    imputed = joined.transaction_id[joined.imputed]
    assert sorted(set(imputed)) == sorted(f"t{i}" for i in range(40, 100))
    assert len(imputed) == 120  # each twice
    as_fraud = joined.imputed & (joined.y == 1)
    assert np.allclose(joined.weight[as_fraud], 0.75)
    assert np.allclose(joined.weight[joined.imputed & (joined.y == 0)], 0.25)
    assert np.all(joined.weight[~joined.imputed] == 1.0)
    observed = joined.observed()
    assert len(observed) == 140 and not observed.imputed.any()


def test_cold_start_inputs_replace_only_the_rows_they_name_and_only_for_training() -> None:
    """The retrain's entity dropout: the rows ``cold_start`` names get its inputs (as if
    their card or terminal were never seen) in the training tensors; the served inputs the
    join holds are left as served (the drift reference and the gate read those)."""
    from build_engines.retrain import with_cold_start

    records = _records([0, 0, 1, 2], ["APPROVE"] * 4, value=1.0)
    labels = pd.DataFrame([_label(f"t{i}", 0, 5, is_fraud=0) for i in range(4)])
    train = join(records, labels, T0 + 40 * MS_PER_DAY, JoinPolicy(maturity_days=30))
    cold = (np.array(["t2", "t9", "t0"]), _inputs(3, 7.0))
    inputs, replaced = with_cold_start(train, cold)
    assert replaced == 2
    by_id = dict(zip(train.transaction_id, inputs.tabular[:, 0], strict=True))
    assert by_id == {"t0": 7.0, "t1": 1.0, "t2": 7.0, "t3": 1.0}
    assert (train.inputs.tabular == 1.0).all(), "the served inputs are untouched"
    assert with_cold_start(train, None) == (train.inputs, 0)
