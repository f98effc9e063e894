"""What a build depends on (configs, code, pinned versions), fingerprinted so an unchanged
build is not redone, and the framework versions written beside each model."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from build_engines import primary
from build_engines.simulate import SimulationConfig
from python_backend.paths import ROOT


def sha256_file(path: Path) -> str:
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
        *sorted((ROOT / "python_backend").rglob("*.py")),
        *sorted((ROOT / "python_backend").rglob("*.yaml")),
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
