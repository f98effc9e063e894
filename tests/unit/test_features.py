"""Point-in-time features: no leakage, one definition offline and at scoring time."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from build_engines.simulate import SimulationConfig, simulate
from python_backend.fraud.features import (
    LABEL_DELAY_DAYS,
    MODEL_STORED,
    MS_PER_DAY,
    MS_PER_HOUR,
    MS_PER_MINUTE,
    NOT_SEEN,
    RECENT_BUFFER,
    RECENT_MAX_AGE_MS,
    SEEN_FOR_CAP_DAYS,
    SEQUENCE_LENGTH,
    SINCE_LAST_CAP_DAYS,
    TABULAR_NAMES,
    default_stored,
    derive_recent,
)
from python_backend.fraud.offline import FeatureTables, model_inputs, stored_features


@pytest.fixture(scope="module")
def data():
    return simulate(SimulationConfig.scale("tiny", seed=11))


def _features_for(events: pd.DataFrame, terminals: pd.DataFrame, queries: pd.DataFrame):
    tables = FeatureTables.build(events, terminals)
    return stored_features(tables, events, queries)


def test_feature_at_t_uses_only_events_before_t(data) -> None:
    """Computing a transaction's features from the full log or from the log cut at its
    own timestamp gives the same values: nothing at or after ``t`` is read."""
    tx = data.transactions
    rng = np.random.default_rng(0)
    picked = tx.iloc[np.sort(rng.choice(np.arange(len(tx) // 2, len(tx)), 40, replace=False))]
    full = _features_for(tx, data.terminals, picked)
    for i, (_, row) in enumerate(picked.iterrows()):
        before = tx[tx["ts_ms"] < row["ts_ms"]]
        cut = _features_for(before, data.terminals, picked.iloc[[i]])
        for name, values in full.items():
            np.testing.assert_allclose(cut[name][0], values[i], rtol=1e-6, err_msg=name)


def test_terminal_risk_ignores_labels_inside_the_label_delay(data) -> None:
    """Flipping the labels of every transaction after ``day - LABEL_DELAY_DAYS`` does not
    change terminal risk on ``day``: those labels are not known yet."""
    tx = data.transactions
    day = 45
    queries = tx[tx["day"] == day]
    cutoff = tx["ts_ms"].min() // MS_PER_DAY * MS_PER_DAY + (day - LABEL_DELAY_DAYS) * MS_PER_DAY
    flipped = tx.copy()
    late = flipped["ts_ms"] >= cutoff
    flipped.loc[late, "is_fraud"] = 1 - flipped.loc[late, "is_fraud"]
    a = _features_for(tx, data.terminals, queries)
    b = _features_for(flipped, data.terminals, queries)
    for name in ("terminal_fraud_rate_7d", "terminal_fraud_rate_30d"):
        np.testing.assert_array_equal(a[name], b[name])
    # ...while flipping labels before the cut-off does change it: the check can fail.
    early = tx.copy()
    window = (early["ts_ms"] < cutoff) & (early["ts_ms"] >= cutoff - 7 * MS_PER_DAY)
    early.loc[window, "is_fraud"] = 1 - early.loc[window, "is_fraud"]
    c = _features_for(early, data.terminals, queries)
    assert not np.array_equal(a["terminal_fraud_rate_7d"], c["terminal_fraud_rate_7d"])


def test_unknown_card_and_terminal_get_the_declared_defaults(data) -> None:
    query = pd.DataFrame(
        {
            "card_id": [10**9],
            "terminal_id": [10**9],
            "ts_ms": [int(data.transactions["ts_ms"].iloc[-1])],
            "amount": [5.0],
        }
    )
    stored = _features_for(data.transactions, data.terminals, query)
    defaults = default_stored(1)
    for feature in MODEL_STORED:
        np.testing.assert_array_equal(
            stored[feature.name], defaults[feature.name], err_msg=feature.name
        )


def _brute_force_recent(ts, amounts, terminals, now, terminal):
    before = [
        (t, a, k)
        for t, a, k in zip(ts, amounts, terminals, strict=True)
        if 0 < t < now and now - t < RECENT_MAX_AGE_MS
    ]
    last = before[-SEQUENCE_LENGTH:]
    return {
        "card_tx_count_10m": sum(now - t <= 10 * MS_PER_MINUTE for t, _, _ in before),
        "card_tx_count_1h": sum(now - t <= MS_PER_HOUR for t, _, _ in before),
        "card_amount_sum_1h": sum(a for t, a, _ in before if now - t <= MS_PER_HOUR),
        "terminal_seen_recently": float(any(k == terminal for _, _, k in before)),
        "last_amounts": [np.log1p(a) for _, a, _ in last],
    }


def test_derive_recent_matches_a_row_by_row_definition() -> None:
    rng = np.random.default_rng(5)
    now = 100 * MS_PER_DAY
    batch = 64
    ages = rng.integers(-5 * MS_PER_MINUTE, 3 * MS_PER_HOUR, (batch, RECENT_BUFFER))
    ages[:, :3] += 29 * MS_PER_DAY + rng.integers(0, 2 * MS_PER_DAY, (batch, 3))  # near the TTL
    ts = np.sort(now - ages, axis=1)
    ts[:, : rng.integers(0, RECENT_BUFFER)] = 0  # padding for short histories
    amounts = rng.uniform(0.5, 300, ts.shape).astype(np.float32)
    terminals = rng.integers(1, 6, ts.shape)
    current_terminal = rng.integers(1, 6, batch)
    columns, sequence = derive_recent(ts, amounts, terminals, np.full(batch, now), current_terminal)
    for row in range(batch):
        expected = _brute_force_recent(
            ts[row], amounts[row], terminals[row], now, current_terminal[row]
        )
        for name in ("card_tx_count_10m", "card_tx_count_1h", "terminal_seen_recently"):
            assert columns[name][row] == expected[name], name
        assert columns["card_amount_sum_1h"][row] == pytest.approx(
            expected["card_amount_sum_1h"], rel=1e-5
        )
        n = len(expected["last_amounts"])
        assert sequence[row, :, 3].sum() == n
        np.testing.assert_allclose(
            sequence[row, SEQUENCE_LENGTH - n :, 0], expected["last_amounts"], rtol=1e-5
        )


def test_model_inputs_follow_the_declared_layout(data) -> None:
    tx = data.transactions
    queries = tx.iloc[-500:]
    inputs = model_inputs(FeatureTables.build(tx, data.terminals), tx, queries)
    assert inputs.tabular.shape == (500, len(TABULAR_NAMES))
    assert inputs.sequence.shape == (500, SEQUENCE_LENGTH, 4)
    assert np.isfinite(inputs.tabular).all()
    # log1p(amount) is the first tabular column; category ids stay inside the vocabulary,
    # 0 (unknown) exactly for terminals the store has no row for yet.
    np.testing.assert_allclose(inputs.tabular[:, 0], np.log1p(queries["amount"]), rtol=1e-6)
    known = inputs.columns["terminal_known"] == 1
    assert inputs.categorical[known, 0].min() >= 1
    assert (inputs.categorical[~known, 0] == 0).all()


def test_presence_and_age_say_what_the_store_does_not_know(data) -> None:
    """A card or terminal on its first day has no daily row: ``*_known`` is 0 and its age
    is the declared NOT_SEEN (never a number that also occurs in real data); from the next
    midnight on it is known, with the days since its first and last transaction."""
    tx = data.transactions
    inputs = model_inputs(FeatureTables.build(tx, data.terminals), tx, tx)
    cols = inputs.columns
    midnight = tx["ts_ms"].to_numpy() // MS_PER_DAY * MS_PER_DAY
    for entity, known in (("card_id", "card_known"), ("terminal_id", "terminal_known")):
        first = tx.groupby(entity)["ts_ms"].transform("min").to_numpy()
        np.testing.assert_array_equal(cols[known], (first < midnight).astype(float), known)
        age = cols[f"{entity.removesuffix('_id')}_days_since_first_tx"]
        assert (age[first >= midnight] == NOT_SEEN).all()
        expected = np.minimum((midnight - first) / MS_PER_DAY, SEEN_FOR_CAP_DAYS)
        np.testing.assert_allclose(age[first < midnight], expected[first < midnight], rtol=1e-6)
    # Days since the card's last transaction before today's midnight, row by row.
    rng = np.random.default_rng(1)
    for i in rng.choice(np.flatnonzero(cols["card_known"] == 1), 200, replace=False):
        row = tx.iloc[i]
        before = tx.loc[(tx["card_id"] == row["card_id"]) & (tx["ts_ms"] < midnight[i]), "ts_ms"]
        days = min((midnight[i] - before.max()) / MS_PER_DAY, SINCE_LAST_CAP_DAYS)
        assert cols["card_days_since_last_tx"][i] == pytest.approx(days, rel=1e-6)
    # The open world is in the data: new cards and terminals appear every few days.
    assert (cols["card_known"] == 0).sum() > 100 and (cols["terminal_known"] == 0).sum() > 100
    # A card without recent transactions says so instead of "30 days since the last one".
    np.testing.assert_array_equal(
        cols["card_has_recent"] == 0, inputs.sequence[:, :, 3].sum(axis=1) == 0
    )


def test_an_unavailable_view_is_decided_as_not_known_and_says_so(data) -> None:
    """Marking a view unavailable (stale at serving, dropped out in training) gives the
    models that view's defaults and ``<view>_available`` = 0, for those rows only."""
    tx = data.transactions
    queries = tx.iloc[-300:]
    tables = FeatureTables.build(tx, data.terminals)
    fresh = model_inputs(tables, tx, queries)
    rows = np.zeros(len(queries), dtype=bool)
    rows[::3] = True
    stale = model_inputs(tables, tx, queries, {"card_daily": rows, "card_recent": rows})
    cols, base = stale.columns, fresh.columns
    assert (cols["card_daily_available"][rows] == 0).all()
    assert (cols["card_daily_available"][~rows] == 1).all()
    assert (cols["card_recent_available"][rows] == 0).all()
    assert (cols["terminal_daily_available"] == 1).all()
    assert (cols["card_known"][rows] == 0).all() and (cols["card_tx_count_30d"][rows] == 0).all()
    assert (cols["card_has_recent"][rows] == 0).all()
    np.testing.assert_array_equal(stale.tabular[~rows], fresh.tabular[~rows])
    np.testing.assert_array_equal(cols["terminal_fraud_rate_7d"], base["terminal_fraud_rate_7d"])
    # The fresh rows really had something to lose: the check can fail.
    assert base["card_known"][rows].any()


def test_a_row_made_unknown_is_what_an_id_never_seen_gets(data) -> None:
    """Entity dropout (training's cold-start rows): a row whose terminal (card) is marked
    unknown gets exactly the model inputs of the same transaction at a terminal (from a
    card) the store has never seen, what the open world sends; its views stay available,
    and the other rows are untouched."""
    from python_backend.fraud.offline import entity_dropout

    tx = data.transactions
    queries = tx.iloc[-300:]
    tables = FeatureTables.build(tx, data.terminals)
    fresh = model_inputs(tables, tx, queries)
    rows = np.zeros(len(queries), dtype=bool)
    rows[::4] = True
    unseen = 10**9 + np.arange(len(queries))
    for entity, column in (("terminal", "terminal_id"), ("card", "card_id")):
        made = model_inputs(tables, tx, queries, unknown={entity: rows})
        never_seen = model_inputs(tables, tx, queries.assign(**{column: unseen}))
        np.testing.assert_array_equal(made.tabular[rows], never_seen.tabular[rows], entity)
        np.testing.assert_array_equal(made.sequence[rows], never_seen.sequence[rows], entity)
        np.testing.assert_array_equal(made.categorical[rows], never_seen.categorical[rows])
        np.testing.assert_array_equal(made.tabular[~rows], fresh.tabular[~rows], entity)
        assert (made.columns[f"{entity}_known"][rows] == 0).all()
        assert (made.columns[f"{entity}_daily_available"] == 1).all(), "not a stale store"
        assert fresh.columns[f"{entity}_known"][rows].any(), "the rows had something to lose"
    drawn = entity_dropout(100_000, 0.05, np.random.default_rng(0))
    assert set(drawn) == {"card", "terminal"}
    assert all(abs(m.mean() - 0.05) < 0.005 for m in drawn.values())
