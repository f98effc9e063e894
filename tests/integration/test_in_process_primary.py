"""The primary in the BLS's process (``fraud_scoring`` with ``PRIMARY=in_process``) on a real
server that has no ``fraud_primary`` model loaded: the same decisions as through Triton's
hop, on the primary's path. Its deadline (a stuck session abandoned on time) is tested with
real threads in ``tests/unit/test_in_process_primary.py``."""

from __future__ import annotations

import pandas as pd
import pytest

from python_backend.fraud.features import MS_PER_DAY
from tests.conftest import serving_repository
from tests.integration.test_deadline import _config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def in_process_server(tiny_build, serving_sqlite, tmp_path_factory):
    from client.local.triton import Ports, running
    from client.scoring import FraudClient

    root = tmp_path_factory.mktemp("in-process-primary")
    repository = serving_repository(tiny_build, root)

    def in_process(config) -> None:
        config.parameters["PRIMARY"].string_value = "in_process"

    _config(repository / "fraud_scoring" / "config.pbtxt", in_process)
    store = {k: v for k, v in serving_sqlite.env.items() if not k.startswith(("KAFKA", "SCORED"))}
    with running(
        repository=repository,
        ports=Ports.free(),
        env=store,
        models=["fraud_scoring"],
        log_path=root / "server.log",
    ) as server:
        client = FraudClient(server.grpc_url)
        yield server, client
        client.close()


def test_the_in_process_primary_decides_as_the_hop_does(
    in_process_server, serving_sqlite, tiny_build
) -> None:
    server, client = in_process_server
    tx = pd.read_parquet(tiny_build.build_dir / "data" / "tiny" / "transactions.parquet")
    day = tx[tx["ts_ms"] >= int(tx["ts_ms"].max()) // MS_PER_DAY * MS_PER_DAY].head(24)
    rows = day[["transaction_id", "card_id", "terminal_id", "amount", "ts_ms"]].to_dict("records")
    rows = [r | {"transaction_id": f"{r['transaction_id']}-ip"} for r in rows]
    here = client.score(rows)
    hop = serving_sqlite.client.score(rows)
    assert {d.path for d in here} == {"primary"}, [(d.path, d.reasons) for d in here]
    assert [d.decision for d in here] == [d.decision for d in hop]
    assert [d.score for d in here] == pytest.approx([d.score for d in hop], abs=1e-5)
    from client.local.operator import admin_client

    admin = admin_client(server.grpc_url)
    try:
        assert not admin.is_model_ready("fraud_primary"), "the primary is not Triton's here"
    finally:
        admin.close()
