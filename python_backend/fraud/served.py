"""What the models saw, logged with each decision: the assembled model inputs of its row,
compact and versioned, so that what studies or retrains on a decision later (the heavy
model's analysis, a label join) reads exactly what serving read, not features recomputed.

One row is ``TABULAR``, ``SEQUENCE`` (flattened) and ``CATEGORICAL`` as float32 side by side,
base64 (62 values: 332 characters), with the hash of their layout (tensor names and shapes,
the tabular columns and their transforms, the sequence channels, the categorical columns).
A reader refuses rows of another layout by name rather than misreading them.
"""

from __future__ import annotations

import base64
import hashlib
import json

import numpy as np

from python_backend.fraud.contract import CATEGORICAL, PRIMARY, SEQUENCE, TABULAR
from python_backend.fraud.features import (
    CATEGORICAL_COLUMNS,
    SEQUENCE_CHANNELS,
    TABULAR_COLUMNS,
    ModelInputs,
)

_WIDTHS = [int(np.prod(spec.dims)) for spec in PRIMARY.inputs]


def _layout() -> str:
    described = {
        "tensors": [[s.name, list(s.dims)] for s in PRIMARY.inputs],
        "tabular": [list(c) for c in TABULAR_COLUMNS],
        "sequence": list(SEQUENCE_CHANNELS),
        "categorical": [list(c) for c in CATEGORICAL_COLUMNS],
    }
    return hashlib.sha256(json.dumps(described).encode()).hexdigest()[:12]


#: The layout's hash, carried by every logged row.
LAYOUT = _layout()


class LayoutError(ValueError):
    """Logged inputs of another layout than this code's."""


def encode_rows(inputs: ModelInputs) -> list[bytes]:
    """Each row of ``inputs`` as its float32 bytes (one matrix, one copy per row)."""
    n = len(inputs.tabular)
    matrix = np.hstack(
        [
            inputs.tabular.reshape(n, -1),
            inputs.sequence.reshape(n, -1),
            inputs.categorical.reshape(n, -1),
        ]
    ).astype(np.float32)
    return [row.tobytes() for row in matrix]


def logged(inputs: ModelInputs) -> list[dict]:
    """The ``inputs`` field of each row's decision-log record (its rows raw bytes: the
    binary record carries them as they are, the JSON one as base64)."""
    return [{"layout": LAYOUT, "rows": rows} for rows in encode_rows(inputs)]


def json_ready(field: dict) -> dict:
    """A logged ``inputs`` field as JSON holds it (the rows base64 text)."""
    rows = field["rows"]
    return {**field, "rows": base64.b64encode(rows).decode() if isinstance(rows, bytes) else rows}


def raw_rows(rows: bytes | str) -> bytes:
    """A logged field's rows as bytes, whether raw (a binary record) or base64 (JSON)."""
    return rows if isinstance(rows, bytes) else base64.b64decode(rows)


def decode(fields: list[dict]) -> ModelInputs:
    """The model inputs of logged rows (each a record's ``inputs``: rows as bytes, or as
    base64 text from a JSON record)."""
    for field in fields:
        if field.get("layout") != LAYOUT:
            raise LayoutError(
                f"inputs logged with layout {field.get('layout')!r}, this code reads {LAYOUT}"
            )
    raw = b"".join(raw_rows(f["rows"]) for f in fields)
    matrix = np.frombuffer(raw, dtype=np.float32).reshape(len(fields), sum(_WIDTHS))
    tab, seq, cat = np.split(matrix, np.cumsum(_WIDTHS)[:-1], axis=1)
    return ModelInputs(
        np.ascontiguousarray(tab),
        np.ascontiguousarray(seq.reshape(-1, *SEQUENCE.dims)),
        np.ascontiguousarray(cat).astype(CATEGORICAL.dtype),
        {},
    )


def tabular_values(inputs: ModelInputs) -> dict[str, np.ndarray]:
    """The tabular columns as the features' own values (the log1p ones transformed back)."""
    out = {}
    for i, (name, how) in enumerate(TABULAR_COLUMNS):
        column = inputs.tabular[:, i].astype(np.float64)
        out[name] = np.expm1(column) if how == "log1p" else column
    return out


__all__ = ["LAYOUT", "TABULAR", "LayoutError", "decode", "encode_rows", "logged"]
