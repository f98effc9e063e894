"""The chaos run's recovery measure (``perf.chaos.recovery_s``) on made-up outcomes: from the
moment a fault is lifted to the first two healthy seconds."""

from __future__ import annotations

from perf.chaos import Outcome, recovery_s


def test_recovery_counts_from_the_lift_to_two_healthy_seconds() -> None:
    def at(t: float, path: str = "primary", ms: float = 20.0) -> Outcome:
        return Outcome(f"tx{t}", t, 1, True, ms, ms, path, "approve", [])

    # Lifted at 10 s: fallback for 1 s, then primary but slow for 1 s, then fast.
    outcomes = [at(10 + k / 20, "fallback") for k in range(20)]
    outcomes += [at(11 + k / 20, ms=300.0) for k in range(20)]
    outcomes += [at(12 + k / 20) for k in range(120)]
    assert recovery_s(outcomes, 10.0, 18.0) == 2.0
    assert recovery_s(outcomes, 10.0, 18.0, latency=False) == 1.0, "paths were back at 11 s"
    assert recovery_s(outcomes[:60], 10.0, 18.0) is None, "never 2 s healthy: not recovered"
