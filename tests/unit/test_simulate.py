"""The transaction simulator: seeded, labelled, every fraud scenario present."""

from __future__ import annotations

import pandas as pd
import pytest

from build_engines.simulate import SCENARIOS, SimulationConfig, describe, simulate


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


def test_the_world_is_open_and_the_held_out_days_show_it() -> None:
    """Merchants onboard and close, cards are issued, replaced and go dormant, fraud uses
    them too, and the test days of the split hold every open-world case."""
    from build_engines.simulate import NEVER
    from build_engines.slices import slice_masks
    from build_engines.split import split_days

    data = simulate(SimulationConfig.scale("small"))
    tx, terminals, cards = data.transactions, data.terminals, data.cards
    world = describe(data)["open_world"]
    assert min(world.values()) > 0, world
    # Nothing transacts before it exists or after it closed.
    t = terminals.set_index("terminal_id").loc[tx["terminal_id"]]
    assert (tx["day"].to_numpy() >= t["opened_day"].to_numpy()).all()
    assert (tx["day"].to_numpy() < t["closed_day"].to_numpy()).all()
    c = cards.set_index("card_id").loc[tx["card_id"]]
    assert (tx["day"].to_numpy() >= c["issued_day"].to_numpy()).all()
    # A dormant card's only purchases while dormant are a fraudster's.
    asleep = (tx["day"].to_numpy() >= c["dormant_from"].to_numpy()) & (
        tx["day"].to_numpy() < c["dormant_until"].to_numpy()
    )
    assert (tx.loc[asleep, "is_fraud"] == 1).all() and asleep.any()
    # Fraudulent merchants sell nothing genuine; genuine new merchants get genuine customers.
    fraudulent = terminals.loc[terminals["fraudulent"], "terminal_id"]
    assert (tx.loc[tx["terminal_id"].isin(fraudulent), "fraud_scenario"] == 5).all()
    onboarded = terminals.loc[(terminals["opened_day"] >= 0) & ~terminals["fraudulent"]]
    assert tx.loc[tx["terminal_id"].isin(onboarded["terminal_id"]), "is_fraud"].mean() < 0.05
    assert (cards["closed_day"] < NEVER).any()
    lo, hi = split_days(data.config.n_days)["test"]
    test = tx[(tx["day"] >= lo) & (tx["day"] < hi)]
    masks = slice_masks(tx, test)
    for name in ("new_terminal", "new_card", "returning_card", "both_new"):
        assert masks[name].sum() > 0, name
    for code in (5, 6, 7):
        assert (test["fraud_scenario"] == code).any(), SCENARIOS[code]
