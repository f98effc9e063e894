"""Explicit INT8 (Q/DQ) quantization of the primary model with ONNX Runtime.

Static quantization, calibrated on rows drawn from the training days. Symmetric INT8 for
weights (per channel) and activations, in QDQ format: ONNX Runtime runs it on CPU, and
TensorRT builds INT8 engines from the Q/DQ graph directly (explicit quantization, no
calibrator). Only MatMul/Gemm are quantized: embeddings and the element-wise GRU gates stay
in float, where INT8 buys little and costs accuracy.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from python_backend.contract import PRIMARY
from python_backend.features import ModelInputs
from python_backend.onnx_runner import OnnxModel

CALIBRATION_ROWS = 4_096
CALIBRATION_BATCH = 256


class _Reader(CalibrationDataReader):
    """Feeds calibration batches in the contract's tensor names."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def calibration_rows(y: np.ndarray, seed: int = 0, rows: int = CALIBRATION_ROWS) -> np.ndarray:
    """Row indices for calibration: random training rows with every fraud row oversampled,
    so the activation ranges cover what fraudulent transactions look like."""
    rng = np.random.default_rng(seed)
    fraud = np.flatnonzero(y == 1)
    n_fraud = min(len(fraud), rows // 8)
    picked = rng.choice(fraud, n_fraud, replace=False) if n_fraud else np.array([], dtype=int)
    rest = rng.choice(len(y), rows - n_fraud, replace=len(y) < rows - n_fraud)
    return np.sort(np.concatenate([picked, rest]))


def quantize_primary(fp32_path: Path, int8_path: Path, calibration: ModelInputs) -> None:
    """Write the Q/DQ INT8 model next to the FP32 one."""
    runner = OnnxModel(fp32_path, PRIMARY)
    n = len(calibration.tabular)
    feeds = [
        runner.feeds(calibration, slice(s, s + CALIBRATION_BATCH))
        for s in range(0, n, CALIBRATION_BATCH)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(int8_path),
            _Reader(feeds),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Gemm"],
            calibrate_method=CalibrationMethod.MinMax,
            # TensorRT accepts only symmetric INT8 scales (zero point 0).
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
