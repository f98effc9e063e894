"""Drift (pure logic): PSI per input and of the score, against a reference fitted on a
training window, over a window of the newest decisions."""

from __future__ import annotations

import numpy as np

from python_backend.fraud.contract import PRIMARY
from python_backend.fraud.drift import CALENDAR, SCORE, DriftWindow, Reference, psi
from python_backend.fraud.features import TABULAR_NAMES, ModelInputs


def _inputs(n: int, rng: np.random.Generator, shift: float = 0.0) -> ModelInputs:
    dims = {s.name: tuple(s.dims) for s in PRIMARY.inputs}
    tabular = rng.standard_normal((n, *dims["TABULAR"])).astype(np.float32)
    tabular[:, 0] += shift  # the amount moves
    categorical = np.stack(
        [rng.integers(1, 13, n), rng.integers(0, 24, n), rng.integers(0, 7, n)], axis=1
    )
    return ModelInputs(tabular, np.zeros((n, *dims["SEQUENCE"]), np.float32), categorical, {})


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert psi([0.5, 0.5], [50, 50]) == 0.0  # counts or shares alike
    assert psi([0.5, 0.5], [0.9, 0.1]) > 0.25
    assert np.isfinite(psi([0.5, 0.5, 0.0], [0.4, 0.4, 0.2]))  # an empty reference bin


def test_the_window_tells_a_shifted_input_from_the_stable_ones() -> None:
    rng = np.random.default_rng(0)
    train = _inputs(20_000, rng)
    reference = Reference.fit(train, rng.random(20_000), {"days": [30, 51]})
    again = Reference.from_json(reference.to_json())
    window = DriftWindow(again, window_rows=4_000)
    for _ in range(4):
        window.add(_inputs(1_000, rng), rng.random(1_000))
    stable = window.psi()
    # Every input but the calendar's (a window's weekdays say when it is, not drift).
    assert set(stable) == {*TABULAR_NAMES, "terminal_category", SCORE} - CALENDAR
    assert max(stable.values()) < 0.02, stable
    # A window of shifted amounts and lower scores: those two move, nothing else does.
    for _ in range(4):
        window.add(_inputs(1_000, rng, shift=1.0), rng.random(1_000) ** 3)
    moved = window.psi()
    assert window.rows == 4_000
    assert moved[TABULAR_NAMES[0]] > 0.25 and moved[SCORE] > 0.25
    others = {k: v for k, v in moved.items() if k not in (TABULAR_NAMES[0], SCORE)}
    assert max(others.values()) < 0.02, others
    # Back to normal: the shifted batches leave the window.
    for _ in range(4):
        window.add(_inputs(1_000, rng), rng.random(1_000))
    assert window.psi()[TABULAR_NAMES[0]] < 0.02


def test_decisions_no_model_scored_stay_out_of_the_score_bins() -> None:
    rng = np.random.default_rng(1)
    reference = Reference.fit(_inputs(5_000, rng), rng.random(5_000), {})
    window = DriftWindow(reference)
    scores = rng.random(1_000)
    scores[:500] = np.nan  # decided by the rules
    window.add(_inputs(1_000, rng), scores)
    assert window.psi()[SCORE] < 0.05


def test_the_reference_comes_from_a_file_or_a_repositorys_newest_primary(
    tmp_path, monkeypatch, capsys
) -> None:
    """``DRIFT_REFERENCE``: a reference file, a version's folder, or a model repository (the
    chart's mounted models) whose newest ``fraud_primary`` version with a reference is used;
    none found says so and measures nothing."""
    from feature_repo.__main__ import _drift_window
    from python_backend.fraud.drift import REFERENCE_FILE

    rng = np.random.default_rng(1)
    for version, days in ((1, [30, 51]), (3, [40, 61])):
        folder = tmp_path / "fraud_primary" / str(version)
        folder.mkdir(parents=True)
        Reference.fit(_inputs(500, rng), rng.random(500), {"days": days}).write(folder)
    (tmp_path / "fraud_primary" / "4").mkdir()  # a version without one is passed over
    monkeypatch.setenv("DRIFT_REFERENCE", str(tmp_path))
    assert _drift_window().reference.window == {"days": [40, 61]}
    monkeypatch.setenv("DRIFT_REFERENCE", str(tmp_path / "fraud_primary" / "1" / REFERENCE_FILE))
    assert _drift_window().reference.window == {"days": [30, 51]}
    monkeypatch.setenv("DRIFT_REFERENCE", str(tmp_path / "fraud_primary" / "1"))
    assert _drift_window().reference.window == {"days": [30, 51]}
    monkeypatch.setenv("DRIFT_REFERENCE", str(tmp_path / "fraud_primary" / "4"))
    assert _drift_window() is None
    assert "no drift reference" in capsys.readouterr().out
