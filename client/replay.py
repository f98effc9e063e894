"""Replay simulated transactions through the service and summarise what happened."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm import tqdm

from client.scoring import Decision, FraudClient
from python_backend.fraud.scoring import DEFAULT_BUDGET_MS

COLUMNS = ["transaction_id", "card_id", "terminal_id", "amount", "ts_ms"]


@dataclass
class ReplaySummary:
    sent: int = 0
    decided: int = 0
    errors: Counter = field(default_factory=Counter)
    decisions: Counter = field(default_factory=Counter)
    paths: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    stage_us: dict[str, list[int]] = field(default_factory=dict)
    frauds_caught: int = 0
    frauds_missed: int = 0
    genuine_flagged: int = 0
    genuine: int = 0
    seconds: float = 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def as_dict(self) -> dict:
        return {
            "sent": self.sent,
            "decided": self.decided,
            "errors": dict(self.errors),
            "decisions": dict(self.decisions),
            "paths": dict(self.paths),
            "latency_ms": {
                "p50": round(self.percentile(50), 2),
                "p99": round(self.percentile(99), 2),
                "max": round(max(self.latencies_ms, default=float("nan")), 2),
            },
            "within_95ms": round(
                float(np.mean(np.array(self.latencies_ms) <= DEFAULT_BUDGET_MS)), 4
            )
            if self.latencies_ms
            else None,
            "server_stage_us_p50": {k: int(np.percentile(v, 50)) for k, v in self.stage_us.items()},
            "frauds_caught": self.frauds_caught,
            "frauds_missed": self.frauds_missed,
            "genuine_flagged": self.genuine_flagged,
            "genuine": self.genuine,
            "throughput_rps": round(self.sent / self.seconds, 1) if self.seconds else None,
        }

    def table(self) -> str:
        d = self.as_dict()
        lines = [
            f"  transactions sent      {d['sent']:>8,}   decided {d['decided']:,}"
            f"   errors {sum(self.errors.values()):,}",
            "  decisions              "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(self.decisions.items())),
            "  paths                  "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(self.paths.items())),
            f"  frauds caught / missed {self.frauds_caught:>8,} / {self.frauds_missed:,}"
            f"   genuine flagged {self.genuine_flagged:,} of {self.genuine:,}",
            f"  latency (client, ms)   p50 {d['latency_ms']['p50']:.1f}   p99 "
            f"{d['latency_ms']['p99']:.1f}   max {d['latency_ms']['max']:.1f}   within 95 ms "
            f"{(d['within_95ms'] or 0):.2%}",
            "  server stages p50 (µs) "
            + ", ".join(f"{k} {v:,}" for k, v in d["server_stage_us_p50"].items()),
            f"  throughput             {d['throughput_rps']} requests/s",
        ]
        return "\n".join(lines)


def replay(
    url: str,
    transactions: pd.DataFrame,
    concurrency: int = 4,
    rate_per_s: float | None = None,
    progress: bool = True,
) -> ReplaySummary:
    """One transaction per request, ``concurrency`` requests in flight (or paced at
    ``rate_per_s``); every request is accounted for, errors included."""
    summary = ReplaySummary()
    lock = threading.Lock()
    local = threading.local()
    labels = transactions["is_fraud"].to_numpy() if "is_fraud" in transactions else None
    rows = transactions[COLUMNS].to_dict("records")

    def one(i: int) -> None:
        if not hasattr(local, "client"):
            local.client = FraudClient(url)
        started = time.perf_counter()
        try:
            (decision,) = local.client.score([rows[i]])
        except Exception as err:
            with lock:
                summary.errors[type(err).__name__] += 1
            return
        elapsed = (time.perf_counter() - started) * 1000
        with lock:
            _account(summary, decision, elapsed, None if labels is None else labels[i])

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        futures = []
        for i in range(len(rows)):
            if rate_per_s:
                wait = i / rate_per_s - (time.perf_counter() - started)
                if wait > 0:
                    time.sleep(wait)
            futures.append(pool.submit(one, i))
        for future in tqdm(futures, desc="replay", disable=not progress, mininterval=1.0):
            future.result()
    summary.sent = len(rows)
    summary.seconds = time.perf_counter() - started
    return summary


def _account(summary: ReplaySummary, d: Decision, elapsed_ms: float, label) -> None:
    summary.decided += 1
    summary.decisions[d.decision] += 1
    summary.paths[d.path] += 1
    summary.latencies_ms.append(elapsed_ms)
    for stage, us in d.stage_us.items():
        summary.stage_us.setdefault(stage, []).append(us)
    if label is None:
        return
    flagged = d.decision != "APPROVE"
    if label:
        summary.frauds_caught += flagged
        summary.frauds_missed += not flagged
    else:
        summary.genuine += 1
        summary.genuine_flagged += flagged
