"""The systems under test beside ``fraud_scoring``: the benchmark's own Triton models
(``fraud_fused``, ``perf_empty``, ``perf_hop``) and the two HTTP peers (the plain FastAPI
service and the BentoML one), each started on a free loopback port."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from perf.systems import PERF_MODELS
from python_backend import settings
from python_backend.paths import ROOT


def perf_repository(out: Path, repository: Path) -> Path:
    """A second model repository with the benchmark's own models."""
    from build_engines.triton_config import scoring_config

    root = out / "model_repository"
    shutil.rmtree(root, ignore_errors=True)
    fused = root / "fraud_fused"
    (fused / "1").mkdir(parents=True)
    shutil.copy(PERF_MODELS / "fraud_fused" / "1" / "model.py", fused / "1" / "model.py")
    params = {"REPOSITORY": str(repository)}
    (fused / "config.pbtxt").write_text(
        scoring_config(name="fraud_fused", parameters=params, instances=2)
    )
    empty = root / "perf_empty"
    (empty / "1").mkdir(parents=True)
    shutil.copy(PERF_MODELS / "perf_empty" / "1" / "model.py", empty / "1" / "model.py")
    (empty / "config.pbtxt").write_text(perf_empty_config())
    hop = root / "perf_hop"
    (hop / "1").mkdir(parents=True)
    shutil.copy(PERF_MODELS / "perf_hop" / "1" / "model.py", hop / "1" / "model.py")
    # fraud_scoring's batcher and instances: the floor differs from it only in the work.
    (hop / "config.pbtxt").write_text(scoring_config(name="perf_hop"))
    return root


def perf_empty_config() -> str:
    """A Python model that does nothing: the floor of one Triton round trip."""
    from build_engines import model_config
    from python_backend.contract import ModelContract, TensorSpec

    one = ModelContract(
        "perf_empty",
        (TensorSpec("INPUT", np.float32, (1,)),),
        (TensorSpec("OUTPUT", np.float32, (1,)),),
    )
    return model_config.render(
        {"name": one.name, "backend": "python", "max_batch_size": 64},
        model_config.io(one),
        model_config.instances(1),
    )


@contextlib.contextmanager
def plain_service(
    env: dict[str, str], repository: Path, log_path: Path
) -> Iterator[tuple[str, int]]:
    """The FastAPI peer under uvicorn, one worker per core; yields its ``/score`` URL and
    the master's pid."""
    from client.local.services import free_port, stop_process, wait_http

    port = free_port()
    workers = str(os.cpu_count() or 1)
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "perf.plain_service:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        workers,
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    full_env = {**os.environ, **env, settings.PLAIN_REPOSITORY.name: str(repository)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_http(
            f"http://127.0.0.1:{port}/health",
            process,
            "plain_service",
            log_path,
            ready=lambda body: json.loads(body).get("ready"),
            timeout_s=120,
        )
        yield f"http://127.0.0.1:{port}/score", process.pid
    finally:
        stop_process(process, grace_s=10)


@contextlib.contextmanager
def bento_service(
    env: dict[str, str], repository: Path, log_path: Path, log=print
) -> Iterator[tuple[str, int]]:
    """The BentoML peer (``perf.bento_service``) under ``bentoml serve``, in its own
    environment; yields its ``/score`` URL and the server's pid."""
    from client.local.services import child_environment, free_port, stop_process, wait_http
    from perf.tools import ensure_bentoml

    bentoml = ensure_bentoml(log=log)
    port = free_port()
    cmd = [
        str(bentoml),
        "serve",
        "perf.bento_service:FraudBento",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    full_env = child_environment(
        {
            **env,
            settings.BENTO_REPOSITORY.name: str(repository),
            "BENTOML_HOME": str(log_path.parent / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "True",
        }
    )
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", process, "bento_service", log_path)
        yield f"http://127.0.0.1:{port}/score", process.pid
    finally:
        stop_process(process, grace_s=10)
