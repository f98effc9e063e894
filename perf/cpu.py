"""CPU seconds per process, read from ``/proc`` (psutil), so that every benchmark reports
what a decision costs beside how long it takes: on two cores, cost is headroom.

A :class:`CpuMeter` watches process trees (a Triton server and its Python-backend stubs, a
uvicorn master and its workers) and labels each process by what it is: ``tritonserver``, a
stub by its model (``stub:fraud_scoring``), ``uvicorn``. Processes that start or end between
two samples count for the part of the window they were seen in.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psutil


def label(process: psutil.Process) -> str:
    """What a process is: a stub by its model's folder, else its program's name."""
    try:
        cmd = process.cmdline()
    except psutil.Error:
        return "gone"
    if cmd and cmd[0].endswith("triton_python_backend_stub") and len(cmd) > 1:
        # The stub's first argument is the model's file: .../<model>/<version>/model.py
        parts = cmd[1].rstrip("/").split("/")
        return f"stub:{parts[-3]}" if len(parts) >= 3 else "stub"
    if cmd and "uvicorn" in " ".join(cmd[:3]):
        return "uvicorn"
    if cmd and "bentoml" in " ".join(cmd):
        return "bentoml"
    if cmd and "multiprocessing" in " ".join(cmd):
        return "worker"  # uvicorn's workers are multiprocessing children
    return os.path.basename(cmd[0]) if cmd else process.name()


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


@dataclass
class Sample:
    at: float
    #: pid -> (label, CPU seconds so far)
    processes: dict[int, tuple[str, float]]
    #: CPU seconds of this (the load generator's) process so far.
    own: float


class CpuMeter:
    """Samples the trees rooted at ``pids``; ``window(before, after)`` gives CPU seconds
    per label between two samples."""

    def __init__(self, *pids: int) -> None:
        self.roots = [psutil.Process(pid) for pid in pids]

    def sample(self) -> Sample:
        found: dict[int, tuple[str, float]] = {}
        for root in self.roots:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for process in tree:
                try:
                    found[process.pid] = (label(process), _cpu(process))
                except psutil.Error:
                    continue
        return Sample(time.perf_counter(), found, time.process_time())

    @staticmethod
    def window(before: Sample, after: Sample) -> dict[str, float]:
        """CPU seconds per label spent between the samples (a process new since ``before``
        counts from zero)."""
        out: dict[str, float] = {}
        for pid, (name, seconds) in after.processes.items():
            start = before.processes.get(pid, (name, 0.0))[1]
            out[name] = out.get(name, 0.0) + max(0.0, seconds - start)
        return out


def _figures(cpu_s: float, wall_s: float, decisions: int, split: dict, generator_s) -> dict:
    return {
        "decisions": decisions,
        "cpu_ms_per_decision": round(cpu_s * 1000 / decisions, 3),
        "decisions_per_core_second": round(decisions / cpu_s, 1) if cpu_s else None,
        "processes_ms": {k: round(v * 1000 / decisions, 3) for k, v in sorted(split.items())},
        "cores_busy": round(cpu_s / wall_s, 2) if wall_s else None,
        "load_generator_ms_per_decision": None
        if generator_s is None
        else round(generator_s * 1000 / decisions, 3),
    }


def per_decision(before: Sample, after: Sample, decisions: int) -> dict:
    """CPU milliseconds per decision of the watched processes, split by label, with the
    load generator's own CPU apart (never counted as the service's)."""
    if decisions <= 0:
        return {"decisions": 0}
    split = CpuMeter.window(before, after)
    return _figures(
        sum(split.values()), after.at - before.at, decisions, split, after.own - before.own
    )


def in_process(before: Sample, after: Sample, decisions: int) -> dict:
    """The same figures for a system that runs inside the load generator's process (the
    floor): its CPU is this process's."""
    if decisions <= 0:
        return {"decisions": 0}
    own = after.own - before.own
    return _figures(own, after.at - before.at, decisions, {"in_process": own}, None)


def children_seconds() -> float:
    """CPU seconds of this process's waited-for children so far (perf_analyzer runs)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measured(meter: CpuMeter, decisions, run) -> dict:
    """``run()``'s result point with ``cpu`` added: the meter's processes per decision, and
    the load generator (a child process: perf_analyzer) apart. ``decisions()`` counts the
    decisions served so far (Triton's statistics), read before and after."""
    served, before, children = decisions(), meter.sample(), children_seconds()
    point = run()
    after, children_after = meter.sample(), children_seconds()
    n = decisions() - served
    point["cpu"] = per_decision(before, after, n)
    if n > 0:
        point["cpu"]["load_generator_ms_per_decision"] = round(
            (children_after - children) * 1000 / n, 3
        )
    return point
