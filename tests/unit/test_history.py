"""The heavy model's history inputs: point in time (strictly earlier, within the age limit,
never what comes after) and the same tensors offline and online (``HistoryBuffers``)."""

from __future__ import annotations

import numpy as np
import pytest

from python_backend.fraud.features import MS_PER_DAY
from python_backend.fraud.history import (
    CARD_HISTORY_CHANNELS,
    CARD_HISTORY_LENGTH,
    TERMINAL_HISTORY_LENGTH,
    HistoryBuffers,
    offline_histories,
)

T0 = 1_767_571_200_000
VALID = CARD_HISTORY_CHANNELS.index("valid")


def _table(n: int = 3000, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(T0, T0 + 200 * MS_PER_DAY, n))
    card = rng.integers(1, 25, n)  # few cards: histories fill up (64) and overflow
    ts[50:53] = ts[50]  # three transactions of one card in the same millisecond
    card[50:53] = card[50]
    return {
        "card": card,
        "terminal": rng.integers(1, 40, n),
        "ts": ts,
        "amount": rng.gamma(2.0, 30.0, n),
        "id": np.array([f"tx{i}" for i in range(n)]),
    }


def test_offline_and_online_histories_are_equal() -> None:
    t = _table()
    offline = offline_histories(t["card"], t["terminal"], t["ts"], t["amount"], t["id"])
    buffers = HistoryBuffers()
    rng = np.random.default_rng(1)
    # Online, events arrive a little out of order (two producers: shuffled within windows of
    # 40) and each window is judged once it is in; a replayed event changes nothing.
    for start in range(0, len(t["ts"]), 40):
        window = np.arange(start, min(start + 40, len(t["ts"])))
        events = [
            (f"tx{i}", int(t["card"][i]), int(t["terminal"][i]), int(t["ts"][i]), t["amount"][i])
            for i in rng.permutation(window)
        ]
        buffers.add(events)
        assert buffers.add(events[:5]) == 0, "added twice"
        online = buffers.histories(
            t["card"][window], t["terminal"][window], t["ts"][window], t["amount"][window]
        )
        np.testing.assert_array_equal(online.card, offline.card[window])
        np.testing.assert_array_equal(online.terminal, offline.terminal[window])
    assert offline.card.shape[1:] == (CARD_HISTORY_LENGTH, len(CARD_HISTORY_CHANNELS))
    assert offline.terminal.shape[1] == TERMINAL_HISTORY_LENGTH
    assert offline.card[:, :, VALID].sum(axis=1).max() == CARD_HISTORY_LENGTH


def test_no_history_holds_the_transaction_itself_or_anything_later() -> None:
    t = _table()
    before = offline_histories(t["card"], t["terminal"], t["ts"], t["amount"], t["id"])
    row = 1500
    later = t["ts"] >= t["ts"][row]
    changed = {k: v.copy() for k, v in t.items()}
    changed["amount"][later] *= 7.0  # the transaction itself and everything after it
    changed["terminal"][later] = 999
    changed["amount"][row] = t["amount"][row]  # the row's own amount is part of its question
    changed["terminal"][row] = t["terminal"][row]
    after = offline_histories(
        changed["card"], changed["terminal"], changed["ts"], changed["amount"], changed["id"]
    )
    np.testing.assert_array_equal(before.card[row], after.card[row])
    np.testing.assert_array_equal(before.terminal[row], after.terminal[row])
    earlier = np.flatnonzero(~later)
    np.testing.assert_array_equal(before.card[earlier], after.card[earlier])


def test_same_millisecond_is_not_earlier() -> None:
    t = _table()
    h = offline_histories(t["card"], t["terminal"], t["ts"], t["amount"], t["id"])
    # Rows 50..52 share card and millisecond: none is in another's history.
    assert h.card[50, :, VALID].sum() == h.card[51, :, VALID].sum() == h.card[52, :, VALID].sum()


def test_history_drops_transactions_older_than_the_age_limit() -> None:
    card = np.array([1, 1, 1])
    ts = np.array([T0, T0 + 121 * MS_PER_DAY, T0 + 122 * MS_PER_DAY])
    h = offline_histories(
        card, np.array([5, 6, 7]), ts, np.array([10.0, 20.0, 30.0]), np.array(["a", "b", "c"])
    )
    assert h.card[2, :, VALID].sum() == 1, "only the one a day before; 122 days is too old"
    assert h.card[0, :, VALID].sum() == 0
    assert not np.isnan(h.card).any()


@pytest.mark.parametrize("limit", [1, 2])
def test_buffers_keep_at_most_max_entities(limit: int) -> None:
    buffers = HistoryBuffers(max_entities=limit)
    buffers.add((f"t{i}", i, 100 + i, T0 + i, 1.0) for i in range(1, 6))
    assert len(buffers.cards) == limit and len(buffers.terminals) == limit
    assert list(buffers.cards) == list(range(6 - limit, 6)), "the least recently seen go first"
