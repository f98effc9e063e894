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
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from build_engines import heavy, primary, report, slices
from build_engines.log import log, shown
from build_engines.provenance import build_key, framework_versions, sha256_file
from build_engines.simulate import SimulatedData, SimulationConfig, describe, simulate
from build_engines.split import make_split
from build_engines.tensorrt import build_engines, tensorrt_availability
from build_engines.training import (
    INT8_MAX_PR_AUC_DROP,
    REVIEW_PRECISION,
    train_and_evaluate,
)
from build_engines.triton_config import (
    fallback_config,
    primary_config,
    primary_placement,
    refresh_configs,
    scoring_config,
)
from python_backend.fraud.contract import FALLBACK, HEAVY, PRIMARY, WEIGHTS_FILE
from python_backend.fraud.drift import REFERENCE_FILE, Reference
from python_backend.fraud.features import (
    TABULAR_NAMES,
)
from python_backend.fraud.heavy_model import DEEP_FILE, TREES_FILE
from python_backend.fraud.history import history_layout
from python_backend.fraud.offline import FeatureTables
from python_backend.fraud.rules import load_rules
from python_backend.onnx_runner import OnnxModel
from python_backend.paths import BUILD, MODEL_REPOSITORY, ROOT


def _write_model_version(
    model_dir: Path, files: dict[str, Path], metadata: dict, config: str | None
) -> Path:
    """Version 1 of a model; ``config`` None: a model no Triton serves (the heavy model,
    run by the analysis consumer), so no ``config.pbtxt``."""
    version = model_dir / "1"
    version.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        shutil.copyfile(source, version / name)
    (version / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    if config is not None:
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
    outputs = [
        repository / m / "1" / "model.onnx" for m in (PRIMARY.name, FALLBACK.name, HEAVY.name)
    ]
    outputs.append(repository / "fraud_scoring" / "1" / "decision_policy.json")
    outputs.append(repository / PRIMARY.name / "1" / REFERENCE_FILE)
    outputs.append(repository / PRIMARY.name / "1" / WEIGHTS_FILE)
    if not force and report_path.exists() and all(p.exists() for p in outputs):
        previous = json.loads(report_path.read_text())
        if previous.get("build_key") == key:
            refresh_configs(repository)
            log(f"up to date (build {key}): {shown(report_path)}; `make engines FORCE=1` rebuilds")
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
        log(f"reusing simulated data in {shown(data_dir)}")
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
    models, facts = train_and_evaluate(
        split,
        build_dir / "models" / scale,
        rules,
        primary_cfg,
        transactions=data.transactions,
        heavy_cfg=heavy.HeavyConfig.for_scale(scale),
    )

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
    data_fingerprint = sha256_file(data_dir / "transactions.parquet")
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
        WEIGHTS_FILE: model_dir / "primary.pt",
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
    # What live traffic is compared with (PSI per input and of the score): the training days.
    train_scores = OnnxModel(model_dir / "primary_fp32.onnx", PRIMARY).predict(split.train)
    Reference.fit(split.train, train_scores, {"days": split.days["train"]}).write(primary_version)
    fallback_version = _write_model_version(
        repository / FALLBACK.name,
        {"model.onnx": model_dir / "fallback.onnx"},
        {**common, "metrics": models["fallback"], "tabular_columns": list(TABULAR_NAMES)},
        fallback_config(variant),
    )

    heavy_facts = facts["heavy"]
    heavy_version = _write_model_version(
        repository / HEAVY.name,
        {
            DEEP_FILE: model_dir / "heavy.onnx",
            TREES_FILE: model_dir / "gbdt_baseline.txt",
            WEIGHTS_FILE: model_dir / "heavy.pt",
        },
        {
            **common,
            "metrics": models["heavy"],
            "tabular_columns": list(TABULAR_NAMES),
            "history": history_layout(),
            "training": {k: v for k, v in heavy_facts.items() if k != "history"},
            "epochs": heavy_facts["history"],
            "thresholds": heavy_facts["thresholds"],
            "review_threshold": heavy_facts["review_threshold"],
            "review_precision": REVIEW_PRECISION,
            "blend": heavy_facts["blend"],
        },
        None,
    )

    policy_dir = repository / "fraud_scoring" / "1"
    policy_dir.mkdir(parents=True, exist_ok=True)
    (repository / "fraud_scoring" / "config.pbtxt").write_text(
        scoring_config(primary=primary_placement(variant))
    )
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
        "primary_kept": facts["primary_training"]["kept"],
        "primary_candidates": {
            "valid_pr_auc": facts["primary_training"]["candidates_valid_pr_auc"],
            "test_pr_auc": facts["primary_training"]["candidates_test_pr_auc"],
            "distill_weight": facts["primary_training"]["distill_weight"],
            "teacher": facts["primary_training"].get("teacher"),
        },
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
        "heavy": {
            "pr_auc_gain_over_primary": round(
                models["heavy"]["pr_auc"] - models["primary_fp32"]["pr_auc"], 4
            ),
            "train_rows": heavy_facts["train_rows"],
            "genuine_share": heavy_facts["genuine_share"],
            "epochs_run": heavy_facts["epochs_run"],
            "best_epoch": heavy_facts["best_epoch"],
            "stopped_by": heavy_facts["stopped_by"],
            "train_seconds": heavy_facts["train_seconds"],
            "build_seconds": heavy_facts["build_seconds"],
            "onnx_parity_max_abs_diff": heavy_facts["onnx_parity_max_abs_diff"],
            "review_threshold": heavy_facts["review_threshold"],
            "blend": heavy_facts["blend"],
            "deep_only_test_pr_auc": heavy_facts["deep_only_test_pr_auc"],
        },
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
        ("heavy", heavy_version),
        *written.items(),
    ]:
        print(f"  {label:>10}: {shown(Path(path))}")
    return result
