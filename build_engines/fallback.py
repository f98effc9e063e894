"""The fallback model: a small network on the tabular features (no sequence).

Cheap enough to run on a CPU for every request when the primary cannot answer, and good
enough to be worth falling back to. ``make engines`` trains the candidates side by side and
serves the best on the validation days among those at least ``MIN_COST_RATIO`` times
cheaper per row than the primary:

* ``logistic``: standardize + class-weighted logistic regression (scikit-learn);
* ``mlp``: a two-layer MLP (PyTorch) on the labels;
* ``distilled``: the same MLP taught by the primary: its targets mix the label with the
  primary's probability (a student of the teacher, which sees the sequence it cannot).

Each is exported as the smallest ONNX graph that computes it: the scaler folded into the
first weights, then ``Gemm`` (+ ``Relu``) layers and ``Sigmoid``. Measured here with ONNX
Runtime on one thread, the logistic graph costs 13 µs a call at batch 1 or 64, against 21
and 35 µs for skl2onnx's ``Scaler`` + ``LinearClassifier`` graph.
Input ``TABULAR``, output ``PROBABILITY`` ``[B, 1]``, as the contract says.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from python_backend.fraud.contract import FALLBACK, PROBABILITY, TABULAR


def train(tabular: np.ndarray, y: np.ndarray) -> Pipeline:
    """Standardize, then a class-weighted L2 logistic regression."""
    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=1.0, class_weight="balanced", max_iter=2_000),
    )
    model.fit(tabular, y)
    return model


#: A fallback must be at least this many times cheaper per row (batch 64) than the primary.
MIN_COST_RATIO = 10.0
#: Weight of the primary's probability in the distilled student's targets.
DISTILL_WEIGHT = 0.5


@dataclass(frozen=True)
class MlpConfig:
    hidden: tuple[int, ...] = (32, 16)
    epochs: int = 6
    batch_size: int = 2048
    learning_rate: float = 3e-3
    seed: int = 0


@dataclass
class Layers:
    """A network as (weight ``[in, out]``, bias ``[out]``) pairs, ReLU between them, the
    input standardization already folded into the first pair."""

    layers: list[tuple[np.ndarray, np.ndarray]]

    def predict(self, tabular: np.ndarray) -> np.ndarray:
        x = np.asarray(tabular, dtype=np.float64)
        for i, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if i < len(self.layers) - 1:
                x = np.maximum(x, 0.0)
        return (1.0 / (1.0 + np.exp(-x[:, 0]))).astype(np.float32)


def logistic_layers(model: Pipeline) -> Layers:
    """The fitted scaler + logistic regression as one layer."""
    scaler: StandardScaler = model.steps[0][1]
    lr: LogisticRegression = model.steps[-1][1]
    coef = lr.coef_[0] / scaler.scale_
    intercept = lr.intercept_[0] - float(np.dot(coef, scaler.mean_))
    return Layers([(coef.reshape(-1, 1), np.array([intercept]))])


def train_mlp(
    tabular: np.ndarray,
    y: np.ndarray,
    valid_tabular: np.ndarray,
    y_valid: np.ndarray,
    teacher: np.ndarray | None = None,
    cfg: MlpConfig = MlpConfig(),
) -> tuple[Layers, dict]:
    """Train the MLP (on the labels, or with ``teacher`` probabilities mixed into the
    targets); keep the epoch with the best validation PR-AUC."""
    import torch
    from sklearn.metrics import average_precision_score
    from torch import nn

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    mean, std = tabular.mean(axis=0), tabular.std(axis=0) + 1e-3
    sizes = [tabular.shape[1], *cfg.hidden, 1]
    modules: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        modules.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            modules.append(nn.ReLU())
    net = nn.Sequential(*modules)
    x = torch.from_numpy(((tabular - mean) / std).astype(np.float32))
    xv = torch.from_numpy(((valid_tabular - mean) / std).astype(np.float32))
    target = y.astype(np.float32)
    if teacher is not None:
        target = (1 - DISTILL_WEIGHT) * target + DISTILL_WEIGHT * teacher.astype(np.float32)
    t = torch.from_numpy(target)[:, None]
    # Small data sets get small batches: a few hundred optimizer steps at the least.
    batch_size = min(cfg.batch_size, max(128, len(x) // 200))
    positives = max(float(y.sum()), 1.0)
    pos_weight = torch.tensor(np.sqrt((len(y) - positives) / positives), dtype=torch.float32)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=1e-5)
    best = (-1.0, None, 0)
    for epoch in range(cfg.epochs):
        net.train()
        order = torch.from_numpy(rng.permutation(len(x)))
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad()
            loss_fn(net(x[idx]), t[idx]).backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            ap = float(average_precision_score(y_valid, net(xv).numpy()[:, 0]))
        if ap > best[0]:
            best = (ap, {k: v.clone() for k, v in net.state_dict().items()}, epoch + 1)
    net.load_state_dict(best[1])
    linears = [m for m in net if isinstance(m, nn.Linear)]
    layers = []
    for i, linear in enumerate(linears):
        w = linear.weight.detach().numpy().T.astype(np.float64)
        b = linear.bias.detach().numpy().astype(np.float64)
        if i == 0:  # fold (x - mean) / std into the first layer
            b = b - (mean / std) @ w
            w = w / std[:, None]
        layers.append((w, b))
    return Layers(layers), {"valid_pr_auc": round(best[0], 4), "best_epoch": best[2]}


def export_onnx(layers: Layers, path: Path) -> None:
    """Write ``Gemm (-> Relu -> Gemm ...) -> Sigmoid`` for a candidate's layers (a logistic
    regression is one layer, :func:`logistic_layers`)."""
    nodes, weights = [], []
    current = TABULAR.name
    for i, (w, b) in enumerate(layers.layers):
        out = "logit" if i == len(layers.layers) - 1 else f"hidden{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [out], name=f"gemm{i}"))
        weights += [
            numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
            numpy_helper.from_array(b.astype(np.float32), f"b{i}"),
        ]
        if out != "logit":
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"], name=f"relu{i}"))
            current = f"relu{i}"
    nodes.append(helper.make_node("Sigmoid", ["logit"], [PROBABILITY.name], name="probability"))
    n = layers.layers[0][0].shape[0]
    graph = helper.make_graph(
        nodes,
        FALLBACK.name,
        [helper.make_tensor_value_info(TABULAR.name, TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor_value_info(PROBABILITY.name, TensorProto.FLOAT, ["batch", 1])],
        weights,
    )
    graph_model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="build_engines"
    )
    graph_model.ir_version = 8  # readable by every ONNX Runtime this project meets
    onnx.checker.check_model(graph_model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(graph_model, str(path))
