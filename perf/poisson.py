"""The Python Poisson generator's sweep: every system at each rate in turn."""

from __future__ import annotations

import numpy as np

from perf import cpu, loadgen
from perf.systems import SYSTEMS, within_budget
from perf.triton_stats import statistics_delta


def sweep_python(plan, loop, calls: dict, floor, n_rows: int, stats, meters, progress) -> dict:
    """Every system at each rate in turn; a system leaves the sweep after a rate it failed.
    ``stats()`` reads Triton's statistics, kept per rate for ``triton_bls``; ``meters`` maps
    each networked system to the :class:`~perf.cpu.CpuMeter` of its processes, whose CPU
    per decision is kept per rate (the floor's is this process's)."""
    results = {name: {"rates": [], "stages": [], "triton": []} for name in SYSTEMS}
    active = set(SYSTEMS)
    for k, rate in enumerate(plan.py_rates):
        requests = max(100, int(rate * plan.py_seconds))
        order = list(SYSTEMS) if k % 2 == 0 else list(reversed(SYSTEMS))
        for name in order:
            if name not in active:
                progress.update(1)
                continue
            progress.set_description(f"poisson {name} {rate}/s")
            meter = meters.get(name) or cpu.CpuMeter()
            # A rate that fails is run once more before the system leaves the sweep: on this
            # shared machine one stall (a GC pause, a neighbour) can sink a single run.
            for attempt in (1, 2):
                before = stats() if name == "triton_bls" else None
                cpu_before = meter.sample()
                if name == "floor":
                    result = floor.poisson_run(rate, requests, seed=k)
                else:
                    result = loop.run_until_complete(
                        loadgen.poisson_run(calls[name], rate, requests, n_rows, seed=k)
                    )
                cpu_after = meter.sample()
                row = result.row(target_rps=rate)
                row["attempt"] = attempt
                if within_budget(row):
                    break
            cost = cpu.in_process if name == "floor" else cpu.per_decision
            row["cpu"] = cost(cpu_before, cpu_after, result.ok)
            results[name]["rates"].append(row)
            results[name]["stages"].append(
                {s: round(float(np.mean(v)), 1) for s, v in result.stage_us.items()}
            )
            if before is not None:
                results[name]["triton"].append(statistics_delta(before, stats()))
            if not within_budget(row):
                active.discard(name)
            progress.update(1)
    return results
