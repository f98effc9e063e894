"""The Kafka side: topics created with their partitions, simulated transactions replayed onto
them at a chosen rate."""

from __future__ import annotations

import time

import pandas as pd
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from python_backend.events import TOPIC_TRANSACTIONS, TransactionEvent


def ensure_topic(bootstrap: str, topic: str = TOPIC_TRANSACTIONS, partitions: int = 4) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    if topic in admin.list_topics(timeout=10).topics:
        return
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
    )
    for future in futures.values():
        try:
            future.result(timeout=10)
        except Exception as err:  # already created by a concurrent caller
            if "TOPIC_ALREADY_EXISTS" not in str(err):
                raise


def produce(producer: Producer, topic: str, key: bytes, value: bytes) -> None:
    """Queue one record, serving delivery reports while the producer's queue is full."""
    while True:
        try:
            producer.produce(topic, key=key, value=value)
            return
        except BufferError:
            producer.poll(0.05)


def replay(
    bootstrap: str,
    transactions: pd.DataFrame,
    rate_per_s: float | None = None,
    topic: str = TOPIC_TRANSACTIONS,
    linger_ms: int = 5,
) -> int:
    """Publish transactions in time order, at ``rate_per_s`` (None: as fast as possible)."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": linger_ms, "enable.idempotence": False}
    )
    started = time.perf_counter()
    for i, row in enumerate(transactions.itertuples(index=False)):
        event = TransactionEvent(
            str(row.transaction_id),
            int(row.card_id),
            int(row.terminal_id),
            float(row.amount),
            int(row.ts_ms),
        )
        produce(producer, topic, event.key, event.encode())
        if rate_per_s:
            ahead = (i + 1) / rate_per_s - (time.perf_counter() - started)
            if ahead > 0:
                producer.flush(ahead) if ahead > 0.01 else time.sleep(ahead)
        producer.poll(0)
    remaining = producer.flush(30)
    if remaining:
        raise RuntimeError(f"{remaining} events were not delivered to {topic}")
    return len(transactions)
