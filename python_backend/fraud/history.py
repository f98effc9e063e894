"""The heavy model's extra context: each transaction's card history and terminal history.

The real-time primary sees five recent transactions of the card (``SEQUENCE``) and daily
aggregates. The heavy model, which studies every decision off the hot path
(``feature_repo analyze``), also sees the card's last ``CARD_HISTORY_LENGTH`` transactions and
the terminal's last ``TERMINAL_HISTORY_LENGTH``, each as channels relative to the transaction
being judged (how long ago, how large against it, at the same terminal / by the same card).

Point in time: a history holds only transactions strictly earlier than the one judged (an
earlier timestamp; one of the same millisecond is not "earlier") and none older than
``HISTORY_MAX_AGE_MS``. One function turns gathered past events into the tensors,
:func:`history_channels`; offline (:func:`offline_histories`, over a whole table, no Python
loop per row) and online (:class:`HistoryBuffers`, per-entity buffers a consumer keeps) only
gather, so they cannot disagree on a channel. Numpy only: serving, the consumer and training
all import it.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from python_backend.fraud.features import MS_PER_DAY, MS_PER_HOUR

CARD_HISTORY_LENGTH = 64
TERMINAL_HISTORY_LENGTH = 32
HISTORY_MAX_AGE_MS = 120 * MS_PER_DAY
#: A buffer keeps this many entries beyond a history's length: events that arrive after a
#: row's own (its own among them) must not push out the earlier ones its history needs.
BUFFER_SLACK = 32
#: Channels of a card's history, per past transaction (most recent last, padding first).
CARD_HISTORY_CHANNELS = (
    "log_amount",
    "log_hours_ago",
    "same_terminal",
    "log_amount_ratio",
    "valid",
)
#: Channels of a terminal's history.
TERMINAL_HISTORY_CHANNELS = ("log_amount", "log_hours_ago", "same_card", "valid")


def history_layout() -> dict:
    """The histories' shape and channels, as the heavy model's metadata records them (a
    consumer refuses a model built for another layout)."""
    return {
        "card": {"length": CARD_HISTORY_LENGTH, "channels": list(CARD_HISTORY_CHANNELS)},
        "terminal": {
            "length": TERMINAL_HISTORY_LENGTH,
            "channels": list(TERMINAL_HISTORY_CHANNELS),
        },
        "max_age_ms": HISTORY_MAX_AGE_MS,
    }


@dataclass
class Gathered:
    """Each row's past events of one entity, left-padded to ``[B, L]``: times, amounts, the
    other entity of each event (the terminal for a card's history, the card for a
    terminal's), and which slots hold an event."""

    ts_ms: np.ndarray
    amount: np.ndarray
    other: np.ndarray
    valid: np.ndarray


def history_channels(
    past: Gathered, ts_ms: np.ndarray, amount: np.ndarray, other: np.ndarray, ratio: bool
) -> np.ndarray:
    """``[B, L, C]`` float32 channels of ``past`` relative to each row's transaction
    (``ts_ms``, ``amount``, and its own ``other`` entity). Slots that are not strictly
    earlier, or older than ``HISTORY_MAX_AGE_MS``, are emptied here, whoever gathered them."""
    ago_ms = ts_ms[:, None] - past.ts_ms
    valid = past.valid & (ago_ms > 0) & (ago_ms <= HISTORY_MAX_AGE_MS)
    log_amount = np.log1p(np.maximum(past.amount, 0.0))
    channels = [
        log_amount,
        np.log1p(np.maximum(ago_ms, 0) / MS_PER_HOUR),
        (past.other == other[:, None]).astype(np.float64),
    ]
    if ratio:
        channels.append(log_amount - np.log1p(np.maximum(amount, 0.0))[:, None])
    out = np.stack([*channels, np.ones_like(log_amount)], axis=-1)
    out *= valid[..., None]
    return out.astype(np.float32)


@dataclass
class Histories:
    """The heavy model's two extra inputs, ``[B, 64, 5]`` and ``[B, 32, 4]``."""

    card: np.ndarray
    terminal: np.ndarray


def _gather_offline(
    entity: np.ndarray,
    ts_ms: np.ndarray,
    amount: np.ndarray,
    other: np.ndarray,
    ids: np.ndarray,
    length: int,
    rows: np.ndarray,
) -> Gathered:
    """For each of ``rows``, the ``length`` rows of the same ``entity`` strictly before its
    time: sort once, then look back by offsets from the first row of its (entity, time); no
    loop per row."""
    n = len(entity)
    order = np.lexsort((ids, ts_ms, entity))  # by entity, time, id (as the buffers order)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    e, t = entity[order], ts_ms[order]
    first = np.ones(n, dtype=bool)
    first[1:] = (e[1:] != e[:-1]) | (t[1:] != t[:-1])
    group_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    back = group_start[rank[rows]][:, None] - np.arange(length, 0, -1)[None, :]  # oldest first
    inside = back >= 0
    source = order[np.where(inside, back, 0)]
    valid = inside & (entity[source] == entity[rows][:, None])
    return Gathered(ts_ms[source], amount[source], other[source], valid)


#: The transaction log's columns :func:`offline_histories` reads, in its parameters' order.
HISTORY_COLUMNS = ("card_id", "terminal_id", "ts_ms", "amount", "transaction_id")


def history_columns(transactions) -> list[np.ndarray]:
    """:data:`HISTORY_COLUMNS` of a transaction table (a DataFrame), as
    ``offline_histories(*history_columns(tx), rows=...)`` takes them."""
    return [np.asarray(transactions[c]) for c in HISTORY_COLUMNS]


def offline_histories(
    card: np.ndarray,
    terminal: np.ndarray,
    ts_ms: np.ndarray,
    amount: np.ndarray,
    ids: np.ndarray,
    rows: np.ndarray | None = None,
) -> Histories:
    """The histories of ``rows`` (positions; every row by default) within the table given
    (all transactions, in any order; ``ids``, the transaction ids, order those of one
    millisecond as the online buffers do)."""
    card, terminal, ids = np.asarray(card), np.asarray(terminal), np.asarray(ids)
    ts_ms, amount = np.asarray(ts_ms, dtype=np.int64), np.asarray(amount, dtype=np.float64)
    rows = np.arange(len(card)) if rows is None else np.asarray(rows)
    by_card = _gather_offline(card, ts_ms, amount, terminal, ids, CARD_HISTORY_LENGTH, rows)
    by_terminal = _gather_offline(terminal, ts_ms, amount, card, ids, TERMINAL_HISTORY_LENGTH, rows)
    return Histories(
        history_channels(by_card, ts_ms[rows], amount[rows], terminal[rows], ratio=True),
        history_channels(by_terminal, ts_ms[rows], amount[rows], card[rows], ratio=False),
    )


class HistoryBuffers:
    """Per card and per terminal, their last transactions (time, amount, the other entity,
    id), in bounded memory: at most ``max_entities`` of each kind (the least recently seen
    go first) and each buffer as long as the history. What a consumer keeps to build the
    heavy model's inputs online; :meth:`add` is idempotent by transaction id."""

    def __init__(self, max_entities: int = 200_000) -> None:
        self.max_entities = max_entities
        self.cards: collections.OrderedDict[int, collections.deque] = collections.OrderedDict()
        self.terminals: collections.OrderedDict[int, collections.deque] = collections.OrderedDict()

    @staticmethod
    def _buffer(table: collections.OrderedDict, key: int, length: int, limit: int):
        buffer = table.get(key)
        if buffer is None:
            buffer = table[key] = collections.deque(maxlen=length)
            if len(table) > limit:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
        return buffer

    def add(self, events: Iterable[tuple[str, int, int, int, float]]) -> int:
        """``(transaction_id, card, terminal, ts_ms, amount)`` events, in any order; returns
        how many were new (an event seen again, or older than all a full buffer keeps,
        changes nothing)."""
        added = 0
        for tx_id, card, terminal, ts, amount in events:
            new = _keep(
                self._buffer(
                    self.cards, card, CARD_HISTORY_LENGTH + BUFFER_SLACK, self.max_entities
                ),
                (ts, amount, terminal, tx_id),
            )
            new |= _keep(
                self._buffer(
                    self.terminals,
                    terminal,
                    TERMINAL_HISTORY_LENGTH + BUFFER_SLACK,
                    self.max_entities,
                ),
                (ts, amount, card, tx_id),
            )
            added += new
        return added

    def histories(
        self, card: np.ndarray, terminal: np.ndarray, ts_ms: np.ndarray, amount: np.ndarray
    ) -> Histories:
        """The rows' histories from what the buffers hold now (entries at or after a row's
        own time are left out by :func:`history_channels`)."""
        ts_ms, amount = np.asarray(ts_ms, dtype=np.int64), np.asarray(amount, dtype=np.float64)
        by_card = _gather_online(self.cards, card, CARD_HISTORY_LENGTH, ts_ms)
        by_terminal = _gather_online(self.terminals, terminal, TERMINAL_HISTORY_LENGTH, ts_ms)
        return Histories(
            history_channels(by_card, ts_ms, amount, np.asarray(terminal), ratio=True),
            history_channels(by_terminal, ts_ms, amount, np.asarray(card), ratio=False),
        )


def _keep(buffer: collections.deque, entry: tuple) -> bool:
    """``entry`` into ``buffer`` unless it is there (by id) or older than all a full buffer
    keeps; whether it went in."""
    if any(e[3] == entry[3] for e in buffer):
        return False
    if len(buffer) == buffer.maxlen and entry[0] < buffer[0][0]:
        return False
    _insert(buffer, entry)
    return True


def _order(entry: tuple) -> tuple:
    return entry[0], entry[3]  # time, then id: one millisecond's events in a fixed order


def _insert(buffer: collections.deque, entry: tuple) -> None:
    """In time order (a late event lands where it belongs); the oldest fall off the front."""
    if not buffer or _order(buffer[-1]) <= _order(entry):
        buffer.append(entry)
        return
    items = sorted([*buffer, entry], key=_order)
    buffer.clear()
    buffer.extend(items[-buffer.maxlen :])


def _gather_online(table: dict, keys: np.ndarray, length: int, ts_ms: np.ndarray) -> Gathered:
    """Each row's buffered events strictly before its time, the last ``length`` of them."""
    n = len(keys)
    out = Gathered(
        np.zeros((n, length), dtype=np.int64),
        np.zeros((n, length), dtype=np.float64),
        np.zeros((n, length), dtype=np.int64),
        np.zeros((n, length), dtype=bool),
    )
    for i, key in enumerate(np.asarray(keys).tolist()):
        entries = [e for e in table.get(key, ()) if e[0] < ts_ms[i]][-length:]
        if not entries:
            continue
        k = len(entries)
        out.ts_ms[i, -k:] = [e[0] for e in entries]
        out.amount[i, -k:] = [e[1] for e in entries]
        out.other[i, -k:] = [e[2] for e in entries]
        out.valid[i, -k:] = True
    return out


@dataclass
class HeavyInputs:
    """What the heavy model reads (``contract.HEAVY``): the primary's three tensors and the
    two histories, one row per transaction."""

    tabular: np.ndarray
    sequence: np.ndarray
    categorical: np.ndarray
    card_history: np.ndarray
    terminal_history: np.ndarray

    @classmethod
    def of(cls, inputs, histories: Histories) -> HeavyInputs:
        """From a ``ModelInputs`` (or anything with its three tensors) and the histories."""
        return cls(
            inputs.tabular, inputs.sequence, inputs.categorical, histories.card, histories.terminal
        )

    def __len__(self) -> int:
        return len(self.tabular)

    def take(self, rows) -> HeavyInputs:
        return HeavyInputs(
            self.tabular[rows],
            self.sequence[rows],
            self.categorical[rows],
            self.card_history[rows],
            self.terminal_history[rows],
        )
