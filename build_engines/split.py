"""The time split of the simulated period (burn-in, train, valid, gap, test) and the
model inputs of each range."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from build_engines import slices
from build_engines.simulate import SimulatedData
from python_backend.fraud.features import (
    FEATURE_GROUPS,
    LABEL_DELAY_DAYS,
    ModelInputs,
)
from python_backend.fraud.offline import (
    FeatureTables,
    entity_dropout,
    model_inputs,
    view_dropout,
)

#: Days at the start whose 30-day windows are incomplete: features only, never trained on.
BURN_IN_DAYS = 30
#: Share of training rows per view decided as if that view were unavailable (stale or
#: missing), so the models know how to decide without it; serving masks a stale view so.
VIEW_DROPOUT = 0.05
#: Share of training rows per entity (card, terminal) decided as if the store had never seen
#: it: the open world's first meeting, which the log alone holds too few of to teach.
ENTITY_DROPOUT = 0.05


@dataclass
class Split:
    """Model inputs and labels of the three time ranges, and who/when for the test rows."""

    train: ModelInputs
    valid: ModelInputs
    test: ModelInputs
    y_train: np.ndarray
    y_valid: np.ndarray
    y_test: np.ndarray
    test_day: np.ndarray
    test_card: np.ndarray
    days: dict[str, list[int]]
    #: The test rows decided with every view unavailable (the ``stale_store`` slice).
    test_stale: ModelInputs | None = None
    #: Open-world slice masks over the test rows.
    test_slices: dict[str, np.ndarray] | None = None
    #: Each range's rows as positions in the transactions (joins their histories).
    positions: dict[str, np.ndarray] | None = None
    #: The training rows without the entity dropout (the view dropout kept): what the GBDT
    #: baseline trains on, the better for it (small scale: PR-AUC 0.693 against 0.687, new
    #: terminals 0.634 against 0.596), so the primary is compared with the trees at their
    #: best.
    train_plain: ModelInputs | None = None

    @property
    def baseline_train(self) -> ModelInputs:
        return self.train if self.train_plain is None else self.train_plain


def split_days(n_days: int) -> dict[str, list[int]]:
    """Train, validation, gap and test day ranges ``[first, end)`` of a simulated period.

    The gap equals the label delay: at the start of the test period the labels of the
    training days are known, and nothing of the test period leaks into training.
    """
    test = max(7, n_days // 6)
    valid = max(3, n_days // 15)
    test_start = n_days - test
    gap_start = test_start - LABEL_DELAY_DAYS
    valid_start = gap_start - valid
    if valid_start - BURN_IN_DAYS < 7:
        raise ValueError(f"{n_days} days leave under a week of training after the burn-in")
    return {
        "burn_in": [0, BURN_IN_DAYS],
        "train": [BURN_IN_DAYS, valid_start],
        "valid": [valid_start, gap_start],
        "gap": [gap_start, test_start],
        "test": [test_start, n_days],
    }


def make_split(data: SimulatedData, tables: FeatureTables) -> Split:
    tx = data.transactions
    days = split_days(data.config.n_days)
    parts = {}
    rng = np.random.default_rng(data.config.seed)
    entity_rng = np.random.default_rng([data.config.seed, 1])  # the views' draws unchanged
    positions = {}
    for name in ("train", "valid", "test"):
        lo, hi = days[name]
        inside = ((tx["day"] >= lo) & (tx["day"] < hi)).to_numpy()
        rows = tx[inside]
        positions[name] = np.flatnonzero(inside)
        dropout = view_dropout(len(rows), VIEW_DROPOUT, rng) if name == "train" else None
        unknown = entity_dropout(len(rows), ENTITY_DROPOUT, entity_rng) if name == "train" else None
        parts[name] = (model_inputs(tables, tx, rows, dropout, unknown), rows)
        if name == "train":
            train_plain = model_inputs(tables, tx, rows, dropout)
    test_rows = parts["test"][1]
    everything = np.ones(len(test_rows), dtype=bool)
    stale = model_inputs(tables, tx, test_rows, {g.name: everything for g in FEATURE_GROUPS})
    return Split(
        train=parts["train"][0],
        valid=parts["valid"][0],
        test=parts["test"][0],
        y_train=parts["train"][1]["is_fraud"].to_numpy(),
        y_valid=parts["valid"][1]["is_fraud"].to_numpy(),
        y_test=test_rows["is_fraud"].to_numpy(),
        test_day=test_rows["day"].to_numpy(),
        test_card=test_rows["card_id"].to_numpy(),
        days=days,
        test_stale=stale,
        test_slices=slices.slice_masks(tx, test_rows),
        positions=positions,
        train_plain=train_plain,
    )
