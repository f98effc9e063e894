"""``make loop``: the whole loop in one command. It serves, replays days, lets the labels arrive,
retrains, gates, rolls out and promotes, printing each step with its figures.

1. build what is missing (the small scale by default; the embedded SQLite store);
2. start a Kafka-protocol broker, Triton (its decision log on the broker), the stream
   consumer (each card's recent transactions, from the transactions the service scored: the
   velocity features of the day), the heavy model's analysis consumer (heavy scores, the
   review queue, drift metrics) and Prometheus scraping them;
3. replay the newest simulated day over gRPC (an online store of the run's own, filled as of
   the day's start, as ``make features`` fills it; an earlier day would read snapshots from
   its future, so one day): the service decides it and logs what it saw, the stream
   consumer writes the day into that store;
4. the labels arrive (``python -m client labels``): what card holders, issuers and
   investigators report of those decisions, up to ``settle_days`` after the last one;
5. retrain (``client.retrain``): the days before the replay as the champion would have decided
   them (``build_engines.retrain.simulated_service``), the replayed days from the real
   decision log, labels and analysis topics; a plain, a distilled and a fine-tuned
   challenger (the champion's weights refined); the gate;
6. a challenger that passed is published as the next ``fraud_primary`` version and rolled out
   (shadow, canary, promote or roll back) under a steady load, judged on Prometheus;
7. a summary: every step's figures and seconds (``build/reports/loop.json``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from python_backend.fraud.features import MS_PER_DAY
from python_backend.paths import BUILD, DATA, MODEL_REPOSITORY, REPORTS


class SteadyLoad:
    """Transactions of the replayed days sent again (new ids) at ``rate_per_s`` until stopped:
    the traffic a rollout's steps are judged on."""

    def __init__(self, url: str, rows: pd.DataFrame, rate_per_s: float) -> None:
        from client.scoring import FraudClient

        self.client = FraudClient(url)
        self.rows = rows[["transaction_id", "card_id", "terminal_id", "amount", "ts_ms"]]
        self.rate = rate_per_s
        self.sent = self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        records = self.rows.to_dict("records")
        i = 0
        started = time.perf_counter()
        while not self._stop.is_set():
            row = dict(records[i % len(records)])
            row["transaction_id"] = f"{row['transaction_id']}-load-{i}"
            try:
                self.client.score([row])
                self.sent += 1
            except Exception:
                self.failed += 1
            i += 1
            ahead = i / self.rate - (time.perf_counter() - started)
            if ahead > 0:
                self._stop.wait(ahead)

    def __enter__(self) -> SteadyLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        self.client.close()


def served_part(bootstrap: str, heavy_topic: str, decisions_topic: str, labels_topic: str):
    """The replayed days as the service holds them: its decision log, the labels reported of
    it, the heavy model's scores from the analysis topic."""
    from client.labels import read_labels, served_decisions
    from python_backend.fraud.cases import analysis_record
    from python_backend.fraud.decision_log import read_all

    records = served_decisions(bootstrap, decisions_topic)
    records = records[records["inputs"].notna()] if "inputs" in records else records
    labels, refused = read_labels(bootstrap, labels_topic)
    analyses = pd.DataFrame(read_all(bootstrap, heavy_topic, decode=analysis_record.decode))
    heavy = (
        analyses.drop_duplicates("transaction_id").set_index("transaction_id")["heavy_score"]
        if not analyses.empty
        else pd.Series(dtype=np.float64)
    )
    return records, labels, heavy, refused


def run(
    scale: str = "small",
    replay_days: int = 1,
    settle_days: float = 30.0,
    load_rate_per_s: float = 40.0,
    epochs: int | None = None,
    repository: Path = MODEL_REPOSITORY,
    out: Callable[[str], None] = print,
) -> dict:
    from build_engines.primary import PrimaryConfig
    from build_engines.retrain import RetrainData, RetrainSettings, simulated_service, write
    from client import labels as stream_labels
    from client.launcher import ensure_models, feature_settings, warm_up
    from client.local.services import free_port, kafka_broker
    from client.local.triton import Ports, running
    from client.observe.stack import start_prometheus
    from client.replay import replay
    from client.retrain import challenge, champion_folder, publish_challenger
    from client.rollout import Gates, Prometheus, Rollout
    from feature_repo.analysis import AnalysisConsumer, AnalysisMetrics
    from feature_repo.store import feature_store, materialize
    from feature_repo.stream import TransactionConsumer, ensure_topic, writer_for
    from feature_repo.stream.consumer import ConsumerThread
    from python_backend.fraud.cases import open_case_store
    from python_backend.fraud.drift import DriftWindow, Reference, newest_reference
    from python_backend.fraud.heavy_model import HeavyModel
    from python_backend.fraud.online import open_reader

    started = time.perf_counter()
    summary: dict = {"steps": {}}

    def done(step: str, **figures) -> None:
        figures["seconds"] = round(time.perf_counter() - started, 1)
        summary["steps"][step] = figures

    out("== 1. build what is missing (embedded defaults: SQLite online store)")
    scale = ensure_models(scale, out)
    # A folder per run: the case store is idempotent by transaction id, and a second loop
    # replays the same day (its analyses would all count as duplicates).
    work = BUILD / "loop" / time.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True, exist_ok=True)
    # An online store of the run's own, filled as of the replayed day's start: the stream
    # consumer writes the day into it, and the store `make serve` and `make demo` read is
    # left as it was (holding the day's end, it made their replay of the same day read
    # snapshots from its future: every card's recent buffer masked as stale).
    store_settings = replace(feature_settings(scale), repo_dir=work / "features")
    out(f"features: the loop's own online store ({store_settings.reader_location})")
    materialize(feature_store(store_settings), store_settings, log=lambda _m: None)
    env = store_settings.serving_env()
    tx = pd.read_parquet(DATA / scale / "transactions.parquet")
    last_day = int(tx["day"].max())
    days = tx[tx["day"] > last_day - replay_days]
    done("build", scale=scale)
    ports = Ports.free()
    topics = {
        "decisions": f"loop-decisions-{int(time.time())}",
        "analysis": f"loop-analysis-{int(time.time())}",
        "review": f"loop-review-{int(time.time())}",
        "labels": f"loop-labels-{int(time.time())}",
        "scored": f"loop-scored-{int(time.time())}",
    }
    out(
        f"== 2. start a broker, Triton (gRPC 127.0.0.1:{ports.grpc}; its decision log on "
        "the broker), the analysis consumer and Prometheus"
    )
    with (
        kafka_broker() as broker,
        running(
            repository=repository,
            ports=ports,
            env={
                **env,
                "KAFKA_BOOTSTRAP": f"127.0.0.1:{broker.port}",
                "DECISIONS_TOPIC": topics["decisions"],
                "SCORED_TOPIC": topics["scored"],
                "DECISION_SPOOL_DIR": str(work / "decision-spool"),
            },
            log_path=work / "server.log",
        ) as server,
    ):
        bootstrap = f"127.0.0.1:{broker.port}"
        for topic in topics.values():
            ensure_topic(bootstrap, topic)
        warm_up(server)
        heavy = HeavyModel(repository / "fraud_heavy" / "1")
        reference = newest_reference(repository)
        consumer = AnalysisConsumer(
            bootstrap,
            heavy,
            open_case_store(location=str(work / "cases.db")),
            group=f"loop-analysis-{int(time.time())}",
            transactions_topic=topics["scored"],
            decisions_topic=topics["decisions"],
            analysis_topic=topics["analysis"],
            review_topic=topics["review"],
            drift=DriftWindow(Reference.read(reference)) if reference else None,
            log=lambda _m: None,
        )
        metrics_port = free_port()
        AnalysisMetrics(consumer, metrics_port)
        analysis = ConsumerThread(consumer).start()
        stream = ConsumerThread(
            TransactionConsumer(
                bootstrap,
                open_reader(store_settings.kind, store_settings.reader_location),
                writer_for(store_settings, feature_store(store_settings)),
                group=f"loop-stream-{int(time.time())}",
                topic=topics["scored"],
            )
        ).start()
        prometheus_process = start_prometheus(
            free_port(),
            work / "prometheus",
            {
                "triton": [f"127.0.0.1:{ports.metrics}"],
                "fraud-analysis": [f"127.0.0.1:{metrics_port}"],
            },
            interval_s=1,
        )
        try:
            done("started", grpc=server.grpc_url)
            out(
                f"== 3. replay the newest {replay_days} simulated day(s) ({len(days):,} "
                "transactions) over gRPC"
            )
            replayed = replay(server.grpc_url, days, 4)
            out(replayed.table())
            done(
                "replayed",
                transactions=replayed.sent,
                decided=replayed.decided,
                p99_ms=round(replayed.percentile(99), 1),
                decisions=dict(replayed.decisions),
            )
            deadline = time.monotonic() + 120
            while consumer.counts["analysed"] < replayed.decided and time.monotonic() < deadline:
                time.sleep(0.5)
            out(
                f"   the heavy model analysed {consumer.counts['analysed']:,} of them "
                f"({consumer.counts['review']:,} approved ones to review)"
            )

            as_of = int(days["ts_ms"].max()) + int(settle_days * MS_PER_DAY)
            out(
                f"== 4. the labels arrive: {settle_days:g} days of reports after the last "
                "replayed transaction"
            )
            decisions = stream_labels.served_decisions(bootstrap, topics["decisions"])
            queued = stream_labels.queued_for_review(bootstrap, topics["review"])
            labels, _unknown = stream_labels.labels_for(decisions, tx, queued, seed=7)
            to_come = int((labels["reported_ms"] > as_of).sum())
            labels = labels[labels["reported_ms"] <= as_of]
            stream_labels.publish(bootstrap, labels, topics["labels"])
            kinds = labels["kind"].value_counts().to_dict()
            out(
                f"   {len(labels):,} labels of {len(decisions):,} decisions on "
                f"{topics['labels']}: "
                + ", ".join(f"{k} {v:,}" for k, v in kinds.items())
                + f"; {to_come:,} still to come"
            )
            done("labels", published=len(labels), by_kind=kinds, still_to_come=to_come)

            out("== 5. retrain: the champion's earlier days offline, the replayed days as served")
            champion = champion_folder(repository)
            offline, _ = simulated_service(scale, BUILD, repository, champion, settle_days)
            records, served_labels, heavy_scores, _refused = served_part(
                bootstrap, topics["analysis"], topics["decisions"], topics["labels"]
            )
            first_replayed = int(days["ts_ms"].min())
            keep = offline.records["ts_ms"] < first_replayed
            earlier = set(offline.records.loc[keep, "transaction_id"])
            data = RetrainData(
                pd.concat([offline.records[keep], records], ignore_index=True),
                pd.concat(
                    [offline.labels[offline.labels["transaction_id"].isin(earlier)], served_labels],
                    ignore_index=True,
                ),
                heavy=pd.concat([offline.heavy[offline.heavy.index.isin(earlier)], heavy_scores]),
                gbdt=offline.gbdt,
                truth=offline.truth,
                cold_start=offline.cold_start,
            )
            settings = RetrainSettings(
                primary=PrimaryConfig(**({"epochs": epochs} if epochs else {}))
            )
            report = challenge(data, as_of, repository, BUILD / "models" / scale, settings)
            write(report, REPORTS)
            gate = report["gate"]
            chosen = report["models"][f"challenger_{report['chosen']}"]
            out(
                f"   challenger {report['chosen']}: gate PR-AUC {chosen['pr_auc']:.4f} against "
                f"the champion's {report['models']['champion']['pr_auc']:.4f}; gate "
                + ("passed" if gate["passed"] else f"refused ({', '.join(gate['failed'])})")
            )
            done(
                "retrained",
                chosen=report["chosen"],
                gate_passed=gate["passed"],
                failed=gate["failed"],
                models={k: v.get("pr_auc") for k, v in report["models"].items()},
            )
            if not gate["passed"]:
                out("== 6. nothing to roll out: the challenger did not pass its gate")
                summary["outcome"] = "refused"
            else:
                version = publish_challenger(repository, report, champion, out)
                out(
                    f"== 6. roll out fraud_primary {version} (shadow, canary 10% / 50% / 100%) "
                    f"under {load_rate_per_s:g} decisions/s"
                )
                with SteadyLoad(server.grpc_url, days, load_rate_per_s) as load:
                    rollout = Rollout(
                        repository,
                        version,
                        [server.grpc_url],
                        Prometheus(f"http://127.0.0.1:{prometheus_process.port}"),
                        steps=(0.1, 0.5, 1.0),
                        step_s=10,
                        gates=Gates(min_rows=30, max_over_budget=0.05, max_degraded=0.05),
                        log=out,
                    ).run()
                done(
                    "rolled_out",
                    version=version,
                    outcome=rollout["outcome"],
                    reason=rollout.get("reason", ""),
                    load_sent=load.sent,
                    load_failed=load.failed,
                )
                summary["outcome"] = rollout["outcome"]
        finally:
            analysis.stop()
            stream.stop()
            prometheus_process.stop()
    summary["seconds"] = round(time.perf_counter() - started, 1)
    path = REPORTS / "loop.json"
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    out(
        f"== 7. {summary['outcome']} in {summary['seconds']:.0f} s; every step's figures in "
        f"{path}; the gate's table in {REPORTS / 'retrain.md'}"
    )
    return summary
