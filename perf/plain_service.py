"""plain_service: the benchmark's peer for what a team would write instead of Triton.

A FastAPI app under uvicorn that reads the online features with the Feast SDK, runs the same
ONNX primary (fallback on an error) with ONNX Runtime, the same rules and the same decision
policy, per request. Never served to callers; ``perf`` starts it with the model and store
locations in the environment:

    PLAIN_REPOSITORY   the model repository (primary, fallback ONNX files, decision policy)
    FEATURE_STORE, REDIS_URL, FEATURE_REPO_DIR, FEATURE_DATA   as for ``feature_repo``
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

from feature_repo.bench import FEATURE_REFS
from python_backend import scoring
from python_backend.contract import FALLBACK, PRIMARY
from python_backend.features import MODEL_STORED, assemble_model_inputs
from python_backend.online_features import left_padded
from python_backend.onnx_runner import OnnxModel
from python_backend.rules import load_rules


class Transaction(BaseModel):
    transaction_id: str
    card_id: int
    terminal_id: int
    amount: float
    ts_ms: int


class ScoreRequest(BaseModel):
    transactions: list[Transaction]


def stored_from_sdk(values: dict[str, list], batch: int) -> dict[str, np.ndarray]:
    """Model columns from ``get_online_features(...).to_dict()``, defaults where missing."""
    stored = {}
    for f in MODEL_STORED:
        raw = values[f.name]
        if f.dtype.endswith("_list"):
            dtype = np.int64 if f.dtype.startswith("int64") else np.float32
            stored[f.name] = left_padded([v or [] for v in raw], dtype)
        else:
            dtype = np.int64 if f.dtype == "int64" else np.float32
            stored[f.name] = np.array([f.default if v is None else v for v in raw], dtype=dtype)
    return stored


class Scorer:
    def __init__(self) -> None:
        from feature_repo.store import StoreSettings, feature_store

        repository = Path(os.environ["PLAIN_REPOSITORY"])
        self.store = feature_store(StoreSettings.from_env())
        self.primary = OnnxModel(repository / "fraud_primary" / "1" / "model.onnx", PRIMARY)
        self.fallback = OnnxModel(repository / "fraud_fallback" / "1" / "model.onnx", FALLBACK)
        self.policy = scoring.DecisionPolicy.load(
            repository / "fraud_scoring" / "1" / "decision_policy.json"
        )
        self.rules = load_rules()

    def score(self, rows: list[Transaction]) -> list[dict]:
        t0 = time.perf_counter()
        values = self.store.get_online_features(
            features=FEATURE_REFS,
            entity_rows=[{"card_id": r.card_id, "terminal_id": r.terminal_id} for r in rows],
        ).to_dict()
        stored = stored_from_sdk(values, len(rows))
        inputs = assemble_model_inputs(
            stored,
            np.array([r.amount for r in rows], dtype=np.float32),
            np.array([r.ts_ms for r in rows], dtype=np.int64),
            np.array([r.terminal_id for r in rows], dtype=np.int64),
        )
        t1 = time.perf_counter()
        scores, path, decisions, reasons, (models_s, rules_s) = scoring.decide_in_process(
            self.primary, self.fallback, self.rules, self.policy, inputs
        )
        stage = {
            "features": int((t1 - t0) * 1e6),
            "primary": int(models_s * 1e6),
            "fallback": 0,
            "rules": int(rules_s * 1e6),
            "total": int((time.perf_counter() - t0) * 1e6),
        }
        return [
            {
                "transaction_id": r.transaction_id,
                "score": float(s),
                "decision": d,
                "path": path,
                "reasons": reason,
                "stage_us": stage,
            }
            for r, s, d, reason in zip(rows, scores, decisions, reasons, strict=True)
        ]


app = FastAPI(title="plain fraud service (benchmark peer)")
_scorer: dict[str, Scorer] = {}


@app.on_event("startup")
def _load() -> None:
    _scorer["s"] = Scorer()


@app.get("/health")
def health() -> dict:
    return {"ready": "s" in _scorer}


@app.post("/score")
def score(request: ScoreRequest) -> dict:
    return {"decisions": _scorer["s"].score(request.transactions)}
