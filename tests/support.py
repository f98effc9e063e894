"""What several test modules share that is not a fixture: waiting for a condition, a
transaction to score."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout_s: float = 30.0,
    what: str | Callable[[], str] = "the condition",
    interval_s: float = 0.05,
) -> T:
    """Call ``predicate`` every ``interval_s`` until it returns a truthy value, and return
    that value. After ``timeout_s`` the test fails naming ``what`` (a callable is called
    then, for a description of the state at that moment), the timeout and the last value
    seen. What the predicate raises is not caught: a state that can never come right (a
    process gone, say) fails at once rather than at the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            described = what() if callable(what) else what
            pytest.fail(f"waited {timeout_s:g} s for {described}; last value: {value!r}")
        time.sleep(interval_s)


def wait_for_live_panels(prometheus_port: int, uid: str, timeout_s: float = 30.0) -> None:
    """Wait until every panel of the dashboard ``uid`` gets a series from the Prometheus on
    ``prometheus_port`` (a few scrapes and rule evaluations after the traffic)."""
    from client.observe import dashboards

    def empty() -> list[str]:
        return dashboards.panels_without_series(prometheus_port, uid)

    wait_until(
        lambda: not empty(),
        timeout_s,
        what=lambda: f"a series in every panel of {uid} (none yet in {empty()})",
        interval_s=1.0,
    )


def transaction(prefix: str, i: int, amount: float = 12.5) -> dict:
    """A transaction of card 1..9 at terminal 1..4, now, with an id no other run shares."""
    return {
        "transaction_id": f"{prefix}-{time.time_ns()}-{i}",
        "card_id": 1 + i % 9,
        "terminal_id": 1 + i % 4,
        "amount": amount + i,
        "ts_ms": int(time.time() * 1000),
    }
