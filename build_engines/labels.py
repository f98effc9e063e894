"""The labels of the simulated world: who reports a transaction as fraud or genuine, and when.

Fraud labels arrive days to weeks after the decision, and not for every fraud:

* ``cardholder_report``: the card holder sees a charge they did not make on the statement
  or in the app and reports it; days (log-normal, median 2 days);
* ``chargeback``: the issuer's dispute of a fraud the card holder did not report at once;
  weeks, and a dispute can take more than 60 days (log-normal, median 20 days, about 3% after
  60 days);
* some fraud is never reported;
* ``decline_confirmation``: a declined transaction rarely gets a label. Here one in ten is
  confirmed (the issuer asks "was this you?", or a customer complains of a declined
  purchase), fraud or genuine alike, within a day or two. A declined transaction never gets
  a chargeback: no money moved;
* ``investigator_verdict``: the review queue (decisions of ``REVIEW``, the heavy model's
  queue) gets a verdict, fraud or genuine, within hours.

Genuine transactions get no label otherwise: they *mature*. A transaction older than the
maturity window (``build_engines.label_join``) with no fraud label is taken as genuine.

Reporters see the truth (``is_fraud``) and nothing else; the delays are drawn per
transaction from a generator seeded by the caller, so a run can be repeated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from python_backend.field_rules import LABEL_KINDS
from python_backend.fraud.features import MS_PER_DAY

CARDHOLDER, CHARGEBACK, DECLINE_CONFIRMATION, VERDICT = LABEL_KINDS


@dataclass(frozen=True)
class Delay:
    """A log-normal delay in days: ``median`` days, spread ``sigma`` (of the log)."""

    median_days: float
    sigma: float

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.median_days * np.exp(self.sigma * rng.standard_normal(n))

    def share_within(self, days: float) -> float:
        """The share of delays at most ``days`` (the log-normal's CDF)."""
        from math import erf, log, sqrt

        return 0.5 * (1 + erf(log(days / self.median_days) / (self.sigma * sqrt(2))))


@dataclass(frozen=True)
class LabelModel:
    """How likely and how late each kind of report is."""

    #: Share of approved frauds the card holder reports.
    cardholder_share: float = 0.6
    cardholder_delay: Delay = Delay(2.0, 0.9)
    #: Share of the approved frauds the card holder did not report that end in a chargeback.
    chargeback_share: float = 0.7
    chargeback_delay: Delay = Delay(20.0, 0.6)
    #: Share of declined transactions confirmed either way.
    decline_confirmation_share: float = 0.1
    decline_confirmation_delay: Delay = Delay(1.0, 0.7)
    verdict_delay: Delay = Delay(0.4, 0.6)

    def reported_share(self) -> float:
        """The share of approved frauds that are ever reported."""
        return self.cardholder_share + (1 - self.cardholder_share) * self.chargeback_share

    def reported_within(self, days: float) -> float:
        """The share of approved frauds reported within ``days`` of the transaction."""
        return self.cardholder_share * self.cardholder_delay.share_within(days) + (
            1 - self.cardholder_share
        ) * self.chargeback_share * self.chargeback_delay.share_within(days)


LABEL_COLUMNS = ("transaction_id", "kind", "is_fraud", "ts_ms", "reported_ms")


def simulate_labels(
    transactions: pd.DataFrame,
    declined: np.ndarray,
    reviewed: np.ndarray,
    seed: int,
    model: LabelModel | None = None,
) -> pd.DataFrame:
    """The labels reported of ``transactions`` (``transaction_id``, ``ts_ms``, ``is_fraud``),
    given which were declined and which went to an investigator (boolean masks over the rows).

    One row per report (``LABEL_COLUMNS``), in order of ``reported_ms``; a transaction may
    have two (a verdict, then the card holder's report).
    """
    model = model or LabelModel()
    n = len(transactions)
    declined = np.asarray(declined, dtype=bool)
    reviewed = np.asarray(reviewed, dtype=bool) & ~declined
    fraud = transactions["is_fraud"].to_numpy().astype(bool)
    rng = np.random.default_rng(seed)
    # One draw per (row, reporter), always made, so a change of one mask leaves the others'
    # delays and choices as they were.
    u_holder, u_charge, u_confirm = rng.random(n), rng.random(n), rng.random(n)
    delays = {
        CARDHOLDER: model.cardholder_delay.draw(rng, n),
        CHARGEBACK: model.chargeback_delay.draw(rng, n),
        DECLINE_CONFIRMATION: model.decline_confirmation_delay.draw(rng, n),
        VERDICT: model.verdict_delay.draw(rng, n),
    }
    approved_fraud = fraud & ~declined
    holder = approved_fraud & (u_holder < model.cardholder_share)
    chosen = {
        CARDHOLDER: holder,
        CHARGEBACK: approved_fraud & ~holder & (u_charge < model.chargeback_share),
        DECLINE_CONFIRMATION: declined & (u_confirm < model.decline_confirmation_share),
        VERDICT: reviewed,
    }
    ts = transactions["ts_ms"].to_numpy().astype(np.int64)
    ids = transactions["transaction_id"].astype(str).to_numpy()
    parts = []
    for kind, mask in chosen.items():
        rows = np.flatnonzero(mask)
        parts.append(
            pd.DataFrame(
                {
                    "transaction_id": ids[rows],
                    "kind": kind,
                    "is_fraud": fraud[rows].astype(np.int8),
                    "ts_ms": ts[rows],
                    # At least a minute after the transaction: nobody reports the future.
                    "reported_ms": ts[rows]
                    + np.maximum(delays[kind][rows] * MS_PER_DAY, 60_000).astype(np.int64),
                }
            )
        )
    labels = pd.concat(parts, ignore_index=True)
    return labels.sort_values("reported_ms", kind="stable").reset_index(drop=True)
