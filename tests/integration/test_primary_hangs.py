"""A primary that never answers, under concurrent open-loop load on a real server, timed at
the client: every request is decided, on the fallback, and the share within the budget is
reported (latency shares are the benchmarks' to judge: ``make chaos``, ``make perf``)."""

from __future__ import annotations

import asyncio
import shutil
import time

import numpy as np
import pandas as pd
import pytest

from python_backend.fraud.features import MS_PER_DAY
from python_backend.fraud.scoring import DEFAULT_BUDGET_MS
from tests.conftest import serving_repository

#: Held this long per batch: for a 95 ms budget, never.
HANG_MS = 120_000
RATE_PER_S = 120
REQUESTS = 720  # six seconds of load


@pytest.fixture(scope="module")
def hung_primary_server(tiny_build, serving_sqlite, tmp_path_factory):
    """A server of its own whose ``fraud_primary`` is the faulty stand-in holding every batch
    for ``HANG_MS`` from the start (no reload while requests are in flight: Triton 2.51
    crashes on those), on the SQLite store ``serving_sqlite`` filled."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from client.local.triton import Ports, running
    from perf.chaos.config import FAULTY_MODEL

    root = tmp_path_factory.mktemp("hung-primary")
    repository = serving_repository(tiny_build, root, primary="triton")
    folder = repository / "fraud_primary"
    shutil.copy(FAULTY_MODEL, folder / "1" / "model.py")
    config = text_format.Parse(
        (folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    config.ClearField("model_warmup")  # the stand-in would hold its own warm-up
    config.parameters["FAULT"].string_value = f"slow:{HANG_MS}"
    (folder / "config.pbtxt").write_text(text_format.MessageToString(config))
    store = {k: v for k, v in serving_sqlite.env.items() if not k.startswith(("KAFKA", "SCORED"))}
    with running(
        repository=repository, ports=Ports.free(), env=store, log_path=root / "server.log"
    ) as server:
        yield server


async def _open_loop(url: str, rows: list[dict]) -> list[tuple[float, str, str]]:
    """``REQUESTS`` one-row calls at Poisson arrivals of ``RATE_PER_S``: per call, the
    latency at the client from its scheduled arrival (ms), its decision and its path."""
    import tritonclient.grpc.aio as grpcaio

    from client.scoring import build_inputs
    from python_backend.fraud.contract import SCORING

    client = grpcaio.InferenceServerClient(url)
    arrivals = np.cumsum(np.random.default_rng(7).exponential(1 / RATE_PER_S, REQUESTS))
    results: list[tuple[float, str, str]] = []

    async def one(i: int, due: float) -> None:
        result = await client.infer(
            SCORING.name, build_inputs([rows[i % len(rows)]]), client_timeout=5
        )
        latency = (time.perf_counter() - due) * 1000
        decision = result.as_numpy("DECISION")[0, 0].decode()
        results.append((latency, decision, result.as_numpy("PATH")[0, 0].decode()))

    start = time.perf_counter() + 0.05
    tasks = []
    for i, offset in enumerate(arrivals):
        await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
        tasks.append(asyncio.create_task(one(i, start + offset)))
    await asyncio.gather(*tasks)
    await client.close()
    return results


def test_primary_that_never_answers_under_load_every_request_decided_on_the_fallback(
    hung_primary_server, tiny_build
) -> None:
    tx = pd.read_parquet(tiny_build.build_dir / "data" / "tiny" / "transactions.parquet")
    last_day = tx[tx["ts_ms"] >= int(tx["ts_ms"].max()) // MS_PER_DAY * MS_PER_DAY]
    rows = last_day[["transaction_id", "card_id", "terminal_id", "amount", "ts_ms"]]
    results = asyncio.run(_open_loop(hung_primary_server.grpc_url, rows.to_dict("records")))
    latencies = np.array([r[0] for r in results])
    within = float(np.mean(latencies <= DEFAULT_BUDGET_MS))
    print(
        f"primary hung, {RATE_PER_S}/s open loop, {len(results)} requests at the client: "
        f"{within:.2%} within {DEFAULT_BUDGET_MS:.0f} ms, p50 {np.percentile(latencies, 50):.1f}"
        f" ms, p99 {np.percentile(latencies, 99):.1f} ms, max {latencies.max():.1f} ms"
    )
    assert len(results) == REQUESTS, "a request was not answered"
    assert {r[1] for r in results} <= {"APPROVE", "REVIEW", "DECLINE"}
    assert {r[2] for r in results} == {"fallback"}
