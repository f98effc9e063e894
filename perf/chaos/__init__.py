"""``make chaos``: the whole system under a steady Poisson load, one fault at a time.

The run starts Redis (filled from the offline store), a Kafka-protocol broker, the stream
consumer (``python -m feature_repo consume``, a process of its own), two Triton replicas with
the fraud models behind Envoy (``client.mesh``), and a stub watchdog per replica
(``client.local.watchdog``). It offers ``rate`` requests per second through Envoy (one
transaction each, unique transaction ids, unary gRPC ``ModelInfer``), and injects each fault
of ``FAULTS`` in turn: held for ``fault_s``, lifted, then watched for ``watch_s``. The client
is a plain one with a deadline: it retries what did not get an answer (transport errors,
timeouts) with the same transaction id and a new request id (``<tx>#<attempt>``); routing
around a replica that is down is Envoy's (health checks, retries on another host, outlier
detection), and a restart is the operator's drain, stop, start, warm, readmit.

Every fault switch is operator tooling here: models are swapped (on every replica) for the
stand-in of ``perf/models/faulty`` through Triton's model-control API, processes are stopped
or frozen with signals. The serving path has no back door.

After the load, a reconciliation reads the ``decisions`` topic and counts accepted requests
against logged decisions, and the consumer's counts against the ``transactions`` topic.

Output: ``build/reports/chaos.json``, ``chaos.md`` and ``chaos_timeline.png``.
``CHAOS_SOAK_S``: hold the load that long with the faults cycling, and watch the server's
memory and file descriptors for growth. ``CHAOS_FAULTS=a,b``: only those faults (a soak
without ``server_restart`` and ``rolling_restart`` watches one server process throughout).

Modules, in the order a run uses them: ``config`` (targets, faults, the client's policy),
``system`` (the processes), ``faults``, ``load`` (the Poisson client and the resource
watch), ``measure`` (windows, recovery, reconciliation), ``report``, ``runner`` (``run``).
"""

from perf.chaos.config import FAULTS, TARGETS, Timing, faults_from_env
from perf.chaos.faults import (
    break_in_process_fallback,
    override_parameters,
    restore_in_process_fallback,
)
from perf.chaos.load import Load, Outcome
from perf.chaos.measure import reconcile, recovery_s
from perf.chaos.runner import run
from perf.chaos.system import System

__all__ = [
    "FAULTS",
    "TARGETS",
    "Load",
    "Outcome",
    "System",
    "Timing",
    "break_in_process_fallback",
    "faults_from_env",
    "override_parameters",
    "reconcile",
    "recovery_s",
    "restore_in_process_fallback",
    "run",
]
