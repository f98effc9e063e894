"""Every environment variable the project reads, with its default, declared once.

Code reads a setting as ``settings.FEATURE_STORE.get()``; ``python -m client settings``
prints the table with the values in effect. A setting's default is a string (or ``None``:
unset means off), as the environment holds strings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from python_backend import paths


@dataclass(frozen=True)
class Setting:
    name: str
    default: str | None
    doc: str

    def get(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The value in ``environ`` (the process environment by default), else the default."""
        return (os.environ if environ is None else environ).get(self.name, self.default)

    def get_int(self, environ: Mapping[str, str] | None = None) -> int:
        return int(self.get(environ))

    def get_float(self, environ: Mapping[str, str] | None = None) -> float:
        return float(self.get(environ))


_ALL: list[Setting] = []


def _setting(name: str, default: str | None, doc: str) -> Setting:
    setting = Setting(name, default, doc)
    _ALL.append(setting)
    return setting


# The online feature store (serving and the feature jobs).
FEATURE_STORE = _setting("FEATURE_STORE", "sqlite", "online store: sqlite (embedded) or redis")
REDIS_URL = _setting("REDIS_URL", "redis://127.0.0.1:6379/0", "the Redis online store")
FEATURE_SQLITE_PATH = _setting(
    "FEATURE_SQLITE_PATH", str(paths.FEATURE_REPO_BUILD / "online.db"), "the SQLite online store"
)
FEATURE_CACHE_ENTRIES = _setting(
    "FEATURE_CACHE_ENTRIES",
    "10000",
    "the BLS's cache of daily views from Redis: entries per entity (0: no cache)",
)
FEATURE_CACHE_S = _setting(
    "FEATURE_CACHE_S", "300", "the most seconds a cached daily view serves while Redis answers"
)
FEATURE_DATA = _setting(
    "FEATURE_DATA", str(paths.DATA / "default"), "offline tables the store is materialized from"
)
FEATURE_REPO_DIR = _setting(
    "FEATURE_REPO_DIR", str(paths.FEATURE_REPO_BUILD), "the Feast registry and SQLite file"
)
# Kafka and the decision log (the BLS, the stream consumer, the tooling).
KAFKA_BOOTSTRAP = _setting(
    "KAFKA_BOOTSTRAP", None, "broker address; unset: the BLS publishes nothing, no decision log"
)
#: Where the feature jobs and the client look for a broker when ``KAFKA_BOOTSTRAP`` is unset.
LOCAL_BROKER = "127.0.0.1:9092"


def kafka_bootstrap() -> str:
    """``KAFKA_BOOTSTRAP``, else a broker on this machine's default port (the tools' default)."""
    return KAFKA_BOOTSTRAP.get() or LOCAL_BROKER


SCORED_TOPIC = _setting("SCORED_TOPIC", "transactions", "where the BLS publishes scored tx")
DECISIONS_TOPIC = _setting("DECISIONS_TOPIC", "decisions", "the decision log's topic")
DECISION_LOG = _setting("DECISION_LOG", "on", "off: no decision log")
DECISION_SPOOL_DIR = _setting(
    "DECISION_SPOOL_DIR",
    str(paths.BUILD / "decision-spool"),
    "the decision log's journal and spool: a folder that outlives the process (a pod's volume)",
)
DECISION_LOG_INPUTS = _setting(
    "DECISION_LOG_INPUTS",
    "on",
    "off: decision-log records without what the models saw (no analysis, no training on it)",
)
DECISION_DRAIN_S = _setting(
    "DECISION_DRAIN_S",
    "10",
    "seconds the decision log spends handing its spool to the broker at shutdown",
)
EVENT_FORMAT = _setting(
    "EVENT_FORMAT",
    "protobuf",
    "how events are written to the topics: protobuf (records.proto) or json; both are read",
)
# Where the primary runs (build_engines.triton_config.scoring_config).
FRAUD_PRIMARY = _setting(
    "FRAUD_PRIMARY",
    "in_process",
    "where the primary runs without TensorRT: in_process (an ONNX Runtime session in "
    "fraud_scoring, under the same deadline) or triton (a hop to fraud_primary); TensorRT "
    "engines always run in Triton",
)
# Batch work beside the service (python_backend.priority).
BATCH_PRIORITY = _setting(
    "BATCH_PRIORITY",
    "idle",
    "materialization, retraining, analysis: idle (SCHED_IDLE, else nice 19) or normal",
)
# The analysis consumer (feature_repo analyze) and the case store it fills.
ANALYSIS = _setting(
    "ANALYSIS", "0", "make serve: 1 runs the analysis consumer (and a local broker) beside it"
)
CASE_STORE = _setting("CASE_STORE", "sqlite", "the case store: sqlite (embedded)")
CASE_STORE_PATH = _setting(
    "CASE_STORE_PATH", str(paths.BUILD / "cases" / "cases.db"), "the SQLite case store"
)
ANALYSIS_TOPIC = _setting("ANALYSIS_TOPIC", "analysis", "where analysis records go")
REVIEW_TOPIC = _setting("REVIEW_TOPIC", "review", "approved transactions the heavy model doubts")
HEAVY_MODEL_DIR = _setting(
    "HEAVY_MODEL_DIR",
    str(paths.MODEL_REPOSITORY / "fraud_heavy" / "1"),
    "the heavy model the analysis consumer runs",
)
DRIFT_REFERENCE = _setting(
    "DRIFT_REFERENCE",
    "",
    "the training window live traffic is compared with: a drift_reference.json, or a model "
    "repository (its newest fraud_primary version's; default: the project's)",
)
DRIFT_WINDOW_ROWS = _setting(
    "DRIFT_WINDOW_ROWS", "5000", "the newest decisions the drift metrics are computed over"
)
ANALYSIS_METRICS_PORT = _setting(
    "ANALYSIS_METRICS_PORT", "9110", "the analysis consumer's Prometheus metrics"
)
# The Triton server the tooling starts.
TRITON_SERVER = _setting("TRITON_SERVER", None, "a tritonserver binary (default: the wheel's)")
TRITON_GRPC_PORT = _setting("TRITON_GRPC_PORT", "8001", "Triton's gRPC port (make serve)")
TRITON_HTTP_PORT = _setting("TRITON_HTTP_PORT", "8000", "Triton's HTTP port (make serve)")
TRITON_METRICS_PORT = _setting("TRITON_METRICS_PORT", "8002", "Triton's metrics port")
TRITON_OPERATOR_KEY = _setting(
    "TRITON_OPERATOR_KEY",
    None,
    "the operator's key for Triton's administrative APIs (default: build/triton/operator.key)",
)
# The mesh (client.mesh): Envoy in front of Triton replicas.
REPLICAS = _setting(
    "REPLICAS", "0", "make serve: Triton replicas behind Envoy on the gRPC port (0: no Envoy)"
)
ENVOY_ADMIN_PORT = _setting("ENVOY_ADMIN_PORT", "9901", "Envoy's admin port (stats, clusters)")
REPLICA_BASE_PORT = _setting(
    "REPLICA_BASE_PORT", "8100", "replica i of make serve: HTTP base+10i, gRPC +1, metrics +2"
)
# Traces (python_backend.tracing) and the observability tooling (client.observe).
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT = _setting(
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "http://127.0.0.1:4318/v1/traces",
    "OTLP/HTTP traces endpoint of Triton, the BLS, the consumer, the client; off: no tracing",
)
TRACE_SAMPLE = _setting(
    "TRACE_SAMPLE", "0", "share of requests the Python clients trace (0 to 1; 0.01: 1%)"
)
PROMETHEUS_PORT = _setting("PROMETHEUS_PORT", "9090", "Prometheus's port (make observe)")
METRICS_BIND_ADDRESS = _setting(
    "METRICS_BIND_ADDRESS",
    "127.0.0.1",
    "where the consumers and the watchdog serve their metrics (a pod: 0.0.0.0, for Prometheus)",
)
CONSUMER_METRICS_PORT = _setting(
    "CONSUMER_METRICS_PORT",
    "9108",
    "where make observe's Prometheus scrapes the stream consumer (consume --metrics-port)",
)
WATCHDOG_METRICS_PORT = _setting(
    "WATCHDOG_METRICS_PORT", "9109", "the stub watchdog's Prometheus metrics (make serve)"
)
# The image API.
IMAGE_API_PORT = _setting("IMAGE_API_PORT", "8080", "the image web API's port")
IMAGE_API_TRITON = _setting(
    "IMAGE_API_TRITON", "127.0.0.1:8001", "the Triton gRPC address the image API calls"
)
# Benchmarks and chaos.
DEMO_SCALE = _setting("DEMO_SCALE", "small", "scale built by make serve / demo / perf")
PERF_QUICK = _setting("PERF_QUICK", "0", "1: the short benchmark")
PERF_STORE = _setting("PERF_STORE", "redis", "online store of the benchmark: redis or sqlite")
CHAOS_FAULTS = _setting("CHAOS_FAULTS", "", "comma-separated faults (default: all)")
CHAOS_SOAK_S = _setting("CHAOS_SOAK_S", "0", "a soak of N seconds after the faults")
HOLES_EVENTS = _setting("HOLES_EVENTS", "40000", "events of make broker-holes")
HOLES_PRODUCERS = _setting("HOLES_PRODUCERS", "4", "concurrent producers of make broker-holes")
HOLES_RATE = _setting("HOLES_RATE", "1000", "events/s of make broker-holes")
BENTO_WORKERS = _setting("BENTO_WORKERS", None, "BentoML peer workers (default: one per core)")
# Hand-offs from the benchmark to the peers it starts (set by perf, not by users).
PLAIN_REPOSITORY = _setting("PLAIN_REPOSITORY", None, "model repository of the plain peer")
BENTO_REPOSITORY = _setting("BENTO_REPOSITORY", None, "model repository of the BentoML peer")


def table(environ: Mapping[str, str] | None = None) -> list[tuple[str, str, str, str]]:
    """(name, value in effect, default, what) of every setting."""
    return [(s.name, s.get(environ) or "", s.default or "", s.doc) for s in _ALL]
