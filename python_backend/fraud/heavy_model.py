"""The heavy model as the analysis consumer runs it: a deep sequence model (ONNX,
``contract.HEAVY``) and gradient-boosted trees (LightGBM) over what the primary saw, blended
in logit space with weights fitted on the validation days (``make engines``).

The trees are the strongest single model where the store knows little (new cards and
terminals); the deep model sees the card's and the terminal's longer histories. Blended, the
report measures it ahead of both (``build/reports/model_quality.md``). Off the hot path only:
it needs LightGBM and the histories, which serving has neither of.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from python_backend.fraud.contract import HEAVY
from python_backend.fraud.history import HeavyInputs, history_layout

#: The deep model, the trees and the metadata in a ``fraud_heavy`` version folder.
DEEP_FILE, TREES_FILE, METADATA_FILE = "model.onnx", "gbdt.txt", "metadata.json"


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


@dataclass(frozen=True)
class Blend:
    """``sigmoid(deep * logit(deep) + trees * logit(trees) + bias)``."""

    deep: float
    trees: float
    bias: float

    def __call__(self, deep: np.ndarray, trees: np.ndarray) -> np.ndarray:
        z = self.deep * logit(deep) + self.trees * logit(trees) + self.bias
        return (1 / (1 + np.exp(-z))).astype(np.float32)

    @classmethod
    def fit(cls, deep: np.ndarray, trees: np.ndarray, y: np.ndarray) -> Blend:
        """A logistic regression of the labels on both logits (calibrated, too)."""
        from sklearn.linear_model import LogisticRegression

        fit = LogisticRegression(C=1e4, max_iter=1_000).fit(np.c_[logit(deep), logit(trees)], y)
        return cls(
            round(float(fit.coef_[0, 0]), 6),
            round(float(fit.coef_[0, 1]), 6),
            round(float(fit.intercept_[0]), 6),
        )


def tree_features(inputs) -> np.ndarray:
    """What the trees read: the tabular columns and the categorical ids as numbers."""
    return np.hstack([inputs.tabular, inputs.categorical.astype(np.float32)])


class HeavyModel:
    """A built ``fraud_heavy`` version, loaded: :meth:`score` rows of :class:`HeavyInputs`."""

    def __init__(self, folder: Path) -> None:
        import lightgbm as lgb

        from python_backend.onnx_runner import OnnxModel

        self.folder = folder
        self.metadata = json.loads((folder / METADATA_FILE).read_text())
        if self.metadata.get("history") != json.loads(json.dumps(history_layout())):
            raise ValueError(
                f"{folder}: built for another history layout than this code's; rebuild it "
                "with `make engines`"
            )
        self.deep = OnnxModel(folder / DEEP_FILE, HEAVY)
        self.trees = lgb.Booster(model_file=str(folder / TREES_FILE))
        self.blend = Blend(**self.metadata["blend"])
        #: What the analysis records name as the heavy model's version.
        self.version = f"{folder.name}:{self.metadata['build_key']}"
        self.review_threshold = float(self.metadata["review_threshold"])

    def trees_predict(self, inputs) -> np.ndarray:
        return self.trees.predict(tree_features(inputs), num_threads=1).astype(np.float32)

    def score(self, inputs: HeavyInputs) -> np.ndarray:
        return self.blend(self.deep.predict(inputs), self.trees_predict(inputs))
