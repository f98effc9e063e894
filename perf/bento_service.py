"""bento_service: the peer a Python team would most likely pick instead of Triton today.

The same decisions served by BentoML (``bentoml serve``) with its adaptive batching: one
batchable API whose batches the dispatcher forms from concurrent requests, each batch
decided by the same ``FraudService`` as ``fraud_scoring`` (the project's own online-feature
reader, the ladder with the ONNX Runtime primary and fallback in process, the rules and the
decision policy). Never served to callers; ``perf`` starts it in its own environment
(``.venv-bentoml``, ``requirements-bentoml.txt``) with these variables:

    BENTO_REPOSITORY   the model repository (primary, fallback ONNX files, decision policy)
    FEATURE_STORE, REDIS_URL   the online store, as for the Triton models
"""

from __future__ import annotations

import os
from pathlib import Path

import bentoml

from python_backend import settings
from python_backend.fraud import decide_rows, in_process_service
from python_backend.fraud.online import open_reader
from python_backend.fraud.scoring import DEFAULT_BUDGET_MS

#: The largest batch the dispatcher forms, and how long it may hold a request to form one.
MAX_BATCH = 64
MAX_LATENCY_MS = DEFAULT_BUDGET_MS


@bentoml.service(
    # One worker per core, as the plain peer's uvicorn; no access log (neither has one).
    workers=int(settings.BENTO_WORKERS.get() or os.cpu_count() or 1),
    traffic={"timeout": 10},
    logging={"access": {"enabled": False}},
)
class FraudBento:
    def __init__(self) -> None:
        repository = Path(settings.BENTO_REPOSITORY.get())
        self.service = in_process_service(repository, open_reader())

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS)
    def score(self, transactions: list[dict]) -> list[dict]:
        """One decision per transaction (``transaction_id``, ``card_id``, ``terminal_id``,
        ``amount``, ``ts_ms``), in order."""
        return decide_rows(self.service, transactions)
