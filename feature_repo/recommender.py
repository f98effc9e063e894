"""The recommender's features in Feast: entity ``user``, the batch view ``user_embedding``
(precomputed embedding and items seen), and ``user_recent_clicks``, kept by a consumer of the
``clicks`` topic with the same machinery as the fraud stream (``feature_repo.stream``).

Both views are on one entity: in Redis they share the user's hash, so serving reads them in
one round trip (``python_backend.recommender.online``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
from confluent_kafka import Producer

from feature_repo.definitions import user_definitions
from feature_repo.stream import BufferConsumer, BufferSpec, RecentWriter
from python_backend.events import ClickEvent, decode_click
from python_backend.recommender.core import (
    CLICK_BUFFER,
    CLICKS_VIEW,
    TOPIC_CLICKS,
    USER_JOIN_KEY,
    USER_RECENT_CLICKS,
    USER_VIEW,
    clicks_source,
    user_source,
)

CLICK_SPEC = BufferSpec.of(
    USER_RECENT_CLICKS,
    limit=CLICK_BUFFER,
    decode=decode_click,
    entity=lambda event: event.user_id,
    to_entry=lambda event: (event.ts_ms, event.item_id, event.click_id),
)


def materialize(store, data_dir: Path, log=print) -> dict[str, int]:
    """Register the views and fill the online store from the offline files (written by
    ``make recommender``): each user's embedding and seen items, and the click buffer as
    of the end of the training period."""
    store.apply(user_definitions(data_dir))
    counts = {}
    for view, path in ((USER_VIEW, user_source(data_dir)), (CLICKS_VIEW, clicks_source(data_dir))):
        started = time.perf_counter()
        table = pd.read_parquet(path, columns=[USER_JOIN_KEY, "event_timestamp"])
        end = table["event_timestamp"].max() + timedelta(seconds=1)
        store.materialize(start_date=end - timedelta(days=3650), end_date=end, feature_views=[view])
        counts[view] = int(table[USER_JOIN_KEY].nunique())
        log(f"  {view:<19} {counts[view]:>7,} users in {time.perf_counter() - started:.1f} s")
    return counts


class ClickConsumer(BufferConsumer):
    """Consumes ``clicks`` into ``user_recent_clicks``; ``reader`` is a user reader of
    ``python_backend.recommender.online`` (for the buffers the store holds)."""

    def __init__(
        self,
        bootstrap: str,
        reader,
        writer: RecentWriter,
        group: str = "user-recent-clicks",
        topic: str = TOPIC_CLICKS,
        log=print,
    ) -> None:
        super().__init__(bootstrap, CLICK_SPEC, reader.read_clicks, writer, group, topic, log=log)


def publish_clicks(bootstrap: str, clicks: list[ClickEvent], topic: str = TOPIC_CLICKS) -> None:
    """Publish clicks and wait until the broker has them."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    for click in clicks:
        producer.produce(topic, key=click.key, value=click.encode())
    if producer.flush(10):
        raise RuntimeError(f"clicks were not delivered to {topic}")


def click_now(user_id: int, item_id: int, click_id: str | None = None) -> ClickEvent:
    import uuid

    now = int(datetime.now(tz=UTC).timestamp() * 1000)
    return ClickEvent(click_id or uuid.uuid4().hex, int(user_id), int(item_id), now)
