"""An open-loop Poisson load generator in Python, for the pair perf_analyzer cannot drive.

perf_analyzer speaks Triton's protocol only; the ``plain_service`` peer is an HTTP/JSON
service. For a fair pair both sides are driven by this generator with the same arrivals:
gRPC ``ModelInfer`` through tritonclient's asyncio client for the Triton systems, HTTP POST
through aiohttp for the plain service. Latency runs from each request's scheduled arrival, so
a generator or server that falls behind is charged for it (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from python_backend.fraud.scoring import DEFAULT_BUDGET_MS

#: A request that has not answered in this long counts as failed (``timeout``).
REQUEST_TIMEOUT_S = 2.0


@dataclass
class RateResult:
    #: The rate the drawn Poisson arrivals offered (requests / span), close to the target.
    offered_rps: float
    sent: int
    ok: int
    errors: dict[str, int]
    seconds: float
    latencies_ms: np.ndarray
    stage_us: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def achieved_rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def row(self, target_rps: float | None = None) -> dict:
        lat = self.latencies_ms
        return {
            "target_rps": target_rps,
            "offered_rps": round(self.offered_rps, 1),
            "achieved_rps": round(self.achieved_rps, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 3) if len(lat) else None,
            "p90_ms": round(float(np.percentile(lat, 90)), 3) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 3) if len(lat) else None,
            "mean_ms": round(float(np.mean(lat)), 3) if len(lat) else None,
            "within_95ms": round(float(np.mean(lat <= DEFAULT_BUDGET_MS)), 4) if len(lat) else 0.0,
            "sent": self.sent,
            "ok": self.ok,
            "errors": self.errors,
        }


#: One call: sends transaction ``i`` and returns the server's stage times (µs) or {}.
Call = Callable[[int], Awaitable[dict[str, int]]]


async def poisson_run(
    call: Call, rate: float, requests: int, n_rows: int, seed: int = 0
) -> RateResult:
    """Offer ``requests`` calls at Poisson arrivals of mean ``rate`` per second."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, requests))
    latencies: list[float] = []
    stages: dict[str, list[int]] = {}
    errors: dict[str, int] = {}

    async def one(i: int, due: float) -> None:
        try:
            stage = await asyncio.wait_for(call(i % n_rows), REQUEST_TIMEOUT_S)
        except Exception as err:  # counted by kind; the run goes on
            kind = "timeout" if isinstance(err, asyncio.TimeoutError) else type(err).__name__
            errors[kind] = errors.get(kind, 0) + 1
            return
        now = time.perf_counter()
        latencies.append((now - due) * 1000)
        done_at[0] = max(done_at[0], now)
        for name, us in stage.items():
            stages.setdefault(name, []).append(us)

    start = time.perf_counter() + 0.05
    done_at = [start]
    tasks = []
    for i, offset in enumerate(arrivals):
        due = start + offset
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    seconds = done_at[0] - start
    return RateResult(
        requests / arrivals[-1],  # the rate these arrivals really offered
        requests,
        len(latencies),
        errors,
        seconds,
        np.asarray(latencies),
        {k: np.asarray(v) for k, v in stages.items()},
    )


def grpc_call(url: str, model: str, rows: list[dict]) -> tuple[Call, Callable]:
    """A call that scores row ``i`` with ``model`` over gRPC; and its close function."""
    import tritonclient.grpc.aio as grpcaio

    from client.scoring import build_inputs
    from python_backend.fraud.contract import STAGES

    client = grpcaio.InferenceServerClient(url)
    prepared = [build_inputs([row]) for row in rows]

    async def call(i: int) -> dict[str, int]:
        result = await client.infer(model, prepared[i], client_timeout=REQUEST_TIMEOUT_S)
        return dict(zip(STAGES, result.as_numpy("STAGE_US")[0].tolist(), strict=True))

    return call, client.close


def http_call(
    url: str, rows: list[dict], answer: Callable = lambda body: body["decisions"][0]
) -> tuple[Call, Callable]:
    """A call that POSTs row ``i`` as ``{"transactions": [row]}`` to an HTTP peer's
    ``/score``; ``answer`` picks the row's decision out of the reply."""
    import aiohttp

    session: dict = {}
    bodies = [{"transactions": [row]} for row in rows]

    async def call(i: int) -> dict[str, int]:
        if "s" not in session:
            session["s"] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=512),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            )
        async with session["s"].post(url, json=bodies[i]) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")
            body = await response.json()
        return answer(body)["stage_us"]

    async def close() -> None:
        if "s" in session:
            await session["s"].close()

    return call, close
