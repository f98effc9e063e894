"""A request's deadline from what Triton forwards (``python_backend.fraud.deadline``): the
edge's stamp and timeouts, the ``budget_ms`` parameter, clocks that disagree, and the queue
bound of an instance that runs one batch at a time."""

from __future__ import annotations

import json

import pytest

from python_backend.fraud.deadline import (
    EDGE,
    FORWARD_PATTERN,
    MALFORMED,
    QUEUE_BOUND,
    SKEW_FUTURE,
    SKEW_OLD,
    UNKNOWN,
    QueueBound,
    budget_from,
    grpc_timeout_ms,
    parse_parameters,
    request_deadline,
)

NOW = 1_796_646_078.0


def _params(**values) -> str:
    return json.dumps(
        {k.replace("_", "-") if k.startswith("x_") else k: v for k, v in values.items()}
    )


def test_budget_parameter_is_used_only_when_sane() -> None:
    assert budget_from({"budget_ms": 40}, 95) == 40
    assert budget_from({"budget_ms": "40"}, 95) == 40, "Triton forwards strings as they came"
    for bad in ("fast", 0, 1e9, True, None, float("nan"), [40]):
        assert budget_from({"budget_ms": bad}, 95) == 95, bad


def test_the_edges_timeouts_and_the_callers_deadline_cap_the_budget() -> None:
    assert budget_from({"x-envoy-expected-rq-timeout-ms": "57"}, 95) == 57
    assert budget_from({"x-grpc-timeout": "31m"}, 95) == 31
    assert budget_from({"x-grpc-timeout": "2S", "x-envoy-expected-rq-timeout-ms": "57"}, 95) == 57
    assert budget_from({"x-grpc-timeout": "20000u", "budget_ms": 50}, 95) == 20


@pytest.mark.parametrize(
    ("value", "ms"),
    [("95m", 95.0), ("1S", 1000.0), ("2M", 120_000.0), ("500000u", 500.0), ("7n", 7e-6)],
)
def test_grpc_timeout_values_in_ms(value, ms) -> None:
    assert grpc_timeout_ms(value) == pytest.approx(ms)


@pytest.mark.parametrize("value", ["", "m", "95", "95x", "-5m", "123456789m", "9.5m", 95])
def test_grpc_timeout_values_that_are_not_read(value) -> None:
    assert grpc_timeout_ms(value) is None


def test_parameters_are_read_case_blind_and_bad_json_is_no_parameters() -> None:
    assert parse_parameters('{"X-Request-Start": "t=1"}') == {"x-request-start": "t=1"}
    assert parse_parameters("not json") == {} and parse_parameters(None) == {}
    assert parse_parameters("[1, 2]") == {}


def test_the_edges_stamp_gives_the_time_spent_before_the_batch() -> None:
    d = request_deadline(_params(x_request_start=f"t={NOW - 0.030:.6f}"), 95, NOW)
    assert d.source == EDGE and d.waited_ms == pytest.approx(30, abs=0.01)
    assert d.remaining_ms == pytest.approx(65, abs=0.01)
    through_envoy = _params(x_request_start=f"t={NOW - 0.010}", x_envoy_expected_rq_timeout_ms="57")
    assert request_deadline(through_envoy, 95, NOW).remaining_ms == pytest.approx(47, abs=0.01)


def test_a_stamp_is_truer_than_the_queue_bound_and_the_bound_serves_without_one() -> None:
    stamped = request_deadline(_params(x_request_start=f"t={NOW - 0.004}"), 95, NOW, 20.0)
    assert stamped.source == EDGE and stamped.waited_ms == pytest.approx(4, abs=0.01)
    bare = request_deadline(None, 95, NOW, 20.0)
    assert bare.source == QUEUE_BOUND and bare.waited_ms == 20
    idle = request_deadline(None, 95, NOW, 0.0)
    assert idle.source == UNKNOWN and idle.remaining_ms == 95


def test_clocks_that_disagree_are_told_apart_from_a_request_that_waited() -> None:
    ahead = request_deadline(_params(x_request_start=f"t={NOW + 0.002}"), 95, NOW)
    assert ahead.source == EDGE and ahead.waited_ms == 0 and not ahead.refused_stamp
    future = request_deadline(_params(x_request_start=f"t={NOW + 1}"), 95, NOW, 3.0)
    assert future.refused_stamp == SKEW_FUTURE and future.source == QUEUE_BOUND
    assert future.waited_ms == 3.0, "the queue bound still holds"
    old = request_deadline(_params(x_request_start=f"t={NOW - 60}"), 95, NOW)
    assert old.refused_stamp == SKEW_OLD and old.remaining_ms == 95
    for bad in ("yesterday", "t=", "t=nan", "t=-5"):
        got = request_deadline(_params(x_request_start=bad), 95, NOW)
        assert got.refused_stamp == MALFORMED and got.remaining_ms == 95, bad


def test_queue_bound_of_an_instance_that_runs_one_batch_at_a_time() -> None:
    t = [10.0]
    bound = QueueBound(lambda: t[0])
    assert bound.begin() == 0, "the first batch did not queue behind anything"
    t[0] += 0.060
    bound.end()
    t[0] += 0.0005  # the next batch starts at once: it held requests that came meanwhile
    assert bound.begin() == pytest.approx(60.5)
    t[0] += 0.004
    bound.end()
    t[0] += 0.050  # idle for 50 ms: whatever came was handed over at once
    assert bound.begin() == 0


def test_triton_is_told_to_forward_exactly_the_deadline_headers() -> None:
    import re

    from client.local.triton import Ports, server_command
    from python_backend.paths import ROOT

    pattern = re.compile(FORWARD_PATTERN)
    for header in ("x-request-start", "x-envoy-expected-rq-timeout-ms", "x-grpc-timeout"):
        assert pattern.match(header), header
    for header in ("authorization", "operator-key", "x-request-start-2", "grpc-timeout"):
        assert not pattern.match(header), header
    command = server_command(ROOT / "model_repository", Ports(), ["fraud_scoring"])
    assert f"--grpc-header-forward-pattern={FORWARD_PATTERN}" in command
    chart = (ROOT / "deploy/chart/fraud-scoring/templates/triton.yaml").read_text()
    assert f'"--grpc-header-forward-pattern={FORWARD_PATTERN}"' in chart, "the chart's Triton"
