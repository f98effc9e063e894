"""``python -m feature_repo analyze``: the heavy model studies every decision, off the hot path.

A consumer group on ``transactions`` and ``decisions`` with the stream machinery's
guarantees (``feature_repo.stream.consumer.GroupConsumer``: offsets committed only after the
batch is written, holes re-read, bad records counted and skipped):

- every transaction joins the card's and the terminal's histories (``HistoryBuffers``,
  bounded), and the case store, from which a restarted consumer rebuilds them;
- every decided transaction (its decision-log record carries what the models saw:
  ``python_backend.fraud.served``) is scored by the heavy model with its histories,
  explained (``python_backend.fraud.explain``), and written to the case store, once: the
  first decision of a transaction is analysed, any other (a client's retry, a batch read
  again after a crash) is counted as a duplicate and changes nothing;
- each new analysis goes to the ``analysis`` topic, and an approved transaction the heavy
  model finds risky (at or above its review threshold, set at 50% precision on the
  validation days) to the ``review`` topic as well. The store marks what the broker
  acknowledged; what it did not is sent again (the store is the outbox).

It runs as batch work (``python_backend.priority``: ``SCHED_IDLE`` where allowed, else
nice 19): serving keeps the cores.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import numpy as np

from feature_repo.stream.consumer import GroupConsumer
from python_backend import events as tx_events
from python_backend import settings
from python_backend.events import EventError, TransactionEvent
from python_backend.fraud import decision_log, served
from python_backend.fraud.cases import ANALYSIS_VERSION, CaseStore, Event, analysis_record
from python_backend.fraud.drift import SCORE, DriftWindow
from python_backend.fraud.heavy_model import HeavyModel
from python_backend.fraud.history import (
    BUFFER_SLACK,
    CARD_HISTORY_LENGTH,
    HeavyInputs,
    HistoryBuffers,
)

#: What a decision record must carry to be analysed.
DECISION_FIELDS = {
    "transaction_id": str,
    "decision": str,
    "path": str,
    "card_id": int,
    "terminal_id": int,
    "amount": (int, float),
    "ts_ms": int,
    "inputs": dict,
}


def decode_decision(value: bytes) -> dict:
    """A decision-log record that can be analysed; ``EventError`` naming what it lacks."""
    try:
        record = decision_log.decode(value)  # binary or JSON
    except ValueError as err:  # EventError, JSONDecodeError, UnicodeDecodeError
        raise EventError(f"decision: not a record: {err}") from None
    for name, kind in DECISION_FIELDS.items():
        if not isinstance(record.get(name), kind) or isinstance(record.get(name), bool):
            raise EventError(
                f"decision {record.get('transaction_id')!r}: {name} missing or not "
                f"{getattr(kind, '__name__', 'a number')} (a record from before feature logging?)"
            )
    if record["inputs"].get("layout") != served.LAYOUT:
        raise EventError(
            f"decision {record['transaction_id']!r}: inputs of layout "
            f"{record['inputs'].get('layout')!r}, this consumer reads {served.LAYOUT}"
        )
    return record


def disagrees(decision: str, heavy_score: float, threshold: float) -> bool:
    """The heavy model finds an approved transaction risky, or a declined one not."""
    risky = heavy_score >= threshold
    return (decision == "APPROVE" and risky) or (decision == "DECLINE" and not risky)


class AnalysisConsumer(GroupConsumer):
    def __init__(
        self,
        bootstrap: str,
        model: HeavyModel,
        store: CaseStore,
        *,
        explainer=None,
        group: str = "fraud-analysis",
        transactions_topic: str = tx_events.TOPIC_TRANSACTIONS,
        decisions_topic: str = "decisions",
        analysis_topic: str = "analysis",
        review_topic: str = "review",
        max_entities: int = 200_000,
        batch_size: int = 500,
        log: Callable[[str], None] = print,
        on_analysed: Callable[[list[dict]], None] | None = None,
        drift: DriftWindow | None = None,
    ) -> None:
        from confluent_kafka import Producer

        super().__init__(bootstrap, group, [transactions_topic, decisions_topic], batch_size, log)
        self.model, self.store, self.explainer = model, store, explainer
        self.transactions_topic, self.decisions_topic = transactions_topic, decisions_topic
        self.analysis_topic, self.review_topic = analysis_topic, review_topic
        self.on_analysed = on_analysed
        #: Live traffic against the primary's training window (None: not measured).
        self.drift = drift
        self.counts: Counter[str] = Counter()
        self.histories = HistoryBuffers(max_entities)
        rebuilt = store.recent_events(CARD_HISTORY_LENGTH + BUFFER_SLACK)
        self.histories.add(
            (e.transaction_id, e.card_id, e.terminal_id, e.ts_ms, e.amount) for e in rebuilt
        )
        if rebuilt:
            log(f"analysis: histories rebuilt from {len(rebuilt):,} stored transactions")
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
        #: Seconds from each decision to its analysis being written (the last batch's).
        self.lags_s: list[float] = []

    # -- records ----------------------------------------------------------------------

    def decode(self, message):
        if message.topic() == self.transactions_topic:
            return tx_events.decode(message.value())
        return decode_decision(message.value())

    def apply(self, events: list[tuple[object, object]]) -> None:
        self._publish(self.store.unpublished())  # what a crash left unacknowledged
        seen: dict[str, Event] = {}
        decisions: dict[str, dict] = {}
        for _message, event in events:
            if isinstance(event, TransactionEvent):
                e = event
                seen[e.transaction_id] = Event(
                    e.transaction_id, e.card_id, e.terminal_id, e.ts_ms, e.amount
                )
            else:
                tx = event["transaction_id"]
                seen.setdefault(
                    tx,
                    Event(
                        tx,
                        event["card_id"],
                        event["terminal_id"],
                        event["ts_ms"],
                        float(event["amount"]),
                    ),
                )
                if tx in decisions:
                    self.counts["duplicate"] += 1
                else:
                    decisions[tx] = event
        self.histories.add(
            (e.transaction_id, e.card_id, e.terminal_id, e.ts_ms, e.amount) for e in seen.values()
        )
        done = self.store.analysed(decisions)
        self.counts["duplicate"] += len(done)
        todo = [d for tx, d in decisions.items() if tx not in done]
        records = self.analyse(todo) if todo else []
        new = set(self.store.write(records, seen.values()))
        self.counts["duplicate"] += len(records) - len(new)
        fresh = [r for r in records if r["transaction_id"] in new]
        self.counts["analysed"] += len(fresh)
        self.counts["review"] += sum(r["review"] for r in fresh)
        self.counts["disagreements"] += sum(r["disagrees"] for r in fresh)
        self.stats.applied += len(fresh)
        self.stats.duplicates = self.counts["duplicate"]
        now = time.time()
        self.lags_s = [now - r["decided_at_ms"] / 1000 for r in fresh]
        self._publish(fresh)
        if self.on_analysed is not None and fresh:
            self.on_analysed(fresh)

    def analyse(self, decisions: list[dict]) -> list[dict]:
        """Score and explain ``decisions``; one analysis record each."""
        inputs = served.decode([d["inputs"] for d in decisions])
        if self.drift is not None:
            served_scores = np.array(
                [np.nan if d.get("score") is None else d["score"] for d in decisions], np.float64
            )
            self.drift.add(inputs, served_scores)
        card = np.array([d["card_id"] for d in decisions], dtype=np.int64)
        terminal = np.array([d["terminal_id"] for d in decisions], dtype=np.int64)
        ts = np.array([d["ts_ms"] for d in decisions], dtype=np.int64)
        amount = np.array([d["amount"] for d in decisions], dtype=np.float64)
        heavy = HeavyInputs.of(inputs, self.histories.histories(card, terminal, ts, amount))
        scores = self.model.score(heavy)
        threshold = self.model.review_threshold
        # Explanations cost some 8 ms a row: made now for the cases an analyst opens first
        # (the review queue, disagreements), the rest when opened (explain.explain_case).
        detail = np.array(
            [
                (d["decision"] == "APPROVE" and s >= threshold)
                or disagrees(d["decision"], float(s), threshold)
                for d, s in zip(decisions, scores, strict=True)
            ],
            dtype=bool,
        )
        explained: list = [None] * len(decisions)
        rows = np.flatnonzero(detail)
        if self.explainer is not None and len(rows):
            for i, attributions in zip(rows, self.explainer.explain(heavy.take(rows)), strict=True):
                explained[i] = attributions
        analysed_at = int(time.time() * 1000)
        records = []
        for d, score, attributions in zip(decisions, scores, explained, strict=True):
            review = d["decision"] == "APPROVE" and float(score) >= threshold
            records.append(
                {
                    "v": ANALYSIS_VERSION,
                    "transaction_id": d["transaction_id"],
                    "card_id": d["card_id"],
                    "terminal_id": d["terminal_id"],
                    "amount": float(d["amount"]),
                    "ts_ms": d["ts_ms"],
                    "decided_at_ms": d.get("decided_at_ms", analysed_at),
                    "analysed_at_ms": analysed_at,
                    "decision": d["decision"],
                    "path": d["path"],
                    "reasons": d.get("reasons", []),
                    "score": d.get("score"),
                    "model_version": d.get("model_version"),
                    "heavy_score": round(float(score), 6),
                    "heavy_version": self.model.version,
                    "review": review,
                    "disagrees": disagrees(d["decision"], float(score), threshold),
                    "attributions": attributions,
                    # To explain it when opened, if not explained now.
                    "inputs": served.json_ready(d["inputs"]),
                }
            )
        return records

    def _publish(self, records: list[dict]) -> None:
        """``analysis`` (and ``review``) records; the store marks those acknowledged."""
        if not records:
            return
        delivered: list[str] = []

        def done(err, message, tx: str) -> None:
            if err is None:
                delivered.append(tx)

        for r in records:
            value = analysis_record.encode(r)
            key = r["transaction_id"].encode()
            self.producer.produce(
                self.analysis_topic,
                key=key,
                value=value,
                on_delivery=lambda err, m, tx=r["transaction_id"]: done(err, m, tx),
            )
            if r["review"]:
                self.producer.produce(self.review_topic, key=key, value=value)
        self.producer.flush(10)
        self.store.mark_published(delivered)
        self.counts["published"] += len(delivered)

    def close(self) -> None:
        self.producer.flush(5)
        self.producer = None  # let librdkafka go: it would keep reconnecting to a broker gone
        super().close()


#: The heavy score's histogram buckets (as the BLS's model scores).
SCORE_BUCKETS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
LAG_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)


class AnalysisMetrics:
    """The consumer's Prometheus metrics on ``127.0.0.1:port`` (job ``fraud-analysis``):
    records by outcome, the review queue, disagreements with the real-time decision, the
    analysis lag and the heavy scores, the records not read yet per partition and the time
    since a batch was applied (names of its own: the feature consumer's alerts and panels
    read ``stream_*``)."""

    def __init__(self, consumer: AnalysisConsumer, port: int) -> None:
        from prometheus_client import CollectorRegistry, Histogram, start_http_server

        self.consumer = consumer
        registry = CollectorRegistry()
        registry.register(self)
        self.lag = Histogram(
            "fraud_analysis_lag_seconds",
            "From a decision to its analysis being written",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.score = Histogram(
            "fraud_analysis_heavy_score",
            "The heavy model's scores of the decisions analysed",
            buckets=SCORE_BUCKETS,
            registry=registry,
        )
        consumer.on_analysed = self.observe
        start_http_server(port, addr=settings.METRICS_BIND_ADDRESS.get(), registry=registry)

    def observe(self, records: list[dict]) -> None:
        now = time.time()
        for r in records:
            self.lag.observe(max(0.0, now - r["decided_at_ms"] / 1000))
            self.score.observe(r["heavy_score"])

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        counts = self.consumer.counts
        records = CounterMetricFamily(
            "fraud_analysis_records", "Decision records by outcome", labels=["outcome"]
        )
        records.add_metric(["analysed"], counts["analysed"])
        records.add_metric(["duplicate"], counts["duplicate"])
        records.add_metric(["unreadable"], self.consumer.stats.rejected)
        yield records
        yield CounterMetricFamily(
            "fraud_analysis_review", "Approved transactions sent to review", value=counts["review"]
        )
        yield CounterMetricFamily(
            "fraud_analysis_disagreements",
            "Analyses where the heavy model and the real-time decision disagree",
            value=counts["disagreements"],
        )
        lag = GaugeMetricFamily(
            "fraud_analysis_consumer_lag",
            "Records on the decisions and transactions topics not analysed yet",
            labels=["topic", "partition"],
        )
        for (topic, partition), n in sorted(self.consumer.lag.items()):
            lag.add_metric([topic, str(partition)], n)
        yield lag
        drift = self.consumer.drift
        if drift is not None:
            by_input = drift.psi()
            score = by_input.pop(SCORE, None)
            feature = GaugeMetricFamily(
                "fraud_analysis_drift_psi",
                "PSI of each model input, the newest decisions against the training window",
                labels=["feature"],
            )
            for name, value in sorted(by_input.items()):
                feature.add_metric([name], value)
            yield feature
            if score is not None:
                yield GaugeMetricFamily(
                    "fraud_analysis_drift_score_psi",
                    "PSI of the served score, the newest decisions against the training window",
                    value=score,
                )
            yield GaugeMetricFamily(
                "fraud_analysis_drift_window_rows",
                "Decisions the drift metrics cover",
                value=drift.rows,
            )
        yield GaugeMetricFamily(
            "fraud_analysis_last_applied_age_seconds",
            "Seconds since the consumer last applied a batch (or started)",
            value=time.time() - self.consumer.last_applied,
        )
