"""The rollout's pure logic: the plan from parameters, the routing of batches between
versions, the shadow that never decides, the decision-log fields, the gates."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from python_backend.fraud.rollout import RolloutError, RolloutPlan, Route, RoutedPrimary, psi


class Inputs:
    def __init__(self, n: int) -> None:
        self.tabular = np.zeros((n, 3), dtype=np.float32)


class Fake:
    """A version's caller: scores ``value`` for each row, or raises ``error``."""

    def __init__(self, value: float, error: Exception | None = None) -> None:
        self.value, self.error, self.calls, self.trace = value, error, 0, None

    async def __call__(self, inputs, timeout_ms):
        self.calls += 1
        if self.error is not None:
            raise self.error
        return np.full(len(inputs.tabular), self.value, dtype=np.float32)


def _routed(plan: RolloutPlan, fakes: dict, seed: int = 1) -> RoutedPrimary:
    rng = np.random.default_rng(seed)
    return RoutedPrimary(lambda v: fakes[v], plan, draw=rng.random)


def test_the_plan_reads_and_writes_the_same_parameters() -> None:
    plan = RolloutPlan(1, canary=2, canary_share=0.1)
    assert RolloutPlan.from_params({k: v for k, v in plan.params().items() if v}) == plan
    assert RolloutPlan.from_params({}) == RolloutPlan()
    assert all(v is None for v in RolloutPlan().params().values()), "no rollout: none set"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"ROLLOUT_CANARY": "two", "ROLLOUT_CHAMPION": "1"}, "ROLLOUT_CANARY: a model version"),
        ({"ROLLOUT_CANARY": "2", "ROLLOUT_CANARY_SHARE": "1.5", "ROLLOUT_CHAMPION": "1"}, "[0, 1]"),
        ({"ROLLOUT_SHADOW_SHARE": "0.2"}, "ROLLOUT_SHADOW names no version"),
        ({"ROLLOUT_CANARY": "2", "ROLLOUT_CANARY_SHARE": "0.1"}, "ROLLOUT_CHAMPION: must name"),
        ({"ROLLOUT_CHAMPION": "0"}, "a version is 1 or more"),
    ],
)
def test_a_bad_parameter_is_refused_by_name(params, message) -> None:
    with pytest.raises(RolloutError, match=message.replace("[", r"\[").replace("]", r"\]")):
        RolloutPlan.from_params(params)


def test_the_canary_decides_its_share_of_batches() -> None:
    fakes = {1: Fake(0.1), 2: Fake(0.2)}
    routed = _routed(RolloutPlan(1, canary=2, canary_share=0.1), fakes)
    scores = [asyncio.run(routed(Inputs(2), 40))[0] for _ in range(4000)]
    share = np.mean(np.isclose(scores, 0.2))
    assert 0.08 < share < 0.12, share
    routes = routed.take()
    assert len(routes) == 4000 and not routed.routes
    assert {r.role for r in routes} == {"champion", "canary"}
    assert all(r.outcome == "ok" and r.rows == 2 for r in routes)


def test_the_shadow_scores_beside_and_never_decides_even_when_it_fails() -> None:
    fakes = {1: Fake(0.1), 2: Fake(0.9)}
    routed = _routed(RolloutPlan(1, shadow=2, shadow_share=1.0), fakes)
    assert np.allclose(asyncio.run(routed(Inputs(3), 40)), 0.1)
    (route,) = routed.take()
    assert route.role == "champion" and route.shadow.role == "shadow"
    assert np.allclose(route.shadow.scores, 0.9) and route.shadow.outcome == "ok"
    fakes[2].error = RuntimeError("bad version")
    assert np.allclose(asyncio.run(routed(Inputs(3), 40)), 0.1), "a failing shadow is not felt"
    (route,) = routed.take()
    assert route.shadow.outcome == "error" and route.shadow.scores is None


def test_the_shadow_waits_no_longer_than_its_timeout() -> None:
    class Slow(Fake):
        async def __call__(self, inputs, timeout_ms):
            await asyncio.wait_for(asyncio.sleep(1.0), timeout_ms / 1000)

    fakes = {1: Fake(0.1), 2: Slow(0.5)}
    plan = RolloutPlan(1, shadow=2, shadow_share=1.0, shadow_timeout_ms=20)
    routed = _routed(plan, fakes)

    async def timed():
        loop = asyncio.get_running_loop()
        started = loop.time()
        await routed(Inputs(1), 40)
        return loop.time() - started

    assert asyncio.run(timed()) < 0.2
    assert routed.take()[0].shadow.outcome == "timeout"


def test_a_failing_champion_call_is_noted_and_raised() -> None:
    routed = _routed(RolloutPlan(), {-1: Fake(0.1, TimeoutError())})
    with pytest.raises(TimeoutError):
        asyncio.run(routed(Inputs(1), 40))
    (route,) = routed.take()
    assert route.outcome == "timeout" and route.label == "loaded"


def test_decision_log_records_say_which_version_decided_and_what_the_shadow_scored() -> None:
    from python_backend.fraud.outbox import with_route

    route = Route(1, "champion", 3, "ok", np.array([0.1, 0.2, 0.3]))
    route.shadow = Route(2, "shadow", 3, "ok", np.array([0.5, 0.6, 0.7]))
    records = [{"path": "primary"}, {"path": "primary"}]
    out = with_route(1, records, route)  # this answer's rows are the batch's 1 and 2
    assert [r["model_version"] for r in out] == ["1", "1"]
    assert [r["shadow_score"] for r in out] == [0.6, 0.7]
    assert with_route(0, [{"path": "fallback"}], Route(1, "champion", 1, "error")) == [
        {"path": "fallback"}
    ]


def test_psi_is_zero_for_the_same_distribution_and_large_for_an_inverted_one() -> None:
    champion = np.array([800, 100, 40, 20, 10, 10, 8, 6, 4, 2, 0])
    assert psi(champion, champion * 3) == pytest.approx(0.0, abs=1e-3)
    assert psi(champion, champion[::-1]) > 5
    assert np.isnan(psi(champion, np.zeros(11)))


def test_the_psi_limit_is_the_sampling_noise_of_small_steps() -> None:
    from client.rollout import psi_limit

    rng = np.random.default_rng(3)
    bins = np.array([0.5, 0.2, 0.1, 0.08, 0.05, 0.04, 0.02, 0.01])
    champion = rng.multinomial(2000, bins)
    false_alarms = sum(
        psi(champion, canary := rng.multinomial(40, bins)) > psi_limit(champion, canary, 0.25)
        for _ in range(500)
    )
    assert false_alarms <= 3, "a sound version rolled back for noise"
    assert psi_limit(champion * 100, champion * 100, 0.25) == 0.25, "large samples: the floor"
    inverted = rng.multinomial(16, bins[::-1])
    assert psi(champion, inverted) > psi_limit(champion, inverted, 0.25), "still caught at 16"


def test_the_gates_name_what_broke() -> None:
    from client.rollout import Gates, Step, judge

    ok = {"rows": 500, "failed_share": 0.0, "outcomes": {"ok": 500}, "p99_ms": 4.0}
    champion = {**ok, "scores": [800, 100, 40, 20, 10, 10, 8, 6, 4, 2, 0]}
    step = Step("canary 1%", "canary", 0.01, challenger={**ok, "scores": champion["scores"]})
    step.champion, step.service = champion, {"over_budget_share": 0.001, "degraded_share": 0.0}
    judge(step, Gates())
    assert step.verdict == "pass" and step.reasons == []
    bad = {**ok, "failed_share": 0.05, "p99_ms": 30.0, "scores": champion["scores"][::-1]}
    step = Step("canary 1%", "canary", 0.01, challenger=bad)
    step.champion, step.service = champion, {"over_budget_share": 0.03, "degraded_share": 0.0}
    judge(step, Gates())
    assert step.verdict == "fail"
    text = "; ".join(step.reasons)
    for broken in ("failed calls 5.0%", "PSI", "p99 call 30.0 ms", "over budget 3.00%"):
        assert broken in text, text


def test_an_inverted_candidate_scores_one_minus_the_champion(tmp_path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from client.rollout import _invert

    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["X"], ["PROBABILITY"])],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("PROBABILITY", TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    _invert(model)
    onnx.checker.check_model(model)
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString())
    x = np.array([[-2.0], [0.0], [3.0]], dtype=np.float32)
    (out,) = session.run(None, {"X": x})
    assert np.allclose(out, 1 - 1 / (1 + np.exp(-x)), atol=1e-6)


def test_the_score_psi_ignores_how_approvals_spread_below_the_review_threshold() -> None:
    """A recalibrated challenger that moves genuine scores under 0.001 decides the same; an
    inverted one moves mass across the review threshold and is still failed."""
    from client.rollout import Gates, Step, judge

    champion = [300, 20, 35, 25, 12, 8, 0, 4, 1, 0, 0]  # buckets of SCORE_BUCKETS, +Inf
    recalibrated = [395, 0, 0, 0, 0, 0, 0, 4, 1, 0, 0]
    inverted = [0, 0, 0, 1, 0, 4, 8, 12, 25, 350, 0]

    def step(challenger):
        rows = {"scores": challenger, "failed_share": 0.0, "p99_ms": 5.0}
        return Step("shadow", "shadow", 0.2, challenger=rows, champion={**rows, "scores": champion})

    fine = step(recalibrated)
    judge(fine, Gates())
    assert fine.verdict == "fail", "over every bucket the recalibration looks like a shift"
    for challenger, verdict in ((recalibrated, "pass"), (inverted, "fail")):
        judged = step(challenger)
        judge(judged, Gates(), approve_below=0.075)
        assert judged.verdict == verdict, (challenger, judged.psi, judged.reasons)
