"""floor: the same work in one process with no network at all, a single loop.

Each transaction's stored features are read from the online store once, before timing, and
kept in memory; the timed loop then does what the service does per transaction: assemble the
model inputs, run the ONNX primary, the rules and the decision policy. Offered Poisson load is
played against the loop as a single-server queue in real time (a transaction waits while the
loop is busy), so its latencies are comparable with the networked systems'.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from perf.loadgen import RateResult
from python_backend import scoring
from python_backend.contract import PRIMARY
from python_backend.features import assemble_model_inputs
from python_backend.online_features import OnlineFeatureReader
from python_backend.onnx_runner import OnnxModel
from python_backend.rules import load_rules


class Floor:
    def __init__(self, repository: Path, reader: OnlineFeatureReader, rows: list[dict]) -> None:
        self.primary = OnnxModel(repository / "fraud_primary" / "1" / "model.onnx", PRIMARY)
        self.policy = scoring.DecisionPolicy.load(
            repository / "fraud_scoring" / "1" / "decision_policy.json"
        )
        self.rules = load_rules()
        self.rows = rows
        cards = np.array([r["card_id"] for r in rows], dtype=np.int64)
        terminals = np.array([r["terminal_id"] for r in rows], dtype=np.int64)
        self.stored: list[dict[str, np.ndarray]] = []
        for s in range(0, len(rows), 64):
            got = reader.read(cards[s : s + 64], terminals[s : s + 64])
            for j in range(len(cards[s : s + 64])):
                self.stored.append({k: v[j : j + 1] for k, v in got.stored.items()})

    def one(self, i: int) -> None:
        row = self.rows[i]
        inputs = assemble_model_inputs(
            self.stored[i],
            np.array([row["amount"]], dtype=np.float32),
            np.array([row["ts_ms"]], dtype=np.int64),
            np.array([row["terminal_id"]], dtype=np.int64),
        )
        scores = self.primary.run(self.primary.feeds(inputs))
        scoring.rules_outcome(self.rules, inputs)
        self.policy.decide(scores, "primary")

    def service_times_ms(self, n: int) -> np.ndarray:
        """Closed loop: the time of each of ``n`` transactions, back to back."""
        out = np.empty(n)
        for k in range(n):
            t0 = time.perf_counter()
            self.one(k % len(self.rows))
            out[k] = (time.perf_counter() - t0) * 1000
        return out

    def poisson_run(self, rate: float, requests: int, seed: int = 0) -> RateResult:
        """Offered Poisson arrivals against the single loop, in real time."""
        rng = np.random.default_rng(seed)
        start = time.perf_counter() + 0.01
        due = start + np.cumsum(rng.exponential(1.0 / rate, requests))
        latencies = np.empty(requests)
        for k in range(requests):
            wait = due[k] - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            self.one(k % len(self.rows))
            latencies[k] = (time.perf_counter() - due[k]) * 1000
        seconds = time.perf_counter() - start
        offered = requests / (due[-1] - start)
        return RateResult(offered, requests, requests, {}, seconds, latencies)
