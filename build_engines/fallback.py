"""The fallback model: logistic regression on the tabular features (no sequence).

Cheap enough to run on a CPU for every request when the primary cannot answer. Converted
with skl2onnx, then trimmed to the shared contract: input ``TABULAR``, output
``PROBABILITY`` ``[B, 1]`` (the fraud-class column).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from python_backend.contract import FALLBACK, PROBABILITY, TABULAR


def train(tabular: np.ndarray, y: np.ndarray) -> Pipeline:
    """Standardize, then a class-weighted L2 logistic regression."""
    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=1.0, class_weight="balanced", max_iter=2_000),
    )
    model.fit(tabular, y)
    return model


def predict(model: Pipeline, tabular: np.ndarray) -> np.ndarray:
    return model.predict_proba(tabular)[:, 1].astype(np.float32)


def export_onnx(model: Pipeline, path: Path) -> None:
    """skl2onnx graph, with the class-probability matrix sliced to the fraud column."""
    graph_model = to_onnx(
        model,
        initial_types=[(TABULAR.name, FloatTensorType([None, model.n_features_in_]))],
        options={id(model.steps[-1][1]): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    graph = graph_model.graph
    probabilities = next(o.name for o in graph.output if "prob" in o.name)
    graph.initializer.extend(
        [
            helper.make_tensor("fraud_col_start", onnx.TensorProto.INT64, [1], [1]),
            helper.make_tensor("fraud_col_end", onnx.TensorProto.INT64, [1], [2]),
            helper.make_tensor("fraud_col_axis", onnx.TensorProto.INT64, [1], [1]),
        ]
    )
    graph.node.append(
        helper.make_node(
            "Slice",
            [probabilities, "fraud_col_start", "fraud_col_end", "fraud_col_axis"],
            [PROBABILITY.name],
            name="fraud_probability",
        )
    )
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(PROBABILITY.name, onnx.TensorProto.FLOAT, [None, 1])
    )
    graph_model.graph.name = FALLBACK.name
    onnx.checker.check_model(graph_model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(graph_model, str(path))
