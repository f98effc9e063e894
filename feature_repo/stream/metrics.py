"""The stream consumer's Prometheus metrics, read from its counts at scrape time (nothing is
done per event): events consumed, applied, duplicates, rejected; store retries, commit
failures, offset holes; the lag per partition (the high watermark the broker last reported
minus the next offset to apply) and the time since a batch was last applied.

    python -m feature_repo consume --metrics-port 9108
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from python_backend import settings

#: ConsumerStats field -> (metric, help); all counters.
COUNTS = {
    "consumed": ("stream_events_consumed", "Records read from the topic"),
    "applied": ("stream_events_applied", "Events written to the online store"),
    "duplicates": ("stream_events_duplicate", "Events already in their buffer (redelivered)"),
    "rejected": ("stream_events_rejected", "Records that did not decode (skipped, logged)"),
    "store_retries": ("stream_store_retries", "Writes retried while the store was away"),
    "commit_failures": ("stream_commit_failures", "Offset commits refused (rebalances)"),
    "offset_gaps_accepted": ("stream_offset_gaps_accepted", "Offset holes given up on"),
}


class ConsumerCollector:
    """A ``prometheus_client`` collector over one :class:`BufferConsumer`."""

    def __init__(self, consumer, topic: str) -> None:
        self.consumer = consumer
        self.topic = topic

    def collect(self):
        stats = self.consumer.stats
        for field, (name, text) in COUNTS.items():
            family = CounterMetricFamily(name, text, labels=["topic"])
            family.add_metric([self.topic], getattr(stats, field))
            yield family
        lag = GaugeMetricFamily(
            "stream_consumer_lag", "Records on the topic not applied yet", labels=["partition"]
        )
        for (_topic, partition), n in sorted(self.consumer.lag.items()):
            lag.add_metric([str(partition)], n)
        yield lag
        since = GaugeMetricFamily(
            "stream_last_applied_age_seconds",
            "Seconds since the consumer last applied a batch (or started)",
            labels=["topic"],
        )
        since.add_metric([self.topic], time.time() - self.consumer.last_applied)
        yield since


def serve_metrics(consumer, topic: str, port: int) -> None:
    """Expose the consumer's metrics on ``127.0.0.1:port/metrics`` (a daemon thread)."""
    registry = CollectorRegistry()
    registry.register(ConsumerCollector(consumer, topic))
    start_http_server(port, addr=settings.METRICS_BIND_ADDRESS.get(), registry=registry)
