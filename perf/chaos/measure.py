"""What a window of outcomes says: decided, within budget, degraded, recovery time; and the
reconciliation of accepted requests against the decision log."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from perf.chaos.config import BUDGET_MS
from perf.chaos.load import Outcome
from python_backend.fraud.reasons import is_degraded


def degraded(o: Outcome) -> bool:
    return (not o.ok) or o.path != "primary" or any(is_degraded(r) for r in o.reasons)


def window_stats(outcomes: list[Outcome]) -> dict:
    n = len(outcomes)
    ok = [o for o in outcomes if o.ok]
    lat = np.array([o.latency_ms for o in ok]) if ok else np.zeros(0)
    within = int(np.sum(lat <= BUDGET_MS))
    reasons = Counter(r for o in ok for r in set(o.reasons) if is_degraded(r))
    return {
        "offered": n,
        "decided": len(ok),
        "decided_share": round(len(ok) / n, 5) if n else None,
        "within_budget_share": round(within / n, 5) if n else None,
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
        "max_ms": round(float(lat.max()), 1) if len(lat) else None,
        "retried": sum(1 for o in outcomes if o.attempts > 1),
        "errors": dict(Counter(o.error for o in outcomes if not o.ok)),
        "retried_after": dict(Counter(o.error for o in outcomes if o.ok and o.attempts > 1)),
        "paths": dict(Counter(o.path for o in ok)),
        "degradations": dict(reasons.most_common(8)),
    }


def buckets(outcomes: list[Outcome], edges: np.ndarray, width: float) -> list[list[Outcome]]:
    """The outcomes that arrived in ``[edge, edge + width)``, for each of the ascending
    ``edges``: one sort, then a binary search per edge (a soak has hundreds of thousands)."""
    ordered = sorted(outcomes, key=lambda o: o.arrival_s)
    arrival = np.array([o.arrival_s for o in ordered])
    starts = np.searchsorted(arrival, edges)
    ends = np.searchsorted(arrival, edges + width)
    return [ordered[a:b] for a, b in zip(starts, ends, strict=True)]


def recovery_s(
    outcomes: list[Outcome],
    lifted: float,
    end: float,
    bucket_s: float = 0.5,
    hold: int = 4,
    latency: bool = True,
):
    """Seconds from ``lifted`` to the start of the first run of ``hold`` healthy buckets
    (2 s): nothing degraded and (``latency``) the bucket's p95 within the budget. None: not
    within the watch. (A run, not "healthy to the end": the next fault's injection starts
    right after.) ``latency=False`` is when the decisions came back to the primary path,
    which a machine whose own p95 is near the budget can reach long before the latency."""
    edges = np.arange(lifted, end - bucket_s / 2, bucket_s)
    healthy = []
    for inside in buckets(outcomes, edges, bucket_s):
        lat = [o.latency_ms for o in inside if o.ok]
        good = (
            bool(inside)
            and not any(degraded(o) for o in inside)
            and (not latency or float(np.percentile(lat, 95)) <= BUDGET_MS)
        )
        healthy.append(good)
    for k in range(len(healthy) - hold + 1):
        if all(healthy[k : k + hold]):
            return round(float(edges[k] - lifted), 2)
    return None


def reconcile(
    outcomes: list[Outcome],
    records: list[dict],
    mesh_retries: int = 0,
    crashes: tuple[float, ...] = (),
    crash_window_s: float = 1.0,
) -> dict:
    """Accepted requests against the decision log.

    ``mesh_retries``: the requests Envoy sent again to another replica (its
    ``upstream_rq_retry``); each may have been decided by both (the first attempt is not
    cancelled on the replica), a second decision under the same request id. Up to that many
    such duplicates are explained by them. ``crashes``: when a replica was killed (seconds
    into the load); a decision answered within ``crash_window_s`` before a kill may still
    have been in its producer's memory (the broker's linger), and is counted apart as
    ``lost_in_crash``."""
    by_tx: dict[str, list[dict]] = {}
    for r in records:
        by_tx.setdefault(r["transaction_id"], []).append(r)
    accepted = {o.transaction_id for o in outcomes if o.ok}
    missing = sorted(accepted - set(by_tx))
    arrival = {o.transaction_id: o.arrival_s for o in outcomes}
    in_crash = [
        tx for tx in missing if any(c - crash_window_s <= arrival[tx] <= c for c in crashes)
    ]
    retry_dups = redelivered = unexplained = same_request = 0
    for tx_records in by_tx.values():
        if len(tx_records) < 2:
            continue
        decisions = Counter(r["decision_id"] for r in tx_records)
        redelivered += sum(n - 1 for n in decisions.values())
        requests = Counter(r["request_id"] for r in tx_records)
        distinct = len(decisions)
        if distinct > 1 and len(requests) >= distinct:
            retry_dups += distinct - 1  # a retry made a second decision: identified
        elif distinct > 1:
            retry_dups += len(requests) - 1
            same_request += distinct - len(requests)  # the same request decided twice
    from_mesh = min(same_request, mesh_retries)
    unexplained = same_request - from_mesh
    answered = {o.transaction_id for o in outcomes if o.ok}
    return {
        "accepted": len(accepted),
        "logged_transactions": len(by_tx),
        "log_records": len(records),
        "missing": len(missing),
        "missing_examples": missing[:5],
        "lost_in_crash": len(in_crash),
        "mesh_retries": mesh_retries,
        "duplicates_from_mesh_retries": from_mesh,
        "duplicates_from_retries": retry_dups,
        "duplicates_redelivered": redelivered,
        "duplicates_unexplained": unexplained,
        "logged_not_answered": len(set(by_tx) - answered),
    }


@dataclass
class Window:
    fault: str
    injected: float
    lifted: float
    end: float
    error: str = ""
    #: When the lift began (a crashed replica's restart is part of the lift).
    lifting: float | None = None
