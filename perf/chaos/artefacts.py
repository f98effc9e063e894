"""Faulty artefacts of the primary's contract, for a primary that runs in ``fraud_scoring``'s
process (``FRAUD_PRIMARY=in_process``): what a bad deploy of ``fraud_primary`` looks like
there. Triton's stand-in model (``perf/models/faulty``) cannot reach a session inside the
BLS, so the chaos faults point the BLS's ``PRIMARY_DIR`` at one of these folders instead:

* ``error``: loads, and every run fails (a reshape its input can never fill);
* ``slow``: every run takes hundreds of milliseconds of real work (a chain of 512 x 512
  MatMuls that depends on the input, so nothing is folded at load), which the deadline
  guard gives up at the call's deadline;
* ``missing``: no model file at all (the artefact never arrived).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from python_backend.fraud.contract import PRIMARY

KINDS = ("error", "slow", "missing")
#: The slow model's chain: about 5-10 ms a link on one core of this machine.
SLOW_LINKS = 48
SLOW_WIDTH = 512


def _inputs():
    from onnx import TensorProto, helper

    types = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64}
    return [
        helper.make_tensor_value_info(spec.name, types[np.dtype(spec.dtype)], ["batch", *spec.dims])
        for spec in PRIMARY.inputs
    ]


def _model(nodes, initializers):
    """The graph of ``nodes`` (which may use the initializers ``zero`` and ``one``) ending in
    the primary's output: the sigmoid of the first tabular column plus ``drift``."""
    from onnx import TensorProto, helper, numpy_helper

    tabular, output = PRIMARY.inputs[0].name, PRIMARY.outputs[0]
    constants = [
        numpy_helper.from_array(np.array([value], dtype=np.int64), name)
        for name, value in (("zero", 0), ("one", 1))
    ]
    ending = [
        helper.make_node("Slice", [tabular, "zero", "one", "one"], ["first"]),
        helper.make_node("Add", ["first", "drift"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], [output.name]),
    ]
    graph = helper.make_graph(
        [*nodes, *ending],
        f"faulty_{PRIMARY.name}",
        _inputs(),
        [helper.make_tensor_value_info(output.name, TensorProto.FLOAT, ["batch", 1])],
        [*initializers, *constants],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _error_model():
    from onnx import helper

    tabular = PRIMARY.inputs[0].name
    nodes = [
        helper.make_node("Shape", [tabular], ["shape"]),
        helper.make_node("ReduceProd", ["shape"], ["size"], keepdims=1),
        # One element more than the input holds: no batch can ever fill it.
        helper.make_node("Add", ["size", "one"], ["impossible"]),
        helper.make_node("Reshape", [tabular, "impossible"], ["reshaped"]),
        helper.make_node("ReduceSum", ["reshaped"], ["drift"], keepdims=1),
    ]
    return _model(nodes, [])


def _slow_model():
    from onnx import helper, numpy_helper

    tabular = PRIMARY.inputs[0].name
    weight = numpy_helper.from_array(np.eye(SLOW_WIDTH, dtype=np.float32) * 0.999, "W")
    nodes = [
        # The chain's start depends on the input, so ONNX Runtime cannot fold it at load.
        helper.make_node("ReduceMean", [tabular], ["level"], keepdims=0),
        helper.make_node("Mul", ["W", "level"], ["h0"]),
    ]
    last = "h0"
    for i in range(1, SLOW_LINKS + 1):
        nodes.append(helper.make_node("MatMul", [last, "W"], [f"h{i}"]))
        last = f"h{i}"
    nodes.append(helper.make_node("ReduceMean", [last], ["drift"], keepdims=0))
    return _model(nodes, [weight])


def faulty_primary(kind: str, root: Path) -> Path:
    """A ``fraud_primary``-shaped folder under ``root`` whose version 1 is faulty in this
    ``kind`` way; point ``fraud_scoring``'s ``PRIMARY_DIR`` at it."""
    import onnx

    if kind not in KINDS:
        raise ValueError(f"kind: one of {', '.join(KINDS)}, got {kind!r}")
    folder = root / f"faulty_{PRIMARY.name}_{kind}"
    version = folder / "1"
    version.mkdir(parents=True, exist_ok=True)
    if kind != "missing":
        model = _error_model() if kind == "error" else _slow_model()
        onnx.save(model, version / "model.onnx")
    return folder
