"""Start and stop a real Triton Inference Server on loopback.

On CPU machines the server is the ``tritonserver`` binary of the ``nvidia-pytriton`` wheel,
installed in the serving environment ``.venv-serving`` (numpy<2, ONNX Runtime, no Feast).
Its Python backend runs every Python model with the interpreter first on ``PATH``, so the
server starts with ``.venv-serving/bin`` first. Where the NGC container's ``tritonserver``
is on ``PATH`` and ``TRITON_SERVER`` points at it, that one is used instead.

Every port binds 127.0.0.1; explicit model control is on, so tests and operators can load
and unload models through the API, with the operator's key (``client.local.operator``):
a plain caller gets inference, metadata and health only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from client.local import operator
from python_backend import settings, tracing
from python_backend.fraud import deadline
from python_backend.paths import MODEL_REPOSITORY, ROOT, SERVING_VENV, TRITON_STATE


@dataclass(frozen=True)
class Ports:
    grpc: int = 8001
    http: int = 8000
    metrics: int = 8002

    @classmethod
    def from_env(cls) -> Ports:
        return cls(
            settings.TRITON_GRPC_PORT.get_int(),
            settings.TRITON_HTTP_PORT.get_int(),
            settings.TRITON_METRICS_PORT.get_int(),
        )

    @classmethod
    def free(cls) -> Ports:
        from client.local.services import free_port

        return cls(free_port(), free_port(), free_port())


def _pytriton_dir() -> Path:
    found = sorted(SERVING_VENV.glob("lib/python3*/site-packages/pytriton/tritonserver"))
    if not found:
        raise FileNotFoundError(
            f"no Triton server in {SERVING_VENV}: run `make setup` (it installs the serving "
            "environment with nvidia-pytriton)"
        )
    return found[0]


def backend_directory(build_dir: Path = TRITON_STATE) -> Path:
    """A backend directory whose ``python/`` holds the backend library, its utilities and
    the stub for this Python version (the wheel ships one stub per version)."""
    tritonserver = _pytriton_dir()
    python_dir = build_dir / "backends" / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    stub = next((tritonserver / "python_backend_stubs").glob("3.11/triton_python_backend_stub"))
    for source in (
        tritonserver / "backends" / "python" / "libtriton_python.so",
        tritonserver / "backends" / "python" / "triton_python_backend_utils.py",
        stub,
    ):
        target = python_dir / source.name
        if not target.exists() or target.stat().st_size != source.stat().st_size:
            shutil.copy2(source, target)
    return build_dir / "backends"


FRAUD_MODELS = ("fraud_primary", "fraud_fallback", "fraud_scoring")
IMAGE_MODELS = ("image_preprocess", "image_classifier", "image_postprocess", "image_pipeline")
RECOMMEND_MODELS = ("recommend_scorer", "recommend_top5")


def served_models(repository: Path) -> list[str]:
    """What a server on ``repository`` loads: every pipeline that is built there (its models
    have a ``config.pbtxt``). Others are left out rather than failing the start."""
    models = []
    for pipeline in (FRAUD_MODELS, IMAGE_MODELS, RECOMMEND_MODELS):
        if all((repository / m / "config.pbtxt").exists() for m in pipeline):
            models += pipeline
    return models


#: How long a stopping server may take: requests in flight, then the models' unload (the
#: decision log's drain at shutdown).
EXIT_TIMEOUT_S = 15


def server_command(
    repository: Path,
    ports: Ports,
    models: list[str] | None,
    extra_repositories=(),
    trace_url: str | None = None,
) -> list[str]:
    """``trace_url``: where Triton exports the traces clients ask for (OpenTelemetry mode at
    rate 0, ``python_backend.tracing``); None: no tracing."""
    binary = settings.TRITON_SERVER.get() or str(_pytriton_dir() / "bin" / "tritonserver")
    cmd = [
        binary,
        f"--model-repository={repository}",
        *(f"--model-repository={r}" for r in extra_repositories),
        f"--backend-directory={backend_directory()}",
        "--model-control-mode=explicit",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={ports.grpc}",
        "--http-address=127.0.0.1",
        f"--http-port={ports.http}",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={ports.metrics}",
        "--log-verbose=0",
        # At SIGTERM Triton finishes the requests it holds, then unloads the models: the
        # BLS's finalize hands its decision spool to the broker (DECISION_DRAIN_S, 10 s at
        # most) before the server exits. Stop's grace (20 s) covers it.
        f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
        # The edge's arrival stamp and expected timeout reach the BLS as request parameters.
        f"--grpc-header-forward-pattern={deadline.FORWARD_PATTERN}",
    ]
    if models is None:
        models = served_models(repository)
    cmd += [f"--load-model={m}" for m in models]
    # The callers' API only, unless the operator's key comes with the request.
    cmd += operator.restricted_arguments()
    return cmd + tracing.triton_trace_arguments(trace_url)


def server_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{SERVING_VENV / 'bin'}:{env.get('PATH', '')}"
    libs = next(SERVING_VENV.glob("lib/python3*/site-packages/nvidia_pytriton.libs"), None)
    if libs is not None:  # the Python backend stub links the bundled libcudart
        env["LD_LIBRARY_PATH"] = f"{libs}:{env.get('LD_LIBRARY_PATH', '')}"
    env.pop("PYTHONPATH", None)
    env.update(extra or {})
    return env


def wait_ready(http_port: int, process: subprocess.Popen | None, timeout_s: float) -> None:
    url = f"http://127.0.0.1:{http_port}/v2/health/ready"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"tritonserver exited with code {process.returncode} at start; see its log"
            )
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"Triton was not ready on 127.0.0.1:{http_port} within {timeout_s} s")


@dataclass
class Server:
    ports: Ports
    process: subprocess.Popen
    log_path: Path
    #: The stub watchdog (``client.local.watchdog``) started beside the server, if any.
    watchdog: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    def stop(self) -> None:
        from client.local.services import stop_process

        if self.watchdog is not None:
            stop_process(self.watchdog, grace_s=5)
        stop_process(self.process, grace_s=20)
        # A Python stub still finalizing when tritonserver went (SIGKILL after the grace)
        # outlives it, reparented to init: seen after a chaos run, still using CPU an hour
        # later. The server leads its own session; whatever is left of it goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


def start_watchdog(
    grpc_url: str, log_path: Path, metrics_port: int | None = None
) -> subprocess.Popen:
    """``python -m client watchdog`` against ``grpc_url``, in its own session (it outlives a
    ``make serve`` that returns), logging to ``log_path``; its Prometheus metrics on
    ``metrics_port`` if given."""
    import sys

    metrics = ["--metrics-port", str(metrics_port)] if metrics_port else []
    from client.local.services import child_environment

    env = child_environment({"PYTHONUNBUFFERED": "1"})
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "client", "--url", grpc_url, "watchdog", *metrics],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def start(
    repository: Path = MODEL_REPOSITORY,
    ports: Ports | None = None,
    models: list[str] | None = None,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 120,
    extra_repositories: tuple[Path, ...] = (),
    watchdog: bool = False,
    watchdog_metrics_port: int | None = None,
    nice: int = 0,
) -> Server:
    """Start the server and wait until it is ready; raise with the log's tail if not. With
    ``watchdog``, the stub watchdog runs beside it (and stops with it), so a Python model
    whose stub died is reloaded (``watchdog.log`` beside the server's log)."""
    ports = ports or Ports.from_env()
    log_path = log_path or TRITON_STATE / "server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    environment = server_environment(env)
    command = server_command(
        repository, ports, models, extra_repositories, tracing.endpoint(environment)
    )
    if nice:
        # A replica booting beside one that serves (``client.mesh``) starts at a lower CPU
        # priority; its stubs inherit it; the mesh raises it again once the replica is warm.
        # nice(1) execs the server (same pid); never preexec_fn: Python code between fork
        # and exec in a process with gRPC threads crashed the child (SIGSEGV, seen here).
        command = ["nice", "-n", str(nice), *command]
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=environment,
        start_new_session=True,
    )
    server = Server(ports, process, log_path)
    try:
        wait_ready(ports.http, process, timeout_s)
    except Exception as err:
        server.stop()
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{err}\n--- {log_path} ---\n{tail}") from None
    if watchdog:
        server.watchdog = start_watchdog(
            server.grpc_url, log_path.with_name("watchdog.log"), watchdog_metrics_port
        )
    return server


@contextlib.contextmanager
def running(**kwargs) -> Iterator[Server]:
    server = start(**kwargs)
    try:
        yield server
    finally:
        server.stop()
