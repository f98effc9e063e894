"""plain_service: the benchmark's peer for what a team would write instead of Triton.

A FastAPI app under uvicorn that reads the online features with the Feast SDK and runs the
same service, ladder (ONNX Runtime primary, fallback on an error), rules and decision policy
as ``fraud_scoring``, per request. Never served to callers; ``perf`` starts it with the
model and store locations in the environment:

    PLAIN_REPOSITORY   the model repository (primary, fallback ONNX files, decision policy)
    FEATURE_STORE, REDIS_URL, FEATURE_REPO_DIR, FEATURE_DATA   as for ``feature_repo``
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

from perf.feature_bench import FEATURE_REFS
from python_backend import settings
from python_backend.fraud import decide_rows, in_process_service
from python_backend.fraud.features import CARD_DAILY, MODEL_STORED, TERMINAL_DAILY
from python_backend.fraud.online import OnlineFeatureReader, OnlineFeatures, left_padded


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


class FeastSdkReader(OnlineFeatureReader):
    """The online features through the Feast SDK, as a team without a reader of its own
    would read them."""

    single_round_trip = False

    def __init__(self) -> None:
        from feature_repo.store import StoreSettings, feature_store

        self.store = feature_store(StoreSettings.from_env())

    def read(self, card_ids, terminal_ids, with_tx_ids: bool = False) -> OnlineFeatures:
        values = self.store.get_online_features(
            features=FEATURE_REFS,
            entity_rows=[
                {"card_id": int(c), "terminal_id": int(t)}
                for c, t in zip(card_ids, terminal_ids, strict=True)
            ],
        ).to_dict()

        def found(group) -> np.ndarray:
            return np.array([v is not None for v in values[group.features[0].name]])

        return OnlineFeatures(
            stored_from_sdk(values, len(card_ids)),
            card_found=found(CARD_DAILY),
            terminal_found=found(TERMINAL_DAILY),
            event_ms={},
        )


class Scorer:
    def __init__(self) -> None:
        repository = Path(settings.PLAIN_REPOSITORY.get())
        self.service = in_process_service(repository, FeastSdkReader())

    def score(self, rows: list[Transaction]) -> list[dict]:
        return decide_rows(self.service, [r.model_dump() for r in rows])


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
