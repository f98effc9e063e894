"""``python -m perf records`` (``make records-bench``): the topics' records as binary
(protobuf, ``python_backend/records.proto``) against JSON, side by side.

For each record (the three events, from the built data set's transactions; the decision-log
record, in its served shape: the transaction, the reasons, the 62 model inputs; the heavy
model's verdict on it, unexplained and explained), both formats
write and read the same records in alternating rounds; a read is what a consumer does
(``events.decode*``: parse, then the field rules; the decision record:
``decision_log.encode`` and ``decode``, what the BLS writes and the analysis consumer's
first step). Reports CPU per record (process time, medians of the rounds) and bytes per
record, to ``perf/results/records.{json,md}``.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from python_backend import events
from python_backend.fraud import decision_log
from python_backend.fraud.cases import analysis_record
from python_backend.fraud.features import MS_PER_DAY

ROUNDS = 7


def _events(frame: pd.DataFrame) -> dict[str, list]:
    rows = list(frame.itertuples(index=False))
    return {
        "transaction": [
            events.TransactionEvent(
                r.transaction_id, int(r.card_id), int(r.terminal_id), float(r.amount), int(r.ts_ms)
            )
            for r in rows
        ],
        "label": [
            events.LabelEvent(
                r.transaction_id,
                "chargeback",
                int(r.is_fraud),
                int(r.ts_ms),
                int(r.ts_ms) + 30 * MS_PER_DAY,
            )
            for r in rows
        ],
        "click": [
            events.ClickEvent(f"click-{i}", int(r.card_id), int(r.terminal_id), int(r.ts_ms))
            for i, r in enumerate(rows)
        ],
    }


def _decision_records(frame: pd.DataFrame, seed: int = 0) -> list[dict]:
    """Decision-log records as the BLS writes them (``decision_log.record`` with the
    transaction and the logged inputs, ``outbox.with_transaction``)."""
    from python_backend.fraud.served import LAYOUT

    rng = np.random.default_rng(seed)
    reasons = [[], ["AMOUNT_UNUSUAL"], ["FEATURES_STALE:card_daily", "NEW_TERMINAL"]]
    out = []
    for i, r in enumerate(frame.itertuples(index=False)):
        rows = rng.normal(size=62).astype(np.float32)
        out.append(
            {
                "transaction_id": r.transaction_id,
                "decision_id": uuid.UUID(int=int(rng.integers(2**63))).hex,
                "request_id": f"req-{i}",
                "decision": "APPROVE",
                "score": round(float(rng.random()) * 0.1, 6),
                "path": "primary",
                "reasons": reasons[i % len(reasons)],
                "decided_at_ms": int(r.ts_ms) + 12,
                "model": "fraud_scoring",
                "card_id": int(r.card_id),
                "terminal_id": int(r.terminal_id),
                "amount": round(float(r.amount), 4),
                "ts_ms": int(r.ts_ms),
                "inputs": {"layout": LAYOUT, "rows": rows.tobytes()},
                "model_version": "1",
            }
        )
    return out


def _analysis_records(decisions: list[dict]) -> dict[str, list]:
    """The heavy model's verdicts on ``decisions`` as ``feature_repo.analysis`` writes them:
    most not explained (attributions None), and, apart, explained ones (the review queue's:
    one attribution per input, 62)."""
    from python_backend.fraud import served

    def verdict(d: dict, explained: bool) -> dict:
        attributions = [
            {
                "feature": f"feature_{j}",
                "group": "card_daily",
                "position": None if j < 50 else j - 50,
                "value": round(0.1 * j, 4),
                "contribution": 0.001 * (j - 31),
                "words": f"feature {j} is {0.1 * j:.1f}, above the card's usual",
            }
            for j in range(62)
        ]
        return {
            "v": 1,
            **{k: d[k] for k in ("transaction_id", "card_id", "terminal_id", "amount", "ts_ms")},
            "decided_at_ms": d["decided_at_ms"],
            "analysed_at_ms": d["decided_at_ms"] + 900,
            **{k: d[k] for k in ("decision", "path", "reasons", "score", "model_version")},
            "heavy_score": 0.25,
            "heavy_version": "1:3f2a9c",
            "review": explained,
            "disagrees": False,
            "attributions": attributions if explained else None,
            "inputs": served.json_ready(d["inputs"]),
        }

    return {
        "analysis": [verdict(d, False) for d in decisions],
        "analysis, explained": [verdict(d, True) for d in decisions[: len(decisions) // 4]],
    }


def _codecs(records: dict[str, list], now_ms: int) -> dict[str, dict[str, tuple]]:
    """Per record and format: (write one, read one)."""
    readers = {"transaction": events.decode, "label": events.decode_label,
               "click": events.decode_click}  # fmt: skip
    out: dict[str, dict[str, tuple]] = {}
    for name, read in readers.items():
        out[name] = {
            "json": (lambda e: e.encode(binary=False), lambda v, r=read: r(v, now_ms)),
            "protobuf": (lambda e: e.encode(binary=True), lambda v, r=read: r(v, now_ms)),
        }
    out["decision"] = {
        "json": (lambda d: decision_log.encode(d, binary=False), decision_log.decode),
        "protobuf": (lambda d: decision_log.encode(d, binary=True), decision_log.decode),
    }
    for name in ("analysis", "analysis, explained"):
        out[name] = {
            "json": (lambda r: analysis_record.encode(r, binary=False), analysis_record.decode),
            "protobuf": (lambda r: analysis_record.encode(r, binary=True), analysis_record.decode),
        }
    return out


def _cpu_us(fn: Callable, items: list) -> float:
    started = time.process_time_ns()
    for item in items:
        fn(item)
    return (time.process_time_ns() - started) / 1_000 / len(items)


def bench(data_dir: Path, n: int = 20_000, rounds: int = ROUNDS, log=print) -> dict:
    frame = pd.read_parquet(
        data_dir / "transactions.parquet",
        columns=["transaction_id", "card_id", "terminal_id", "amount", "ts_ms", "is_fraud"],
    ).head(n)
    decisions = _decision_records(frame)
    records = {**_events(frame), "decision": decisions, **_analysis_records(decisions)}
    now_ms = int(frame["ts_ms"].max()) + 31 * MS_PER_DAY  # the labels come 30 days later
    codecs = _codecs(records, now_ms)
    samples: dict = {}
    with tqdm(total=rounds * len(codecs) * 2, unit="pass", desc="records") as progress:
        for k in range(rounds):
            for name, formats in codecs.items():
                order = list(formats) if k % 2 == 0 else list(reversed(formats))
                for fmt in order:
                    write, read = formats[fmt]
                    items = records[name]
                    written_us = _cpu_us(write, items)
                    values = [write(item) for item in items]
                    read_us = _cpu_us(read, values)
                    s = samples.setdefault((name, fmt), {"write": [], "read": [], "bytes": 0})
                    s["write"].append(written_us)
                    s["read"].append(read_us)
                    s["bytes"] = sum(len(v) for v in values) / len(values)
                    progress.update()
    result: dict = {"records": n, "rounds": rounds, "by_record": {}}
    for name in codecs:
        row = {}
        for fmt in ("json", "protobuf"):
            s = samples[(name, fmt)]
            row[fmt] = {
                "write_us": round(statistics.median(s["write"]), 2),
                "read_us": round(statistics.median(s["read"]), 2),
                "bytes": round(s["bytes"], 1),
            }
        j, p = row["json"], row["protobuf"]
        row["ratios"] = {k: round(p[k] / j[k], 2) for k in ("write_us", "read_us", "bytes")}
        result["by_record"][name] = row
    return result


def write_report(result: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "records.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Binary records (protobuf) against JSON",
        "",
        f"{result['records']:,} records of each kind, {result['rounds']} rounds in alternating "
        "order, medians; CPU is process time per record; a read parses and validates.",
        "",
        "| record | JSON write µs | protobuf write µs | JSON read µs | protobuf read µs "
        "| JSON bytes | protobuf bytes | protobuf/JSON write, read, bytes |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in result["by_record"].items():
        j, p, r = row["json"], row["protobuf"], row["ratios"]
        lines.append(
            f"| {name} | {j['write_us']} | {p['write_us']} | {j['read_us']} | {p['read_us']} "
            f"| {j['bytes']:.0f} | {p['bytes']:.0f} "
            f"| {r['write_us']}x, {r['read_us']}x, {r['bytes']}x |"
        )
    path = out / "records.md"
    path.write_text("\n".join(lines) + "\n")
    return path
