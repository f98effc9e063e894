"""How much of a request's budget is left when its batch reaches the BLS.

Triton 2.51 forwards to a Python model neither the caller's gRPC deadline (``grpc-timeout``
is consumed by gRPC; checked on a real server) nor the time a request spent in its queue.
What it does forward are the request's parameters, and gRPC headers whose names match
``--grpc-header-forward-pattern`` (:data:`FORWARD_PATTERN`), as string parameters. So:

- **At the edge**, Envoy stamps :data:`ARRIVAL_HEADER` (``t=<unix seconds>``) when a request
  reaches it, copies the caller's ``grpc-timeout`` into :data:`CALLER_TIMEOUT_HEADER`, and
  its router sends :data:`EXPECTED_HEADER`: how long it waits for this try (the per-try
  timeout, 57 ms; seen on a real Envoy: a caller's 30 ms ``grpc-timeout`` does not lower it).
  The deadline is the stamp plus the smallest of the budget and those two.
- **A caller calling Triton directly** may stamp the same header itself.
- **The ``budget_ms`` parameter** shortens the budget of one request.
- **Without a stamp**, the BLS bounds the time the batch waited in Triton's queue from its own
  instance's history (:class:`QueueBound`): a batch that starts while the instance was idle
  did not wait; one that starts right after the instance's previous batch waited at most that
  batch's run.

A valid stamp gives the time since the edge (the queue's included); without one, the queue
bound is used. **Clocks**: a stamp is another process's wall clock, maybe
another host's. On one host (the local mesh; the chart's Envoy and Triton on nodes kept by
NTP to about a millisecond) the stamp is good to that skew. A stamp from the future by more
than :data:`FUTURE_TOLERANCE_MS`, or older than :data:`MAX_STAMP_AGE_S`, says the clocks
disagree: it is not used (the queue bound still is) and :class:`Deadline` says so, counted by
the BLS's metrics. A stamp less than the tolerance ahead counts as "just arrived".
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

#: Stamped by the edge (or a caller): ``t=<unix seconds with a fraction>``.
ARRIVAL_HEADER = "x-request-start"
#: Envoy's router: how long it waits for this try, in ms.
EXPECTED_HEADER = "x-envoy-expected-rq-timeout-ms"
#: The caller's ``grpc-timeout`` (``30m``: 30 ms), copied by the edge: gRPC itself consumes
#: the original before Triton could forward it.
CALLER_TIMEOUT_HEADER = "x-grpc-timeout"
#: ``tritonserver --grpc-header-forward-pattern``: the headers above reach the model.
FORWARD_PATTERN = f"^({ARRIVAL_HEADER}|{EXPECTED_HEADER}|{CALLER_TIMEOUT_HEADER})$"
#: ``grpc-timeout``'s units, in ms.
GRPC_TIMEOUT_UNITS_MS = {
    "H": 3_600_000.0, "M": 60_000.0, "S": 1000.0, "m": 1.0, "u": 1e-3, "n": 1e-6,
}  # fmt: skip
#: A stamp this far ahead of our clock is taken as "just arrived"; further, as a skew.
FUTURE_TOLERANCE_MS = 5.0
#: A stamp older than this is a skewed clock (or a replayed header), not a request's age.
MAX_STAMP_AGE_S = 10.0
#: A batch starting within this of its instance's previous batch's end may have queued behind
#: it; later, the instance was idle and the batch did not wait. Measured on a real server
#: here: a batch that had queued started 1.4 ms after the previous one ended (the Python
#: backend's hand-over); a closed-loop caller's next call, 1.2 to 2.7 ms after. The two
#: overlap, so the bound takes both as queued: it errs short, never long.
BUSY_GAP_S = 0.005
#: The most a request may ask for with ``budget_ms``.
MAX_BUDGET_MS = 10_000.0

#: How a request's elapsed time was known.
EDGE, QUEUE_BOUND, UNKNOWN = "stamp", "queue_bound", "none"
#: A stamp not used, by why.
SKEW_FUTURE, SKEW_OLD, MALFORMED = "future", "too_old", "malformed"


@dataclass(frozen=True)
class Deadline:
    """One request's budget and how much of it was spent before its batch began."""

    budget_ms: float
    waited_ms: float = 0.0
    source: str = UNKNOWN
    #: Why a stamp it carried was not used (``SKEW_*``, ``MALFORMED``), or "".
    refused_stamp: str = ""

    @property
    def remaining_ms(self) -> float:
        return self.budget_ms - self.waited_ms


def parse_parameters(raw: str | None) -> dict[str, object]:
    """A request's parameters (Triton hands them over as JSON), names in lower case (HTTP
    headers keep their case); {} when absent or unreadable."""
    if not raw:
        return {}
    try:
        found = json.loads(raw)
    except ValueError:
        return {}
    return {str(k).lower(): v for k, v in found.items()} if isinstance(found, dict) else {}


def _number(value: object, low: float, high: float) -> float | None:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) and low <= value <= high else None


def grpc_timeout_ms(value: object) -> float | None:
    """A ``grpc-timeout`` value (at most 8 digits and a unit: ``95m``, ``1S``) in ms."""
    if not isinstance(value, str) or len(value) < 2 or value[-1] not in GRPC_TIMEOUT_UNITS_MS:
        return None
    digits = value[:-1]
    if not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * GRPC_TIMEOUT_UNITS_MS[value[-1]]


def budget_from(parameters: dict[str, object], default_ms: float) -> float:
    """The request's budget: its sane ``budget_ms`` (1 ms .. 10 s) else ``default_ms``,
    capped by the edge's expected timeout and the caller's own deadline."""
    budget = _number(parameters.get("budget_ms"), 1, MAX_BUDGET_MS) or default_ms
    expected = _number(parameters.get(EXPECTED_HEADER), 1, MAX_BUDGET_MS)
    caller = grpc_timeout_ms(parameters.get(CALLER_TIMEOUT_HEADER))
    return min(x for x in (budget, expected, caller) if x is not None)


def stamp_seconds(value: object) -> float | None:
    """``t=1796645803.011983`` (or the bare number) in unix seconds; None if unreadable."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.startswith("t="):
        text = text[2:]
    return _number(text, 0, math.inf)


def request_deadline(
    raw_parameters: str | None, default_ms: float, now_wall: float, queue_bound_ms: float = 0.0
) -> Deadline:
    """The deadline of one request whose batch begins at ``now_wall`` (unix seconds),
    after waiting at most ``queue_bound_ms`` in Triton's queue (:class:`QueueBound`)."""
    parameters = parse_parameters(raw_parameters)
    budget = budget_from(parameters, default_ms)
    waited, source, refused = queue_bound_ms, QUEUE_BOUND if queue_bound_ms > 0 else UNKNOWN, ""
    if ARRIVAL_HEADER in parameters:
        stamp = stamp_seconds(parameters[ARRIVAL_HEADER])
        if stamp is None:
            refused = MALFORMED
        else:
            age_ms = (now_wall - stamp) * 1000
            if age_ms < -FUTURE_TOLERANCE_MS:
                refused = SKEW_FUTURE
            elif age_ms > MAX_STAMP_AGE_S * 1000:
                refused = SKEW_OLD
            else:  # the whole time since the edge, the queue's included: the truer figure
                waited, source = max(age_ms, 0.0), EDGE
    return Deadline(budget, waited, source, refused)


class QueueBound:
    """The most a batch of this instance can have waited in Triton's queue.

    An instance runs one batch at a time, and the dynamic batcher hands an instance that
    frees up everything queued (up to the batch size). So a batch that starts while its
    instance had been idle (more than :data:`BUSY_GAP_S` since its last batch ended) did not
    wait; one that starts right after the last batch holds requests that arrived after that
    batch began: they waited at most its run. An upper bound, so the budget it leaves errs
    short: a request may be degraded that was not late, never the other way round. It
    matters only after a long batch (normal ones take a few ms, far inside the slack): a
    caller that sends its next call the moment the last one answers, to a primary taking
    50 ms, may get the fallback. A stamp, where there is one, replaces the bound.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self._began: float | None = None
        self._ended: float | None = None

    def begin(self, now: float | None = None) -> float:
        """A batch begins: the bound of its wait, in ms."""
        now = self.clock() if now is None else now
        bound = 0.0
        if self._began is not None and self._ended is not None and now - self._ended < BUSY_GAP_S:
            bound = (now - self._began) * 1000
        self._began, self._ended = now, None
        return bound

    def end(self, now: float | None = None) -> None:
        """The batch's responses are out: the instance is free again."""
        self._ended = self.clock() if now is None else now
