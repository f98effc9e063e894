"""``make perf-analysis`` (``python -m perf analysis``): the analysis consumer, off the hot
path, shown to be.

One Kafka-protocol broker, one Triton server with the fraud models (its decision log and its
scored transactions on that broker) and the analysis consumer (``python -m feature_repo
analyze``: its own process at the lowest CPU priority, a fresh group, fresh ``analysis`` and
``review`` topics, a case store in a temporary folder). The load is Poisson at 200/s, one
transaction per request, every transaction id new to this run (nothing is a duplicate).

- **the lag**: one run with the consumer beside the server; once it has analysed every
  decision of the run, ``analysed_at_ms - decided_at_ms`` per analysis (p50, p99, max), the
  consumer's CPU per analysed decision, and at the end the whole decision log reconciled with
  the case store and the ``analysis`` topic: lost, analysed twice, redelivered;
- **the cost to serving**: the same load with the consumer running and without it, in
  alternating order, ``repeats`` times each: p99 at the client and the server's CPU per
  decision (tritonserver and its stubs), medians, and the ratios with / without against the
  targets (reported, never asserted). A consumer that was stopped is restarted and has caught
  up with what it missed before a run with it is measured.

Output: ``build/reports/analysis.json`` and ``analysis.md``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from python_backend.paths import REPORTS, ROOT, TRITON_STATE

RATE = 200
ARMS = ("with", "without")
#: What the consumer may cost serving (the issue's targets): ratios with / without.
TARGETS = {"p99_ratio": 1.10, "cpu_ratio": 1.05}
#: Requests sent on each run's fresh channel before it is measured (decided and analysed too).
WARM = 100
#: The topics of this run (a fresh broker: the names only need to differ from nothing).
SCORED, DECISIONS = "transactions", "decisions"


class Consumer:
    """One ``python -m feature_repo analyze`` process; its CPU counted from ready to stop."""

    def __init__(self, env: dict[str, str], group: str, index: int, timeout_s: float = 180):
        from client.local.services import child_environment
        from perf import cpu

        self.log_path = TRITON_STATE / f"perf-analysis-consumer-{index}.log"
        self.stats_path = Path(env["CASE_STORE_PATH"]).with_name(f"consumer-{index}.json")
        ready = self.stats_path.with_suffix(".ready")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "feature_repo", "analyze", "--group", group),
                    *("--ready-file", str(ready), "--stats-file", str(self.stats_path)),
                ],
                cwd=ROOT,
                env=child_environment({**env, "PYTHONUNBUFFERED": "1"}),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while not ready.exists():
            self.check_alive("starting")
            if time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"the analysis consumer was not ready in {timeout_s:.0f} s")
            time.sleep(0.2)
        self.meter = cpu.CpuMeter(self.process.pid)
        self.started = self.meter.sample()
        self.priority = self._priority()

    def cpu_s(self) -> float:
        """CPU seconds since it was ready."""
        return sum(self.meter.window(self.started, self.meter.sample()).values())

    def _priority(self) -> dict:
        """What ``lowest_priority()`` reported, and what the kernel says it runs at."""
        import psutil

        found = re.search(r"^analysis: heavy model .*, at (.+)$", self._output(), re.MULTILINE)
        policies = {getattr(os, n): n for n in ("SCHED_OTHER", "SCHED_BATCH", "SCHED_IDLE")}
        return {
            "reported": found.group(1) if found else None,
            "scheduler": policies.get(os.sched_getscheduler(self.process.pid), "other"),
            "nice": psutil.Process(self.process.pid).nice(),
        }

    def _output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_alive(self, doing: str) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"the analysis consumer exited ({self.process.returncode}) while {doing}; "
                f"{self.log_path}:\n{self._output()[-3000:]}"
            )

    def stop(self) -> dict:
        """SIGTERM (the batch in hand is written and committed); its counts and CPU."""
        from client.local.services import stop_process

        cpu_s = self.cpu_s()
        stop_process(self.process, grace_s=60)
        explained = re.search(r"explained in ([\d.]+) s", self._output())
        stats = json.loads(self.stats_path.read_text()) if self.stats_path.exists() else {}
        return {
            "analysed": stats.get("analysed", 0),
            "duplicates": stats.get("duplicate", 0),
            "rejected": stats.get("rejected", 0),
            "cpu_s": round(cpu_s, 3),
            "explained_s": float(explained.group(1)) if explained else None,
            "exit_code": self.process.returncode,
            "priority": self.priority,
        }


def _relabel(rows: list[dict], prefix: str, requests: int) -> list[dict]:
    """``WARM + requests`` requests cycling over ``rows``, each with a transaction id of its
    own: ``<prefix>-w<i>`` for the warm-up, ``<prefix>-<i>`` for the measured ones."""
    ids = [f"{prefix}-w{i}" for i in range(WARM)] + [f"{prefix}-{i}" for i in range(requests)]
    return [{**rows[i % len(rows)], "transaction_id": tx} for i, tx in enumerate(ids)]


def _decision_log(bootstrap: str, spool: Path) -> list[dict]:
    """Every record of the decision log, once the server's spool is empty."""
    from python_backend.fraud.decision_log import read_all, waiting

    deadline = time.monotonic() + 60
    while waiting(spool) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1.0)  # what is queued in the producers is delivered within milliseconds
    return read_all(bootstrap, DECISIONS)


def _analysable(records: list[dict]) -> set[str]:
    return {r["transaction_id"] for r in records if "inputs" in r}


def _settle(store, ids: set[str], consumer: Consumer, timeout_s: float) -> float:
    """Wait until the consumer has analysed every one of ``ids``; the seconds it took."""
    started = time.monotonic()
    missing = set(ids)
    while missing:
        missing -= store.analysed(missing)
        if not missing:
            break
        consumer.check_alive(f"{len(missing):,} decisions were still to analyse")
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(
                f"the analysis consumer had not analysed {len(missing):,} of {len(ids):,} "
                f"decisions {timeout_s:.0f} s after the load (it does not keep up at "
                f"{RATE}/s here?); its log: {consumer.log_path}"
            )
        time.sleep(0.25)
    return time.monotonic() - started


def _spread(values_ms: list[float]) -> dict:
    if not values_ms:
        return {"n": 0}
    a = np.asarray(values_ms, dtype=np.float64)
    return {
        "n": len(a),
        "p50_ms": round(float(np.percentile(a, 50)), 1),
        "p99_ms": round(float(np.percentile(a, 99)), 1),
        "max_ms": round(float(a.max()), 1),
    }


def _lags_ms(store, ids: set[str]) -> list[float]:
    """``analysed_at_ms - decided_at_ms`` of each analysis of ``ids``."""
    cases = (store.case(tx) for tx in sorted(ids))
    return [c["analysed_at_ms"] - c["decided_at_ms"] for c in cases if c is not None]


def run(scale: str = "small", quick: bool = False, log=print) -> dict:
    from tqdm import tqdm

    from client.launcher import warm_up
    from client.local.services import kafka_broker
    from client.local.triton import FRAUD_MODELS, Ports, start
    from feature_repo.stream import ensure_topic
    from perf import cpu, loadgen, workload
    from python_backend import settings
    from python_backend.fraud.cases import analysis_record, open_case_store
    from python_backend.fraud.decision_log import read_all

    seconds, repeats = (20, 2) if quick else (60, 3)
    requests = RATE * seconds
    settle_s = max(180.0, 6.0 * seconds)
    scale, env, rows = workload.prepared(scale, log)
    heavy = Path(settings.HEAVY_MODEL_DIR.get())
    if not (heavy / "metadata.json").exists():
        raise SystemExit(f"no heavy model in {heavy}: run `make engines` first")
    run_id = uuid.uuid4().hex[:8]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="perf-analysis-") as tmp, kafka_broker() as kafka:
        work = Path(tmp)
        bootstrap = f"127.0.0.1:{kafka.port}"
        topics = {
            "SCORED_TOPIC": SCORED,
            "DECISIONS_TOPIC": DECISIONS,
            "ANALYSIS_TOPIC": f"analysis-{run_id}",
            "REVIEW_TOPIC": f"review-{run_id}",
        }
        for topic in topics.values():
            ensure_topic(bootstrap, topic)
        spool = work / "decision-spool"
        consumer_env = {
            "KAFKA_BOOTSTRAP": bootstrap,
            **topics,
            "CASE_STORE_PATH": str(work / "cases.db"),
            "HEAVY_MODEL_DIR": str(heavy),
        }
        server = start(
            ports=Ports.free(),
            models=list(FRAUD_MODELS),
            env={**env, **topics, "KAFKA_BOOTSTRAP": bootstrap, "DECISION_SPOOL_DIR": str(spool)},
            log_path=TRITON_STATE / "perf-analysis.log",
        )
        store = open_case_store("sqlite", str(work / "cases.db"))
        group = f"perf-analysis-{run_id}"
        instances: list[dict] = []
        consumer: Consumer | None = None
        meters = {
            "serving": cpu.CpuMeter(server.process.pid),
            "broker": cpu.CpuMeter(kafka.process.pid),
        }
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)  # the gRPC channels are made for this loop

        def consumer_running() -> Consumer:
            """The consumer, started if it is not, and caught up with the whole log."""
            nonlocal consumer
            if consumer is None:
                consumer = Consumer(consumer_env, group, len(instances))
            _settle(store, _analysable(_decision_log(bootstrap, spool)), consumer, settle_s)
            return consumer

        def consumer_stopped() -> None:
            nonlocal consumer
            if consumer is not None:
                instances.append(consumer.stop())
                consumer = None

        def measure(label: str, seed: int) -> dict:
            """One run of ``requests`` at ``RATE``; with the consumer (if running) settled
            after it: its CPU per analysed decision and the run's lag."""
            call, close = loadgen.grpc_call(
                server.grpc_url, "fraud_scoring", _relabel(rows, f"an-{run_id}-{label}", requests)
            )
            loop.run_until_complete(loadgen.poisson_run(call, RATE, WARM, WARM))  # channel warm
            watched = dict(meters, consumer=consumer.meter) if consumer else meters
            analysed_before = store.counts()["analyses"]
            before = {name: m.sample() for name, m in watched.items()}
            result = loop.run_until_complete(
                loadgen.poisson_run(lambda i: call(WARM + i), RATE, requests, requests, seed=seed)
            )
            after = {name: m.sample() for name, m in watched.items()}
            loop.run_until_complete(close())
            row = result.row(target_rps=RATE)
            row["label"] = label
            row["cpu"] = cpu.per_decision(before["serving"], after["serving"], result.ok)
            row["broker_cpu_ms_per_decision"] = cpu.per_decision(
                before["broker"], after["broker"], result.ok
            ).get("cpu_ms_per_decision")
            if consumer is not None:
                decided = _analysable(_decision_log(bootstrap, spool))
                row["settled_s"] = round(_settle(store, decided, consumer, settle_s), 1)
                settled = consumer.meter.sample()
                analysed = store.counts()["analyses"] - analysed_before
                consumer_s = sum(consumer.meter.window(before["consumer"], settled).values())
                row["consumer"] = {
                    "analysed": analysed,
                    "cpu_s": round(consumer_s, 3),
                    "cpu_ms_per_analysed": round(consumer_s * 1000 / analysed, 3)
                    if analysed
                    else None,
                    "cpu_ms_per_decision_during_load": round(
                        sum(consumer.meter.window(before["consumer"], after["consumer"]).values())
                        * 1000
                        / max(1, result.ok),
                        3,
                    ),
                }
                run_ids = {tx for tx in decided if tx.startswith(f"an-{run_id}-{label}-")}
                row["lag"] = _spread(_lags_ms(store, run_ids - _warm_ids(run_id, label)))
            return row

        try:
            warm_up(server, 100)
            progress = tqdm(total=1 + 2 * repeats, desc="perf-analysis", unit="run")
            consumer_running()
            progress.set_postfix_str("lag")
            lag_run = measure("lag", seed=99)
            progress.update(1)
            results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
            for k in range(repeats):
                for arm in ARMS if k % 2 == 0 else tuple(reversed(ARMS)):
                    progress.set_postfix_str(f"{arm} consumer, repeat {k + 1}")
                    if arm == "with":
                        consumer_running()
                    else:
                        consumer_stopped()
                    results[arm].append(measure(f"{arm}{k}", seed=k))
                    progress.update(1)
            progress.set_postfix_str("reconciling")
            consumer_running()  # what the runs without it decided is analysed too
            consumer_stopped()
            progress.close()
            records = _decision_log(bootstrap, spool)
            on_topic = read_all(bootstrap, topics["ANALYSIS_TOPIC"], decode=analysis_record.decode)
            published = [r["transaction_id"] for r in on_topic]
            decided = _analysable(records)
            analysed = store.analysed(decided)
            reconciled = {
                "decision_records": len(records),
                "decisions": len(decided),
                "without_inputs": len({r["transaction_id"] for r in records} - decided),
                "analysed": len(analysed),
                "lost": len(decided - analysed),
                "analysed_twice": store.counts()["analyses"] - len(analysed),
                "published": len(published),
                "redeliveries": len(published) - len(set(published)),
                "unpublished": len(decided & analysed - set(published)),
            }
        finally:
            if consumer is not None:
                instances.append(consumer.stop())
            loop.close()
            store.close()
            server.stop()
    summary = _summary(
        scale,
        seconds,
        requests,
        lag_run,
        results,
        reconciled,
        instances,
        time.perf_counter() - started,
    )
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "analysis.json").write_text(json.dumps(summary, indent=2))
    (REPORTS / "analysis.md").write_text(markdown(summary))
    log(markdown(summary))
    log(f"results: {REPORTS / 'analysis.json'}, {REPORTS / 'analysis.md'}")
    return summary


def _warm_ids(run_id: str, label: str) -> set[str]:
    return {f"an-{run_id}-{label}-w{i}" for i in range(WARM)}


def _median(rows: list[dict], key) -> float | None:
    values = [v for v in (key(r) for r in rows) if v is not None]
    return round(float(np.median(values)), 3) if values else None


def _arm(rows: list[dict]) -> dict:
    return {
        "repeats": len(rows),
        "p50_ms": _median(rows, lambda r: r["p50_ms"]),
        "p99_ms": _median(rows, lambda r: r["p99_ms"]),
        "within_95ms": _median(rows, lambda r: r["within_95ms"]),
        "achieved_rps": _median(rows, lambda r: r["achieved_rps"]),
        "errors": sum(sum(r["errors"].values()) for r in rows),
        "serving_cpu_ms_per_decision": _median(rows, lambda r: r["cpu"]["cpu_ms_per_decision"]),
        "broker_cpu_ms_per_decision": _median(rows, lambda r: r["broker_cpu_ms_per_decision"]),
        "consumer_cpu_ms_per_analysed": _median(
            rows, lambda r: r.get("consumer", {}).get("cpu_ms_per_analysed")
        ),
        "runs": rows,
    }


def _summary(
    scale: str,
    seconds: int,
    requests: int,
    lag_run: dict,
    results: dict[str, list[dict]],
    reconciled: dict,
    instances: list[dict],
    wall_s: float,
) -> dict:
    arms = {arm: _arm(rows) for arm, rows in results.items()}
    with_, without = arms["with"], arms["without"]
    ratios = {
        "p99_ratio": round(with_["p99_ms"] / without["p99_ms"], 3),
        "cpu_ratio": round(
            with_["serving_cpu_ms_per_decision"] / without["serving_cpu_ms_per_decision"], 3
        ),
    }
    # Paired: each repeat's two runs ran back to back; the median of their ratios.
    pairs = list(zip(results["with"], results["without"], strict=True))
    paired = {
        "p99_ratio": round(float(np.median([w["p99_ms"] / o["p99_ms"] for w, o in pairs])), 3),
        "cpu_ratio": round(
            float(
                np.median(
                    [
                        w["cpu"]["cpu_ms_per_decision"] / o["cpu"]["cpu_ms_per_decision"]
                        for w, o in pairs
                    ]
                )
            ),
            3,
        ),
    }
    cpu_s = sum(i["cpu_s"] for i in instances)
    analysed = sum(i["analysed"] for i in instances)
    explained = [i["explained_s"] for i in instances if i["explained_s"] is not None]
    explained_s = sum(explained) if explained else None
    return {
        "machine": "this machine: 2 cores, shared; generator, broker, server and consumer on them",
        "scale": scale,
        "rate": RATE,
        "seconds_per_run": seconds,
        "requests_per_run": requests,
        "repeats": len(pairs),
        "wall_s": round(wall_s, 1),
        "priority": instances[0]["priority"] if instances else None,
        "lag_ms": lag_run["lag"],
        "lag_run": lag_run,
        **reconciled,
        "consumer_cpu_ms_per_decision": lag_run["consumer"]["cpu_ms_per_analysed"],
        "consumer": {
            "instances": instances,
            "analysed": analysed,
            "cpu_s": round(cpu_s, 3),
            "cpu_ms_per_analysed": round(cpu_s * 1000 / analysed, 3) if analysed else None,
            # Wall seconds inside the explainer, by the consumer's own clock: at SCHED_IDLE
            # they include waiting for a core, so they are no share of its CPU seconds.
            "explained_wall_s": explained_s,
            "explained_wall_ms_per_analysed": round(explained_s * 1000 / analysed, 3)
            if explained_s is not None and analysed
            else None,
            "exit_codes": [i["exit_code"] for i in instances],
        },
        "serving": arms,
        "ratios": ratios,
        "ratios_paired": paired,
        "targets": TARGETS,
        "targets_met": {k: ratios[k] <= TARGETS[k] for k in TARGETS},
    }


def markdown(summary: dict) -> str:
    lag, c = summary["lag_ms"], summary["consumer"]
    with_, without = summary["serving"]["with"], summary["serving"]["without"]
    ratios, paired, met = summary["ratios"], summary["ratios_paired"], summary["targets_met"]
    priority = summary["priority"] or {}
    explained = (
        f"; the explainer {c['explained_wall_s']:.1f} s of wall time, "
        f"{c['explained_wall_ms_per_analysed']:.1f} ms per analysis"
        if c["explained_wall_s"] is not None
        else ""
    )
    exits = [code for code in c["exit_codes"] if code != 0]

    def verdict(key: str) -> str:
        return f"{ratios[key]:.3f}x (paired {paired[key]:.3f}x; target <= {TARGETS[key]:.2f}: " + (
            "met)" if met[key] else "missed)"
        )

    lines = [
        "# The analysis consumer beside the service",
        "",
        f"{summary['rate']} requests/s (Poisson), {summary['seconds_per_run']} s "
        f"({summary['requests_per_run']:,} requests) per run; {summary['machine']}.",
        "",
        f"Consumer at {priority.get('reported')} (the kernel: {priority.get('scheduler')}, "
        f"nice {priority.get('nice')}). Lag from decision to analysis over "
        f"{lag.get('n', 0):,} decisions: p50 {lag.get('p50_ms', 0):,.0f} ms, p99 "
        f"{lag.get('p99_ms', 0):,.0f} ms, max {lag.get('max_ms', 0):,.0f} ms. Decision log "
        f"reconciled: {summary['decisions']:,} decided, {summary['analysed']:,} analysed, "
        f"{summary['lost']} lost, {summary['analysed_twice']} analysed twice, "
        f"{summary['redeliveries']} redelivered on the analysis topic. Consumer CPU "
        f"{summary['consumer_cpu_ms_per_decision']:.2f} ms per analysed decision in the lag run "
        f"({c['cpu_ms_per_analysed']:.2f} over its life{explained}); it had analysed the lag "
        f"run's last decision {summary['lag_run']['settled_s']:.0f} s after the load ended."
        + (f" A consumer stopped with SIGTERM exited {exits}: see its log." if exits else ""),
        "",
        "| consumer | p50 ms | p99 ms | within 95 ms | errors | serving CPU ms/decision "
        "| broker CPU ms/decision | consumer CPU ms/analysed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, arm in (("running", with_), ("stopped", without)):
        consumer = arm["consumer_cpu_ms_per_analysed"]
        lines.append(
            f"| {name} | {arm['p50_ms']:.2f} | {arm['p99_ms']:.2f} | {arm['within_95ms']:.2%} "
            f"| {arm['errors']} | {arm['serving_cpu_ms_per_decision']:.3f} "
            f"| {arm['broker_cpu_ms_per_decision']:.3f} "
            f"| {'-' if consumer is None else f'{consumer:.3f}'} |"
        )
    lines += [
        "",
        f"With / without ({with_['repeats']} runs each, alternating, medians): p99 "
        f"{verdict('p99_ratio')}; serving CPU per decision {verdict('cpu_ratio')}.",
        "",
    ]
    return "\n".join(lines)
