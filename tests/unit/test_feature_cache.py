"""The BLS's cache of daily views (``python_backend.fraud.online.cache``): bounded, aged,
emptied when materialization stamps a new version; the pure logic, with a fake clock."""

from __future__ import annotations

from python_backend.fraud.online.cache import DailyCache


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_bounded_cache_drops_the_least_recently_used() -> None:
    cache = DailyCache(max_entries=2, clock=Clock())
    cache.saw_version(b"1")
    cache.put("terminal_id", 1, [b"a"])
    cache.put("terminal_id", 2, [b"b"])
    assert cache.get("terminal_id", 1) == [b"a"]  # 1 is now the most recent
    cache.put("terminal_id", 3, [b"c"])
    assert cache.get("terminal_id", 2) is None and cache.get("terminal_id", 1) == [b"a"]
    assert len(cache.entries["terminal_id"]) == 2 and len(cache.entries["card_id"]) == 0


def test_entries_age_out_while_the_store_answers_but_serve_without_it() -> None:
    clock = Clock()
    cache = DailyCache(max_age_s=300, clock=clock)
    cache.saw_version(b"1")
    cache.put("card_id", 7, [b"x"])
    clock.t = 299
    assert cache.get("card_id", 7) == [b"x"]
    clock.t = 301
    assert cache.get("card_id", 7, fresh_only=False) == [b"x"], "the store down: still served"
    assert cache.get("card_id", 7) is None, "read again from the store"
    assert cache.counts[("expired", "card_id")] == 1
    assert cache.counts[("hit_without_store", "card_id")] == 1


def test_a_new_version_empties_the_cache_and_is_counted() -> None:
    cache = DailyCache(clock=Clock())
    cache.saw_version(b"1")
    assert cache.invalidations == 0, "the first version seen is no invalidation"
    cache.put("card_id", 1, [b"x"])
    cache.saw_version(b"1")
    assert cache.get("card_id", 1) == [b"x"]
    cache.saw_version(b"2")
    assert cache.get("card_id", 1) is None and cache.invalidations == 1
    assert cache.hit_rate() == 0.5 and cache.hit_rate("terminal_id") == 0.0


def test_a_store_that_lost_its_stamp_keeps_the_cache_until_a_new_one() -> None:
    """Redis restarted empty: the version key is gone while the refill runs. What is cached
    was materialized, so it stays (and nothing new is cached); the refill's new stamp drops
    it; the old stamp back (a replica promoted with the same data) keeps it."""
    cache = DailyCache(clock=Clock())
    cache.saw_version(b"s1")
    cache.put("terminal_id", 4, [b"t"])
    assert cache.stamped
    assert not cache.saw_version(None)
    assert not cache.stamped and cache.get("terminal_id", 4) == [b"t"]
    assert not cache.saw_version(b"s1") and cache.get("terminal_id", 4) == [b"t"]
    cache.saw_version(None)
    assert cache.saw_version(b"s2"), "the refill's stamp: what was cached is outdated"
    assert cache.get("terminal_id", 4) is None and cache.invalidations == 1
