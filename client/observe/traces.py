"""Reading stored spans (``client.observe.collector``): one decision's trace as a
waterfall, and the per-stage breakdown of many.

A decision's trace holds, by service: ``fraud-client`` (``client.score``), ``triton``
(``InferRequest`` -> ``fraud_scoring`` with its queue events -> ``compute``; a
``fraud_primary`` span per primary call with its own ``compute``), ``fraud-scoring`` (the
BLS: ``fraud.bls`` -> inputs, validate, features -> ``store.*``, primary, fallback,
rules, respond; ``fraud.publish``) and ``fraud-stream-consumer`` (``kafka.queued``,
``stream.apply``). :func:`stages` names the durations an operator reads (a Triton queue is
the time from ``QUEUE_START`` to the model's ``compute`` span).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from client.observe.collector import SPANS_FILE
from python_backend.paths import OBSERVE

SPANS_DIR = OBSERVE / "spans"
#: The stages of a decision that follow one another (the slowest one owns a decision's time).
SEQUENTIAL = (
    "request_in",
    "triton_queue",
    "stub_in",
    "inputs",
    "validate",
    "features",
    "primary_queue",
    "primary_compute",
    "fallback",
    "rules",
    "respond",
    "response_out",
)
#: The stages of the breakdown, in the order of a decision. ``client`` is the whole call as
#: the client saw it; ``bls`` holds validate to respond, ``store`` is inside ``features``,
#: ``primary`` (the BLS's wait) holds the primary's queue and compute; ``publish`` and the
#: consumer's come after the answer.
STAGES = (
    "client",
    *SEQUENTIAL[:3],
    "bls",
    *SEQUENTIAL[3:6],
    "store",
    "primary",
    *SEQUENTIAL[6:8],
    "primary_hop",
    *SEQUENTIAL[8:],
    "publish",
    "kafka_queued",
    "stream_apply",
)
#: The stages that partition the client's latency (one after another, no overlap).
LATENCY_PARTS = ("request_in", "triton_queue", "bls_compute", "response_out")


def load(folder: str | Path = SPANS_DIR) -> list[dict]:
    path = Path(folder) / SPANS_FILE
    if not path.exists():
        return []
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def by_trace(spans: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for span in spans:
        out[span["trace_id"]].append(span)
    return out


def find_decision(spans: list[dict], transaction_id: str) -> list[dict] | None:
    """Every span of the trace that decided ``transaction_id``, None if none did."""
    for span in spans:
        ids = span["attributes"].get("fraud.transaction_ids") or []
        if transaction_id in ids and span["name"] in ("client.score", "fraud.bls"):
            trace_id = span["trace_id"]
            return [s for s in spans if s["trace_id"] == trace_id]
    return None


def _event(span: dict, name: str) -> int | None:
    return next((t for n, t in span["events"] if n == name), None)


@dataclass
class Decision:
    """One traced decision: its spans and the stage durations (µs) read from them."""

    trace_id: str
    spans: list[dict]
    stage_us: dict[str, float]
    client_stage_us: dict[str, int]  # STAGE_US as the client received it

    @property
    def total_us(self) -> float:
        return self.stage_us.get("client", 0.0)


def stages(trace: list[dict]) -> Decision:
    """The stage durations of one decision's trace (those its spans show)."""
    named = defaultdict(list)
    for span in trace:
        named[span["name"]].append(span)
    children = defaultdict(list)
    for span in trace:
        children[span["parent_id"]].append(span)
    us: dict[str, float] = {}

    def length(span: dict) -> float:
        return (span["end_ns"] - span["start_ns"]) / 1000

    client = named.get("client.score", [None])[0]
    if client is not None:
        us["client"] = length(client)
    model = next(iter(named.get("fraud_scoring", [])), None)
    compute = None
    if model is not None:
        compute = next((c for c in children[model["span_id"]] if c["name"] == "compute"), None)
        queued = _event(model, "QUEUE_START") or model["start_ns"]
        if compute is not None:
            us["triton_queue"] = (compute["start_ns"] - queued) / 1000
            us["bls_compute"] = length(compute)
        request = next((s for s in trace if s["span_id"] == model["parent_id"]), None)
        if client is not None:
            us["request_in"] = (model["start_ns"] - client["start_ns"]) / 1000
            end = compute["end_ns"] if compute is not None else model["end_ns"]
            us["response_out"] = (client["end_ns"] - end) / 1000
        elif request is not None:
            us["request_in"] = (model["start_ns"] - request["start_ns"]) / 1000
    for name, stage in (
        ("fraud.bls", "bls"),
        ("fraud.inputs", "inputs"),
        ("fraud.validate", "validate"),
        ("fraud.features", "features"),
        ("fraud.primary", "primary"),
        ("fraud.fallback", "fallback"),
        ("fraud.rules", "rules"),
        ("fraud.respond", "respond"),
        ("fraud.publish", "publish"),
        ("kafka.queued", "kafka_queued"),
        ("stream.apply", "stream_apply"),
    ):
        if name in named:
            us[stage] = sum(length(s) for s in named[name])
    stores = [s for s in trace if s["name"].startswith("store.")]
    if stores:
        us["store"] = sum(length(s) for s in stores)
    bls = next(iter(named.get("fraud.bls", [])), None)
    if bls is not None and model is not None and compute is not None:
        us["stub_in"] = (bls["start_ns"] - compute["start_ns"]) / 1000  # Triton to the stub
    primary = named.get("fraud_primary", [])
    if primary and "primary" in us:
        # The BLS's wait on the primary less Triton's time for it: the stub's round trip.
        us["primary_hop"] = us["primary"] - length(primary[0])
    if primary:
        span = primary[0]
        compute = next((c for c in children[span["span_id"]] if c["name"] == "compute"), None)
        queued = _event(span, "QUEUE_START") or span["start_ns"]
        if compute is not None:
            us["primary_queue"] = (compute["start_ns"] - queued) / 1000
            us["primary_compute"] = length(compute)
    client_stages = {}
    if client is not None:
        prefix = "fraud.stage_us."
        client_stages = {
            k[len(prefix) :]: v for k, v in client["attributes"].items() if k.startswith(prefix)
        }
    return Decision(trace[0]["trace_id"] if trace else "", trace, us, client_stages)


def ordered(trace: list[dict]) -> list[tuple[int, dict]]:
    """(depth, span) in tree order, children by start time; orphans (a parent not stored,
    such as the client's own root context) are roots."""
    ids = {s["span_id"] for s in trace}
    children = defaultdict(list)
    for span in trace:
        parent = span["parent_id"] if span["parent_id"] in ids else ""
        children[parent].append(span)
    out: list[tuple[int, dict]] = []

    def walk(parent: str, depth: int) -> None:
        for span in sorted(children[parent], key=lambda s: (s["start_ns"], -s["end_ns"])):
            out.append((depth, span))
            walk(span["span_id"], depth + 1)

    walk("", 0)
    return out


def waterfall_text(trace: list[dict], width: int = 48) -> str:
    """The trace as rows: span (indented by depth), service, start offset, duration, bar."""
    rows = ordered(trace)
    start = min(s["start_ns"] for s in trace)
    end = max(s["end_ns"] for s in trace)
    decision_end = max(
        (s["end_ns"] for s in trace if s["service"] != "fraud-stream-consumer"), default=end
    )
    scale = width / max(1, decision_end - start)
    lines = [f"trace {trace[0]['trace_id']}: {(decision_end - start) / 1e6:.2f} ms to answer"]
    lines.append(f"{'span':<34} {'service':<22} {'at ms':>8} {'ms':>8}  ")
    for depth, span in rows:
        offset, length = span["start_ns"] - start, span["end_ns"] - span["start_ns"]
        left = min(width, int(offset * scale))
        bar = " " * left + "#" * max(1, min(width - left, round(length * scale)))
        if span["start_ns"] >= decision_end:
            bar = " " * width + " > after the answer"
        name = ("  " * depth + span["name"])[:34]
        lines.append(
            f"{name:<34} {span['service'][:22]:<22} {offset / 1e6:>8.2f} {length / 1e6:>8.3f}  "
            f"|{bar}"
        )
    return "\n".join(lines)


def waterfall_png(traces: list[list[dict]], path: Path, title: str = "") -> Path:
    """One waterfall per trace, stacked (the slowest first when given so)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    heights = [len(t) for t in traces]
    fig, axes = plt.subplots(
        len(traces), 1, figsize=(11, 0.28 * sum(heights) + 1.2 * len(traces)), squeeze=False
    )
    colours = {
        "fraud-client": "#4c72b0",
        "triton": "#dd8452",
        "fraud-scoring": "#55a868",
        "fraud-stream-consumer": "#8172b2",
    }
    for ax, trace in zip(axes[:, 0], traces, strict=True):
        rows = ordered(trace)
        start = min(s["start_ns"] for s in trace)
        for y, (_depth, span) in enumerate(rows):
            left = (span["start_ns"] - start) / 1e6
            length = max((span["end_ns"] - span["start_ns"]) / 1e6, 0.005)
            ax.barh(y, length, left=left, color=colours.get(span["service"], "#999999"))
            ax.text(left + length, y, f" {length:.2f} ms", va="center", fontsize=7, color="#333333")
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(["  " * d + s["name"] for d, s in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("ms since the client sent the request")
        ax.set_title(f"{title} trace {trace[0]['trace_id'][:12]}…", fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    fig.legend(handles, list(colours), loc="upper right", fontsize=7, ncol=4)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def decisions(spans: list[dict]) -> list[Decision]:
    """Every traced decision (a trace with a client span) among ``spans``."""
    out = []
    for trace in by_trace(spans).values():
        if any(s["name"] == "client.score" for s in trace):
            out.append(stages(trace))
    return out


def breakdown(found: list[Decision]) -> list[dict]:
    """Per stage: decisions that show it, p50 and p99 (ms), and its median share of the
    client's latency."""
    rows = []
    for stage in (*STAGES, "bls_compute"):
        values = [d.stage_us[stage] for d in found if stage in d.stage_us]
        if not values:
            continue
        shares = [
            d.stage_us[stage] / d.total_us for d in found if stage in d.stage_us and d.total_us
        ]
        rows.append(
            {
                "stage": stage,
                "decisions": len(values),
                "p50_ms": float(np.percentile(values, 50)) / 1000,
                "p99_ms": float(np.percentile(values, 99)) / 1000,
                "share_of_total": float(np.median(shares)) if shares else None,
            }
        )
    return rows


def coverage(decision: Decision) -> float | None:
    """The parts that partition the client's latency, summed, over the client's latency."""
    if not decision.total_us or not all(p in decision.stage_us for p in LATENCY_PARTS):
        return None
    return sum(decision.stage_us[p] for p in LATENCY_PARTS) / decision.total_us


def breakdown_table(rows: list[dict]) -> str:
    lines = [
        "| stage | decisions | p50 ms | p99 ms | median share of total |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        share = "" if r["share_of_total"] is None else f"{r['share_of_total']:.1%}"
        lines.append(
            f"| {r['stage']} | {r['decisions']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {share} |"
        )
    return "\n".join(lines)


def breakdown_png(rows: list[dict], path: Path, title: str = "") -> Path:
    """p50 and p99 per stage as bars (log scale: the stages span three decades)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    shown = [r for r in rows if r["stage"] not in ("kafka_queued", "stream_apply")]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(shown) + 1.2))
    y = np.arange(len(shown))
    ax.barh(y - 0.2, [max(r["p50_ms"], 1e-3) for r in shown], 0.4, label="p50")
    ax.barh(y + 0.2, [max(r["p99_ms"], 1e-3) for r in shown], 0.4, label="p99")
    ax.set_yticks(y)
    ax.set_yticklabels([r["stage"] for r in shown], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ms (log scale)")
    ax.set_title(title, fontsize=9, loc="left")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
