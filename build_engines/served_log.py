"""A decision log for days the service did not serve: the simulated period decided offline by
a champion model, as serving would have decided it.

The retraining loop trains on what was served (``build_engines.label_join``). A project that
starts from the simulator has served only the days it replayed, so the earlier days are
decided here: the point-in-time features of every transaction (the ones the feature-parity
check holds equal to serving's), scored by the champion's ONNX file, decided by its policy's
``primary`` thresholds, logged in the decision log's record format with the inputs as
serving logs them. A day the service did serve comes from the real log instead.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from python_backend.fraud import served
from python_backend.fraud.contract import PRIMARY
from python_backend.fraud.features import ModelInputs
from python_backend.fraud.scoring import DecisionPolicy
from python_backend.onnx_runner import OnnxModel


def decision_records(
    rows: pd.DataFrame,
    inputs: ModelInputs,
    champion: Path,
    policy: DecisionPolicy,
    model_version: str,
) -> pd.DataFrame:
    """Decision-log records of ``rows`` (transactions with ``inputs``), decided by the ONNX
    model at ``champion`` on the ``primary`` path of ``policy``."""
    scores = OnnxModel(champion, PRIMARY).predict(inputs)
    codes = policy.decide_codes(scores, "primary")
    decisions = np.array(["APPROVE", "REVIEW", "DECLINE"])[codes]
    ts = rows["ts_ms"].to_numpy().astype(np.int64)
    return pd.DataFrame(
        {
            "transaction_id": rows["transaction_id"].astype(str).to_numpy(),
            "decision_id": [uuid.uuid4().hex for _ in range(len(rows))],
            "decision": decisions,
            "score": np.round(scores.astype(np.float64), 6),
            "path": "primary",
            "card_id": rows["card_id"].to_numpy().astype(np.int64),
            "terminal_id": rows["terminal_id"].to_numpy().astype(np.int64),
            "amount": rows["amount"].to_numpy().astype(np.float64),
            "ts_ms": ts,
            # Decided as the transaction happened (in the world's time).
            "decided_at_ms": ts,
            "model_version": model_version,
            "inputs": served.logged(inputs),
        }
    )
