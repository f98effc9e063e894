"""Online features from Redis, in Feast's layout, in one pipelined round trip per batch.

Feast keeps every feature view of an entity in one hash, so a batch costs one ``HMGET`` per
card (``card_daily`` and ``card_recent`` fields together) and one per terminal, sent as a
single pipeline. Measured in the issue that chose this design: 0.24 ms p50 for one (card,
terminal) pair against 0.7 ms for Feast's ``get_online_features``, 2.5 ms against 8.5 ms for
64, without Feast's import time (8 s) and memory (234 MB per process).
"""

from __future__ import annotations

import numpy as np
import redis

from python_backend.feast_layout import (
    decode_timestamp_ms,
    decode_value,
    redis_field,
    redis_key,
    redis_ts_field,
)
from python_backend.features import FEATURE_GROUPS, FeatureGroup
from python_backend.online_features import (
    PROJECT,
    OnlineFeatureReader,
    OnlineFeatures,
    columns_from_values,
)


class RedisFeatureReader(OnlineFeatureReader):
    def __init__(self, url: str, project: str = PROJECT, timeout_s: float = 0.05) -> None:
        # Short socket timeouts: a slow store must fail fast inside the request budget.
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self.project = project
        self._layout: dict[str, list[tuple[FeatureGroup, str | None, bytes]]] = {}
        for entity in ("card_id", "terminal_id"):
            fields = []
            for group in (g for g in FEATURE_GROUPS if g.entity == entity):
                fields += [(group, f.name, redis_field(group.name, f.name)) for f in group.features]
                fields.append((group, None, redis_ts_field(group.name)))
            self._layout[entity] = fields

    def read(
        self, card_ids: np.ndarray, terminal_ids: np.ndarray | None, with_tx_ids: bool = False
    ) -> OnlineFeatures:
        batch = len(card_ids)
        pipe = self.client.pipeline(transaction=False)
        for entity, ids in (("card_id", card_ids), ("terminal_id", terminal_ids)):
            fields = [field for _, _, field in self._layout[entity]]
            for value in ids if ids is not None else ():
                pipe.hmget(redis_key(self.project, entity, int(value)), fields)
        replies = pipe.execute()
        if terminal_ids is None:
            replies += [[None] * len(self._layout["terminal_id"])] * batch
        values: dict[str, list[bytes | None]] = {}
        event_ms: dict[str, np.ndarray] = {}
        found: dict[str, np.ndarray] = {}
        for offset, entity in ((0, "card_id"), (batch, "terminal_id")):
            rows = replies[offset : offset + batch]
            for column, (group, name, _) in enumerate(self._layout[entity]):
                cells = [row[column] for row in rows]
                if name is None:
                    event_ms[group.name] = np.array(
                        [decode_timestamp_ms(c) for c in cells], dtype=np.int64
                    )
                else:
                    values[name] = cells
            found[entity] = np.any(
                [event_ms[g.name] > 0 for g in FEATURE_GROUPS if g.entity == entity], axis=0
            )
        tx_ids = None
        if with_tx_ids:
            tx_ids = [decode_value(v) or [] for v in values["recent_tx_ids"]]
        return OnlineFeatures(
            stored=columns_from_values(values, batch),
            card_found=found["card_id"],
            terminal_found=found["terminal_id"],
            event_ms=event_ms,
            recent_tx_ids=tx_ids,
        )

    def close(self) -> None:
        self.client.close()
