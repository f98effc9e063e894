"""Online/offline parity: replay simulated transactions through the stream into the online
store and compare the model inputs built from what is read online with the point-in-time
features the models were trained on, for the same transactions.

The replay follows the serving order: a transaction's features are read before the
transaction itself is published. Transactions go in waves in which no card appears twice;
each wave is read, then published, then consumed, before the next.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from feature_repo.store import StoreSettings, feature_store, materialize
from feature_repo.stream import TransactionConsumer, ensure_topic, replay, writer_for
from python_backend.fraud.features import MS_PER_DAY, assemble_model_inputs
from python_backend.fraud.offline import FeatureTables, model_inputs
from python_backend.fraud.online import open_reader

TOLERANCE = 1e-4


def waves(card_ids: np.ndarray) -> list[slice]:
    """Consecutive slices in which no card repeats."""
    out, start, seen = [], 0, set()
    for i, card in enumerate(card_ids):
        if card in seen:
            out.append(slice(start, i))
            start, seen = i, set()
        seen.add(card)
    if start < len(card_ids):
        out.append(slice(start, len(card_ids)))
    return out


def run_parity(
    settings: StoreSettings,
    bootstrap: str,
    limit: int = 10_000,
    log=print,
) -> dict:
    """Replay up to ``limit`` transactions of the last simulated day; compare features."""
    started = time.perf_counter()
    events = pd.read_parquet(settings.data_dir / "transactions.parquet")
    terminals = pd.read_parquet(settings.data_dir / "terminals.parquet")
    day_start = int(events["ts_ms"].max()) // MS_PER_DAY * MS_PER_DAY
    queries = events[events["ts_ms"] >= day_start].head(limit).reset_index(drop=True)
    store = feature_store(settings)
    materialize(store, settings, as_of_ms=day_start, log=lambda _m: None)
    offline = model_inputs(FeatureTables.build(events, terminals), events, queries)

    # A topic of its own: another run's events on a shared topic would arrive early.
    topic = f"transactions-parity-{time.time_ns()}"
    ensure_topic(bootstrap, topic)
    reader = open_reader(settings.kind, settings.reader_location)
    consumer = TransactionConsumer(
        bootstrap,
        reader,
        writer_for(settings, store),
        group=f"parity-{time.time_ns()}",
        topic=topic,
        log=log,
    )
    checked = mismatches = 0
    max_diff = 0.0
    published = 0
    try:
        for wave in tqdm(
            waves(queries["card_id"].to_numpy()), desc="parity waves", mininterval=1.0
        ):
            rows = queries.iloc[wave]
            online = reader.read(rows["card_id"].to_numpy(), rows["terminal_id"].to_numpy())
            inputs = assemble_model_inputs(
                online.stored,
                rows["amount"].to_numpy(),
                rows["ts_ms"].to_numpy(),
                rows["terminal_id"].to_numpy(),
            )
            diff = np.concatenate(
                [
                    np.abs(inputs.tabular - offline.tabular[wave]),
                    np.abs(inputs.sequence - offline.sequence[wave]).reshape(len(rows), -1),
                    np.abs(inputs.categorical - offline.categorical[wave]).astype(np.float32),
                ],
                axis=1,
            ).max(axis=1)
            checked += len(rows)
            mismatches += int((diff > TOLERANCE).sum())
            max_diff = max(max_diff, float(diff.max()))
            published += replay(bootstrap, rows, topic=topic)
            deadline = time.monotonic() + 60
            while consumer.stats.consumed < published:
                consumer.poll_once(0.1)
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the consumer applied {consumer.stats.consumed} of "
                        f"{published} events within 60 s"
                    )
    finally:
        consumer.close()
        reader.close()
    result = {
        "store": settings.kind,
        "checked": checked,
        "mismatches": mismatches,
        "max_abs_diff": max_diff,
        "tolerance": TOLERANCE,
        "duplicates_skipped": consumer.stats.duplicates,
        "seconds": round(time.perf_counter() - started, 1),
    }
    log(
        f"parity ({settings.kind}): {checked:,} transactions checked, {mismatches} mismatches, "
        f"max |diff| {max_diff:.2e}"
    )
    return result


def write_parity_report(
    settings_by_store: dict[str, StoreSettings], bootstrap: str, limit: int, report: Path, log=print
) -> dict:
    """Parity on every store; the totals on top, each store's figures under ``stores``."""
    stores = {
        kind: run_parity(settings, bootstrap, limit, log=log)
        for kind, settings in settings_by_store.items()
    }
    result = {
        "checked": sum(s["checked"] for s in stores.values()),
        "mismatches": sum(s["mismatches"] for s in stores.values()),
        "max_abs_diff": max(s["max_abs_diff"] for s in stores.values()),
        "stores": stores,
    }
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {report}")
    return result
