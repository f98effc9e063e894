"""TensorRT engines for the primary model, built with polygraphy where a GPU and TensorRT
exist; elsewhere a one-line reason and the CPU (ONNX Runtime) variant.

One ``polygraphy run`` per precision builds the engine with an optimization profile over
batch 1..``MAX_BATCH_SIZE``, saves it as ``model.plan`` and compares its outputs with ONNX
Runtime on the same inputs (``--onnxrt --trt``). INT8 comes from the explicit Q/DQ model, so
no calibrator is needed: ``--int8`` only lets TensorRT use the INT8 kernels the Q/DQ nodes
ask for (``--fp16`` lets the unquantized layers run in FP16).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from python_backend.contract import ModelContract
from python_backend.fraud.contract import MAX_BATCH_SIZE, PREFERRED_BATCH_SIZES
from python_backend.fraud.features import CATEGORICAL_COLUMNS

#: polygraphy's command-line script: the one installed beside this interpreter, else PATH's.
POLYGRAPHY = (
    str(Path(sys.executable).parent / "polygraphy")
    if (Path(sys.executable).parent / "polygraphy").exists()
    else (shutil.which("polygraphy") or "polygraphy")
)
#: Output tolerance against ONNX Runtime (probabilities in [0, 1]).
TOLERANCE = {"fp16": 1e-2, "int8": 5e-2}


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str


def tensorrt_availability() -> Availability:
    """Whether engines can be built here, and why not."""
    if importlib.util.find_spec("tensorrt") is None:
        return Availability(False, "TensorRT is not installed (the Python package `tensorrt`)")
    if shutil.which("nvidia-smi") is None:
        return Availability(False, "no NVIDIA driver (nvidia-smi not found)")
    probe = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    if probe.returncode != 0 or "GPU" not in probe.stdout:
        return Availability(False, f"no NVIDIA GPU visible: {probe.stderr.strip() or 'none'}")
    return Availability(True, probe.stdout.strip().splitlines()[0])


def _shape(spec_name: str, dims: tuple[int, ...], batch: int) -> str:
    return f"{spec_name}:[{','.join(str(d) for d in (batch, *dims))}]"


def engine_command(
    onnx_path: Path,
    plan_path: Path,
    contract: ModelContract,
    precision: str,
    max_batch: int = MAX_BATCH_SIZE,
) -> list[str]:
    """The ``polygraphy run`` command that builds, saves and checks one engine."""
    if precision not in TOLERANCE:
        raise ValueError(f"precision must be one of {sorted(TOLERANCE)}, got {precision!r}")
    opt = max((b for b in PREFERRED_BATCH_SIZES if b <= max_batch), default=max_batch)
    cmd = [POLYGRAPHY, "run", str(onnx_path), "--onnxrt", "--trt"]
    cmd += ["--fp16"] if precision == "fp16" else ["--int8", "--fp16"]
    for flag, batch in (
        ("--trt-min-shapes", 1),
        ("--trt-opt-shapes", opt),
        ("--trt-max-shapes", max_batch),
    ):
        cmd += [flag, *(_shape(s.name, s.dims, batch) for s in contract.inputs)]
    cmd += ["--input-shapes", *(_shape(s.name, s.dims, opt) for s in contract.inputs)]
    # Integer inputs are embedding indices: keep generated values inside every vocabulary.
    smallest_vocabulary = min(cardinality for _, cardinality in CATEGORICAL_COLUMNS)
    cmd += [
        "--val-range",
        *(
            f"{s.name}:[0,{smallest_vocabulary - 1}]"
            if s.dtype.__name__ == "int64"
            else f"{s.name}:[-1,1]"
            for s in contract.inputs
        ),
    ]
    tol = str(TOLERANCE[precision])
    cmd += ["--atol", tol, "--rtol", tol, "--save-engine", str(plan_path)]
    return cmd


def build_engines(
    fp32_onnx: Path,
    int8_onnx: Path,
    out_dir: Path,
    contract: ModelContract,
    log=print,
    max_batch: int = MAX_BATCH_SIZE,
) -> dict[str, str]:
    """Build FP16 and INT8 engines into ``out_dir``; returns precision -> plan path.

    Raises ``RuntimeError`` with polygraphy's output when a build or the comparison fails.
    """
    plans = {}
    for precision, source in (("fp16", fp32_onnx), ("int8", int8_onnx)):
        plan = out_dir / f"model.{precision}.plan"
        cmd = engine_command(source, plan, contract, precision, max_batch)
        log(f"building {precision} engine: {' '.join(cmd)}")
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"polygraphy failed for {precision}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
            )
        plans[precision] = str(plan)
    return plans
