"""The fraud pipeline's serving logic: the model ladder, the batch service, its callers,
metrics and outbox. ``model_repository/fraud_scoring/1/model.py`` is glue around these; the
benchmark's in-process peers run the same service with ONNX Runtime callers."""

from python_backend.fraud.callers import OnnxCaller, decide_rows, in_process_service, run_now
from python_backend.fraud.ladder import (
    Budget,
    LadderOutcome,
    ModelCaller,
    ModelCallError,
    ModelLadder,
    default_breakers,
)
from python_backend.fraud.reasons import DEGRADATIONS
from python_backend.fraud.service import Answer, Batch, Decided, FraudService, ScoringRequest

__all__ = [
    "DEGRADATIONS",
    "Answer",
    "Batch",
    "Budget",
    "Decided",
    "FraudService",
    "LadderOutcome",
    "ModelCallError",
    "ModelCaller",
    "ModelLadder",
    "OnnxCaller",
    "ScoringRequest",
    "decide_rows",
    "default_breakers",
    "in_process_service",
    "run_now",
]
