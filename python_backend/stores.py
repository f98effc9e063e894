"""Which online store a reader opens, and where: one table for every pipeline.

Feast's shape: each pipeline has one small reader interface and one module per store, and
names its classes in a ``{store: class}`` table (``python_backend.fraud.online.READERS``,
``python_backend.recommender.online.READERS``); :func:`open_store` picks the class for
``FEATURE_STORE`` and the location from the settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from python_backend import settings

#: Each store's location setting: a Redis URL, or the SQLite file.
#: ``redis_cluster``: a Redis Cluster, ``REDIS_URL`` one of its nodes (the client finds the
#: others and routes each key to the node holding its slot).
LOCATIONS = {
    "sqlite": settings.FEATURE_SQLITE_PATH,
    "redis": settings.REDIS_URL,
    "redis_cluster": settings.REDIS_URL,
}
#: The stores that are Redis, single node or cluster.
REDIS_KINDS = ("redis", "redis_cluster")

Reader = TypeVar("Reader")


def store_kind(kind: str | None = None) -> str:
    """``kind``, else ``FEATURE_STORE``; a clear error for a store nobody implements."""
    kind = (kind or settings.FEATURE_STORE.get()).lower()
    if kind not in LOCATIONS:
        known = " or ".join(repr(k) for k in LOCATIONS)
        raise ValueError(f"FEATURE_STORE must be {known}, got {kind!r}")
    return kind


def open_store(
    readers: Mapping[str, Callable[[str], Reader]],
    kind: str | None = None,
    location: str | None = None,
) -> Reader:
    """The reader of ``readers`` for ``kind`` (default ``FEATURE_STORE``) at ``location``
    (default the store's setting: ``REDIS_URL`` or ``FEATURE_SQLITE_PATH``)."""
    kind = store_kind(kind)
    if kind not in readers:
        raise ValueError(
            f"FEATURE_STORE={kind}: this pipeline reads {' or '.join(sorted(readers))} only"
        )
    return readers[kind](location or LOCATIONS[kind].get())
