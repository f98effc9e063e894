"""``run``: one chaos run from start to report (see ``perf.chaos``)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from perf.chaos.config import FAULTS, WARMUP_S, Timing
from perf.chaos.faults import NOT_IN_PROCESS, _faults, primary_in_process
from perf.chaos.load import ClientCpu, Load, ResourceWatch
from perf.chaos.measure import Window
from perf.chaos.report import console, summarize, write
from perf.chaos.system import System
from python_backend import paths
from python_backend.paths import BUILD, DATA

# -- the system ------------------------------------------------------------------------


# -- faults ----------------------------------------------------------------------------


# -- load ------------------------------------------------------------------------------


# -- resources -------------------------------------------------------------------------


# -- analysis --------------------------------------------------------------------------


# -- the run ---------------------------------------------------------------------------


async def _schedule(system, load, timing, names, stop, progress, log) -> list[Window]:
    faults = _faults()
    loop = asyncio.get_running_loop()
    windows = []
    await asyncio.sleep(WARMUP_S + timing.baseline_s)
    cycle_started = load.now()
    while True:
        for name in names:
            fault = faults[name]
            error = ""
            await loop.run_in_executor(None, system.heal)
            injected = lifting = load.now()
            try:
                await loop.run_in_executor(None, fault.inject, system)
                if not fault.instantaneous:
                    await asyncio.sleep(timing.fault_s)
                lifting = load.now()
                await loop.run_in_executor(None, fault.lift, system)
            except Exception as err:  # reported, and the run goes on
                error = f"{type(err).__name__}: {err}"
                log(f"chaos: {name}: {error}")
            lifted = load.now()
            await asyncio.sleep(timing.watch_s)
            windows.append(Window(name, injected, lifted, load.now(), error, lifting))
            progress(name)
        if load.now() - cycle_started >= timing.soak_s:
            break
    stop.set()
    return windows


def run(
    quick: bool = False,
    scale: str = "small",
    out: Path = paths.REPORTS,
    log: Callable = print,
    repository: Path | None = None,
    data_dir: Path | None = None,
    work: Path = BUILD / "chaos",
    faults: tuple[str, ...] = FAULTS,
    timing: Timing | None = None,
) -> dict:
    from tqdm import tqdm

    from client.launcher import ensure_models
    from perf import workload
    from python_backend.fraud.decision_log import read_all
    from python_backend.paths import MODEL_REPOSITORY

    timing = timing or Timing.make(quick)
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    if repository is None:
        scale = ensure_models(scale, log)
        repository = MODEL_REPOSITORY
        data_dir = DATA / scale
    rows = workload.rows(workload.sample_transactions(data_dir, 2000))
    system = System(work, repository, data_dir, log)
    not_applicable: dict[str, str] = {}
    try:
        system.start()
        placement = "in_process" if primary_in_process(system) else "triton"
        if placement == "in_process":
            not_applicable = {f: why for f, why in NOT_IN_PROCESS.items() if f in faults}
            faults = tuple(f for f in faults if f not in not_applicable)
            for fault, why in not_applicable.items():
                log(f"chaos: {fault} left out: {why}")
        load = Load(system.url, rows, timing.rate, system.run_id)
        resources = ResourceWatch(system, load.now)
        client_cpu = ClientCpu()
        cycles = 1
        if timing.soak_s:
            per_cycle = len(faults) * (timing.fault_s + timing.watch_s + 3)
            cycles = max(1, int(np.ceil(timing.soak_s / per_cycle)))
        log(
            f"chaos: {timing.rate:.0f} requests/s, {len(faults)} faults x {cycles} cycle(s), "
            f"{timing.fault_s:.0f} s each, watched {timing.watch_s:.0f} s after"
        )
        loop = asyncio.new_event_loop()
        with tqdm(total=len(faults) * cycles, unit="fault", desc="chaos", file=sys.stderr) as bar:

            def progress(name: str) -> None:
                bar.set_postfix_str(name)
                bar.update()

            async def main() -> list[Window]:
                stop = asyncio.Event()
                generator = asyncio.create_task(load.run(stop))
                resources.start()
                client_cpu.start()
                try:
                    return await _schedule(system, load, timing, faults, stop, progress, log)
                finally:
                    stop.set()
                    await generator

            windows = loop.run_until_complete(main())
        loop.close()
        client_cpu.stop()
        resources.stop()
        log("chaos: load stopped; waiting for the decision log and the consumer to drain")
        records = _drain_decisions(system, read_all)
        # The consumer is stopped once the topic has stopped growing and it had time to
        # catch up: then every event on the topic was offered to it.
        events = read_all(system.bootstrap, system.topic, decode=_event_id)
        for _ in range(20):
            time.sleep(1)
            latest = read_all(system.bootstrap, system.topic, decode=_event_id)
            if len(latest) == len(events):
                break
            events = latest
        caught_up = system.wait_caught_up(len(events))
        consumer = system.stop_consumer()
        # At-least-once: what the stopped consumer had not committed, a restarted one reads.
        # A second consumer in the same group drains the rest; the two together must have
        # applied every distinct event once.
        consumer["after_restart"] = system.drain_consumer()
        consumer["committed_before_stop"] = caught_up
        consumer["committed_at_end"] = system.committed()
        reloads = system.reloads
        system.envoy = system.envoy_stats()
    finally:
        system.stop()
    summary = summarize(
        timing, load, windows, records, consumer, events, resources, reloads, system, scale
    )
    summary["load_client"] = client_cpu.summary()
    summary["primary"] = placement
    summary["faults_not_applicable"] = not_applicable
    summary["seconds"] = round(time.perf_counter() - started, 1)
    write(summary, load, windows, out)
    log(console(summary))
    log(
        f"chaos: wrote {out}/chaos.json, chaos.md, chaos_timeline.png in {summary['seconds']:.0f} s"
    )
    return summary


def _event_id(value: bytes) -> str:
    from python_backend.events import decode

    return decode(value).transaction_id


def _drain_decisions(system: System, read_all) -> list[dict]:
    """Wait until the spool is empty (the server replays it once the broker answers), then
    read the whole log."""
    from python_backend.fraud.decision_log import waiting

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not waiting(system.spool):
            break
        time.sleep(0.5)
    time.sleep(2)  # what is queued in the producers is delivered within milliseconds
    return [
        r
        for r in read_all(system.bootstrap, system.decisions)
        if r["transaction_id"].startswith(f"chaos-{system.run_id}-")
    ]
