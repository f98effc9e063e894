"""Circuit breaker transitions, on a fake clock."""

from __future__ import annotations

from python_backend.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_on_errors_then_probes_and_closes() -> None:
    clock = Clock()
    breaker = CircuitBreaker("primary", min_calls=4, failure_rate=0.5, cooldown_s=5, clock=clock)
    for ok in (True, False, True):
        assert breaker.allow()
        breaker.record(ok)
    assert breaker.state == CLOSED
    breaker.record(False)  # 2 bad of 4
    assert breaker.state == OPEN and not breaker.allow()
    clock.now = 4.9
    assert not breaker.allow()
    clock.now = 5.0
    assert breaker.allow() and breaker.state == HALF_OPEN
    assert not breaker.allow(), "one probe at a time"
    breaker.record(True)
    assert breaker.state == CLOSED and breaker.allow()


def test_failed_probe_reopens_for_another_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker("fallback", min_calls=1, failure_rate=1.0, cooldown_s=2, clock=clock)
    breaker.record(False)
    clock.now = 2
    assert breaker.allow()
    breaker.record(False)
    assert breaker.state == OPEN
    clock.now = 3
    assert not breaker.allow()


def test_slow_calls_count_as_failures() -> None:
    breaker = CircuitBreaker("features", min_calls=3, failure_rate=0.6, slow_ms=10, clock=Clock())
    for latency in (50, 50, 1):
        breaker.record(True, latency)
    assert breaker.state == OPEN


def test_troubled_after_a_bad_outcome_until_it_ages_out() -> None:
    clock = Clock()
    breaker = CircuitBreaker("primary", slow_ms=60, min_calls=10, clock=clock)
    breaker.record(True, 5)
    assert not breaker.troubled(within_s=10), "healthy: no hedge needed"
    clock.now = 1.0
    breaker.record(True, 200)  # slow counts as bad, though the breaker stays closed
    assert breaker.state == CLOSED and breaker.troubled(within_s=10)
    clock.now = 10.9
    assert breaker.troubled(within_s=10)
    clock.now = 11.1
    assert not breaker.troubled(within_s=10)


def test_a_probe_without_outcome_does_not_hold_the_breaker_half_open() -> None:
    clock = Clock()
    breaker = CircuitBreaker("primary", min_calls=1, failure_rate=1.0, cooldown_s=2, clock=clock)
    breaker.record(False)
    clock.now += 2
    assert breaker.allow()  # the probe goes out... and its caller never calls
    assert not breaker.allow()
    clock.now += 2
    assert breaker.allow(), "a lost probe is replaced after a cool-down"
    breaker.cancel()
    assert breaker.allow(), "a cancelled probe frees the slot at once"
    breaker.record(True, latency_ms=500)
    assert breaker.state == "closed", "a slow answer to the probe still closes it"


def test_a_run_of_bad_outcomes_opens_a_window_full_of_successes() -> None:
    clock = Clock()
    breaker = CircuitBreaker("primary", window=20, consecutive=3, clock=clock)
    for _ in range(20):
        breaker.record(True)
    breaker.record(False)
    breaker.record(False)
    breaker.record(True)  # the run is broken: two in a row do not count
    breaker.record(False)
    breaker.record(False)
    assert breaker.state == CLOSED, "4 bad of 20, never 3 in a row"
    breaker.record(False)
    assert breaker.state == OPEN
