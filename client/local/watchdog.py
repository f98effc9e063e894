"""A liveness watchdog for Triton's Python-backend models.

When a model's stub process dies (OOM killer, a crash in native code, ``kill -9``), Triton
2.51 keeps reporting the model READY and answers each request to it with an error naming the
stub; nothing brings the stub back. The watchdog probes each watched model with a one-row
request every ``interval_s`` and reloads a model whose stub is gone (Triton's model-control
API, so the replacement loads beside the broken one and takes over). Other errors (a model
that is unloaded on purpose, one that is merely slow) are left alone.

    python -m client watchdog [--url 127.0.0.1:8001] [--models fraud_primary,fraud_fallback]
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from client.local.operator import admin_client
from client.mesh.rotation import Rotation, reloading
from python_backend import settings
from python_backend.contract import ModelContract
from python_backend.fraud.contract import FALLBACK, PRIMARY

CONTRACTS = {c.name: c for c in (PRIMARY, FALLBACK)}
#: Reconnect within a second of a restarted server (gRPC's default backs off to minutes).
CHANNEL_ARGS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000)]
#: Error text of a request sent to a model whose stub process is gone.
DEAD_STUB = ("Stub process", "is not healthy")


def probe_inputs(contract: ModelContract):
    import tritonclient.grpc as grpcclient

    inputs = []
    for spec in contract.inputs:
        tensor = grpcclient.InferInput(spec.name, [1, *spec.dims], spec.wire_dtype)
        tensor.set_data_from_numpy(np.zeros((1, *spec.dims), dtype=spec.dtype))
        inputs.append(tensor)
    return inputs


def reload(client, name: str) -> None:
    """Load ``name`` again beside the broken one. Triton ignores a load whose config did not
    change, so the config goes back with a marker. Seen with Triton 2.51: a later plain
    ``load_model(name)`` keeps a config given by an override (the marker included); a rollout
    that changes the config must give it the same way
    (``client.local.operator.override_parameters``)."""
    import json

    config = client.get_model_config(name, as_json=True)["config"]
    config.setdefault("parameters", {})["WATCHDOG_RELOADED_AT"] = {"string_value": str(time.time())}
    client.load_model(name, config=json.dumps(config))


def stub_is_dead(message: str) -> bool:
    return any(marker in message for marker in DEAD_STUB)


@dataclass
class Watchdog:
    url: str
    models: tuple[str, ...] = ("fraud_primary", "fraud_fallback")
    interval_s: float = 0.5
    log: Callable[[str], None] = print
    #: (monotonic time, model) of each reload.
    reloads: list[tuple[float, str]] = field(default_factory=list)
    #: Envoy's rotation, when this replica is one of a mesh's: each reload then happens out
    #: of rotation (``client.mesh.rotation``); else in place.
    rotation: Rotation | None = None
    #: Where a mesh started later describes itself (``make serve REPLICAS=N``'s state): read
    #: at a reload when ``rotation`` is not given.
    mesh_state: Path | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._checks = self._reloaded = None  # Prometheus counters, with serve_metrics

    def serve_metrics(self, port: int) -> None:
        """``fraud_watchdog_reloads_total{model}`` and ``fraud_watchdog_checks_total`` on
        ``127.0.0.1:port/metrics`` (Prometheus: the alert on a watchdog reloading)."""
        try:
            self._serve_metrics(port)
        except Exception as err:  # metrics are never worth the watchdog itself
            self._checks = self._reloaded = None
            self.log(f"watchdog: no metrics on port {port} ({err!r})")

    def _serve_metrics(self, port: int) -> None:
        from prometheus_client import CollectorRegistry, Counter, start_http_server

        registry = CollectorRegistry()
        self._checks = Counter(
            "fraud_watchdog_checks", "Probe rounds of the watched models", registry=registry
        )
        self._reloaded = Counter(
            "fraud_watchdog_reloads",
            "Models reloaded because their stub process was gone",
            ["model"],
            registry=registry,
        )
        for name in self.models:
            self._reloaded.labels(name)  # every watched model's series exists, at 0
        start_http_server(port, addr=settings.METRICS_BIND_ADDRESS.get(), registry=registry)

    def check_once(self, client) -> None:
        from tritonclient.utils import InferenceServerException

        if self._checks is not None:
            self._checks.inc()
        for name in self.models:
            try:
                client.infer(name, probe_inputs(CONTRACTS[name]), client_timeout=2)
            except InferenceServerException as err:
                if not stub_is_dead(str(err)):
                    continue
                self.log(f"watchdog: {name}'s stub process is gone; reloading {name}")
                started = time.monotonic()
                with reloading(self._rotation(), self.url):
                    reload(client, name)
                self.reloads.append((started, name))
                if self._reloaded is not None:
                    self._reloaded.labels(name).inc()
                self.log(f"watchdog: {name} reloaded in {time.monotonic() - started:.1f} s")

    def _rotation(self) -> Rotation | None:
        if self.rotation is None and self.mesh_state is not None:
            found = Rotation.from_state(self.mesh_state, log=self.log)
            with contextlib.suppress(OSError, ValueError):
                if found is not None and self.url in found.statuses():
                    return found
        return self.rotation

    def run(self) -> None:

        client = admin_client(self.url, channel_args=CHANNEL_ARGS)
        while not self._stop.wait(self.interval_s):
            try:
                self.check_once(client)
            except Exception as err:  # the server may be away (restarting): try again later
                client.close()
                client = admin_client(self.url, channel_args=CHANNEL_ARGS)
                if "UNAVAILABLE" not in str(err) and "StatusCode" not in str(err):
                    self.log(f"watchdog: check failed: {err!r}")
        client.close()

    def start(self) -> Watchdog:
        self._thread = threading.Thread(target=self.run, name="watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
