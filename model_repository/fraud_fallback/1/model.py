"""fraud_fallback, CPU variant: the small tabular model ``make engines`` chose (ONNX) in ONNX
Runtime. The logic lives in python_backend.onnx_triton."""

from python_backend.fraud.contract import FALLBACK
from python_backend.onnx_triton import OnnxTritonModel


class TritonPythonModel(OnnxTritonModel):
    contract = FALLBACK
