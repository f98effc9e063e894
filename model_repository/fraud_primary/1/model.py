"""fraud_primary, CPU variant: the primary ONNX model in ONNX Runtime (TensorRT plan on GPUs,
where this file is unused). The logic lives in python_backend.onnx_triton."""

from python_backend.fraud.contract import PRIMARY
from python_backend.onnx_triton import OnnxTritonModel


class TritonPythonModel(OnnxTritonModel):
    contract = PRIMARY
