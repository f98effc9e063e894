"""The fraud service on a real Triton server: contract, decisions, and the model ladder."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from client.scoring import build_inputs
from python_backend.contract import DECISIONS, SCORING, STAGES
from python_backend.features import MS_PER_DAY


@pytest.fixture(scope="module")
def last_day(serving) -> pd.DataFrame:
    tx = pd.read_parquet(serving.data_dir / "transactions.parquet")
    start = int(tx["ts_ms"].max()) // MS_PER_DAY * MS_PER_DAY
    return tx[tx["ts_ms"] >= start]


def _rows(frame: pd.DataFrame) -> list[dict]:
    return frame[["transaction_id", "card_id", "terminal_id", "amount", "ts_ms"]].to_dict("records")


def test_contract_one_decision_per_transaction(serving, last_day) -> None:
    rows = _rows(last_day.head(8))
    decisions = serving.client.score(rows)
    assert [d.transaction_id for d in decisions] == [r["transaction_id"] for r in rows]
    for d in decisions:
        assert 0.0 <= d.score <= 1.0
        assert d.decision in DECISIONS
        assert d.path == "primary"
        assert isinstance(d.reasons, list)
        assert list(d.stage_us) == list(STAGES)
        assert 0 < d.stage_us["total"] < 95_000


def _scores(serving, frame: pd.DataFrame) -> list[float]:
    rows = _rows(frame)
    return [
        d.score for i in range(0, len(rows), 64) for d in serving.client.score(rows[i : i + 64])
    ]


def test_fraud_scores_higher_than_normal_traffic(serving) -> None:
    """The held-out days of the tiny build: frauds of every scenario against a sample of
    genuine transactions, through the whole service."""
    tx = pd.read_parquet(serving.data_dir / "transactions.parquet")
    start = int(tx["ts_ms"].max()) // MS_PER_DAY * MS_PER_DAY
    recent = tx[tx["ts_ms"] >= start - 9 * MS_PER_DAY]
    frauds = recent[recent["is_fraud"] == 1].head(60)
    normal = recent[recent["is_fraud"] == 0].sample(300, random_state=0)
    assert len(frauds) >= 10
    assert np.mean(_scores(serving, frauds)) > np.mean(_scores(serving, normal)) + 0.1


def _unload(serving, *models):
    admin = grpcclient.InferenceServerClient(serving.server.grpc_url)
    for model in models:
        admin.unload_model(model)
    return admin


def test_primary_unloaded_falls_back_then_recovers(serving, last_day) -> None:
    rows = _rows(last_day.head(4))
    admin = _unload(serving, "fraud_primary")
    try:
        decisions = serving.client.score(rows)
        assert {d.path for d in decisions} == {"fallback"}
        assert all("PRIMARY_ERROR" in d.reasons for d in decisions)
    finally:
        admin.load_model("fraud_primary")
    # The breaker may hold the primary off for its cool-down; it comes back after it.
    assert _eventually_path(serving, rows, "primary")


def test_primary_and_fallback_down_rules_decide(serving, last_day) -> None:
    rows = _rows(last_day.head(4))
    admin = _unload(serving, "fraud_primary", "fraud_fallback")
    try:
        decisions = serving.client.score(rows)
        assert {d.path for d in decisions} == {"rules"}
        assert all(d.decision in DECISIONS for d in decisions)
        assert all(
            "FALLBACK_ERROR" in d.reasons or "FALLBACK_CIRCUIT_OPEN" in d.reasons for d in decisions
        )
    finally:
        admin.load_model("fraud_primary")
        admin.load_model("fraud_fallback")
    assert _eventually_path(serving, rows, "primary")


def _eventually_path(serving, rows, path, timeout_s=15.0) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if {d.path for d in serving.client.score(rows)} == {path}:
            return True
        time.sleep(0.5)
    return False


def test_unknown_card_and_terminal_get_defaults_not_errors(serving, last_day) -> None:
    row = _rows(last_day.head(1))[0] | {"card_id": 987_654_321, "terminal_id": 987_654_321}
    (decision,) = serving.client.score([row])
    assert decision.decision in DECISIONS
    assert {"UNKNOWN_CARD", "UNKNOWN_TERMINAL"} <= set(decision.reasons)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"amount": float("nan")}, "AMOUNT"),
        ({"amount": -5.0}, "AMOUNT"),
        ({"ts_ms": 10}, "TIMESTAMP_MS"),
        ({"card_id": 0}, "CARD_ID"),
    ],
)
def test_bad_values_get_a_clear_error_naming_the_field(serving, last_day, change, message):
    row = _rows(last_day.head(1))[0] | change
    with pytest.raises(InferenceServerException, match=message):
        serving.client.score([row])


def test_missing_input_is_named(serving, last_day) -> None:
    inputs = [i for i in build_inputs(_rows(last_day.head(1))) if i.name() != "AMOUNT"]
    with pytest.raises(InferenceServerException, match="AMOUNT"):
        serving.client.client.infer(SCORING.name, inputs)
