"""The CPU priority of batch work: the jobs that run beside the service on the same cores.

On two cores the service lives near its edge (1.75 cores at 200/s): a job at the same
priority takes its share and puts decisions in queues. So the batch jobs lower their own
priority when they start: materialization (``python -m feature_repo materialize``, the
daily job and a refill), retraining (``python -m client retrain``) and the analysis
consumer. ``SCHED_IDLE`` where the kernel allows it (the job runs only on CPU the service
leaves), else nice 19. ``BATCH_PRIORITY=normal`` keeps the priority they were started with
(to measure what the lower one buys: ``python -m perf chaos`` with ``CHAOS_FAULTS=batch_job``).

A booting replica is the mesh's concern (``client.mesh``: niced until it is admitted).
"""

from __future__ import annotations

import os

from python_backend import settings

IDLE = "idle"
NORMAL = "normal"


def lowest_priority() -> str:
    """This process at the lowest CPU priority it may take; what it got."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    except (AttributeError, PermissionError, OSError):
        os.nice(19 - os.nice(0))
        return f"nice {os.nice(0)}"


def as_batch_job() -> str:
    """This process as batch work: :func:`lowest_priority` unless ``BATCH_PRIORITY`` is
    ``normal``. What it runs at, in words."""
    chosen = settings.BATCH_PRIORITY.get()
    if chosen not in (IDLE, NORMAL):
        raise ValueError(f"BATCH_PRIORITY: {IDLE} or {NORMAL}, got {chosen!r}")
    if chosen == NORMAL:
        return f"nice {os.nice(0)} (BATCH_PRIORITY=normal)"
    return lowest_priority()
