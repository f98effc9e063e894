"""Online reads of the recommender's user features, in Feast's layout, without Feast.

Redis (production): both views of a user (``user_embedding``, ``user_recent_clicks``) live in
the user's one hash; a batch is one pipelined round trip of HMGETs. SQLite (embedded): one
query per view. See ``python_backend.feast_layout`` for the layout.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from python_backend.feast_layout import PROJECT, entity_key, redis_field, redis_key
from python_backend.recommender.core import (
    CLICKS_VIEW,
    USER_EMBEDDING,
    USER_JOIN_KEY,
    USER_RECENT_CLICKS,
    USER_VIEW,
    UserFeatures,
    features_from_values,
)
from python_backend.stores import open_store

#: What ranking needs (the click ids are the consumer's bookkeeping: not read to serve).
SERVED = (
    *((name, USER_VIEW) for name in USER_EMBEDDING.names),
    ("recent_items", CLICKS_VIEW),
)
#: A click buffer entry as the stream consumer keeps it: (ts_ms, item_id, click_id).
CLICK_ENTRY = USER_RECENT_CLICKS.names


def click_entries(values: dict[str, list[bytes | None]], user_ids) -> dict[int, list[tuple]]:
    from python_backend.feast_layout import decode_value

    out = {}
    for i, uid in enumerate(user_ids):
        columns = [decode_value(values[name][i]) or [] for name in CLICK_ENTRY]
        out[int(uid)] = list(zip(*columns, strict=True))
    return out


def _fields(names_views) -> list[bytes]:
    return [redis_field(view, name) for name, view in names_views]


class RedisUserReader:
    def __init__(self, url: str, project: str = PROJECT, timeout_s: float = 0.025) -> None:
        import redis

        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self.project = project
        # (names, Redis fields) of each read, made once: ``read`` is on the serving path.
        self.served = ([name for name, _v in SERVED], _fields(SERVED))
        clicks = [(name, CLICKS_VIEW) for name in CLICK_ENTRY]
        self.clicks = (list(CLICK_ENTRY), _fields(clicks))

    def _values(self, user_ids, names_fields) -> dict[str, list[bytes | None]]:
        """One pipelined round trip: each user's hash, the named fields."""
        names, fields = names_fields
        pipe = self.client.pipeline(transaction=False)
        for uid in user_ids:
            pipe.hmget(redis_key(self.project, USER_JOIN_KEY, int(uid)), fields)
        rows = pipe.execute()
        return {name: [row[k] for row in rows] for k, name in enumerate(names)}

    def read(self, user_ids: np.ndarray) -> UserFeatures:
        return features_from_values(self._values(user_ids, self.served), len(user_ids))

    def read_clicks(self, user_ids) -> dict[int, list[tuple]]:
        """Each user's click buffer as the consumer keeps it."""
        return click_entries(self._values(user_ids, self.clicks), user_ids)

    def close(self) -> None:
        self.client.close()


class SqliteUserReader:
    def __init__(self, path: str | Path, project: str = PROJECT) -> None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no online store at {path}: run `make recommender` first")
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        self.project = project

    def _values(self, user_ids, views) -> tuple[list[bytes], dict[bytes, dict[str, bytes]]]:
        keys = [entity_key(USER_JOIN_KEY, int(u)) for u in user_ids]
        unique = list(dict.fromkeys(keys))
        by_key: dict[bytes, dict[str, bytes]] = {}
        for view in views:
            try:
                rows = self.conn.execute(
                    f'SELECT entity_key, feature_name, value FROM "{self.project}_{view}" '
                    f"WHERE entity_key IN ({','.join('?' * len(unique))})",
                    unique,
                ).fetchall()
            except sqlite3.OperationalError:  # the view has no table yet (no click so far)
                rows = []
            for key, feature, value in rows:
                by_key.setdefault(key, {})[feature] = value
        return keys, by_key

    def read(self, user_ids: np.ndarray) -> UserFeatures:
        keys, by_key = self._values(user_ids, (USER_VIEW, CLICKS_VIEW))
        values = {name: [by_key.get(k, {}).get(name) for k in keys] for name, _v in SERVED}
        return features_from_values(values, len(user_ids))

    def read_clicks(self, user_ids) -> dict[int, list[tuple]]:
        keys, by_key = self._values(user_ids, (CLICKS_VIEW,))
        values = {name: [by_key.get(k, {}).get(name) for k in keys] for name in CLICK_ENTRY}
        return click_entries(values, user_ids)

    def close(self) -> None:
        self.conn.close()


#: The stores a user reader can be opened on.
READERS = {"redis": RedisUserReader, "sqlite": SqliteUserReader}


def open_user_reader(kind: str | None = None, location: str | None = None):
    """The reader for ``kind`` (default ``FEATURE_STORE``) at ``location`` (default from
    the settings)."""
    return open_store(READERS, kind, location)
