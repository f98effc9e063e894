"""Shared fixtures: one small end-to-end build of the offline pipeline per test session."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from build_engines.primary import PrimaryConfig


@dataclass
class TinyBuild:
    result: dict
    repository: Path
    build_dir: Path
    output: str

    @property
    def report(self) -> dict:
        return json.loads((self.build_dir / "reports" / "model_quality.json").read_text())


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory: pytest.TempPathFactory) -> TinyBuild:
    """``make engines`` at the tiny scale, into a temporary build folder and repository."""
    from build_engines.pipeline import build_all

    root = tmp_path_factory.mktemp("engines")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = build_all(
            "tiny",
            primary_cfg=PrimaryConfig(epochs=4),
            repository=root / "model_repository",
            build_dir=root / "build",
        )
    return TinyBuild(result, root / "model_repository", root / "build", out.getvalue())


@pytest.fixture(scope="session")
def redis_service():
    """A real redis-server on a free loopback port for the whole session."""
    from client.local.services import redis_server

    with redis_server() as service:
        yield service


@pytest.fixture(scope="session")
def kafka_service():
    """A real Kafka-protocol broker (tansu) on a free loopback port for the whole session."""
    from client.local.services import kafka_broker

    with kafka_broker() as service:
        yield service


@pytest.fixture(scope="session")
def redis_cluster_service():
    """A real three-node Redis Cluster (all slots assigned) on loopback for the session."""
    from client.local.services import redis_cluster

    with redis_cluster() as cluster:
        yield cluster


@pytest.fixture
def redis_cluster_url(redis_cluster_service) -> str:
    """A seed node's URL of the cluster, every node emptied."""
    from redis.cluster import RedisCluster

    client = RedisCluster.from_url(redis_cluster_service.url)
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    client.close()
    return redis_cluster_service.url


#: Each store's URL fixture, for tests parametrized over the stores.
STORE_URL_FIXTURES = {"redis": "redis_url", "redis_cluster": "redis_cluster_url"}


@pytest.fixture
def redis_url(redis_service) -> str:
    """A Redis URL on an empty database."""
    import redis

    url = f"redis://127.0.0.1:{redis_service.port}/0"
    redis.Redis.from_url(url).flushdb()
    return url


SERVING_TOPIC = "transactions-serving-test"


@dataclass
class Serving:
    server: object
    repository: Path
    data_dir: Path
    client: object
    #: What the server was started with (the online store, the broker): replicas beside it
    #: (the mesh's tests) start with the same.
    env: dict


def serving_repository(tiny_build: TinyBuild, root: Path, primary: str | None = None) -> Path:
    """A copy of the tiny build's repository with the committed ``model.py`` files.
    ``primary``: where ``fraud_scoring`` runs the primary (``in_process`` or ``triton``, as
    ``FRAUD_PRIMARY`` would write it); by default as built (``FRAUD_PRIMARY``'s default)."""
    import shutil

    from build_engines.triton_config import scoring_config
    from python_backend.paths import MODEL_REPOSITORY

    repository = root / "model_repository"
    shutil.copytree(tiny_build.repository, repository)
    for model_py in MODEL_REPOSITORY.glob("fraud_*/1/model.py"):
        target = repository / model_py.parent.parent.name / "1" / "model.py"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(model_py, target)
    if primary is not None:
        (repository / "fraud_scoring" / "config.pbtxt").write_text(scoring_config(primary=primary))
    return repository


def _serving(
    tiny_build, root: Path, store_env: dict, kafka_service, primary: str | None = None
) -> Iterator[Serving]:
    """A real Triton server on the tiny build's models and the committed ``model.py`` files,
    reading the online store ``store_env`` names, publishing scored transactions and its
    decision log to the real broker (its spool in ``root``), warmed up; the primary where
    ``primary`` says (:func:`serving_repository`)."""
    from client.launcher import warm_up
    from client.local.triton import Ports, running
    from client.scoring import FraudClient

    repository = serving_repository(tiny_build, root, primary)
    env = {
        **store_env,
        "KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka_service.port}",
        "SCORED_TOPIC": SERVING_TOPIC,
        "DECISION_SPOOL_DIR": str(root / "decision-spool"),
    }
    with running(
        repository=repository, ports=Ports.free(), env=env, log_path=root / "server.log"
    ) as server:
        warm_up(server)  # as `make serve` does: the first requests after a load are slow
        client = FraudClient(server.grpc_url)
        yield Serving(server, repository, tiny_build.build_dir / "data" / "tiny", client, env)
        client.close()


@pytest.fixture(scope="session")
def serving(tiny_build, tmp_path_factory, redis_service, kafka_service):
    """The server with a real Redis online store (database 1) materialized as of the last
    simulated day (what production runs), the primary behind Triton's hop (what a GPU or
    TensorRT engines run; ``serving_sqlite`` runs it in process, the CPU default): the tests
    of both stores cover both placements, and those that act on Triton's ``fraud_primary``
    (stand-ins, its stub, its spans) run here."""
    from feature_repo.store import StoreSettings, fill

    root = tmp_path_factory.mktemp("serving")
    settings = StoreSettings.from_env(
        kind="redis",
        redis_url=f"redis://127.0.0.1:{redis_service.port}/1",
        data_dir=tiny_build.build_dir / "data" / "tiny",
        repo_dir=root / "features",
    )
    store = fill(settings, log=lambda _m: None)
    yield from _serving(tiny_build, root, store, kafka_service, primary="triton")


@pytest.fixture(scope="session")
def serving_sqlite(tiny_build, tmp_path_factory, kafka_service):
    """The server on the default, embedded SQLite online store (what ``make demo`` and
    ``make serve`` run), materialized as of the last simulated day, the primary where
    ``FRAUD_PRIMARY``'s default puts it (in ``fraud_scoring``'s process)."""
    from feature_repo.store import StoreSettings, fill

    root = tmp_path_factory.mktemp("serving-sqlite")
    settings = StoreSettings.from_env(
        kind="sqlite", data_dir=tiny_build.build_dir / "data" / "tiny", repo_dir=root / "features"
    )
    yield from _serving(tiny_build, root, fill(settings, log=lambda _m: None), kafka_service)


@pytest.fixture(params=["redis", "sqlite"])
def any_store_serving(request) -> Serving:
    """The server on each online store in turn: Redis (production; the primary behind
    Triton's hop) and SQLite (the defaults; the primary in process)."""
    return request.getfixturevalue("serving" if request.param == "redis" else "serving_sqlite")
