"""The heavy model: what the primary sees, plus the card's last 64 and the terminal's last 32
transactions (``python_backend.fraud.history``), for the analysis that studies every
decision off the hot path (``feature_repo analyze``) and teaches the real-time model.

Each history is encoded per past transaction by a small MLP, then pooled three ways over the
transactions that are there (the ``valid`` channel): the mean, the maximum, and attention
whose queries come from the transaction being judged ("which past transactions matter for
this one"). The primary's trunk (tabular features, embeddings, the GRU over the last five)
joins them in the head. Attention is written out as MatMul/Softmax, so the graph stays
simple for ONNX Runtime and TensorRT; a card with no history pools to zeros, never NaN.

Training reuses the primary's loop (``primary.fit``): best epoch on the validation days,
Platt-calibrated there. To bound its time it keeps every fraud and a share of the genuine
rows (weighted back up in the loss) and stops when the validation PR-AUC has not improved
for ``patience`` epochs or when ``max_train_seconds`` are spent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from build_engines import primary
from build_engines.log import log
from python_backend.fraud.contract import HEAVY
from python_backend.fraud.heavy_net import HeavyNet, HeavyShape
from python_backend.fraud.history import HeavyInputs


@dataclass(frozen=True)
class HeavyConfig:
    width: int = 32
    heads: int = 4
    hidden: int = 256
    gru_hidden: int = 32
    epochs: int = 10
    batch_size: int = 512
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    pos_weight_power: float = 0.25
    #: Share of the genuine training rows kept (every fraud is); they weigh 1/share.
    genuine_share: float = 1.0
    #: Epochs without a better validation PR-AUC before training stops.
    patience: int = 3
    #: Training stops after the epoch that passes this many seconds (the best one is kept).
    max_train_seconds: float = 600.0
    seed: int = 0

    @classmethod
    def for_scale(cls, scale: str) -> HeavyConfig:
        """Sized so ``make engines`` adds at most about a minute at the small scale and ten
        at the default one on a 2-core machine (measured; see build_engines/README.md)."""
        sizes = {
            "tiny": dict(epochs=4, max_train_seconds=60.0),
            "small": dict(epochs=8, genuine_share=0.5, max_train_seconds=40.0),
            "default": dict(epochs=8, genuine_share=0.15, max_train_seconds=420.0),
        }
        return cls(**sizes.get(scale, {}))


def tensors(inputs: HeavyInputs) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(getattr(inputs, spec.field)) for spec in HEAVY.inputs)


def genuine_subsample(y: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows kept for training (every fraud, ``share`` of the genuine ones) and their loss
    weights (1 for frauds, 1/share for the genuine rows kept): the expected loss is the
    full set's, in a fraction of the time."""
    if share >= 1.0:
        return np.arange(len(y)), np.ones(len(y), dtype=np.float32)
    rng = np.random.default_rng(seed)
    keep = (y == 1) | (rng.random(len(y)) < share)
    rows = np.flatnonzero(keep)
    weights = np.where(y[rows] == 1, 1.0, 1.0 / share).astype(np.float32)
    return rows, weights


def train(
    train_inputs: HeavyInputs,
    y_train: np.ndarray,
    weights: np.ndarray,
    valid_inputs: HeavyInputs,
    y_valid: np.ndarray,
    cfg: HeavyConfig,
) -> tuple[HeavyNet, dict]:
    """Train on the training rows given (``genuine_subsample``'s, with its ``weights``);
    keep the epoch with the best validation PR-AUC; calibrate on the validation days."""
    torch.manual_seed(cfg.seed)
    mean = train_inputs.tabular.mean(axis=0)
    std = train_inputs.tabular.std(axis=0) + 1e-3
    shape = HeavyShape(
        train_inputs.tabular.shape[1], cfg.width, cfg.heads, cfg.hidden, cfg.gru_hidden
    )
    model = HeavyNet(shape, mean, std)
    log(
        f"training the heavy model on {len(y_train):,} rows (every fraud, "
        f"{cfg.genuine_share:.0%} of the genuine ones, weighted back), at most "
        f"{cfg.epochs} epochs or {cfg.max_train_seconds:.0f} s"
    )
    facts = primary.fit(
        model,
        tensors(train_inputs),
        y_train,
        tensors(valid_inputs),
        y_valid,
        primary.FitSettings(
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            weight_decay=cfg.weight_decay,
            pos_weight_power=cfg.pos_weight_power,
            seed=cfg.seed,
            patience=cfg.patience,
            max_seconds=cfg.max_train_seconds,
            name="heavy",
        ),
        sample_weight=None if cfg.genuine_share >= 1.0 else weights,
    )
    facts["calibration"] = primary.calibrate(model, tensors(valid_inputs), y_valid)
    facts["train_rows"] = len(y_train)
    facts["genuine_share"] = cfg.genuine_share
    return model, facts


def predict(model: HeavyNet, inputs: HeavyInputs) -> np.ndarray:
    return primary.predict_tensors(model, tensors(inputs))


def export_onnx(model: HeavyNet, sample: HeavyInputs, path) -> None:
    primary.export_onnx(model, tensors(sample), path, HEAVY)
