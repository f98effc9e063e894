"""Labels on a real broker, of decisions a real server made: ``python -m client labels``
reads the decision log, publishes the world's reports in order of report time, and the label
join reads both back: the features it trains on are the ones the server logged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from build_engines.label_join import JoinPolicy, join
from build_engines.labels import CARDHOLDER, CHARGEBACK
from client.labels import publish, read_labels, served_decisions
from python_backend.fraud import served
from python_backend.fraud.features import MS_PER_DAY
from python_backend.paths import ROOT

pytestmark = pytest.mark.slow


def test_labels_of_served_decisions_round_trip_into_a_training_set(
    serving, kafka_service, tmp_path
) -> None:
    bootstrap = f"127.0.0.1:{kafka_service.port}"
    tx = pd.read_parquet(serving.data_dir / "transactions.parquet")
    suffix = f"-lab-{uuid.uuid4().hex[:6]}"
    # Frauds over-sampled so that every kind of report occurs among a few hundred rows.
    rows = pd.concat([tx[tx["is_fraud"] == 1].tail(120), tx[tx["is_fraud"] == 0].tail(280)])
    rows = rows.assign(transaction_id=rows["transaction_id"].astype(str) + suffix)
    records = rows[["transaction_id", "card_id", "terminal_id", "amount", "ts_ms"]]
    records = records.to_dict("records")
    for i in range(0, len(records), 25):
        serving.client.score(records[i : i + 25])
    # The simulated world of this test: its transactions, under the ids they were served as.
    world = tmp_path / "data"
    world.mkdir()
    rows.to_parquet(world / "transactions.parquet", index=False)
    topic = f"labels-{uuid.uuid4().hex[:6]}"
    until_ms = int(rows["ts_ms"].max()) + 40 * MS_PER_DAY
    until = datetime.fromtimestamp(until_ms / 1000, UTC).isoformat()
    stats = tmp_path / "labels.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "client",
            "labels",
            "--data",
            str(world),
            "--topic",
            topic,
            "--until",
            until,
            "--review-topic",
            f"review-none-{uuid.uuid4().hex[:6]}",
            "--stats-file",
            str(stats),
        ],
        cwd=ROOT,
        env={**os.environ, "KAFKA_BOOTSTRAP": bootstrap},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    counts = json.loads(stats.read_text())
    assert counts["published"] > 0 and counts["still_to_come"] > 0, counts

    labels, refused = read_labels(bootstrap, topic)
    assert refused == []
    assert len(labels) == counts["published"]
    # Delivered twice (the publisher run again over the same window): counted once.
    publish(bootstrap, labels.head(10), topic)
    again, _refused = read_labels(bootstrap, topic)
    assert len(again) == counts["published"]
    columns = list(labels.columns)  # the partitions interleave in any order on each read
    pd.testing.assert_frame_equal(
        again.sort_values(columns, ignore_index=True),
        labels.sort_values(columns, ignore_index=True),
    )
    assert labels["transaction_id"].str.endswith(suffix).all()
    assert (labels["reported_ms"] <= until_ms).all()
    decisions = served_decisions(bootstrap, "decisions")
    ours = decisions[decisions["transaction_id"].str.endswith(suffix)]
    assert len(ours) == len(rows), "every decision is in the log"
    declined = set(ours.loc[ours["decision"] == "DECLINE", "transaction_id"])
    reported = labels[labels["kind"].isin([CARDHOLDER, CHARGEBACK])]
    assert not declined & set(reported["transaction_id"])
    truth = rows.set_index("transaction_id")["is_fraud"]
    assert (labels["is_fraud"].to_numpy() == truth.loc[labels["transaction_id"]].to_numpy()).all()

    # As of the last label published: the matured rows, with the inputs the server logged.
    joined = join(ours, labels, until_ms, JoinPolicy(maturity_days=30, declined="genuine"))
    assert len(joined) == len(ours) and joined.facts["young"] == 0
    logged = ours.set_index("transaction_id").loc[joined.transaction_id, "inputs"]
    expected = served.decode(list(logged))
    np.testing.assert_array_equal(joined.inputs.tabular, expected.tabular)
    fraud_labelled = set(labels.loc[labels["is_fraud"] == 1, "transaction_id"])
    assert {t for t, y in zip(joined.transaction_id, joined.y, strict=True) if y} == (
        fraud_labelled
    )
