"""``make chaos``: the whole system under a steady Poisson load, one fault at a time.

The run starts Redis (filled from the offline store), a Kafka-protocol broker, the stream
consumer (``python -m feature_repo consume``, a process of its own), Triton with the fraud
models, and the stub watchdog (``client.local.watchdog``). It offers ``rate`` requests per second
(one transaction each, unique transaction ids, unary gRPC ``ModelInfer``), and injects each
fault of ``FAULTS`` in turn: held for ``fault_s``, lifted, then watched for ``watch_s``.
Clients retry what did not get an answer (transport errors, a stopped server, timeouts),
with the same transaction id and a new request id (``<tx>#<attempt>``).

Every fault switch is operator tooling here: models are swapped for the stand-in of
``perf/models/faulty`` through Triton's model-control API, processes are stopped or frozen
with signals. The serving path has no back door.

After the load, a reconciliation reads the ``decisions`` topic and counts accepted requests
against logged decisions, and the consumer's counts against the ``transactions`` topic.

Output: ``build/reports/chaos.json``, ``chaos.md`` and ``chaos_timeline.png``.
``CHAOS_SOAK_S``: hold the load that long with the faults cycling, and watch the server's
memory and file descriptors for growth. ``CHAOS_FAULTS=a,b``: only those faults (a soak
without ``server_restart`` and ``rolling_restart`` watches one server process throughout).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from client.local.services import stub_pids
from client.local.triton import FRAUD_MODELS, ROOT, Ports
from python_backend import settings
from python_backend.fraud.reasons import is_degraded

REPORTS = ROOT / "build" / "reports"
FAULTY_MODEL = ROOT / "perf" / "models" / "faulty" / "model.py"
BUDGET_MS = 95.0
#: Each attempt gives up after this long; a request is retried until RETRY_DEADLINE_S.
ATTEMPT_TIMEOUT_S = 1.0
RETRY_DEADLINE_S = 30.0
#: Attempts in flight at most (a client's connection pool): after an outage the backlog is
#: sent as fast as the server answers, not all at once (a retry storm keeps a recovered
#: server overloaded). Waiting for a slot counts in the request's latency.
MAX_IN_FLIGHT = 128
#: A replica that refused a connection is left alone this long (then tried again).
FAILOVER_S = 1.0
#: How long a replica taken out of the pool gets to finish its in-flight requests.
DRAIN_S = 1.5

#: gRPC reconnects at most a second after the server went away (its default backs off to
#: two minutes, so a restarted server would be found late).
CHANNEL_ARGS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
#: The load's first seconds (client and server warming up) are left out of the baseline.
WARMUP_S = 3.0
TARGETS = {"decided": 0.999, "within_budget": 0.99, "recovery_s": 10.0, "lost": 0}

FAULTS = (
    "primary_errors",
    "primary_slow",
    "primary_unloaded",
    "primary_stub_killed",
    "fallback_fails_too",
    "redis_down",
    "redis_slow",
    "kafka_down",
    "server_restart",
    "rolling_restart",
)
DESCRIPTIONS = {
    "primary_errors": "fraud_primary answers every request with an error",
    "primary_slow": "fraud_primary answers after 250 ms (budget 95 ms)",
    "primary_unloaded": "fraud_primary unloaded",
    "primary_stub_killed": "fraud_primary's Python stub killed with SIGKILL (instantaneous)",
    "fallback_fails_too": "fraud_primary answers with errors and the fallback fails too "
    "(the in-process one's artefact does not load; the Triton model errors)",
    "redis_down": "Redis stopped, then started empty and refilled",
    "redis_slow": "Redis blocked by DEBUG SLEEP 0.2 s, back to back",
    "kafka_down": "the broker frozen (SIGSTOP), then resumed (SIGCONT)",
    "server_restart": "Triton stopped (SIGTERM) and started again on the same ports",
    "rolling_restart": "a second replica started and warmed, the first stopped and started "
    "again, then the second stopped; clients fail over between them",
}


def faults_from_env() -> tuple[str, ...]:
    """``CHAOS_FAULTS`` (comma-separated), else every fault."""
    raw = settings.CHAOS_FAULTS.get().strip()
    if not raw:
        return FAULTS
    chosen = tuple(f.strip() for f in raw.split(",") if f.strip())
    unknown = [f for f in chosen if f not in FAULTS]
    if unknown:
        raise SystemExit(f"CHAOS_FAULTS: unknown {unknown}; choose from {', '.join(FAULTS)}")
    return chosen


@dataclass(frozen=True)
class Timing:
    rate: float = 200.0
    baseline_s: float = 10.0
    fault_s: float = 10.0
    watch_s: float = 12.0
    soak_s: float = 0.0

    @classmethod
    def make(cls, quick: bool) -> Timing:
        soak = settings.CHAOS_SOAK_S.get_float()
        if quick:
            return cls(baseline_s=3, fault_s=3, watch_s=6, soak_s=soak)
        return cls(soak_s=soak)


# -- the system ------------------------------------------------------------------------


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
        env = {**os.environ, **self.feature_env()}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        # At the lowest CPU priority: a batch job beside the service (on this 2-core machine
        # the refill took a core for half a minute and the service's P99 with it).
        subprocess.run(
            ["nice", "-n", "19", sys.executable, "-m", "feature_repo", "materialize"],
            env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
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
        env = {**os.environ, **self.feature_env()}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        command = [sys.executable, "-m", "feature_repo", "consume", "--topic", self.topic,
                   "--group", self.consumer_group,
                   "--stats-file", str(self.work / f"{name}.json"), *args]  # fmt: skip
        out = (self.work / f"{name}.log").open("wb")
        if wait_s is None:
            return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        return subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=wait_s, check=False)  # fmt: skip

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

        reader = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.consumer_group,
                           "enable.auto.commit": False})  # fmt: skip
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
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.server.grpc_url)


# -- faults ----------------------------------------------------------------------------


def _stand_in(system: System, model: str, fault: str) -> None:
    admin = system.admin()
    config = admin.get_model_config(model, as_json=True)["config"]
    config["parameters"] = {"FAULT": {"string_value": fault}}
    config.pop("model_warmup", None)  # a failing stand-in would fail its own warm-up
    admin.load_model(model, config=json.dumps(config),
                     files={"file:1/model.py": FAULTY_MODEL.read_bytes()})  # fmt: skip
    admin.close()


def _reload(system: System, *models: str) -> None:
    admin = system.admin()
    for model in models:
        admin.load_model(model)
    admin.close()


#: Where a broken in-process fallback is pointed: no such file, as after a bad rollout.
BROKEN_FALLBACK_ONNX = "/nonexistent/fraud_fallback.onnx"


def override_parameters(admin, model: str, **parameters: str | None) -> None:
    """Reload ``model`` with these config parameters set (None: removed), through Triton's
    model-control API: the new version loads beside the old one and takes over. Undo with
    the same call: a plain ``load_model`` keeps a config given by an earlier override
    (seen with Triton 2.51)."""
    config = admin.get_model_config(model, as_json=True)["config"]
    current = config.setdefault("parameters", {})
    for key, value in parameters.items():
        if value is None:
            current.pop(key, None)
        else:
            current[key] = {"string_value": value}
    admin.load_model(model, config=json.dumps(config))


def break_in_process_fallback(admin) -> None:
    """``fraud_scoring``'s in-process fallback pointed at an artefact that does not load
    (as after a bad rollout): every fallback call fails. :func:`restore_in_process_fallback`
    undoes it."""
    override_parameters(admin, "fraud_scoring", FALLBACK_ONNX=BROKEN_FALLBACK_ONNX)


def restore_in_process_fallback(admin) -> None:
    override_parameters(admin, "fraud_scoring", FALLBACK_ONNX=None)


def _fallback_fails_too(system: System) -> None:
    _stand_in(system, "fraud_primary", "error")
    _stand_in(system, "fraud_fallback", "error")  # callers of the Triton model see it fail too
    admin = system.admin()
    break_in_process_fallback(admin)
    admin.close()


def _fallback_restored(system: System) -> None:
    _reload(system, "fraud_primary", "fraud_fallback")
    admin = system.admin()
    restore_in_process_fallback(admin)
    admin.close()


class RedisSleeper:
    """Keeps Redis busy with back-to-back ``DEBUG SLEEP``: every read waits."""

    def __init__(self, url: str, seconds: float = 0.2) -> None:
        self.url, self.seconds = url, seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=5)
        while not self._stop.is_set():
            client.execute_command("DEBUG", "SLEEP", self.seconds)
            time.sleep(0.005)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Fault:
    name: str
    inject: Callable[[System], None]
    lift: Callable[[System], None]
    #: An instantaneous fault (a kill) is lifted at once: the system must heal itself.
    instantaneous: bool = False


def _faults() -> dict[str, Fault]:
    from client.launcher import warm_up

    state: dict = {}

    def kill_stub(system: System) -> None:
        pids = stub_pids("fraud_primary", system.server.process.pid)
        if not pids:
            raise RuntimeError("no fraud_primary stub process found")
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        state["killed"] = pids

    def redis_down(system: System) -> None:
        system.stop_redis()

    def redis_back(system: System) -> None:
        system.start_redis(system.redis_port)
        # Recovery counts from here; the refill runs beside the load, as a job would.
        state["refill"] = threading.Thread(
            target=lambda: system.refills.append(system.refill()), daemon=True
        )
        state["refill"].start()

    def redis_slow(system: System) -> None:
        state["sleeper"] = RedisSleeper(system.redis_url)
        state["sleeper"].start()

    def restart(system: System) -> None:
        system.stop_server()

    def rolled(system: System) -> None:
        system.start_server()
        warm_up(system.server, requests=50)
        system.load.drain(0, False)  # the first one is back in the pool
        system.load.drain(1, True)  # the temporary one leaves it, finishes, stops
        time.sleep(DRAIN_S)
        system.replica.stop()
        system.replica = None
        system.load.drain(1, False)

    def rolling(system: System) -> None:
        # A rolling restart as a load balancer runs one: the new replica up and warm first,
        # the old one taken out of the pool, its in-flight requests finished, then stopped.
        system.start_replica()
        system.load.drain(0, True)
        time.sleep(DRAIN_S)
        system.stop_server()

    def restarted(system: System) -> None:
        system.start_server()

    return {
        "primary_errors": Fault(
            "primary_errors",
            lambda s: _stand_in(s, "fraud_primary", "error"),
            lambda s: _reload(s, "fraud_primary"),
        ),
        "primary_slow": Fault(
            "primary_slow",
            lambda s: _stand_in(s, "fraud_primary", "slow:250"),
            lambda s: _reload(s, "fraud_primary"),
        ),
        "primary_unloaded": Fault(
            "primary_unloaded",
            lambda s: s.admin().unload_model("fraud_primary"),
            lambda s: _reload(s, "fraud_primary"),
        ),
        "primary_stub_killed": Fault(
            "primary_stub_killed", kill_stub, lambda s: None, instantaneous=True
        ),
        "fallback_fails_too": Fault(
            "fallback_fails_too",
            _fallback_fails_too,
            _fallback_restored,
        ),
        "redis_down": Fault("redis_down", redis_down, redis_back),
        "redis_slow": Fault("redis_slow", redis_slow, lambda s: state["sleeper"].stop()),
        "kafka_down": Fault("kafka_down", lambda s: s.kafka.pause(), lambda s: s.kafka.resume()),
        "server_restart": Fault("server_restart", restart, restarted),
        "rolling_restart": Fault("rolling_restart", rolling, rolled),
    }


# -- load ------------------------------------------------------------------------------


@dataclass
class Outcome:
    transaction_id: str
    arrival_s: float  # since the load started
    attempts: int = 0
    ok: bool = False
    latency_ms: float = float("nan")  # from the scheduled arrival to the answer
    server_ms: float = float("nan")  # inside the BLS (STAGE_US total)
    path: str = ""
    decision: str = ""
    reasons: list[str] = field(default_factory=list)
    error: str = ""  # the last failed attempt's kind (also when a retry then succeeded)


def _error_kind(err: BaseException) -> str:
    if isinstance(err, asyncio.TimeoutError):
        return "timeout"
    text = str(err)
    for kind in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "queue", "not found", "stopping"):
        if kind in text:
            return kind.lower().replace(" ", "_")
    return type(err).__name__


class Load:
    """An open-loop Poisson generator with retries; one :class:`Outcome` per transaction."""

    def __init__(
        self, urls: list[str], rows: list[dict], rate: float, run_id: str, seed: int = 7
    ) -> None:
        # Replicas in order of preference: requests go to the first that is not marked
        # down; one that refuses a connection is marked down for FAILOVER_S.
        self.urls, self.rows, self.rate, self.run_id = urls, rows, rate, run_id
        self.down_until = [0.0] * len(urls)
        self.clients: list = []
        self.requested: list = []  # the outputs asked for, the same for every request
        self.rng = np.random.default_rng(seed)
        self.outcomes: list[Outcome] = []
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.t0 = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def _replica(self) -> int | None:
        now = time.monotonic()
        return next((k for k, t in enumerate(self.down_until) if t <= now), None)

    def drain(self, replica: int, out: bool) -> None:
        """Take a replica out of the pool (no new requests) or put it back (operator)."""
        self.down_until[replica] = float("inf") if out else 0.0

    async def _one(self, outcome: Outcome, row: dict, due: float) -> None:
        from client.scoring import build_inputs

        inputs = build_inputs([{**row, "transaction_id": outcome.transaction_id}])
        requested = self.requested
        backoff = 0.05
        while True:
            outcome.attempts += 1
            replica = self._replica()
            try:
                if replica is None:
                    raise ConnectionError("UNAVAILABLE: every replica is marked down")
                async with self.slots:
                    result = await self._attempt(self.clients[replica], outcome, inputs,
                                                 requested)  # fmt: skip
            except Exception as err:  # retried until the deadline, counted by kind
                outcome.error = _error_kind(err)
                if self.now() - outcome.arrival_s + backoff > RETRY_DEADLINE_S:
                    return
                if replica is not None and outcome.error in ("unavailable", "stopping"):
                    # Connection refused or the server going away: try the next replica
                    # at once (if another is up) and keep this one off for a while.
                    self.down_until[replica] = max(
                        self.down_until[replica], time.monotonic() + FAILOVER_S
                    )
                    if self._replica() is not None:
                        continue
                # Exponential backoff with full jitter: retries after an outage spread out
                # instead of arriving together.
                await asyncio.sleep(self.rng.uniform(0, backoff))
                backoff = min(backoff * 2, 2.0)
                continue
            outcome.ok = True
            outcome.latency_ms = (time.perf_counter() - due) * 1000
            outcome.path = result.as_numpy("PATH")[0, 0].decode()
            outcome.decision = result.as_numpy("DECISION")[0, 0].decode()
            outcome.reasons = json.loads(result.as_numpy("REASONS")[0, 0])
            outcome.server_ms = float(result.as_numpy("STAGE_US")[0, -1]) / 1000
            return

    async def _attempt(self, client, outcome, inputs, requested):
        return await asyncio.wait_for(
            client.infer(
                "fraud_scoring", inputs, outputs=requested,
                request_id=f"{outcome.transaction_id}#{outcome.attempts}",
                client_timeout=ATTEMPT_TIMEOUT_S,
                # Still queued when this attempt gives up: refused, not decided.
                timeout=int(ATTEMPT_TIMEOUT_S * 1e6),
            ),
            ATTEMPT_TIMEOUT_S + 0.5,
        )  # fmt: skip

    async def run(self, until: asyncio.Event) -> None:
        import tritonclient.grpc as grpcclient
        import tritonclient.grpc.aio as grpcaio

        from python_backend.fraud.contract import SCORING

        self.clients = [
            grpcaio.InferenceServerClient(url, channel_args=CHANNEL_ARGS) for url in self.urls
        ]
        self.requested = [grpcclient.InferRequestedOutput(o.name) for o in SCORING.outputs]
        # The outcomes grow to tens of thousands of objects: a full collection would stall
        # the generator for tens of milliseconds, charged to the service. Nothing here makes
        # reference cycles worth collecting during the run.
        gc.disable()
        self.t0 = time.perf_counter()
        tasks = []
        next_due = 0.05
        i = 0
        while not until.is_set():
            delay = next_due - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            outcome = Outcome(f"chaos-{self.run_id}-{i}", next_due)
            self.outcomes.append(outcome)
            row = self.rows[i % len(self.rows)]
            tasks.append(asyncio.create_task(self._one(outcome, row, self.t0 + next_due)))
            i += 1
            next_due += self.rng.exponential(1.0 / self.rate)
            if len(tasks) > 2000:
                tasks = [t for t in tasks if not t.done()]
        await asyncio.gather(*tasks)
        gc.enable()
        for client in self.clients:
            await client.close()


# -- resources -------------------------------------------------------------------------


class ResourceWatch:
    """Samples the server's memory (RSS, with its stubs) and open files once a second."""

    def __init__(self, system: System, t0: Callable[[], float]) -> None:
        self.system, self.now = system, t0
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> dict | None:
        import psutil

        try:
            root = psutil.Process(self.system.server.process.pid)
            processes = [root, *root.children(recursive=True)]
            rss = fds = 0
            for p in processes:
                with contextlib.suppress(psutil.Error):
                    rss += p.memory_info().rss
                    fds += p.num_fds()
        except (psutil.Error, AttributeError):
            return None
        return {"t": round(self.now(), 1), "pid": root.pid, "rss_mb": round(rss / 2**20, 1),
                "fds": fds, "processes": len(processes)}  # fmt: skip

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            sample = self._sample()
            if sample:
                self.samples.append(sample)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def summary(self) -> dict:
        if len(self.samples) < 4:
            return {"samples": len(self.samples)}
        # Growth within the longest-lived server process (a restart starts a new one).
        lives = Counter(s["pid"] for s in self.samples)
        last = [s for s in self.samples if s["pid"] == lives.most_common(1)[0][0]]
        n = max(1, len(last) // 5)
        head, tail = last[:n], last[-n:]
        span_s = max(1.0, last[-1]["t"] - last[0]["t"])
        rss0, rss1 = np.median([s["rss_mb"] for s in head]), np.median([s["rss_mb"] for s in tail])
        fd0, fd1 = np.median([s["fds"] for s in head]), np.median([s["fds"] for s in tail])
        return {
            "samples": len(self.samples),
            "span_s": round(span_s, 1),
            "rss_mb_start": float(rss0),
            "rss_mb_end": float(rss1),
            "rss_mb_max": max(s["rss_mb"] for s in self.samples),
            "rss_growth_mb_per_h": round(float(rss1 - rss0) / span_s * 3600, 1),
            "fds_start": float(fd0),
            "fds_end": float(fd1),
            "fds_max": max(s["fds"] for s in self.samples),
        }


# -- analysis --------------------------------------------------------------------------


def degraded(o: Outcome) -> bool:
    return (not o.ok) or o.path != "primary" or any(is_degraded(r) for r in o.reasons)


def window_stats(outcomes: list[Outcome]) -> dict:
    n = len(outcomes)
    ok = [o for o in outcomes if o.ok]
    lat = np.array([o.latency_ms for o in ok]) if ok else np.zeros(0)
    within = int(np.sum(lat <= BUDGET_MS))
    reasons = Counter(r for o in ok for r in set(o.reasons) if is_degraded(r))
    return {
        "offered": n,
        "decided": len(ok),
        "decided_share": round(len(ok) / n, 5) if n else None,
        "within_budget_share": round(within / n, 5) if n else None,
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
        "max_ms": round(float(lat.max()), 1) if len(lat) else None,
        "retried": sum(1 for o in outcomes if o.attempts > 1),
        "errors": dict(Counter(o.error for o in outcomes if not o.ok)),
        "retried_after": dict(Counter(o.error for o in outcomes if o.ok and o.attempts > 1)),
        "paths": dict(Counter(o.path for o in ok)),
        "degradations": dict(reasons.most_common(8)),
    }


def buckets(outcomes: list[Outcome], edges: np.ndarray, width: float) -> list[list[Outcome]]:
    """The outcomes that arrived in ``[edge, edge + width)``, for each of the ascending
    ``edges``: one sort, then a binary search per edge (a soak has hundreds of thousands)."""
    ordered = sorted(outcomes, key=lambda o: o.arrival_s)
    arrival = np.array([o.arrival_s for o in ordered])
    starts = np.searchsorted(arrival, edges)
    ends = np.searchsorted(arrival, edges + width)
    return [ordered[a:b] for a, b in zip(starts, ends, strict=True)]


def recovery_s(
    outcomes: list[Outcome],
    lifted: float,
    end: float,
    bucket_s: float = 0.5,
    hold: int = 4,
    latency: bool = True,
):
    """Seconds from ``lifted`` to the start of the first run of ``hold`` healthy buckets
    (2 s): nothing degraded and (``latency``) the bucket's p95 within the budget. None: not
    within the watch. (A run, not "healthy to the end": the next fault's injection starts
    right after.) ``latency=False`` is when the decisions came back to the primary path,
    which a machine whose own p95 is near the budget can reach long before the latency."""
    edges = np.arange(lifted, end - bucket_s / 2, bucket_s)
    healthy = []
    for inside in buckets(outcomes, edges, bucket_s):
        lat = [o.latency_ms for o in inside if o.ok]
        good = (
            bool(inside)
            and not any(degraded(o) for o in inside)
            and (not latency or float(np.percentile(lat, 95)) <= BUDGET_MS)
        )
        healthy.append(good)
    for k in range(len(healthy) - hold + 1):
        if all(healthy[k : k + hold]):
            return round(float(edges[k] - lifted), 2)
    return None


def reconcile(outcomes: list[Outcome], records: list[dict]) -> dict:
    """Accepted requests against the decision log."""
    by_tx: dict[str, list[dict]] = {}
    for r in records:
        by_tx.setdefault(r["transaction_id"], []).append(r)
    accepted = {o.transaction_id for o in outcomes if o.ok}
    missing = sorted(accepted - set(by_tx))
    retry_dups = redelivered = unexplained = 0
    for tx_records in by_tx.values():
        if len(tx_records) < 2:
            continue
        decisions = Counter(r["decision_id"] for r in tx_records)
        redelivered += sum(n - 1 for n in decisions.values())
        requests = Counter(r["request_id"] for r in tx_records)
        distinct = len(decisions)
        if distinct > 1 and len(requests) >= distinct:
            retry_dups += distinct - 1  # a retry made a second decision: identified
        elif distinct > 1:
            unexplained += distinct - len(requests)
    answered = {o.transaction_id for o in outcomes if o.ok}
    return {
        "accepted": len(accepted),
        "logged_transactions": len(by_tx),
        "log_records": len(records),
        "missing": len(missing),
        "missing_examples": missing[:5],
        "duplicates_from_retries": retry_dups,
        "duplicates_redelivered": redelivered,
        "duplicates_unexplained": unexplained,
        "logged_not_answered": len(set(by_tx) - answered),
    }


# -- the run ---------------------------------------------------------------------------


@dataclass
class Window:
    fault: str
    injected: float
    lifted: float
    end: float
    error: str = ""


async def _schedule(system, load, timing, names, stop, progress, log) -> list[Window]:
    faults = _faults()
    loop = asyncio.get_running_loop()
    windows = []
    await asyncio.sleep(WARMUP_S + timing.baseline_s)
    cycle_started = load.now()
    while True:
        for name in names:
            fault = faults[name]
            error = ""
            injected = load.now()
            try:
                await loop.run_in_executor(None, fault.inject, system)
                if not fault.instantaneous:
                    await asyncio.sleep(timing.fault_s)
                await loop.run_in_executor(None, fault.lift, system)
            except Exception as err:  # reported, and the run goes on
                error = f"{type(err).__name__}: {err}"
                log(f"chaos: {name}: {error}")
            lifted = load.now()
            await asyncio.sleep(timing.watch_s)
            windows.append(Window(name, injected, lifted, load.now(), error))
            progress(name)
        if load.now() - cycle_started >= timing.soak_s:
            break
    stop.set()
    return windows


def run(
    quick: bool = False,
    scale: str = "small",
    out: Path = REPORTS,
    log: Callable = print,
    repository: Path | None = None,
    data_dir: Path | None = None,
    work: Path = ROOT / "build" / "chaos",
    faults: tuple[str, ...] = FAULTS,
    timing: Timing | None = None,
) -> dict:
    from tqdm import tqdm

    from client.launcher import ensure_models
    from client.local.triton import MODEL_REPOSITORY
    from perf import workload
    from python_backend.fraud.decision_log import read_all

    timing = timing or Timing.make(quick)
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    if repository is None:
        scale = ensure_models(scale, log)
        repository = MODEL_REPOSITORY
        data_dir = ROOT / "build" / "data" / scale
    rows = workload.rows(workload.sample_transactions(data_dir, 2000))
    system = System(work, repository, data_dir, log)
    try:
        system.start()
        urls = [system.server.grpc_url, f"127.0.0.1:{system.replica_ports.grpc}"]
        load = Load(urls, rows, timing.rate, system.run_id)
        system.load = load
        resources = ResourceWatch(system, load.now)
        cycles = 1
        if timing.soak_s:
            per_cycle = len(faults) * (timing.fault_s + timing.watch_s + 3)
            cycles = max(1, int(np.ceil(timing.soak_s / per_cycle)))
        log(
            f"chaos: {timing.rate:.0f} requests/s, {len(faults)} faults x {cycles} cycle(s), "
            f"{timing.fault_s:.0f} s each, watched {timing.watch_s:.0f} s after"
        )
        loop = asyncio.new_event_loop()
        with tqdm(total=len(faults) * cycles, unit="fault", desc="chaos", file=sys.stderr) as bar:

            def progress(name: str) -> None:
                bar.set_postfix_str(name)
                bar.update()

            async def main() -> list[Window]:
                stop = asyncio.Event()
                generator = asyncio.create_task(load.run(stop))
                resources.start()
                try:
                    return await _schedule(system, load, timing, faults, stop, progress, log)
                finally:
                    stop.set()
                    await generator

            windows = loop.run_until_complete(main())
        loop.close()
        resources.stop()
        log("chaos: load stopped; waiting for the decision log and the consumer to drain")
        records = _drain_decisions(system, read_all)
        # The consumer is stopped once the topic has stopped growing and it had time to
        # catch up: then every event on the topic was offered to it.
        events = read_all(system.bootstrap, system.topic, decode=_event_id)
        for _ in range(20):
            time.sleep(1)
            latest = read_all(system.bootstrap, system.topic, decode=_event_id)
            if len(latest) == len(events):
                break
            events = latest
        caught_up = system.wait_caught_up(len(events))
        consumer = system.stop_consumer()
        # At-least-once: what the stopped consumer had not committed, a restarted one reads.
        # A second consumer in the same group drains the rest; the two together must have
        # applied every distinct event once.
        consumer["after_restart"] = system.drain_consumer()
        consumer["committed_before_stop"] = caught_up
        consumer["committed_at_end"] = system.committed()
        reloads = list(system.watchdog.reloads)
    finally:
        system.stop()
    summary = summarize(timing, load, windows, records, consumer, events, resources, reloads,
                        system, scale)  # fmt: skip
    summary["seconds"] = round(time.perf_counter() - started, 1)
    write(summary, load, windows, out)
    log(console(summary))
    log(f"chaos: wrote {out}/chaos.json, chaos.md, chaos_timeline.png in "
        f"{summary['seconds']:.0f} s")  # fmt: skip
    return summary


def _both(consumer: dict, field: str) -> int:
    """A count of the consumer and the one restarted after it, together."""
    return consumer.get(field, 0) + consumer.get("after_restart", {}).get(field, 0)


def _event_id(value: bytes) -> str:
    from python_backend.events import decode

    return decode(value).transaction_id


def _drain_decisions(system: System, read_all) -> list[dict]:
    """Wait until the spool is empty (the server replays it once the broker answers), then
    read the whole log."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not any(system.spool.rglob("*.jsonl*")):
            break
        time.sleep(0.5)
    time.sleep(2)  # what is queued in the producers is delivered within milliseconds
    return [r for r in read_all(system.bootstrap, system.decisions)
            if r["transaction_id"].startswith(f"chaos-{system.run_id}-")]  # fmt: skip


def summarize(timing, load, windows, records, consumer, events, resources, reloads, system,
              scale) -> dict:  # fmt: skip
    outcomes = load.outcomes
    arrival = np.array([o.arrival_s for o in outcomes])
    per_fault = []
    for w in windows:
        inside = [outcomes[i] for i in np.nonzero((arrival >= w.injected) & (arrival < w.end))[0]]
        stats = window_stats(inside)
        stats.update(
            fault=w.fault,
            description=DESCRIPTIONS[w.fault],
            window_s=[round(w.injected, 2), round(w.lifted, 2), round(w.end, 2)],
            held_s=round(w.lifted - w.injected, 1),
            recovery_s=recovery_s(inside, w.lifted, w.end),
            path_recovery_s=recovery_s(inside, w.lifted, w.end, latency=False),
            injection_error=w.error or None,
        )
        if w.fault == "primary_stub_killed":
            stats["watchdog_reloads"] = sum(
                1 for t, _m in reloads if t >= load.t0 + w.injected and t < load.t0 + w.end
            )
        stats["targets_met"] = {
            "decided": (stats["decided_share"] or 0) >= TARGETS["decided"],
            "within_budget": (stats["within_budget_share"] or 0) >= TARGETS["within_budget"],
            "recovery": stats["recovery_s"] is not None
            and stats["recovery_s"] <= TARGETS["recovery_s"],
        }
        per_fault.append(stats)
    first = windows[0].injected if windows else load.now()
    # The first seconds warm the client's channel and the server's instances: not reported.
    baseline = window_stats([o for o in outcomes if WARMUP_S <= o.arrival_s < first])
    log = reconcile(outcomes, records)
    accepted_ids = {o.transaction_id for o in outcomes if o.ok}
    event_ids = Counter(e for e in events if e.startswith(f"chaos-{system.run_id}-"))
    applied = _both(consumer, "applied")
    committed = consumer.get("committed_at_end")
    stream = {
        "published_distinct": len(event_ids),
        "decided_not_published": len(accepted_ids - set(event_ids)),
        "consumer": consumer,
        "events_on_topic": len(events),
        # Every distinct event applied exactly once (by the consumer, or by the one restarted
        # after it for what it had not committed): none lost, none counted twice.
        "applied_equals_distinct": applied == len(set(events)),
        # Lost: committed past, never applied. Lag: not committed yet (still on the topic,
        # not lost: the group reads it when it runs again).
        "lost": None if committed is None else max(0, committed - applied),
        "lag": None if committed is None else len(events) - committed,
    }
    return {
        "scale": scale,
        "timing": asdict(timing),
        "targets": TARGETS,
        "overall": window_stats(outcomes),
        "baseline": baseline,
        "faults": per_fault,
        "decision_log": log,
        "stream": stream,
        "resources": resources.summary(),
        "refill_s": [round(s, 1) for s in system.refills],
        "all_targets_met": all(all(f["targets_met"].values()) for f in per_fault)
        and log["missing"] == 0,
    }


def _recovery(f: dict) -> str:
    """Recovery (latency and paths), then when the paths alone were back, in brackets."""
    if f["fault"] == "baseline":
        return "-"
    full, paths = f["recovery_s"], f.get("path_recovery_s")
    text = "none" if full is None else f"{full:.1f}"
    return f"{text} ({'none' if paths is None else f'{paths:.1f}'})"


def console(summary: dict) -> str:
    lines = [
        f"{'fault':<22}{'offered':>8}{'decided':>9}{'<=95ms':>9}{'p99 ms':>8}"
        f"{'recovery s (paths)':>19}  paths"
    ]
    for f in [{"fault": "baseline", **summary["baseline"], "recovery_s": None}, *summary["faults"]]:
        paths = ", ".join(f"{k} {v}" for k, v in sorted(f["paths"].items()))
        rec = _recovery(f)
        lines.append(
            f"{f['fault']:<22}{f['offered']:>8}{(f['decided_share'] or 0):>9.2%}"
            f"{(f['within_budget_share'] or 0):>9.2%}{(f['p99_ms'] or 0):>8.0f}{rec:>19}  {paths}"
        )
    log = summary["decision_log"]
    lines.append(
        f"decision log: {log['accepted']:,} accepted, {log['missing']} missing, "
        f"{log['duplicates_from_retries']} duplicates from retries, "
        f"{log['duplicates_redelivered']} redelivered, {log['duplicates_unexplained']} unexplained"
    )
    return "\n".join(lines)


def write(summary: dict, load: Load, windows: list[Window], out: Path) -> None:
    (out / "chaos.json").write_text(json.dumps(summary, indent=2))
    (out / "chaos.md").write_text(markdown(summary))
    plot_timeline(load, windows, out / "chaos_timeline.png")
    import pandas as pd

    frame = pd.DataFrame([asdict(o) for o in load.outcomes])
    frame["reasons"] = frame["reasons"].map(",".join)
    frame.to_csv(out / "chaos_requests.csv.gz", index=False)


def markdown(summary: dict) -> str:
    t = summary["timing"]
    lines = [
        "# Chaos run",
        "",
        f"{t['rate']:.0f} requests/s (Poisson, one transaction each), each fault held "
        f"{t['fault_s']:.0f} s, then watched {t['watch_s']:.0f} s. Targets: decided >= 99.9%, "
        "within 95 ms >= 99%, recovery <= 10 s, 0 lost decisions. Shares are of requests "
        "offered from the injection to the end of the watch; latency runs from each "
        "request's scheduled arrival, retries included. Recovery: from the lift to 2 s of "
        "0.5 s buckets with nothing degraded and p95 within the budget; in brackets, nothing "
        "degraded alone (the decisions back on the primary path).",
        "",
        "| fault | offered | decided | within 95 ms | p99 ms | recovery s (paths) | retried "
        "| paths | errors | targets |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for f in [{"fault": "baseline", **summary["baseline"], "recovery_s": None,
               "targets_met": {}}, *summary["faults"]]:  # fmt: skip
        paths = ", ".join(f"{k} {v}" for k, v in sorted(f["paths"].items()))
        errors = ", ".join(f"{k} {v}" for k, v in f["errors"].items()) or "-"
        met = f["targets_met"]
        verdict = "-" if not met else ("met" if all(met.values()) else "missed: " + ", ".join(
            k for k, v in met.items() if not v))  # fmt: skip
        rec = _recovery(f)
        lines.append(
            f"| {f['fault']} | {f['offered']} | {(f['decided_share'] or 0):.2%} "
            f"| {(f['within_budget_share'] or 0):.2%} | {f['p99_ms']} | {rec} | {f['retried']} "
            f"| {paths} | {errors} | {verdict} |"
        )
    log = summary["decision_log"]
    stream = summary["stream"]
    res = summary["resources"]
    lines += [
        "",
        "## Decision log reconciliation",
        "",
        f"- accepted requests: {log['accepted']:,}; logged transactions: "
        f"{log['logged_transactions']:,} ({log['log_records']:,} records)",
        f"- missing: **{log['missing']}**",
        f"- duplicates from client retries (distinct request ids): "
        f"{log['duplicates_from_retries']}; redelivered records (same decision id): "
        f"{log['duplicates_redelivered']}; unexplained: {log['duplicates_unexplained']}",
        f"- decided and logged but never answered to the client: {log['logged_not_answered']}",
        "",
        "## Stream",
        "",
        f"- distinct scored transactions on the topic: {stream['published_distinct']:,}; "
        f"decided but not published: {stream['decided_not_published']}",
        f"- consumer: {stream['consumer']}",
        f"- every distinct event applied exactly once: {stream['applied_equals_distinct']}; "
        f"committed past but never applied (lost): {stream.get('lost')}; not committed when "
        f"stopped (lag, still on the topic): {stream.get('lag')}",
        f"- holes in a partition's offsets (a later record served before an earlier one), "
        f"re-read: {_both(stream['consumer'], 'offset_gaps')}; still missing after the "
        f"wait, accepted: {_both(stream['consumer'], 'offset_gaps_accepted')}",
        "",
        "## Server resources",
        "",
        f"- {res}",
        f"- Redis refills (s): {summary['refill_s']}",
        "",
    ]
    return "\n".join(lines)


def plot_timeline(load: Load, windows: list[Window], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outcomes = load.outcomes
    if not outcomes:
        return
    edges = np.arange(0, max(o.arrival_s for o in outcomes) + 1, 1.0)
    p99, share = [], {p: [] for p in ("primary", "fallback", "rules", "failed")}
    for inside in buckets(outcomes, edges, 1.0):
        lat = [o.latency_ms for o in inside if o.ok]
        p99.append(np.percentile(lat, 99) if lat else np.nan)
        n = max(1, len(inside))
        for p in ("primary", "fallback", "rules"):
            share[p].append(sum(1 for o in inside if o.ok and o.path == p) / n)
        share["failed"].append(sum(1 for o in inside if not o.ok) / n)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(13, 6.5), sharex=True)
    ax1.semilogy(edges, p99, color="black", lw=1, label="p99 latency (1 s buckets)")
    ax1.axhline(BUDGET_MS, color="red", ls="--", lw=1, label="95 ms budget")
    ax1.set_ylabel("ms")
    ax1.legend(loc="upper right", fontsize=8)
    ax2.stackplot(edges, *share.values(), labels=list(share),
                  colors=["#4c72b0", "#f0a030", "#c44e52", "black"])  # fmt: skip
    ax2.set_ylabel("share of requests")
    ax2.set_xlabel("seconds into the run")
    ax2.legend(loc="lower right", fontsize=8)
    for w in windows:
        ax1.axvspan(w.injected, max(w.lifted, w.injected + 0.3), color="gold", alpha=0.3)
        for x in (w.injected, w.lifted):
            ax2.axvline(x, color="black", lw=0.6, ls=":")
        ax1.text(w.injected, ax1.get_ylim()[1], w.fault, rotation=60, fontsize=7, va="top")
    fig.suptitle("Chaos run: latency and the path taken, faults shaded")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
