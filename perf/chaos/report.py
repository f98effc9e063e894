"""The chaos run's summary, console table, JSON, markdown and timeline plot."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np

from perf.chaos.config import BUDGET_MS, DESCRIPTIONS, SETTLE_S, TARGETS, WARMUP_S
from perf.chaos.load import Load
from perf.chaos.measure import Window, buckets, reconcile, recovery_s, window_stats

#: Faults whose within-budget target counts from SETTLE_S after the injection.
SETTLED = ("replica_crash",)


def _budget_share(fault: str) -> str:
    return "fault_alone_within_budget_share" if fault in SETTLED else "within_budget_share"


def summarize(
    timing, load, windows, records, consumer, events, resources, reloads, system, scale
) -> dict:
    outcomes = load.outcomes
    arrival = np.array([o.arrival_s for o in outcomes])
    per_fault = []
    for w in windows:
        inside = [outcomes[i] for i in np.nonzero((arrival >= w.injected) & (arrival < w.end))[0]]
        stats = window_stats(inside)
        # From SETTLE_S after the injection: what callers saw once the mesh had reacted.
        settled = window_stats([o for o in inside if o.arrival_s >= w.injected + SETTLE_S])
        # The crash alone: from SETTLE_S after the kill until the crashed replica's restart
        # began (that restart is a boot and readmission, measured by the restart faults).
        until = w.lifting if w.lifting is not None else w.lifted
        alone = window_stats([o for o in inside if w.injected + SETTLE_S <= o.arrival_s < until])
        stats.update(
            fault_alone_within_budget_share=alone["within_budget_share"],
            settled_within_budget_share=settled["within_budget_share"],
            settled_decided_share=settled["decided_share"],
            fault=w.fault,
            description=DESCRIPTIONS[w.fault],
            window_s=[round(w.injected, 2), round(w.lifted, 2), round(w.end, 2)],
            held_s=round(w.lifted - w.injected, 1),
            recovery_s=recovery_s(inside, w.lifted, w.end),
            path_recovery_s=recovery_s(inside, w.lifted, w.end, latency=False),
            injection_error=w.error or None,
        )
        if w.fault == "primary_stub_killed":
            stats["watchdog_reloads"] = sum(
                1 for t, _m in reloads if t >= load.t0 + w.injected and t < load.t0 + w.end
            )
        stats["targets_met"] = {
            "decided": (stats["decided_share"] or 0) >= TARGETS["decided"],
            # A crash is held to the budget once Envoy has had SETTLE_S to find it.
            "within_budget": (stats[_budget_share(w.fault)] or 0) >= TARGETS["within_budget"],
            "recovery": stats["recovery_s"] is not None
            and stats["recovery_s"] <= TARGETS["recovery_s"],
        }
        per_fault.append(stats)
    first = windows[0].injected if windows else load.now()
    # The first seconds warm the client's channel and the server's instances: not reported.
    baseline = window_stats([o for o in outcomes if WARMUP_S <= o.arrival_s < first])
    crashes = tuple(w.injected for w in windows if w.fault == "replica_crash")
    log = reconcile(outcomes, records, system.envoy.get("upstream_rq_retry", 0), crashes)
    accepted_ids = {o.transaction_id for o in outcomes if o.ok}
    event_ids = Counter(e for e in events if e.startswith(f"chaos-{system.run_id}-"))
    applied = _both(consumer, "applied")
    committed = consumer.get("committed_at_end")
    stream = {
        "published_distinct": len(event_ids),
        "decided_not_published": len(accepted_ids - set(event_ids)),
        "consumer": consumer,
        "events_on_topic": len(events),
        # Every distinct event applied exactly once (by the consumer, or by the one restarted
        # after it for what it had not committed): none lost, none counted twice.
        "applied_equals_distinct": applied == len(set(events)),
        "distinct_on_topic": len(set(events)),
        # Lost: committed past, neither applied nor a duplicate of one applied (a decision
        # made twice, by a retry, publishes its transaction twice). Lag: not committed yet
        # (still on the topic, not lost: the group reads it when it runs again).
        "lost": None
        if committed is None
        else max(0, committed - applied - _both(consumer, "duplicates")),
        "lag": None if committed is None else len(events) - committed,
    }
    return {
        "scale": scale,
        "timing": asdict(timing),
        "targets": TARGETS,
        "overall": window_stats(outcomes),
        "baseline": baseline,
        "faults": per_fault,
        "decision_log": log,
        "stream": stream,
        "resources": resources.summary(),
        "refill_s": [round(s, 1) for s in system.refills],
        "refill_priority": sorted(set(system.refill_priorities)),
        "replica_restarts": system.restarts,
        "replicas_died_by_themselves": system.unplanned,
        "envoy": system.envoy,
        "all_targets_met": all(all(f["targets_met"].values()) for f in per_fault)
        and log["missing"] == 0
        and log["duplicates_unexplained"] == 0,
    }


def _share(value) -> str:
    return "-" if value is None else f"{value:.2%}"


def _settled(f: dict) -> str:
    text = _share(f.get("settled_within_budget_share"))
    if f.get("fault") in SETTLED:
        text += f" ({_share(f.get('fault_alone_within_budget_share'))})"
    return text


def _recovery(f: dict) -> str:
    """Recovery (latency and paths), then when the paths alone were back, in brackets."""
    if f["fault"] == "baseline":
        return "-"
    full, paths = f["recovery_s"], f.get("path_recovery_s")
    text = "none" if full is None else f"{full:.1f}"
    return f"{text} ({'none' if paths is None else f'{paths:.1f}'})"


def console(summary: dict) -> str:
    lines = [
        f"{'fault':<22}{'offered':>8}{'decided':>9}{'<=95ms':>9}{'p99 ms':>8}"
        f"{'recovery s (paths)':>19}  paths"
    ]
    for f in [{"fault": "baseline", **summary["baseline"], "recovery_s": None}, *summary["faults"]]:
        paths = ", ".join(f"{k} {v}" for k, v in sorted(f["paths"].items()))
        rec = _recovery(f)
        lines.append(
            f"{f['fault']:<22}{f['offered']:>8}{(f['decided_share'] or 0):>9.2%}"
            f"{(f['within_budget_share'] or 0):>9.2%}{(f['p99_ms'] or 0):>8.0f}{rec:>19}  {paths}"
        )
    log = summary["decision_log"]
    lines.append(
        f"decision log: {log['accepted']:,} accepted, {log['missing']} missing, "
        f"{log['duplicates_from_retries']} duplicates from retries "
        f"({log['duplicates_from_mesh_retries']} Envoy's), {log['lost_in_crash']} lost in a crash, "
        f"{log['duplicates_redelivered']} redelivered, {log['duplicates_unexplained']} unexplained"
    )
    return "\n".join(lines)


def write(summary: dict, load: Load, windows: list[Window], out: Path) -> None:
    (out / "chaos.json").write_text(json.dumps(summary, indent=2))
    (out / "chaos.md").write_text(markdown(summary))
    plot_timeline(load, windows, out / "chaos_timeline.png")
    import pandas as pd

    frame = pd.DataFrame([asdict(o) for o in load.outcomes])
    frame["reasons"] = frame["reasons"].map(",".join)
    frame.to_csv(out / "chaos_requests.csv.gz", index=False)


def _placement(summary: dict) -> str:
    if summary.get("primary") == "in_process":
        return "in fraud_scoring's process (FRAUD_PRIMARY=in_process)"
    return "in Triton's fraud_primary, one hop from fraud_scoring"


def markdown(summary: dict) -> str:
    t = summary["timing"]
    lines = [
        "# Chaos run",
        "",
        f"{t['rate']:.0f} requests/s (Poisson, one transaction each), each fault held "
        f"{t['fault_s']:.0f} s, then watched {t['watch_s']:.0f} s. Targets: decided >= 99.9%, "
        "within 95 ms >= 99%, recovery <= 10 s, 0 lost decisions. Shares are of requests "
        "offered from the injection to the end of the watch; latency runs from each "
        "request's scheduled arrival, retries included. Recovery: from the lift to 2 s of "
        "0.5 s buckets with nothing degraded and p95 within the budget; in brackets, nothing "
        "degraded alone (the decisions back on the primary path).",
        "",
        f"Settled: within 95 ms counted from {SETTLE_S:.0f} s after the injection (a crashed "
        "replica is Envoy's to find by then) to the end of the watch; the crash alone: from "
        f"{SETTLE_S:.0f} s after the kill until the crashed replica's restart begins (its "
        "target). Load: one plain client through Envoy, two Triton replicas behind it.",
        "",
        f"The primary ran {_placement(summary)}.",
        *(
            f"Left out: {fault}, {why}."
            for fault, why in summary.get("faults_not_applicable", {}).items()
        ),
        "",
        "| fault | offered | decided | within 95 ms | settled (crash alone) | p99 ms "
        "| recovery s (paths) | retried | paths | errors | targets |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for f in [
        {"fault": "baseline", **summary["baseline"], "recovery_s": None, "targets_met": {}},
        *summary["faults"],
    ]:
        paths = ", ".join(f"{k} {v}" for k, v in sorted(f["paths"].items()))
        errors = ", ".join(f"{k} {v}" for k, v in f["errors"].items()) or "-"
        met = f["targets_met"]
        verdict = (
            "-"
            if not met
            else (
                "met"
                if all(met.values())
                else "missed: " + ", ".join(k for k, v in met.items() if not v)
            )
        )
        rec = _recovery(f)
        lines.append(
            f"| {f['fault']} | {f['offered']} | {(f['decided_share'] or 0):.2%} "
            f"| {(f['within_budget_share'] or 0):.2%} "
            f"| {_settled(f)} | {f['p99_ms']} | {rec} "
            f"| {f['retried']} "
            f"| {paths} | {errors} | {verdict} |"
        )
    log = summary["decision_log"]
    stream = summary["stream"]
    res = summary["resources"]
    lines += [
        "",
        "## Decision log reconciliation",
        "",
        f"- accepted requests: {log['accepted']:,}; logged transactions: "
        f"{log['logged_transactions']:,} ({log['log_records']:,} records)",
        f"- missing: **{log['missing']}** (of which answered by a replica less than 1 s "
        f"before it was killed, still in its producer's memory: {log['lost_in_crash']})",
        f"- requests Envoy retried on another replica: {log['mesh_retries']}; second "
        f"decisions of the same request explained by them: "
        f"{log['duplicates_from_mesh_retries']}",
        f"- duplicates from client retries (distinct request ids): "
        f"{log['duplicates_from_retries']}; redelivered records (same decision id): "
        f"{log['duplicates_redelivered']}; unexplained: {log['duplicates_unexplained']}",
        f"- decided and logged but never answered to the client: {log['logged_not_answered']}",
        "",
        "## Stream",
        "",
        f"- distinct scored transactions on the topic: {stream['published_distinct']:,}; "
        f"decided but not published: {stream['decided_not_published']}",
        f"- consumer: {stream['consumer']}",
        f"- every distinct event applied exactly once: {stream['applied_equals_distinct']}; "
        f"committed past but never applied (lost): {stream.get('lost')}; not committed when "
        f"stopped (lag, still on the topic): {stream.get('lag')}",
        f"- holes in a partition's offsets (a later record served before an earlier one), "
        f"re-read: {_both(stream['consumer'], 'offset_gaps')}; still missing after the "
        f"wait, accepted: {_both(stream['consumer'], 'offset_gaps_accepted')}",
        "",
        "## Replica restarts behind Envoy",
        "",
        *[f"- {r}" for r in summary.get("replica_restarts", [])],
        f"- Envoy's counters over the run: {summary.get('envoy')}",
        "",
        "## Server resources",
        "",
        f"- {res}",
        f"- Redis refills (s): {summary['refill_s']}, at {', '.join(summary['refill_priority'])}",
        f"- the load client itself (this process): {summary.get('load_client')}",
        "",
    ]
    return "\n".join(lines)


def plot_timeline(load: Load, windows: list[Window], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outcomes = load.outcomes
    if not outcomes:
        return
    edges = np.arange(0, max(o.arrival_s for o in outcomes) + 1, 1.0)
    p99, share = [], {p: [] for p in ("primary", "fallback", "rules", "failed")}
    for inside in buckets(outcomes, edges, 1.0):
        lat = [o.latency_ms for o in inside if o.ok]
        p99.append(np.percentile(lat, 99) if lat else np.nan)
        n = max(1, len(inside))
        for p in ("primary", "fallback", "rules"):
            share[p].append(sum(1 for o in inside if o.ok and o.path == p) / n)
        share["failed"].append(sum(1 for o in inside if not o.ok) / n)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(13, 6.5), sharex=True)
    ax1.semilogy(edges, p99, color="black", lw=1, label="p99 latency (1 s buckets)")
    ax1.axhline(BUDGET_MS, color="red", ls="--", lw=1, label=f"{BUDGET_MS:g} ms budget")
    ax1.set_ylabel("ms")
    ax1.legend(loc="upper right", fontsize=8)
    ax2.stackplot(
        edges,
        *share.values(),
        labels=list(share),
        colors=["#4c72b0", "#f0a030", "#c44e52", "black"],
    )
    ax2.set_ylabel("share of requests")
    ax2.set_xlabel("seconds into the run")
    ax2.legend(loc="lower right", fontsize=8)
    for w in windows:
        ax1.axvspan(w.injected, max(w.lifted, w.injected + 0.3), color="gold", alpha=0.3)
        for x in (w.injected, w.lifted):
            ax2.axvline(x, color="black", lw=0.6, ls=":")
        ax1.text(w.injected, ax1.get_ylim()[1], w.fault, rotation=60, fontsize=7, va="top")
    fig.suptitle("Chaos run: latency and the path taken, faults shaded")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _both(consumer: dict, field: str) -> int:
    """A count of the consumer and the one restarted after it, together."""
    return consumer.get(field, 0) + consumer.get("after_restart", {}).get(field, 0)
