"""Unit tests: pure logic, no build, no server, seconds in all (``make test-unit``).

A test here that asks for one of the integration fixtures (a model build, Redis, the broker,
Triton) is refused at collection: it belongs in ``tests/integration``.
"""

from __future__ import annotations

import pytest

INTEGRATION_FIXTURES = {
    "tiny_build",
    "redis_service",
    "kafka_service",
    "redis_url",
    "redis_cluster_service",
    "redis_cluster_url",
    "serving",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/unit/" not in str(item.path).replace("\\", "/"):
            continue
        used = INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if used:
            raise pytest.UsageError(
                f"{item.nodeid}: a unit test may not use {sorted(used)}; "
                "move it to tests/integration"
            )
