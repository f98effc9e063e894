"""The traffic every system is measured with: simulated transactions of the last day (many
distinct cards and terminals, every fraud of the day and normal traffic), one per request."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from python_backend.fraud.features import MS_PER_DAY

COLUMNS = ["transaction_id", "card_id", "terminal_id", "amount", "ts_ms"]


def sample_transactions(data_dir: Path, n: int = 2000, seed: int = 11) -> pd.DataFrame:
    """``n`` transactions of the last simulated day in time order, every fraud included."""
    tx = pd.read_parquet(data_dir / "transactions.parquet")
    start = int(tx["ts_ms"].max()) // MS_PER_DAY * MS_PER_DAY
    day = tx[tx["ts_ms"] >= start]
    frauds = day[day["is_fraud"] == 1]
    normal = day[day["is_fraud"] == 0]
    take = min(len(normal), max(0, n - len(frauds)))
    picked = pd.concat([frauds, normal.sample(take, random_state=seed)])
    return picked.sort_values("ts_ms").reset_index(drop=True)


def rows(frame: pd.DataFrame) -> list[dict]:
    return frame[COLUMNS].to_dict("records")


def prepared(scale: str, log=print, n: int = 5000) -> tuple[str, dict[str, str], list[dict]]:
    """What a benchmark against a server of ``scale`` needs: models built (the scale they
    were built at), the online store filled (the environment a server reads it with), and
    ``n`` transactions of the last day as requests."""
    from client.launcher import ensure_features, ensure_models
    from python_backend.paths import DATA

    scale = ensure_models(scale, log)
    env = ensure_features(scale, log)
    return scale, env, rows(sample_transactions(DATA / scale, n))


def perf_analyzer_data(frame: pd.DataFrame, path: Path) -> Path:
    """perf_analyzer ``--input-data``: one entry per request, one transaction each."""
    entries = [
        {
            "TRANSACTION_ID": {"content": [str(r.transaction_id)], "shape": [1]},
            "CARD_ID": {"content": [int(r.card_id)], "shape": [1]},
            "TERMINAL_ID": {"content": [int(r.terminal_id)], "shape": [1]},
            "AMOUNT": {"content": [float(np.float32(r.amount))], "shape": [1]},
            "TIMESTAMP_MS": {"content": [int(r.ts_ms)], "shape": [1]},
        }
        for r in frame.itertuples()
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": entries}))
    return path
