"""The Grafana dashboards, declared once here (grafanalib) and written as JSON into
``deploy/grafana/dashboards/`` (``python -m client.observe.dashboards``; a unit test fails
when the committed JSON differs from this declaration). Grafana provisions them from
``deploy/grafana/provisioning/``. No Grafana server runs here: the integration tests run
every panel's PromQL against a live Prometheus scraping real servers under load, and fail
on a panel that returns no series.
"""

from __future__ import annotations

import json
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
            ("max(stream_last_applied_age_seconds)", "seconds since the consumer applied"),
        ),
        "short",
        "Decisions made without a stale view, and the age of the stream's last write.",
    ),
    Panel(
        "Stream consumer: lag and throughput",
        (
            ("stream:consumer_lag:max", "lag (records)"),
            ("sum(rate(stream_events_applied_total[1m]))", "applied / s"),
            ("sum(rate(stream_events_rejected_total[5m]))", "rejected / s"),
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
#: uid -> (title, panels).
ALL = {
    "fraud-scoring": ("Fraud scoring", FRAUD),
    "image-api": ("Image classification API", IMAGE),
    "recommender": ("Top-5 recommender", RECOMMENDER),
}


def dashboard(uid: str) -> dict:
    """The Grafana JSON of one dashboard (two panels a row)."""
    from grafanalib._gen import DashboardEncoder
    from grafanalib.core import Dashboard, GridPos, Target, TimeSeries

    title, panels = ALL[uid]
    made = [
        TimeSeries(
            title=panel.title,
            description=panel.description,
            dataSource=DATASOURCE,
            unit=panel.unit,
            targets=[
                Target(expr=expr, legendFormat=legend, refId=chr(ord("A") + i))
                for i, (expr, legend) in enumerate(panel.targets)
            ],
            gridPos=GridPos(h=8, w=12, x=12 * (n % 2), y=8 * (n // 2)),
        )
        for n, panel in enumerate(panels)
    ]
    board = Dashboard(title=title, uid=uid, panels=made, refresh="10s", timezone="utc")
    board = board.auto_panel_ids()
    return json.loads(json.dumps(board.to_json_data(), cls=DashboardEncoder))


def expressions(board: dict) -> list[tuple[str, list[str]]]:
    """(panel title, its PromQL) for every panel of a dashboard's JSON."""
    return [(p["title"], [t["expr"] for t in p.get("targets", [])]) for p in board["panels"]]


def panels_without_series(prometheus_port: int, uid: str) -> list[str]:
    """The titles of ``uid``'s panels none of whose queries returns a series from the
    Prometheus on ``prometheus_port`` (the check a Grafana would show as "No data")."""
    from client.observe.stack import query

    return [
        title
        for title, exprs in expressions(dashboard(uid))
        if not any(query(prometheus_port, expr) for expr in exprs)
    ]


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
