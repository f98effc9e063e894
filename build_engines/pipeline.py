"""``make engines``: data -> features -> models -> ONNX -> INT8 -> engines -> repository.

Each run writes:

* ``build/data/<scale>/``: the simulated transactions and the daily feature snapshots
  (``card_daily.parquet``, ``terminal_daily.parquet``) that Feast materializes online;
* ``build/models/<scale>/``: ONNX files, the LightGBM baseline;
* ``build/reports/``: ``model_quality.json``, ``model_quality.md``, a PR-curve plot;
* ``model_repository/fraud_primary`` and ``fraud_fallback``: weights, ``metadata.json``
  and ``config.pbtxt`` for this machine (TensorRT where possible, ONNX Runtime elsewhere).

A run whose inputs (data config, code, pinned versions) match the last finished one only
checks that the artifacts are in place and returns.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from build_engines import baseline, fallback, primary, report, slices
from build_engines.featurize import FeatureTables, model_inputs, view_dropout
from build_engines.metrics import microseconds_per_row, quality
from build_engines.quantize import calibration_rows, quantize_primary
from build_engines.simulate import SimulatedData, SimulationConfig, describe, simulate
from build_engines.tensorrt import build_engines, tensorrt_availability
from build_engines.triton_config import (
    fallback_config,
    primary_config,
    refresh_configs,
    scoring_config,
)
from python_backend.contract import FALLBACK, PRIMARY
from python_backend.features import FEATURE_GROUPS, LABEL_DELAY_DAYS, TABULAR_NAMES, ModelInputs
from python_backend.onnx_runner import OnnxModel
from python_backend.rules import RuleSet, load_rules

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"
MODEL_REPOSITORY = ROOT / "model_repository"
#: Days at the start whose 30-day windows are incomplete: features only, never trained on.
BURN_IN_DAYS = 30
#: ONNX Runtime must match PyTorch this closely on the test set.
PARITY_TOLERANCE = 1e-4
#: INT8 is served on CPU only when it loses at most this much PR-AUC (and is faster).
INT8_MAX_PR_AUC_DROP = 0.005
MODEL_NAMES = ("primary_fp32", "primary_int8", "fallback", "rules", "gbdt_baseline")
#: Share of training rows per view decided as if that view were unavailable (stale or
#: missing), so the models know how to decide without it; serving masks a stale view so.
VIEW_DROPOUT = 0.05
#: Which served thresholds each model of the report is judged at.
THRESHOLD_PATH = {
    "primary_fp32": "primary",
    "primary_int8": "primary",
    "fallback": "fallback",
    "rules": "rules",
    "gbdt_baseline": "gbdt_baseline",
}


def log(message: str) -> None:
    print(f"[engines {time.strftime('%H:%M:%S')}] {message}", flush=True)


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
    for name in ("train", "valid", "test"):
        lo, hi = days[name]
        rows = tx[(tx["day"] >= lo) & (tx["day"] < hi)]
        dropout = view_dropout(len(rows), VIEW_DROPOUT, rng) if name == "train" else None
        parts[name] = (model_inputs(tables, tx, rows, dropout), rows)
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
    )


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_key(config: SimulationConfig, primary_cfg: primary.PrimaryConfig) -> str:
    """Fingerprint of everything a build depends on: configs, code, pinned versions."""
    digest = hashlib.sha256(json.dumps([asdict(config), asdict(primary_cfg)]).encode())
    sources = [
        *sorted((ROOT / "build_engines").glob("*.py")),
        *sorted((ROOT / "python_backend").glob("*.py")),
        *sorted((ROOT / "python_backend").glob("*.yaml")),
        ROOT / "constraints.txt",
    ]
    for path in sources:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def framework_versions() -> dict[str, str]:
    import lightgbm
    import onnx
    import onnxruntime
    import sklearn
    import torch

    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "scikit-learn": sklearn.__version__,
        "lightgbm": lightgbm.__version__,
        "numpy": np.__version__,
    }


def _write_model_version(
    model_dir: Path, files: dict[str, Path], metadata: dict, config: str
) -> Path:
    version = model_dir / "1"
    version.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        shutil.copyfile(source, version / name)
    (version / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    (model_dir / "config.pbtxt").write_text(config)
    return version


def build_all(
    scale: str = "default",
    seed: int = 7,
    force: bool = False,
    primary_cfg: primary.PrimaryConfig | None = None,
    repository: Path = MODEL_REPOSITORY,
    build_dir: Path = BUILD,
) -> dict:
    """Run the whole offline pipeline; returns the quality report.

    ``repository`` and ``build_dir`` default to the project's; tests point them elsewhere.
    """
    started = time.perf_counter()
    reports = build_dir / "reports"
    config = SimulationConfig.scale(scale, seed=seed)
    primary_cfg = primary_cfg or primary.PrimaryConfig()
    key = build_key(config, primary_cfg)
    report_path = reports / "model_quality.json"
    outputs = [repository / m / "1" / "model.onnx" for m in (PRIMARY.name, FALLBACK.name)]
    outputs.append(repository / "fraud_scoring" / "1" / "decision_policy.json")
    if not force and report_path.exists() and all(p.exists() for p in outputs):
        previous = json.loads(report_path.read_text())
        if previous.get("build_key") == key:
            refresh_configs(repository)
            log(f"up to date (build {key}): {_shown(report_path)}; `make engines FORCE=1` rebuilds")
            return previous

    data_dir = build_dir / "data" / scale
    data_key_path = data_dir / "config.json"
    # The simulator's code is part of the data's identity: a changed world is simulated anew.
    simulator = hashlib.sha256((ROOT / "build_engines" / "simulate.py").read_bytes()).hexdigest()
    data_key = {**asdict(config), "simulator": simulator[:16]}
    if (
        data_key_path.exists()
        and json.loads(data_key_path.read_text()) == json.loads(json.dumps(data_key))
        and (data_dir / "transactions.parquet").exists()
    ):
        log(f"reusing simulated data in {_shown(data_dir)}")
        data = SimulatedData.read(data_dir, config)
    else:
        log(f"simulating transactions (scale {scale}, seed {seed})")
        data = simulate(config)
        data.write(data_dir)
        data_key_path.write_text(json.dumps(data_key))
    summary = describe(data)
    log(
        f"{summary['transactions']:,} transactions, {summary['cards']:,} cards, fraud rate "
        f"{summary['fraud_rate']:.3%}: {summary['fraud_by_scenario']}"
    )

    log("computing point-in-time features (daily snapshots, recent buffers)")
    tables = FeatureTables.build(data.transactions, data.terminals)
    tables.card_daily.to_parquet(data_dir / "card_daily.parquet", index=False)
    tables.terminal_daily.to_parquet(data_dir / "terminal_daily.parquet", index=False)
    split = make_split(data, tables)
    rules = load_rules()
    models, facts = train_and_evaluate(split, build_dir / "models" / scale, rules, primary_cfg)

    # CPU serving: INT8 only where it is as good and faster, measured just now.
    int8_ok = (
        models["primary_fp32"]["pr_auc"] - models["primary_int8"]["pr_auc"] <= INT8_MAX_PR_AUC_DROP
    )
    int8_faster = (
        models["primary_int8"]["us_per_row_b64"] < models["primary_fp32"]["us_per_row_b64"]
    )
    cpu_primary = "primary_int8" if int8_ok and int8_faster else "primary_fp32"

    trt = tensorrt_availability()
    model_dir = build_dir / "models" / scale
    engines: dict[str, str] = {}
    if trt.ok:
        engines = build_engines(
            model_dir / "primary_fp32.onnx",
            model_dir / "primary_int8.onnx",
            model_dir,
            PRIMARY,
            log=log,
        )
        variant = "tensorrt"
    else:
        print(f"TensorRT engines skipped: {trt.reason}; serving the ONNX Runtime (CPU) variant.")
        variant = "cpu"

    built_at = datetime.now(UTC).isoformat(timespec="seconds")
    data_fingerprint = _sha256(data_dir / "transactions.parquet")
    common = {
        "build_key": key,
        "scale": scale,
        "built_at": built_at,
        "data_fingerprint": data_fingerprint,
        "data": summary,
        "split_days": split.days,
        "frameworks": framework_versions(),
        "variant": variant,
    }
    primary_files = {
        "model.onnx": model_dir / f"{cpu_primary}.onnx",
        "model.fp32.onnx": model_dir / "primary_fp32.onnx",
        "model.int8.onnx": model_dir / "primary_int8.onnx",
    }
    if engines:
        primary_files["model.plan"] = Path(engines["fp16"])
        primary_files["model.int8.plan"] = Path(engines["int8"])
    primary_version = _write_model_version(
        repository / PRIMARY.name,
        primary_files,
        {
            **common,
            "serves": cpu_primary if variant == "cpu" else "tensorrt_fp16",
            "metrics": {k: models[k] for k in ("primary_fp32", "primary_int8")},
            "tabular_columns": list(TABULAR_NAMES),
            "training": facts["primary_training"],
            "onnx_parity_max_abs_diff": facts["onnx_parity_max_abs_diff"],
        },
        primary_config(variant),
    )
    fallback_version = _write_model_version(
        repository / FALLBACK.name,
        {"model.onnx": model_dir / "fallback.onnx"},
        {**common, "metrics": models["fallback"], "tabular_columns": list(TABULAR_NAMES)},
        fallback_config(variant),
    )

    policy_dir = repository / "fraud_scoring" / "1"
    policy_dir.mkdir(parents=True, exist_ok=True)
    (repository / "fraud_scoring" / "config.pbtxt").write_text(scoring_config())
    (policy_dir / "decision_policy.json").write_text(
        json.dumps({"build_key": key, "thresholds": facts["thresholds"]}, indent=2) + "\n"
    )

    result = {
        "build_key": key,
        "built_at": built_at,
        "scale": scale,
        "data": summary,
        "split_days": split.days,
        "test_rows": len(split.y_test),
        "test_frauds": int(split.y_test.sum()),
        "models": models,
        "cpu_serves": cpu_primary,
        "onnx_parity_max_abs_diff": facts["onnx_parity_max_abs_diff"],
        "fallback_parity_max_abs_diff": facts["fallback_parity_max_abs_diff"],
        "int8_pr_auc_drop": round(
            models["primary_fp32"]["pr_auc"] - models["primary_int8"]["pr_auc"], 4
        ),
        "int8_cpu_speedup_b64": round(
            models["primary_fp32"]["us_per_row_b64"] / models["primary_int8"]["us_per_row_b64"], 2
        ),
        "decision_thresholds": facts["thresholds"],
        "slices": facts["slices"],
        "slice_targets": slices.targets(facts["slices"]),
        "fallback_candidates": facts["fallback_candidates"],
        "fallback_pr_auc_ratio": round(
            models["fallback"]["pr_auc"] / max(models["primary_fp32"]["pr_auc"], 1e-9), 3
        ),
        "fallback_cost_ratio_b64": round(
            models["primary_fp32"]["us_per_row_b64"] / models["fallback"]["us_per_row_b64"], 1
        ),
        "tensorrt": {"built": trt.ok, "reason": trt.reason, "engines": engines},
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    written = report.write(
        result,
        facts["test_scores"],
        split.y_test,
        reports,
        "model_quality",
        f"Simulated transactions ({scale})",
    )
    log(f"built in {result['build_seconds']:.0f} s")
    for label, path in [
        ("primary", primary_version),
        ("fallback", fallback_version),
        *written.items(),
    ]:
        print(f"  {label:>10}: {_shown(Path(path))}")
    return result


def _shown(path: Path) -> str:
    """A path relative to the project when inside it, for short log lines."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
