"""The primary deep model: embeddings + tabular MLP + a GRU over the last transactions.

Trained with PyTorch on the time split, class imbalance handled with a positive-class
weight, the best epoch chosen on the validation days by average precision. Exported to ONNX
with a dynamic batch axis; the sigmoid is part of the graph, so every runtime returns a
probability.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score
from torch import nn
from tqdm import tqdm

from python_backend.contract import CATEGORICAL, MAX_BATCH_SIZE, PRIMARY, SEQUENCE, TABULAR
from python_backend.features import CATEGORICAL_COLUMNS, SEQUENCE_CHANNELS, ModelInputs


@dataclass(frozen=True)
class PrimaryConfig:
    hidden: int = 128
    gru_hidden: int = 32
    epochs: int = 8
    batch_size: int = 1024
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    seed: int = 0


class FraudNet(nn.Module):
    """``(TABULAR, SEQUENCE, CATEGORICAL) -> PROBABILITY``.

    The GRU cell is unrolled over the (short, fixed) sequence so the exported graph is made
    of MatMul/Gemm and element-wise ops: ONNX Runtime's static quantizer and TensorRT both
    handle those well. Padded steps (``valid`` = 0) leave the hidden state unchanged.
    """

    def __init__(
        self, n_tabular: int, tab_mean: np.ndarray, tab_std: np.ndarray, cfg: PrimaryConfig
    ) -> None:
        super().__init__()
        self.register_buffer("tab_mean", torch.as_tensor(tab_mean, dtype=torch.float32))
        self.register_buffer("tab_std", torch.as_tensor(tab_std, dtype=torch.float32))
        self.embeddings = nn.ModuleList(
            nn.Embedding(cardinality, min(8, (cardinality + 1) // 2))
            for _, cardinality in CATEGORICAL_COLUMNS
        )
        n_embedded = sum(e.embedding_dim for e in self.embeddings)
        self.gru_hidden = cfg.gru_hidden
        self.cell = nn.GRUCell(len(SEQUENCE_CHANNELS), cfg.gru_hidden)
        self.head = nn.Sequential(
            nn.Linear(n_tabular + n_embedded + cfg.gru_hidden, cfg.hidden),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(cfg.hidden, cfg.hidden // 2),
            nn.ReLU(),
            nn.Linear(cfg.hidden // 2, 1),
        )

    def logits(
        self, tabular: torch.Tensor, sequence: torch.Tensor, categorical: torch.Tensor
    ) -> torch.Tensor:
        tab = (tabular - self.tab_mean) / self.tab_std
        embedded = [emb(categorical[:, i]) for i, emb in enumerate(self.embeddings)]
        h = torch.zeros(sequence.shape[0], self.gru_hidden, dtype=sequence.dtype)
        for step in range(sequence.shape[1]):
            x = sequence[:, step, :]
            valid = x[:, -1:]
            h = valid * self.cell(x, h) + (1 - valid) * h
        return self.head(torch.cat([tab, *embedded, h], dim=1))

    def forward(
        self, tabular: torch.Tensor, sequence: torch.Tensor, categorical: torch.Tensor
    ) -> torch.Tensor:
        return torch.sigmoid(self.logits(tabular, sequence, categorical))


def _tensors(inputs: ModelInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(inputs.tabular),
        torch.from_numpy(inputs.sequence),
        torch.from_numpy(inputs.categorical),
    )


def predict(model: FraudNet, inputs: ModelInputs, batch_size: int = 8192) -> np.ndarray:
    """Fraud probabilities from the PyTorch model, in eval mode."""
    model.eval()
    tab, seq, cat = _tensors(inputs)
    out = []
    with torch.no_grad():
        for start in range(0, len(tab), batch_size):
            sl = slice(start, start + batch_size)
            out.append(model(tab[sl], seq[sl], cat[sl]).numpy()[:, 0])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def train(
    train_inputs: ModelInputs,
    y_train: np.ndarray,
    valid_inputs: ModelInputs,
    y_valid: np.ndarray,
    cfg: PrimaryConfig = PrimaryConfig(),
) -> tuple[FraudNet, dict]:
    """Train on the training days; keep the epoch with the best validation PR-AUC."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    mean = train_inputs.tabular.mean(axis=0)
    std = train_inputs.tabular.std(axis=0) + 1e-3
    model = FraudNet(train_inputs.tabular.shape[1], mean, std, cfg)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    positives = max(float(y_train.sum()), 1.0)
    # sqrt of the imbalance: recalls the rare class without flooding the scores.
    pos_weight = torch.tensor(np.sqrt((len(y_train) - positives) / positives), dtype=torch.float32)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    tab, seq, cat = _tensors(train_inputs)
    target = torch.from_numpy(y_train.astype(np.float32))[:, None]
    n_batches = max(1, int(np.ceil(len(tab) / cfg.batch_size)))
    best = (-1.0, None, -1)
    history = []
    started = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.from_numpy(rng.permutation(len(tab)))
        total = 0.0
        bar = tqdm(
            range(n_batches),
            desc=f"primary epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
            mininterval=1.0,
        )
        for b in bar:
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model.logits(tab[idx], seq[idx], cat[idx]), target[idx])
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        valid_ap = float(average_precision_score(y_valid, predict(model, valid_inputs)))
        history.append({"epoch": epoch + 1, "loss": total / n_batches, "valid_pr_auc": valid_ap})
        tqdm.write(
            f"  primary epoch {epoch + 1}: loss {total / n_batches:.4f}, "
            f"valid PR-AUC {valid_ap:.4f}"
        )
        if valid_ap > best[0]:
            best = (valid_ap, {k: v.clone() for k, v in model.state_dict().items()}, epoch + 1)
    model.load_state_dict(best[1])
    model.eval()
    return model, {
        "best_epoch": best[2],
        "valid_pr_auc": best[0],
        "history": history,
        "train_seconds": round(time.perf_counter() - started, 1),
        "pos_weight": float(pos_weight),
    }


def export_onnx(model: FraudNet, sample: ModelInputs, path: Path) -> None:
    """Export with a dynamic batch axis and the contract's tensor names."""
    model.eval()
    # The exporter warns about torchvision ops and pytree internals on every run: not ours.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH_SIZE * 16)
    args = tuple(t[:4] for t in _tensors(sample))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        args,
        str(path),
        input_names=[TABULAR.name, SEQUENCE.name, CATEGORICAL.name],
        output_names=[o.name for o in PRIMARY.outputs],
        dynamic_shapes={"tabular": {0: batch}, "sequence": {0: batch}, "categorical": {0: batch}},
        dynamo=True,
        external_data=False,  # one self-contained file for Triton and the quantizer
        verbose=False,
    )
