"""Property-based bad input sent to the real server (hypothesis over gRPC ``ModelInfer``).

Whatever a caller sends, the server answers it: a request it cannot read is refused with an
error naming the input and the rule; otherwise every row comes back, bad rows marked INVALID
with the field, the row and the rule, valid rows decided. The server stays up throughout, and
a valid request sent after each example is still decided.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from python_backend.fraud.contract import DECISIONS, SCORING, SCORING_MAX_BATCH
from tests.unit.test_validation_properties import DTYPES, FIELDS, _broken_rule, well_typed_requests

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
WIRE = {
    np.float32: "FP32",
    np.float64: "FP64",
    np.int32: "INT32",
    np.int64: "INT64",
    np.object_: "BYTES",
    np.bool_: "BOOL",
}


@pytest.fixture(scope="module")
def client(serving):
    c = grpcclient.InferenceServerClient(serving.server.grpc_url)
    yield c
    c.close()


def _send(client, arrays: dict):
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), WIRE[array.dtype.type])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return client.infer(SCORING.name, inputs)


def _still_serving(client) -> None:
    one = {
        "TRANSACTION_ID": np.array([[b"after-bad-input"]], dtype=np.object_),
        "CARD_ID": np.array([[1]], dtype=np.int64),
        "TERMINAL_ID": np.array([[1]], dtype=np.int64),
        "AMOUNT": np.array([[12.5]], dtype=np.float32),
        "TIMESTAMP_MS": np.array([[int(time.time() * 1000)]], dtype=np.int64),
    }
    assert client.is_server_live()
    assert _send(client, one).as_numpy("DECISION")[0, 0].decode() in DECISIONS


@SETTINGS
@given(well_typed_requests())
def test_every_row_answered_over_the_server(client, arrays) -> None:
    rows = len(arrays["CARD_ID"])
    if rows > SCORING_MAX_BATCH:
        with pytest.raises(InferenceServerException, match="batch"):
            _send(client, arrays)
        _still_serving(client)
        return
    now_ms = int(time.time() * 1000)
    result = _send(client, arrays)
    decisions = result.as_numpy("DECISION")[:, 0]
    reasons = [json.loads(r) for r in result.as_numpy("REASONS")[:, 0]]
    assert len(decisions) == rows
    for i in range(rows):
        broken = _broken_rule(arrays, i, now_ms)
        if broken is None:
            assert decisions[i].decode() in DECISIONS, (i, reasons[i])
        else:
            assert decisions[i] == b"INVALID"
            assert any(r.startswith(f"{broken}[{i}]: must ") for r in reasons[i]), reasons[i]
    _still_serving(client)


@SETTINGS
@given(
    data=st.data(),
    field=st.sampled_from(FIELDS),
    dtype=st.sampled_from(DTYPES),
    shape=st.lists(st.integers(min_value=1, max_value=3), min_size=2, max_size=2),
)
def test_wrong_dtype_shape_or_missing_input_refused_over_the_server(
    client, data, field, dtype, shape
) -> None:
    # At most 8 rows drawn, not filtered: filtering a 1..70 draw tripped Hypothesis's
    # filter_too_much health check now and then.
    arrays = data.draw(well_typed_requests(max_rows=8))
    if data.draw(st.booleans()):
        del arrays[field]
    else:
        arrays[field] = np.zeros(shape, dtype=dtype)
    spec = next(s for s in SCORING.inputs if s.name == field)
    rows = len(arrays["TERMINAL_ID" if field == "CARD_ID" else "CARD_ID"])
    fits = field in arrays and (
        np.dtype(dtype) == np.dtype(spec.dtype) and list(shape) == [rows, 1]
    )
    if fits:
        return
    with pytest.raises(InferenceServerException) as refused:
        _send(client, arrays)
    # Triton refuses what breaks the model config; the BLS what breaks the contract.
    assert field in str(refused.value) or "batch" in str(refused.value), str(refused.value)
    _still_serving(client)


def _one_row() -> dict:
    return {
        "TRANSACTION_ID": np.array([[b"extra-input"]], dtype=np.object_),
        "CARD_ID": np.array([[1]], dtype=np.int64),
        "TERMINAL_ID": np.array([[1]], dtype=np.int64),
        "AMOUNT": np.array([[12.5]], dtype=np.float32),
        "TIMESTAMP_MS": np.array([[int(time.time() * 1000)]], dtype=np.int64),
    }


def test_empty_and_extra_inputs(client) -> None:
    empty = {spec.name: np.zeros((0, 1), dtype=spec.dtype) for spec in SCORING.inputs}
    with pytest.raises(InferenceServerException) as refused:
        _send(client, empty)
    message = refused.value.message()
    assert any(f"'{spec.name}'" in message for spec in SCORING.inputs), message
    assert "byte size" in message, "an empty batch is refused for its size, the input named"
    _still_serving(client)
    extra = {**_one_row(), "MERCHANT_NOTE": np.array([[b"hello"]], dtype=np.object_)}
    with pytest.raises(InferenceServerException) as refused:
        _send(client, extra)
    message = refused.value.message()
    assert "MERCHANT_NOTE" in message, "the error names the unknown input"
    assert f"expected {len(SCORING.inputs)} inputs but got {len(extra)}" in message
    _still_serving(client)
