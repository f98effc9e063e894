"""``tests.support.wait_until``: the one way the suite waits for a condition."""

from __future__ import annotations

import itertools
import time

import pytest

from tests.support import wait_until


def test_returns_the_first_truthy_value_the_predicate_gives() -> None:
    answers = iter([None, 0, [], "ready", "later"])
    assert wait_until(lambda: next(answers), timeout_s=5, interval_s=0.001) == "ready"
    assert next(answers) == "later", "not called again once it held"


def test_times_out_naming_what_the_timeout_and_the_last_value() -> None:
    calls = itertools.count(1)
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception) as failed:
        wait_until(lambda: next(calls) < 0, timeout_s=0.1, what="a negative count")
    assert 0.1 <= time.monotonic() - started < 2
    assert str(failed.value) == "waited 0.1 s for a negative count; last value: False"
    assert next(calls) > 2, "polled more than once meanwhile"


def test_a_callable_what_describes_the_state_at_the_timeout() -> None:
    state = {"missing": ["b"]}
    with pytest.raises(pytest.fail.Exception, match=r"everything \(missing \['b'\]\)"):
        wait_until(
            lambda: None, timeout_s=0, what=lambda: f"everything (missing {state['missing']})"
        )


def test_an_error_in_the_predicate_fails_at_once() -> None:
    def gone() -> bool:
        raise AssertionError("the process exited")

    started = time.monotonic()
    with pytest.raises(AssertionError, match="the process exited"):
        wait_until(gone, timeout_s=30)
    assert time.monotonic() - started < 1
