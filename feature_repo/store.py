"""The Feast feature store of the fraud service: configuration, apply, materialize.

Chosen by the environment:

* ``FEATURE_STORE``: ``sqlite`` (default, embedded, no server) or ``redis``;
* ``REDIS_URL``: ``redis://host:port/db`` (default ``redis://127.0.0.1:6379/0``);
* ``FEATURE_DATA``: the folder of the offline tables (default ``build/data/default``,
  written by ``make engines``);
* ``FEATURE_REPO_DIR``: where the registry and the SQLite file live
  (default ``build/feature_repo``).

The repository config is built in code rather than in ``feature_store.yaml`` because the
two stores need differently shaped ``online_store`` sections.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
from feast import FeatureStore, RepoConfig
from feast.infra.online_stores.redis import RedisOnlineStoreConfig
from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig
from feast.repo_config import RegistryConfig

from feature_repo.definitions import definitions, source_path
from python_backend import settings
from python_backend.feast_layout import PROJECT
from python_backend.fraud.features import CARD_RECENT, FEATURE_GROUPS, MS_PER_DAY
from python_backend.fraud.offline import recent_buffers
from python_backend.stores import LOCATIONS, REDIS_KINDS, store_kind


@dataclass(frozen=True)
class StoreSettings:
    kind: str = settings.FEATURE_STORE.default
    redis_url: str = settings.REDIS_URL.default
    data_dir: Path = Path(settings.FEATURE_DATA.default)
    repo_dir: Path = Path(settings.FEATURE_REPO_DIR.default)

    @classmethod
    def from_env(cls, **overrides) -> StoreSettings:
        env = {
            "kind": settings.FEATURE_STORE.get(),
            "redis_url": settings.REDIS_URL.get(),
            "data_dir": Path(settings.FEATURE_DATA.get()),
            "repo_dir": Path(settings.FEATURE_REPO_DIR.get()),
        }
        env.update(overrides)
        env["kind"] = store_kind(env["kind"])
        return cls(**env)

    @property
    def sqlite_path(self) -> Path:
        return self.repo_dir / "online.db"

    @property
    def reader_location(self) -> str:
        """What ``python_backend.fraud.online.open_reader`` needs for this store."""
        return self.redis_url if self.kind in REDIS_KINDS else str(self.sqlite_path)

    def serving_env(self) -> dict[str, str]:
        """The environment a server (or a job) needs to read this store."""
        return {
            settings.FEATURE_STORE.name: self.kind,
            LOCATIONS[self.kind].name: self.reader_location,
            settings.FEATURE_DATA.name: str(self.data_dir),
            settings.FEATURE_REPO_DIR.name: str(self.repo_dir),
        }


def _redis_connection_string(url: str) -> str:
    parsed = urlparse(url)
    db = (parsed.path or "/0").lstrip("/") or "0"
    return f"{parsed.hostname or '127.0.0.1'}:{parsed.port or 6379},db={db}"


def repo_config(store_settings: StoreSettings) -> RepoConfig:
    if store_settings.kind == "redis":
        online = RedisOnlineStoreConfig(
            connection_string=_redis_connection_string(store_settings.redis_url)
        )
    elif store_settings.kind == "redis_cluster":
        # Feast's cluster client takes the seed nodes (host:port, comma-separated), no db.
        parsed = urlparse(store_settings.redis_url)
        online = RedisOnlineStoreConfig(
            redis_type="redis_cluster",
            connection_string=f"{parsed.hostname or '127.0.0.1'}:{parsed.port or 6379}",
        )
    else:
        online = SqliteOnlineStoreConfig(path=str(store_settings.sqlite_path))
    return RepoConfig(
        project=PROJECT,
        provider="local",
        # A long registry cache: re-reading the file registry inside requests costs 5-8 ms.
        registry=RegistryConfig(
            path=str(store_settings.repo_dir / "registry.db"), cache_ttl_seconds=3600
        ),
        online_store=online,
        entity_key_serialization_version=3,
    )


def feature_store(store_settings: StoreSettings) -> FeatureStore:
    store_settings.repo_dir.mkdir(parents=True, exist_ok=True)
    return FeatureStore(config=repo_config(store_settings))


def apply(store: FeatureStore, store_settings: StoreSettings) -> None:
    """Register the entities and feature views (``feast apply``)."""
    _ensure_recent_source(store_settings)
    store.apply(definitions(store_settings.data_dir))


def _ensure_recent_source(store_settings: StoreSettings) -> None:
    """Feast needs the push source's batch file to exist, even before any backfill."""
    path = source_path(store_settings.data_dir, CARD_RECENT)
    if not path.exists():
        write_recent_snapshot(
            pd.DataFrame(columns=["transaction_id", "ts_ms", "card_id", "terminal_id", "amount"]),
            np.zeros(0, dtype=np.int64),
            0,
            path,
        )


def write_recent_snapshot(
    events: pd.DataFrame, cards: np.ndarray, as_of_ms: int, path: Path
) -> pd.DataFrame:
    """``card_recent`` rows for ``cards`` as of ``as_of_ms``: each card's buffer of its last
    transactions before that time, stamped with its newest transaction's time."""
    buffers = (
        recent_buffers(events, cards, np.full(len(cards), as_of_ms), with_ids=True)
        if len(cards)
        else {f.name: np.zeros((0, 0)) for f in CARD_RECENT.features}
    )
    ts = buffers["recent_ts_ms"]
    newest = ts.max(axis=1) if len(cards) else np.zeros(0, dtype=np.int64)
    keep = newest > 0
    frame = pd.DataFrame(
        {
            "card_id": np.asarray(cards, dtype=np.int64)[keep],
            "event_timestamp": pd.to_datetime(newest[keep], unit="ms", utc=True),
        }
    )
    for feature in CARD_RECENT.features:
        rows = buffers[feature.name][keep]
        valid = ts[keep] > 0
        frame[feature.name] = [list(r[v]) for r, v in zip(rows, valid, strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return frame


def materialize(
    store: FeatureStore, store_settings: StoreSettings, as_of_ms: int | None = None, log=print
) -> dict[str, int]:
    """Fill the online store with the state as of ``as_of_ms`` (default: the start of the
    last simulated day, the day the demo replays): each entity's daily snapshot of that
    day and each card's recent-transaction buffer at that moment. Returns rows per view."""
    events = pd.read_parquet(store_settings.data_dir / "transactions.parquet")
    if as_of_ms is None:
        as_of_ms = int(events["ts_ms"].max()) // MS_PER_DAY * MS_PER_DAY
    started = time.perf_counter()
    history = events[events["ts_ms"] < as_of_ms]
    cards = np.unique(history["card_id"].to_numpy())
    write_recent_snapshot(
        history, cards, as_of_ms, source_path(store_settings.data_dir, CARD_RECENT)
    )
    apply(store, store_settings)  # re-register so Feast sees the fresh source file
    end = datetime.fromtimestamp(as_of_ms / 1000, tz=UTC)
    counts = {}
    for group in FEATURE_GROUPS:
        t0 = time.perf_counter()
        store.materialize(
            start_date=end - timedelta(days=group.ttl_days),
            end_date=end,
            feature_views=[group.name],
        )
        table = pd.read_parquet(
            source_path(store_settings.data_dir, group), columns=[group.entity, "event_timestamp"]
        )
        window = (table["event_timestamp"] > end - timedelta(days=group.ttl_days)) & (
            table["event_timestamp"] <= end
        )
        counts[group.name] = int(table.loc[window, group.entity].nunique())
        log(
            f"  {group.name:<15} {counts[group.name]:>9,} entities -> {store_settings.kind} "
            f"in {time.perf_counter() - t0:.1f} s"
        )
    stamp_version(store_settings)
    log(f"materialized as of {end.isoformat()} in {time.perf_counter() - started:.1f} s")
    return counts


def stamp_version(store_settings: StoreSettings) -> str | None:
    """Tell the BLS's caches that the daily views changed: stamp the version key they read
    with every batch (``python_backend.fraud.online.cache``) with a new unique value (a
    counter would start again at 1 in a Redis that restarted empty); Redis only (the
    embedded store has no cache in front of it). Returns the stamp."""
    if store_settings.kind not in REDIS_KINDS:
        return None
    from python_backend.feast_layout import PROJECT
    from python_backend.fraud.online import READERS
    from python_backend.fraud.online.cache import VERSION_KEY

    stamp = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
    client = READERS[store_settings.kind].connect(store_settings.redis_url, timeout_s=5.0)
    try:
        client.set(f"{PROJECT}:{VERSION_KEY}", stamp)
    finally:
        client.close()
    return stamp


def fill(store_settings: StoreSettings, log=print) -> dict[str, str]:
    """Apply, materialize the online store from the offline tables, and return the
    environment a server needs to read it: what every tool that starts a server does."""
    materialize(feature_store(store_settings), store_settings, log=log)
    return store_settings.serving_env()
