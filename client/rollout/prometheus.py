"""What a rollout reads from Prometheus: a small client of its HTTP query API
(``Prometheus``), one version's calls over a step's window (``measure``: rows by outcome, p99
call time, the score histogram) and every decision's health over it (``service_health``: the
share over budget and off the primary path), and live traffic's drift from the training
window (``drift``, from the analysis consumer's metrics). Histograms come back as
Prometheus's cumulative ``le`` buckets; ``_buckets`` and ``_quantile`` read them as counts
and as a quantile.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from python_backend.fraud.rollout import SCORE_BUCKETS
from python_backend.fraud.scoring import DEFAULT_BUDGET_MS


@dataclass
class Prometheus:
    url: str  # http://host:port

    def query(self, expr: str, at: float) -> list[dict]:
        import urllib.parse
        import urllib.request

        query = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{query}", timeout=10) as answer:
            body = json.loads(answer.read())
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus refused {expr!r}: {body.get('error', body)}")
        return body["data"]["result"]

    def by(self, expr: str, label: str, at: float) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr, at)}

    def scalar(self, expr: str, at: float) -> float:
        result = self.query(expr, at)
        return float(result[0]["value"][1]) if result else 0.0


def _buckets(cumulative: dict[str, float], bounds: tuple) -> np.ndarray:
    """Per-bucket counts from Prometheus's cumulative ``le`` buckets (+Inf last)."""
    values = [cumulative.get(f"{b:g}", 0.0) for b in bounds] + [cumulative.get("+Inf", 0.0)]
    return np.diff(np.array([0.0, *values]))


def _quantile(cumulative: dict[str, float], q: float) -> float | None:
    """``histogram_quantile`` of cumulative buckets (linear within a bucket), in ms."""
    from python_backend.fraud.metrics import LATENCY_BUCKETS

    counts = np.array([cumulative.get(f"{b:g}", 0.0) for b in LATENCY_BUCKETS])
    total = cumulative.get("+Inf", 0.0)
    if total <= 0:
        return None
    rank = q * total
    k = int(np.searchsorted(counts, rank))
    if k >= len(LATENCY_BUCKETS):
        return LATENCY_BUCKETS[-1] * 1000
    lower = LATENCY_BUCKETS[k - 1] if k else 0.0
    below = counts[k - 1] if k else 0.0
    share = (rank - below) / max(counts[k] - below, 1e-9)
    return (lower + (LATENCY_BUCKETS[k] - lower) * share) * 1000


def measure(prometheus: Prometheus, role: str, version: str, start: float, end: float) -> dict:
    """A version's calls in the window: rows by outcome, p99 call time, score histogram."""
    window = f"{max(1, round(end - start))}s"
    match = f'role="{role}",version="{version}"'
    rows = prometheus.by(
        f"sum by (outcome) (increase(fraud_model_rows_total{{{match}}}[{window}]))",
        "outcome",
        end,
    )
    seconds = prometheus.by(
        f"sum by (le) (increase(fraud_model_seconds_bucket{{{match}}}[{window}]))", "le", end
    )
    scores = prometheus.by(
        f"sum by (le) (increase(fraud_model_score_bucket{{{match}}}[{window}]))", "le", end
    )
    total = sum(rows.values())
    failed = total - rows.get("ok", 0.0)
    return {
        "rows": round(total, 1),
        "failed_share": round(failed / total, 4) if total else None,
        "outcomes": {k: round(v, 1) for k, v in rows.items()},
        "p99_ms": _quantile(seconds, 0.99),
        "scores": _buckets(scores, SCORE_BUCKETS).round(1).tolist(),
    }


def service_health(prometheus: Prometheus, start: float, end: float) -> dict:
    """Every decision of the window: the share over budget and off the primary path."""
    window = f"{max(1, round(end - start))}s"
    budget = f"{DEFAULT_BUDGET_MS / 1000:g}"
    decided = prometheus.scalar(f"sum(increase(fraud_decision_seconds_count[{window}]))", end)
    within = prometheus.scalar(
        f'sum(increase(fraud_decision_seconds_bucket{{le="{budget}"}}[{window}]))', end
    )
    by_path = prometheus.by(
        f"sum by (path) (increase(fraud_decisions_total[{window}]))", "path", end
    )
    paths = sum(by_path.values())
    return {
        "decisions": round(decided, 1),
        "over_budget_share": round(1 - within / decided, 4) if decided else None,
        "degraded_share": round(1 - by_path.get("primary", 0.0) / paths, 4) if paths else None,
    }


def drift(prometheus: Prometheus, at: float) -> dict:
    """Live traffic against the primary's training window at the end of a step, from the
    analysis consumer's drift metrics (``python_backend.fraud.drift``): the score's PSI, the
    largest input PSI and the three inputs that moved most. Empty where no consumer exports
    them (the rollout does not depend on it)."""
    try:
        rows = prometheus.scalar("max(fraud_analysis_drift_window_rows)", at)
        if not rows:
            return {}
        top = prometheus.by("topk(3, fraud_analysis_drift_psi)", "feature", at)
        return {
            "window_rows": int(rows),
            "score_psi": round(prometheus.scalar("max(fraud_analysis_drift_score_psi)", at), 4),
            "max_input_psi": round(max(top.values()), 4) if top else None,
            "top_inputs": {k: round(v, 4) for k, v in sorted(top.items(), key=lambda kv: -kv[1])},
        }
    except OSError:
        return {}
