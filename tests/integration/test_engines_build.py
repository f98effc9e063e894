"""The offline pipeline end to end at the tiny scale: artifacts, parity, INT8, reports."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from build_engines.pipeline import build_all
from build_engines.primary import PrimaryConfig
from build_engines.training import MODEL_NAMES
from python_backend.fraud.contract import FALLBACK, HEAVY, MAX_BATCH_SIZE, PRIMARY
from python_backend.fraud.features import TABULAR_NAMES

METRICS = (
    "roc_auc",
    "pr_auc",
    "recall_at_1pct_fpr",
    "card_precision_at_100",
    "us_per_row_b1",
    "us_per_row_b64",
)


def test_build_writes_models_configs_and_metadata(tiny_build) -> None:
    for contract in (PRIMARY, FALLBACK):
        model_dir = tiny_build.repository / contract.name
        model = onnx.load(str(model_dir / "1" / "model.onnx"))
        onnx.checker.check_model(model)
        assert [i.name for i in model.graph.input] == [s.name for s in contract.inputs]
        assert [o.name for o in model.graph.output] == [s.name for s in contract.outputs]
        batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
        assert not batch_dim.HasField("dim_value"), "the batch axis must be dynamic"
        metadata = json.loads((model_dir / "1" / "metadata.json").read_text())
        assert len(metadata["data_fingerprint"]) == 64
        assert {"torch", "onnxruntime", "onnx"} <= set(metadata["frameworks"])
        assert metadata["tabular_columns"] == list(TABULAR_NAMES)
        config = (model_dir / "config.pbtxt").read_text()
        assert f'name: "{contract.name}"' in config
        assert f"max_batch_size: {MAX_BATCH_SIZE}" in config


def test_heavy_model_is_exported_checked_and_kept_off_triton(tiny_build) -> None:
    """The heavy model: ONNX with a dynamic batch axis and the HEAVY contract, equal to
    PyTorch on the test set, its history layout and review threshold in its metadata, and no
    ``config.pbtxt`` (the analysis consumer runs it, never a serving Triton)."""
    from python_backend.fraud.heavy_model import HeavyModel
    from python_backend.fraud.history import HeavyInputs, history_layout
    from python_backend.onnx_runner import OnnxModel

    model_dir = tiny_build.repository / HEAVY.name
    model = onnx.load(str(model_dir / "1" / "model.onnx"))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == [s.name for s in HEAVY.inputs]
    assert not model.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")
    assert not (model_dir / "config.pbtxt").exists()
    metadata = json.loads((model_dir / "1" / "metadata.json").read_text())
    assert metadata["history"] == json.loads(json.dumps(history_layout()))
    assert 0 < metadata["review_threshold"] < 1
    heavy = tiny_build.report["heavy"]
    assert heavy["onnx_parity_max_abs_diff"] <= 1e-4
    assert heavy["stopped_by"] in ("epochs", "patience", "time limit")
    # Every input shape at batch 1 and 64 (the report's latency columns), probabilities out.
    session = OnnxModel(model_dir / "1" / "model.onnx", HEAVY)
    rng = np.random.default_rng(0)
    for batch in (1, 64):
        feeds = {
            s.name: (rng.random((batch, *s.dims)) * (2 if s.dtype is np.int64 else 1)).astype(
                s.dtype
            )
            for s in HEAVY.inputs
        }
        scores = session.run(feeds)
        assert scores.shape == (batch,) and np.all((scores >= 0) & (scores <= 1))
        # The heavy model as the consumer runs it: the deep model blended with the trees.
        blended = HeavyModel(model_dir / "1").score(
            HeavyInputs(**{s.field: feeds[s.name] for s in HEAVY.inputs})
        )
        assert blended.shape == (batch,) and np.all((blended > 0) & (blended < 1))
    models = tiny_build.report["models"]["heavy"]
    assert models["us_per_row_b1"] > 0 and models["us_per_row_b64"] > 0


def test_primary_is_trained_plainly_and_distilled_and_the_better_on_validation_kept(
    tiny_build,
) -> None:
    """The primary twice: on the labels, and distilled from the heavy model's out-of-fold
    scores of the training rows; the one with the higher validation PR-AUC ships, both
    measured on the test days beside it; and its drift reference (the training days) beside
    its weights."""
    from build_engines.training import DISTILL_WEIGHT, TEACHER_DEEP_FOLDS, TEACHER_TREE_FOLDS
    from python_backend.fraud.drift import Reference

    report = tiny_build.report
    candidates = report["primary_candidates"]
    assert set(candidates["valid_pr_auc"]) == {"plain", "distilled"}
    assert candidates["distill_weight"] == DISTILL_WEIGHT
    teacher = candidates["teacher"]
    assert teacher["out_of_fold"] is True
    assert (teacher["tree_folds"], teacher["deep_folds"]) == (
        TEACHER_TREE_FOLDS,
        TEACHER_DEEP_FOLDS,
    )
    assert set(teacher["train_pr_auc"]) == {"teacher", "trees", "deep"}
    kept = report["primary_kept"]
    assert candidates["valid_pr_auc"][kept] == max(candidates["valid_pr_auc"].values())
    assert set(candidates["test_pr_auc"]) == {"plain", "distilled"}
    # The kept one is the served one: its test PR-AUC is the report's primary_fp32.
    assert (
        abs(candidates["test_pr_auc"][kept]["all"] - report["models"]["primary_fp32"]["pr_auc"])
        < 2e-3
    )
    reference = Reference.read(tiny_build.repository / "fraud_primary" / "1")
    assert reference.window["days"] == report["split_days"]["train"]


def test_onnx_matches_pytorch_on_the_test_set(tiny_build) -> None:
    assert tiny_build.report["onnx_parity_max_abs_diff"] <= 1e-4
    assert tiny_build.report["fallback_parity_max_abs_diff"] <= 1e-4


def test_int8_model_is_quantized_and_close_to_fp32(tiny_build) -> None:
    primary_dir = tiny_build.repository / PRIMARY.name / "1"
    int8 = onnx.load(str(primary_dir / "model.int8.onnx"))
    ops = {n.op_type for n in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, "expected an explicit Q/DQ graph"
    zero_points = [t for t in int8.graph.initializer if t.name.endswith("zero_point")]
    assert zero_points and all(not np.any(onnx.numpy_helper.to_array(t)) for t in zero_points), (
        "TensorRT needs symmetric INT8 (zero points 0)"
    )
    models = tiny_build.report["models"]
    # The tiny test set holds a few dozen frauds: the bound is loose here and 0.005 at scale.
    assert models["primary_fp32"]["pr_auc"] - models["primary_int8"]["pr_auc"] <= 0.05
    assert abs(models["primary_fp32"]["roc_auc"] - models["primary_int8"]["roc_auc"]) <= 0.02


def test_quality_report_has_every_model_and_metric(tiny_build) -> None:
    report = tiny_build.report
    assert set(report["models"]) == set(MODEL_NAMES)
    for name in MODEL_NAMES:
        for metric in METRICS:
            value = report["models"][name][metric]
            assert np.isfinite(value), (name, metric)
        assert 0.5 < report["models"][name]["roc_auc"] <= 1.0, name
    reports = tiny_build.build_dir / "reports"
    table = (reports / "model_quality.md").read_text()
    assert all(f"| {name} |" in table for name in MODEL_NAMES)
    assert (reports / "model_quality_pr.png").stat().st_size > 10_000


def test_quality_report_judges_every_model_on_the_open_world_slices(tiny_build) -> None:
    """``slices.<slice>.<model>``: rows, frauds, PR-AUC, recall at 1% FPR and the genuine
    declined / flagged shares at the served thresholds; the table and the plot beside."""
    from build_engines.slices import SLICES

    report = tiny_build.report
    assert list(report["slices"]) == list(SLICES)
    judged = {"primary_fp32", "primary_int8", "fallback", "rules", "gbdt_baseline", "heavy"}
    for name, models in report["slices"].items():
        assert set(models) == judged, name
        for model, row in models.items():
            assert set(row) == {
                "rows",
                "frauds",
                "pr_auc",
                "recall_at_1pct_fpr",
                "genuine_declined",
                "genuine_flagged",
            }
            if name in ("all", "new_terminal", "new_card", "stale_store"):
                assert row["rows"] > 0 and row["genuine_flagged"] is not None, (name, model)
            if row["genuine_flagged"] is not None:
                assert 0 <= row["genuine_declined"] <= row["genuine_flagged"] <= 1, (name, model)
    whole = report["slices"]["all"]["primary_fp32"]
    assert whole["rows"] == report["test_rows"] and whole["frauds"] == report["test_frauds"]
    assert whole["pr_auc"] == report["models"]["primary_fp32"]["pr_auc"]
    # The stale store is decided without the daily views: its ranking is worse, not absent.
    assert report["slices"]["stale_store"]["primary_fp32"]["pr_auc"] < whole["pr_auc"]
    assert 0 <= report["models"]["primary_fp32"]["ece"] < 0.05
    assert report["fallback_candidates"]["chosen"] in ("logistic", "mlp", "distilled")
    reports = tiny_build.build_dir / "reports"
    assert "| new_terminal | primary_fp32 |" in (reports / "model_quality.md").read_text()
    assert (reports / "model_quality_slices.png").stat().st_size > 10_000


def _multiply_adds_per_row(model: onnx.ModelProto) -> int:
    """Multiply-adds one row costs: weights read by each MatMul/Gemm node (each unrolled
    GRU step counts)."""
    weights = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            total += sum(weights.get(name, 0) for name in node.input[1:2])
    return total


def test_fallback_is_at_least_ten_times_cheaper_per_row_than_primary(tiny_build) -> None:
    """Counted, not timed (timings on a shared machine are for the report): the fallback
    does at least ten times fewer multiply-adds per row."""
    primary_macs = _multiply_adds_per_row(
        onnx.load(str(tiny_build.repository / PRIMARY.name / "1" / "model.fp32.onnx"))
    )
    fallback_macs = _multiply_adds_per_row(
        onnx.load(str(tiny_build.repository / FALLBACK.name / "1" / "model.onnx"))
    )
    assert fallback_macs > 0
    assert primary_macs >= 10 * fallback_macs, (primary_macs, fallback_macs)


def test_build_prints_where_artifacts_went_and_why_tensorrt_was_skipped(tiny_build) -> None:
    if tiny_build.result["tensorrt"]["built"]:
        pytest.skip("TensorRT engines were built on this machine: there is no skip path to check")
    skip_lines = [ln for ln in tiny_build.output.splitlines() if "TensorRT engines skipped" in ln]
    assert len(skip_lines) == 1 and tiny_build.result["tensorrt"]["reason"] in skip_lines[0]
    assert "platform" not in (tiny_build.repository / PRIMARY.name / "config.pbtxt").read_text()
    for label in ("primary", "fallback", "report", "plot"):
        assert f"{label}: " in tiny_build.output


def test_second_build_with_nothing_changed_is_up_to_date(tiny_build, capsys) -> None:
    again = build_all(
        "tiny",
        primary_cfg=PrimaryConfig(epochs=4),
        repository=tiny_build.repository,
        build_dir=tiny_build.build_dir,
    )
    assert again["build_key"] == tiny_build.result["build_key"]
    assert "up to date" in capsys.readouterr().out
