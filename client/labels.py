"""``python -m client labels``: the labels of what the service decided, on the ``labels``
topic in the world's time, and read back for a label join.

The decisions come from the decision log (the ``decisions`` topic): which transactions were
served, which declined (no chargeback for those), which went to review (the ``REVIEW``
decisions and the heavy model's ``review`` queue get an investigator's verdict). The truth
comes from the simulated transactions, the reports from ``build_engines.labels``. Labels are
published in order of ``reported_ms``; ``--speedup`` paces them (simulated seconds per wall
second), ``--until`` stops at a simulated time (the rest are still to come). A second run
publishes the same labels again (same seed): the join reads labels as a set.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from build_engines.label_join import first_served
from build_engines.labels import LABEL_COLUMNS, LabelModel, simulate_labels
from feature_repo.stream import ensure_topic
from feature_repo.stream.topics import produce
from python_backend.events import EventError, LabelEvent, decode_label
from python_backend.fraud.decision_log import read_all


def world_ms(text: str) -> int:
    """An ISO time of the simulated world as epoch ms (UTC when it names no zone)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _topic_exists(bootstrap: str, topic: str) -> bool:
    return topic in AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics


def served_decisions(bootstrap: str, topic: str) -> pd.DataFrame:
    """The decision log's records, one per transaction (the first decided)."""
    records = pd.DataFrame(read_all(bootstrap, topic))
    if records.empty:
        return records
    return first_served(records)


def labels_for(
    decisions: pd.DataFrame,
    transactions: pd.DataFrame,
    queued: set[str],
    seed: int,
    model: LabelModel | None = None,
) -> tuple[pd.DataFrame, int]:
    """The labels of the decided transactions that the simulated world knows; returns them
    and how many decided transactions it does not know (no truth, no label)."""
    truth = transactions[["transaction_id", "is_fraud"]].assign(
        transaction_id=lambda f: f["transaction_id"].astype(str)
    )
    rows = decisions[["transaction_id", "ts_ms", "decision"]].merge(truth, on="transaction_id")
    unknown = len(decisions) - len(rows)
    declined = (rows["decision"] == "DECLINE").to_numpy()
    reviewed = (rows["decision"] == "REVIEW").to_numpy() | rows["transaction_id"].isin(
        queued
    ).to_numpy()
    return simulate_labels(rows, declined, reviewed, seed, model or LabelModel()), unknown


def publish(
    bootstrap: str,
    labels: pd.DataFrame,
    topic: str,
    speedup: float | None = None,
    progress=None,
) -> int:
    """Publish ``labels`` in order; ``speedup``: simulated seconds per wall second (None: as
    fast as the broker takes them). ``progress(n)`` is told of each one sent."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    started = time.perf_counter()
    first = int(labels["reported_ms"].iloc[0]) if len(labels) else 0
    for row in labels.itertuples(index=False):
        event = LabelEvent(
            str(row.transaction_id),
            str(row.kind),
            int(row.is_fraud),
            int(row.ts_ms),
            int(row.reported_ms),
        )
        if speedup:
            ahead = (event.reported_ms - first) / 1000 / speedup - (time.perf_counter() - started)
            if ahead > 0:
                producer.flush(ahead)  # delivers what is queued meanwhile; returns when done
                rest = (event.reported_ms - first) / 1000 / speedup - (
                    time.perf_counter() - started
                )
                if rest > 0:
                    time.sleep(rest)
        produce(producer, topic, event.key, event.encode())
        producer.poll(0)
        if progress is not None:
            progress(1)
    remaining = producer.flush(30)
    if remaining:
        raise RuntimeError(f"{remaining} labels were not delivered to {topic}")
    return len(labels)


def read_labels(bootstrap: str, topic: str) -> tuple[pd.DataFrame, list[str]]:
    """Every valid label on ``topic`` (``LABEL_COLUMNS``; none if the topic does not exist
    yet), once: a label delivered twice (a publisher run again, a producer's retry) counts
    once; and why each invalid message was refused (they are left out, not fatal)."""
    if not _topic_exists(bootstrap, topic):
        return pd.DataFrame({c: [] for c in LABEL_COLUMNS}), []

    def decode(value: bytes) -> LabelEvent | str:
        try:
            return decode_label(value)
        except EventError as err:
            return str(err)

    decoded = read_all(bootstrap, topic, decode=decode)
    refused = [d for d in decoded if isinstance(d, str)]
    frame = pd.DataFrame(
        [asdict(d) for d in decoded if not isinstance(d, str)], columns=list(LABEL_COLUMNS)
    )
    types = {"is_fraud": np.int8, "ts_ms": np.int64, "reported_ms": np.int64}
    return frame.astype(types).drop_duplicates(ignore_index=True), refused


def queued_for_review(bootstrap: str, topic: str) -> set[str]:
    """Transactions the heavy model put on the review queue (none if it never ran)."""
    if not _topic_exists(bootstrap, topic):
        return set()
    from python_backend.fraud.cases import analysis_record

    return {r["transaction_id"] for r in read_all(bootstrap, topic, decode=analysis_record.decode)}


__all__ = [
    "ensure_topic",
    "labels_for",
    "publish",
    "read_labels",
    "served_decisions",
    "world_ms",
]
