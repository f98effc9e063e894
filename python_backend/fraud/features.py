"""The fraud model's features, declared once.

Training (``build_engines``), the Feast definitions and the stream consumer (``feature_repo``)
and the serving models all read this module, so a feature means the same thing everywhere.

Three groups of stored features, each one Feast feature view:

* ``card_daily`` (batch, entity ``card``): the card's count / sum / mean of amounts over the
  1, 7, 30 and 120 days before the start of the transaction's day (a daily snapshot), and how
  long the store has known the card: days since its first and since its last transaction.
* ``terminal_daily`` (batch, entity ``terminal``): the terminal's transaction count and fraud
  rate over 7 and 30 days, shifted by the label delay: at day ``D`` only labels of transactions
  before ``D - LABEL_DELAY_DAYS`` are known. Also its merchant category and the days since
  its first transaction.
* ``card_recent`` (stream, entity ``card``): a buffer of the card's last ``RECENT_BUFFER``
  transactions (timestamp, amount, terminal). Velocity features and the last-N sequence are
  derived from it at scoring time by :func:`derive_recent`, offline and online alike.

The world is open: cards and terminals appear every day, go quiet and come back, and a view
can be stale. So the features say what the store does not know instead of passing a default
off as data (0 transactions, fraud rate 0, category 0 all occur in real rows): a daily row
exists only for an entity seen before that midnight, the age features store ``NOT_SEEN`` for
one never seen, and the models read explicit flags (:data:`PRESENCE`): ``card_known``,
``terminal_known``, ``card_has_recent``, and ``<view>_available``, 0 for a view the service
could not use (stale or unreachable; training drops views at random so the models learn to
decide without them).

Point-in-time rule: a feature for a transaction at time ``t`` uses only events strictly before
``t`` (and, for labels, before the label-delay cut-off).

Everything here is numpy only: the serving interpreter (numpy<2, no pandas) imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from python_backend.feature_views import FeatureGroup, StoredFeature

MS_PER_SECOND = 1_000
MS_PER_MINUTE = 60 * MS_PER_SECOND
MS_PER_HOUR = 60 * MS_PER_MINUTE
MS_PER_DAY = 24 * MS_PER_HOUR

#: Labels (chargebacks, investigations) arrive this many days after the transaction.
LABEL_DELAY_DAYS = 7
#: Transactions kept per card by the stream; velocity counts saturate at this value.
RECENT_BUFFER = 16
#: Transactions the primary model's sequence encoder sees.
SEQUENCE_LENGTH = 5
#: Per-step channels of the sequence tensor.
SEQUENCE_CHANNELS = ("log_amount", "log_seconds_ago", "same_terminal", "valid")
#: Amounts at or below this look like card testing.
SMALL_AMOUNT = 2.0
#: ``seconds_since_last_tx`` for a card never seen before (30 days).
NO_PREVIOUS_TX_SECONDS = 30 * 24 * 3600.0
#: Merchant categories of terminals. Index 0 of the embedding is kept for "unknown".
MERCHANT_CATEGORIES = (
    "grocery",
    "restaurant",
    "fuel",
    "travel",
    "electronics",
    "fashion",
    "online_retail",
    "digital_goods",
    "entertainment",
    "health",
    "utilities",
    "jewelry",
)


#: The 120-day window keeps a card's habits known across a dormant month or two.
CARD_WINDOWS_DAYS = (1, 7, 30, 120)
TERMINAL_WINDOWS_DAYS = (7, 30)
#: A daily snapshot is written at midnight and read all day: older than a day plus two hours
#: of grace means the day's materialization did not happen.
DAILY_FRESHNESS_MS = 26 * MS_PER_HOUR
#: Stored value of an age feature for an entity the store has never seen. Never a real age,
#: and never fed to a model as it is: the models see a ``*_known`` flag and the age clamped
#: at 0 (see :func:`assemble_model_inputs`).
NOT_SEEN = -1.0
#: "Seen for N days" saturates here (the training period must cover the whole range).
SEEN_FOR_CAP_DAYS = 30
#: "Days since the last transaction" saturates here.
SINCE_LAST_CAP_DAYS = 120


def _age_feature(name: str, what: str, cap: int, aggregate: str) -> StoredFeature:
    return StoredFeature(
        name=name,
        dtype="float32",
        default=NOT_SEEN,
        description=f"{what} as of today's midnight, capped at {cap}; {NOT_SEEN:g} = not seen",
        window_days=cap,
        aggregate=aggregate,
    )


CARD_DAILY = FeatureGroup(
    name="card_daily",
    entity="card_id",
    source="batch",
    ttl_days=2,
    freshness_ms=DAILY_FRESHNESS_MS,
    features=(
        *(
            StoredFeature(
                name=f"card_amount_{agg}_{w}d" if agg != "count" else f"card_tx_count_{w}d",
                dtype="float32",
                default=0.0,
                description=f"{agg} of the card's amounts over the {w} days before today",
                window_days=w,
                aggregate=agg,
            )
            for w in CARD_WINDOWS_DAYS
            for agg in ("count", "sum", "mean")
        ),
        _age_feature(
            "card_days_since_first_tx",
            "days since the card's first transaction",
            SEEN_FOR_CAP_DAYS,
            "days_since_first",
        ),
        _age_feature(
            "card_days_since_last_tx",
            "days since the card's last transaction",
            SINCE_LAST_CAP_DAYS,
            "days_since_last",
        ),
    ),
)

TERMINAL_DAILY = FeatureGroup(
    name="terminal_daily",
    entity="terminal_id",
    source="batch",
    ttl_days=2,
    freshness_ms=DAILY_FRESHNESS_MS,
    features=(
        *(
            StoredFeature(
                name=f"terminal_{stat}_{w}d",
                dtype="float32",
                default=0.0,
                description=(
                    f"terminal's {stat.replace('_', ' ')} over {w} days ending "
                    f"{LABEL_DELAY_DAYS} days before today (label delay)"
                ),
                window_days=w,
                aggregate="fraud_rate" if stat == "fraud_rate" else "count",
            )
            for w in TERMINAL_WINDOWS_DAYS
            for stat in ("tx_count", "fraud_rate")
        ),
        _age_feature(
            "terminal_days_since_first_tx",
            "days since the terminal's first transaction",
            SEEN_FOR_CAP_DAYS,
            "days_since_first",
        ),
        StoredFeature(
            name="terminal_category",
            dtype="int64",
            default=0.0,
            description="merchant category id (1-based, 0 = unknown terminal)",
        ),
    ),
)

CARD_RECENT = FeatureGroup(
    name="card_recent",
    entity="card_id",
    source="stream",
    ttl_days=30,
    features=(
        StoredFeature(
            "recent_ts_ms", "int64_list", 0.0, "timestamps (ms) of the last transactions"
        ),
        StoredFeature("recent_amounts", "float32_list", 0.0, "amounts of the last transactions"),
        StoredFeature(
            "recent_terminal_ids", "int64_list", 0.0, "terminals of the last transactions"
        ),
        # Not a model input: lets the stream consumer apply each event exactly once.
        StoredFeature("recent_tx_ids", "string_list", 0.0, "ids of the last transactions"),
    ),
)

FEATURE_GROUPS = (CARD_DAILY, TERMINAL_DAILY, CARD_RECENT)
#: Card id 0 is never a real card (requests need positive ids): its ``card_recent`` row is the
#: stream consumer's heartbeat, stamped with the wall-clock time of its latest poll.
STREAM_HEARTBEAT_ID = 0
#: A heartbeat older than this means the consumer stopped: every recent buffer is stale.
STREAM_MAX_SILENCE_MS = 60 * MS_PER_SECOND
#: Buffer entries at least this old are ignored (the ``card_recent`` TTL).
RECENT_MAX_AGE_MS = CARD_RECENT.ttl_days * MS_PER_DAY
#: Stored features the models read (everything but bookkeeping such as transaction ids).
MODEL_STORED = tuple(
    f for group in FEATURE_GROUPS for f in group.features if f.dtype != "string_list"
)


# --------------------------------------------------------------------------------------------
# Derived features: computed from the request and the stored features, offline and online.
# --------------------------------------------------------------------------------------------

#: Velocity features derived from the ``card_recent`` buffer at scoring time.
RECENT_DERIVED = (
    "card_tx_count_10m",
    "card_tx_count_1h",
    "card_amount_sum_1h",
    "card_small_amount_count_1h",
    "seconds_since_last_tx",
    "terminal_seen_recently",
)
#: What the models are told about what the store did not know: whether each entity was
#: found in its daily view, whether the card has any recent transaction in the buffer, and
#: whether each view was usable at all (not stale, not unreachable).
PRESENCE = (
    "card_known",
    "terminal_known",
    "card_has_recent",
    *(f"{g.name}_available" for g in FEATURE_GROUPS),
)

#: Columns of the primary model's ``TABULAR`` input, in order, with their transform.
TABULAR_COLUMNS: tuple[tuple[str, str], ...] = (
    ("amount", "log1p"),
    ("hour_sin", "identity"),
    ("hour_cos", "identity"),
    ("is_night", "identity"),
    ("is_weekend", "identity"),
    *((name, "identity" if "fraud_rate" in name else "log1p") for name in CARD_DAILY.names),
    *((f"amount_to_card_mean_{w}d", "log1p") for w in CARD_WINDOWS_DAYS[1:]),
    *(
        (name, "identity" if "fraud_rate" in name else "log1p")
        for name in TERMINAL_DAILY.names
        if name != "terminal_category"
    ),
    *((name, "log1p") for name in RECENT_DERIVED),
    *((name, "identity") for name in PRESENCE),
)
#: Which tabular columns are log1p-transformed (the rest are used as they are).
_LOG1P = np.array([how == "log1p" for _name, how in TABULAR_COLUMNS])
TABULAR_NAMES = tuple(name for name, _ in TABULAR_COLUMNS)
#: Columns of the ``CATEGORICAL`` input and their cardinalities (embedding sizes).
CATEGORICAL_COLUMNS: tuple[tuple[str, int], ...] = (
    ("terminal_category", len(MERCHANT_CATEGORIES) + 1),
    ("hour", 24),
    ("weekday", 7),
)


@dataclass
class ModelInputs:
    """The three tensors every fraud model reads, one row per transaction."""

    tabular: np.ndarray  # [B, len(TABULAR_COLUMNS)] float32, transformed
    sequence: np.ndarray  # [B, SEQUENCE_LENGTH, len(SEQUENCE_CHANNELS)] float32
    categorical: np.ndarray  # [B, len(CATEGORICAL_COLUMNS)] int64
    #: Untransformed named columns (request, stored and derived) for rules and explanations.
    columns: dict[str, np.ndarray]

    def take(self, rows: np.ndarray) -> ModelInputs:
        """The ``rows`` (indices or a mask) of every tensor and column."""
        return ModelInputs(
            self.tabular[rows],
            self.sequence[rows],
            self.categorical[rows],
            {k: v[rows] for k, v in self.columns.items()},
        )


def request_features(amount: np.ndarray, ts_ms: np.ndarray) -> dict[str, np.ndarray]:
    """Features computed from the transaction itself (time of day in UTC)."""
    amount = np.asarray(amount, dtype=np.float64)
    ts_ms = np.asarray(ts_ms, dtype=np.int64)
    seconds_of_day = (ts_ms % MS_PER_DAY) / MS_PER_SECOND
    hour = (seconds_of_day // 3600).astype(np.int64)
    # 1970-01-01 was a Thursday: shift so Monday = 0.
    weekday = ((ts_ms // MS_PER_DAY + 3) % 7).astype(np.int64)
    angle = 2 * np.pi * seconds_of_day / 86400.0
    return {
        "amount": amount,
        "hour": hour,
        "weekday": weekday,
        "hour_sin": np.sin(angle),
        "hour_cos": np.cos(angle),
        "is_night": ((hour < 6) | (hour >= 22)).astype(np.float64),
        "is_weekend": (weekday >= 5).astype(np.float64),
    }


def derive_recent(
    recent_ts_ms: np.ndarray,
    recent_amounts: np.ndarray,
    recent_terminal_ids: np.ndarray,
    ts_ms: np.ndarray,
    terminal_id: np.ndarray,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Velocity features and the last-N sequence from a card's recent-transaction buffer.

    The buffer arrays are ``[B, RECENT_BUFFER]``, oldest first, newest in the last column,
    left-padded with timestamp 0 where the card has fewer transactions. Entries at or after
    ``ts_ms`` are ignored, so a buffer that already holds the scored transaction (or later
    ones, on replay) gives the same answer as one that does not; so are entries older than
    the view's TTL (``RECENT_MAX_AGE_MS``).

    Returns the named ``RECENT_DERIVED`` columns and the ``[B, SEQUENCE_LENGTH, 4]`` sequence.
    """
    ts = np.asarray(recent_ts_ms, dtype=np.int64)
    amounts = np.asarray(recent_amounts, dtype=np.float64)
    terminals = np.asarray(recent_terminal_ids, dtype=np.int64)
    now = np.asarray(ts_ms, dtype=np.int64)[:, None]
    # Entries older than the view's TTL are not "recent": the online store drops such cards
    # (Feast materializes rows within the TTL), so training must not see them either.
    valid = (ts > 0) & (ts < now) & (now - ts < RECENT_MAX_AGE_MS)
    age_ms = np.where(valid, now - ts, np.iinfo(np.int64).max)
    in_10m = valid & (age_ms <= 10 * MS_PER_MINUTE)
    in_1h = valid & (age_ms <= MS_PER_HOUR)
    same_terminal = valid & (terminals == np.asarray(terminal_id, dtype=np.int64)[:, None])
    newest_age_ms = age_ms.min(axis=1)
    columns = {
        "card_tx_count_10m": in_10m.sum(axis=1).astype(np.float64),
        "card_tx_count_1h": in_1h.sum(axis=1).astype(np.float64),
        "card_amount_sum_1h": np.where(in_1h, amounts, 0.0).sum(axis=1),
        "card_small_amount_count_1h": (in_1h & (amounts <= SMALL_AMOUNT))
        .sum(axis=1)
        .astype(np.float64),
        "seconds_since_last_tx": np.where(
            valid.any(axis=1),
            np.minimum(newest_age_ms / MS_PER_SECOND, NO_PREVIOUS_TX_SECONDS),
            NO_PREVIOUS_TX_SECONDS,
        ),
        "terminal_seen_recently": same_terminal.any(axis=1).astype(np.float64),
        "card_has_recent": valid.any(axis=1).astype(np.float64),
    }
    # The last SEQUENCE_LENGTH valid entries, oldest first, left-padded with zeros: rank each
    # valid entry by counting valid entries from the newest end of the buffer.
    rank_from_newest = np.cumsum(valid[:, ::-1], axis=1)[:, ::-1]
    keep = valid & (rank_from_newest <= SEQUENCE_LENGTH)
    slot = SEQUENCE_LENGTH - rank_from_newest  # 0 = oldest kept, SEQUENCE_LENGTH-1 = newest
    batch = ts.shape[0]
    sequence = np.zeros((batch, SEQUENCE_LENGTH, len(SEQUENCE_CHANNELS)), dtype=np.float32)
    rows, cols = np.nonzero(keep)
    dest = slot[rows, cols]
    sequence[rows, dest, 0] = np.log1p(np.maximum(amounts[rows, cols], 0.0))
    sequence[rows, dest, 1] = np.log1p(age_ms[rows, cols] / MS_PER_SECOND)
    sequence[rows, dest, 2] = same_terminal[rows, cols]
    sequence[rows, dest, 3] = 1.0
    return columns, sequence


def _tabular(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """``TABULAR_COLUMNS`` side by side, each transformed (``log1p`` of the non-negative
    part, or as is): one stack and one transform for the whole batch, not one per column."""
    tabular = np.stack([columns[n] for n, _how in TABULAR_COLUMNS], axis=1).astype(np.float64)
    tabular[:, _LOG1P] = np.log1p(np.maximum(tabular[:, _LOG1P], 0.0))
    return tabular


def without_views(
    stored: Mapping[str, np.ndarray], unavailable: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """``stored`` with the rows of each unavailable view set to that view's defaults (a copy
    where anything changes): what the models see of a view that is stale or missing is
    "not known", never the old values. ``unavailable`` maps view names to ``[B]`` masks."""
    out = dict(stored)
    for group in FEATURE_GROUPS:
        rows = unavailable.get(group.name)
        if rows is None or not np.any(rows):
            continue
        for feature in group.features:
            if feature.name not in out or feature.dtype == "string_list":
                continue
            column = np.array(out[feature.name], copy=True)
            column[np.asarray(rows, dtype=bool)] = (
                0 if feature.dtype.endswith("_list") else feature.default
            )
            out[feature.name] = column
    return out


def assemble_model_inputs(
    stored: Mapping[str, np.ndarray],
    amount: np.ndarray,
    ts_ms: np.ndarray,
    terminal_id: np.ndarray,
    unavailable: Mapping[str, np.ndarray] | None = None,
) -> ModelInputs:
    """Build the model tensors from the request and the stored features of a batch.

    ``stored`` maps every name of :data:`FEATURE_GROUPS` to a column (``[B]`` or, for the
    ``card_recent`` lists, ``[B, RECENT_BUFFER]``), defaults already filled in.
    ``unavailable`` marks, per view, the rows whose view could not be used (stale, or the
    store away): they are decided as the models were taught to decide without that view
    (:func:`without_views`, and ``<view>_available`` = 0). Training and serving both call this
    function, so they cannot disagree on a transform.
    """
    batch = len(amount)
    unavailable = unavailable or {}
    if unavailable:
        stored = without_views(stored, unavailable)
    columns: dict[str, np.ndarray] = dict(request_features(amount, ts_ms))
    for group in (CARD_DAILY, TERMINAL_DAILY):
        for name in group.names:
            columns[name] = np.asarray(stored[name], dtype=np.float64)
    recent, sequence = derive_recent(
        stored["recent_ts_ms"],
        stored["recent_amounts"],
        stored["recent_terminal_ids"],
        ts_ms,
        terminal_id,
    )
    columns.update(recent)
    for window in CARD_WINDOWS_DAYS[1:]:
        columns[f"amount_to_card_mean_{window}d"] = columns["amount"] / (
            columns[f"card_amount_mean_{window}d"] + 1.0
        )
    columns["card_known"] = (columns["card_days_since_first_tx"] >= 0).astype(np.float64)
    columns["terminal_known"] = (columns["terminal_days_since_first_tx"] >= 0).astype(np.float64)
    for group in FEATURE_GROUPS:
        rows = unavailable.get(group.name)
        columns[f"{group.name}_available"] = (
            np.ones(batch) if rows is None else 1.0 - np.asarray(rows, dtype=np.float64)
        )
    tabular = _tabular(columns)
    category = np.asarray(stored["terminal_category"], dtype=np.int64)
    category = np.where((category >= 0) & (category <= len(MERCHANT_CATEGORIES)), category, 0)
    categorical = np.stack([category, columns["hour"], columns["weekday"]], axis=1)
    return ModelInputs(
        tabular=tabular.astype(np.float32),
        sequence=sequence,
        categorical=categorical.astype(np.int64),
        columns=columns,
    )


def default_stored(batch: int) -> dict[str, np.ndarray]:
    """Stored features of ``batch`` unknown entities: every default, every buffer empty."""
    out: dict[str, np.ndarray] = {}
    for feature in MODEL_STORED:
        if feature.dtype.endswith("_list"):
            dtype = np.int64 if feature.dtype.startswith("int64") else np.float32
            out[feature.name] = np.zeros((batch, RECENT_BUFFER), dtype=dtype)
        else:
            dtype = np.int64 if feature.dtype == "int64" else np.float32
            out[feature.name] = np.full(batch, feature.default, dtype=dtype)
    return out


#: Named columns that rules may read (request, stored daily and derived recent features).
RULE_COLUMNS = (
    "amount",
    "hour",
    "is_night",
    *CARD_DAILY.names,
    *(f"amount_to_card_mean_{w}d" for w in CARD_WINDOWS_DAYS[1:]),
    *(name for name in TERMINAL_DAILY.names if name != "terminal_category"),
    *RECENT_DERIVED,
    *PRESENCE,
)
