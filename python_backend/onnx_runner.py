"""Run an ONNX model with ONNX Runtime, fed from an inputs object (one field per tensor).

Used offline (parity checks, INT8 evaluation, latency columns of the report) and by the
CPU variant of the served models, so both run the model the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from python_backend.contract import ModelContract


class OnnxModel:
    """An ONNX Runtime session that speaks one :class:`ModelContract`."""

    def __init__(
        self,
        path: str | Path,
        contract: ModelContract,
        threads: int = 1,
    ) -> None:
        options = ort.SessionOptions()
        # One thread per session: Triton scales with model instances, not intra-op threads,
        # and a latency figure measured on one core is the one that adds up under load.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.contract = contract
        names = {i.name for i in self.session.get_inputs()}
        expected = {spec.name for spec in contract.inputs}
        if names != expected:
            raise ValueError(
                f"{path}: inputs {sorted(names)} do not match the {contract.name} contract "
                f"{sorted(expected)}; rebuild it with `make engines`"
            )

    def feeds(self, inputs, rows: slice = slice(None)) -> dict[str, np.ndarray]:
        """The ONNX feed dict for ``rows`` of ``inputs``."""
        return {
            spec.name: np.ascontiguousarray(getattr(inputs, spec.field)[rows])
            for spec in self.contract.inputs
        }

    def run(
        self, feeds: dict[str, np.ndarray], options: ort.RunOptions | None = None
    ) -> np.ndarray:
        """Probabilities ``[B]`` for a prepared feed dict (``options``: ONNX Runtime's run
        options, e.g. the terminate flag a deadline sets)."""
        return self.session.run([self.contract.outputs[0].name], feeds, options)[0][:, 0]

    def predict(self, inputs, batch_size: int = 8192) -> np.ndarray:
        """Probabilities ``[B]`` for every row of ``inputs``."""
        n = len(inputs.tabular)
        parts = [
            self.run(self.feeds(inputs, slice(s, s + batch_size))) for s in range(0, n, batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
