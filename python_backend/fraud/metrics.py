"""The BLS's custom Prometheus metrics (Triton's ``pb_utils.MetricFamily``), counted in
process and handed to Triton every ``flush_s``: after a batch, and from a timer thread
while the server idles (otherwise what the last second counted waits for the next
request). Each metric call is a message to the Triton process (about 18 µs of its CPU each,
measured here when they queue), and two threads calling at once crash the server
(seen: SIGSEGV in ``libtriton_python.so``), so every call is made under one lock.

Latency histograms (``fraud_decision_seconds``, ``fraud_stage_seconds{stage}``) are
counted here per decision and handed over as their cumulative ``_bucket{le}``, ``_sum`` and
``_count`` counters: a constant number of calls per flush. ``MetricFamily.HISTOGRAM``
takes one ``observe`` call per observation: five stages of every decision would cost more
messages than everything else together. Prometheus reads the series the same way
(``histogram_quantile`` over ``_bucket``). A bucket ends at the budget (95 ms), so the
share of decisions over budget is exact, not interpolated.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np

from python_backend.breaker import STATE_CODES, CircuitBreaker
from python_backend.fraud.contract import DECISIONS
from python_backend.fraud.reasons import is_ladder_degradation
from python_backend.fraud.rollout import SCORE_BUCKETS
from python_backend.fraud.scoring import DEFAULT_BUDGET_MS
from python_backend.fraud.service import Batch

#: Upper bounds (seconds) of the latency histograms' buckets; one is the budget.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08,
    DEFAULT_BUDGET_MS / 1000, 0.12, 0.2, 0.5, 1.0,
)  # fmt: skip
#: The stages of ``STAGE_US`` that get a histogram (a stage that did not run is not observed).
HISTOGRAM_STAGES = ("features", "primary", "fallback", "rules")
HISTOGRAMS = {
    "decision": ("fraud_decision_seconds", "Time from batch start to answer, per decision"),
    "stage": ("fraud_stage_seconds", "Time of each stage of a decision, per decision"),
    "model_seconds": (
        "fraud_model_seconds",
        "Time of each fraud_primary call, per row, by version and role",
    ),
    "model_score": ("fraud_model_score", "Scores of each fraud_primary version, by role"),
    "waited": (
        "fraud_request_waited_seconds",
        "Time a request had spent before its batch began, per request, by how it was known "
        "(stamp: the edge's arrival stamp; queue_bound: the instance's bound; none: not waited)",
    ),
}

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
    "model_rows": (
        "fraud_model_rows_total",
        "Rows sent to each fraud_primary version, by role (champion, canary, shadow) and outcome",
        "COUNTER",
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
    "cache": (
        "fraud_feature_cache_lookups_total",
        "Lookups of the BLS's cache of daily views, by entity and outcome: hit, miss, expired "
        "(read again), hit_without_store / miss_without_store (the store not answering)",
        "COUNTER",
    ),
    "cache_invalidations": (
        "fraud_feature_cache_invalidations_total",
        "Times the cache was emptied because a materialization wrote the store",
        "COUNTER",
    ),
    "stamps_refused": (
        "fraud_deadline_stamps_refused_total",
        "Arrival stamps not used, by why: future or too_old (clocks disagree), malformed",
        "COUNTER",
    ),
    "spool": (
        "fraud_decision_log_spooled",
        "Decision-log records waiting in the local spool",
        "GAUGE",
    ),
}


class LatencyHistogram:
    """Observations counted per bucket for one label set, not yet handed to Triton.
    ``bounds``: the buckets' upper bounds (the latency ones unless given)."""

    def __init__(self, bounds: tuple = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = np.zeros(len(bounds) + 1, dtype=np.int64)  # the last: +Inf
        self.sum = 0.0

    def observe(self, seconds: float, n: int = 1) -> None:
        self.counts[np.searchsorted(self.bounds, seconds)] += n
        self.sum += seconds * n

    def observe_all(self, values: np.ndarray) -> None:
        """Each of ``values`` once (``le`` buckets: a value on a bound counts in it)."""
        bins = np.searchsorted(self.bounds, values)
        self.counts += np.bincount(bins, minlength=len(self.counts))
        self.sum += float(np.sum(values))


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
        for key, (name, text) in HISTOGRAMS.items():
            for suffix in ("bucket", "sum", "count"):
                self.families[f"{key}_{suffix}"] = metric_family(
                    f"{name}_{suffix}", f"{text} ({suffix})", metric_family.COUNTER
                )
        self.histograms: dict[tuple[str, tuple], LatencyHistogram] = {}
        self.lock = threading.Lock()
        self._timer: threading.Thread | None = None
        self._stopped = threading.Event()
        self.timer_errors = 0
        self.breakers = breakers
        self.decision_log = decision_log
        #: The reader's ``DailyCache`` (set by the BLS), whose counts are handed over.
        self.cache = None
        self._cache_seen: dict = {}
        self._invalidations_seen: dict = {}
        self.flush_s = flush_s
        self.clock = clock
        self.counts: Counter = Counter()
        self._metrics: dict = {}
        self._logged: Counter = Counter()
        self._flushed_at = clock()

    def count(self, family: str, n: int, **labels) -> None:
        with self.lock:
            self.counts[(family, tuple(sorted(labels.items())))] += n

    def _histogram(
        self, key: str, labels: tuple = (), bounds: tuple = LATENCY_BUCKETS
    ) -> LatencyHistogram:
        found = self.histograms.get((key, labels))
        if found is None:
            found = self.histograms[(key, labels)] = LatencyHistogram(bounds)
        return found

    def observe_routes(self, routes: list) -> None:
        """Count the batch's calls to ``fraud_primary`` versions (``rollout.Route``, the
        shadow's included): rows by outcome, the call's time per row, the scores."""
        with self.lock:
            for route in routes:
                for r in (route, route.shadow):
                    if r is None or not r.outcome:
                        continue
                    labels = (("role", r.role), ("version", r.label))
                    self.counts[("model_rows", (("outcome", r.outcome), *labels))] += r.rows
                    self._histogram("model_seconds", labels).observe(r.seconds, r.rows)
                    if r.scores is not None:
                        scores = np.asarray(r.scores, dtype=np.float64)
                        self._histogram("model_score", labels, SCORE_BUCKETS).observe_all(scores)

    def observe(self, batch: Batch, total_us: int | None = None) -> None:
        """Count a batch's decisions. ``total_us``: its time from start to answer (the
        ``total`` of ``STAGE_US``); each decided row is one observation."""
        with self.lock:
            self._observe(batch, total_us)

    def _observe(self, batch: Batch, total_us: int | None) -> None:
        for deadline in batch.deadlines:
            labels = (("source", deadline.source),)
            self._histogram("waited", labels).observe(deadline.waited_ms / 1000)
            if deadline.refused_stamp:
                self.counts[("stamps_refused", (("why", deadline.refused_stamp),))] += 1
        decided = batch.decided
        if decided is None:
            return
        rows = len(decided.codes)
        if total_us is not None:
            self._histogram("decision").observe(total_us / 1e6, rows)
        for stage, us in zip(HISTOGRAM_STAGES, decided.stage_us.tolist(), strict=True):
            if us > 0:
                self._histogram("stage", (("stage", stage),)).observe(us / 1e6, rows)
        counts = self.counts
        codes, n_codes = np.unique(decided.codes, return_counts=True)
        for code, n in zip(codes.tolist(), n_codes.tolist(), strict=True):
            labels = (("decision", DECISIONS[code]), ("path", decided.path))
            counts[("decisions", labels)] += n
        for code in dict.fromkeys(decided.degradations):
            if is_ladder_degradation(code):
                counts[("reasons", (("reason", code),))] += rows
        for view, n in (decided.stale or {}).items():
            counts[("stale", (("view", view),))] += n

    def _metric(self, family: str, labels: tuple):
        key = (family, labels)
        if key not in self._metrics:
            self._metrics[key] = self.families[family].Metric(labels=dict(labels))
        return self._metrics[key]

    def flush(self, force: bool = False) -> None:
        """Hand what was counted to Triton if ``flush_s`` passed since the last time (or
        ``force``)."""
        with self.lock:
            now = self.clock()
            if not force and now - self._flushed_at < self.flush_s:
                return
            self._flushed_at = now
            self._flush()

    def start_timer(self) -> None:
        """Flush every ``flush_s`` from a daemon thread too (what a batch counted is then
        reported within ``flush_s`` even if no batch follows)."""

        def tick() -> None:
            while not self._stopped.wait(self.flush_s):
                try:
                    self.flush()
                except Exception:  # never let the timer kill anything; the next batch flushes
                    self.timer_errors += 1

        self._timer = threading.Thread(target=tick, name="metrics-flush", daemon=True)
        self._timer.start()

    def stop_timer(self) -> None:
        self._stopped.set()
        if self._timer is not None:
            self._timer.join(5)

    def _flush(self) -> None:
        for (family, labels), n in self.counts.items():
            if n:
                self._metric(family, labels).increment(n)
        self.counts.clear()
        for (key, labels), histogram in self.histograms.items():
            self._flush_histogram(key, labels, histogram)
        for name, breaker in self.breakers.items():
            self._metric("breakers", (("dependency", name),)).set(STATE_CODES[breaker.state])
        if self.cache is not None:  # it counts in the batch's thread: totals, not deltas
            cache = self.cache
            self._cache_seen = self._count_since(
                "cache", cache.counts, self._cache_seen,
                lambda k: (("entity", k[1]), ("outcome", k[0])),
            )  # fmt: skip
            self._invalidations_seen = self._count_since(
                "cache_invalidations", {(): cache.invalidations}, self._invalidations_seen,
                lambda _k: (),
            )  # fmt: skip
        if self.decision_log is not None:
            self._logged = self._count_since(
                "logged", self.decision_log.counts, self._logged, lambda k: (("outcome", k),)
            )
            self._metric("spool", ()).set(self._logged["spooled"] - self._logged["replayed"])

    def _count_since(self, family: str, totals: dict, seen: dict, labels) -> dict:
        """Counters kept elsewhere as running totals: each key's counter grows by what its
        total gained since ``seen`` (the totals at the last flush). Returns the totals now."""
        totals = totals.copy()
        for key, n in totals.items():
            if n > seen.get(key, 0):
                self._metric(family, labels(key)).increment(n - seen.get(key, 0))
        return totals

    def _flush_histogram(self, key: str, labels: tuple, histogram: LatencyHistogram) -> None:
        total = int(histogram.counts.sum())
        if not total:
            return
        cumulative = np.cumsum(histogram.counts).tolist()
        for bound, n in zip((*histogram.bounds, "+Inf"), cumulative, strict=True):
            le = bound if isinstance(bound, str) else f"{bound:g}"
            metric = self._metric(f"{key}_bucket", (*labels, ("le", le)))
            if n:
                metric.increment(n)
        self._metric(f"{key}_sum", labels).increment(histogram.sum)
        self._metric(f"{key}_count", labels).increment(total)
        histogram.counts[:] = 0
        histogram.sum = 0.0
