"""The primary in the BLS's process (``fraud_scoring`` with ``PRIMARY=in_process``, the CPU
default) on a real server that has no ``fraud_primary`` model loaded: the same decisions as
through Triton's hop, on the primary's path, and the chaos faults reaching it. Its deadline
(a stuck session abandoned on time) is tested with real threads in
``tests/unit/test_in_process_primary.py``."""

from __future__ import annotations

import pandas as pd
import pytest

from python_backend.fraud.features import MS_PER_DAY
from tests.conftest import serving_repository

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def in_process_server(tiny_build, serving_sqlite, tmp_path_factory):
    from client.local.triton import Ports, running
    from client.scoring import FraudClient

    root = tmp_path_factory.mktemp("in-process-primary")
    repository = serving_repository(tiny_build, root, primary="in_process")
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


def test_the_in_process_primary_decides_as_the_hop_does(in_process_server, tiny_build) -> None:
    """The same rows decided in process, then, on the same server, through Triton's
    ``fraud_primary`` (loaded for it, ``fraud_scoring`` reloaded with ``PRIMARY=triton``; an
    idle server of this test's own, so no reload under load): the same scores."""
    from client.local.operator import admin_client, override_parameters

    server, client = in_process_server
    tx = pd.read_parquet(tiny_build.build_dir / "data" / "tiny" / "transactions.parquet")
    day = tx[tx["ts_ms"] >= int(tx["ts_ms"].max()) // MS_PER_DAY * MS_PER_DAY].head(24)
    rows = day[["transaction_id", "card_id", "terminal_id", "amount", "ts_ms"]].to_dict("records")
    here = client.score([r | {"transaction_id": f"{r['transaction_id']}-ip"} for r in rows])
    assert {d.path for d in here} == {"primary"}, [(d.path, d.reasons) for d in here]
    admin = admin_client(server.grpc_url)
    try:
        assert not admin.is_model_ready("fraud_primary"), "the primary is not Triton's here"
        admin.load_model("fraud_primary")
        override_parameters(admin, "fraud_scoring", PRIMARY="triton")
        try:
            hop = client.score([r | {"transaction_id": f"{r['transaction_id']}-hop"} for r in rows])
        finally:
            override_parameters(admin, "fraud_scoring", PRIMARY="in_process")
            admin.unload_model("fraud_primary")
    finally:
        admin.close()
    assert {d.path for d in hop} == {"primary"}, [(d.path, d.reasons) for d in hop]
    assert [d.decision for d in here] == [d.decision for d in hop]
    assert [d.score for d in here] == pytest.approx([d.score for d in hop], abs=1e-5)


@pytest.mark.parametrize("kind", ["error", "slow", "missing"])
def test_the_chaos_faults_reach_the_in_process_primary_and_the_fallback_decides(
    in_process_server, tiny_build, tmp_path, kind
) -> None:
    """What ``make chaos`` injects when the primary runs in process (``FRAUD_PRIMARY=
    in_process``): ``PRIMARY_DIR`` pointed at a faulty artefact (every run fails, every run
    is slow, no file), one reload of ``fraud_scoring``; every request is decided below the
    primary within the budget, and the primary decides again once the fault is lifted."""
    from types import SimpleNamespace

    from client.local.operator import admin_client, primary_in_process, restore_primary
    from perf.chaos.faults import _primary_fault
    from tests.support import wait_until

    server, client = in_process_server
    tx = pd.read_parquet(tiny_build.build_dir / "data" / "tiny" / "transactions.parquet")
    rows = tx[["transaction_id", "card_id", "terminal_id", "amount", "ts_ms"]].tail(8)
    rows = [
        r | {"transaction_id": f"{r['transaction_id']}-{kind}"} for r in rows.to_dict("records")
    ]
    admin = admin_client(server.grpc_url)
    try:
        assert primary_in_process(admin)
        stand_in_used = []
        _primary_fault(SimpleNamespace(work=tmp_path), stand_in_used.append, kind)(admin)
        assert not stand_in_used, "the in-process primary has no Triton model to stand in for"
        for _ in range(3):
            decided = client.score(rows)
            # The fallback, or the rules where the batch's budget was already spent (a
            # machine this busy): never the primary, and the primary's failure named.
            assert all(d.path in ("fallback", "rules") for d in decided), [
                (d.path, d.reasons) for d in decided
            ]
            for d in decided:
                assert any(
                    r.startswith(("PRIMARY_", "DEADLINE_SHED:primary")) for r in d.reasons
                ), d
                assert d.stage_us["total"] < 95_000, d  # the server's own time for it
    finally:
        restore_primary(admin)
        admin.close()
    wait_until(
        lambda: {d.path for d in client.score(rows)} == {"primary"},
        timeout_s=15,
        what="the primary deciding again once the fault is lifted",
    )
