"""The analysis consumer on a real server, broker and case store: the decision log's records
(with what the models saw) scored by the heavy model and explained; killed with -9 and
restarted, it loses no decision and analyses none twice (reconciled against the decision
log, as the chaos run reconciles the stream)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import pandas as pd
import pytest

from python_backend.fraud.cases import SqliteCaseStore, analysis_record
from python_backend.fraud.decision_log import read_all
from python_backend.fraud.features import MS_PER_DAY
from python_backend.paths import ROOT
from tests.conftest import SERVING_TOPIC
from tests.support import wait_until

pytestmark = pytest.mark.slow


def _analyze(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "feature_repo", "analyze", *args],
        cwd=ROOT,
        env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def decided(serving, tiny_build) -> list[str]:
    """300 transactions of the last simulated day decided by the real server: its decision
    log (with the served inputs) and its scored transactions are on the broker."""
    tx = pd.read_parquet(serving.data_dir / "transactions.parquet")
    day = tx[tx["ts_ms"] >= int(tx["ts_ms"].max()) // MS_PER_DAY * MS_PER_DAY]
    rows = day[["transaction_id", "card_id", "terminal_id", "amount", "ts_ms"]].head(300)
    rows = rows.assign(transaction_id=rows["transaction_id"] + f"-an-{uuid.uuid4().hex[:6]}")
    records = rows.to_dict("records")
    for i in range(0, len(records), 20):
        serving.client.score(records[i : i + 20])
    return [r["transaction_id"] for r in records]


def test_consumer_killed_and_restarted_loses_nothing_and_analyses_nothing_twice(
    serving, tiny_build, kafka_service, decided, tmp_path
) -> None:
    bootstrap = f"127.0.0.1:{kafka_service.port}"
    store_path = tmp_path / "cases.db"
    env = {
        "KAFKA_BOOTSTRAP": bootstrap,
        "SCORED_TOPIC": SERVING_TOPIC,
        "DECISIONS_TOPIC": "decisions",
        "ANALYSIS_TOPIC": f"analysis-{uuid.uuid4().hex[:6]}",
        "REVIEW_TOPIC": f"review-{uuid.uuid4().hex[:6]}",
        "CASE_STORE_PATH": str(store_path),
        "HEAVY_MODEL_DIR": str(tiny_build.repository / "fraud_heavy" / "1"),
    }
    group = f"analysis-test-{uuid.uuid4().hex[:6]}"
    # Every decision on the topic that can be analysed (this session's servers log inputs).
    logged = [r for r in read_all(bootstrap, "decisions") if "inputs" in r]
    expected = {r["transaction_id"] for r in logged}
    assert set(decided) <= expected, "the server's decisions are not all in the log"

    first = _analyze(env, "--group", group)
    wait_until(
        lambda: store_path.exists() and SqliteCaseStore(store_path).counts()["analyses"] >= 60,
        timeout_s=120,
        what="the first consumer to analyse some decisions",
        interval_s=0.2,
    )
    first.send_signal(signal.SIGKILL)  # in the middle of its work
    first.wait(10)
    partway = SqliteCaseStore(store_path).counts()["analyses"]

    second = _analyze(
        env, "--group", group, "--until-idle", "6", "--stats-file", str(tmp_path / "s.json")
    )
    output, _ = second.communicate(timeout=300)
    assert second.returncode == 0, output
    assert "histories rebuilt from" in output, output

    store = SqliteCaseStore(store_path)
    analysed = {r["transaction_id"] for r in _all_cases(store)}
    assert analysed == expected, (
        f"lost {len(expected - analysed)}, extra {len(analysed - expected)} "
        f"(first run analysed {partway})"
    )
    assert store.counts()["analyses"] == len(expected), "a transaction analysed twice"
    on_topic = read_all(bootstrap, env["ANALYSIS_TOPIC"], decode=analysis_record.decode)
    assert {r["transaction_id"] for r in on_topic} == expected, "an analysis never published"
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["analysed"] + partway == len(expected)
    # What a case holds: both scores, path, reasons, both versions, attributions in words.
    case = store.case(decided[0])
    assert 0 < case["heavy_score"] < 1 and case["heavy_version"].startswith("1:")
    assert case["decision"] in ("APPROVE", "REVIEW", "DECLINE") and case["path"] == "primary"
    assert case["model_version"] is not None and isinstance(case["reasons"], list)
    # The review queue: approved and risky, each also on the review topic, and explained.
    review = read_all(bootstrap, env["REVIEW_TOPIC"], decode=analysis_record.decode)
    assert all(r["review"] and r["attributions"] for r in review), "explained, on the queue"
    review = {r["transaction_id"] for r in review}
    queued = {r["transaction_id"] for r in store.review_queue(10_000)}
    assert review == queued
    for t in queued:
        assert store.case(t)["decision"] == "APPROVE"
        assert all(a["words"] for a in store.case(t)["attributions"]), "explained at analysis"
    # Any other case is explained when opened, from its record and the store's history.
    from python_backend.fraud.explain import Explainer, explain_case
    from python_backend.fraud.heavy_model import HeavyModel

    plain = next(r for r in _all_cases(store) if r["attributions"] is None)
    model = HeavyModel(tiny_build.repository / "fraud_heavy" / "1")
    attributions = explain_case(plain, store, Explainer(model))
    assert len(attributions) == 5 and all(a["words"] for a in attributions), attributions
    if queued:  # explained when opened = explained at analysis (the same inputs, histories)
        first = store.case(sorted(queued)[0])
        again = explain_case(first, store, Explainer(model))
        assert [a["words"] for a in again] == [a["words"] for a in first["attributions"]]


def _all_cases(store: SqliteCaseStore) -> list[dict]:
    return [json.loads(row[0]) for row in store._db.execute("SELECT body FROM analyses")]


def test_drift_metrics_cover_the_decisions_analysed(
    serving, tiny_build, kafka_service, decided, tmp_path
) -> None:
    """The consumer's drift gauges, scraped from its metrics endpoint: a PSI per model input
    (the calendar's left out) and of the score, over the decisions it analysed, against the
    served primary's training days."""
    import urllib.request

    from client.local.services import free_port
    from feature_repo.analysis import AnalysisConsumer, AnalysisMetrics
    from python_backend.fraud.cases import open_case_store
    from python_backend.fraud.drift import CALENDAR, DriftWindow, Reference
    from python_backend.fraud.heavy_model import HeavyModel

    reference = Reference.read(tiny_build.repository / "fraud_primary" / "1")
    store = open_case_store(location=str(tmp_path / "cases.db"))
    consumer = AnalysisConsumer(
        f"127.0.0.1:{kafka_service.port}",
        HeavyModel(tiny_build.repository / "fraud_heavy" / "1"),
        store,
        group=f"analysis-drift-{uuid.uuid4().hex[:6]}",
        transactions_topic=SERVING_TOPIC,
        decisions_topic="decisions",
        analysis_topic=f"analysis-{uuid.uuid4().hex[:6]}",
        review_topic=f"review-{uuid.uuid4().hex[:6]}",
        drift=DriftWindow(reference, window_rows=100_000),
        log=lambda _m: None,
    )
    port = free_port()
    AnalysisMetrics(consumer, port)
    try:
        consumer.run(until_idle_s=3.0, max_seconds=120)
    finally:
        consumer.close()
        store.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("fraud_analysis_drift"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert (
        samples["fraud_analysis_drift_window_rows"] == consumer.counts["analysed"] >= len(decided)
    )
    features = {n.split('"')[1] for n in samples if n.startswith("fraud_analysis_drift_psi{")}
    assert features == set(reference.inputs) - {"score"}
    assert not features & CALENDAR
    assert all(v >= 0 for v in samples.values())
    assert "fraud_analysis_drift_score_psi" in samples
