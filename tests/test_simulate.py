"""The transaction simulator: seeded, labelled, every fraud scenario present."""

from __future__ import annotations

import pandas as pd
import pytest

from build_engines.simulate import SCENARIOS, SimulationConfig, simulate


def test_same_seed_gives_identical_transactions() -> None:
    a = simulate(SimulationConfig.scale("tiny", seed=3)).transactions
    b = simulate(SimulationConfig.scale("tiny", seed=3)).transactions
    pd.testing.assert_frame_equal(a, b)
    c = simulate(SimulationConfig.scale("tiny", seed=4)).transactions
    assert not a["amount"].equals(c["amount"])


def test_small_scale_holds_every_fraud_scenario() -> None:
    data = simulate(SimulationConfig.scale("small"))
    tx = data.transactions
    counts = tx["fraud_scenario"].value_counts()
    for code, name in enumerate(SCENARIOS):
        assert counts.get(code, 0) > 0, f"no {name} transactions"
    assert (tx["is_fraud"] == (tx["fraud_scenario"] > 0)).all()
    assert 0.002 < tx["is_fraud"].mean() < 0.05
    assert tx["ts_ms"].is_monotonic_increasing
    assert tx["transaction_id"].is_unique
    assert (tx["amount"] > 0).all()


def test_card_testing_is_tiny_amounts_then_large_within_minutes() -> None:
    tx = simulate(SimulationConfig.scale("small")).transactions
    tests = tx[tx["fraud_scenario"] == 4]
    card = tests["card_id"].iloc[0]
    burst = tests[tests["card_id"] == card].head(12)
    first_large = burst.index[burst["amount"] >= 150][0]
    small = burst.loc[: first_large - 1]
    small = small[small["amount"] <= 2.0]
    assert len(small) >= 3
    assert (burst.loc[first_large, "ts_ms"] - small["ts_ms"].iloc[0]) < 60 * 60 * 1000


def test_unknown_scale_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown scale 'huge'"):
        SimulationConfig.scale("huge")
