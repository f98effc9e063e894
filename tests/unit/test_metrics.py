"""The BLS's custom metrics, counted from real batches of the service and handed to a fake
``pb_utils.MetricFamily`` (the same calls Triton's Python backend takes)."""

from __future__ import annotations

from typing import ClassVar

from python_backend.fraud import run_now
from python_backend.fraud.metrics import ServiceMetrics
from tests.unit.test_ladder import Clock, FakeModel, FakeReader, _request, _service


class FakeFamily:
    COUNTER, GAUGE = "counter", "gauge"
    made: ClassVar[dict[str, FakeFamily]] = {}

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.kind, self.values = name, kind, {}
        FakeFamily.made[name] = self

    def Metric(self, labels: dict):
        family, key = self, tuple(sorted(labels.items()))

        class Metric:
            def increment(self, n) -> None:
                family.values[key] = family.values.get(key, 0) + n

            def set(self, v) -> None:
                family.values[key] = v

        return Metric()


def test_decisions_and_degradations_are_counted_by_label_and_flushed() -> None:
    clock = Clock()
    service = _service(clock, FakeReader())
    service.ladder.callers["primary"] = FakeModel(clock, 0.95, error="primary down")
    metrics = ServiceMetrics(FakeFamily, service.breakers, clock=clock)
    batch = run_now(service.handle([_request([1, 2, 3])]))
    metrics.observe(batch)
    metrics.flush(force=True)
    decisions = FakeFamily.made["fraud_decisions_total"].values
    assert sum(decisions.values()) == 3
    assert all(dict(k)["path"] == "fallback" for k in decisions)
    degradations = FakeFamily.made["fraud_degradations_total"].values
    assert degradations == {(("reason", "PRIMARY_ERROR"),): 3}
    breakers = FakeFamily.made["fraud_breaker_state"].values
    # One failure does not open a breaker (closed: 0), and every dependency is reported.
    assert breakers == {(("dependency", d),): 0 for d in ("features", "primary", "fallback")}
