"""Open-world slices of the held-out days, and what each model does on them.

A model that is right on the cards and terminals it has known for months can still decline
half the customers of a merchant onboarded today. The report therefore judges every model
on the slices where the store knows little, defined from the transaction log itself (not
from the features, so a feature bug cannot hide a slice):

* ``all``: every held-out transaction;
* ``new_terminal``: the terminal's first transaction is under ``NEW_WITHIN_DAYS`` days before
  the day's midnight (a merchant onboarded this week; on its first day the store has no
  row for it at all);
* ``new_card``: the same for the card (issued or replaced this week);
* ``returning_card``: the card's previous transaction is at least 30 days old;
* ``both_new``: a new card at a new terminal;
* ``stale_store``: every held-out transaction decided with the daily views and the recent
  buffers unavailable, as serving decides when the store has gone stale.

Per slice and model: rows, frauds, PR-AUC, recall at 1% FPR, and the shares of genuine
transactions declined and flagged (review or decline) at the thresholds served.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from build_engines.metrics import recall_at_fpr
from python_backend.fraud.features import MS_PER_DAY

SLICES = ("all", "new_terminal", "new_card", "returning_card", "both_new", "stale_store")
#: A card is "returning" when its previous transaction is at least this old.
RETURNING_AFTER_DAYS = 30
#: A card or terminal is "new" while its history in the store is shorter than this.
NEW_WITHIN_DAYS = 7
#: The report's targets for cold-start slices (relative to the whole holdout, and absolute).
DECLINED_MAX_RATIO, DECLINED_MAX_SHARE, FLAGGED_MAX_RATIO = 2.0, 0.02, 3.0


def slice_masks(events: pd.DataFrame, rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """Boolean masks over ``rows`` (a subset of ``events``, with its index) per slice
    (``stale_store`` is all rows: its difference is in the features, not the rows)."""
    first_card = events.groupby("card_id")["ts_ms"].min()
    first_terminal = events.groupby("terminal_id")["ts_ms"].min()
    midnight = rows["ts_ms"].to_numpy() // MS_PER_DAY * MS_PER_DAY
    since = midnight - NEW_WITHIN_DAYS * MS_PER_DAY
    new_card = first_card.loc[rows["card_id"]].to_numpy() >= since
    new_terminal = first_terminal.loc[rows["terminal_id"]].to_numpy() >= since
    ordered = events.sort_values(["card_id", "ts_ms"], kind="stable")
    previous = ordered.groupby("card_id")["ts_ms"].shift(1)
    gap_ms = (ordered["ts_ms"] - previous).reindex(rows.index).to_numpy()
    returning = np.nan_to_num(gap_ms, nan=0.0) >= RETURNING_AFTER_DAYS * MS_PER_DAY
    everything = np.ones(len(rows), dtype=bool)
    return {
        "all": everything,
        "new_terminal": new_terminal,
        "new_card": new_card,
        "returning_card": returning,
        "both_new": new_card & new_terminal,
        "stale_store": everything,
    }


def expected_calibration_error(y: np.ndarray, scores: np.ndarray, bins: int = 15) -> float:
    """Mean |observed fraud rate - mean score| over equal-width score bins, weighted by
    the rows in each bin."""
    y = np.asarray(y, dtype=np.float64)
    scores = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    which = np.minimum((scores * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(y[inside].mean() - scores[inside].mean())
    return round(float(total), 5)


def slice_quality(y: np.ndarray, scores: np.ndarray, thresholds: dict[str, float]) -> dict:
    """The report's columns for one model on one slice."""
    genuine = y == 0
    frauds = int(y.sum())
    ranked = 0 < frauds < len(y)
    declined = scores >= thresholds["decline"]
    flagged = scores >= thresholds["review"]
    return {
        "rows": len(y),
        "frauds": frauds,
        "pr_auc": round(float(average_precision_score(y, scores)), 4) if ranked else None,
        "recall_at_1pct_fpr": round(recall_at_fpr(y, scores), 4) if ranked else None,
        "genuine_declined": round(float(declined[genuine].mean()), 5) if genuine.any() else None,
        "genuine_flagged": round(float(flagged[genuine].mean()), 5) if genuine.any() else None,
    }


def evaluate(
    y: np.ndarray,
    masks: dict[str, np.ndarray],
    scores: dict[str, np.ndarray],
    stale_scores: dict[str, np.ndarray],
    thresholds: dict[str, dict[str, float]],
) -> dict[str, dict[str, dict]]:
    """``slices.<slice>.<model>`` for every model with scores and thresholds."""
    out: dict[str, dict[str, dict]] = {}
    for name in SLICES:
        mask = masks[name]
        source = stale_scores if name == "stale_store" else scores
        out[name] = {
            model: slice_quality(y[mask], values[mask], thresholds[model])
            for model, values in source.items()
            if model in thresholds
        }
    return out


def targets(slices: dict[str, dict[str, dict]], primary: str = "primary_fp32") -> dict:
    """The issue's targets, checked from the slice table (reported, never asserted in a
    timed test): cold-start declines and flags against the whole holdout, and the primary
    at least as good as the GBDT baseline on every slice."""
    whole = slices["all"][primary]
    checks: dict[str, dict] = {}
    for name in ("new_terminal", "new_card", "returning_card", "both_new"):
        row = slices[name].get(primary)
        base = slices[name].get("gbdt_baseline")
        if not row or row["genuine_declined"] is None:
            continue
        declined_limit = min(DECLINED_MAX_RATIO * whole["genuine_declined"], DECLINED_MAX_SHARE)
        checks[name] = {
            "declined_ok": row["genuine_declined"] <= declined_limit,
            "flagged_ok": row["genuine_flagged"] <= FLAGGED_MAX_RATIO * whole["genuine_flagged"],
            "pr_auc_vs_baseline": None
            if row["pr_auc"] is None or not base or base["pr_auc"] is None
            else round(row["pr_auc"] - base["pr_auc"], 4),
        }
    return checks
