"""The real TensorRT build, where a GPU and TensorRT exist (skipped elsewhere, with the reason)."""

from __future__ import annotations

from pathlib import Path

import pytest

from build_engines.tensorrt import tensorrt_availability
from python_backend.fraud.contract import PRIMARY


@pytest.mark.gpu
def test_engines_build_and_match_onnx_runtime(tiny_build) -> None:
    availability = tensorrt_availability()
    if not availability.ok:
        pytest.skip(f"needs an NVIDIA GPU and TensorRT: {availability.reason}")
    engines = tiny_build.result["tensorrt"]["engines"]
    # build_engines() raises when polygraphy's ONNX Runtime comparison fails, so built
    # engines have passed it.
    assert set(engines) == {"fp16", "int8"}
    for plan in engines.values():
        assert Path(plan).stat().st_size > 0
    assert (tiny_build.repository / PRIMARY.name / "1" / "model.plan").exists()
