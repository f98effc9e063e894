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
    scorers: dict[str, Callable[[int, int], object]],
    n_rows: int,
    batch: int,
    rounds: int = 15,
    calls_per_round: int = 20,
) -> dict[str, float]:
    """Median wall time per row, in µs, of each ``scorer(start, batch)``, measured side by
    side: each round times every scorer for ``calls_per_round`` consecutive calls (caches
    warm, as in a dedicated model instance), the order rotating between rounds, so noise
    from a shared machine falls on all scorers alike and their ratios hold.

    A scorer scores rows ``start .. start + batch`` of data prepared beforehand, so the
    figure holds the model's own cost, not the data preparation.
    """
    names = list(scorers)
    rng = np.random.default_rng(0)
    times: dict[str, list[int]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            starts = rng.integers(0, max(n_rows - batch, 1), calls_per_round + 3)
            for s in starts[:3]:  # re-warm after the other scorers ran
                scorers[name](int(s), batch)
            for s in starts[3:]:
                t0 = time.perf_counter_ns()
                scorers[name](int(s), batch)
                times[name].append(time.perf_counter_ns() - t0)
    return {name: round(float(np.median(t)) / 1_000 / batch, 3) for name, t in times.items()}
