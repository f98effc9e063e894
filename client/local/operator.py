"""The operator's credential: what separates the callers' API from the administrative one.

Every Triton the project starts restricts its administrative protocols (model control and
repository, model configuration, statistics, tracing, logging, shared memory) on both gRPC
and HTTP to requests carrying the operator's header with the operator's key
(``--grpc-restricted-protocol`` / ``--http-restricted-api``). Inference, metadata and health
stay open: that is the callers' API. Triton checks the header :data:`KEY_NAME` on HTTP and
:data:`GRPC_HEADER` (its name with Triton's gRPC prefix) on gRPC. The tooling (watchdog,
chaos, rollout, perf, tests) sends the key through a tritonclient plugin, :func:`admin_client`.

The key is ``TRITON_OPERATOR_KEY`` when set (a cluster mounts it from a Secret), else a
random one kept in ``build/triton/operator.key`` (mode 600), made on first use.
"""

from __future__ import annotations

import os
import secrets

from tritonclient._plugin import InferenceServerClientPlugin

from python_backend import paths, settings

#: The header Triton is told to check (gRPC metadata keys are lower case).
KEY_NAME = "operator-key"
#: What a gRPC caller sends: Triton prefixes the restricted-protocol key on gRPC.
GRPC_HEADER = f"triton-grpc-protocol-{KEY_NAME}"
#: Triton's names of the protocols only the operator may use (the same on gRPC and HTTP).
RESTRICTED = (
    "model-repository",
    "model-config",
    "shared-memory",
    "statistics",
    "trace",
    "logging",
)
KEY_FILE = paths.TRITON_STATE / "operator.key"


def operator_key() -> str:
    """``TRITON_OPERATOR_KEY``, else the key file's (created, owner-only, when missing)."""
    configured = settings.TRITON_OPERATOR_KEY.get()
    if configured:
        return configured
    if not KEY_FILE.exists():
        KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(24))
    return KEY_FILE.read_text().strip()


def restricted_arguments(key: str | None = None) -> list[str]:
    """The ``tritonserver`` flags that put :data:`RESTRICTED` behind the key."""
    rule = f"{','.join(RESTRICTED)}:{KEY_NAME}={key or operator_key()}"
    return [f"--grpc-restricted-protocol={rule}", f"--http-restricted-api={rule}"]


class OperatorKey(InferenceServerClientPlugin):
    """Adds the operator's key to every call of the client it is registered on."""

    def __init__(self, key: str | None = None) -> None:
        self.key = key or operator_key()

    def __call__(self, request) -> None:
        request.headers[GRPC_HEADER] = self.key


def admin_client(url: str, aio: bool = False, **kwargs):
    """A tritonclient gRPC client (``aio``: the asyncio one) that sends the operator's key."""
    if aio:
        import tritonclient.grpc.aio as grpcclient
    else:
        import tritonclient.grpc as grpcclient
    client = grpcclient.InferenceServerClient(url, **kwargs)
    client.register_plugin(OperatorKey())
    return client


def http_headers() -> dict[str, str]:
    """The header for plain HTTP calls of the administrative API (curl, urllib)."""
    return {KEY_NAME: operator_key()}


def perf_analyzer_arguments() -> list[str]:
    """perf_analyzer reads the model's configuration and statistics: it sends the key too
    (its ``-H`` headers go out as gRPC metadata)."""
    return ["-H", f"{GRPC_HEADER}:{operator_key()}"]


def override_parameters(admin, model: str, **parameters: str | None) -> None:
    """Reload ``model`` with these config parameters set (None: removed), through Triton's
    model-control API: the new version loads beside the old one and takes over (a load
    that fails leaves the old one serving). Undo with the same call: a plain
    ``load_model`` keeps a config given by an earlier override (seen with Triton 2.51)."""
    import json

    config = admin.get_model_config(model, as_json=True)["config"]
    current = config.setdefault("parameters", {})
    for key, value in parameters.items():
        if value is None:
            current.pop(key, None)
        else:
            current[key] = {"string_value": value}
    admin.load_model(model, config=json.dumps(config))


#: Where a primary taken away on purpose is pointed when it runs in ``fraud_scoring``'s
#: process: no such folder, as when its artefact never arrived.
MISSING_PRIMARY_DIR = "/nonexistent/fraud_primary"


def primary_in_process(admin) -> bool:
    """Whether this server's ``fraud_scoring`` runs the primary in its own process (its
    ``PRIMARY`` parameter; ``FRAUD_PRIMARY`` chose it) rather than through Triton's
    ``fraud_primary``."""
    config = admin.get_model_config("fraud_scoring", as_json=True)["config"]
    placement = config.get("parameters", {}).get("PRIMARY", {}).get("string_value", "triton")
    return placement != "triton"


def take_primary_away(admin, primary_dir: str = MISSING_PRIMARY_DIR) -> None:
    """The primary made unavailable wherever it runs: Triton's ``fraud_primary`` unloaded,
    or the in-process primary's ``PRIMARY_DIR`` pointed at ``primary_dir`` (by default a
    folder that does not exist; ``perf.chaos.artefacts`` makes faulty ones).
    :func:`restore_primary` undoes it."""
    if primary_in_process(admin):
        override_parameters(admin, "fraud_scoring", PRIMARY_DIR=primary_dir)
    else:
        admin.unload_model("fraud_primary")


def restore_primary(admin) -> None:
    """Undo :func:`take_primary_away` (or a stand-in loaded as Triton's ``fraud_primary``)."""
    if primary_in_process(admin):
        override_parameters(admin, "fraud_scoring", PRIMARY_DIR=None)
    else:
        admin.load_model("fraud_primary")
