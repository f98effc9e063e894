"""Online fraud features: the reader interface, one module per store, the table of them.

``open_reader()`` returns the reader for ``FEATURE_STORE`` (``sqlite``, the default, or
``redis``) at its location (``FEATURE_SQLITE_PATH`` / ``REDIS_URL``).
"""

from __future__ import annotations

from python_backend.feast_layout import PROJECT
from python_backend.fraud.online.base import (
    OnlineFeatureReader,
    OnlineFeatures,
    columns_from_values,
    empty_features,
    features_from_values,
    left_padded,
)
from python_backend.fraud.online.redis_store import RedisClusterFeatureReader, RedisFeatureReader
from python_backend.fraud.online.sqlite_store import SqliteFeatureReader
from python_backend.stores import open_store

#: The stores a fraud reader can be opened on.
READERS: dict[str, type[OnlineFeatureReader]] = {
    "redis": RedisFeatureReader,
    "redis_cluster": RedisClusterFeatureReader,
    "sqlite": SqliteFeatureReader,
}


def open_reader(kind: str | None = None, location: str | None = None) -> OnlineFeatureReader:
    """The reader for ``kind`` (default ``FEATURE_STORE``) at ``location`` (default from
    the settings)."""
    return open_store(READERS, kind, location)


__all__ = [
    "PROJECT",
    "READERS",
    "OnlineFeatureReader",
    "OnlineFeatures",
    "RedisClusterFeatureReader",
    "RedisFeatureReader",
    "SqliteFeatureReader",
    "columns_from_values",
    "empty_features",
    "features_from_values",
    "left_padded",
    "open_reader",
]
