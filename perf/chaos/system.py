"""The system under test, started on loopback: Redis (filled from the offline store), the
Kafka-protocol broker, the stream consumer process, two Triton replicas with the fraud
models behind Envoy (``client.mesh``), a stub watchdog per replica; with the operator's
switches the faults use (drain, stop, crash, start, freeze, refill)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from client.local.services import child_environment
from client.local.triton import FRAUD_MODELS, Ports
from python_backend import settings

#: Replicas behind Envoy in a chaos run.
REPLICAS = 2


class System:
    """Redis, the broker, the consumer, Triton and the watchdog, each restartable."""

    def __init__(self, work: Path, repository: Path, data_dir: Path, log: Callable) -> None:
        self.work, self.repository, self.data_dir, self.log = work, repository, data_dir, log
        self.stack = contextlib.ExitStack()
        self.run_id = uuid.uuid4().hex[:6]
        self.topic = f"chaos-transactions-{self.run_id}"
        self.decisions = f"chaos-decisions-{self.run_id}"
        self.consumer_group = f"chaos-{self.run_id}"
        self.spool = work / "spool"
        self.mesh = None
        self.redis = self.kafka = self.consumer = None
        self.watchdogs: list = []
        self.refills: list[float] = []
        self.refill_priorities: list[str] = []
        self.envoy: dict[str, int] = {}
        self.restarts: list[dict] = []  # each replica restart's steps, in seconds
        self.unplanned: list[dict] = []  # replicas that died by themselves, booted again
        self.starts = 0

    # Redis ------------------------------------------------------------------------------

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def start_redis(self, port: int | None = None) -> None:
        from client.local.services import redis_server

        context = redis_server(port)
        self.redis = context.__enter__()
        self.redis_port = self.redis.port
        self._redis_context = context

    def stop_redis(self) -> None:
        self._redis_context.__exit__(None, None, None)

    def feature_env(self) -> dict[str, str]:
        from feature_repo.store import StoreSettings

        store = StoreSettings(
            kind="redis",
            redis_url=self.redis_url,
            data_dir=self.data_dir,
            repo_dir=self.work / "features",
        )
        return {**store.serving_env(), settings.KAFKA_BOOTSTRAP.name: self.bootstrap}

    def refill(self) -> float:
        """``python -m feature_repo materialize`` into Redis (a process of its own, as the
        scheduled job would be; it lowers its own priority, ``python_backend.priority``).
        Returns its seconds; what it ran at goes to ``refill_priorities``."""
        started = time.perf_counter()
        env = child_environment(self.feature_env())
        done = subprocess.run(
            [sys.executable, "-m", "feature_repo", "materialize"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        said = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        self.refill_priorities.append(said.rpartition(" at ")[2] or "unknown")
        return time.perf_counter() - started

    # Triton -----------------------------------------------------------------------------

    def server_env(self) -> dict[str, str]:
        return {
            "FEATURE_STORE": "redis",
            "REDIS_URL": self.redis_url,
            "KAFKA_BOOTSTRAP": self.bootstrap,
            "SCORED_TOPIC": self.topic,
            "DECISIONS_TOPIC": self.decisions,
            "DECISION_SPOOL_DIR": str(self.spool),
        }

    def _start_replica(self, replica):
        """Replica ``i`` with its own decision spool; both publish to the same topics."""
        from client.local.triton import start

        self.starts += 1
        spool = self.spool / f"replica-{replica.index}"
        env = {**self.server_env(), "DECISION_SPOOL_DIR": str(spool)}
        return start(
            repository=self.repository,
            ports=replica.ports,
            nice=replica.nice,
            models=list(FRAUD_MODELS),
            env=env,
            log_path=self.work / f"replica-{replica.index}-{self.starts}.log",
        )

    @property
    def server(self):
        """Replica 0's server: the one whose models and stubs the model faults act on."""
        return self.mesh.replicas[0].server

    @property
    def url(self) -> str:
        """Where the load goes: Envoy."""
        return self.mesh.url

    # The consumer -----------------------------------------------------------------------

    def _consumer_process(self, name: str, *args: str, wait_s: float | None = None):
        """``python -m feature_repo consume`` in this run's group, stats in ``<name>.json``,
        output in ``<name>.log``: started (``wait_s`` None), or run to its end."""
        env = child_environment(self.feature_env())
        command = [
            sys.executable,
            "-m",
            "feature_repo",
            "consume",
            "--topic",
            self.topic,
            "--group",
            self.consumer_group,
            "--stats-file",
            str(self.work / f"{name}.json"),
            *args,
        ]
        out = (self.work / f"{name}.log").open("wb")
        if wait_s is None:
            return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        return subprocess.run(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=wait_s, check=False
        )

    def start_consumer(self, timeout_s: float = 120) -> None:
        """Start the consumer and wait until it has its partitions (importing Feast takes a
        core for some seconds: not while the load runs)."""
        ready = self.work / "consumer.ready"
        ready.unlink(missing_ok=True)
        self.consumer = self._consumer_process("consumer", "--ready-file", str(ready))
        deadline = time.monotonic() + timeout_s
        while not ready.exists():
            if self.consumer.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the stream consumer did not start; see {self.work}/consumer.log"
                )
            time.sleep(0.2)

    def drain_consumer(self, timeout_s: float = 180) -> dict:
        """A consumer in the same group, run until the topic stays idle for 3 s."""
        self._consumer_process("consumer-drain", "--until-idle", "3", wait_s=timeout_s)
        stats = self.work / "consumer-drain.json"
        return json.loads(stats.read_text()) if stats.exists() else {}

    def committed(self) -> int | None:
        """Offsets the consumer group has committed, summed over the partitions (read without
        joining the group). None when the broker does not answer."""
        from confluent_kafka import Consumer, TopicPartition

        reader = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": self.consumer_group,
                "enable.auto.commit": False,
            }
        )
        try:
            partitions = reader.list_topics(self.topic, timeout=10).topics[self.topic].partitions
            got = reader.committed([TopicPartition(self.topic, p) for p in partitions], 10)
            return sum(max(tp.offset, 0) for tp in got)
        except Exception:  # reported as unknown
            return None
        finally:
            reader.close()

    def wait_caught_up(self, total: int, stall_s: float = 30, limit_s: float = 900) -> int | None:
        """Wait until the group has committed ``total`` events, while it keeps progressing
        (a consumer that fell behind under the faults catches up before it is stopped)."""
        started = progressed = next_log = time.monotonic()
        last = self.committed()
        while last is not None and last < total:
            now = time.monotonic()
            if now - progressed > stall_s or now - started > limit_s:
                break
            if now >= next_log:
                self.log(f"chaos: the consumer catches up: {last:,} of {total:,} committed")
                next_log = now + 10
            time.sleep(1)
            current = self.committed()
            if current is not None and current > last:
                progressed, last = time.monotonic(), current
        return last

    def stop_consumer(self, idle_s: float = 3.0) -> dict:
        from client.local.services import stop_process

        time.sleep(idle_s)  # let it drain what is published
        stop_process(self.consumer, grace_s=20)
        path = self.work / "consumer.json"
        return json.loads(path.read_text()) if path.exists() else {}

    # All of it --------------------------------------------------------------------------

    def start(self) -> None:
        from client.launcher import warm_up
        from client.local.services import free_port, kafka_broker
        from client.local.watchdog import Watchdog
        from client.mesh.config import MeshConfig
        from client.mesh.mesh import Mesh
        from feature_repo.stream import ensure_topic

        self.spool.mkdir(parents=True, exist_ok=True)
        self.start_redis()
        self.kafka = self.stack.enter_context(kafka_broker())
        self.bootstrap = f"127.0.0.1:{self.kafka.port}"
        ensure_topic(self.bootstrap, self.topic)
        ensure_topic(self.bootstrap, self.decisions)
        self.log(f"chaos: Redis :{self.redis_port}, broker :{self.kafka.port}; filling Redis")
        self.refills.append(self.refill())
        self.start_consumer()
        config = MeshConfig(listen_port=free_port(), admin_port=free_port())
        self.mesh = Mesh(
            self.work / "mesh",
            config,
            [Ports.free() for _ in range(REPLICAS)],
            self._start_replica,
            lambda server: warm_up(server, requests=50),
            log=self.log,
        )
        self.mesh.start()
        self.watchdogs = [
            Watchdog(r.address, log=self.log, rotation=self.mesh.rotation).start()
            for r in self.mesh.replicas
        ]
        self.log(f"chaos: Envoy on gRPC :{config.listen_port} in front of {REPLICAS} replicas")

    #: Envoy's counters a run reports: what the mesh did about the faults.
    ENVOY_STATS = (
        "upstream_rq_retry",
        "upstream_rq_retry_overflow",
        "upstream_rq_per_try_timeout",
        "upstream_cx_none_healthy",
        "upstream_rq_503",
        "health_check.failure",
        "outlier_detection.ejections_enforced_total",
    )

    def envoy_stats(self) -> dict[str, int]:
        from client.mesh.config import CLUSTER

        found = self.mesh.envoy.stats(f"cluster.{CLUSTER}.")
        return {k: found.get(f"cluster.{CLUSTER}.{k}", 0) for k in self.ENVOY_STATS}

    @property
    def reloads(self) -> list:
        return sorted(r for w in self.watchdogs for r in w.reloads)

    def stop(self) -> None:
        for watchdog in self.watchdogs:
            watchdog.stop()
        with contextlib.suppress(Exception):
            if self.mesh:
                self.mesh.stop()
        if self.consumer and self.consumer.poll() is None:
            self.consumer.kill()
        with contextlib.suppress(Exception):
            self.stop_redis()
        self.stack.close()

    def admins_by_replica(self) -> list:
        """(replica, operator's client) per running replica."""
        from client.local.operator import admin_client

        return [
            (r, admin_client(r.address))
            for r in self.mesh.replicas
            if r.server is not None and r.server.process.poll() is None
        ]

    def heal(self) -> None:
        """Boot any replica whose server died by itself, as an orchestrator restarts a crashed
        pod (Triton 2.51 crashed here, SIGSEGV, during model reloads under load): recorded in
        ``unplanned`` with the time, never hidden."""
        for replica in self.mesh.replicas:
            server = replica.server
            if server is not None and server.process.poll() is not None:
                code = server.process.returncode
                self.log(f"chaos: replica {replica.index} died by itself (exit {code}); booting")
                self.unplanned.append({"replica": replica.index, "exit": code, "at": time.time()})
                self.mesh.stop_replica(replica)
                self.mesh.boot(replica)
