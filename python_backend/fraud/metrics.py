"""The BLS's custom Prometheus metrics (Triton's ``pb_utils.MetricFamily``), counted in
process and handed to Triton at most every ``flush_s``: each metric call is a round trip to
the Triton process."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np

from python_backend.breaker import STATE_CODES, CircuitBreaker
from python_backend.fraud.contract import DECISIONS
from python_backend.fraud.reasons import is_ladder_degradation
from python_backend.fraud.service import Batch

FAMILIES = {
    "decisions": ("fraud_decisions_total", "Decisions by path and decision", "COUNTER"),
    "reasons": (
        "fraud_degradations_total",
        "Transactions that met a degradation, by reason",
        "COUNTER",
    ),
    "stale": (
        "fraud_features_stale_total",
        "Transactions decided without a feature view that was stale, by view",
        "COUNTER",
    ),
    "breakers": (
        "fraud_breaker_state",
        "Circuit breaker state: 0 closed, 1 half-open, 2 open",
        "GAUGE",
    ),
    "published": (
        "fraud_published_total",
        "Scored transactions handed to Kafka, by outcome",
        "COUNTER",
    ),
    "logged": (
        "fraud_decision_log_total",
        "Decision-log records by outcome: delivered, spooled, replayed, dropped (spool full)",
        "COUNTER",
    ),
    "spool": (
        "fraud_decision_log_spooled",
        "Decision-log records waiting in the local spool",
        "GAUGE",
    ),
}


class ServiceMetrics:
    """``metric_family`` is ``pb_utils.MetricFamily``; ``clock`` is injected for tests."""

    def __init__(
        self,
        metric_family,
        breakers: dict[str, CircuitBreaker],
        decision_log=None,
        flush_s: float = 1.0,
        clock=time.monotonic,
    ) -> None:
        self.families = {
            key: metric_family(name, text, getattr(metric_family, kind))
            for key, (name, text, kind) in FAMILIES.items()
        }
        self.breakers = breakers
        self.decision_log = decision_log
        self.flush_s = flush_s
        self.clock = clock
        self.counts: Counter = Counter()
        self._metrics: dict = {}
        self._logged: Counter = Counter()
        self._flushed_at = clock()

    def count(self, family: str, n: int, **labels) -> None:
        self.counts[(family, tuple(sorted(labels.items())))] += n

    def observe(self, batch: Batch) -> None:
        decided = batch.decided
        if decided is None:
            return
        codes, counts = np.unique(decided.codes, return_counts=True)
        for code, n in zip(codes.tolist(), counts.tolist(), strict=True):
            self.count("decisions", n, path=decided.path, decision=DECISIONS[code])
        rows = len(decided.codes)
        for code in dict.fromkeys(decided.degradations):
            if is_ladder_degradation(code):
                self.count("reasons", rows, reason=code)
        for view, n in (decided.stale or {}).items():
            self.count("stale", n, view=view)

    def _metric(self, family: str, labels: tuple):
        key = (family, labels)
        if key not in self._metrics:
            self._metrics[key] = self.families[family].Metric(labels=dict(labels))
        return self._metrics[key]

    def flush(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._flushed_at < self.flush_s:
            return
        self._flushed_at = now
        for (family, labels), n in self.counts.items():
            if n:
                self._metric(family, labels).increment(n)
        self.counts.clear()
        for name, breaker in self.breakers.items():
            self._metric("breakers", (("dependency", name),)).set(STATE_CODES[breaker.state])
        if self.decision_log is not None:
            counts = self.decision_log.counts.copy()
            for outcome, n in counts.items():
                if n > self._logged[outcome]:
                    self._metric("logged", (("outcome", outcome),)).increment(
                        n - self._logged[outcome]
                    )
            self._logged = counts
            self._metric("spool", ()).set(counts["spooled"] - counts["replayed"])
