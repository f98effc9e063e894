"""``make eval-real`` on a time-ordered sample of the real ULB credit-card fraud data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from build_engines.primary import PrimaryConfig
from build_engines.real_data import dataset_path, evaluate_real, load


@pytest.fixture(scope="module")
def ulb_sample():
    frame = load(dataset_path())
    assert len(frame) == 284_807 and int(frame["Class"].sum()) == 492
    # Every fraud and a fifth of the genuine rows, still in time order.
    keep = (frame["Class"] == 1) | (np.random.default_rng(0).random(len(frame)) < 0.2)
    return frame[keep]


def test_real_data_report_has_the_same_layout(ulb_sample, tmp_path) -> None:
    result = evaluate_real(PrimaryConfig(epochs=2), frame=ulb_sample, build_dir=tmp_path)
    written = json.loads((tmp_path / "reports" / "real_data_quality.json").read_text())
    assert written["models"].keys() == result["models"].keys()
    assert written["models"]["rules"] is None, "rules need card features ULB lacks"
    for name in ("primary_fp32", "primary_int8", "fallback", "gbdt_baseline"):
        metrics = written["models"][name]
        assert metrics["roc_auc"] > 0.85, name
        assert metrics["pr_auc"] > 0.3, name
    assert written["onnx_parity_max_abs_diff"] <= 1e-4
