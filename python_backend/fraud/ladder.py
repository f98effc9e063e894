"""The model ladder: the primary, else the fallback, else the rules, within the budget.

Each rung is a :data:`ModelCaller`, an awaitable function injected by whoever runs the
ladder: the ``fraud_scoring`` BLS passes a Triton caller for the primary and an in-process
ONNX Runtime caller for the fallback; the benchmark's in-process peers pass ONNX Runtime
callers for both; the unit tests pass fakes and a fake clock. The ladder owns what must be
the same everywhere: the breakers, the timeouts cut from the request's budget, the hedge,
the path chosen for the time a request has left, and the reason codes of every degradation.

**The path chosen at arrival.** Each rung's recent call times (:class:`Expectation`: a high
quantile of the calls of the last few seconds, Triton's queue for the model included) say what
a call is expected to take. A batch whose remaining budget, less what is kept for the rungs
below, cannot cover that skips the rung (``DEADLINE_SHED:primary``, ``DEADLINE_SHED:fallback``)
instead of calling it to time out: a request that waited in a queue goes to the fallback, or
the rules, and is answered on time. The primary's cap (``primary_timeout_ms``) stays the
backstop for a call that takes longer than expected.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from python_backend.breaker import HALF_OPEN, CircuitBreaker
from python_backend.fraud.features import ModelInputs
from python_backend.fraud.reasons import (
    CIRCUIT_OPEN,
    ERROR,
    FALLBACK_NOT_HEDGED,
    NO_BUDGET,
    TIMEOUT,
    rung,
    shed_code,
)

#: Scores ``[B]`` of ``inputs`` within ``timeout_ms``; raises :class:`ModelCallError` (the
#: model answered with an error) or :class:`TimeoutError`.
ModelCaller = Callable[[ModelInputs, float], Awaitable[np.ndarray]]
#: Suffixes of the reason codes that say a rung was skipped or failed.

HEDGES = ("always", "auto", "never")
#: Kept back from the primary's share of the budget for a fallback across a hop, and the rules.
FALLBACK_RESERVE_MS = 20.0
#: Kept back from the primary's share when the fallback runs in process (well under 1 ms).
IN_PROCESS_FALLBACK_RESERVE_MS = 10.0
#: Kept back from the fallback's share for the rules and the response.
RULES_RESERVE_MS = 5.0


#: What a call is expected to take before any was seen lately (ms): the primary through
#: Triton, the fallback (in process; across a hop it is measured within a few calls).
PRIOR_MS = {"primary": 2.0, "fallback": 1.0}


#: Calls of the horizon an expectation needs before its quantile is used (else the median).
MIN_CALLS = 10


class Expectation:
    """What a rung's call is expected to take: the ``quantile`` of its calls of the last
    ``horizon_s`` seconds (at most ``size``), else ``prior_ms``.

    Calls age out, so a rung shed while it was slow is called again once its slow calls are
    older than the horizon: without new calls the figure would never come down.
    """

    def __init__(
        self,
        prior_ms: float,
        quantile: float = 0.9,
        horizon_s: float = 5.0,
        size: int = 64,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.prior_ms = prior_ms
        self.quantile = quantile
        self.horizon_s = horizon_s
        self.clock = clock
        #: When each call of the horizon was seen, and what it took (ms), oldest first: two
        #: deques, so that the quantile sorts plain floats (no per-call tuple walked).
        self.calls: deque[float] = deque(maxlen=size)
        self.took: deque[float] = deque(maxlen=size)

    def observe(self, ms: float) -> None:
        self.calls.append(self.clock())
        self.took.append(ms)

    def ms(self) -> float:
        oldest = self.clock() - self.horizon_s
        calls, took = self.calls, self.took
        while calls and calls[0] < oldest:
            calls.popleft()
            took.popleft()
        if not calls:
            return self.prior_ms
        times = sorted(took)
        # Over fewer than MIN_CALLS the quantile would be the slowest call: one call held up
        # by a busy core would shed the rung for the whole horizon. The median until then.
        quantile = self.quantile if len(times) >= MIN_CALLS else 0.5
        return times[min(len(times) - 1, int(quantile * len(times)))]


class ModelCallError(RuntimeError):
    """The model answered, with an error."""


@dataclass
class Budget:
    """The time a request has left, from its arrival (``clock`` seconds)."""

    total_ms: float
    started: float | None = None
    clock: Callable[[], float] = time.perf_counter

    def __post_init__(self) -> None:
        if self.started is None:
            self.started = self.clock()

    def remaining_ms(self, reserve_ms: float = 0.0) -> float:
        return self.total_ms - (self.clock() - self.started) * 1000 - reserve_ms


@dataclass
class LadderOutcome:
    """Scores (None: the rules decide), the path, the degradation codes met on the way
    (the same for every row of the batch) and the seconds waited on each model."""

    scores: np.ndarray | None
    path: str
    reasons: list[str] = field(default_factory=list)
    primary_wait_s: float = 0.0
    fallback_wait_s: float = 0.0
    #: Each model call: (model, started, ended, reason code or "" when it answered), in
    #: the ladder's clock (the spans of a traced batch).
    calls: list[tuple[str, float, float, str]] = field(default_factory=list)


#: A half-open probe asks "does the primary answer again?": it waits at most this long, so a
#: probe at a primary still hung holds its batch 20 ms, not a full timeout.
PROBE_TIMEOUT_MS = 20.0


def default_breakers(clock: Callable[[], float] = time.monotonic) -> dict[str, CircuitBreaker]:
    # Short cooldowns: a probe is cheap with the fallback beside it, and recovery after a
    # fault waits for the probe. Three bad primary calls in a row open it: each may have
    # held a batch for a full timeout.
    return {
        "primary": CircuitBreaker("primary", slow_ms=60, cooldown_s=2, clock=clock, consecutive=3),
        "fallback": CircuitBreaker("fallback", slow_ms=30, cooldown_s=2, clock=clock),
    }


class ModelLadder:
    """Primary -> fallback -> rules for one batch of model inputs.

    ``fallback_in_process``: the fallback runs in this process (it shares no queue or fate
    with the primary), so it is called only after the primary failed, even after a timeout,
    and never hedged. Otherwise ``hedge`` says when the fallback is sent beside the primary:
    ``always``; ``auto``, only while the primary is troubled (circuit not closed, or a bad
    outcome within ``hedge_window_s``), since a remote fallback sent after a hung primary
    waits behind it and comes too late; ``never``.

    The primary may wait at most ``primary_timeout_ms`` (and never into the
    ``fallback_reserve_ms`` kept for the fallback and the rules); the fallback never into
    ``rules_reserve_ms``.
    """

    def __init__(
        self,
        primary: ModelCaller,
        fallback: ModelCaller,
        *,
        fallback_in_process: bool,
        hedge: str = "always",
        hedge_window_s: float = 10.0,
        primary_timeout_ms: float = float("inf"),
        fallback_reserve_ms: float | None = None,
        rules_reserve_ms: float = RULES_RESERVE_MS,
        breakers: dict[str, CircuitBreaker] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        log: Callable[[str], None] = lambda _m: None,
    ) -> None:
        if hedge not in HEDGES:
            raise ValueError(f"HEDGE_FALLBACK: must be one of {HEDGES}, got {hedge!r}")
        self.callers = {"primary": primary, "fallback": fallback}
        self.fallback_in_process = fallback_in_process
        self.hedge = "never" if fallback_in_process else hedge
        self.hedge_window_s = hedge_window_s
        self.primary_timeout_ms = primary_timeout_ms
        if fallback_reserve_ms is None:
            fallback_reserve_ms = (
                IN_PROCESS_FALLBACK_RESERVE_MS if fallback_in_process else FALLBACK_RESERVE_MS
            )
        self.fallback_reserve_ms = fallback_reserve_ms
        self.rules_reserve_ms = rules_reserve_ms
        self.breakers = breakers or default_breakers()
        self.clock = clock
        self.log = log
        self.expected = {name: Expectation(PRIOR_MS[name], clock=clock) for name in PRIOR_MS}

    async def run(self, inputs: ModelInputs, budget: Budget) -> LadderOutcome:
        out = LadderOutcome(None, "rules")
        primary = self.breakers["primary"]
        hedged = self.hedge == "always" or (
            self.hedge == "auto" and primary.troubled(self.hedge_window_s)
        )
        fallback = self._start_fallback(inputs, budget, out) if hedged else None
        primary_timed_out = False
        if not primary.allow():
            out.reasons.append(rung("primary", CIRCUIT_OPEN))
        elif budget.remaining_ms(self.fallback_reserve_ms) < self.expected["primary"].ms():
            primary.cancel()  # allowed but not called: a half-open probe must not stay out
            out.reasons.append(shed_code("primary"))
        else:
            timeout = min(self.primary_timeout_ms, budget.remaining_ms(self.fallback_reserve_ms))
            if primary.state == HALF_OPEN:
                timeout = min(timeout, PROBE_TIMEOUT_MS)
            started = self.clock()
            scores, problem = await self._timed("primary", inputs, timeout, out)
            out.primary_wait_s = self.clock() - started
            if problem is None:  # a hedged fallback, if any, finishes unread
                out.scores, out.path = scores, "primary"
                return out
            out.reasons.append(problem)
            primary_timed_out = problem.endswith(TIMEOUT)
        if not hedged:
            if primary_timed_out and not self.fallback_in_process:
                # The remote primary may still hold the call: a fallback now would wait
                # behind it.
                out.reasons.append(FALLBACK_NOT_HEDGED)
                return out
            fallback = self._start_fallback(inputs, budget, out)
        if fallback is None:
            return out
        started = self.clock()
        scores, problem = await fallback
        out.fallback_wait_s = self.clock() - started
        if problem is None:
            out.scores, out.path = scores, "fallback"
        else:
            out.reasons.append(problem)
        return out

    def _start_fallback(self, inputs, budget, out):
        """The fallback call under way, or None (reason added) while its circuit is open.
        Asked only when the call is really made: a half-open breaker lets one probe out."""
        if budget.remaining_ms(self.rules_reserve_ms) < self.expected["fallback"].ms():
            out.reasons.append(shed_code("fallback"))
            return None
        if not self.breakers["fallback"].allow():
            out.reasons.append(rung("fallback", CIRCUIT_OPEN))
            return None
        call = self._timed("fallback", inputs, budget.remaining_ms(self.rules_reserve_ms), out)
        return call if self.fallback_in_process else asyncio.ensure_future(call)

    async def _timed(self, name: str, inputs: ModelInputs, timeout_ms: float, out: LadderOutcome):
        """(scores, None) or (None, reason code); feeds the model's breaker; the call is
        noted in ``out.calls``."""
        breaker = self.breakers[name]
        if timeout_ms < 1:
            breaker.cancel()  # allowed but not called: a half-open probe must not stay out
            return None, rung(name, NO_BUDGET)
        started = self.clock()
        scores, problem = await self._call(name, breaker, inputs, timeout_ms, started)
        out.calls.append((name, started, self.clock(), problem or ""))
        return scores, problem

    async def _call(self, name, breaker, inputs, timeout_ms: float, started: float):
        try:
            scores = await self.callers[name](inputs, timeout_ms)
        except TimeoutError:
            breaker.record(False)
            self.expected[name].observe((self.clock() - started) * 1000)
            return None, rung(name, TIMEOUT)
        except ModelCallError as err:
            breaker.record(False)
            self.log(f"fraud_scoring: {name} failed: {err}")
            return None, rung(name, ERROR)
        except Exception as err:  # anything else is a failed call too, never a lost outcome
            breaker.record(False)
            self.log(f"fraud_scoring: {name} call raised {err!r}")
            return None, rung(name, ERROR)
        took_ms = (self.clock() - started) * 1000
        breaker.record(True, took_ms)
        self.expected[name].observe(took_ms)
        return scores, None
