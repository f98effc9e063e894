"""What ``make serve``, ``make stop`` and ``make demo`` do: build what is missing on the
embedded defaults, fill the online store, start Triton in the background, stop it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

from client.local.operator import admin_client
from client.local.triton import (
    FRAUD_MODELS,
    IMAGE_MODELS,
    MODEL_REPOSITORY,
    Ports,
    Server,
    start,
)
from python_backend.paths import DATA, FEATURE_REPO_BUILD, MESH_STATE, TRITON_STATE
from python_backend.settings import (
    ENVOY_ADMIN_PORT,
    KAFKA_BOOTSTRAP,
    REPLICA_BASE_PORT,
    WATCHDOG_METRICS_PORT,
)

PID_FILE = TRITON_STATE / "server.pid"


def built_scale() -> str | None:
    """The scale of the models in the repository, or None when nothing is built."""
    metadata = MODEL_REPOSITORY / "fraud_primary" / "1" / "metadata.json"
    needed = [
        metadata,
        MODEL_REPOSITORY / "fraud_scoring" / "1" / "decision_policy.json",
        MODEL_REPOSITORY / "fraud_scoring" / "config.pbtxt",
    ]
    if not all(p.exists() for p in needed):
        return None
    return json.loads(metadata.read_text()).get("scale")


def ensure_models(scale: str, log=print) -> str:
    """Build the models at ``scale`` unless some scale is already built; return the scale."""
    existing = built_scale()
    if existing:
        from build_engines.triton_config import refresh_configs

        refresh_configs(MODEL_REPOSITORY)
        log(f"models: built ({existing} scale), skipping `make engines`")
        return existing
    log(f"models: none built yet, building the {scale} scale (`make engines SCALE={scale}`)")
    subprocess.run([sys.executable, "-m", "build_engines", "all", "--scale", scale], check=True)
    return scale


def feature_settings(scale: str):
    from feature_repo.store import StoreSettings

    return StoreSettings.from_env(data_dir=DATA / scale, repo_dir=FEATURE_REPO_BUILD)


def ensure_features(scale: str, log=print) -> dict[str, str]:
    """Materialize the online store for ``scale`` unless it already holds that data; return
    the environment the server needs to read it."""
    from feature_repo.store import feature_store, materialize

    settings = feature_settings(scale)
    marker = FEATURE_REPO_BUILD / f"materialized-{settings.kind}.json"
    data = settings.data_dir / "transactions.parquet"
    stamp = {"data": str(data), "mtime": data.stat().st_mtime, "store": settings.reader_location}
    if (
        settings.kind == "sqlite"
        and marker.exists()
        and settings.sqlite_path.exists()
        and json.loads(marker.read_text()) == stamp
    ):
        log(f"features: online store up to date ({settings.sqlite_path})")
    else:
        log(f"features: materializing into {settings.kind} ({settings.reader_location})")
        materialize(feature_store(settings), settings, log=log)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(stamp))
    env = settings.serving_env()
    if KAFKA_BOOTSTRAP.get():
        env[KAFKA_BOOTSTRAP.name] = KAFKA_BOOTSTRAP.get()
    return env


def warm_up(server: Server | str, requests: int = 30) -> None:
    """The first requests after a load take 30 ms or more (measured here): send some
    before anyone measures or relies on the budget. ``server``: a started server, or the
    gRPC address of one (a replica's own port)."""
    import uuid

    from client.scoring import FraudClient

    client = FraudClient(server if isinstance(server, str) else server.grpc_url)
    now = int(time.time() * 1000)
    run = uuid.uuid4().hex[:8]  # each warm-up its own ids: they are published and logged
    for i in range(requests):
        client.score(
            [
                {
                    "transaction_id": f"warm-up-{run}-{i}",
                    "card_id": 1 + i % 7,
                    "terminal_id": 1 + i % 5,
                    "amount": 10.0 + i,
                    "ts_ms": now,
                }
            ]
        )
    client.close()


def serve(
    scale: str, ports: Ports | None = None, log=print, replicas: int = 0, analysis: bool = False
):
    """Build what is missing, then start Triton and its stub watchdog in the background and
    record their pids. ``replicas`` > 0: that many replicas (each with its watchdog) behind
    Envoy, which takes the gRPC port (:func:`serve_mesh`). ``analysis``: the heavy model's
    analysis consumer beside them (:func:`start_analysis`)."""
    pid = _alive(PID_FILE) or _mesh_alive()
    if pid:
        raise RuntimeError(f"a server is already running (pid {pid}): `make stop` first")
    scale = ensure_models(scale, log)
    env = ensure_features(scale, log)
    if analysis:
        env.update(start_analysis(log))
    if replicas > 0:
        return serve_mesh(replicas, ports or Ports.from_env(), env, log=log)
    return start_in_background(ports or Ports.from_env(), env, log=log)


def serve_mesh(replicas: int, ports: Ports, env: dict[str, str], log=print, state_dir=TRITON_STATE):
    """``make serve REPLICAS=N``: N replicas (``client.mesh.mesh.replica_ports``), each with
    its stub watchdog (metrics on ``WATCHDOG_METRICS_PORT`` + i), warmed and admitted one by
    one behind Envoy on ``ports.grpc``; pids and ports in ``build/triton/mesh.json``."""
    from client.mesh.config import MeshConfig
    from client.mesh.mesh import Mesh, replica_ports

    base = REPLICA_BASE_PORT.get_int()
    watchdog_port = WATCHDOG_METRICS_PORT.get_int()

    def start_replica(replica):
        folder = state_dir / f"replica-{replica.index}"
        folder.mkdir(parents=True, exist_ok=True)
        return start(
            ports=replica.ports,
            nice=replica.nice,
            env=env,
            log_path=folder / "server.log",
            watchdog=True,
            watchdog_metrics_port=watchdog_port + replica.index,
        )

    config = MeshConfig(listen_port=ports.grpc, admin_port=ENVOY_ADMIN_PORT.get_int())
    mesh = Mesh(
        state_dir / "mesh",
        config,
        [replica_ports(i, base) for i in range(replicas)],
        start_replica,
        warm_up,
        log=log,
    )
    try:
        mesh.start()
    except Exception:
        mesh.stop()
        raise
    state = {
        "envoy": mesh.envoy.process.pid,
        "envoy_admin_port": config.admin_port,
        "eds": str(mesh.eds),
        "grpc_port": ports.grpc,
        "replicas": [
            {
                "pid": r.server.process.pid,
                "watchdog_pid": r.server.watchdog.pid,
                "grpc": r.ports.grpc,
                "http": r.ports.http,
                "metrics": r.ports.metrics,
                "watchdog_metrics": watchdog_port + r.index,
            }
            for r in mesh.replicas
        ],
    }
    MESH_STATE.write_text(json.dumps(state, indent=2))
    log(
        f"Envoy on gRPC 127.0.0.1:{ports.grpc} (admin and stats: http://127.0.0.1:"
        f"{config.admin_port}/stats/prometheus) in front of {replicas} replica(s): "
        + ", ".join(f"gRPC {r.address}, metrics :{r.ports.metrics}" for r in mesh.replicas)
        + f" (logs: {state_dir})"
    )
    return mesh


def _mesh_alive() -> int | None:
    if not MESH_STATE.exists():
        return None
    from client.local.services import running

    pid = json.loads(MESH_STATE.read_text())["envoy"]
    return pid if running(pid) else None


def stop_mesh(log=print) -> bool:
    if not MESH_STATE.exists():
        return False
    state = json.loads(MESH_STATE.read_text())
    for replica in state["replicas"]:
        _stop_group(replica["watchdog_pid"])
        _stop_group(replica["pid"])
        log(f"stopped replica gRPC :{replica['grpc']} (pid {replica['pid']}) and its watchdog")
    _stop_group(state["envoy"])
    log(f"stopped Envoy (pid {state['envoy']})")
    MESH_STATE.unlink(missing_ok=True)
    return True


def start_in_background(
    ports: Ports,
    env: dict[str, str],
    repository=MODEL_REPOSITORY,
    state_dir=TRITON_STATE,
    log=print,
    watchdog_metrics_port: int | None = None,
) -> Server:
    """What ``make serve`` leaves running: Triton on ``repository`` and the stub watchdog
    beside it (a model whose stub died is reloaded), their pids and logs in ``state_dir``
    for :func:`stop`; warmed up before it returns."""
    state_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    server = start(
        repository=repository,
        ports=ports,
        env=env,
        log_path=state_dir / "server.log",
        watchdog=True,
        watchdog_metrics_port=watchdog_metrics_port or WATCHDOG_METRICS_PORT.get_int(),
    )
    (state_dir / "server.pid").write_text(str(server.process.pid))
    (state_dir / "watchdog.pid").write_text(str(server.watchdog.pid))
    warm_up(server)
    log(
        f"Triton ready in {time.perf_counter() - started:.1f} s: gRPC 127.0.0.1:{ports.grpc}, "
        f"HTTP 127.0.0.1:{ports.http}, metrics 127.0.0.1:{ports.metrics}/metrics, "
        f"stub watchdog pid {server.watchdog.pid} (logs: {state_dir})"
    )
    return server


def _stop_group(pid: int) -> None:
    """SIGTERM to the process group of ``pid``, SIGKILL after 20 s."""
    try:
        os.killpg(pid, signal.SIGTERM)
        for _ in range(100):
            time.sleep(0.2)
            os.kill(pid, 0)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


ANALYSIS_PID = TRITON_STATE / "analysis.pid"
BROKER_PID = TRITON_STATE / "broker.pid"


def start_analysis(log=print, state_dir=TRITON_STATE) -> dict[str, str]:
    """``make serve ANALYSIS=1``: a broker on this machine's default port unless
    ``KAFKA_BOOTSTRAP`` names one, and ``python -m feature_repo analyze`` in the background
    (its own session, the lowest CPU priority, metrics on ``ANALYSIS_METRICS_PORT``, log in
    ``state_dir/analysis.log``); returns what the server's environment needs (the broker)."""
    import sys

    from client.local.services import child_environment, start_broker_in_background
    from python_backend.settings import ANALYSIS_METRICS_PORT, LOCAL_BROKER

    bootstrap = KAFKA_BOOTSTRAP.get()
    if not bootstrap:
        bootstrap = LOCAL_BROKER
        broker = start_broker_in_background(
            int(LOCAL_BROKER.rsplit(":", 1)[1]), state_dir / "broker.log"
        )
        BROKER_PID.write_text(str(broker.pid))
        log(f"Kafka-protocol broker (tansu, in memory) on {bootstrap}, pid {broker.pid}")
    log_path = state_dir / "analysis.log"
    with log_path.open("ab") as out:
        consumer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "feature_repo",
                "analyze",
                "--metrics-port",
                ANALYSIS_METRICS_PORT.get(),
            ],
            env=child_environment({KAFKA_BOOTSTRAP.name: bootstrap, "PYTHONUNBUFFERED": "1"}),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ANALYSIS_PID.write_text(str(consumer.pid))
    log(
        f"analysis consumer pid {consumer.pid} (log {log_path}): every decision studied by "
        "the heavy model; `python -m client cases` lists the review queue"
    )
    return {KAFKA_BOOTSTRAP.name: bootstrap}


def stop_analysis(log=print) -> None:
    for name, pid_file in (("analysis consumer", ANALYSIS_PID), ("broker", BROKER_PID)):
        pid = _alive(pid_file)
        if pid:
            _stop_group(pid)
            log(f"stopped the {name} (pid {pid})")
        pid_file.unlink(missing_ok=True)


def stop(log=print, state_dir=TRITON_STATE) -> bool:
    """Stop the background server and watchdog started by :func:`serve` (and the image API,
    the collector and Prometheus of ``make observe``)."""
    from client.observe import stack

    stop_image_api(log)
    stack.stop(log)
    meshed = stop_mesh(log)
    stopped_analysis = _alive(ANALYSIS_PID) or _alive(BROKER_PID)
    watchdog = _alive(state_dir / "watchdog.pid")
    if watchdog:
        _stop_group(watchdog)
        (state_dir / "watchdog.pid").unlink(missing_ok=True)
        log(f"stopped the stub watchdog (pid {watchdog})")
    pid_file = state_dir / "server.pid"
    if not pid_file.exists():
        if not meshed:
            log("no server running (no pid file)")
        stop_analysis(log)
        return meshed or bool(stopped_analysis)
    pid = int(pid_file.read_text())
    _stop_group(pid)
    pid_file.unlink(missing_ok=True)
    log(f"stopped Triton (pid {pid})")
    stop_analysis(log)  # after the server: its decision log hands its spool over at exit
    return True


IMAGE_API_PID = TRITON_STATE / "image_api.pid"


def _alive(pid_file) -> int | None:
    if not pid_file.exists():
        return None
    from client.local.services import running

    pid = int(pid_file.read_text())
    if running(pid):
        return pid
    pid_file.unlink()
    return None


def start_image_api(triton_url: str, port: int, log_path, timeout_s: float = 60):
    """The FastAPI gateway under uvicorn, in its own session; returns once it is ready."""
    from client.local.services import child_environment, wait_http

    env = child_environment({"IMAGE_API_TRITON": triton_url})
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "client.image_api:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_http(
            f"http://127.0.0.1:{port}/health", process, "the image API", log_path, None, timeout_s
        )
    except TimeoutError:
        process.kill()
        raise
    return process


def serve_image_api(port: int, log=print) -> None:
    """``make image-api``: build the image model if missing, make sure Triton serves the
    image pipeline (the running ``make serve`` server, or one started for it), and start the
    web API in the background."""

    from build_engines.image import build_image

    if _alive(IMAGE_API_PID):
        raise RuntimeError("the image API is already running: `make stop` first")
    build_image(log=log)
    ports = Ports.from_env()
    if _mesh_alive():
        log("Triton replicas behind Envoy: loading the image models into each")
        for replica in json.loads(MESH_STATE.read_text())["replicas"]:
            admin = admin_client(f"127.0.0.1:{replica['grpc']}")
            for model in IMAGE_MODELS:
                admin.load_model(model)
            admin.close()
    elif _alive(PID_FILE):
        log(f"Triton already running: loading the image models into it (gRPC {ports.grpc})")
        admin = admin_client(f"127.0.0.1:{ports.grpc}")
        for model in IMAGE_MODELS:
            admin.load_model(model)
        admin.close()
    else:
        models = list(IMAGE_MODELS)
        env = {}
        scale = built_scale()
        if scale:  # the fraud service shares the server when it is built
            env = ensure_features(scale, log)
            models += FRAUD_MODELS
        server = start(ports=ports, models=models, env=env)
        PID_FILE.write_text(str(server.process.pid))
        log(f"Triton ready: gRPC 127.0.0.1:{ports.grpc}, models {', '.join(models)}")
    api = start_image_api(f"127.0.0.1:{ports.grpc}", port, TRITON_STATE / "image_api.log")
    IMAGE_API_PID.write_text(str(api.pid))
    log(f"image API ready: http://127.0.0.1:{port}/ (POST /classify, GET /metrics)")


def stop_image_api(log=print) -> bool:
    pid = _alive(IMAGE_API_PID)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    IMAGE_API_PID.unlink(missing_ok=True)
    log(f"stopped the image API (pid {pid})")
    return True
