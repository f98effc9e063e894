"""Hot keys' daily views, cached in the BLS's process (the mission's write-through cache).

The daily views (``card_daily``, ``terminal_daily``) change once a day, when materialization
writes them; the recent view (``card_recent``) changes with every transaction. So a batch
reads its cards' recent fields from the store every time, and a daily view only when it is
not cached: a cached terminal costs no key at all, a cached card only its recent fields.

- **Bounded**: at most ``max_entries`` per entity, the least recently used out first.
- **Invalidated when materialization writes**: it stamps :data:`VERSION_KEY` with a new
  unique value when it is done (``feature_repo.store.materialize``); every read fetches the
  key in the same round trip and drops everything cached when it changed. An entry also
  expires after ``max_age_s``, should a writer not stamp the key.
- **A store that lost its stamp** (Redis restarted empty, a refill under way) keeps what is
  cached: those views were materialized, and the refill stamps a new value when it is done.
  Meanwhile nothing new is cached (what an emptied store answers is not a materialized day).
  The stamp is unique, not a counter, so a store that restarts and counts again from 1 cannot
  pass for the version the cache holds.
- **Freshness**: an entry keeps its view's stored cells, event time included, so a view
  older than its freshness limit is as stale from the cache as from the store (the service
  decides without it).
- **When the store fails** (down, slow, its circuit open), what is cached still serves
  (:meth:`DailyCache.features`): the cached daily views, within their freshness limit; the
  recent view is unavailable.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

#: Stamped with a new unique value by each materialization (a Redis string next to Feast's
#: hashes).
VERSION_KEY = "fraud:materialized_version"


class DailyCache:
    def __init__(
        self,
        max_entries: int = 50_000,
        max_age_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self.clock = clock
        self.entries: dict[str, OrderedDict[int, tuple[float, list]]] = {
            "card_id": OrderedDict(),
            "terminal_id": OrderedDict(),
        }
        self.version: bytes | None = None
        #: Whether the store held a stamp at the last read: nothing is cached while it does not.
        self.stamped = False
        #: Lookups by outcome (hit, miss, expired) and entity; invalidations.
        self.counts: dict[tuple[str, str], int] = {}
        self.invalidations = 0

    @classmethod
    def from_settings(cls) -> DailyCache | None:
        """``FEATURE_CACHE_ENTRIES`` (0: None, no cache) and ``FEATURE_CACHE_S``."""
        from python_backend import settings

        entries = settings.FEATURE_CACHE_ENTRIES.get_int()
        if entries <= 0:
            return None
        return cls(entries, settings.FEATURE_CACHE_S.get_float())

    def _count(self, outcome: str, entity: str, n: int = 1) -> None:
        key = (outcome, entity)
        self.counts[key] = self.counts.get(key, 0) + n

    def saw_version(self, version: bytes | None) -> bool:
        """The version key as read with a batch: a new stamp drops every entry; no stamp
        keeps them (and caches nothing new). Whether anything was dropped (the batch's cached
        views are then outdated)."""
        self.stamped = version is not None
        if version is None or version == self.version:
            return False
        dropped = any(self.entries.values())
        if self.version is not None or dropped:
            self.invalidations += 1
            for entries in self.entries.values():
                entries.clear()
        self.version = version
        return dropped

    def get(self, entity: str, entity_id: int, fresh_only: bool = True) -> list | None:
        """The cached cells of an entity's daily view, or None. ``fresh_only``: within
        ``max_age_s`` of being cached (a read with the store); False: whatever is held (the
        store did not answer; the view's event time still says how old it is)."""
        entries = self.entries[entity]
        found = entries.get(entity_id)
        if not fresh_only:
            self._count("hit_without_store" if found else "miss_without_store", entity)
            return None if found is None else found[1]
        if found is None:
            self._count("miss", entity)
            return None
        cached_at, cells = found
        if self.clock() - cached_at > self.max_age_s:
            del entries[entity_id]
            self._count("expired", entity)
            return None
        entries.move_to_end(entity_id)
        self._count("hit", entity)
        return cells

    def put(self, entity: str, entity_id: int, cells: list) -> None:
        entries = self.entries[entity]
        entries[entity_id] = (self.clock(), cells)
        entries.move_to_end(entity_id)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)

    def hit_rate(self, entity: str | None = None) -> float:
        """Hits over lookups made with the store (``entity``: one entity's)."""
        counts = {o: n for (o, e), n in self.counts.items() if entity is None or e == entity}
        lookups = counts.get("hit", 0) + counts.get("miss", 0) + counts.get("expired", 0)
        return counts.get("hit", 0) / lookups if lookups else 0.0
