"""The fraud decision's steps, without Triton: validation, features, thresholds and reason
codes. ``python_backend.fraud`` puts them together with the model ladder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The value rules live in the core, shared with the stream's events; their limits are
# re-exported here, where callers of the request path have always found them.
from python_backend.field_rules import ID_LENGTH, TRANSACTION
from python_backend.field_rules import MAX_AMOUNT as MAX_AMOUNT
from python_backend.field_rules import MAX_FUTURE_MS as MAX_FUTURE_MS
from python_backend.field_rules import MAX_ID_BYTES as MAX_ID_BYTES
from python_backend.field_rules import MIN_TIMESTAMP_MS as MIN_TIMESTAMP_MS
from python_backend.fraud.contract import DECISIONS, PATHS, SCORING
from python_backend.fraud.features import (
    CARD_RECENT,
    FEATURE_GROUPS,
    STREAM_HEARTBEAT_ID,
    STREAM_MAX_SILENCE_MS,
    ModelInputs,
    assemble_model_inputs,
)
from python_backend.fraud.online import OnlineFeatureReader, OnlineFeatures, empty_features
from python_backend.fraud.reasons import UNKNOWN_CARD, UNKNOWN_TERMINAL, stale_code
from python_backend.fraud.rules import RuleSet
from python_backend.parameters import FRAUD_BUDGET_MS

#: Default latency budget of one request, end to end inside the server (``parameters``).
DEFAULT_BUDGET_MS = FRAUD_BUDGET_MS
#: Each transaction field (``field_rules.TRANSACTION``) and the ``SCORING`` input carrying it.
FIELD_INPUTS = {
    "transaction_id": "TRANSACTION_ID",
    "card_id": "CARD_ID",
    "terminal_id": "TERMINAL_ID",
    "amount": "AMOUNT",
    "ts_ms": "TIMESTAMP_MS",
}


class InvalidRequest(ValueError):
    """A request the service cannot score; the message names the field and the rule."""


@dataclass
class Transactions:
    """Validated request columns, one row per transaction."""

    transaction_id: list[str]
    card_id: np.ndarray
    terminal_id: np.ndarray
    amount: np.ndarray
    timestamp_ms: np.ndarray

    def __len__(self) -> int:
        return len(self.card_id)

    @classmethod
    def from_rows(cls, rows: list[dict]) -> Transactions:
        """Rows as the JSON peers take them: ``transaction_id``, ``card_id``,
        ``terminal_id``, ``amount``, ``ts_ms`` (already validated by their schema)."""
        return cls(
            [str(r["transaction_id"]) for r in rows],
            np.array([r["card_id"] for r in rows], dtype=np.int64),
            np.array([r["terminal_id"] for r in rows], dtype=np.int64),
            np.array([r["amount"] for r in rows], dtype=np.float32),
            np.array([r["ts_ms"] for r in rows], dtype=np.int64),
        )

    @classmethod
    def concat(cls, parts: list[Transactions]) -> Transactions:
        """The rows of several requests as one batch, in order."""
        return cls(
            [t for p in parts for t in p.transaction_id],
            np.concatenate([p.card_id for p in parts]),
            np.concatenate([p.terminal_id for p in parts]),
            np.concatenate([p.amount for p in parts]),
            np.concatenate([p.timestamp_ms for p in parts]),
        )

    def take(self, rows: list[int]) -> Transactions:
        return Transactions(
            [self.transaction_id[i] for i in rows],
            self.card_id[rows],
            self.terminal_id[rows],
            self.amount[rows],
            self.timestamp_ms[rows],
        )


def validate(
    arrays: dict[str, np.ndarray | None], now_ms: int | None = None
) -> tuple[Transactions, list[str | None]]:
    """Check a request against the contract.

    A request whose tensors do not fit (missing input, wrong dtype or shape, no rows) raises
    :class:`InvalidRequest`. Rows that break a value rule do not stop the others: each gets
    its message (naming the field, the row and the rule) in the returned list, None for
    valid rows.
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    columns = {}
    rows = None
    for spec in SCORING.inputs:
        array = arrays.get(spec.name)
        if array is None:
            raise InvalidRequest(f"{spec.name}: missing input")
        if spec.dtype is np.object_:
            if array.dtype != np.object_:
                raise InvalidRequest(f"{spec.name}: must be BYTES, got {array.dtype}")
        elif array.dtype != spec.dtype:
            raise InvalidRequest(
                f"{spec.name}: must be {np.dtype(spec.dtype).name.upper()}, got {array.dtype}"
            )
        if array.ndim != 2 or array.shape[1:] != spec.dims:
            raise InvalidRequest(f"{spec.name}: shape must be [batch, 1], got {list(array.shape)}")
        if rows is None:
            rows, first = len(array), spec.name
        if len(array) != rows:
            raise InvalidRequest(
                f"{spec.name}: {len(array)} rows, but {first} has {rows}; every input needs "
                "one row per transaction"
            )
        columns[spec.name] = array[:, 0]
    if not rows:
        raise InvalidRequest("batch: must hold at least one transaction")
    errors: list[str | None] = [None] * rows
    # Each field's column as its rules read it: ids as bytes, amounts as float64 (as the
    # events' are), the others as sent.
    raw_ids = np.empty(rows, dtype=np.object_)
    raw_ids[:] = [r if isinstance(r, bytes) else str(r).encode() for r in columns["TRANSACTION_ID"]]
    amount = columns["AMOUNT"].astype(np.float64)
    values = {field: columns[name] for field, name in FIELD_INPUTS.items()}
    values.update(transaction_id=raw_ids, amount=amount)
    broken = {}
    for field in TRANSACTION:
        name = FIELD_INPUTS[field.name]
        for rule in field.rules:  # in order: a row's first broken rule is its message
            mask = broken[field.name, rule] = rule.breaks(values[field.name], now_ms)
            if mask.any():  # seldom: the rows that broke it, one by one
                for i in np.flatnonzero(mask):
                    errors[i] = errors[i] or f"{name}[{i}]: {rule.wording}"
    ids = [
        "" if short else r.decode("utf-8", errors="replace")
        for r, short in zip(raw_ids, broken["transaction_id", ID_LENGTH], strict=True)
    ]
    ts = columns["TIMESTAMP_MS"]
    transactions = Transactions(
        ids,
        columns["CARD_ID"].astype(np.int64),
        columns["TERMINAL_ID"].astype(np.int64),
        np.nan_to_num(amount, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32),
        ts.astype(np.int64),
    )
    return transactions, errors


@dataclass(frozen=True)
class DecisionPolicy:
    """Per path: the score at which a transaction goes to REVIEW, and to DECLINE."""

    thresholds: dict[str, dict[str, float]]

    @classmethod
    def load(cls, path: Path) -> DecisionPolicy:
        """``decision_policy.json``, written by ``make engines`` from the validation days."""
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run `make engines`")
        thresholds = json.loads(path.read_text())["thresholds"]
        for name in PATHS:
            if name not in thresholds:
                raise ValueError(f"{path}: no thresholds for path {name!r}")
        return cls(thresholds)

    def decide_codes(self, scores: np.ndarray, path: str) -> np.ndarray:
        """Per row the index into ``DECISIONS``: 0 APPROVE, 1 REVIEW, 2 DECLINE."""
        t = self.thresholds[path]
        scores = np.asarray(scores)
        return (scores >= t["review"]).astype(np.int64) + (scores >= t["decline"])

    def decide(self, scores: np.ndarray, path: str) -> list[str]:
        return [DECISIONS[c] for c in self.decide_codes(scores, path)]


def read_features(
    reader: OnlineFeatureReader | None,
    tx: Transactions,
    reasons: list[list[str]],
    on_error: Callable[[Exception], None] | None = None,
    cache: OnlineFeatureReader | None = None,
) -> tuple[OnlineFeatures, bool]:
    """Online features and whether the store answered: when it cannot (or ``reader`` is
    None: its circuit is open, ``cache`` the reader not asked), the daily views its cache
    holds (``from_cache``), else every default, and False; unknown entities get defaults
    and a reason in their row, never an error."""
    if reader is None:
        return _cached_or_empty(cache, tx), False
    try:
        features = reader.read(tx.card_id, tx.terminal_id)
    except Exception as err:  # any store failure: decide on defaults, say so
        if on_error is not None:
            on_error(err)
        return _cached_or_empty(reader, tx), False
    for i in np.flatnonzero(~features.card_found):
        reasons[i].append(UNKNOWN_CARD)
    for i in np.flatnonzero(~features.terminal_found):
        reasons[i].append(UNKNOWN_TERMINAL)
    return features, True


def _cached_or_empty(reader: OnlineFeatureReader | None, tx: Transactions) -> OnlineFeatures:
    cached = None if reader is None else reader.cached_features(tx.card_id, tx.terminal_id)
    return cached if cached is not None else empty_features(len(tx))


def stale_views(tx: Transactions, features: OnlineFeatures) -> dict[str, np.ndarray]:
    """Per view with a freshness limit, the rows whose stored row is older than it at the
    transaction's time (a materialization missed): ``[B]`` masks, only views with any."""
    out = {}
    for group in FEATURE_GROUPS:
        event_ms = features.event_ms.get(group.name)
        if group.freshness_ms is None or event_ms is None:
            continue
        stale = (event_ms > 0) & (tx.timestamp_ms - event_ms > group.freshness_ms)
        if stale.any():
            out[group.name] = stale
    return out


class StreamHeartbeat:
    """Whether the stream consumer that keeps ``card_recent`` current is alive: it stamps
    the row of card ``STREAM_HEARTBEAT_ID`` with the wall-clock time of each poll (every
    5 s); older than ``max_silence_ms`` means it stopped, and every recent buffer is stale.
    No heartbeat at all (no consumer ever ran: the buffers are a materialized snapshot)
    is not judged. Read at most every ``check_every_s``, not per request."""

    def __init__(
        self,
        reader: OnlineFeatureReader,
        max_silence_ms: float = STREAM_MAX_SILENCE_MS,
        check_every_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reader = reader
        self.max_silence_ms = max_silence_ms
        self.check_every_s = check_every_s
        self.clock = clock
        self.beat_ms = 0
        self._checked_at = float("-inf")

    def stale(self) -> bool:
        now = self.clock()
        if now - self._checked_at >= self.check_every_s:
            self._checked_at = now
            try:
                read = self.reader.read(np.array([STREAM_HEARTBEAT_ID], dtype=np.int64), None)
                self.beat_ms = int(read.event_ms[CARD_RECENT.name][0])
            except Exception:  # the store is away: the feature read itself will say so
                pass
        return self.beat_ms > 0 and now * 1000 - self.beat_ms > self.max_silence_ms


def unavailable_views(
    tx: Transactions,
    features: OnlineFeatures,
    ok: bool,
    reasons: list[list[str]],
    stream_stale: bool = False,
) -> dict[str, np.ndarray]:
    """What the models must decide without: every view when the store did not answer,
    else the stale views (``stream_stale``: the recent buffers, all rows), each stale row
    told so (``FEATURES_STALE:<view>``)."""
    if not ok and not features.from_cache:
        everything = np.ones(len(tx), dtype=bool)
        return {g.name: everything for g in FEATURE_GROUPS}
    stale = stale_views(tx, features)
    if not ok:  # the cache's daily views, where it held them and they are fresh; no recent
        held = {"card_id": features.card_found, "terminal_id": features.terminal_found}
        out = {g.name: ~held[g.entity] | stale.get(g.name, False) for g in FEATURE_GROUPS}
        out[CARD_RECENT.name] = np.ones(len(tx), dtype=bool)
        return out
    if stream_stale:
        stale[CARD_RECENT.name] = np.ones(len(tx), dtype=bool)
    for view, rows in stale.items():
        for i in np.flatnonzero(rows):
            reasons[i].append(stale_code(view))
    return stale


def model_inputs(
    tx: Transactions, features: OnlineFeatures, unavailable: dict[str, np.ndarray] | None = None
) -> ModelInputs:
    return assemble_model_inputs(
        features.stored, tx.amount, tx.timestamp_ms, tx.terminal_id, unavailable
    )


def rules_outcome(rules: RuleSet, inputs: ModelInputs) -> tuple[np.ndarray, list[list[str]]]:
    decision = rules.evaluate(inputs.columns)
    return decision.scores, decision.reasons


def reasons_json(reasons: list[str]) -> bytes:
    """Reason codes as the JSON list the contract promises, without duplicates."""
    return json.dumps(list(dict.fromkeys(reasons))).encode()
