"""The faults, each an operator's action on the running system (model-control API, signals,
parameters): injected for a while, then lifted."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from client.local.services import stub_pids
from perf.chaos.config import DRAIN_S, FAULTY_MODEL
from perf.chaos.system import System


def _stand_in(system: System, model: str, fault: str) -> None:
    admin = system.admin()
    config = admin.get_model_config(model, as_json=True)["config"]
    config["parameters"] = {"FAULT": {"string_value": fault}}
    config.pop("model_warmup", None)  # a failing stand-in would fail its own warm-up
    admin.load_model(
        model, config=json.dumps(config), files={"file:1/model.py": FAULTY_MODEL.read_bytes()}
    )
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
