"""N Triton replicas behind one Envoy, and the operator's moves on them: drain (no new
requests, those in flight finished), stop, crash, start, warm, readmit.

A replica is admitted only once it is warm and its ``fraud_scoring`` is ready; Envoy's
active gRPC health checks then keep it in (or take it out when it stops answering), and
outlier detection ejects one that keeps failing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from client.local.triton import Ports, Server
from client.mesh import config as mesh_config
from client.mesh import envoy as envoy_process
from client.mesh.priority import may_run_at, renice_tree
from client.mesh.rotation import DRAINING, HEALTHY, Rotation, process_nice

#: Not in the endpoint file at all (stopped): when it is admitted again it is a new host to
#: Envoy, which ramps its share up over the slow-start window instead of sending it a
#: full share at once.
REMOVED = "REMOVED"


def replica_ports(index: int, base: int = 8100) -> Ports:
    """``make serve REPLICAS=N``'s replica ``index``: HTTP base+10i, gRPC +1, metrics +2."""
    return Ports(grpc=base + 10 * index + 1, http=base + 10 * index, metrics=base + 10 * index + 2)


@dataclass
class Replica:
    index: int
    ports: Ports
    server: Server | None = None
    status: str = DRAINING  # not admitted until it is warm
    #: The niceness to start it at (``start(..., nice=replica.nice)``): set by the mesh.
    nice: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"


#: A replica starts at this niceness while another one serves: its boot (model loads, stub
#: imports, warm-up) takes the CPU the serving one leaves, not the CPU decisions need. On two
#: cores a boot at full priority put 5-10% of the live replica's decisions over budget.
BOOT_NICE = 10


def can_renice() -> bool:
    """Whether a niced replica can be given its priority back (niceness 0)."""
    return may_run_at(0)


def renice(server: Server, niceness: int) -> None:
    """``niceness`` for the server and every process under it (its Python stubs)."""
    renice_tree(server.process.pid, niceness)


class Mesh:
    """Replicas started by ``start_replica(replica)`` (a callable returning a ready
    :class:`Server`), Envoy in front on ``config.listen_port``."""

    def __init__(
        self,
        work: Path,
        config: mesh_config.MeshConfig,
        ports: list[Ports],
        start_replica: Callable[[Replica], Server],
        warm: Callable[[Server], None] | None = None,
        log=print,
    ) -> None:
        self.work, self.log = work, log
        self.eds = work / "endpoints" / "eds.yaml"
        self.config = _with_endpoints(config, self.eds)
        self.replicas = [Replica(i, p) for i, p in enumerate(ports)]
        self._start_replica, self._warm = start_replica, warm
        self.envoy: envoy_process.Envoy | None = None
        #: Where the replicas' statuses live (shared with the rollout tool and watchdogs).
        self.rotation = Rotation(
            self.eds, f"http://{config.admin_address}:{config.admin_port}", log=log
        )

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.config.listen_port}"

    # -- the endpoint file --------------------------------------------------------------

    def _publish(self, replica: Replica) -> None:
        self.rotation.set(replica.address, None if replica.status == REMOVED else replica.status)

    def _wait(self, replica: Replica, healthy: bool, timeout_s: float = 30) -> None:
        if self.envoy.process.poll() is not None:
            raise RuntimeError(f"envoy exited; see {self.envoy.log_path}")
        self.rotation.wait(replica.address, healthy, timeout_s)

    # -- the operator's moves -----------------------------------------------------------

    def start(self) -> Mesh:
        self.eds.parent.mkdir(parents=True, exist_ok=True)
        for replica in self.replicas:
            self._publish(replica)  # every replica DRAINING: Envoy sends nothing yet
        self.envoy = envoy_process.start(self.config, self.work)
        for replica in self.replicas:
            self.boot(replica)
        return self

    def boot(self, replica: Replica) -> None:
        """Start, warm and admit ``replica``."""
        started = time.perf_counter()
        serving = any(r.server is not None and r is not replica for r in self.replicas)
        replica.nice = BOOT_NICE if serving and can_renice() else 0
        replica.server = self._start_replica(replica)
        self.warm(replica)
        if replica.nice:
            renice(replica.server, 0)
            replica.nice = 0
        self.admit(replica)
        self.log(
            f"mesh: replica {replica.index} (gRPC {replica.address}) admitted "
            f"{time.perf_counter() - started:.1f} s after its start"
        )

    def admit(self, replica: Replica) -> None:
        replica.status = HEALTHY
        self.rotation.admit(replica.address)

    def drain(self, replica: Replica, timeout_s: float = 10) -> float:
        """Out of rotation (DRAINING: no new requests), then until its requests in flight
        are answered; returns the seconds it took."""
        replica.status = DRAINING
        return self.rotation.drain(replica.address, timeout_s)

    def warm(self, replica: Replica) -> None:
        if self._warm is not None and replica.server is not None:
            self._warm(replica.server)

    def reloading(self, replica: Replica):
        """Around a model reload on ``replica`` (``Rotation.quiesced``): drained first, warmed
        and readmitted after, unless no other replica serves."""
        server = replica.server
        nice = process_nice(server.process.pid) if server is not None else None
        return self.rotation.quiesced(replica.address, lambda: self.warm(replica), nice)

    def stop_replica(self, replica: Replica) -> None:
        """SIGTERM (drain first); its shutdown runs at the lowest priority, as it serves no
        one."""
        if replica.server is not None:
            renice(replica.server, 19)
            replica.server.stop()
            replica.server = None
        replica.status = REMOVED
        self._publish(replica)

    def crash(self, replica: Replica) -> None:
        """SIGKILL to the whole server (tritonserver and its Python stubs), no drain: what
        Envoy's health checks and retries are for."""
        server = replica.server
        if server is None:
            return
        if server.watchdog is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.watchdog.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()

    def restart(self, replica: Replica) -> dict[str, float]:
        """Drain, stop, start, warm, readmit; the seconds of each step."""
        started = time.perf_counter()
        drained = self.drain(replica)
        self.stop_replica(replica)
        stopped = time.perf_counter()
        self.boot(replica)
        return {
            "drain_s": round(drained, 2),
            "stop_s": round(stopped - started - drained, 2),
            "start_to_admitted_s": round(time.perf_counter() - stopped, 2),
        }

    def stop(self) -> None:
        for replica in self.replicas:
            with contextlib.suppress(Exception):
                self.stop_replica(replica)
        if self.envoy is not None:
            self.envoy.stop()


def _with_endpoints(config: mesh_config.MeshConfig, eds: Path) -> mesh_config.MeshConfig:
    from dataclasses import replace

    return replace(config, endpoints=mesh_config.Endpoints(file=str(eds)))
