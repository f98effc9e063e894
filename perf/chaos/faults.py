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

from client.local import operator
from client.local.operator import override_parameters, restore_primary, take_primary_away
from client.local.services import stub_pids
from perf.chaos.artefacts import faulty_primary
from perf.chaos.config import FAULTY_MODEL
from perf.chaos.system import System

#: Faults with nothing to act on when the primary runs in ``fraud_scoring``'s process, and why.
NOT_IN_PROCESS = {
    "primary_stub_killed": "the primary runs in fraud_scoring's process: it has no stub of its own",
}


def primary_in_process(system: System) -> bool:
    """Whether the system's primary runs in ``fraud_scoring``'s process (replica 0's config)."""
    _replica, admin = system.admins_by_replica()[0]
    try:
        return operator.primary_in_process(admin)
    finally:
        admin.close()


def _on_every_replica(system: System, *acts: Callable) -> None:
    """Each ``act(admin)`` (model loads and unloads) on every running replica, as a bad
    deploy reaches all of them: one replica at a time, out of Envoy's rotation while its
    models reload (``client.mesh.rotation``: Triton 2.51 crashed here reloading a model
    with requests to it in flight), warmed and readmitted after."""
    import subprocess

    for replica, admin in system.admins_by_replica():
        try:
            with system.mesh.reloading(replica):
                for act in acts:
                    act(admin)
        except Exception:
            # A replica that died by itself meanwhile (its server gone) has nothing left to
            # inject into; System.heal boots it before the next fault. Anything else raises.
            try:
                replica.server.process.wait(2)
            except subprocess.TimeoutExpired:
                raise
            system.log(f"chaos: replica {replica.index} died during the injection")
        finally:
            admin.close()


def _stand_in(model: str, fault: str) -> Callable:
    """``model`` replaced by the faulty stand-in (``FAULTY_MODEL``) doing ``fault``."""

    def act(admin) -> None:
        config = admin.get_model_config(model, as_json=True)["config"]
        config["parameters"] = {"FAULT": {"string_value": fault}}
        config.pop("model_warmup", None)  # a failing stand-in would fail its own warm-up
        admin.load_model(
            model, config=json.dumps(config), files={"file:1/model.py": FAULTY_MODEL.read_bytes()}
        )

    return act


def _primary_fault(system: System, stand_in: Callable, kind: str) -> Callable:
    """The primary's fault on a replica: ``stand_in(admin)`` on Triton's ``fraud_primary``, or,
    when the primary runs in ``fraud_scoring``'s process, its ``PRIMARY_DIR`` pointed at a
    faulty artefact of this ``kind`` (``perf.chaos.artefacts``), as a bad deploy would leave."""

    def act(admin) -> None:
        if operator.primary_in_process(admin):
            take_primary_away(admin, str(faulty_primary(kind, system.work / "artefacts")))
        else:
            stand_in(admin)

    return act


def _reloaded(*models: str) -> Callable:
    def act(admin) -> None:
        for model in models:
            admin.load_model(model)

    return act


#: Where a broken in-process fallback is pointed: no such file, as after a bad rollout.
BROKEN_FALLBACK_ONNX = "/nonexistent/fraud_fallback.onnx"


def break_in_process_fallback(admin) -> None:
    """``fraud_scoring``'s in-process fallback pointed at an artefact that does not load
    (as after a bad rollout): every fallback call fails. :func:`restore_in_process_fallback`
    undoes it."""
    override_parameters(admin, "fraud_scoring", FALLBACK_ONNX=BROKEN_FALLBACK_ONNX)


def restore_in_process_fallback(admin) -> None:
    override_parameters(admin, "fraud_scoring", FALLBACK_ONNX=None)


def _fallback_fails_too(system: System) -> None:
    _on_every_replica(
        system,
        _primary_fault(system, _stand_in("fraud_primary", "error"), "error"),
        _stand_in("fraud_fallback", "error"),  # callers of the Triton model see it fail too
        break_in_process_fallback,
    )


def _fallback_restored(system: System) -> None:
    _on_every_replica(
        system, restore_primary, _reloaded("fraud_fallback"), restore_in_process_fallback
    )


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
        state["refill"] = refill_beside_the_load(system)

    def refill_beside_the_load(system: System) -> threading.Thread:
        job = threading.Thread(target=lambda: system.refills.append(system.refill()), daemon=True)
        job.start()
        return job

    def batch_job(system: System) -> None:
        state["job"] = refill_beside_the_load(system)

    def redis_slow(system: System) -> None:
        state["sleeper"] = RedisSleeper(system.redis_url)
        state["sleeper"].start()

    def pid(replica) -> int | None:
        return replica.server.process.pid if replica.server else None

    def stop_first(system: System) -> None:
        # What an orchestrator does to a pod it replaces: out of Envoy's rotation, in-flight
        # requests finished, then SIGTERM. The other replica carries the whole load meanwhile.
        mesh = system.mesh
        replica = mesh.replicas[0]
        state["restart"] = {"fault": "server_restart", "replica": 0, "pid": pid(replica)}
        state["started"] = time.perf_counter()
        state["restart"]["drain_s"] = round(mesh.drain(replica), 2)
        mesh.stop_replica(replica)

    def start_first(system: System) -> None:
        replica = system.mesh.replicas[0]
        stopped = time.perf_counter()
        system.mesh.boot(replica)
        record = state.pop("restart")
        record["start_to_admitted_s"] = round(time.perf_counter() - stopped, 2)
        record["total_s"] = round(time.perf_counter() - state.pop("started"), 2)
        system.restarts.append({**record, "pids": [record.pop("pid"), pid(replica)]})

    def rolling(system: System) -> None:
        # Each replica in turn: drained, stopped, started, warmed, readmitted; the next one
        # only once the last is back.
        for replica in system.mesh.replicas:
            before = pid(replica)
            steps = system.mesh.restart(replica)
            system.restarts.append(
                {
                    "fault": "rolling_restart",
                    "replica": replica.index,
                    **steps,
                    "pids": [before, pid(replica)],
                }
            )

    def crash_last(system: System) -> None:
        # kill -9 of a whole server, no drain: Envoy finds out from failed requests (retried
        # on the other replica) and its health checks.
        mesh = system.mesh
        replica = mesh.replicas[-1]
        state["crash"] = {"fault": "replica_crash", "replica": replica.index, "pid": pid(replica)}
        killed = time.perf_counter()
        mesh.crash(replica)
        mesh.envoy.wait_hosts(
            lambda hosts: hosts.get(replica.address, {}).get("health_flags", "") != "healthy",
            10,
            "the crashed replica out of rotation",
        )
        state["crash"]["out_of_rotation_s"] = round(time.perf_counter() - killed, 2)

    def restart_crashed(system: System) -> None:
        replica = system.mesh.replicas[-1]
        system.mesh.stop_replica(replica)  # reaps what is left of it
        started = time.perf_counter()
        system.mesh.boot(replica)
        record = state.pop("crash")
        record["start_to_admitted_s"] = round(time.perf_counter() - started, 2)
        system.restarts.append({**record, "pids": [record.pop("pid"), pid(replica)]})

    return {
        "primary_errors": Fault(
            "primary_errors",
            lambda s: _on_every_replica(
                s, _primary_fault(s, _stand_in("fraud_primary", "error"), "error")
            ),
            lambda s: _on_every_replica(s, restore_primary),
        ),
        "primary_slow": Fault(
            "primary_slow",
            lambda s: _on_every_replica(
                s, _primary_fault(s, _stand_in("fraud_primary", "slow:250"), "slow")
            ),
            lambda s: _on_every_replica(s, restore_primary),
        ),
        "primary_unloaded": Fault(
            "primary_unloaded",
            lambda s: _on_every_replica(
                s, _primary_fault(s, lambda admin: admin.unload_model("fraud_primary"), "missing")
            ),
            lambda s: _on_every_replica(s, restore_primary),
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
        "server_restart": Fault("server_restart", stop_first, start_first),
        "rolling_restart": Fault("rolling_restart", rolling, lambda s: None, instantaneous=True),
        "replica_crash": Fault("replica_crash", crash_last, restart_crashed),
        # Lifted when the job is done: the fault's window covers all of it.
        "batch_job": Fault("batch_job", batch_job, lambda s: state.pop("job").join()),
    }
