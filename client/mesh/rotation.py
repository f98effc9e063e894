"""A replica's place in Envoy's rotation, shared by every process that moves replicas.

Triton 2.51 crashes (SIGSEGV) when a model is reloaded while requests to it are in flight:
seen in two CI runs of the chaos test and in a full ``make chaos``, and every rollout step
reloads ``fraud_scoring``. So each operator's move that reloads a model on a replica (a
rollout step, a chaos fault injected or lifted, the stub watchdog's reload) goes through
:meth:`Rotation.quiesced`: the replica out of rotation (DRAINING: Envoy sends it nothing
new), its requests in flight answered, the reload, a warm-up on its own port, back in. One
replica at a time, and never the last one serving: with no other replica to take the
traffic (one server, or the others down), the reload happens in place, and is logged so.

The rotation is the endpoint file Envoy watches (EDS). The mesh that started the replicas,
the rollout tool and the watchdogs all change it, so each change is a read-modify-write
under a lock beside the file; a replica absent from the file is stopped (REMOVED).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from client.mesh import config as mesh_config

HEALTHY, DRAINING = "HEALTHY", "DRAINING"
#: A replica out of rotation reloads at this niceness (as one booting beside a serving one).
RELOAD_NICE = 10
#: How long a reload waits for another listed replica to be healthy to Envoy (its health
#: check lagging, Envoy's admin busy) rather than reload the only serving one in place.
OTHER_REPLICA_WAIT_S = 15.0


def parse_clusters(text: str) -> dict[str, dict[str, str]]:
    """Per replica (``host:port``) what Envoy's admin ``/clusters`` says of it: health
    flags, active requests, requests total, ..."""
    hosts: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == mesh_config.CLUSTER and ":" in parts[1]:
            hosts.setdefault(parts[1], {})[parts[2]] = parts[3]
    return hosts


def write_endpoints(path: Path, replicas: list[tuple[str, int, str]]) -> None:
    """Replace the EDS file Envoy watches (a rename into the watched folder: Envoy reads it
    whole, never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(mesh_config.load_assignment(replicas), sort_keys=False))
    tmp.replace(path)


@dataclass
class Rotation:
    """The replicas in ``eds`` (the file Envoy watches) as Envoy's admin at ``admin_url``
    sees them."""

    eds: Path
    admin_url: str
    log: Callable[[str], None] = print

    @classmethod
    def from_state(cls, state_path: Path, log=print) -> Rotation | None:
        """The rotation of the mesh described by ``state_path`` (``make serve REPLICAS=N``'s
        ``mesh.json``), or None when there is none."""
        if not state_path.exists():
            return None
        state = json.loads(state_path.read_text())
        if "eds" not in state:
            return None
        return cls(Path(state["eds"]), f"http://127.0.0.1:{state['envoy_admin_port']}", log)

    # -- the file ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.eds.parent.mkdir(parents=True, exist_ok=True)
        with self.eds.with_name(f".{self.eds.name}.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _read(self) -> dict[str, str]:
        if not self.eds.exists():
            return {}
        loaded = yaml.safe_load(self.eds.read_text()) or {}
        out = {}
        for resource in loaded.get("resources", []):
            for group in resource.get("endpoints", []):
                for lb in group.get("lb_endpoints", []):
                    socket = lb["endpoint"]["address"]["socket_address"]
                    out[f"{socket['address']}:{socket['port_value']}"] = lb["health_status"]
        return out

    def statuses(self) -> dict[str, str]:
        """Each replica's status in the file (``host:port`` -> HEALTHY or DRAINING)."""
        with self._locked():
            return self._read()

    def set(self, address: str, status: str | None) -> None:
        """``address``'s status (None: out of the file, a stopped replica)."""
        with self._locked():
            current = self._read()
            if status is None:
                current.pop(address, None)
            else:
                current[address] = status
            write_endpoints(
                self.eds,
                [(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1]), s) for a, s in current.items()],
            )

    # -- what Envoy sees -------------------------------------------------------------

    def hosts(self) -> dict[str, dict[str, str]]:
        with urllib.request.urlopen(f"{self.admin_url}/clusters", timeout=5) as response:
            return parse_clusters(response.read().decode())

    def wait(self, address: str, healthy: bool, timeout_s: float = 30) -> None:
        """Until Envoy sees ``address`` as healthy (or as not healthy)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(OSError):
                flags = self.hosts().get(address, {}).get("health_flags", "")
                if (flags == "healthy") == healthy:
                    return
            if time.monotonic() > deadline:
                state = "admitted" if healthy else "out of rotation"
                raise TimeoutError(f"envoy: replica {address} not {state} within {timeout_s} s")
            time.sleep(0.05)

    def serving(self) -> set[str]:
        """Replicas that take traffic now: HEALTHY in the file and to Envoy."""
        listed = {a for a, s in self.statuses().items() if s == HEALTHY}
        with contextlib.suppress(OSError):
            return {a for a, h in self.hosts().items() if h.get("health_flags") == "healthy"} & (
                listed
            )
        return set()

    def _others_serving(self, address: str, timeout_s: float = OTHER_REPLICA_WAIT_S) -> set[str]:
        """The other replicas that serve; when some are listed HEALTHY but Envoy does not
        (yet) say so, or its admin did not answer, wait up to ``timeout_s`` for one."""
        listed = {a for a, s in self.statuses().items() if s == HEALTHY} - {address}
        deadline = time.monotonic() + timeout_s
        while True:
            serving = self.serving() - {address}
            if serving or not listed or time.monotonic() > deadline:
                return serving
            time.sleep(0.1)

    # -- the moves -------------------------------------------------------------------

    def drain(self, address: str, timeout_s: float = 10) -> float:
        """Out of rotation (no new requests), then until its requests in flight are
        answered; returns the seconds it took."""
        started = time.perf_counter()
        self.set(address, DRAINING)
        self.wait(address, healthy=False)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if self.hosts().get(address, {}).get("rq_active", "0") == "0":
                    break
            time.sleep(0.02)
        return time.perf_counter() - started

    def admit(self, address: str, timeout_s: float = 30) -> None:
        self.set(address, HEALTHY)
        self.wait(address, healthy=True, timeout_s=timeout_s)

    @contextlib.contextmanager
    def quiesced(
        self,
        address: str,
        warm: Callable[[], None] | None = None,
        nice: Callable[[int], None] | None = None,
    ) -> Iterator[dict]:
        """Around a reload on ``address``: out of rotation and drained first, warmed on its
        own port and readmitted after, unless no other replica serves (then in place).
        ``nice(n)`` sets the replica's CPU priority: while it reloads and warms it runs at
        ``RELOAD_NICE``, so the replica carrying the traffic keeps the CPU (on two cores a
        reload's stub start-up is the cost). The yielded dict gets the seconds of each step
        (``drain_s``, ``reload_s``, ``warm_s``, ``admit_s``) and ``in_place``."""
        steps: dict = {"in_place": not self._others_serving(address)}
        if steps["in_place"]:
            self.log(f"mesh: no other replica serves; reloading {address} in place")
            started = time.perf_counter()
            yield steps
            steps["reload_s"] = round(time.perf_counter() - started, 2)
            return
        steps["drain_s"] = round(self.drain(address), 2)
        started = time.perf_counter()
        if nice is not None:
            nice(RELOAD_NICE)
        try:
            yield steps
            steps["reload_s"] = round(time.perf_counter() - started, 2)
            started = time.perf_counter()
            if warm is not None:
                warm()
            steps["warm_s"] = round(time.perf_counter() - started, 2)
        except BaseException:
            # Back in the file without waiting: Envoy's health checks judge a replica that
            # failed its reload (or died in it); the error is the caller's to handle.
            if nice is not None:
                nice(0)
            self.set(address, HEALTHY)
            raise
        if nice is not None:
            nice(0)
        started = time.perf_counter()
        self.admit(address)
        steps["admit_s"] = round(time.perf_counter() - started, 2)


def reloading(
    rotation: Rotation | None,
    address: str,
    warm: Callable[[], None] | None = None,
    nice: Callable[[int], None] | None = None,
):
    """:meth:`Rotation.quiesced` where there is a mesh; without one (a single server, where
    nothing can take its traffic) the reload happens in place."""
    if rotation is None:
        return contextlib.nullcontext({"in_place": True})
    return rotation.quiesced(address, warm, nice)


def process_nice(pid: int) -> Callable[[int], None] | None:
    """A ``nice`` for :meth:`Rotation.quiesced` that sets the niceness of process ``pid``
    and every process under it (a replica's server and its Python stubs), or None where
    this process may not give a priority back (an unprivileged operator)."""
    from client.mesh.priority import may_run_at, renice_tree

    if not may_run_at(0):
        return None
    return lambda niceness: renice_tree(pid, niceness)
