"""The fraud service on a real Triton server: contract, decisions, and the model ladder."""

from __future__ import annotations

import json
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest
from tritonclient.utils import InferenceServerException

from client.local.operator import admin_client, restore_primary, take_primary_away
from client.scoring import build_inputs
from python_backend.fraud.contract import DECISIONS, SCORING, STAGES
from python_backend.fraud.features import MS_PER_DAY
from tests.support import wait_until


@pytest.fixture(scope="module")
def last_day(tiny_build) -> pd.DataFrame:
    tx = pd.read_parquet(tiny_build.build_dir / "data" / "tiny" / "transactions.parquet")
    start = int(tx["ts_ms"].max()) // MS_PER_DAY * MS_PER_DAY
    return tx[tx["ts_ms"] >= start]


def _rows(frame: pd.DataFrame) -> list[dict]:
    return frame[["transaction_id", "card_id", "terminal_id", "amount", "ts_ms"]].to_dict("records")


def test_contract_one_decision_per_transaction(any_store_serving, last_day) -> None:
    rows = _rows(last_day.head(8))
    decisions = any_store_serving.client.score(rows)
    assert [d.transaction_id for d in decisions] == [r["transaction_id"] for r in rows]
    for d in decisions:
        assert 0.0 <= d.score <= 1.0
        assert d.decision in DECISIONS
        assert d.path == "primary"
        assert isinstance(d.reasons, list)
        assert list(d.stage_us) == list(STAGES)
        assert 0 < d.stage_us["total"] < 95_000


def _scores(serving, frame: pd.DataFrame) -> list[float]:
    rows = _rows(frame)
    return [
        d.score for i in range(0, len(rows), 64) for d in serving.client.score(rows[i : i + 64])
    ]


def test_fraud_scores_higher_than_normal_traffic(any_store_serving, last_day) -> None:
    """The online store holds the state of the last simulated day, so only that day's
    transactions see point-in-time features: its frauds, plus large-amount frauds made
    from its genuine purchases as the simulator's first scenario does, against its
    genuine traffic."""
    genuine = last_day[last_day["is_fraud"] == 0].head(200)
    large = genuine.sample(40, random_state=0).assign(
        amount=lambda f: f["amount"] * 12 + 1_000,
        transaction_id=lambda f: f["transaction_id"] + "-large",
    )
    frauds = pd.concat([last_day[last_day["is_fraud"] == 1], large])
    serving = any_store_serving
    fraud_scores, genuine_scores = _scores(serving, frauds), _scores(serving, genuine)
    # Scores are calibrated probabilities (a fraud rate near 1%): judge the ranking.
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.ones(len(fraud_scores)), np.zeros(len(genuine_scores))]
    auc = roc_auc_score(y, np.r_[fraud_scores, genuine_scores])
    assert auc > 0.8, auc
    assert np.mean(fraud_scores) > 2 * np.mean(genuine_scores)


def _unload(serving, *models):
    admin = admin_client(serving.server.grpc_url)
    for model in models:
        admin.unload_model(model)
    return admin


def test_primary_unloaded_falls_back_then_recovers(any_store_serving, last_day) -> None:
    """The primary taken away wherever it runs (Triton's ``fraud_primary`` unloaded; the
    in-process one pointed at an artefact that is not there): the fallback decides, and
    the primary again once it is back."""
    serving = any_store_serving
    rows = _rows(last_day.head(4))
    admin = admin_client(serving.server.grpc_url)
    take_primary_away(admin)
    try:
        decisions = serving.client.score(rows)
        assert {d.path for d in decisions} == {"fallback"}, [d.reasons for d in decisions]
        assert all("PRIMARY_ERROR" in d.reasons for d in decisions)
    finally:
        restore_primary(admin)
    # The breaker may hold the primary off for its cool-down; it comes back after it.
    _wait_for_path(serving, rows, "primary")


def test_primary_and_fallback_down_rules_decide(any_store_serving, last_day) -> None:
    from perf.chaos import break_in_process_fallback, restore_in_process_fallback

    serving = any_store_serving
    rows = _rows(last_day.head(4))
    admin = _unload(serving, "fraud_fallback")
    take_primary_away(admin)
    break_in_process_fallback(admin)
    try:
        decisions = serving.client.score(rows)
        assert {d.path for d in decisions} == {"rules"}
        assert all(d.decision in DECISIONS for d in decisions)
        assert all(
            "FALLBACK_ERROR" in d.reasons or "FALLBACK_CIRCUIT_OPEN" in d.reasons for d in decisions
        )
    finally:
        restore_primary(admin)
        admin.load_model("fraud_fallback")
        restore_in_process_fallback(admin)
    _wait_for_path(serving, rows, "primary")
    # And the restored in-process fallback answers again when the primary fails.
    take_primary_away(admin)
    try:
        got = serving.client.score(rows)
        assert {d.path for d in got} == {"fallback"}, [d.reasons for d in got]
    finally:
        restore_primary(admin)
    _wait_for_path(serving, rows, "primary")


def _wait_for_path(serving, rows, path, timeout_s=15.0) -> None:
    wait_until(
        lambda: {d.path for d in serving.client.score(rows)} == {path},
        timeout_s,
        what=f"every decision on the {path} path",
        interval_s=0.5,
    )


def test_unknown_card_and_terminal_get_defaults_not_errors(any_store_serving, last_day) -> None:
    row = _rows(last_day.head(1))[0] | {"card_id": 987_654_321, "terminal_id": 987_654_321}
    (decision,) = any_store_serving.client.score([row])
    assert decision.decision in DECISIONS
    assert {"UNKNOWN_CARD", "UNKNOWN_TERMINAL"} <= set(decision.reasons)


def _ordinary(last_day: pd.DataFrame, n: int) -> pd.DataFrame:
    """Genuine purchases of the last day by cards the store knows, at amounts ordinary for
    the card (within the middle of its day's spread)."""
    genuine = last_day[last_day["is_fraud"] == 0]
    return genuine[(genuine["amount"] >= 3) & (genuine["amount"] <= 120)].head(n)


def test_unknown_terminal_with_an_ordinary_amount_is_not_declined(serving, last_day) -> None:
    """A merchant onboarded today: its customers are told the terminal is unknown, and
    ordinary purchases there are not declined (they were, 44% of them, before the models
    were told what the store does not know)."""
    frame = _ordinary(last_day, 60).assign(
        terminal_id=lambda f: 900_000_000 + np.arange(len(f)),
        transaction_id=lambda f: f["transaction_id"] + "-new-terminal",
    )
    rows = _rows(frame)
    decisions = [d for i in range(0, len(rows), 20) for d in serving.client.score(rows[i : i + 20])]
    assert all("UNKNOWN_TERMINAL" in d.reasons for d in decisions)
    assert all("UNKNOWN_CARD" not in d.reasons for d in decisions)
    assert {d.path for d in decisions} == {"primary"}
    declined = [d for d in decisions if d.decision == "DECLINE"]
    assert not declined, [(d.transaction_id, d.score, d.reasons) for d in declined]
    # One known card, the two amounts of the issue, at a terminal nobody has seen.
    card = rows[0] | {"terminal_id": 987_000_001}
    for amount in (5.0, 80.0):
        (d,) = serving.client.score([card | {"amount": amount, "transaction_id": f"one-{amount}"}])
        assert d.decision != "DECLINE", (amount, d.score, d.reasons)


def test_stale_daily_views_are_named_counted_and_not_extrapolated(serving, last_day) -> None:
    """Materialization stopped: the store still holds the last day's snapshots when the
    traffic of two days later arrives. Every decision says which views were stale, the
    metrics count them, and the primary decides as trained to without those views."""
    frame = _ordinary(last_day, 40).assign(
        ts_ms=lambda f: f["ts_ms"] + 2 * MS_PER_DAY,
        transaction_id=lambda f: f["transaction_id"] + "-stale",
    )
    fresh = serving.client.score(_rows(_ordinary(last_day, 40)))
    assert not any(r.startswith("FEATURES_STALE") for d in fresh for r in d.reasons)
    decisions = serving.client.score(_rows(frame))
    for d in decisions:
        assert {"FEATURES_STALE:card_daily", "FEATURES_STALE:terminal_daily"} <= set(d.reasons)
        assert d.path == "primary" and d.decision in DECISIONS
    assert sum(d.decision == "DECLINE" for d in decisions) <= 1
    pattern = 'fraud_features_stale_total{view="card_daily"}'
    metrics = _metrics_showing(serving, pattern, _rows(frame.head(1)))
    counted = [line for line in metrics.splitlines() if line.startswith(pattern)]
    assert counted and float(counted[0].split()[-1]) >= 1, counted


def test_the_daily_view_cache_hits_on_repeated_keys_and_says_so(serving, last_day) -> None:
    """The same pairs scored again: their daily views come from the BLS's cache, and the
    lookups reach Triton's metrics by entity and outcome."""
    rows = _rows(_ordinary(last_day, 8).assign(transaction_id=lambda f: f["transaction_id"] + "-c"))
    serving.client.score(rows)
    again = serving.client.score([r | {"transaction_id": r["transaction_id"] + "2"} for r in rows])
    assert all(d.path == "primary" for d in again), again
    pattern = 'fraud_feature_cache_lookups_total{entity="terminal_id",outcome="hit"}'
    metrics = _metrics_showing(serving, pattern, rows[:1])
    counted = [line for line in metrics.splitlines() if line.startswith(pattern)]
    assert counted and float(counted[0].split()[-1]) >= 1, counted


def _metrics_showing(serving, text: str, rows: list[dict]) -> str:
    """Triton's metrics once they hold ``text``; ``rows`` scored after each miss (the BLS
    hands its metrics to Triton at most once a second, after a batch or from its timer)."""
    url = f"http://127.0.0.1:{serving.server.ports.metrics}/metrics"

    def showing() -> str | None:
        metrics = urllib.request.urlopen(url, timeout=5).read().decode()
        if text in metrics:
            return metrics
        serving.client.score(rows)
        return None

    return wait_until(showing, 10, what=f"{text!r} in Triton's metrics", interval_s=0.3)


def _decisions_once(serving, rows, check, what: str, timeout_s=10.0) -> list:
    """The decisions of ``rows`` once ``check`` holds for them, scored again until then."""

    def decided() -> list | None:
        decisions = serving.client.score(rows)
        return decisions if check(decisions) else None

    return wait_until(decided, timeout_s, what=what, interval_s=0.3)


def test_a_stopped_stream_consumer_makes_the_recent_buffers_stale(
    serving, last_day, redis_service
) -> None:
    """The consumer's heartbeat in the store is ten minutes old, as a consumer that stopped
    leaves it: decisions say the recent buffers are stale and are decided without them,
    until the heartbeat is fresh again."""
    import redis

    from feature_repo.stream import RedisRecentWriter
    from python_backend.feast_layout import PROJECT
    from python_backend.fraud.features import STREAM_HEARTBEAT_ID

    client = redis.Redis.from_url(f"redis://127.0.0.1:{redis_service.port}/1")
    writer = RedisRecentWriter(client, PROJECT)
    stopped = [(int((time.time() - 600) * 1000), 0.0, 0, "heartbeat-stopped")]
    rows = _rows(_ordinary(last_day, 8))
    try:
        assert not writer.write({STREAM_HEARTBEAT_ID: stopped}, {})
        # Each BLS instance reads the heartbeat at most once a second.
        stale = _decisions_once(
            serving,
            rows,
            lambda ds: all("FEATURES_STALE:card_recent" in d.reasons for d in ds),
            "every decision to name the recent buffers stale",
        )
        assert {d.path for d in stale} == {"primary"}
        assert not any("FEATURES_STALE:card_daily" in d.reasons for d in stale)
        alive = [(int(time.time() * 1000), 0.0, 0, "heartbeat-alive")]
        assert not writer.write({STREAM_HEARTBEAT_ID: alive}, {STREAM_HEARTBEAT_ID: stopped})
        _decisions_once(
            serving,
            rows,
            lambda ds: not any("FEATURES_STALE:card_recent" in d.reasons for d in ds),
            "no decision to name the recent buffers stale",
        )
    finally:
        client.delete(writer._key(STREAM_HEARTBEAT_ID))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"amount": float("nan")}, "AMOUNT[1]: must be a finite number"),
        ({"amount": -5.0}, "AMOUNT[1]"),
        ({"amount": 1e12}, "AMOUNT[1]"),
        ({"ts_ms": 10}, "TIMESTAMP_MS[1]"),
        ({"card_id": 0}, "CARD_ID[1]"),
        ({"transaction_id": "x" * 500}, "TRANSACTION_ID[1]"),
    ],
)
def test_bad_row_is_named_while_the_rest_of_the_batch_is_decided(
    serving, last_day, change, message
) -> None:
    good, bad, other = _rows(last_day.head(3))
    decisions = serving.client.score([good, bad | change, other])
    assert decisions[1].decision == "INVALID" and decisions[1].path == "invalid"
    assert decisions[1].reasons[0] == "INVALID_INPUT"
    assert decisions[1].reasons[1].startswith(message), decisions[1].reasons
    assert np.isnan(decisions[1].score)
    for d in (decisions[0], decisions[2]):
        assert d.decision in DECISIONS and d.path == "primary"


def test_missing_input_is_named(serving, last_day) -> None:
    inputs = [i for i in build_inputs(_rows(last_day.head(1))) if i.name() != "AMOUNT"]
    with pytest.raises(InferenceServerException, match="AMOUNT"):
        serving.client.client.infer(SCORING.name, inputs)


def test_primary_slower_than_budget_falls_back_within_budget(serving, last_day) -> None:
    from pathlib import Path

    admin = admin_client(serving.server.grpc_url)
    config = admin.get_model_config("fraud_primary", as_json=True)["config"]
    # A changed config makes Triton reload (with the same one it keeps the loaded model).
    config["parameters"] = {"STAND_IN": {"string_value": "slow_primary"}}
    slow = (Path(__file__).parent / "models" / "slow_primary.py").read_bytes()
    admin.load_model("fraud_primary", config=json.dumps(config), files={"file:1/model.py": slow})
    try:
        decisions = serving.client.score(_rows(last_day.head(2)))
        for d in decisions:
            assert d.path == "fallback", d
            # Timed out here, rejected by its queue policy, or its circuit open.
            assert {"PRIMARY_TIMEOUT", "PRIMARY_ERROR", "PRIMARY_CIRCUIT_OPEN"} & set(d.reasons)
            assert d.stage_us["total"] < 95_000, "the budget holds although the primary hangs"
    finally:
        admin.load_model("fraud_primary")
    _wait_for_path(serving, _rows(last_day.head(2)), "primary")


def test_repeated_primary_failures_open_its_circuit(serving, last_day) -> None:
    rows = _rows(last_day.head(1))
    admin = _unload(serving, "fraud_primary")
    try:
        # Each BLS instance (SCORING_INSTANCES) has its own breaker, its window still full of the
        # successes before the outage: keep failing until one opens.
        seen = set()
        for _ in range(120):
            seen.update(serving.client.score(rows)[0].reasons)
            if "PRIMARY_CIRCUIT_OPEN" in seen:
                break
        assert "PRIMARY_ERROR" in seen and "PRIMARY_CIRCUIT_OPEN" in seen
        metrics = _metrics_showing(serving, 'fraud_breaker_state{dependency="primary"} 2', rows)
        assert "fraud_decisions_total" in metrics
    finally:
        admin.load_model("fraud_primary")
    _wait_for_path(serving, rows, "primary")


def test_feature_store_down_decides_on_defaults_then_recovers(
    serving, last_day, redis_service
) -> None:
    rows = _rows(last_day.head(2))
    redis_service.pause()
    try:
        decisions = serving.client.score(rows)
        for d in decisions:
            assert d.decision in DECISIONS
            assert {"FEATURES_UNAVAILABLE", "FEATURES_CIRCUIT_OPEN"} & set(d.reasons)
            assert d.stage_us["total"] < 95_000
    finally:
        redis_service.resume()
    _decisions_once(
        serving,
        rows,
        lambda ds: (
            not {"FEATURES_UNAVAILABLE", "FEATURES_CIRCUIT_OPEN"}
            & {r for d in ds for r in d.reasons}
        ),
        "the features back after Redis resumed",
        timeout_s=15,
    )


def test_scored_transactions_are_published_to_the_stream(serving, last_day, kafka_service) -> None:
    from confluent_kafka import Consumer

    from python_backend.events import decode
    from tests.conftest import SERVING_TOPIC

    rows = _rows(last_day.tail(3))
    serving.client.score(rows)
    consumer = Consumer(
        {
            "bootstrap.servers": f"127.0.0.1:{kafka_service.port}",
            "group.id": "published-check",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([SERVING_TOPIC])
    wanted = {r["transaction_id"] for r in rows}
    seen = set()

    def every_one_seen() -> bool:
        for message in consumer.consume(100, timeout=0.5):  # the wait is the consume
            if not message.error():
                seen.add(decode(message.value()).transaction_id)
        return wanted <= seen

    try:
        wait_until(every_one_seen, 30, what=f"{sorted(wanted)} on the stream", interval_s=0)
    finally:
        consumer.close()


def test_replay_accounts_for_every_request(serving, last_day) -> None:
    from client.replay import replay

    summary = replay(serving.server.grpc_url, last_day.head(60), concurrency=3, progress=False)
    assert summary.sent == summary.decided == 60
    assert not summary.errors
    assert sum(summary.paths.values()) == 60
    assert summary.frauds_caught + summary.frauds_missed == int(last_day.head(60)["is_fraud"].sum())
    assert "latency (client, ms)" in summary.table()


def test_async_client_keeps_many_requests_in_flight(serving, last_day) -> None:
    import asyncio

    from client.scoring import AsyncFraudClient

    rows = _rows(last_day.head(20))

    async def run():
        client = AsyncFraudClient(serving.server.grpc_url)
        try:
            return await asyncio.gather(*(client.score([row]) for row in rows))
        finally:
            await client.close()

    results = asyncio.run(run())
    assert [r[0].transaction_id for r in results] == [row["transaction_id"] for row in rows]
    assert all(r[0].decision in DECISIONS for r in results)


def test_triton_fallback_mode_hedges_the_fraud_fallback_model(serving, last_day) -> None:
    """``FALLBACK: triton`` (the design before the in-process fallback, kept for callers
    and measurements): the ``fraud_fallback`` model decides when the primary is down, and
    the rules when it is down too."""
    rows = _rows(last_day.head(3))
    admin = admin_client(serving.server.grpc_url)
    config = admin.get_model_config("fraud_scoring", as_json=True)["config"]
    config["parameters"]["FALLBACK"] = {"string_value": "triton"}
    admin.load_model("fraud_scoring", config=json.dumps(config))
    try:
        admin.unload_model("fraud_primary")
        got = serving.client.score(rows)
        assert {d.path for d in got} == {"fallback"}, [d.reasons for d in got]
        admin.unload_model("fraud_fallback")
        decisions = serving.client.score(rows)
        assert {d.path for d in decisions} == {"rules"}
        assert all("FALLBACK_ERROR" in d.reasons for d in decisions)
    finally:
        admin.load_model("fraud_primary")
        admin.load_model("fraud_fallback")
        admin.load_model("fraud_scoring")
    _wait_for_path(serving, rows, "primary")
