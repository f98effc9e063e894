"""Point-in-time feature computation for training, from the declaration in
``python_backend.fraud.features``.

* Daily snapshots (``card_daily``, ``terminal_daily``): one row per entity and day, holding
  the aggregates as of that day's midnight. The same tables are what Feast materializes into
  the online store, so training joins exactly what serving reads.
* Recent buffers (``card_recent``): for each scored transaction, the card's last
  ``RECENT_BUFFER`` transactions strictly before it, as the stream consumer keeps them.

Everything uses one trick: events sorted by ``entity * SPAN + time`` make "events of entity e
in [a, b)" a pair of ``searchsorted`` lookups, and sums a difference of prefix sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from python_backend.fraud.features import (
    CARD_DAILY,
    FEATURE_GROUPS,
    LABEL_DELAY_DAYS,
    MS_PER_DAY,
    RECENT_BUFFER,
    TERMINAL_DAILY,
    ModelInputs,
    assemble_model_inputs,
    default_stored,
)


@dataclass(frozen=True)
class _EventIndex:
    """Events of one entity type, sorted by (entity, time), with prefix sums."""

    keys: np.ndarray  # entity * span + (ts - origin), sorted
    order: np.ndarray  # positions in the original frame
    span: int
    origin: int
    prefix: dict[str, np.ndarray]  # column -> prefix sums (len n + 1)

    @classmethod
    def build(
        cls, entity: np.ndarray, ts_ms: np.ndarray, origin: int, sums: dict[str, np.ndarray]
    ) -> _EventIndex:
        span = int(ts_ms.max() - origin) + 400 * MS_PER_DAY if ts_ms.size else MS_PER_DAY
        keys = entity.astype(np.int64) * span + (ts_ms.astype(np.int64) - origin)
        order = np.argsort(keys, kind="stable")
        prefix = {
            name: np.concatenate([[0.0], np.cumsum(values[order], dtype=np.float64)])
            for name, values in sums.items()
        }
        return cls(keys[order], order, span, origin, prefix)

    def position(self, entity: np.ndarray, ts_ms: np.ndarray) -> np.ndarray:
        """Index of the first event of ``entity`` at or after ``ts_ms`` (times clamped to
        the origin so a window never reaches into the previous entity)."""
        rel = np.maximum(np.asarray(ts_ms, dtype=np.int64) - self.origin, 0)
        return np.searchsorted(self.keys, entity.astype(np.int64) * self.span + rel, "left")

    def window(
        self, entity: np.ndarray, start_ms: np.ndarray, end_ms: np.ndarray
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Count and sums of the events of ``entity`` with ``start_ms <= ts < end_ms``."""
        lo, hi = self.position(entity, start_ms), self.position(entity, end_ms)
        return (hi - lo).astype(np.float64), {
            name: prefix[hi] - prefix[lo] for name, prefix in self.prefix.items()
        }

    def seen(self, entity: np.ndarray, day_ms: np.ndarray) -> dict[str, np.ndarray]:
        """Per (entity, midnight): whether the entity has any event before that midnight,
        and the days from its first and from its last such event to the midnight."""
        first = self.position(entity, np.full_like(day_ms, self.origin))
        end = self.position(entity, day_ms)
        seen = end > first

        def days_before(idx: np.ndarray) -> np.ndarray:
            ts = self.keys[np.clip(idx, 0, len(self.keys) - 1)] - entity * self.span + self.origin
            return np.where(seen, (day_ms - ts) / MS_PER_DAY, 0.0)

        return {"seen": seen, "since_first": days_before(first), "since_last": days_before(end - 1)}


def _add_ages(out: dict[str, np.ndarray], features, seen: dict[str, np.ndarray]) -> None:
    """The presence / age columns of a daily snapshot (capped as declared)."""
    for feature in features:
        if feature.aggregate in ("days_since_first", "days_since_last"):
            days = seen["since_first" if feature.aggregate == "days_since_first" else "since_last"]
            out[feature.name] = np.minimum(days, feature.window_days)


def _origin(tx: pd.DataFrame) -> int:
    return int(tx["ts_ms"].min() // MS_PER_DAY * MS_PER_DAY) - 60 * MS_PER_DAY


def day_starts(tx: pd.DataFrame) -> np.ndarray:
    """Midnight (UTC, ms) of every day the transactions cover."""
    first = int(tx["ts_ms"].min() // MS_PER_DAY)
    last = int(tx["ts_ms"].max() // MS_PER_DAY)
    return np.arange(first, last + 1, dtype=np.int64) * MS_PER_DAY


def card_daily_snapshots(events: pd.DataFrame, days_ms: np.ndarray) -> pd.DataFrame:
    """``card_daily`` for every card in ``events`` and every midnight in ``days_ms`` after
    its first transaction: a card the store has not seen has no row (it is *unknown*, and
    the reader says so), never a row of zeros that reads like a quiet card."""
    cards = np.unique(events["card_id"].to_numpy())
    index = _EventIndex.build(
        events["card_id"].to_numpy(),
        events["ts_ms"].to_numpy(),
        _origin(events),
        {"amount": events["amount"].to_numpy(dtype=np.float64)},
    )
    card = np.repeat(cards, days_ms.size)
    day = np.tile(days_ms, cards.size)
    out = {"card_id": card, "event_timestamp_ms": day}
    for feature in CARD_DAILY.features:
        if feature.aggregate != "count":
            continue
        w = feature.window_days
        count, sums = index.window(card, day - w * MS_PER_DAY, day)
        out[f"card_tx_count_{w}d"] = count
        out[f"card_amount_sum_{w}d"] = sums["amount"]
        out[f"card_amount_mean_{w}d"] = np.divide(
            sums["amount"], count, out=np.zeros_like(count), where=count > 0
        )
    seen = index.seen(card, day)
    _add_ages(out, CARD_DAILY.features, seen)
    frame = pd.DataFrame(out)[seen["seen"]].reset_index(drop=True)
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp_ms"], unit="ms", utc=True)
    for name in CARD_DAILY.names:
        frame[name] = frame[name].astype(np.float32)
    return frame


def terminal_daily_snapshots(
    events: pd.DataFrame, days_ms: np.ndarray, terminal_category: pd.Series
) -> pd.DataFrame:
    """``terminal_daily`` for every terminal and midnight after its first transaction;
    the count and fraud-rate windows end at the label-delay cut-off so only labels known by
    that midnight are used (how long the terminal has been seen needs no label)."""
    terminals = terminal_category.index.to_numpy(dtype=np.int64)
    index = _EventIndex.build(
        events["terminal_id"].to_numpy(),
        events["ts_ms"].to_numpy(),
        _origin(events),
        {"fraud": events["is_fraud"].to_numpy(dtype=np.float64)},
    )
    terminal = np.repeat(terminals, days_ms.size)
    day = np.tile(days_ms, terminals.size)
    cutoff = day - LABEL_DELAY_DAYS * MS_PER_DAY
    out: dict[str, np.ndarray] = {"terminal_id": terminal, "event_timestamp_ms": day}
    for feature in TERMINAL_DAILY.features:
        if feature.aggregate != "count":
            continue
        w = feature.window_days
        count, sums = index.window(terminal, cutoff - w * MS_PER_DAY, cutoff)
        out[f"terminal_tx_count_{w}d"] = count
        out[f"terminal_fraud_rate_{w}d"] = np.divide(
            sums["fraud"], count, out=np.zeros_like(count), where=count > 0
        )
    seen = index.seen(terminal, day)
    _add_ages(out, TERMINAL_DAILY.features, seen)
    out["terminal_category"] = terminal_category.loc[terminal].to_numpy(dtype=np.int64)
    frame = pd.DataFrame(out)[seen["seen"]].reset_index(drop=True)
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp_ms"], unit="ms", utc=True)
    for name in TERMINAL_DAILY.names:
        if name != "terminal_category":
            frame[name] = frame[name].astype(np.float32)
    return frame


def recent_buffers(
    events: pd.DataFrame, card_id: np.ndarray, ts_ms: np.ndarray, with_ids: bool = False
) -> dict[str, np.ndarray]:
    """The last ``RECENT_BUFFER`` transactions of each card strictly before each time,
    oldest first, left-padded with zeros: the ``card_recent`` values at that moment
    (``with_ids`` adds their transaction ids, empty strings for padding)."""
    index = _EventIndex.build(
        events["card_id"].to_numpy(), events["ts_ms"].to_numpy(), _origin(events), {}
    )
    card_id = np.asarray(card_id, dtype=np.int64)
    end = index.position(card_id, ts_ms)
    first = index.position(card_id, np.full_like(card_id, index.origin))
    offsets = np.arange(-RECENT_BUFFER, 0)
    pos = end[:, None] + offsets[None, :]
    valid = pos >= first[:, None]
    source = index.order[np.clip(pos, 0, max(len(index.order) - 1, 0))]
    ts = events["ts_ms"].to_numpy(dtype=np.int64)[source]
    amounts = events["amount"].to_numpy(dtype=np.float32)[source]
    terminals = events["terminal_id"].to_numpy(dtype=np.int64)[source]
    out = {
        "recent_ts_ms": np.where(valid, ts, 0),
        "recent_amounts": np.where(valid, amounts, 0).astype(np.float32),
        "recent_terminal_ids": np.where(valid, terminals, 0),
    }
    if with_ids:
        ids = events["transaction_id"].to_numpy(dtype=object)[source]
        out["recent_tx_ids"] = np.where(valid, ids, "")
    return out


@dataclass
class FeatureTables:
    """Daily snapshots of a transaction log, as Feast would serve them."""

    card_daily: pd.DataFrame
    terminal_daily: pd.DataFrame

    @classmethod
    def build(cls, events: pd.DataFrame, terminals: pd.DataFrame) -> FeatureTables:
        days = day_starts(events)
        categories = terminals.set_index("terminal_id")["terminal_category"]
        return cls(
            card_daily_snapshots(events, days),
            terminal_daily_snapshots(events, days, categories),
        )


def stored_features(
    tables: FeatureTables, events: pd.DataFrame, queries: pd.DataFrame
) -> dict[str, np.ndarray]:
    """The online-store view for each query row (``card_id``, ``terminal_id``, ``ts_ms``):
    the snapshot of the query's day, and the recent buffer before its time. Unknown
    entities get the declared defaults."""
    day = queries["ts_ms"].to_numpy() // MS_PER_DAY * MS_PER_DAY
    out: dict[str, np.ndarray] = {}
    for group, table, key in (
        (CARD_DAILY, tables.card_daily, "card_id"),
        (TERMINAL_DAILY, tables.terminal_daily, "terminal_id"),
    ):
        lookup = pd.DataFrame({key: queries[key].to_numpy(), "event_timestamp_ms": day})
        joined = lookup.merge(table, on=[key, "event_timestamp_ms"], how="left")
        for feature in group.features:
            column = joined[feature.name].fillna(feature.default)
            out[feature.name] = column.to_numpy(
                dtype=np.int64 if feature.dtype == "int64" else np.float32
            )
    out.update(recent_buffers(events, queries["card_id"].to_numpy(), queries["ts_ms"].to_numpy()))
    return out


def model_inputs(
    tables: FeatureTables,
    events: pd.DataFrame,
    queries: pd.DataFrame,
    unavailable: dict[str, np.ndarray] | None = None,
    unknown: dict[str, np.ndarray] | None = None,
) -> ModelInputs:
    """Model tensors for the query transactions, point-in-time correct; ``unavailable``
    marks per view the rows decided without it (as serving does with a stale view);
    ``unknown`` per entity (:data:`ENTITY_VIEWS`) the rows decided as if the store had never
    seen it (:func:`as_unknown`)."""
    stored = stored_features(tables, events, queries)
    terminal_id = queries["terminal_id"].to_numpy()
    if unknown:
        stored, terminal_id = as_unknown(stored, terminal_id, unknown)
    return assemble_model_inputs(
        stored,
        queries["amount"].to_numpy(),
        queries["ts_ms"].to_numpy(),
        terminal_id,
        unavailable,
    )


#: The views keyed by each entity: what the store returns at their defaults for a card or a
#: terminal it has never seen (the card's recent buffer empty too).
ENTITY_VIEWS = {"card": ("card_daily", "card_recent"), "terminal": ("terminal_daily",)}
#: The terminal id a row made "unknown" is decided with: no card's buffer holds it.
UNSEEN_TERMINAL = -1


def as_unknown(
    stored: dict[str, np.ndarray], terminal_id: np.ndarray, unknown: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``stored`` (and the terminal ids) with the rows ``unknown`` marks per entity as the
    open world shows them: the entity's views at their defaults, as the online reader
    returns for an id it has never seen (``UNKNOWN_CARD`` / ``UNKNOWN_TERMINAL``), its view
    still available: a new merchant or a new card, not a stale store."""
    defaults = default_stored(len(terminal_id))
    out = dict(stored)
    for entity, rows in unknown.items():
        rows = np.asarray(rows, dtype=bool)
        if not rows.any():
            continue
        for group in FEATURE_GROUPS:
            if group.name not in ENTITY_VIEWS[entity]:
                continue
            for feature in group.features:
                if feature.name in out:
                    column = np.array(out[feature.name], copy=True)
                    column[rows] = defaults[feature.name][rows]
                    out[feature.name] = column
        if entity == "terminal":
            terminal_id = np.where(rows, UNSEEN_TERMINAL, terminal_id)
    return out, terminal_id


def entity_dropout(n: int, rate: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per entity (card, terminal), a random ``rate`` of ``n`` rows decided as if the store
    had never seen it: training rows that teach the models the open world's first meeting
    (a merchant onboarded today, a card issued today), whatever the rest of the row says."""
    return {entity: rng.random(n) < rate for entity in ENTITY_VIEWS}


def view_dropout(n: int, rate: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per view, a random ``rate`` of ``n`` rows marked unavailable: training rows that
    teach the models to decide when a view is stale or missing."""
    return {g.name: rng.random(n) < rate for g in FEATURE_GROUPS}
