"""The system under test, started on loopback: Redis (filled from the offline store), the
Kafka-protocol broker, the stream consumer process, Triton with the fraud models, the stub
watchdog; with the operator's switches the faults use (stop, start, freeze, refill)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from client.local.operator import admin_client
from client.local.services import child_environment
from client.local.triton import FRAUD_MODELS, Ports
from python_backend import settings


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
        self.ports = Ports.free()
        self.replica_ports = Ports.free()
        self.replica = None
        self.load = None  # the clients' pool, drained and refilled by the rolling restart
        self.redis = self.kafka = self.server = self.consumer = self.watchdog = None
        self.refills: list[float] = []
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
        scheduled job would be). Returns its seconds."""
        started = time.perf_counter()
        env = child_environment(self.feature_env())
        # At the lowest CPU priority: a batch job beside the service (on this 2-core machine
        # the refill took a core for half a minute and the service's P99 with it).
        subprocess.run(
            ["nice", "-n", "19", sys.executable, "-m", "feature_repo", "materialize"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
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

    def _start(self, ports: Ports, env: dict[str, str], log_name: str):
        from client.local.triton import start

        return start(
            repository=self.repository,
            ports=ports,
            models=list(FRAUD_MODELS),
            env=env,
            log_path=self.work / log_name,
        )

    def start_server(self) -> None:
        self.starts += 1
        self.server = self._start(self.ports, self.server_env(), f"server-{self.starts}.log")

    def stop_server(self) -> None:
        self.server.stop()

    def start_replica(self) -> None:
        """A second server on its own ports (and its own decision spool), beside the first:
        the rolling restart brings it up before the first one goes down."""
        from client.launcher import warm_up

        env = {**self.server_env(), "DECISION_SPOOL_DIR": str(self.spool / "replica")}
        self.replica = self._start(self.replica_ports, env, "server-replica.log")
        warm_up(self.replica, requests=50)

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
        from client.local.services import kafka_broker
        from client.local.watchdog import Watchdog
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
        self.start_server()
        warm_up(self.server, requests=50)
        self.watchdog = Watchdog(self.server.grpc_url, log=self.log).start()
        self.log(f"chaos: Triton ready on gRPC :{self.ports.grpc}")

    def stop(self) -> None:
        if self.watchdog:
            self.watchdog.stop()
        with contextlib.suppress(Exception):
            if self.server:
                self.stop_server()
        with contextlib.suppress(Exception):
            if self.replica:
                self.replica.stop()
        if self.consumer and self.consumer.poll() is None:
            self.consumer.kill()
        with contextlib.suppress(Exception):
            self.stop_redis()
        self.stack.close()

    def admin(self):

        return admin_client(self.server.grpc_url)
