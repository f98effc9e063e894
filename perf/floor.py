"""floor: the same work in one process with no network at all, a single loop.

Each transaction's stored features are read from the online store once, before timing, and
kept in memory; the timed loop then runs the service's own ``decide`` per transaction (model
inputs, the ladder with the ONNX primary, the rules and the decision policy), without
validation or response building. Offered Poisson load is
played against the loop as a single-server queue in real time (a transaction waits while the
loop is busy), so its latencies are comparable with the networked systems'.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from perf.loadgen import RateResult
from python_backend.fraud import Budget, in_process_service, run_now, scoring
from python_backend.fraud.online import OnlineFeatureReader, OnlineFeatures


class _Preloaded(OnlineFeatureReader):
    """The stored features of the transaction being decided, read from the store once
    before timing: the floor keeps the store's round trip out of the loop."""

    def __init__(self) -> None:
        self.current: OnlineFeatures | None = None

    def read(self, card_ids, terminal_ids, with_tx_ids: bool = False) -> OnlineFeatures:
        return self.current


class Floor:
    def __init__(self, repository: Path, reader: OnlineFeatureReader, rows: list[dict]) -> None:
        self.preloaded = _Preloaded()
        self.service = in_process_service(repository, self.preloaded)
        self.rows = rows
        self.tx = [
            scoring.Transactions(
                [r["transaction_id"]],
                np.array([r["card_id"]]),
                np.array([r["terminal_id"]]),
                np.array([r["amount"]], dtype=np.float32),
                np.array([r["ts_ms"]]),
            )
            for r in rows
        ]
        cards = np.array([r["card_id"] for r in rows], dtype=np.int64)
        terminals = np.array([r["terminal_id"] for r in rows], dtype=np.int64)
        self.stored: list[OnlineFeatures] = []
        for s in range(0, len(rows), 64):
            got = reader.read(cards[s : s + 64], terminals[s : s + 64])
            for j in range(len(cards[s : s + 64])):
                self.stored.append(
                    OnlineFeatures(
                        {k: v[j : j + 1] for k, v in got.stored.items()},
                        got.card_found[j : j + 1],
                        got.terminal_found[j : j + 1],
                        {},
                    )
                )

    def one(self, i: int) -> None:
        """Decide transaction ``i``: the service's decide, as ``fraud_scoring`` runs it."""
        self.preloaded.current = self.stored[i]
        run_now(self.service.decide(self.tx[i], Budget(self.service.budget_ms)))

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
