"""The load: a steady Poisson stream of unary gRPC requests, retried with the same transaction
id until answered or past the deadline, every outcome kept; and the server's resources
watched beside it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from perf.chaos.config import (
    ATTEMPT_TIMEOUT_S,
    CHANNEL_ARGS,
    MAX_IN_FLIGHT,
    RETRY_DEADLINE_S,
)
from perf.chaos.system import System


@dataclass
class Outcome:
    transaction_id: str
    arrival_s: float  # since the load started
    attempts: int = 0
    ok: bool = False
    latency_ms: float = float("nan")  # from the scheduled arrival to the answer
    server_ms: float = float("nan")  # inside the BLS (STAGE_US total)
    path: str = ""
    decision: str = ""
    reasons: list[str] = field(default_factory=list)
    error: str = ""  # the last failed attempt's kind (also when a retry then succeeded)


def _error_kind(err: BaseException) -> str:
    if isinstance(err, asyncio.TimeoutError):
        return "timeout"
    text = str(err)
    for kind in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "queue", "not found", "stopping"):
        if kind in text:
            return kind.lower().replace(" ", "_")
    return type(err).__name__


class Load:
    """An open-loop Poisson generator with retries; one :class:`Outcome` per transaction.

    A plain client of one address (Envoy's): which replica answers, and routing around one
    that is down, is the mesh's business, not the caller's."""

    def __init__(self, url: str, rows: list[dict], rate: float, run_id: str, seed: int = 7) -> None:
        self.url, self.rows, self.rate, self.run_id = url, rows, rate, run_id
        self.client = None
        self.requested: list = []  # the outputs asked for, the same for every request
        self.rng = np.random.default_rng(seed)
        self.outcomes: list[Outcome] = []
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.t0 = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    async def _one(self, outcome: Outcome, row: dict, due: float) -> None:
        from client.scoring import build_inputs

        inputs = build_inputs([{**row, "transaction_id": outcome.transaction_id}])
        requested = self.requested
        backoff = 0.05
        while True:
            outcome.attempts += 1
            try:
                async with self.slots:
                    result = await self._attempt(self.client, outcome, inputs, requested)
            except Exception as err:  # retried until the deadline, counted by kind
                outcome.error = _error_kind(err)
                if self.now() - outcome.arrival_s + backoff > RETRY_DEADLINE_S:
                    return
                # Exponential backoff with full jitter: retries after an outage spread out
                # instead of arriving together.
                await asyncio.sleep(self.rng.uniform(0, backoff))
                backoff = min(backoff * 2, 2.0)
                continue
            outcome.ok = True
            outcome.latency_ms = (time.perf_counter() - due) * 1000
            outcome.path = result.as_numpy("PATH")[0, 0].decode()
            outcome.decision = result.as_numpy("DECISION")[0, 0].decode()
            outcome.reasons = json.loads(result.as_numpy("REASONS")[0, 0])
            outcome.server_ms = float(result.as_numpy("STAGE_US")[0, -1]) / 1000
            return

    async def _attempt(self, client, outcome, inputs, requested):
        return await asyncio.wait_for(
            client.infer(
                "fraud_scoring",
                inputs,
                outputs=requested,
                request_id=f"{outcome.transaction_id}#{outcome.attempts}",
                client_timeout=ATTEMPT_TIMEOUT_S,
                # Still queued when this attempt gives up: refused, not decided.
                timeout=int(ATTEMPT_TIMEOUT_S * 1e6),
            ),
            ATTEMPT_TIMEOUT_S + 0.5,
        )

    async def run(self, until: asyncio.Event) -> None:
        import tritonclient.grpc as grpcclient
        import tritonclient.grpc.aio as grpcaio

        from python_backend.fraud.contract import SCORING

        self.client = grpcaio.InferenceServerClient(self.url, channel_args=CHANNEL_ARGS)
        self.requested = [grpcclient.InferRequestedOutput(o.name) for o in SCORING.outputs]
        # The outcomes grow to tens of thousands of objects: a full collection would stall
        # the generator for tens of milliseconds, charged to the service. Nothing here makes
        # reference cycles worth collecting during the run.
        gc.disable()
        self.t0 = time.perf_counter()
        tasks = []
        next_due = 0.05
        i = 0
        while not until.is_set():
            delay = next_due - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            outcome = Outcome(f"chaos-{self.run_id}-{i}", next_due)
            self.outcomes.append(outcome)
            row = self.rows[i % len(self.rows)]
            tasks.append(asyncio.create_task(self._one(outcome, row, self.t0 + next_due)))
            i += 1
            next_due += self.rng.exponential(1.0 / self.rate)
            if len(tasks) > 2000:
                tasks = [t for t in tasks if not t.done()]
        await asyncio.gather(*tasks)
        gc.enable()
        await self.client.close()


def machine_busy_s() -> float:
    """CPU-seconds the whole machine has spent busy since boot: user, nice, system, irq,
    softirq, steal (guest time is already within user and nice)."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + t.steal


class ClientCpu:
    """The load client's own CPU (this process: the request generator and the faults'
    orchestration) beside the machine's busy CPU over the load: how much of what the run
    measured was the measuring. It runs at the service's priority: lowered, its own delays
    would be counted against the service (latency runs from each request's scheduled
    arrival)."""

    def start(self) -> None:
        self.cpu, self.busy, self.wall = time.process_time(), machine_busy_s(), time.perf_counter()

    def stop(self) -> None:
        self.cpu = time.process_time() - self.cpu
        self.busy = machine_busy_s() - self.busy
        self.wall = time.perf_counter() - self.wall

    def summary(self) -> dict:
        return {
            "cpu_s": round(self.cpu, 1),
            "wall_s": round(self.wall, 1),
            "cores": round(self.cpu / self.wall, 2) if self.wall else None,
            "machine_busy_cpu_s": round(self.busy, 1),
            "share_of_busy": round(self.cpu / self.busy, 3) if self.busy else None,
        }


class ResourceWatch:
    """Samples the server's memory (RSS, with its stubs) and open files once a second."""

    def __init__(self, system: System, t0: Callable[[], float]) -> None:
        self.system, self.now = system, t0
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> dict | None:
        import psutil

        try:
            root = psutil.Process(self.system.server.process.pid)
            processes = [root, *root.children(recursive=True)]
            rss = fds = 0
            for p in processes:
                with contextlib.suppress(psutil.Error):
                    rss += p.memory_info().rss
                    fds += p.num_fds()
        except (psutil.Error, AttributeError):
            return None
        return {
            "t": round(self.now(), 1),
            "pid": root.pid,
            "rss_mb": round(rss / 2**20, 1),
            "fds": fds,
            "processes": len(processes),
        }

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            sample = self._sample()
            if sample:
                self.samples.append(sample)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def summary(self) -> dict:
        if len(self.samples) < 4:
            return {"samples": len(self.samples)}
        # Growth within the longest-lived server process (a restart starts a new one).
        lives = Counter(s["pid"] for s in self.samples)
        last = [s for s in self.samples if s["pid"] == lives.most_common(1)[0][0]]
        n = max(1, len(last) // 5)
        head, tail = last[:n], last[-n:]
        span_s = max(1.0, last[-1]["t"] - last[0]["t"])
        rss0, rss1 = np.median([s["rss_mb"] for s in head]), np.median([s["rss_mb"] for s in tail])
        fd0, fd1 = np.median([s["fds"] for s in head]), np.median([s["fds"] for s in tail])
        return {
            "samples": len(self.samples),
            "span_s": round(span_s, 1),
            "rss_mb_start": float(rss0),
            "rss_mb_end": float(rss1),
            "rss_mb_max": max(s["rss_mb"] for s in self.samples),
            "rss_growth_mb_per_h": round(float(rss1 - rss0) / span_s * 3600, 1),
            "fds_start": float(fd0),
            "fds_end": float(fd1),
            "fds_max": max(s["fds"] for s in self.samples),
        }
