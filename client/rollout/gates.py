"""What a step is judged on: the ``Gates`` a challenger must keep, the ``Step`` that carries
a step's window, numbers and verdict into the report, ``psi_limit`` (the PSI sampling alone
reaches, so a step of a few dozen rows is not failed on noise) and ``judge``. Pure logic on
numbers already measured: no server, no Prometheus (``tests/unit/test_rollout.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from python_backend.fraud.rollout import SCORE_BUCKETS, psi


@dataclass(frozen=True)
class Gates:
    """What a challenger must keep to go on."""

    #: Rows the challenger must have scored in a step before it is judged (the step is held
    #: until then, up to ``max_step_s``).
    min_rows: int = 30
    max_error_share: float = 0.01
    #: Population stability index of its scores against the champion's (0.25: a large shift).
    max_psi: float = 0.25
    #: Its p99 call time at most this times the champion's, plus the slack.
    latency_ratio: float = 1.5
    latency_slack_ms: float = 5.0
    #: Of every decision in the step: over the budget, and off the primary path.
    max_over_budget: float = 0.01
    max_degraded: float = 0.02


@dataclass
class Step:
    name: str
    role: str
    share: float
    started: float = 0.0
    ended: float = 0.0
    challenger: dict = field(default_factory=dict)
    champion: dict = field(default_factory=dict)
    service: dict = field(default_factory=dict)
    #: Live traffic against the training window at the step's end (reported, not gated).
    drift: dict = field(default_factory=dict)
    psi: float | None = None
    psi_limit: float | None = None
    verdict: str = ""
    reasons: list[str] = field(default_factory=list)


def psi_limit(expected: np.ndarray, actual: np.ndarray, floor: float, confidence=0.999) -> float:
    """The PSI a step is held to: ``floor``, or what sampling alone reaches with this
    ``confidence`` when it is higher. Between two samples of one distribution, PSI (the
    symmetric Kullback-Leibler divergence) is about (1/n_e + 1/n_a) times a chi-square with
    k - 1 degrees of freedom (k: the bins either sample reaches): a canary step of a few dozen
    rows cannot tell a shift of 0.25 from noise, and must not roll back a sound version for it."""
    from scipy.stats import chi2

    e, a = np.asarray(expected, dtype=float), np.asarray(actual, dtype=float)
    bins = int(np.sum((e > 0) | (a > 0)))
    if bins < 2 or e.sum() == 0 or a.sum() == 0:
        return floor
    noise = float(chi2.ppf(confidence, bins - 1)) * (1 / e.sum() + 1 / a.sum())
    return max(floor, noise)


def decision_buckets(counts, approve_below: float | None) -> np.ndarray:
    """Score-bucket counts with every bucket that ends below ``approve_below`` (the served
    review threshold) merged into one: scores there all approve, and how a challenger spreads
    them changes no decision. A retrained primary, calibrated anew, moved its genuine scores
    under 0.001 (70 of 70 in shadow, against 75% of the champion's): PSI 0.52 over the fine
    buckets for no change of decision. An inverted model still moves mass across them."""
    counts = np.asarray(counts, dtype=float)
    if approve_below is None:
        return counts
    bounds = np.array([*SCORE_BUCKETS, np.inf])[: len(counts)]
    low = bounds < approve_below
    return np.concatenate([[counts[low].sum()], counts[~low]])


def judge(step: Step, gates: Gates, approve_below: float | None = None) -> None:
    """The step's verdict and, when it fails, each gate it broke; the score PSI over the
    buckets a decision can tell apart (``decision_buckets``; None: every bucket)."""
    c, k, s = step.challenger, step.champion, step.service
    reasons = []
    if c["failed_share"] is not None and c["failed_share"] > gates.max_error_share:
        reasons.append(
            f"failed calls {c['failed_share']:.1%} > {gates.max_error_share:.0%} ({c['outcomes']})"
        )
    champion = decision_buckets(k["scores"], approve_below)
    challenger = decision_buckets(c["scores"], approve_below)
    step.psi = psi(champion, challenger)
    step.psi_limit = psi_limit(champion, challenger, gates.max_psi)
    if step.psi == step.psi and step.psi > step.psi_limit:
        reasons.append(f"score distribution shifted: PSI {step.psi:.2f} > {step.psi_limit:.2f}")
    if c["p99_ms"] is not None and k["p99_ms"] is not None:
        limit = k["p99_ms"] * gates.latency_ratio + gates.latency_slack_ms
        if c["p99_ms"] > limit:
            reasons.append(f"p99 call {c['p99_ms']:.1f} ms > {limit:.1f} ms")
    if (s.get("over_budget_share") or 0) > gates.max_over_budget:
        reasons.append(f"decisions over budget {s['over_budget_share']:.2%}")
    if (s.get("degraded_share") or 0) > gates.max_degraded:
        reasons.append(f"decisions off the primary path {s['degraded_share']:.2%}")
    step.reasons = reasons
    step.verdict = "fail" if reasons else "pass"
