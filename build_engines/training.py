"""Training and evaluation of the fraud models on a split: the primary (PyTorch -> ONNX ->
INT8), the fallback candidates, the rules and the GBDT baseline, side by side."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from build_engines import baseline, fallback, primary, slices
from build_engines.log import log
from build_engines.metrics import microseconds_per_row, quality
from build_engines.quantize import calibration_rows, quantize_primary
from build_engines.split import Split
from python_backend.fraud.contract import FALLBACK, PRIMARY
from python_backend.fraud.features import (
    ModelInputs,
)
from python_backend.fraud.rules import RuleSet
from python_backend.onnx_runner import OnnxModel

#: ONNX Runtime must match PyTorch this closely on the test set.
PARITY_TOLERANCE = 1e-4
#: INT8 is served on CPU only when it loses at most this much PR-AUC (and is faster).
INT8_MAX_PR_AUC_DROP = 0.005
MODEL_NAMES = ("primary_fp32", "primary_int8", "fallback", "rules", "gbdt_baseline")
#: Which served thresholds each model of the report is judged at.
THRESHOLD_PATH = {
    "primary_fp32": "primary",
    "primary_int8": "primary",
    "fallback": "fallback",
    "rules": "rules",
    "gbdt_baseline": "gbdt_baseline",
}


def _onnx_scorer(model: OnnxModel, inputs: ModelInputs):
    feeds = model.feeds(inputs)
    return lambda start, batch: model.run({k: v[start : start + batch] for k, v in feeds.items()})


def train_and_evaluate(
    split: Split, out_dir: Path, rules: RuleSet | None, primary_cfg: primary.PrimaryConfig
) -> tuple[dict, dict]:
    """Train every model on ``split``, export and check the ONNX files, and measure.

    Returns the report's ``models`` section and facts about the build (parity, timings).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    facts: dict = {}
    scores: dict[str, np.ndarray] = {}
    scorers = {}  # name -> scorer(start, batch) over prepared test rows, for the cost columns

    log(
        f"training the primary on {len(split.y_train):,} rows "
        f"({int(split.y_train.sum()):,} fraud), validating on {len(split.y_valid):,}"
    )
    net, facts["primary_training"] = primary.train(
        split.train, split.y_train, split.valid, split.y_valid, primary_cfg
    )
    fp32_path, int8_path = out_dir / "primary_fp32.onnx", out_dir / "primary_int8.onnx"
    primary.export_onnx(net, split.test, fp32_path)
    torch_scores = primary.predict(net, split.test)
    fp32 = OnnxModel(fp32_path, PRIMARY)
    scores["primary_fp32"] = fp32.predict(split.test)
    diff = float(np.abs(scores["primary_fp32"] - torch_scores).max())
    facts["onnx_parity_max_abs_diff"] = diff
    log(f"ONNX Runtime vs PyTorch on {len(torch_scores):,} test rows: max |diff| {diff:.2e}")
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(
            f"ONNX export differs from PyTorch by {diff:.2e} (limit {PARITY_TOLERANCE:.0e})"
        )
    scorers["primary_fp32"] = _onnx_scorer(fp32, split.test)

    log("quantizing the primary to INT8 (Q/DQ, static, calibrated on training rows)")
    calibration = calibration_rows(split.y_train)
    quantize_primary(fp32_path, int8_path, _take(split.train, calibration))
    int8 = OnnxModel(int8_path, PRIMARY)
    scores["primary_int8"] = int8.predict(split.test)
    scorers["primary_int8"] = _onnx_scorer(int8, split.test)

    fb, fb_layers, facts["fallback_candidates"] = train_fallback(
        split, out_dir, net, scorers["primary_fp32"]
    )
    scores["fallback"] = fb.predict(split.test)
    facts["fallback_parity_max_abs_diff"] = float(
        np.abs(scores["fallback"] - fb_layers.predict(split.test.tabular)).max()
    )
    scorers["fallback"] = _onnx_scorer(fb, split.test)

    log("training the LightGBM baseline")
    booster = baseline.train(split.train, split.y_train, split.valid, split.y_valid)
    booster.save_model(str(out_dir / "gbdt_baseline.txt"))
    scores["gbdt_baseline"] = baseline.predict(booster, split.test)
    stale: dict[str, np.ndarray] = {}
    if split.test_stale is not None:
        stale = {
            "primary_fp32": fp32.predict(split.test_stale),
            "primary_int8": int8.predict(split.test_stale),
            "fallback": fb.predict(split.test_stale),
            "gbdt_baseline": baseline.predict(booster, split.test_stale),
        }
    facts["gbdt_trees"] = int(booster.best_iteration)
    gbdt_x = baseline.features(split.test)
    # One thread like the other models: LightGBM's idle OpenMP workers otherwise spin and
    # slow whatever is timed after them.
    scorers["gbdt_baseline"] = lambda start, batch: booster.predict(
        gbdt_x[start : start + batch], num_iteration=booster.best_iteration, num_threads=1
    )

    if rules is not None:
        scores["rules"] = rules.evaluate(split.test.columns).scores
        if split.test_stale is not None:
            stale["rules"] = rules.evaluate(split.test_stale.columns).scores
        cols = split.test.columns
        scorers["rules"] = lambda start, batch: rules.evaluate(
            {k: v[start : start + batch] for k, v in cols.items()}
        )

    log("measuring CPU cost per row, all models side by side, batch 1 and 64")
    timings: dict[str, dict[str, float]] = {name: {} for name in scorers}
    for batch in (1, 64):
        per_row = microseconds_per_row(scorers, len(split.y_test), batch)
        for name, value in per_row.items():
            timings[name][f"us_per_row_b{batch}"] = value

    models = {}
    for name in MODEL_NAMES:
        if name not in scores:
            models[name] = None
            continue
        models[name] = {
            **quality(split.y_test, scores[name], split.test_day, split.test_card),
            "ece": slices.expected_calibration_error(split.y_test, scores[name]),
            **timings[name],
        }
    facts["test_scores"] = scores
    # Decision thresholds from the validation days, never the test days: REVIEW where 1% of
    # genuine transactions would be flagged, DECLINE at 0.1%.
    valid_scores = {"primary": fp32.predict(split.valid), "fallback": fb.predict(split.valid)}
    if rules is not None:
        valid_scores["rules"] = rules.evaluate(split.valid.columns).scores
    valid_scores["gbdt_baseline"] = baseline.predict(booster, split.valid)
    thresholds = {
        path: decision_thresholds(values, split.y_valid) for path, values in valid_scores.items()
    }
    facts["thresholds"] = {k: v for k, v in thresholds.items() if k != "gbdt_baseline"}
    by_model = {m: thresholds[path] for m, path in THRESHOLD_PATH.items() if path in thresholds}
    facts["slices"] = (
        slices.evaluate(split.y_test, split.test_slices, scores, stale, by_model)
        if split.test_slices is not None
        else None
    )
    return models, facts


def train_fallback(
    split: Split, out_dir: Path, net: primary.FraudNet, primary_scorer
) -> tuple[OnnxModel, fallback.Layers, dict]:
    """Train the fallback candidates side by side and keep the best on the validation days
    among those at least ``fallback.MIN_COST_RATIO`` times cheaper per row than the primary
    (batch 64, measured here in one run)."""
    candidates: dict[str, fallback.Layers] = {}
    facts: dict[str, dict] = {}
    log("training the fallback candidates: logistic, MLP, MLP distilled from the primary")
    candidates["logistic"] = fallback.logistic_layers(
        fallback.train(split.train.tabular, split.y_train)
    )
    candidates["mlp"], facts["mlp"] = fallback.train_mlp(
        split.train.tabular, split.y_train, split.valid.tabular, split.y_valid
    )
    teacher = primary.predict(net, split.train)
    candidates["distilled"], facts["distilled"] = fallback.train_mlp(
        split.train.tabular, split.y_train, split.valid.tabular, split.y_valid, teacher=teacher
    )
    models, scorers = {}, {"primary_fp32": primary_scorer}
    for name, layers in candidates.items():
        path = out_dir / f"fallback_{name}.onnx"
        fallback.export_onnx(layers, path)
        models[name] = OnnxModel(path, FALLBACK)
        scorers[name] = _onnx_scorer(models[name], split.test)
    cost = microseconds_per_row(scorers, len(split.y_test), 64)
    for name, model in models.items():
        facts.setdefault(name, {})
        facts[name].update(
            valid_pr_auc=round(_pr_auc(split.y_valid, model.predict(split.valid)), 4),
            test_pr_auc=round(_pr_auc(split.y_test, model.predict(split.test)), 4),
            us_per_row_b64=cost[name],
            cheaper_than_primary_b64=round(cost["primary_fp32"] / max(cost[name], 1e-9), 1),
        )
    eligible = [
        n for n in models if facts[n]["cheaper_than_primary_b64"] >= fallback.MIN_COST_RATIO
    ] or ["logistic"]
    chosen = max(eligible, key=lambda n: facts[n]["valid_pr_auc"])
    log(
        "fallback candidates (valid PR-AUC, x cheaper than the primary at b64): "
        + ", ".join(
            f"{n} {facts[n]['valid_pr_auc']:.3f} {facts[n]['cheaper_than_primary_b64']}x"
            for n in models
        )
        + f"; serving {chosen}"
    )
    facts["chosen"] = chosen
    shutil.copyfile(out_dir / f"fallback_{chosen}.onnx", out_dir / "fallback.onnx")
    return models[chosen], candidates[chosen], facts


def _pr_auc(y: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, scores))


def decision_thresholds(scores: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Scores above which 1% (review) and 0.1% (decline) of genuine rows fall."""
    genuine = np.sort(scores[y == 0])
    return {
        "review": round(float(np.quantile(genuine, 0.99)), 6),
        "decline": round(float(np.quantile(genuine, 0.999)), 6),
    }


def _take(inputs: ModelInputs, rows: np.ndarray) -> ModelInputs:
    return ModelInputs(
        inputs.tabular[rows],
        inputs.sequence[rows],
        inputs.categorical[rows],
        {k: v[rows] for k, v in inputs.columns.items()},
    )
