"""Quality and cost metrics of the fraud models, as the Fraud Detection Handbook reports
them: threshold-free (ROC-AUC, PR-AUC), operating-point (recall at 1% false-positive rate)
and investigator-centric (card precision@100 per day)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def recall_at_fpr(y: np.ndarray, scores: np.ndarray, fpr_limit: float = 0.01) -> float:
    """Highest recall reachable with a false-positive rate at most ``fpr_limit``."""
    fpr, tpr, _ = roc_curve(y, scores)
    return float(tpr[fpr <= fpr_limit].max())


def card_precision_at_k(
    day: np.ndarray, card: np.ndarray, y: np.ndarray, scores: np.ndarray, k: int = 100
) -> float:
    """Mean over days of the share of compromised cards among the ``k`` cards with the
    highest score that day (a card is scored by its riskiest transaction of the day)."""
    frame = pd.DataFrame({"day": day, "card": card, "y": y, "score": scores})
    per_card = frame.groupby(["day", "card"], sort=False).agg(
        score=("score", "max"), y=("y", "max")
    )
    daily = []
    for _, cards in per_card.groupby(level="day"):
        top = cards.nlargest(k, "score")
        daily.append(top["y"].sum() / k)
    return float(np.mean(daily)) if daily else float("nan")


def quality(
    y: np.ndarray, scores: np.ndarray, day: np.ndarray, card: np.ndarray
) -> dict[str, float]:
    """The report's quality columns for one model on the held-out rows."""
    return {
        "roc_auc": round(float(roc_auc_score(y, scores)), 4),
        "pr_auc": round(float(average_precision_score(y, scores)), 4),
        "recall_at_1pct_fpr": round(recall_at_fpr(y, scores), 4),
        "card_precision_at_100": round(card_precision_at_k(day, card, y, scores), 4),
    }


def microseconds_per_row(
    score_batch: Callable[[int, int], object], n_rows: int, batch: int, repeats: int = 200
) -> float:
    """Median wall time of ``score_batch(start, batch)`` divided by ``batch``, in µs.

    ``score_batch`` scores rows ``start .. start + batch`` of data prepared beforehand, so
    the measurement holds the model's own cost, not the data preparation.
    """
    starts = np.random.default_rng(0).integers(0, max(n_rows - batch, 1), repeats + 20)
    for s in starts[:20]:  # warm-up: allocations, lazy initialisation
        score_batch(int(s), batch)
    times = []
    for s in starts[20:]:
        t0 = time.perf_counter_ns()
        score_batch(int(s), batch)
        times.append(time.perf_counter_ns() - t0)
    return round(float(np.median(times)) / 1_000 / batch, 3)
