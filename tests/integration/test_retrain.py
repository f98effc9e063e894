"""``make retrain`` end to end at the tiny scale: the simulated service's decisions and labels
joined, a plain and a distilled challenger trained, exported and gated against the champion.
A gate the challenger cannot pass publishes nothing; one it passes publishes the next
``fraud_primary`` version, complete (both ONNX files, its drift reference, what the retrain
measured) and not yet served (the champion stays pinned until a rollout)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from build_engines import primary
from build_engines.primary import PrimaryConfig
from build_engines.retrain import GateLimits, RetrainSettings
from client import retrain
from client.rollout import pinned, versions_on_disk
from python_backend.fraud.contract import PRIMARY, WEIGHTS_FILE
from python_backend.fraud.drift import REFERENCE_FILE, Reference
from python_backend.fraud.features import (
    CATEGORICAL_COLUMNS,
    SEQUENCE_CHANNELS,
    SEQUENCE_LENGTH,
    TABULAR_NAMES,
    ModelInputs,
)
from python_backend.onnx_runner import OnnxModel
from tests.conftest import serving_repository

pytestmark = pytest.mark.slow

SETTINGS = RetrainSettings(primary=PrimaryConfig(epochs=3, fine_tune_epochs=2))


def test_a_refused_challenger_is_not_published_and_a_passing_one_is(tiny_build, tmp_path) -> None:
    repository = serving_repository(tiny_build, tmp_path)
    lines: list[str] = []
    # No challenger gains a whole unit of PR-AUC: refused on that check.
    impossible = GateLimits(pr_auc_loss=-1.0)
    refused = retrain.run(
        "tiny",
        repository,
        tiny_build.build_dir,
        settings=SETTINGS,
        limits=impossible,
        log=lines.append,
    )
    assert not refused["gate"]["passed"] and "pr_auc" in refused["gate"]["failed"]
    assert versions_on_disk(repository) == [1]
    assert any("refused (pr_auc" in line for line in lines), lines
    models = refused["models"]
    challengers = {f"challenger_{n}" for n in ("plain", "distilled", "fine_tuned")}
    assert {"champion", *challengers, "heavy", "gbdt_baseline"} <= set(models)
    assert refused["join"]["young"] == 0 and refused["gate_rows"] > 0
    table = (tiny_build.build_dir / "reports" / "retrain.md").read_text()
    assert "**FAIL**" in table and "challenger_distilled" in table

    lax = GateLimits(
        pr_auc_loss=1.0,
        recall_loss=1.0,
        slice_pr_auc_loss=1.0,
        ece_gain=1.0,
        cost_ratio=100.0,
        int8_drop=1.0,
        declined_ratio=1e6,
        declined_slack=1.0,
    )
    passed = retrain.run(
        "tiny", repository, tiny_build.build_dir, settings=SETTINGS, limits=lax, log=lines.append
    )
    assert passed["gate"]["passed"], passed["gate"]
    version = passed["published_version"]
    assert version == 2 and versions_on_disk(repository) == [1, 2]
    assert pinned(repository) == [1], "published, not served: a rollout serves it"
    folder = repository / "fraud_primary" / "2"
    for name in ("model.onnx", "model.fp32.onnx", "model.int8.onnx", REFERENCE_FILE):
        assert (folder / name).exists(), name
    # The published weights are the challenger's: the next retrain fine-tunes from them.
    net = primary.load(folder / WEIGHTS_FILE)
    onnx = OnnxModel(folder / "model.fp32.onnx", PRIMARY)
    rng = np.random.default_rng(0)
    sample = ModelInputs(
        rng.normal(size=(64, len(TABULAR_NAMES))).astype(np.float32),
        rng.uniform(size=(64, SEQUENCE_LENGTH, len(SEQUENCE_CHANNELS))).astype(np.float32),
        np.zeros((64, len(CATEGORICAL_COLUMNS)), dtype=np.int64),
        {},
    )
    assert np.abs(primary.predict(net, sample) - onnx.predict(sample)).max() < 1e-4
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["retrained"]["champion"] == "1"
    assert metadata["retrained"]["candidate"] == passed["chosen"]
    assert Reference.read(folder).window["windows"] == passed["windows"]["train"]
