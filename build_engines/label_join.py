"""The point-in-time label join: what was served, joined with what was reported by a time.

A training set as of ``as_of_ms`` is built from two logs and nothing else:

* the decision log's records (what the service decided, and the model inputs it assembled,
  ``python_backend.fraud.served``). The features are the served ones, never recomputed: a
  feature store read after serving may hold values the service could not have seen (events
  that arrived late, a snapshot materialized again);
* the labels (``build_engines.labels``), only those reported at or before ``as_of_ms``.

A transaction is

* **fraud** once a fraud label is reported by then;
* **genuine** once a genuine label is reported by then (an investigator's verdict, a
  confirmed decline), or once it is older than the maturity window with no fraud label;
* **neither** while it is younger than the maturity window: it leaves the set whatever its
  labels (its frauds are reported, its genuine ones not yet: keeping them would make the
  newest days look fraudulent).

**Declined transactions** are the selection bias: the service's own declines are the riskiest
rows, and they rarely get a label (no chargeback, no statement line). Taken as genuine when
they mature (``declined="genuine"``), the declined frauds teach the next model that what the
last one declined is fine. ``"dropped"`` leaves unlabelled declines out (the high-risk region
then holds only confirmed ones, under-weighted); ``"weighted"`` leaves them out and weights each
*confirmed* decline by the inverse of the share of declines confirmed, so the declined region
counts as much as it was served, its labels from an unbiased sample (the confirmations do not
depend on the outcome); ``"imputed"`` (the default) keeps every decline: a confirmed one with
its label, an unlabelled one twice, as fraud weighted by the fraud share of the confirmed
declines and as genuine weighted by the rest (the expected loss of its unknown label).
``build_engines.selection_bias`` measures the four.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from python_backend.fraud import served
from python_backend.fraud.features import MS_PER_DAY, ModelInputs

DECLINED_POLICIES = ("genuine", "dropped", "weighted", "imputed")
#: ``imputed`` needs this many confirmed declines to estimate their fraud share; with fewer it
#: falls back to ``dropped`` (and says so in the facts).
MIN_CONFIRMED_DECLINES = 20


@dataclass(frozen=True)
class JoinPolicy:
    #: A transaction with no fraud label is genuine once this old (90%+ of the frauds that
    #: will ever be reported are by then, under ``LabelModel``'s delays).
    maturity_days: float = 30.0
    declined: str = "imputed"

    def __post_init__(self) -> None:
        if self.declined not in DECLINED_POLICIES:
            raise ValueError(
                f"declined: {self.declined!r} is not one of {', '.join(DECLINED_POLICIES)}"
            )
        if self.maturity_days < 0:
            raise ValueError(f"maturity_days: must be >= 0, got {self.maturity_days}")


@dataclass
class LabelledSet:
    """Rows of the served log with a label as of the join's time, and their weights."""

    inputs: ModelInputs
    y: np.ndarray
    weight: np.ndarray
    transaction_id: np.ndarray
    ts_ms: np.ndarray
    card_id: np.ndarray
    decision: np.ndarray
    #: What the join did: counts of rows and labels, the declines' confirmation share.
    facts: dict = field(default_factory=dict)
    #: Rows whose label is imputed (an unlabelled decline, once as fraud and once as genuine,
    #: weighted by the declines' fraud share): train on them, never validate on them.
    imputed: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.imputed is None:
            self.imputed = np.zeros(len(self.y), dtype=bool)

    def __len__(self) -> int:
        return len(self.y)

    def within(self, lo_ms: int, hi_ms: int) -> LabelledSet:
        """The rows of transactions in ``[lo_ms, hi_ms)``."""
        return self.within_rows(np.flatnonzero((self.ts_ms >= lo_ms) & (self.ts_ms < hi_ms)))

    def observed(self) -> LabelledSet:
        """The rows with a label that was reported or matured (no imputed ones)."""
        return self.within_rows(np.flatnonzero(~self.imputed))

    def within_rows(self, rows: np.ndarray) -> LabelledSet:
        return LabelledSet(
            self.inputs.take(rows),
            self.y[rows],
            self.weight[rows],
            self.transaction_id[rows],
            self.ts_ms[rows],
            self.card_id[rows],
            self.decision[rows],
            dict(self.facts),
            self.imputed[rows],
        )


def first_served(records: pd.DataFrame) -> pd.DataFrame:
    """One record per transaction: the first decided (a retried request is decided twice; the
    caller was answered by one of them, and both saw what the store held then)."""
    order = records.sort_values(["decided_at_ms", "decision_id"], kind="stable")
    return order.drop_duplicates("transaction_id", keep="first").reset_index(drop=True)


def join(
    records: pd.DataFrame,
    labels: pd.DataFrame,
    as_of_ms: int,
    policy: JoinPolicy = JoinPolicy(),
) -> LabelledSet:
    """The training set as of ``as_of_ms`` from decision-log ``records`` (with ``inputs``) and
    ``labels`` (``build_engines.labels.LABEL_COLUMNS``); see the module's text."""
    if "inputs" not in records:
        raise ValueError(
            "the decision log's records carry no model inputs: serve with DECISION_LOG_INPUTS=1 "
            "(the default) to train on what was served"
        )
    records = records[records["inputs"].notna()]
    # Decisions made after the as-of time do not exist yet.
    records = first_served(records[records["ts_ms"] <= as_of_ms])
    known = labels[labels["reported_ms"] <= as_of_ms]
    ignored_late = int(len(labels) - len(known))
    fraud_ids = set(known.loc[known["is_fraud"] == 1, "transaction_id"])
    genuine_ids = set(known.loc[known["is_fraud"] == 0, "transaction_id"]) - fraud_ids

    tx = records["transaction_id"].to_numpy()
    ts = records["ts_ms"].to_numpy().astype(np.int64)
    decision = records["decision"].to_numpy()
    is_fraud = np.fromiter((t in fraud_ids for t in tx), dtype=bool, count=len(tx))
    is_genuine = np.fromiter((t in genuine_ids for t in tx), dtype=bool, count=len(tx))
    labelled = is_fraud | is_genuine
    mature = ts <= as_of_ms - policy.maturity_days * MS_PER_DAY
    declined = decision == "DECLINE"

    weight = np.ones(len(tx))
    keep = mature.copy()
    mature_declined = mature & declined
    confirmed = mature_declined & labelled
    confirmed_share = confirmed.sum() / max(mature_declined.sum(), 1)
    unlabelled_declines = mature & declined & ~labelled
    # The confirmations are a random share of the declines: their fraud share estimates the
    # unlabelled declines' without bias.
    fraud_share = float(is_fraud[confirmed].mean()) if confirmed.any() else float("nan")
    imputing = policy.declined == "imputed" and confirmed.sum() >= MIN_CONFIRMED_DECLINES
    if policy.declined != "genuine":
        keep &= ~unlabelled_declines
    if policy.declined == "weighted" and confirmed.any():
        weight[confirmed] = 1.0 / confirmed_share
    rows = np.flatnonzero(keep)
    y = is_fraud[rows].astype(np.int64)
    imputed = np.zeros(len(rows), dtype=bool)
    row_weight = weight[rows]
    if imputing:
        extra = np.flatnonzero(unlabelled_declines)
        rows = np.concatenate([rows, extra, extra])
        y = np.concatenate([y, np.ones(len(extra), np.int64), np.zeros(len(extra), np.int64)])
        row_weight = np.concatenate(
            [row_weight, np.full(len(extra), fraud_share), np.full(len(extra), 1 - fraud_share)]
        )
        imputed = np.concatenate([imputed, np.ones(2 * len(extra), dtype=bool)])
    facts = {
        "as_of_ms": int(as_of_ms),
        "policy": {"maturity_days": policy.maturity_days, "declined": policy.declined},
        "imputed_declines": int(unlabelled_declines.sum()) if imputing else 0,
        "declined_fraud_share_estimate": round(fraud_share, 4) if confirmed.any() else None,
        "served": len(tx),
        "young": int((~mature).sum()),
        "young_with_fraud_label": int((~mature & is_fraud).sum()),
        "rows": int((~imputed).sum()),
        "fraud": int(y[~imputed].sum()),
        "genuine_by_label": int((is_genuine & keep).sum()),
        "genuine_by_maturity": int((keep & ~labelled).sum()),
        "declined_mature": int(mature_declined.sum()),
        "declined_confirmed": int(confirmed.sum()),
        "declined_confirmed_share": round(float(confirmed_share), 4),
        "labels_known": len(known),
        "labels_reported_after_as_of": ignored_late,
    }
    inputs = served.decode(list(records["inputs"].iloc[rows]))
    if policy.declined == "imputed" and not imputing:
        facts["imputed_fallback"] = (
            f"{int(confirmed.sum())} confirmed declines (under {MIN_CONFIRMED_DECLINES}): "
            "unlabelled declines dropped"
        )
    return LabelledSet(
        inputs,
        y,
        row_weight,
        tx[rows],
        ts[rows],
        records["card_id"].to_numpy()[rows],
        decision[rows],
        facts,
        imputed,
    )
