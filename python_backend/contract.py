"""How a model's tensors are declared: names, dtypes and shapes, once per model.

Each pipeline declares its contracts with these (``python_backend.fraud.contract``,
``python_backend.recommender.core``, ``python_backend.image``); the ONNX exports, the
generated Triton configs, the clients and the tests read them from there. Shapes leave out
the batch dimension, as Triton's ``dims`` do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

_TRITON_DTYPES = {np.float32: "TYPE_FP32", np.int64: "TYPE_INT64", np.object_: "TYPE_STRING"}
#: Wire datatypes of the KServe/Triton protocol, as tritonclient's ``InferInput`` takes them.
_WIRE_DTYPES = {np.float32: "FP32", np.int64: "INT64", np.object_: "BYTES"}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor of a model (batch dimension excluded)."""

    name: str
    dtype: type
    dims: tuple[int, ...]

    @property
    def triton_dtype(self) -> str:
        return _TRITON_DTYPES[self.dtype]

    @property
    def wire_dtype(self) -> str:
        return _WIRE_DTYPES[self.dtype]

    @property
    def field(self) -> str:
        """The attribute of an inputs object that feeds this tensor: its name in lower case
        (``ModelInputs.tabular`` feeds ``TABULAR``)."""
        return self.name.lower()


@dataclass(frozen=True)
class ModelContract:
    """Inputs and outputs of one served model."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def request_arrays(
    request, get_input: Callable, contract: ModelContract
) -> dict[str, np.ndarray | None]:
    """The ``contract``'s inputs of one Triton request as arrays (None where absent);
    ``get_input`` is ``pb_utils.get_input_tensor_by_name``."""
    arrays = {}
    for spec in contract.inputs:
        tensor = get_input(request, spec.name)
        arrays[spec.name] = None if tensor is None else tensor.as_numpy()
    return arrays
