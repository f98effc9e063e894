"""Every generated ``config.pbtxt``, built as Triton's own ``inference.ModelConfig`` protobuf
(the schema tritonclient ships) and written with protobuf's text format: a field Triton does
not know is an error here, at build time, not a model that fails to load.

A config is given as the protobuf's JSON form (a dict), with the tensors taken from a
:class:`~python_backend.contract.ModelContract`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from python_backend.contract import ModelContract, TensorSpec


def _tensor(spec: TensorSpec) -> dict:
    return {"name": spec.name, "data_type": spec.triton_dtype, "dims": list(spec.dims)}


def io(contract: ModelContract) -> dict:
    """The ``input`` and ``output`` fields of ``contract``."""
    return {
        "input": [_tensor(s) for s in contract.inputs],
        "output": [_tensor(s) for s in contract.outputs],
    }


def instances(count: int, kind: str = "KIND_CPU") -> dict:
    return {"instance_group": [{"count": count, "kind": kind}]}


def parameters(values: Mapping[str, str]) -> dict:
    return {"parameters": {k: {"string_value": str(v)} for k, v in values.items()}}


def warmup(contract: ModelContract, batch_sizes: Iterable[int] = (1, 16), count: int = 3) -> dict:
    """``model_warmup``: Triton runs these requests when the model loads, before it takes
    traffic (a reload loads beside the old version and swaps once warm): the first calls
    into a fresh ONNX Runtime session are several times slower than the rest."""
    inputs = {
        s.name: {"data_type": s.triton_dtype, "dims": list(s.dims), "zero_data": True}
        for s in contract.inputs
    }
    return {
        "model_warmup": [
            {"name": f"batch_{n}", "batch_size": n, "count": count, "inputs": inputs}
            for n in batch_sizes
        ]
    }


def build(*parts: Mapping) -> model_config_pb2.ModelConfig:
    """The ``ModelConfig`` of the merged ``parts`` (each a dict of top-level fields)."""
    fields: dict = {}
    for part in parts:
        fields.update(part)
    config = json_format.ParseDict(fields, model_config_pb2.ModelConfig())
    for name, value in fields.items():
        if value == {}:  # present but all defaults (``dynamic_batching {}``): still set
            getattr(config, name).SetInParent()
    return config


def render(*parts: Mapping) -> str:
    """``config.pbtxt`` text of the merged ``parts``."""
    return text_format.MessageToString(build(*parts))


def parse(text: str) -> model_config_pb2.ModelConfig:
    """A ``config.pbtxt`` read back (for checks and tests)."""
    return text_format.Parse(text, model_config_pb2.ModelConfig())
