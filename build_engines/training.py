"""Training and evaluation of the fraud models on a split: the primary (PyTorch -> ONNX ->
INT8), the fallback candidates, the rules and the GBDT baseline, side by side."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from build_engines import baseline, fallback, heavy, primary, slices
from build_engines.log import log
from build_engines.metrics import microseconds_per_row, quality
from build_engines.quantize import calibration_rows, quantize_primary
from build_engines.split import Split
from python_backend.fraud import heavy_net
from python_backend.fraud.contract import FALLBACK, HEAVY, PRIMARY
from python_backend.fraud.features import (
    ModelInputs,
)
from python_backend.fraud.heavy_model import Blend, logit
from python_backend.fraud.history import HeavyInputs, history_columns, offline_histories
from python_backend.fraud.rules import RuleSet
from python_backend.onnx_runner import OnnxModel

#: ONNX Runtime must match PyTorch this closely on the test set.
PARITY_TOLERANCE = 1e-4
#: INT8 is served on CPU only when it loses at most this much PR-AUC (and is faster).
INT8_MAX_PR_AUC_DROP = 0.005
MODEL_NAMES = ("primary_fp32", "primary_int8", "fallback", "rules", "gbdt_baseline", "heavy")
#: Which served thresholds each model of the report is judged at.
THRESHOLD_PATH = {
    "primary_fp32": "primary",
    "primary_int8": "primary",
    "fallback": "fallback",
    "rules": "rules",
    "gbdt_baseline": "gbdt_baseline",
    "heavy": "heavy",
}
#: The heavy model's review queue: the threshold where this share of what it flags on the
#: validation days is fraud (approved transactions above it go to the ``review`` topic).
REVIEW_PRECISION = 0.5


def _onnx_scorer(model: OnnxModel, inputs: ModelInputs):
    feeds = model.feeds(inputs)
    return lambda start, batch: model.run({k: v[start : start + batch] for k, v in feeds.items()})


def train_and_evaluate(
    split: Split,
    out_dir: Path,
    rules: RuleSet | None,
    primary_cfg: primary.PrimaryConfig,
    transactions: pd.DataFrame | None = None,
    heavy_cfg: heavy.HeavyConfig | None = None,
) -> tuple[dict, dict]:
    """Train every model on ``split``, export and check the ONNX files, and measure. The
    heavy model too with ``transactions`` (its histories come from them) and ``heavy_cfg``.

    Returns the report's ``models`` section and facts about the build (parity, timings).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    facts: dict = {}
    scores: dict[str, np.ndarray] = {}
    scorers = {}  # name -> scorer(start, batch) over prepared test rows, for the cost columns

    # The trees and the heavy model first: the primary may learn from the heavy model.
    log("training the LightGBM baseline")
    booster = baseline.train(split.baseline_train, split.y_train, split.valid, split.y_valid)
    booster.save_model(str(out_dir / "gbdt_baseline.txt"))
    built_heavy, teacher = None, None
    if heavy_cfg is not None and transactions is not None and split.positions is not None:
        model, test_inputs, stale_inputs, valid_deep, facts["heavy"] = train_heavy(
            split, transactions, out_dir, heavy_cfg
        )
        # The heavy model: the deep one blended with the trees, fitted on the validation days.
        blend = Blend.fit(valid_deep, baseline.predict(booster, split.valid), split.y_valid)
        built_heavy = (model, test_inputs, stale_inputs, valid_deep, blend)
        teacher, teacher_facts = teacher_scores(split, transactions, heavy_cfg)

    net, facts["primary_training"] = train_primary(split, primary_cfg, teacher)
    primary.save(net, out_dir / "primary.pt")  # what a retrain fine-tunes from
    if teacher is not None:
        facts["primary_training"]["teacher"] = teacher_facts
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
    quantize_primary(fp32_path, int8_path, split.train.take(calibration))
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

    valid_heavy = None
    if built_heavy is not None:
        model, test_inputs, stale_inputs, valid_deep, blend = built_heavy
        valid_heavy = blend(valid_deep, baseline.predict(booster, split.valid))
        deep_test = model.predict(test_inputs)
        scores["heavy"] = blend(deep_test, scores["gbdt_baseline"])
        stale["heavy"] = blend(model.predict(stale_inputs), stale["gbdt_baseline"])
        deep_scorer = _onnx_scorer(model, test_inputs)
        scorers["heavy"] = lambda start, batch: blend(
            deep_scorer(start, batch), scorers["gbdt_baseline"](start, batch)
        )
        facts["heavy"]["blend"] = asdict(blend)
        facts["heavy"]["deep_only_test_pr_auc"] = {
            name: round(_pr_auc(split.y_test[mask], deep_test[mask]), 4)
            for name, mask in (split.test_slices or {"all": slice(None)}).items()
            if name in ("all", "new_terminal", "new_card")
        }

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
    if valid_heavy is not None:
        valid_scores["heavy"] = valid_heavy
        facts["heavy"]["review_threshold"] = threshold_at_precision(
            valid_heavy, split.y_valid, REVIEW_PRECISION
        )
    thresholds = {
        path: decision_thresholds(values, split.y_valid) for path, values in valid_scores.items()
    }
    # The served policy: the ladder's paths (the baseline and the heavy model decide nothing).
    facts["thresholds"] = {
        k: v for k, v in thresholds.items() if k not in ("gbdt_baseline", "heavy")
    }
    if "heavy" in thresholds:
        facts["heavy"]["thresholds"] = thresholds["heavy"]
    by_model = {m: thresholds[path] for m, path in THRESHOLD_PATH.items() if path in thresholds}
    facts["slices"] = (
        slices.evaluate(split.y_test, split.test_slices, scores, stale, by_model)
        if split.test_slices is not None
        else None
    )
    return models, facts


#: The teacher's share of the distilled primary's target. Chosen at the small scale with an
#: out-of-fold teacher (three seeds each, validation PR-AUC medians): 0.5 gave 0.781, 0.8 0.786
#: and 1.0 (the teacher alone) 0.748 (build_engines/README.md).
DISTILL_WEIGHT = 0.8
#: The training days cut by time into this many folds for the trees' out-of-fold scores, and
#: into this many for the deep net's (it costs more to train).
TEACHER_TREE_FOLDS = 4
TEACHER_DEEP_FOLDS = 2


def teacher_scores(
    split: Split, transactions: pd.DataFrame, cfg: heavy.HeavyConfig
) -> tuple[np.ndarray, dict]:
    """The heavy model's view of every training row, **out of fold**: the training days cut
    by time into folds, each row scored by the heavy model's two parts (the trees, and the
    deep net over the card's and terminal's histories) trained on the other folds, averaged
    in logit space.

    A model's scores of its own training rows sit on their labels (the heavy model's PR-AUC
    on them is 0.99 at the small scale) and teach the primary nothing the labels do not; out
    of fold, they carry what the heavy model generalises: which genuine rows look risky,
    which frauds look ordinary.
    """
    started = time.perf_counter()
    n = len(split.y_train)
    columns = history_columns(transactions)

    def histories(rows: np.ndarray) -> HeavyInputs:
        return HeavyInputs.of(
            split.train.take(rows), offline_histories(*columns, rows=split.positions["train"][rows])
        )

    trees = np.zeros(n, dtype=np.float32)
    for i, fold in enumerate(np.array_split(np.arange(n), TEACHER_TREE_FOLDS)):
        log(f"teacher: the trees out of fold ({i + 1}/{TEACHER_TREE_FOLDS})")
        rest = np.setdiff1d(np.arange(n), fold)
        booster = baseline.train(
            split.train.take(rest), split.y_train[rest], split.valid, split.y_valid
        )
        trees[fold] = baseline.predict(booster, split.train.take(fold))
    valid_inputs = HeavyInputs.of(
        split.valid, offline_histories(*columns, rows=split.positions["valid"])
    )
    deep = np.zeros(n, dtype=np.float32)
    for i, fold in enumerate(np.array_split(np.arange(n), TEACHER_DEEP_FOLDS)):
        log(f"teacher: the deep net out of fold ({i + 1}/{TEACHER_DEEP_FOLDS})")
        rest = np.setdiff1d(np.arange(n), fold)
        rows, weights = heavy.genuine_subsample(split.y_train[rest], cfg.genuine_share, cfg.seed)
        net, _facts = heavy.train(
            histories(rest[rows]),
            split.y_train[rest[rows]],
            weights,
            valid_inputs,
            split.y_valid,
            cfg,
        )
        for start in range(0, len(fold), 20_000):  # histories in chunks: bounded memory
            part = fold[start : start + 20_000]
            deep[part] = heavy.predict(net, histories(part))
    teacher = (1 / (1 + np.exp(-(logit(trees) + logit(deep)) / 2))).astype(np.float32)
    facts = {
        "out_of_fold": True,
        "tree_folds": TEACHER_TREE_FOLDS,
        "deep_folds": TEACHER_DEEP_FOLDS,
        "train_pr_auc": {
            "teacher": round(_pr_auc(split.y_train, teacher), 4),
            "trees": round(_pr_auc(split.y_train, trees), 4),
            "deep": round(_pr_auc(split.y_train, deep), 4),
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    log(
        f"teacher out of fold in {facts['seconds']:.0f} s: PR-AUC on the training days "
        f"{facts['train_pr_auc']['teacher']:.3f} (trees {facts['train_pr_auc']['trees']:.3f}, "
        f"deep {facts['train_pr_auc']['deep']:.3f})"
    )
    return teacher, facts


def train_primary(
    split: Split, cfg: primary.PrimaryConfig, teacher: np.ndarray | None
) -> tuple[primary.FraudNet, dict]:
    """The primary on the labels, and (with ``teacher``, the heavy model's out-of-fold scores
    of the training rows) distilled from the heavy model: the target
    ``(1 - w) * label + w * score``.
    The one with the better validation PR-AUC is kept (the test days choose nothing)."""
    log(
        f"training the primary on {len(split.y_train):,} rows "
        f"({int(split.y_train.sum()):,} fraud), validating on {len(split.y_valid):,}"
    )
    candidates = {
        "plain": primary.train(split.train, split.y_train, split.valid, split.y_valid, cfg)
    }
    if teacher is not None:
        log(f"training the primary distilled from the heavy model (weight {DISTILL_WEIGHT})")
        soft = ((1 - DISTILL_WEIGHT) * split.y_train + DISTILL_WEIGHT * teacher).astype(np.float32)
        candidates["distilled"] = primary.train(
            split.train, soft, split.valid, split.y_valid, cfg.distilled()
        )
    valid = {name: facts["valid_pr_auc"] for name, (_net, facts) in candidates.items()}
    chosen = max(valid, key=valid.get)
    log(
        "primary: "
        + ", ".join(f"{n} validation PR-AUC {v:.4f}" for n, v in valid.items())
        + f"; keeping {chosen}"
    )
    # Reported beside the choice, never used for it.
    slices = {"all": np.ones(len(split.y_test), dtype=bool)}
    if split.test_slices is not None:
        slices.update(
            {k: v for k, v in split.test_slices.items() if k in ("new_terminal", "new_card")}
        )
    tested = {}
    for name, (candidate, _facts) in candidates.items():
        test_scores = primary.predict(candidate, split.test)
        tested[name] = {
            k: round(_pr_auc(split.y_test[m], test_scores[m]), 4) for k, m in slices.items()
        }
    net, facts = candidates[chosen]
    return net, {
        **facts,
        "kept": chosen,
        "distill_weight": DISTILL_WEIGHT if teacher is not None else None,
        "candidates_valid_pr_auc": {n: round(v, 4) for n, v in valid.items()},
        "candidates_test_pr_auc": tested,
    }


def train_heavy(
    split: Split, transactions: pd.DataFrame, out_dir: Path, cfg: heavy.HeavyConfig
) -> tuple[OnnxModel, HeavyInputs, HeavyInputs, np.ndarray, dict]:
    """The heavy model: histories for its rows (a genuine subsample of the training days,
    weighted back; every validation and test row), trained, exported to ONNX and checked
    against PyTorch. Returns the ONNX model, the test rows' inputs (and with every view
    unavailable), the validation scores, and facts."""
    started = time.perf_counter()
    columns = history_columns(transactions)
    rows, weights = heavy.genuine_subsample(split.y_train, cfg.genuine_share, cfg.seed)

    def inputs(part: ModelInputs, positions: np.ndarray) -> HeavyInputs:
        return HeavyInputs.of(part, offline_histories(*columns, rows=positions))

    train_inputs = inputs(split.train.take(rows), split.positions["train"][rows])
    valid_inputs = inputs(split.valid, split.positions["valid"])
    test_histories = offline_histories(*columns, rows=split.positions["test"])
    test_inputs = HeavyInputs.of(split.test, test_histories)
    stale_inputs = HeavyInputs.of(split.test_stale or split.test, test_histories)
    histories_s = time.perf_counter() - started
    net, facts = heavy.train(
        train_inputs, split.y_train[rows], weights, valid_inputs, split.y_valid, cfg
    )
    path = out_dir / "heavy.onnx"
    heavy.export_onnx(net, test_inputs, path)
    heavy_net.save(net, out_dir / "heavy.pt")  # for the consumer's explanations (Captum)
    model = OnnxModel(path, HEAVY)
    torch_scores = heavy.predict(net, test_inputs)
    diff = float(np.abs(model.predict(test_inputs) - torch_scores).max())
    log(f"heavy model, ONNX Runtime vs PyTorch on {len(torch_scores):,} test rows: {diff:.2e}")
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(
            f"the heavy model's ONNX export differs from PyTorch by {diff:.2e} "
            f"(limit {PARITY_TOLERANCE:.0e})"
        )
    facts.update(
        onnx_parity_max_abs_diff=diff,
        histories_seconds=round(histories_s, 1),
        build_seconds=round(time.perf_counter() - started, 1),
    )
    return model, test_inputs, stale_inputs, model.predict(valid_inputs), facts


def threshold_at_precision(scores: np.ndarray, y: np.ndarray, precision: float) -> float:
    """The lowest score threshold whose flagged rows are at least ``precision`` fraud
    (the highest score when none is)."""
    from sklearn.metrics import precision_recall_curve

    p, _r, t = precision_recall_curve(y, scores)
    ok = np.flatnonzero(p[:-1] >= precision)
    return round(float(t[ok[0]] if len(ok) else scores.max()), 6)


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
