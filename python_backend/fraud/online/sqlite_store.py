"""Online features from Feast's embedded SQLite online store (the default: no server).

One ``SELECT`` per feature view over Feast's table ``<project>_<view>``, read-only. Feast
writes one row per (entity, feature) holding a serialized ``feast.types.Value``.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from python_backend.feast_layout import PROJECT, entity_key
from python_backend.fraud.features import FEATURE_GROUPS
from python_backend.fraud.online.base import (
    OnlineFeatureReader,
    OnlineFeatures,
    features_from_values,
)


def _event_ms(value: int | float | str | datetime | None) -> int:
    """Feast 0.67 stores ``event_ts`` as epoch seconds; older files hold ISO text."""
    if value is None:
        return 0
    if isinstance(value, int | float):
        return round(value * 1000)
    ts = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return int(ts.timestamp() * 1000)


class SqliteFeatureReader(OnlineFeatureReader):
    single_round_trip = False  # one query per view, in process: no network at all

    def __init__(self, path: str | Path, project: str = PROJECT) -> None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"no online store at {path}: run `make features` to create and fill it"
            )
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        self.project = project

    def read(
        self, card_ids: np.ndarray, terminal_ids: np.ndarray | None, with_tx_ids: bool = False
    ) -> OnlineFeatures:
        batch = len(card_ids)
        values: dict[str, list[bytes | None]] = {}
        event_ms: dict[str, np.ndarray] = {}
        found: dict[str, np.ndarray] = {
            "card_id": np.zeros(batch, dtype=bool),
            "terminal_id": np.zeros(batch, dtype=bool),
        }
        ids = {"card_id": card_ids, "terminal_id": terminal_ids}
        for group in FEATURE_GROUPS:
            if ids[group.entity] is None:
                for feature in group.features:
                    values[feature.name] = [None] * batch
                event_ms[group.name] = np.zeros(batch, dtype=np.int64)
                continue
            keys = [entity_key(group.entity, int(v)) for v in ids[group.entity]]
            unique = list(dict.fromkeys(keys))
            queried = time.perf_counter()
            rows = self.conn.execute(
                f'SELECT entity_key, feature_name, value, event_ts FROM "{self.project}_'
                f'{group.name}" WHERE entity_key IN ({",".join("?" * len(unique))})',
                unique,
            ).fetchall()
            if self.timeline is not None:
                self.timeline.add(
                    f"store.{group.name}",
                    queried,
                    time.perf_counter(),
                    store="sqlite",
                    keys=len(unique),
                )
            by_key: dict[bytes, dict[str, bytes]] = {}
            ts_by_key: dict[bytes, int] = {}
            for key, feature, value, ts in rows:
                by_key.setdefault(key, {})[feature] = value
                ts_by_key[key] = _event_ms(ts)
            for feature in group.features:
                values[feature.name] = [by_key.get(k, {}).get(feature.name) for k in keys]
            event_ms[group.name] = np.array([ts_by_key.get(k, 0) for k in keys], dtype=np.int64)
            found[group.entity] |= event_ms[group.name] > 0
        return features_from_values(values, event_ms, found, batch, with_tx_ids)

    def close(self) -> None:
        self.conn.close()
