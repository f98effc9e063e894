"""Drift: how far live traffic has moved from the primary's training window, per model input and
for the score, as the population stability index (PSI).

A reference (``drift_reference.json`` beside each ``fraud_primary`` version, written by
``make engines`` and ``make retrain`` from the version's own training rows) holds, per tabular
input but the calendar ones (the values the model reads, after their transforms), the edges
of its deciles over the training window and the share of rows in each bin; the same for the
categorical inputs (one bin per value) and for the primary's score. A consumer of the
decision log (the analysis, whose records carry the served inputs) keeps the bin counts of
the last ``window_rows`` decisions (:class:`DriftWindow`) and reports

    PSI = sum over bins (live share - reference share) * ln(live share / reference share)

(shares floored at 1e-4, so an empty bin counts as rare, not infinite). Usual reading: under
0.1 stable, 0.1 to 0.25 moving, over 0.25 shifted. Sampling alone adds about
(bins - 1) / window rows (0.002 for 10 bins over 5,000 decisions).

Numpy only: the serving interpreter may import it.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from python_backend.fraud.features import CATEGORICAL_COLUMNS, TABULAR_NAMES, ModelInputs

REFERENCE_FILE = "drift_reference.json"
#: Inputs left out: their distribution over a window of decisions depends on when the window
#: is (5,000 decisions are minutes at 200/s: one hour of one weekday), not on drift. Measured
#: on a replay: weekday PSI 4.8 and is_weekend 2.4 over two days against a three-week
#: training window, with nothing wrong.
CALENDAR = frozenset({"hour_sin", "hour_cos", "is_night", "is_weekend", "hour", "weekday"})
BINS = 10
FLOOR = 1e-4
SCORE = "score"


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """The PSI of ``actual`` bin shares (or counts) against ``expected`` ones."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), 0)
    a = np.maximum(np.asarray(actual, dtype=np.float64), 0)
    e = np.maximum(e / max(e.sum(), 1e-12), FLOOR)
    a = np.maximum(a / max(a.sum(), 1e-12), FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass
class Binned:
    """One input's bins: inner edges (values at or above edge i fall past bin i) or, for a
    categorical input, ``None`` with one bin per value below ``size``."""

    edges: np.ndarray | None
    size: int
    expected: np.ndarray

    def counts(self, values: np.ndarray) -> np.ndarray:
        if self.edges is None:
            which = np.clip(values.astype(np.int64), 0, self.size - 1)
        else:
            which = np.searchsorted(self.edges, values, side="right")
        return np.bincount(which, minlength=self.size)[: self.size]


def _binned_numeric(values: np.ndarray) -> Binned:
    values = values[np.isfinite(values)]
    edges = np.unique(np.quantile(values, np.linspace(0, 1, BINS + 1)[1:-1]))
    probe = Binned(edges, len(edges) + 1, np.zeros(len(edges) + 1))
    counts = probe.counts(values)
    return Binned(edges, len(edges) + 1, counts / max(counts.sum(), 1))


def _binned_categorical(values: np.ndarray, size: int) -> Binned:
    probe = Binned(None, size, np.zeros(size))
    counts = probe.counts(values)
    return Binned(None, size, counts / max(counts.sum(), 1))


@dataclass
class Reference:
    """The training window's bins per input name (tabular, categorical) and the score's."""

    inputs: dict[str, Binned]
    window: dict

    @classmethod
    def fit(cls, inputs: ModelInputs, scores: np.ndarray, window: dict) -> Reference:
        binned = {
            name: _binned_numeric(inputs.tabular[:, i].astype(np.float64))
            for i, name in enumerate(TABULAR_NAMES)
            if name not in CALENDAR
        }
        for i, (name, size) in enumerate(CATEGORICAL_COLUMNS):
            if name not in CALENDAR:
                binned[name] = _binned_categorical(inputs.categorical[:, i], size)
        binned[SCORE] = _binned_numeric(np.asarray(scores, dtype=np.float64))
        return cls(binned, window)

    def columns(self, inputs: ModelInputs, scores: np.ndarray) -> dict[str, np.ndarray]:
        """The values each binned input takes in ``inputs`` (and the scores)."""
        out = {name: inputs.tabular[:, i] for i, name in enumerate(TABULAR_NAMES)}
        for i, (name, _) in enumerate(CATEGORICAL_COLUMNS):
            out[name] = inputs.categorical[:, i]
        out[SCORE] = np.asarray(scores, dtype=np.float64)
        return {name: out[name] for name in self.inputs}

    def to_json(self) -> dict:
        return {
            "bins": BINS,
            "window": self.window,
            "inputs": {
                name: {
                    "edges": None if b.edges is None else [float(e) for e in b.edges],
                    "size": b.size,
                    "expected": [round(float(x), 6) for x in b.expected],
                }
                for name, b in self.inputs.items()
            },
        }

    @classmethod
    def from_json(cls, raw: dict) -> Reference:
        return cls(
            {
                name: Binned(
                    None if b["edges"] is None else np.asarray(b["edges"], dtype=np.float64),
                    int(b["size"]),
                    np.asarray(b["expected"], dtype=np.float64),
                )
                for name, b in raw["inputs"].items()
            },
            raw.get("window", {}),
        )

    def write(self, folder: Path) -> Path:
        path = folder / REFERENCE_FILE
        path.write_text(json.dumps(self.to_json()) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> Reference:
        if path.is_dir():
            path = path / REFERENCE_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: rebuild with `make engines`")
        return cls.from_json(json.loads(path.read_text()))


def newest_reference(repository: Path) -> Path | None:
    """The reference of the newest ``fraud_primary`` version that has one (a challenger
    being rolled out is compared with its own training window), or None."""
    folder = repository / "fraud_primary"
    versions = (
        sorted(
            (
                int(p.name)
                for p in folder.glob("*")
                if p.name.isdigit() and (p / REFERENCE_FILE).exists()
            ),
        )
        if folder.exists()
        else []
    )
    return folder / str(versions[-1]) / REFERENCE_FILE if versions else None


class DriftWindow:
    """Bin counts of the last ``window_rows`` decisions (whole batches: a batch leaves when
    the rows after it fill the window), and their PSI against the reference."""

    def __init__(self, reference: Reference, window_rows: int = 5_000) -> None:
        self.reference = reference
        self.window_rows = window_rows
        self._batches: deque[tuple[int, dict[str, np.ndarray]]] = deque()
        self._totals = {
            name: np.zeros(b.size, dtype=np.int64) for name, b in reference.inputs.items()
        }
        self.rows = 0

    def add(self, inputs: ModelInputs, scores: np.ndarray) -> None:
        """A batch of decisions: their served inputs and the scores they were decided on
        (NaN for a decision no model scored: left out of the score's bins)."""
        columns = self.reference.columns(inputs, scores)
        counts = {}
        for name, values in columns.items():
            if name == SCORE:
                values = values[np.isfinite(values)]
            counts[name] = self.reference.inputs[name].counts(values)
            self._totals[name] += counts[name]
        n = len(inputs.tabular)
        self._batches.append((n, counts))
        self.rows += n
        while self._batches and self.rows - self._batches[0][0] >= self.window_rows:
            gone, old = self._batches.popleft()
            self.rows -= gone
            for name, c in old.items():
                self._totals[name] -= c

    def psi(self) -> dict[str, float]:
        """PSI per input (and ``score``); empty before the first batch."""
        if not self.rows:
            return {}
        return {
            name: round(psi(self.reference.inputs[name].expected, total), 5)
            for name, total in self._totals.items()
            if total.sum()
        }
