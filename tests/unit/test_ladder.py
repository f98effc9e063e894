"""The model ladder and the batch service with fake callers, a fake reader and a fake
clock: every way down the ladder, pinned without a server."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from python_backend.breaker import CLOSED, HALF_OPEN, OPEN
from python_backend.fraud import (
    Budget,
    FraudService,
    ModelCallError,
    ModelLadder,
    ScoringRequest,
    default_breakers,
    run_now,
)
from python_backend.fraud.online import OnlineFeatureReader, empty_features
from python_backend.fraud.rules import load_rules
from python_backend.fraud.scoring import DecisionPolicy

NOW = 1_780_000_000_000
HUNG = float("inf")


class Clock:
    """Seconds, moved only by the fakes."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def advance_ms(self, ms: float) -> None:
        self.t += ms / 1000


class FakeModel:
    """Answers ``score`` after ``latency_ms`` (a timeout past the caller's deadline, as
    ``asyncio.wait_for`` gives), or raises ``error``."""

    def __init__(self, clock: Clock, score: float, latency_ms: float = 2.0, error=None):
        self.clock, self.score, self.latency_ms, self.error = clock, score, latency_ms, error
        self.timeouts: list[float] = []

    async def __call__(self, inputs, timeout_ms: float) -> np.ndarray:
        self.timeouts.append(timeout_ms)
        if self.latency_ms > timeout_ms:
            self.clock.advance_ms(timeout_ms)
            raise TimeoutError
        self.clock.advance_ms(self.latency_ms)
        if self.error:
            raise ModelCallError(self.error)
        return np.full(len(inputs.tabular), self.score, dtype=np.float32)


def _inputs(n: int = 3):
    from python_backend.fraud.features import assemble_model_inputs

    features = empty_features(n)
    return assemble_model_inputs(
        features.stored, np.full(n, 10.0, dtype=np.float32), np.full(n, NOW), np.arange(1, n + 1)
    )


def _ladder(clock, primary, fallback, **kw) -> ModelLadder:
    return ModelLadder(primary, fallback, clock=clock, breakers=default_breakers(clock), **kw)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_healthy_primary_decides_and_the_in_process_fallback_is_not_called(clock) -> None:
    primary, fallback = FakeModel(clock, 0.1), FakeModel(clock, 0.9)
    out = run_now(
        _ladder(clock, primary, fallback, fallback_in_process=True).run(
            _inputs(), Budget(95, clock=clock)
        )
    )
    assert out.path == "primary" and out.reasons == [] and fallback.timeouts == []
    assert out.scores.tolist() == pytest.approx([0.1] * 3)


def test_hung_primary_falls_back_in_process_within_budget(clock) -> None:
    primary, fallback = FakeModel(clock, 0.1, latency_ms=HUNG), FakeModel(clock, 0.7)
    ladder = _ladder(clock, primary, fallback, fallback_in_process=True, primary_timeout_ms=40)
    budget = Budget(95, clock=clock)
    out = run_now(ladder.run(_inputs(), budget))
    assert out.path == "fallback" and out.reasons == ["PRIMARY_TIMEOUT"]
    assert primary.timeouts == [40], "the primary waits at most PRIMARY_TIMEOUT_MS"
    assert budget.remaining_ms() > 50, "decided long before the 95 ms deadline"
    assert out.primary_wait_s == pytest.approx(0.040)


def test_primary_never_waits_into_the_fallbacks_reserve(clock) -> None:
    primary, fallback = FakeModel(clock, 0.1, latency_ms=HUNG), FakeModel(clock, 0.7)
    ladder = _ladder(clock, primary, fallback, fallback_in_process=True, fallback_reserve_ms=10)
    budget = Budget(95, clock=clock)
    clock.advance_ms(30)  # features and queueing took 30 ms of the budget
    out = run_now(ladder.run(_inputs(), budget))
    assert primary.timeouts == [pytest.approx(55)] and out.path == "fallback"
    assert budget.remaining_ms() >= 10 - 2


def test_slow_primary_opens_its_circuit_then_a_half_open_probe_closes_it(clock) -> None:
    primary, fallback = FakeModel(clock, 0.1, latency_ms=HUNG), FakeModel(clock, 0.7)
    ladder = _ladder(clock, primary, fallback, fallback_in_process=True, primary_timeout_ms=40)
    for _ in range(20):  # a window full of successes
        primary.latency_ms = 2.0
        run_now(ladder.run(_inputs(), Budget(95, clock=clock)))
    primary.latency_ms, primary.timeouts = HUNG, []
    for _ in range(3):
        run_now(ladder.run(_inputs(), Budget(95, clock=clock)))
    assert ladder.breakers["primary"].state == OPEN, "three timeouts in a row open it"
    out = run_now(ladder.run(_inputs(), Budget(95, clock=clock)))
    assert out.reasons == ["PRIMARY_CIRCUIT_OPEN"] and out.path == "fallback"
    assert primary.timeouts == [40] * 3, "an open circuit skips the primary"
    clock.advance_ms(2_000)  # the cooldown: one probe, on a short leash
    out = run_now(ladder.run(_inputs(), Budget(95, clock=clock)))
    assert primary.timeouts[-1] == 20 and out.path == "fallback"
    assert ladder.breakers["primary"].state == OPEN, "a probe that timed out reopens it"
    clock.advance_ms(2_000)
    primary.latency_ms = 2.0
    out = run_now(ladder.run(_inputs(), Budget(95, clock=clock)))
    assert out.path == "primary" and ladder.breakers["primary"].state == CLOSED


def test_erroring_fallback_leaves_the_rules(clock) -> None:
    primary = FakeModel(clock, 0.1, error="stub gone")
    fallback = FakeModel(clock, 0.7, error="bad model")
    out = run_now(
        _ladder(clock, primary, fallback, fallback_in_process=True).run(
            _inputs(), Budget(95, clock=clock)
        )
    )
    assert out.scores is None and out.path == "rules"
    assert out.reasons == ["PRIMARY_ERROR", "FALLBACK_ERROR"]


def test_no_budget_left_sheds_both_rungs_to_the_rules_and_releases_a_half_open_probe(
    clock,
) -> None:
    primary, fallback = FakeModel(clock, 0.1), FakeModel(clock, 0.7)
    ladder = _ladder(clock, primary, fallback, fallback_in_process=True)
    breaker = ladder.breakers["primary"]
    breaker.state, breaker.opened_at = OPEN, clock() - 10  # cooled down: next allow probes
    budget = Budget(95, clock=clock)
    clock.advance_ms(94.5)
    out = run_now(ladder.run(_inputs(), budget))
    assert out.path == "rules"
    assert out.reasons == ["DEADLINE_SHED:primary", "DEADLINE_SHED:fallback"]
    assert primary.timeouts == [] and fallback.timeouts == []
    assert breaker.state == HALF_OPEN and breaker.allow(), "the unsent probe is not held"


def test_under_normal_load_nothing_is_shed(clock) -> None:
    primary, fallback = FakeModel(clock, 0.1), FakeModel(clock, 0.7)
    ladder = _ladder(clock, primary, fallback, fallback_in_process=True, primary_timeout_ms=40)
    rng = np.random.default_rng(3)
    for _ in range(500):  # 2..12 ms calls after 0..20 ms of features and queueing
        primary.latency_ms = float(rng.uniform(2, 12))
        budget = Budget(95, clock=clock)
        clock.advance_ms(float(rng.uniform(0, 20)))
        out = run_now(ladder.run(_inputs(), budget))
        assert out.path == "primary" and out.reasons == []
        clock.advance_ms(5)
    assert fallback.timeouts == []


def _primary_seen_taking(clock, ladder, primary, ms: float, calls: int = 10) -> None:
    primary.latency_ms = ms
    for _ in range(calls):
        run_now(ladder.run(_inputs(), Budget(95, clock=clock)))


def test_a_batch_whose_slack_cannot_cover_the_primary_goes_to_the_fallback_at_once(clock) -> None:
    primary, fallback = FakeModel(clock, 0.1), FakeModel(clock, 0.7, latency_ms=0.3)
    ladder = _ladder(clock, primary, fallback, fallback_in_process=True, primary_timeout_ms=40)
    _primary_seen_taking(clock, ladder, primary, 30.0)
    assert ladder.expected["primary"].ms() == pytest.approx(30)
    called = len(primary.timeouts)
    budget = Budget(95, clock=clock)
    clock.advance_ms(60)  # it waited 60 ms: 25 left over the fallback's reserve, under 30
    out = run_now(ladder.run(_inputs(), budget))
    assert out.path == "fallback" and out.reasons == ["DEADLINE_SHED:primary"]
    assert len(primary.timeouts) == called, "the primary was not called"
    assert budget.remaining_ms() == pytest.approx(35 - 0.3), "answered with the time to spare"
    assert ladder.breakers["primary"].state == CLOSED, "a shed call is no failure"
    # The same wait with the primary fast again: the primary decides.
    _primary_seen_taking(clock, ladder, primary, 3.0, calls=64)
    budget = Budget(95, clock=clock)
    clock.advance_ms(60)
    assert run_now(ladder.run(_inputs(), budget)).path == "primary"


def test_a_batch_whose_slack_cannot_cover_the_fallback_goes_to_the_rules(clock) -> None:
    primary, fallback = FakeModel(clock, 0.1), FakeModel(clock, 0.7, latency_ms=4.0)
    ladder = _ladder(clock, primary, fallback, fallback_in_process=True)
    for _ in range(5):
        ladder.expected["fallback"].observe(4.0)
    budget = Budget(95, clock=clock)
    clock.advance_ms(87)  # 8 ms left: 3 over the rules' reserve, under the fallback's 4
    out = run_now(ladder.run(_inputs(), budget))
    assert out.path == "rules" and out.scores is None
    assert out.reasons == ["DEADLINE_SHED:primary", "DEADLINE_SHED:fallback"]
    assert budget.remaining_ms() == pytest.approx(8)


def test_a_shed_rung_is_called_again_once_its_slow_calls_age_out(clock) -> None:
    primary, fallback = FakeModel(clock, 0.1), FakeModel(clock, 0.7, latency_ms=0.3)
    ladder = _ladder(clock, primary, fallback, fallback_in_process=True, primary_timeout_ms=40)
    _primary_seen_taking(clock, ladder, primary, 35.0)
    primary.latency_ms = 3.0
    for _ in range(3):  # without new calls, the figure stays what it was
        budget = Budget(95, clock=clock)
        clock.advance_ms(55)
        assert run_now(ladder.run(_inputs(), budget)).reasons == ["DEADLINE_SHED:primary"]
    clock.advance_ms(5_000)  # the slow calls are older than the horizon
    budget = Budget(95, clock=clock)
    clock.advance_ms(55)
    assert run_now(ladder.run(_inputs(), budget)).path == "primary"


def test_one_call_held_up_among_a_few_does_not_shed_the_rung(clock) -> None:
    """A rung's expected time is the 90th percentile of its recent calls, but over fewer
    than ``MIN_CALLS`` that is the slowest one: one call held up by a busy core (a test's
    closed loop, a quiet hour) would shed the in-process fallback for five seconds. The
    median until there are enough calls; then the quantile."""
    from python_backend.fraud.ladder import MIN_CALLS, Expectation

    expected = Expectation(1.0, clock=clock)
    for ms in (0.2, 0.3, 30.0):
        expected.observe(ms)
    assert expected.ms() == pytest.approx(0.3)
    for _ in range(MIN_CALLS - 3):
        expected.observe(30.0)
    assert len(expected.calls) == MIN_CALLS and expected.ms() == pytest.approx(30.0)
    primary = FakeModel(clock, 0.1, error="fraud_primary unavailable")
    fallback = FakeModel(clock, 0.7, latency_ms=0.3)
    ladder = _ladder(clock, primary, fallback, fallback_in_process=True)
    for ms in (0.3, 0.3, 30.0):
        ladder.expected["fallback"].observe(ms)
    budget = Budget(95, clock=clock)
    clock.advance_ms(70)  # 25 ms left: the fallback fits its usual 0.3 ms, not its 30
    out = run_now(ladder.run(_inputs(), budget))
    assert out.path == "fallback", out.reasons


def test_remote_fallback_is_hedged_beside_the_primary(clock) -> None:
    primary, fallback = FakeModel(clock, 0.1), FakeModel(clock, 0.7)
    ladder = _ladder(clock, primary, fallback, fallback_in_process=False, hedge="always")
    out = asyncio.run(ladder.run(_inputs(), Budget(95, clock=clock)))
    assert out.path == "primary" and len(fallback.timeouts) == 1


def test_remote_fallback_not_hedged_is_not_sent_behind_a_timed_out_primary(clock) -> None:
    primary, fallback = FakeModel(clock, 0.1, latency_ms=HUNG), FakeModel(clock, 0.7)
    ladder = _ladder(clock, primary, fallback, fallback_in_process=False, hedge="auto")
    out = asyncio.run(ladder.run(_inputs(), Budget(95, clock=clock)))
    assert out.path == "rules" and out.reasons == ["PRIMARY_TIMEOUT", "FALLBACK_NOT_HEDGED"]
    # Troubled now: the next batch has the fallback under way beside the primary.
    out = asyncio.run(ladder.run(_inputs(), Budget(95, clock=clock)))
    assert out.path == "fallback" and len(fallback.timeouts) == 1


def test_unknown_hedge_is_refused_with_the_parameter_named(clock) -> None:
    with pytest.raises(ValueError, match="HEDGE_FALLBACK"):
        _ladder(clock, None, None, fallback_in_process=False, hedge="sometimes")


# -- the batch service ---------------------------------------------------------------------
class FakeReader(OnlineFeatureReader):
    def __init__(self, fail: bool = False) -> None:
        self.fail, self.reads, self.heartbeat_reads = fail, 0, 0

    def read(self, cards, terminals, with_tx_ids=False):
        if terminals is None:  # the stream heartbeat, read at most once a second
            self.heartbeat_reads += 1
        else:
            self.reads += 1
        if self.fail:
            raise ConnectionError("store away")
        features = empty_features(len(cards))
        features.card_found[:] = cards != 99
        features.terminal_found[:] = True
        return features


class SlowReader(FakeReader):
    """Each read of the features (not of the stream's heartbeat) takes ``ms`` of the fake
    clock."""

    def __init__(self, clock: Clock, ms: float) -> None:
        super().__init__()
        self.clock, self.ms = clock, ms

    def read(self, cards, terminals, with_tx_ids=False):
        if terminals is not None:
            self.clock.advance_ms(self.ms)
        return super().read(cards, terminals, with_tx_ids)


def _service(clock, reader, primary_score=0.95, primary_ms=2.0) -> FraudService:
    ladder = _ladder(
        clock,
        FakeModel(clock, primary_score, latency_ms=primary_ms),
        FakeModel(clock, 0.2, latency_ms=0.3),
        fallback_in_process=True,
        primary_timeout_ms=40,
    )
    policy = DecisionPolicy(
        {p: {"review": 0.5, "decline": 0.9} for p in ("primary", "fallback", "rules")}
    )
    # The wall clock moves with the fake one.
    return FraudService(
        policy, load_rules(), reader, ladder, clock=clock, wall=lambda: 1.7e9 + clock()
    )


def _request(cards, amounts=None, parameters=None, **overrides) -> ScoringRequest:
    n = len(cards)
    arrays = {
        "TRANSACTION_ID": np.array([[f"t{i}".encode()] for i in range(n)], dtype=np.object_),
        "CARD_ID": np.array(cards, dtype=np.int64).reshape(-1, 1),
        "TERMINAL_ID": np.ones((n, 1), dtype=np.int64),
        "AMOUNT": np.array(amounts or [10.0] * n, dtype=np.float32).reshape(-1, 1),
        "TIMESTAMP_MS": np.full((n, 1), int(__import__("time").time() * 1000), dtype=np.int64),
    }
    arrays.update(overrides)
    return ScoringRequest(arrays, json.dumps(parameters) if parameters else None, "r")


def test_batch_bad_request_refused_alone_bad_row_invalid_rest_decided_in_one_read(clock) -> None:
    reader = FakeReader()
    service = _service(clock, reader)
    batch = run_now(
        service.handle(
            [
                _request([1, 2], amounts=[10.0, float("nan")]),
                _request([3], AMOUNT=None),
                _request([99]),
            ]
        )
    )
    first, refused, unknown = batch.answers
    assert refused.error == "AMOUNT: missing input"
    out = first.outputs(123)
    assert out["DECISION"][:, 0].tolist() == [b"DECLINE", b"INVALID"]
    assert out["PATH"][:, 0].tolist() == [b"primary", b"invalid"]
    assert np.isnan(out["SCORE"][1, 0]) and out["STAGE_US"][:, -1].tolist() == [123, 123]
    assert json.loads(out["REASONS"][1, 0])[0] == "INVALID_INPUT"
    assert "UNKNOWN_CARD" in json.loads(unknown.outputs(1)["REASONS"][0, 0])
    assert reader.reads == 1, "the valid rows of every request share one feature read"
    assert [r["transaction_id"] for r in first.records()] == ["t0"], "refused rows are not logged"


def test_store_away_decides_on_defaults_and_opens_the_features_circuit(clock) -> None:
    service = _service(clock, FakeReader(fail=True))
    for _ in range(5):
        batch = run_now(service.handle([_request([1])]))
    reasons = json.loads(batch.answers[0].outputs(0)["REASONS"][0, 0])
    assert "FEATURES_UNAVAILABLE" in reasons
    assert service.features_breaker.state == OPEN
    batch = run_now(service.handle([_request([1])]))
    reasons = json.loads(batch.answers[0].outputs(0)["REASONS"][0, 0])
    assert reasons[:2] == ["FEATURES_CIRCUIT_OPEN", "FEATURES_UNAVAILABLE"]
    assert batch.decided.path == "primary", "the models still decide, on defaults"


def _reasons(batch, i: int = 0) -> list[str]:
    return json.loads(batch.answers[i].outputs(0)["REASONS"][0, 0])


def test_a_request_stamped_long_ago_at_the_edge_is_decided_by_the_fallback(clock) -> None:
    service = _service(clock, FakeReader(), primary_ms=20.0)
    for _ in range(5):  # the primary seen taking 20 ms
        assert run_now(service.handle([_request([1])])).decided.path == "primary"
    wall = service.wall()
    fresh = {"x-request-start": f"t={wall - 0.005:.6f}", "x-envoy-expected-rq-timeout-ms": "57"}
    batch = run_now(service.handle([_request([1], parameters=fresh)]))
    assert batch.decided.path == "primary" and batch.deadlines[0].source == "stamp"
    assert batch.deadlines[0].remaining_ms == pytest.approx(52, abs=0.01)
    queued = {"x-request-start": f"t={service.wall() - 0.070:.6f}"}  # 25 ms left, under 20 + 10
    batch = run_now(service.handle([_request([1], parameters=queued), _request([2])]))
    assert batch.decided.path == "fallback", "the most pressed request sets the batch's path"
    assert "DEADLINE_SHED:primary" in _reasons(batch) and "DEADLINE_SHED:primary" in _reasons(
        batch, 1
    )
    assert [d.source for d in batch.deadlines] == ["stamp", "none"]


def test_a_batch_that_queued_behind_a_slow_one_is_decided_by_the_fallback(clock) -> None:
    service = _service(clock, SlowReader(clock, 20.0), primary_ms=39.0)
    first = run_now(service.handle([_request([1])]))  # 20 ms of features, 39 of primary
    assert first.decided.path == "primary" and first.deadlines[0].source == "none"
    service.batch_done()
    clock.advance_ms(0.5)  # taken at once: its requests came while the first one ran
    batch = run_now(service.handle([_request([2])]))
    assert batch.deadlines[0].source == "queue_bound"
    assert batch.deadlines[0].waited_ms == pytest.approx(59.5)
    assert batch.decided.path == "fallback" and "DEADLINE_SHED:primary" in _reasons(batch)
    service.batch_done()
    clock.advance_ms(30)  # idle: the next batch did not wait
    batch = run_now(service.handle([_request([3])]))
    assert batch.deadlines[0].waited_ms == 0 and batch.decided.path == "primary"


def test_a_skewed_stamp_is_not_used_and_is_counted(clock) -> None:
    from python_backend.fraud.metrics import ServiceMetrics

    service = _service(clock, FakeReader())
    ahead = {"x-request-start": f"t={service.wall() + 3:.6f}"}
    batch = run_now(service.handle([_request([1], parameters=ahead)]))
    assert batch.deadlines[0].refused_stamp == "future" and batch.decided.path == "primary"
    metrics = ServiceMetrics(FakeFamily, service.breakers, clock=clock)
    metrics.observe(batch, 100)
    assert metrics.counts[("stamps_refused", (("why", "future"),))] == 1
    waited = metrics.histograms[("waited", (("source", "none"),))]
    assert waited.counts.sum() == 1


class FakeFamily:
    COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"

    def __init__(self, name, text, kind) -> None:
        self.name = name


class CachedOnlyReader(FakeReader):
    """A store that fails, whose cache holds the daily views of card 1 and terminal 1."""

    def __init__(self) -> None:
        super().__init__(fail=True)

    def cached_features(self, card_ids, terminal_ids):
        features = empty_features(len(card_ids))
        features.card_found[:] = card_ids == 1
        features.terminal_found[:] = terminal_ids == 1
        now_ms = int(__import__("time").time() * 1000)
        for view, found in (
            ("card_daily", features.card_found),
            ("terminal_daily", features.terminal_found),
        ):
            features.event_ms[view][found] = now_ms - 3_600_000  # materialized an hour ago
        features.from_cache = True
        return features


def test_the_store_away_the_cached_daily_views_still_serve(clock) -> None:
    from python_backend.fraud import scoring

    service = _service(clock, CachedOnlyReader())
    batch = run_now(service.handle([_request([1, 2])]))
    assert "FEATURES_FROM_CACHE" in _reasons(batch) and "FEATURES_UNAVAILABLE" in _reasons(batch)
    tx = batch.transactions
    features, ok = scoring.read_features(service.reader, tx, [[], []])
    unavailable = scoring.unavailable_views(tx, features, ok, [[], []])
    assert not ok and features.from_cache
    assert unavailable["card_daily"].tolist() == [False, True], "card 1 held, card 2 not"
    assert unavailable["terminal_daily"].tolist() == [False, False], "terminal 1 held for both"
    assert unavailable["card_recent"].all(), "the recent view is never cached"
    for _ in range(5):  # the store's circuit opens: the cache still serves, the store unasked
        batch = run_now(service.handle([_request([1])]))
    assert service.features_breaker.state == OPEN
    assert _reasons(batch)[:3] == [
        "FEATURES_CIRCUIT_OPEN", "FEATURES_UNAVAILABLE", "FEATURES_FROM_CACHE"
    ]  # fmt: skip
