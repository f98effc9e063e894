"""``make demo`` (``python -m client demo``), step by step: build what is missing, serve,
replay the last simulated day over gRPC, the open world, the primary taken away on purpose,
(with the primary behind Triton's hop, ``FRAUD_PRIMARY=triton``) its stubs killed while the
watchdog reloads it, the summary in ``build/reports/demo.json``.

:func:`run` is what the command calls, and what ``tests/integration/test_demo.py`` calls on
the suite's tiny build to check what it prints against the server's own counters.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from client.local.triton import Ports, Server
from client.open_world import Outcome
from client.replay import ReplaySummary
from python_backend.paths import DATA, MODEL_REPOSITORY, REPORTS, ROOT, TRITON_STATE

#: When ``run`` calls ``on_step(name, server)``, in order: the server started and warmed up,
#: then after each step that sends transactions (``primary_stub_killed`` only where the
#: primary is Triton's ``fraud_primary``: in ``fraud_scoring``'s process it has no stub).
STEPS = (
    "started",
    "normal",
    "open_world",
    "primary_unloaded",
    "primary_stub_killed",
    "analysed",
)
#: Genuine purchases of the replayed day that the open world sends again, four ways.
OPEN_WORLD_ROWS = 400


@dataclass
class DemoResult:
    """What each step got back, as the demo's client saw it."""

    normal: ReplaySummary
    open_world: dict[str, Outcome]
    primary_unloaded: ReplaySummary
    #: None where the primary runs in ``fraud_scoring``'s process (no stub of its own).
    primary_stub_killed: ReplaySummary | None
    report_path: Path
    #: The case the demo opened at its end (its analysis), and the analyses' counts.
    case: dict | None = None
    analysis: dict | None = None

    @property
    def replays(self) -> tuple[ReplaySummary, ...]:
        runs = (self.normal, self.primary_unloaded, self.primary_stub_killed)
        return tuple(r for r in runs if r is not None)

    @property
    def every_request_decided(self) -> bool:
        return all(r.decided == r.sent for r in self.replays)

    def as_dict(self) -> dict:
        """``demo.json``."""
        return {
            "normal": self.normal.as_dict(),
            "primary_unloaded": self.primary_unloaded.as_dict(),
            "primary_stub_killed": (
                None if self.primary_stub_killed is None else self.primary_stub_killed.as_dict()
            ),
            "open_world": {k: o.as_dict() for k, o in self.open_world.items()},
            "analysis": self.analysis,
            "case": None if self.case is None else self.case["transaction_id"],
        }


def last_day(data: Path, limit: int | None) -> pd.DataFrame:
    """The last simulated day of ``data``'s transactions (its first ``limit`` rows)."""
    from python_backend.fraud.features import MS_PER_DAY

    tx = pd.read_parquet(data / "transactions.parquet")
    start = int(tx["ts_ms"].max()) // MS_PER_DAY * MS_PER_DAY
    day = tx[tx["ts_ms"] >= start]
    return day.head(limit) if limit else day


def run(
    scale: str = "small",
    *,
    repository: Path = MODEL_REPOSITORY,
    env: dict[str, str] | None = None,
    data: Path | None = None,
    limit: int | None = 3_000,
    outage: int = 500,
    concurrency: int = 4,
    kill_rate_per_s: float = 100,
    state_dir: Path = TRITON_STATE,
    report_path: Path = REPORTS / "demo.json",
    cases_path: Path | None = None,
    out: Callable[[str], None] = print,
    on_step: Callable[[str, Server], None] | None = None,
) -> DemoResult:
    """The demo from start to finish; the server is stopped when it returns.

    ``env`` None: build what is missing at ``scale`` (the project's repository, the embedded
    SQLite store), as ``make demo`` does; given: ``repository`` is built and the online
    store ``env`` names is filled. ``data``: the folder of ``transactions.parquet`` (the
    built scale's by default). ``kill_rate_per_s``: the pace of the replay after the stub
    kill, which must outlast the watchdog's reload to show the primary back. ``state_dir``:
    where the server's and the watchdog's logs go. ``cases_path``: the case store the
    analysis fills (``CASE_STORE_PATH`` by default). ``on_step(name, server)`` is called at
    each of :data:`STEPS`, before the next begins."""
    from client.launcher import ensure_features, ensure_models, warm_up
    from client.local.operator import (
        admin_client,
        primary_in_process,
        restore_primary,
        take_primary_away,
    )
    from client.local.services import kafka_broker
    from client.local.triton import running
    from client.open_world import score_variants, table
    from client.replay import replay

    def step(name: str, server: Server) -> None:
        if on_step is not None:
            on_step(name, server)

    out("== 1. build what is missing (embedded defaults: SQLite online store)")
    if env is None:
        scale = ensure_models(scale, out)
        env = ensure_features(scale, out)
    else:
        out(f"models: given ({repository}); online store: given ({env.get('FEATURE_STORE')})")
    ports = Ports.free()
    out(
        f"== 2. start Triton (gRPC 127.0.0.1:{ports.grpc}, models loaded explicitly) and a "
        "Kafka-protocol broker for its decision log"
    )
    with (
        kafka_broker() as broker,
        running(
            repository=repository,
            ports=ports,
            env={
                **env,
                "KAFKA_BOOTSTRAP": f"127.0.0.1:{broker.port}",
                "DECISION_SPOOL_DIR": str(state_dir / "decision-spool"),
            },
            log_path=state_dir / "server.log",
            watchdog=True,
        ) as server,
    ):
        warm_up(server)
        step("started", server)
        day = last_day(data or DATA / scale, limit)
        out(
            f"== 3. replay {len(day):,} transactions of the last simulated day over gRPC, "
            f"concurrency {concurrency}"
        )
        normal = replay(server.grpc_url, day, concurrency)
        out(normal.table())
        step("normal", server)
        genuine = day[day["is_fraud"] == 0].head(OPEN_WORLD_ROWS)
        out(
            f"== 4. the open world: {len(genuine)} of those genuine purchases again, at "
            "terminals and from cards the store has never seen, and 45 days later"
        )
        open_world = score_variants(server.grpc_url, genuine)
        out(table(open_world))
        step("open_world", server)
        outage_rows = day.sample(min(len(day), outage), random_state=1)
        admin = admin_client(server.grpc_url)
        in_process = primary_in_process(admin)
        where = "in fraud_scoring's process" if in_process else "Triton's fraud_primary"
        out(
            f"== 5. take the primary away on purpose ({where}: "
            f"{'its artefact pointed at nothing' if in_process else 'unloaded'}), replay "
            f"{len(outage_rows):,} more"
        )
        take_primary_away(admin)
        primary_unloaded = replay(server.grpc_url, outage_rows, concurrency)
        restore_primary(admin)
        admin.close()
        out(primary_unloaded.table())
        step("primary_unloaded", server)
        killed = None
        if in_process:
            out(
                "== 6. no stub to kill: the primary runs in fraud_scoring's process, under the "
                "same deadline (FRAUD_PRIMARY=triton puts it behind Triton's hop, where this "
                "step kills its stubs while the watchdog reloads it)"
            )
        else:
            after_kill = day.sample(min(len(day), 2 * outage), random_state=2)
            out(
                "== 6. kill -9 fraud_primary's stub processes (as the OOM killer would); replay "
                f"{len(after_kill):,} more at {kill_rate_per_s:g}/s while the stub watchdog "
                "reloads it"
            )
            kill_stubs("fraud_primary", server.process.pid)
            killed = replay(server.grpc_url, after_kill, concurrency, rate_per_s=kill_rate_per_s)
            out(killed.table())
            step("primary_stub_killed", server)
        result = DemoResult(normal, open_world, primary_unloaded, killed, report_path)
        runs = result.replays
        after = (
            ""
            if killed is None
            else f"; after the stub kill: {dict(killed.paths)} "
            f"(watchdog: {server.log_path.with_name('watchdog.log')})"
        )
        out(
            f"== 7. every request got a decision: "
            f"{'yes' if result.every_request_decided else 'NO'} "
            f"({sum(r.decided for r in runs):,} of {sum(r.sent for r in runs):,}); "
            f"paths with the primary away: {dict(primary_unloaded.paths)}{after}"
        )
        heavy = repository / "fraud_heavy" / "1"
        out(
            "== 8. the heavy model studies every decision, off the hot path "
            "(`python -m feature_repo analyze` on the decision log), and opens a case"
        )
        result.analysis, result.case = analyse(
            f"127.0.0.1:{broker.port}", heavy, cases_path, report_path.parent, out
        )
        step("analysed", server)
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
        out(f"== 9. stopping the server; summary in {_shown(report_path)}")
        out(
            "   next: `make serve` then `make observe` (span collector and Prometheus beside it:"
            " trace a decision with `python -m client score ... --trace`, then `python -m "
            "client trace <id>`); `make trace-report` for where every millisecond goes"
        )
        out(
            "   the learning loop: `make loop` serves a day, lets 30 days of labels arrive, "
            "retrains the primary (distilled from the heavy model), gates it and rolls it out"
        )
    return result


def _shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def analyse(
    bootstrap: str, heavy: Path, cases_path: Path | None, reports: Path, out: Callable
) -> tuple[dict, dict | None]:
    """The analysis consumer over the demo's decision log until it is idle, then one case
    opened: a review case if the heavy model sent any, else its most suspicious decision.
    Returns the counts and the case's analysis."""
    from client.investigation import case_png, case_text, load_case
    from feature_repo.analysis import AnalysisConsumer
    from python_backend import settings
    from python_backend.fraud.cases import open_case_store
    from python_backend.fraud.explain import Explainer
    from python_backend.fraud.heavy_model import HeavyModel

    if not (heavy / "metadata.json").exists():
        out(f"   no heavy model in {heavy}: `make engines` builds it")
        return {}, None
    store = open_case_store(location=str(cases_path) if cases_path else None)
    model = HeavyModel(heavy)
    consumer = AnalysisConsumer(
        bootstrap,
        model,
        store,
        explainer=Explainer(model),
        group="demo-analysis",
        transactions_topic=settings.SCORED_TOPIC.get(),
        decisions_topic=settings.DECISIONS_TOPIC.get(),
        log=lambda _m: None,
    )
    try:
        consumer.run(until_idle_s=3.0, max_seconds=300)
    finally:
        consumer.close()
    counts = dict(consumer.counts)
    out(
        f"   analysed {counts.get('analysed', 0):,} decisions ({counts.get('review', 0):,} "
        f"approved ones to review, {counts.get('disagreements', 0):,} disagreements with the "
        f"real-time decision) into {getattr(store, 'path', store)}"
    )
    chosen = _worth_opening(store)
    case = load_case(store, chosen) if chosen else None
    if case is not None:
        out(case_text(case))
        picture = case_png(case, reports / "demo_case.png")
        out(
            f"   its timeline: {_shown(picture)}; any other: `python -m client case <id>`, the "
            "queue: `python -m client cases`"
        )
    store.close()
    return counts, None if case is None else case.analysis


def _worth_opening(store) -> str | None:
    """The replayed day's review case the heavy model is surest of, else its most suspicious
    decision (the warm-up's synthetic requests left out)."""
    for rows in (store.review_queue(1_000), store.highest(1_000)):
        replayed = [r for r in rows if not r["transaction_id"].startswith("warm-up-")]
        if replayed:
            return max(replayed, key=lambda r: r["heavy_score"])["transaction_id"]
    return None


def kill_stubs(model: str, server_pid: int) -> None:
    """``kill -9`` of ``model``'s Python-backend stubs under the server ``server_pid``."""
    from client.local.services import stub_pids

    for pid in stub_pids(model, server_pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
