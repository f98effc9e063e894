"""The online reader against Feast itself, on both stores: same values, same missing
entities, same event times; and the materialized state equals the offline features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from feature_repo.store import StoreSettings, feature_store, materialize
from python_backend.fraud.features import (
    FEATURE_GROUPS,
    MODEL_STORED,
    MS_PER_DAY,
    RECENT_MAX_AGE_MS,
    assemble_model_inputs,
)
from python_backend.fraud.offline import FeatureTables, stored_features
from python_backend.fraud.online import open_reader
from tests.conftest import STORE_URL_FIXTURES

UNKNOWN = 10**9


@pytest.fixture(params=["sqlite", "redis", "redis_cluster"])
def store(request, tiny_build, tmp_path):
    """A Feast store of the tiny build's data, materialized as of its last day."""
    overrides = {
        "kind": request.param,
        "repo_dir": tmp_path / "repo",
        "data_dir": tiny_build.build_dir / "data" / "tiny",
    }
    if request.param in STORE_URL_FIXTURES:
        overrides["redis_url"] = request.getfixturevalue(STORE_URL_FIXTURES[request.param])
    settings = StoreSettings.from_env(**overrides)
    fs = feature_store(settings)
    materialize(fs, settings, log=lambda _m: None)
    return settings, fs


def _pairs(settings, n=150):
    tx = pd.read_parquet(settings.data_dir / "transactions.parquet")
    rng = np.random.default_rng(1)
    rows = tx.iloc[rng.integers(0, len(tx), n)]
    cards = np.append(rows["card_id"].to_numpy(), [UNKNOWN, UNKNOWN, 1])
    terminals = np.append(rows["terminal_id"].to_numpy(), [1, UNKNOWN, UNKNOWN])
    return cards, terminals


def test_reader_returns_exactly_what_feast_returns(store) -> None:
    settings, fs = store
    cards, terminals = _pairs(settings)
    refs = [f"{g.name}:{f.name}" for g in FEATURE_GROUPS for f in g.features]
    response = fs.get_online_features(
        features=refs,
        entity_rows=[
            {"card_id": int(c), "terminal_id": int(t)}
            for c, t in zip(cards, terminals, strict=True)
        ],
    )
    expected = response.to_dict()
    reader = open_reader(settings.kind, settings.reader_location)
    got = reader.read(cards, terminals, with_tx_ids=True)
    for feature in MODEL_STORED:
        for row, value in enumerate(expected[feature.name]):
            mine = got.stored[feature.name][row]
            if feature.dtype.endswith("_list"):
                value = value or []
                n = len(value)
                assert mine[: len(mine) - n].tolist() == [0] * (len(mine) - n)
                np.testing.assert_array_equal(
                    mine[len(mine) - n :],
                    np.asarray(value, mine.dtype),
                    err_msg=f"{feature.name}[{row}]",
                )
            elif value is None:
                assert mine == feature.default, (feature.name, row)
            else:
                assert mine == np.asarray(value, dtype=mine.dtype), (feature.name, row)
    assert [ids or [] for ids in expected["recent_tx_ids"]] == got.recent_tx_ids
    # Missing entities: Feast answers None for every feature; the reader flags the row.
    card_missing = [v is None for v in expected["card_tx_count_1d"]]
    terminal_missing = [v is None for v in expected["terminal_category"]]
    np.testing.assert_array_equal(~got.card_found, card_missing)
    np.testing.assert_array_equal(~got.terminal_found, terminal_missing)
    assert card_missing[-3] and card_missing[-2] and terminal_missing[-2]
    # Event times (what TTL checks use) are Feast's, to the second.
    names = response.proto.metadata.feature_names.val
    for group, flag in (
        ("card_daily", "card_tx_count_1d"),
        ("terminal_daily", "terminal_category"),
    ):
        stamps = response.proto.results[list(names).index(flag)].event_timestamps
        feast_s = np.array([ts.seconds for ts in stamps])
        np.testing.assert_array_equal(got.event_ms[group] // 1000, feast_s, err_msg=group)


def test_materialized_store_equals_offline_snapshot(store) -> None:
    """What serving reads at the start of the last day is what training computed for a
    transaction at that moment (daily snapshots and recent buffers)."""
    settings, _ = store
    tx = pd.read_parquet(settings.data_dir / "transactions.parquet")
    terminals = pd.read_parquet(settings.data_dir / "terminals.parquet")
    as_of = int(tx["ts_ms"].max()) // MS_PER_DAY * MS_PER_DAY
    cards, terminal_ids = _pairs(settings)
    queries = pd.DataFrame(
        {"card_id": cards, "terminal_id": terminal_ids, "ts_ms": np.full(len(cards), as_of)}
    )
    offline = stored_features(FeatureTables.build(tx, terminals), tx, queries)
    online = open_reader(settings.kind, settings.reader_location).read(cards, terminal_ids)
    # Feast materializes a card's buffer only while its newest entry is inside the view's
    # TTL: a card dormant for longer has no online row (and derive_recent ignores such
    # entries offline, so the model inputs agree either way).
    newest = offline["recent_ts_ms"].max(axis=1)
    expired = newest < as_of - RECENT_MAX_AGE_MS
    assert expired.sum() < len(cards)
    for name in ("recent_ts_ms", "recent_amounts", "recent_terminal_ids"):
        offline[name] = np.where(expired[:, None], 0, offline[name])
    for feature in MODEL_STORED:
        np.testing.assert_allclose(
            online.stored[feature.name], offline[feature.name], rtol=1e-6, err_msg=feature.name
        )
    amount, ts = np.full(len(cards), 25.0), queries["ts_ms"].to_numpy()
    served = assemble_model_inputs(online.stored, amount, ts, terminal_ids)
    trained = assemble_model_inputs(offline, amount, ts, terminal_ids)
    np.testing.assert_allclose(served.tabular, trained.tabular, rtol=1e-6)
    np.testing.assert_array_equal(served.sequence, trained.sequence)
    np.testing.assert_array_equal(served.categorical, trained.categorical)


def test_on_redis_cluster_the_features_are_spread_over_every_node(
    tiny_build, tmp_path, redis_cluster_service, redis_cluster_url
) -> None:
    import redis

    settings = StoreSettings.from_env(
        kind="redis_cluster",
        redis_url=redis_cluster_url,
        repo_dir=tmp_path / "repo",
        data_dir=tiny_build.build_dir / "data" / "tiny",
    )
    materialize(feature_store(settings), settings, log=lambda _m: None)
    keys = [redis.Redis(port=node.port).dbsize() for node in redis_cluster_service.nodes]
    assert len(keys) == 3 and min(keys) > 0.2 * sum(keys), keys


# -- the BLS's cache of daily views in front of Redis ---------------------------------------
@pytest.fixture(params=["redis", "redis_cluster"])
def redis_store(request, tiny_build, tmp_path):
    """The tiny build materialized into Redis (plain, and a cluster)."""
    settings = StoreSettings.from_env(
        kind=request.param,
        repo_dir=tmp_path / "repo",
        data_dir=tiny_build.build_dir / "data" / "tiny",
        redis_url=request.getfixturevalue(STORE_URL_FIXTURES[request.param]),
    )
    fs = feature_store(settings)
    materialize(fs, settings, log=lambda _m: None)
    return settings, fs


def _cached_reader(settings):
    from python_backend.fraud.online.cache import DailyCache

    reader = open_reader(settings.kind, settings.reader_location)
    reader.cache = DailyCache(max_entries=1000)
    return reader


def _same(a, b) -> bool:
    return (
        all(np.array_equal(a.stored[k], b.stored[k]) for k in a.stored)
        and all(np.array_equal(a.event_ms[k], b.event_ms[k]) for k in a.event_ms)
        and np.array_equal(a.card_found, b.card_found)
        and np.array_equal(a.terminal_found, b.terminal_found)
    )


def test_cached_reads_equal_the_stores_and_hit_after_the_first(redis_store) -> None:
    settings, _ = redis_store
    cards, terminals = _pairs(settings)
    plain, cached = open_reader(settings.kind, settings.reader_location), _cached_reader(settings)
    for _ in range(3):
        assert _same(cached.read(cards, terminals), plain.read(cards, terminals))
    for i in (0, 5, len(cards) - 1):  # one row at a time too (the pipeline, not the script)
        one = cards[i : i + 1], terminals[i : i + 1]
        assert _same(cached.read(*one), plain.read(*one))
    cache = cached.cache
    assert cache.hit_rate("terminal_id") > 0.6 and cache.hit_rate("card_id") > 0.6
    assert cache.invalidations == 0


def _flush(settings) -> None:
    """Every key of the store gone (Feast keeps a newer row over an older one written
    later, so going back a day needs an empty store)."""
    reader = open_reader(settings.kind, settings.reader_location)
    if settings.kind == "redis_cluster":
        from redis.cluster import RedisCluster

        reader.client.flushall(target_nodes=RedisCluster.PRIMARIES)
    else:
        reader.client.flushdb()
    reader.close()


def test_materialization_empties_the_cache(redis_store, monkeypatch) -> None:
    """The daily views of the day before cached; those of the last day written: without the
    version stamp the cache serves what it held, with it (what ``materialize`` does last) the
    new views."""
    import feature_repo.store as store_module

    settings, fs = redis_store
    cards, terminals = _pairs(settings)
    tx = pd.read_parquet(settings.data_dir / "transactions.parquet")
    last_day = int(tx["ts_ms"].max()) // MS_PER_DAY * MS_PER_DAY
    _flush(settings)
    materialize(fs, settings, as_of_ms=last_day - MS_PER_DAY, log=lambda _m: None)
    plain, cached = open_reader(settings.kind, settings.reader_location), _cached_reader(settings)
    before = cached.read(cards, terminals)
    monkeypatch.setattr(store_module, "stamp_version", lambda _s: None)
    materialize(fs, settings, as_of_ms=last_day, log=lambda _m: None)
    now = plain.read(cards, terminals)
    views = ("card_daily", "terminal_daily")
    for view in views:
        assert not np.array_equal(now.event_ms[view], before.event_ms[view]), view
    held = cached.read(cards, terminals)
    for view in views:
        assert np.array_equal(held.event_ms[view], before.event_ms[view]), view
    monkeypatch.undo()
    store_module.stamp_version(settings)
    assert _same(cached.read(cards, terminals), plain.read(cards, terminals))
    assert cached.cache.invalidations == 1


def test_without_the_store_the_cached_daily_views_still_serve(redis_store) -> None:
    import redis

    from client.local.services import free_port

    settings, _ = redis_store
    cards, terminals = _pairs(settings)
    plain, cached = open_reader(settings.kind, settings.reader_location), _cached_reader(settings)
    expected = plain.read(cards, terminals)
    cached.read(cards, terminals)
    # The store away: the same cache in front of a Redis that does not answer.
    away = open_reader("redis", f"redis://127.0.0.1:{free_port()}/0")
    away.cache = cached.cache
    with pytest.raises(redis.ConnectionError):
        away.read(cards, terminals)
    served = away.cached_features(cards, terminals)
    assert served.from_cache
    for view in ("card_daily", "terminal_daily"):
        assert np.array_equal(served.event_ms[view], expected.event_ms[view]), view
    assert not served.event_ms["card_recent"].any(), "the recent view is never cached"
    assert np.array_equal(served.terminal_found, expected.terminal_found)
    for name in ("terminal_tx_count_7d", "card_amount_mean_7d"):
        assert np.array_equal(served.stored[name], expected.stored[name]), name


def test_a_store_restarted_empty_keeps_the_cache_until_its_refill_is_stamped(
    redis_store,
) -> None:
    """Redis emptied (as a restart without persistence leaves it): the cached daily views
    still serve while the stamp is missing, and nothing of the empty store is cached; the
    refill's stamp brings the reads back to the store's."""
    settings, fs = redis_store
    cards, terminals = _pairs(settings)
    plain, cached = open_reader(settings.kind, settings.reader_location), _cached_reader(settings)
    before = cached.read(cards, terminals)
    _flush(settings)
    held = cached.read(cards, terminals)
    for view in ("card_daily", "terminal_daily"):
        assert np.array_equal(held.event_ms[view], before.event_ms[view]), view
    assert not held.event_ms["card_recent"].any(), "the recent view is read from the store"
    assert not cached.cache.stamped and cached.cache.invalidations == 0
    materialize(fs, settings, log=lambda _m: None)
    assert _same(cached.read(cards, terminals), plain.read(cards, terminals))
    assert cached.cache.stamped and cached.cache.invalidations == 1
