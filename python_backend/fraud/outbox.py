"""What leaves the BLS after a batch is answered, off the hot path: each scored transaction
to the ``transactions`` topic (so live features follow live traffic) and each decision to
the decision log (``python_backend.fraud.decision_log``, spooled while the broker is away)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from python_backend import settings
from python_backend.events import TransactionEvent
from python_backend.fraud import served
from python_backend.fraud.decision_log import DecisionLog
from python_backend.fraud.service import Batch
from python_backend.tracing import TRACEPARENT


class Outbox:
    """One producer for the scored transactions, one decision log, per BLS instance."""

    def __init__(self, bootstrap: str, instance: str, count: Callable, log: Callable) -> None:
        from confluent_kafka import Producer

        # Asynchronous: produce() only queues; a broker that is away never slows a decision,
        # and a full queue drops the event (counted) rather than block. linger 20 ms: fewer,
        # larger produce requests (the broker's CPU is the cost).
        self.publisher = Producer(
            {
                "bootstrap.servers": bootstrap,
                "linger.ms": 20,
                "queue.buffering.max.messages": 100_000,
            }
        )
        self.topic = settings.SCORED_TOPIC.get()
        self.count = count
        self.log_inputs = settings.DECISION_LOG_INPUTS.get() != "off"
        self.decision_log = None
        if settings.DECISION_LOG.get() != "off":
            self.decision_log = DecisionLog(
                bootstrap,
                Path(settings.DECISION_SPOOL_DIR.get()),
                topic=settings.DECISIONS_TOPIC.get(),
                label=instance,
                log=log,
            )

    @classmethod
    def from_env(cls, instance: str, count: Callable, log: Callable) -> Outbox | None:
        bootstrap = settings.KAFKA_BOOTSTRAP.get()
        return cls(bootstrap, instance, count, log) if bootstrap else None

    def send(self, batch: Batch, traces: dict[int, str] | None = None, route=None) -> None:
        """``traces``: the ``traceparent`` of traced rows, by row of the batch's
        transactions; their records carry it as a header (the consumer continues it).
        ``route``: the batch's call to ``fraud_primary`` (``python_backend.fraud.rollout``):
        its decision-log records say which version decided and what the shadow scored."""
        tx = batch.transactions
        if tx is not None:
            sent = 0
            for i in range(len(tx)):
                event = TransactionEvent(
                    tx.transaction_id[i],
                    int(tx.card_id[i]),
                    int(tx.terminal_id[i]),
                    float(tx.amount[i]),
                    int(tx.timestamp_ms[i]),
                )
                try:
                    headers = {TRACEPARENT: traces[i]} if traces and i in traces else None
                    self.publisher.produce(
                        self.topic, key=event.key, value=event.encode(), headers=headers
                    )
                    sent += 1
                except BufferError:
                    pass
            self.publisher.poll(0)
            self.count("published", sent, outcome="queued")
            self.count("published", len(tx) - sent, outcome="dropped")
        if self.decision_log is not None:
            inputs = batch.decided.inputs if batch.decided is not None else None
            logged = served.logged(inputs) if inputs is not None and self.log_inputs else None
            self.decision_log.append(
                rec
                for a in batch.answers
                for rec in with_route(
                    a.offset, with_transaction(a.offset, a.records(), tx, logged), route
                )
            )

    def close(self) -> None:
        """At the model's unload (a replica stopping): what is queued goes out, and the
        decision log hands its spool to the broker for up to ``DECISION_DRAIN_S``."""
        self.publisher.flush(5)
        if self.decision_log is not None:
            self.decision_log.close(drain_s=settings.DECISION_DRAIN_S.get_float())


def with_transaction(offset: int, records: list[dict], tx, logged: list[dict] | None) -> list[dict]:
    """``records`` (an answer's, its rows from ``offset`` in the batch) with the transaction
    (card, terminal, amount, time) and what the models saw (``inputs``): a decision-log
    record is then a whole case, for the analysis and for training on what was served."""
    if tx is None:
        return records
    for j, rec in enumerate(records):
        i = offset + j
        rec["card_id"] = int(tx.card_id[i])
        rec["terminal_id"] = int(tx.terminal_id[i])
        rec["amount"] = round(float(tx.amount[i]), 4)
        rec["ts_ms"] = int(tx.timestamp_ms[i])
        if logged is not None:
            rec["inputs"] = logged[i]
    return records


def with_route(offset: int, records: list[dict], route) -> list[dict]:
    """``records`` (an answer's, its rows from ``offset`` in the batch) with the version that
    decided them (``model_version``, when the primary did) and the shadow's score
    (``shadow_version``, ``shadow_score``) when the batch was scored in shadow."""
    if route is None:
        return records
    shadow = route.shadow if route.shadow is not None and route.shadow.outcome == "ok" else None
    for j, rec in enumerate(records):
        if rec["path"] == "primary" and route.outcome == "ok":
            rec["model_version"] = route.label
        if shadow is not None:
            rec["shadow_version"] = shadow.label
            rec["shadow_score"] = round(float(shadow.scores[offset + j]), 6)
    return records
