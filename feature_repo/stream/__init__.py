"""Real-time features from Kafka topics: one machinery, one :class:`BufferSpec` per stream.

A consumer (a consumer group, at-least-once) reads events, folds each into its entity's
buffer of recent events (``card_recent`` from ``transactions``; ``user_recent_clicks`` from
``clicks``, see ``feature_repo.recommender``) and writes the buffers to the online store; only
then does it commit the offsets. A replayed event is recognised by its id, kept in the
buffer, so replays after a crash or a restart never double-count. A store that is away is
waited out with the batch held (nothing committed).

Writes, per store:

* Redis: Feast's layout (Feast's own key and field helpers and value protos), pipelined,
  each card's hash replaced by a small Lua script only if its ``_ts:card_recent`` is still
  the one the merge started from (compare-and-set): an older write can never overwrite a
  newer one, and a concurrent writer makes us re-read instead of losing its events.
* SQLite (embedded, one process): ``FeatureStore.write_to_online_store``.

The producer replays simulated transactions onto the topic at a chosen rate.

Modules: ``buffers`` (what a stream view holds and how events fold into it), ``writers``
(Feast or Redis compare-and-set), ``consumer`` (the consumer group and its guarantees),
``topics`` (topic creation and the replayer).
"""

from feature_repo.stream.buffers import (
    CARD_SPEC,
    BufferSpec,
    Entry,
    buffers_from_store,
    merge,
    merge_entries,
)
from feature_repo.stream.consumer import (
    BufferConsumer,
    ConsumerStats,
    ConsumerThread,
    OffsetGaps,
    TransactionConsumer,
    consumer_config,
)
from feature_repo.stream.topics import ensure_topic, replay
from feature_repo.stream.writers import (
    FeastRecentWriter,
    MemoryWriter,
    RecentWriter,
    RedisRecentWriter,
    writer_for,
)

__all__ = [
    "CARD_SPEC",
    "BufferConsumer",
    "BufferSpec",
    "ConsumerStats",
    "ConsumerThread",
    "Entry",
    "FeastRecentWriter",
    "MemoryWriter",
    "OffsetGaps",
    "RecentWriter",
    "RedisRecentWriter",
    "TransactionConsumer",
    "buffers_from_store",
    "consumer_config",
    "ensure_topic",
    "merge",
    "merge_entries",
    "replay",
    "writer_for",
]
