"""The heavy model's network, shared by its training (``build_engines.heavy``) and the analysis
consumer, which loads its weights to explain its scores with Captum (``python_backend.fraud.
explain``). PyTorch: the tools environment only, never serving's.

``Trunk`` and ``mlp_head`` are the primary's too (``build_engines.primary.FraudNet``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from python_backend.fraud.contract import WEIGHTS_FILE
from python_backend.fraud.features import CATEGORICAL_COLUMNS, SEQUENCE_CHANNELS
from python_backend.fraud.history import CARD_HISTORY_CHANNELS, TERMINAL_HISTORY_CHANNELS


@dataclass(frozen=True)
class HeavyShape:
    """The network's sizes (saved beside its weights)."""

    n_tabular: int
    width: int = 32
    heads: int = 4
    hidden: int = 256
    gru_hidden: int = 32


class Trunk(nn.Module):
    """What every deep fraud model reads first: the tabular features standardised, the
    categorical embeddings, and a GRU over the last transactions; ``[B, out_dim]``.

    The GRU cell is unrolled over the (short, fixed) sequence so the exported graph is made
    of MatMul/Gemm and element-wise ops: ONNX Runtime's static quantizer and TensorRT both
    handle those well. Padded steps (``valid`` = 0) leave the hidden state unchanged.
    """

    def __init__(
        self, n_tabular: int, tab_mean: np.ndarray, tab_std: np.ndarray, gru_hidden: int
    ) -> None:
        super().__init__()
        self.register_buffer("tab_mean", torch.as_tensor(tab_mean, dtype=torch.float32))
        self.register_buffer("tab_std", torch.as_tensor(tab_std, dtype=torch.float32))
        self.embeddings = nn.ModuleList(
            nn.Embedding(cardinality, min(8, (cardinality + 1) // 2))
            for _, cardinality in CATEGORICAL_COLUMNS
        )
        self.gru_hidden = gru_hidden
        self.cell = nn.GRUCell(len(SEQUENCE_CHANNELS), gru_hidden)
        self.out_dim = n_tabular + sum(e.embedding_dim for e in self.embeddings) + gru_hidden

    def forward(
        self, tabular: torch.Tensor, sequence: torch.Tensor, categorical: torch.Tensor
    ) -> torch.Tensor:
        tab = (tabular - self.tab_mean) / self.tab_std
        embedded = [emb(categorical[:, i]) for i, emb in enumerate(self.embeddings)]
        h = torch.zeros(sequence.shape[0], self.gru_hidden, dtype=sequence.dtype)
        for step in range(sequence.shape[1]):
            x = sequence[:, step, :]
            valid = x[:, -1:]
            h = valid * self.cell(x, h) + (1 - valid) * h
        return torch.cat([tab, *embedded, h], dim=1)


def mlp_head(inputs: int, hidden: int) -> nn.Sequential:
    """The head every deep fraud model ends in: two ReLU layers to one logit."""
    return nn.Sequential(
        nn.Linear(inputs, hidden),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(hidden, hidden // 2),
        nn.ReLU(),
        nn.Linear(hidden // 2, 1),
    )


class HistoryEncoder(nn.Module):
    """``[B, L, C]`` (the last channel: valid) and a query source ``[B, Q]`` -> ``[B, D]``:
    masked mean and max of per-transaction encodings, attention pooling with
    ``heads`` queries made from the judged transaction, and how many transactions there are."""

    def __init__(self, channels: int, query_in: int, width: int, heads: int) -> None:
        super().__init__()
        self.width, self.heads = width, heads
        self.encode = nn.Sequential(
            nn.Linear(channels, width), nn.GELU(), nn.Linear(width, width), nn.GELU()
        )
        self.query = nn.Linear(query_in, width * heads)
        self.out_dim = width * (2 + heads) + 1

    def forward(self, history: torch.Tensor, query_source: torch.Tensor) -> torch.Tensor:
        valid = history[:, :, -1:]  # [B, L, 1]
        h = self.encode(history) * valid  # [B, L, W]
        count = valid.sum(dim=1)  # [B, 1]
        any_valid = (count > 0).to(h.dtype)
        mean = h.sum(dim=1) / torch.clamp(count, min=1.0)
        maximum = torch.amax(h + (valid - 1.0) * 1e4, dim=1) * any_valid
        q = self.query(query_source).reshape(-1, self.heads, self.width)  # [B, H, W]
        scores = torch.matmul(q, h.transpose(1, 2)) / float(np.sqrt(self.width))  # [B, H, L]
        scores = scores + (valid.transpose(1, 2) - 1.0) * 1e4
        weights = torch.softmax(scores, dim=-1) * any_valid[:, :, None]
        attended = torch.matmul(weights, h).reshape(-1, self.heads * self.width)
        return torch.cat([mean, maximum, attended, torch.log1p(count)], dim=1)


class HeavyNet(nn.Module):
    """``(TABULAR, SEQUENCE, CATEGORICAL, CARD_HISTORY, TERMINAL_HISTORY) -> PROBABILITY``:
    the primary's trunk, the two history encoders queried from it, the head."""

    def __init__(self, shape: HeavyShape, tab_mean: np.ndarray, tab_std: np.ndarray) -> None:
        super().__init__()
        self.shape = shape
        self.trunk = Trunk(shape.n_tabular, tab_mean, tab_std, shape.gru_hidden)
        trunk = self.trunk.out_dim
        self.card = HistoryEncoder(len(CARD_HISTORY_CHANNELS), trunk, shape.width, shape.heads)
        self.terminal = HistoryEncoder(
            len(TERMINAL_HISTORY_CHANNELS), trunk, shape.width, shape.heads
        )
        self.head = mlp_head(trunk + self.card.out_dim + self.terminal.out_dim, shape.hidden)

    def logits(
        self,
        tabular: torch.Tensor,
        sequence: torch.Tensor,
        categorical: torch.Tensor,
        card_history: torch.Tensor,
        terminal_history: torch.Tensor,
    ) -> torch.Tensor:
        trunk = self.trunk(tabular, sequence, categorical)
        card = self.card(card_history, trunk)
        terminal = self.terminal(terminal_history, trunk)
        return self.head(torch.cat([trunk, card, terminal], dim=1))

    def forward(
        self,
        tabular: torch.Tensor,
        sequence: torch.Tensor,
        categorical: torch.Tensor,
        card_history: torch.Tensor,
        terminal_history: torch.Tensor,
    ) -> torch.Tensor:
        return torch.sigmoid(
            self.logits(tabular, sequence, categorical, card_history, terminal_history)
        )


def save(model: HeavyNet, path: Path) -> Path:
    torch.save({"shape": asdict(model.shape), "state": model.state_dict()}, path)
    return path


def load(folder: Path) -> HeavyNet:
    """The network saved in ``folder``, in eval mode."""
    saved = torch.load(folder / WEIGHTS_FILE, weights_only=True)
    shape = HeavyShape(**saved["shape"])
    n = shape.n_tabular
    model = HeavyNet(shape, np.zeros(n, dtype=np.float32), np.ones(n, dtype=np.float32))
    model.load_state_dict(saved["state"])
    return model.eval()
