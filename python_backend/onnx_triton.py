"""Triton Python-backend glue for a model that runs an ONNX file with ONNX Runtime.

The CPU variant of ``fraud_primary`` and ``fraud_fallback`` (the PyPI Triton build has no
ONNX Runtime backend). Triton's dynamic batcher hands ``execute`` several requests; they are
concatenated, run as one ONNX Runtime call, and split back: one response per request, in
order, errors included (a malformed request fails alone).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from python_backend.contract import ModelContract, request_arrays
from python_backend.onnx_runner import OnnxModel


def check_inputs(arrays: dict[str, np.ndarray], contract: ModelContract) -> str | None:
    """Why a request's tensors do not fit the contract, or None."""
    for spec in contract.inputs:
        array = arrays.get(spec.name)
        if array is None:
            return f"input {spec.name}: missing"
        if array.dtype != spec.dtype:
            return f"input {spec.name}: dtype {array.dtype}, expected {np.dtype(spec.dtype)}"
        if array.shape[1:] != spec.dims:
            return f"input {spec.name}: shape {array.shape}, expected [-1, {spec.dims}]"
    return None


def ort_session(path: Path, threads: int):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (one instance each)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxTritonModel:
    """Subclass in ``model.py`` with ``contract = ...``; Triton calls the lifecycle."""

    contract: ModelContract
    model_file = "model.onnx"

    def initialize(self, args: dict) -> None:
        """Load the ONNX file of this version with one intra-op thread per instance."""
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        threads = int(config.get("parameters", {}).get("ORT_THREADS", {}).get("string_value", 1))
        path = Path(args["model_repository"]) / args["model_version"] / self.model_file
        self.load(path, threads)

    def load(self, path: Path, threads: int) -> None:
        self.model = OnnxModel(path, self.contract, threads=threads)

    def infer(self, joined: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output of the contract, ``[N, ...]``, for the joined batch."""
        probability = self.model.run(joined)[:, None].astype(np.float32)
        return {self.contract.outputs[0].name: probability}

    def execute(self, requests: list) -> list:
        """Score all requests of the batch in one ONNX Runtime call."""
        pb = self.pb
        responses: list = [None] * len(requests)
        good, feeds = [], []
        for i, request in enumerate(requests):
            arrays = request_arrays(request, pb.get_input_tensor_by_name, self.contract)
            arrays = {k: v for k, v in arrays.items() if v is not None}
            problem = check_inputs(arrays, self.contract)
            if problem:
                responses[i] = pb.InferenceResponse(error=pb.TritonError(problem))
            else:
                good.append(i)
                feeds.append(arrays)
        if good:
            sizes = [len(f[self.contract.inputs[0].name]) for f in feeds]
            joined = {
                s.name: np.concatenate([f[s.name] for f in feeds]) for s in self.contract.inputs
            }
            try:
                outputs = self.infer(joined)
            except Exception as err:  # a runtime failure fails this batch, not the server
                for i in good:
                    responses[i] = pb.InferenceResponse(error=pb.TritonError(str(err)))
                return responses
            cuts = np.cumsum(sizes)[:-1]
            parts = {name: np.split(array, cuts) for name, array in outputs.items()}
            for k, i in enumerate(good):
                responses[i] = pb.InferenceResponse(
                    [pb.Tensor(name, split[k]) for name, split in parts.items()]
                )
        return responses

    def finalize(self) -> None:
        """Nothing to release: the session goes with the process."""
