"""A rollout's report: ``rollout-<N>.json`` in ``build/reports/`` (every step, number and
reason, as ``Rollout`` gathered them) and ``rollout-<N>.md`` beside it (``markdown``: a table
of the steps, the score histograms, the reloads, where a rejected version went).
"""

from __future__ import annotations

import json
from pathlib import Path

from python_backend.fraud.rollout import SCORE_BUCKETS


def write_report(report: dict, out: Path) -> None:
    """``rollout-<N>.json`` and ``rollout-<N>.md`` in ``out``, N the challenger."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rollout-{report['challenger']}.json").write_text(json.dumps(report, indent=2))
    (out / f"rollout-{report['challenger']}.md").write_text(markdown(report))


def markdown(report: dict) -> str:
    lines = [
        f"# Rollout of {report['model']} {report['challenger']} "
        f"(champion {report['champion']}): {report['outcome']}",
        "",
        f"{report['reason'] or 'every gate kept at every step'}. "
        f"{report['seconds']:.0f} s on {len(report['replicas'])} replica(s); the challenger "
        f"decided {report['challenger_decided_share']:.1%} of the decisions meanwhile.",
        "",
        "| step | window s | challenger rows | failed | p99 call ms (champion) | PSI (limit) "
        "| over budget | off primary | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in report["steps"]:
        c, k, v = s["challenger"], s["champion"], s["service"]
        lines.append(
            f"| {s['name']} | {s['ended'] - s['started']:.0f} | {c.get('rows', 0):.0f} "
            f"| {_pct(c.get('failed_share'))} | {_ms(c.get('p99_ms'))} ({_ms(k.get('p99_ms'))}) "
            f"| {_round(s['psi'])} ({_round(s.get('psi_limit'))}) "
            f"| {_pct(v.get('over_budget_share'))} | {_pct(v.get('degraded_share'))} "
            f"| {s['verdict']}{': ' + '; '.join(s['reasons']) if s['reasons'] else ''} |"
        )
    lines += [
        "",
        f"Score histograms (buckets ending at {', '.join(f'{b:g}' for b in SCORE_BUCKETS)}, "
        "+Inf), champion then challenger, per step:",
        "",
    ]
    for s in report["steps"]:
        champion, challenger = s["champion"].get("scores"), s["challenger"].get("scores")
        lines.append(f"- {s['name']}: {champion} / {challenger}")
    drifts = [(s["name"], s.get("drift") or {}) for s in report["steps"]]
    if any(d for _, d in drifts):
        lines += [
            "",
            "Drift of live traffic from the training window at each step's end (PSI over the "
            "analysis consumer's newest decisions; over 0.25 is a shift, see FraudFeatureDrift):",
            "",
            "| step | decisions | score PSI | largest input PSI | inputs that moved most |",
            "|---|---:|---:|---:|---|",
        ]
        for name, d in drifts:
            top = ", ".join(f"{k} {v:.3f}" for k, v in (d.get("top_inputs") or {}).items())
            lines.append(
                f"| {name} | {d.get('window_rows', '-')} | {_round(d.get('score_psi'))} "
                f"| {_round(d.get('max_input_psi'))} | {top or '-'} |"
            )
    reloads = report.get("reloads", [])
    if reloads:
        quiesced = [r for r in reloads if not r["in_place"]]
        lines += [
            "",
            f"Reloads: {len(reloads)}, {len(quiesced)} out of Envoy's rotation (drained, "
            f"reloaded, warmed, readmitted), {len(reloads) - len(quiesced)} in place "
            "(no other replica served).",
        ]
        if quiesced:
            for step in ("drain_s", "reload_s", "warm_s", "admit_s"):
                values = sorted(r.get(step, 0.0) for r in quiesced)
                lines.append(
                    f"- {step}: median {values[len(values) // 2]:.2f}, max {values[-1]:.2f}"
                )
    if report["rejected_to"]:
        lines += ["", f"The rejected version was moved to `{report['rejected_to']}`."]
    return "\n".join(lines) + "\n"


def _round(value) -> str:
    return "-" if value is None or value != value else f"{value:.3f}"


def _pct(value) -> str:
    return "-" if value is None else f"{value:.2%}"


def _ms(value) -> str:
    return "-" if value is None else f"{value:.1f}"
