"""Circuit breakers: skip a dependency at once while it keeps failing.

Closed: calls go through; outcomes (errors, and calls slower than ``slow_ms``) fill a sliding
window. When at least ``min_calls`` outcomes are in it and the share of bad ones reaches
``failure_rate``, or the last ``consecutive`` outcomes were all bad, the breaker opens: calls
are skipped for ``cooldown_s``. (A window full of successes needs ten bad outcomes to reach
half; against a hung dependency each bad outcome is a full timeout, so a short run of them
opens it sooner.) Then it is
half-open: one probe goes through; an answer closes it (however slow), an error or a timeout
opens it again.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATE_CODES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        window: int = 20,
        min_calls: int = 5,
        failure_rate: float = 0.5,
        slow_ms: float | None = None,
        cooldown_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        consecutive: int | None = None,
    ) -> None:
        self.name = name
        self.window: deque[bool] = deque(maxlen=window)
        self.min_calls = min_calls
        self.failure_rate = failure_rate
        self.slow_ms = slow_ms
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.consecutive = consecutive
        self._bad_in_a_row = 0
        self.state = CLOSED
        self.opened_at = 0.0
        self.last_bad_at = float("-inf")
        self._probe_out = False
        self._probe_at = 0.0

    def troubled(self, within_s: float) -> bool:
        """Open, half-open, or a bad outcome within the last ``within_s`` seconds: the
        dependency may not answer, so a caller should have its alternative under way."""
        return self.state != CLOSED or self.clock() - self.last_bad_at < within_s

    def allow(self) -> bool:
        """Whether a call may go through now."""
        if self.state == OPEN and self.clock() - self.opened_at >= self.cooldown_s:
            self.state, self._probe_out = HALF_OPEN, False
        if self.state == HALF_OPEN:
            # A probe whose outcome never came back (its caller gave up before calling)
            # must not keep the breaker half-open for ever: after a cool-down, probe again.
            if self._probe_out and self.clock() - self._probe_at < self.cooldown_s:
                return False
            self._probe_out = True
            self._probe_at = self.clock()
            return True
        return self.state == CLOSED

    def cancel(self) -> None:
        """The call ``allow`` let through was not made (no budget left): no outcome."""
        self._probe_out = False

    def record(self, ok: bool, latency_ms: float = 0.0) -> None:
        """The outcome of a call that ``allow`` let through."""
        good = ok and (self.slow_ms is None or latency_ms <= self.slow_ms)
        self._bad_in_a_row = 0 if good else self._bad_in_a_row + 1
        if not good:
            self.last_bad_at = self.clock()
        if self.state == HALF_OPEN:
            # The probe asks "does it answer again?": a slow answer (a model that just
            # loaded, a busy machine) closes the breaker; the window judges speed after.
            self._probe_out = False
            if ok:
                self.state = CLOSED
                self.window.clear()
            else:
                self._open()
            return
        self.window.append(good)
        bad = self.window.count(False)
        too_many = (
            len(self.window) >= self.min_calls and bad / len(self.window) >= self.failure_rate
        )
        in_a_row = self.consecutive is not None and self._bad_in_a_row >= self.consecutive
        if too_many or in_a_row:
            self._open()

    def _open(self) -> None:
        self._bad_in_a_row = 0
        self.state = OPEN
        self.opened_at = self.clock()
        self.window.clear()
