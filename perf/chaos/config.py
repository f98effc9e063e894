"""What a chaos run is held to and what it injects: the budget, the client's retry policy,
the targets, the faults and their descriptions, the timing of each window."""

from __future__ import annotations

from dataclasses import dataclass

from python_backend import paths, settings
from python_backend.fraud.scoring import DEFAULT_BUDGET_MS

FAULTY_MODEL = paths.ROOT / "perf" / "models" / "faulty" / "model.py"
#: The service's budget: what every answer is held to.
BUDGET_MS = DEFAULT_BUDGET_MS
#: Each attempt gives up after this long; a request is retried until RETRY_DEADLINE_S.
ATTEMPT_TIMEOUT_S = 1.0
RETRY_DEADLINE_S = 30.0
#: Attempts in flight at most (a client's connection pool): after an outage the backlog is
#: sent as fast as the server answers, not all at once (a retry storm keeps a recovered
#: server overloaded). Waiting for a slot counts in the request's latency.
MAX_IN_FLIGHT = 128
#: gRPC reconnects at most a second after the server went away (its default backs off to
#: two minutes, so a restarted server would be found late).
CHANNEL_ARGS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
#: The load's first seconds (client and server warming up) are left out of the baseline.
WARMUP_S = 3.0
TARGETS = {"decided": 0.999, "within_budget": 0.99, "recovery_s": 10.0, "lost": 0}
#: A crashed replica is found by Envoy within this long; from then on the shares are held
#: to the same targets (``settled``).
SETTLE_S = 2.0
FAULTS = (
    "primary_errors",
    "primary_slow",
    "primary_unloaded",
    "primary_stub_killed",
    "fallback_fails_too",
    "redis_down",
    "redis_slow",
    "kafka_down",
    "server_restart",
    "rolling_restart",
    "replica_crash",
    "batch_job",
)
DESCRIPTIONS = {
    "primary_errors": "fraud_primary answers every request with an error",
    "primary_slow": "fraud_primary answers after 250 ms (budget 95 ms)",
    "primary_unloaded": "fraud_primary unloaded",
    "primary_stub_killed": "fraud_primary's Python stub killed with SIGKILL (instantaneous)",
    "fallback_fails_too": "fraud_primary answers with errors and the fallback fails too "
    "(the in-process one's artefact does not load; the Triton model errors)",
    "redis_down": "Redis stopped, then started empty and refilled",
    "redis_slow": "Redis blocked by DEBUG SLEEP 0.2 s, back to back",
    "kafka_down": "the broker frozen (SIGSTOP), then resumed (SIGCONT)",
    "server_restart": "replica 0 drained out of Envoy's rotation, stopped (SIGTERM), started "
    "again on the same ports, warmed and readmitted; replica 1 serves meanwhile",
    "rolling_restart": "each replica in turn drained, stopped, started, warmed and readmitted "
    "behind Envoy",
    "replica_crash": "replica 1's whole server (tritonserver and its stubs) killed with "
    "SIGKILL, no drain; started again when the fault is lifted",
    "batch_job": "the daily materialization run again beside the load (Redis kept), as "
    "batch work (BATCH_PRIORITY: idle unless set to normal); lifted when it is done",
}


def faults_from_env() -> tuple[str, ...]:
    """``CHAOS_FAULTS`` (comma-separated), else every fault."""
    raw = settings.CHAOS_FAULTS.get().strip()
    if not raw:
        return FAULTS
    chosen = tuple(f.strip() for f in raw.split(",") if f.strip())
    unknown = [f for f in chosen if f not in FAULTS]
    if unknown:
        raise SystemExit(f"CHAOS_FAULTS: unknown {unknown}; choose from {', '.join(FAULTS)}")
    return chosen


@dataclass(frozen=True)
class Timing:
    rate: float = 200.0
    baseline_s: float = 10.0
    fault_s: float = 10.0
    watch_s: float = 12.0
    soak_s: float = 0.0

    @classmethod
    def make(cls, quick: bool) -> Timing:
        soak = settings.CHAOS_SOAK_S.get_float()
        if quick:
            return cls(baseline_s=3, fault_s=3, watch_s=6, soak_s=soak)
        return cls(soak_s=soak)
