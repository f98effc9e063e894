"""The Grafana dashboards, declared once here (grafanalib) and written as JSON into
``deploy/grafana/dashboards/`` (``python -m client.observe.dashboards``; a unit test fails
when the committed JSON differs from this declaration). Grafana provisions them from
``deploy/grafana/provisioning/``. No Grafana server runs here: the integration tests run
every panel's PromQL against a live Prometheus scraping real servers under load, and fail
on a panel that returns no series, unless all it reads comes from a process that stack does
not run (:data:`NOT_LIVE`, each with its reason).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from python_backend.paths import ROOT

DEPLOY = ROOT / "deploy" / "grafana"
DASHBOARDS = DEPLOY / "dashboards"
PROVISIONING = DEPLOY / "provisioning"
#: The provisioned data source (provisioning/datasources.yaml).
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}


@dataclass(frozen=True)
class Panel:
    title: str
    #: (PromQL, legend) per line.
    targets: tuple[tuple[str, str], ...]
    unit: str = "short"
    description: str = ""


@dataclass(frozen=True)
class Row:
    """A titled row of panels, laid out below everything declared before it."""

    title: str
    panels: tuple[Panel, ...]


#: Metrics (by name prefix: the exported ones and the recording rules over them) of processes
#: the live check's stack (tests/integration/test_observability.py) does not run, each with
#: why. A panel reading only these is left out of :func:`panels_without_series`'s "no data"
#: check; its queries still run there, and promtool checks them in the unit tests.
NOT_LIVE = {
    "fraud_analysis": "the analysis consumer (python -m feature_repo analyze, the heavy model "
    "over the decision log) is not part of the live stack, which scrapes Triton, the stream "
    "consumer and the watchdog",
}


FRAUD = (
    Panel(
        "Decisions by path and decision",
        (("sum by (path, decision) (rate(fraud_decisions_total[1m]))", "{{path}} {{decision}}"),),
        "reqps",
        "Decisions per second; the path is the rung that decided (primary, fallback, rules).",
    ),
    Panel(
        "Decision latency (BLS, p50 / p99)",
        (
            ("fraud:decision_latency_seconds:p50_rate1m", "p50"),
            ("fraud:decision_latency_seconds:p99_rate1m", "p99"),
        ),
        "s",
        "From the BLS's batch start to its answer (fraud_decision_seconds); budget 95 ms.",
    ),
    Panel(
        "Latency by stage (p99)",
        (("fraud:stage_latency_seconds:p99_rate1m", "{{stage}}"),),
        "s",
        "The stages of STAGE_US: features, primary, fallback, rules.",
    ),
    Panel(
        "Latency budget: share over 95 ms and burn rate",
        (
            ("fraud:over_budget_share:rate5m", "over budget (5 m)"),
            ("fraud:over_budget_share:rate5m / 0.01", "burn rate (1 = on budget)"),
        ),
        "percentunit",
        "SLO: 99% within 95 ms. Alerts: FraudLatencyBudgetBurnFast / Slow.",
    ),
    Panel(
        "Degraded path share and degradations",
        (
            ("fraud:degraded_share:rate5m", "off the primary"),
            ("sum by (reason) (rate(fraud_degradations_total[5m]))", "{{reason}}"),
        ),
        "short",
    ),
    Panel(
        "Circuit breakers (0 closed, 1 half-open, 2 open)",
        (("max by (dependency) (fraud_breaker_state)", "{{dependency}}"),),
    ),
    Panel(
        "Triton queue and compute per request",
        (
            ("triton:queue_us_per_request:rate1m", "queue {{model}}"),
            (
                "sum by (model) (rate(nv_inference_compute_infer_duration_us[1m]))"
                " / sum by (model) (rate(nv_inference_request_success[1m]))",
                "compute {{model}}",
            ),
        ),
        "µs",
    ),
    Panel(
        "Batch sizes (requests per execution)",
        (
            (
                "sum by (model) (rate(nv_inference_count[1m]))"
                " / sum by (model) (rate(nv_inference_exec_count[1m]))",
                "{{model}}",
            ),
        ),
    ),
    Panel(
        "Feature freshness",
        (
            ("sum by (view) (rate(fraud_features_stale_total[5m]))", "stale {{view}}"),
            (
                'max(stream_last_applied_age_seconds{job!="fraud-analysis"})',
                "seconds since the consumer applied",
            ),
        ),
        "short",
        "Decisions made without a stale view, and the age of the stream's last write.",
    ),
    Panel(
        "Stream consumer: lag and throughput",
        (
            ("stream:consumer_lag:max", "lag (records)"),
            ('sum(rate(stream_events_applied_total{job!="fraud-analysis"}[1m]))', "applied / s"),
            ('sum(rate(stream_events_rejected_total{job!="fraud-analysis"}[5m]))', "rejected / s"),
        ),
    ),
    Panel(
        "Decision log",
        (
            ("sum by (outcome) (rate(fraud_decision_log_total[5m]))", "{{outcome}}"),
            ("sum(fraud_decision_log_spooled)", "waiting in the spool"),
        ),
    ),
    Panel(
        "Model versions: rows and call time (rollouts)",
        (
            (
                "sum by (version, role) (rate(fraud_model_rows_total[1m]))",
                "rows/s {{role}} v{{version}}",
            ),
            (
                "histogram_quantile(0.99, sum by (version, role, le) "
                "(rate(fraud_model_seconds_bucket[1m])))",
                "p99 s {{role}} v{{version}}",
            ),
        ),
        "short",
        "Which fraud_primary version decides (champion, canary) or scores beside it (shadow): "
        "python -m client rollout reads the same series.",
    ),
    Panel(
        "Stub watchdog",
        (
            ("sum by (model) (increase(fraud_watchdog_reloads_total[15m]))", "reloads {{model}}"),
            ("rate(fraud_watchdog_checks_total[1m])", "probe rounds / s"),
        ),
    ),
)
ANALYSIS = Row(
    "Analysis (heavy model, off the hot path)",
    (
        Panel(
            "Analysed per second by outcome",
            (("fraud_analysis:records:rate5m", "{{outcome}}"),),
            "reqps",
            "Decisions the analysis consumer read: analysed (a new analysis written), "
            "duplicate (a transaction already analysed), unreadable.",
        ),
        Panel(
            "Review queue",
            (("fraud_analysis:review:rate5m", "sent to review / s"),),
            "reqps",
            "Approved transactions the heavy model scores at or above the review threshold, "
            "sent to the review topic.",
        ),
        Panel(
            "Disagreement share: heavy model against the real-time decision",
            (
                ("fraud_analysis:disagreement_share:rate5m", "5 m"),
                ("fraud_analysis:disagreement_share:rate30m", "30 m (the alert's)"),
                ("fraud_analysis:disagreement_share:rate1d", "baseline (1 d)"),
            ),
            "percentunit",
            "Heavy score at or above the review threshold on an APPROVE, or below it on a "
            "DECLINE. FraudHeavyDisagreementShift: the 30 m share above 2x or below 0.5x the "
            "day's; python -m client cases shows the transactions.",
        ),
        Panel(
            "Analysis lag (decision to analysis, p50 / p99)",
            (
                ("fraud_analysis:lag_seconds:p50_rate5m", "p50"),
                ("fraud_analysis:lag_seconds:p99_rate5m", "p99"),
            ),
            "s",
            "From decided_at_ms to the analysis written; target p99 within 5 s at 200 "
            "decisions/s. FraudAnalysisLagging: p99 over 30 s for 10 min.",
        ),
    ),
)
IMAGE = (
    Panel(
        "Image API latency by stage (p50 / p99)",
        (
            (
                "histogram_quantile(0.5, sum by (stage, le) "
                "(rate(image_api_stage_seconds_bucket[1m])))",
                "p50 {{stage}}",
            ),
            (
                "histogram_quantile(0.99, sum by (stage, le) "
                "(rate(image_api_stage_seconds_bucket[1m])))",
                "p99 {{stage}}",
            ),
        ),
        "s",
    ),
    Panel(
        "Image API requests by status",
        (("sum by (status) (rate(image_api_requests_total[1m]))", "{{status}}"),),
        "reqps",
    ),
    Panel(
        "Image models in Triton (per request)",
        (
            (
                'sum by (model) (rate(nv_inference_request_duration_us{model=~"image_.*"}[1m]))'
                ' / sum by (model) (rate(nv_inference_request_success{model=~"image_.*"}[1m]))',
                "{{model}}",
            ),
        ),
        "µs",
    ),
)
RECOMMENDER = (
    Panel(
        "Recommender requests and latency (budget 80 ms)",
        (
            (
                'sum(rate(nv_inference_request_success{model="recommend_top5"}[1m]))',
                "requests / s",
            ),
            (
                'sum(rate(nv_inference_request_duration_us{model="recommend_top5"}[1m]))'
                ' / sum(rate(nv_inference_request_success{model="recommend_top5"}[1m])) / 1000',
                "ms per request",
            ),
        ),
    ),
    Panel(
        "Recommender queue per model",
        (
            (
                'sum by (model) (rate(nv_inference_queue_duration_us{model=~"recommend_.*"}[1m]))'
                ' / sum by (model) (rate(nv_inference_request_success{model=~"recommend_.*"}'
                "[1m]))",
                "{{model}}",
            ),
        ),
        "µs",
    ),
)
#: uid -> (title, panels and rows).
ALL: dict[str, tuple[str, tuple[Panel | Row, ...]]] = {
    "fraud-scoring": ("Fraud scoring", (*FRAUD, ANALYSIS)),
    "image-api": ("Image classification API", IMAGE),
    "recommender": ("Top-5 recommender", RECOMMENDER),
}


def dashboard(uid: str) -> dict:
    """The Grafana JSON of one dashboard (two panels a line; a row starts a new line)."""
    from grafanalib._gen import DashboardEncoder
    from grafanalib.core import Dashboard, GridPos, RowPanel, Target, TimeSeries

    title, items = ALL[uid]
    made = []
    top, n = 0, 0  # the current section's first line, and the panels placed in it
    for item in items:
        panels = (item,)
        if isinstance(item, Row):
            top += 8 * ((n + 1) // 2)
            made.append(RowPanel(title=item.title, gridPos=GridPos(h=1, w=24, x=0, y=top)))
            top, n, panels = top + 1, 0, item.panels
        for panel in panels:
            made.append(
                TimeSeries(
                    title=panel.title,
                    description=panel.description,
                    dataSource=DATASOURCE,
                    unit=panel.unit,
                    targets=[
                        Target(expr=expr, legendFormat=legend, refId=chr(ord("A") + i))
                        for i, (expr, legend) in enumerate(panel.targets)
                    ],
                    gridPos=GridPos(h=8, w=12, x=12 * (n % 2), y=top + 8 * (n // 2)),
                )
            )
            n += 1
    board = Dashboard(title=title, uid=uid, panels=made, refresh="10s", timezone="utc")
    board = board.auto_panel_ids()
    return json.loads(json.dumps(board.to_json_data(), cls=DashboardEncoder))


def expressions(board: dict) -> list[tuple[str, list[str]]]:
    """(panel title, its PromQL) for every panel of a dashboard's JSON (rows have none)."""
    return [
        (p["title"], [t["expr"] for t in p.get("targets", [])])
        for p in board["panels"]
        if p["type"] != "row"
    ]


_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}


def metrics_read(expr: str) -> set[str]:
    """The metric and recording-rule names a PromQL expression reads: its identifiers less
    label matchers, label lists, ranges, functions and operators."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    names = re.findall(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", text)
    return {name for name in names if name.lower() not in _KEYWORDS}


def not_live(exprs: list[str]) -> str | None:
    """Why a panel with these queries is left out of the live check (:data:`NOT_LIVE`): the
    reason when every metric they read is one of those, else None."""
    reasons = {
        next((why for prefix, why in NOT_LIVE.items() if name.startswith(prefix)), None)
        for name in set().union(*map(metrics_read, exprs))
    }
    if not reasons or None in reasons:
        return None
    return "; ".join(sorted(reasons))


def panels_without_series(prometheus_port: int, uid: str) -> list[str]:
    """The titles of ``uid``'s panels none of whose queries returns a series from the
    Prometheus on ``prometheus_port`` (the check a Grafana would show as "No data"). A panel
    reading only metrics of :data:`NOT_LIVE` is not reported; its queries run all the same
    (a query Prometheus refuses raises)."""
    from client.observe import promql

    empty = []
    for title, exprs in expressions(dashboard(uid)):
        if not_live(exprs) is not None:
            for expr in exprs:
                promql.query(prometheus_port, expr)
        elif not any(promql.query(prometheus_port, expr) for expr in exprs):
            empty.append(title)
    return empty


def render(uid: str) -> str:
    return json.dumps(dashboard(uid), indent=2, sort_keys=True) + "\n"


def write(folder: Path = DASHBOARDS) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for uid in ALL:
        path = folder / f"{uid}.json"
        path.write_text(render(uid))
        out.append(path)
    return out


def committed(uid: str) -> dict:
    return json.loads((DASHBOARDS / f"{uid}.json").read_text())


if __name__ == "__main__":
    for written in write():
        print(f"wrote {written.relative_to(ROOT)}")
