"""A ``fraud_primary`` rollout on two real Triton replicas behind Envoy, judged on a real
Prometheus scraping them, under a steady load: a good version promoted through shadow and
canary; a deliberately bad one (scores inverted) rolled back, caught in shadow before it
decides anything, and caught at a small canary share when there is no shadow step."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest

from client.rollout import MODEL, Gates, Prometheus, Rollout, pinned, publish
from tests.support import wait_until

pytestmark = pytest.mark.slow

#: The test's load is ~60 decisions/s: steps short, and enough rows to judge in each.
GATES = Gates(min_rows=15, max_over_budget=0.2, max_degraded=0.2)


class Load:
    """A plain client through Envoy, one transaction per request, until stopped; like any
    caller, it retries once what got no answer (UNAVAILABLE), same transaction id."""

    def __init__(self, url: str) -> None:
        from client.scoring import FraudClient

        self.client = FraudClient(url)
        self.answered = self.failed = self.retried = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            row = {
                "transaction_id": f"rollout-{uuid.uuid4().hex[:12]}",
                "card_id": 1 + i % 50,
                "terminal_id": 1 + i % 20,
                "amount": 5.0 + (i * 7) % 300,
                "ts_ms": int(time.time() * 1000),
            }
            for attempt in (1, 2):
                try:
                    self.client.score([row])
                    self.answered += 1
                    break
                except Exception as err:
                    if attempt == 1 and "UNAVAILABLE" in str(err):
                        self.retried += 1
                        continue
                    self.failed += 1
                    self.errors.append(str(err)[:200])
            i += 1
            time.sleep(0.01)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        self.client.close()


@pytest.fixture(scope="module")
def fleet(serving, tiny_build, tmp_path_factory):
    """Two replicas of their own repository copy (a rollout writes to it) behind Envoy, and
    Prometheus scraping them every second."""
    from client.launcher import warm_up
    from client.local.services import free_port
    from client.local.triton import FRAUD_MODELS, Ports, start
    from client.mesh.config import MeshConfig
    from client.mesh.mesh import Mesh
    from client.observe.stack import start_prometheus
    from tests.conftest import serving_repository

    work = tmp_path_factory.mktemp("rollout")
    repository = serving_repository(tiny_build, work)
    topic = f"rollout-decisions-{uuid.uuid4().hex[:8]}"
    env = {**serving.env, "DECISIONS_TOPIC": topic, "DECISION_SPOOL_DIR": str(work / "spool")}

    def start_replica(replica):
        return start(
            repository=repository,
            ports=replica.ports,
            nice=replica.nice,
            models=list(FRAUD_MODELS),
            env=env,
            log_path=work / f"replica-{replica.index}.log",
        )

    mesh = Mesh(
        work,
        MeshConfig(listen_port=free_port(), admin_port=free_port()),
        [Ports.free(), Ports.free()],
        start_replica,
        lambda s: warm_up(s, 20),
        log=lambda _m: None,
    )
    mesh.start()
    targets = {"triton": [f"127.0.0.1:{r.ports.metrics}" for r in mesh.replicas]}
    prometheus = start_prometheus(free_port(), work / "prometheus", targets, interval_s=1)
    try:
        yield mesh, repository, Prometheus(f"http://127.0.0.1:{prometheus.port}"), env, work
    finally:
        prometheus.stop()
        mesh.stop()


@pytest.fixture
def champion(fleet) -> int:
    """The version every replica serves now, alone and pinned, before a test's rollout: 1 on
    a new fleet, the promoted one after a promotion. Each test rolls out its own version
    number against it, so the tests run alone or in any order."""
    mesh, repository, *_ = fleet
    (serving,) = pinned(repository)
    assert _ready(mesh, serving) == [True, True], f"version {serving} is not served"
    return serving


def _rollout(fleet, version: int, **kwargs) -> tuple[dict, Load]:
    mesh, repository, prometheus, _, work = fleet
    with Load(mesh.url) as load:
        started = time.time()
        # The champion has a history in Prometheus before the first step: the load's
        # decisions in two scrapes at least (what ``increase`` needs).
        wait_until(
            lambda: _decisions_since(prometheus, started) > 0,
            30,
            what="the load's decisions in Prometheus",
            interval_s=0.5,
        )
        report = Rollout(
            repository,
            version,
            [r.address for r in mesh.replicas],
            prometheus,
            gates=GATES,
            log=lambda _m: None,
            out=work / "reports",
            rejected=work / "rejected",
            rotation=mesh.rotation,  # each replica's reloads out of Envoy's rotation
            replica_pids={r.address: r.server.process.pid for r in mesh.replicas},
            **{"step_s": 5.0, "max_step_s": 25.0, **kwargs},
        ).run()
    return report, load


def _decisions_since(prometheus: Prometheus, started: float) -> float:
    now = time.time()
    window = f"{max(1, round(now - started))}s"
    return prometheus.scalar(f"sum(increase(fraud_decisions_total[{window}]))", now)


def _ready(mesh, version: int) -> list[bool]:
    from client.local.operator import admin_client

    ready = []
    for replica in mesh.replicas:
        admin = admin_client(replica.address)
        ready.append(admin.is_model_ready(MODEL, str(version)))
        admin.close()
    return ready


def test_a_good_version_goes_through_shadow_and_canary_and_is_promoted(fleet, champion) -> None:
    mesh, repository, _, env, work = fleet
    publish(repository, 2, "copy", log=lambda _m: None)
    assert pinned(repository) == [champion], "published, not served: the champion stays pinned"
    report, load = _rollout(fleet, 2, shadow_share=0.5, steps=(0.2, 1.0))
    assert report["outcome"] == "promoted", report
    assert [s["name"] for s in report["steps"]] == ["shadow", "canary 20%", "canary 100%"]
    # No reload under traffic: each replica's were out of Envoy's rotation (the other served).
    assert report["reloads"] and not any(r["in_place"] for r in report["reloads"]), report
    assert {r["replica"] for r in report["reloads"]} == {r.address for r in mesh.replicas}
    for step in report["steps"]:
        assert step["verdict"] == "pass" and step["challenger"]["rows"] >= GATES.min_rows, step
        assert step["psi"] <= step["psi_limit"], step  # the same model: noise only
    assert report["challenger_decided_share"] > 0.2, report
    assert load.failed == 0 and load.answered > 500, load.errors[:3]
    assert pinned(repository) == [2], "a restart serves the new version"
    assert _ready(mesh, 2) == [True, True] and _ready(mesh, champion) == [False, False]
    assert (
        (work / "reports" / "rollout-2.md")
        .read_text()
        .startswith(f"# Rollout of {MODEL} 2 (champion {champion}): promoted")
    )
    # The shadow's scores are in the decision log beside the champion's, never returned.
    from python_backend.fraud.decision_log import read_all

    records = read_all(env["KAFKA_BOOTSTRAP"], env["DECISIONS_TOPIC"])
    shadowed = [r for r in records if r.get("shadow_version") == "2"]
    assert shadowed, "no decision-log record carries a shadow score"
    on_primary = [r for r in shadowed if r["path"] == "primary"]
    assert on_primary and all(abs(r["shadow_score"] - r["score"]) < 1e-4 for r in on_primary)
    assert {r.get("model_version") for r in records} >= {str(champion), "2"}


def test_a_bad_version_is_caught_in_shadow_and_decides_nothing(fleet, champion) -> None:
    mesh, repository, _, _, _ = fleet
    publish(repository, 3, "inverted", log=lambda _m: None)
    report, load = _rollout(fleet, 3, shadow_share=0.5)
    assert report["outcome"] == "rolled back", report
    assert [s["name"] for s in report["steps"]] == ["shadow"]
    assert "PSI" in report["reason"], report["reason"]
    assert report["challenger_decided_share"] == 0.0
    assert load.failed == 0, load.errors[:3]
    assert not (repository / MODEL / "3").exists(), "the rejected version is out of the repository"
    assert (Path(report["rejected_to"]) / "model.onnx").exists(), report["rejected_to"]
    assert pinned(repository) == [champion] and _ready(mesh, champion) == [True, True]
    assert _ready(mesh, 3) == [False, False]


def test_without_shadow_a_bad_version_is_rolled_back_at_the_first_canary_step(
    fleet, champion
) -> None:
    mesh, repository, _, _, _ = fleet
    publish(repository, 4, "inverted", log=lambda _m: None)
    started = time.monotonic()
    report, load = _rollout(fleet, 4, shadow_share=0.0, steps=(0.05, 0.5, 1.0))
    assert time.monotonic() - started < 60 + 5, "rolled back within 60 s (plus the load's lead)"
    assert report["outcome"] == "rolled back", report
    assert [s["name"] for s in report["steps"]] == ["canary 5%"], report["steps"]
    assert "PSI" in report["reason"], report["reason"]
    assert 0 < report["challenger_decided_share"] < 0.10, report
    assert load.failed == 0, load.errors[:3]
    assert pinned(repository) == [champion] and _ready(mesh, champion) == [True, True]
