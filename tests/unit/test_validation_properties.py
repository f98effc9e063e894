"""Property-based checks of the request contract (pure logic: ``scoring.validate``).

Whatever arrives, validation either refuses the request with ``InvalidRequest`` naming the
input and the rule, or answers every row: None for a valid row, a message naming the field,
the row and the rule for a row that breaks one. Nothing else escapes, and valid rows come out
exactly as sent.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from python_backend.fraud import scoring
from python_backend.fraud.contract import SCORING

NOW_MS = 1_780_000_000_000
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FIELDS = [spec.name for spec in SCORING.inputs]


@st.composite
def well_typed_requests(draw, max_rows: int = 70):
    rows = draw(st.integers(min_value=1, max_value=max_rows))
    ids = draw(st.lists(st.binary(min_size=0, max_size=200), min_size=rows, max_size=rows))
    plausible_ts = st.integers(min_value=scoring.MIN_TIMESTAMP_MS - 10, max_value=NOW_MS + 10**9)
    return {
        "TRANSACTION_ID": np.array([[i] for i in ids], dtype=np.object_),
        "CARD_ID": np.array(
            draw(st.lists(INT64, min_size=rows, max_size=rows)), dtype=np.int64
        ).reshape(-1, 1),
        "TERMINAL_ID": np.array(
            draw(st.lists(INT64, min_size=rows, max_size=rows)), dtype=np.int64
        ).reshape(-1, 1),
        "AMOUNT": np.array(
            draw(st.lists(st.floats(width=32), min_size=rows, max_size=rows)), dtype=np.float32
        ).reshape(-1, 1),
        "TIMESTAMP_MS": np.array(
            draw(st.lists(st.one_of(INT64, plausible_ts), min_size=rows, max_size=rows)),
            dtype=np.int64,
        ).reshape(-1, 1),
    }


def _broken_rule(arrays: dict, i: int, now_ms: int = NOW_MS) -> str | None:
    raw = arrays["TRANSACTION_ID"][i, 0]
    if not raw or len(raw) > scoring.MAX_ID_BYTES:
        return "TRANSACTION_ID"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "TRANSACTION_ID"
    for name in ("CARD_ID", "TERMINAL_ID"):
        if arrays[name][i, 0] <= 0:
            return name
    amount = float(arrays["AMOUNT"][i, 0])
    if not math.isfinite(amount) or amount < 0 or amount > scoring.MAX_AMOUNT:
        return "AMOUNT"
    ts = int(arrays["TIMESTAMP_MS"][i, 0])
    if ts < scoring.MIN_TIMESTAMP_MS or ts > now_ms + scoring.MAX_FUTURE_MS:
        return "TIMESTAMP_MS"
    return None


@settings(max_examples=300, deadline=None)
@given(well_typed_requests())
def test_every_row_is_answered_and_errors_name_field_row_and_rule(arrays) -> None:
    tx, errors = scoring.validate(arrays, now_ms=NOW_MS)
    rows = len(arrays["CARD_ID"])
    assert len(errors) == rows == len(tx)
    for i, error in enumerate(errors):
        broken = _broken_rule(arrays, i)
        if broken is None:
            assert error is None
            assert tx.transaction_id[i] == arrays["TRANSACTION_ID"][i, 0].decode()
            assert tx.card_id[i] == arrays["CARD_ID"][i, 0]
            assert tx.amount[i] == arrays["AMOUNT"][i, 0]
            assert tx.timestamp_ms[i] == arrays["TIMESTAMP_MS"][i, 0]
        else:
            assert error is not None and error.startswith(f"{broken}[{i}]: must ")
    assert np.all(np.isfinite(tx.amount)), "nothing non-finite reaches the models"


DTYPES = [np.float32, np.float64, np.int32, np.int64, np.object_, np.bool_]


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    field=st.sampled_from(FIELDS),
    dtype=st.sampled_from(DTYPES),
    shape=st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=3),
)
def test_wrong_dtype_shape_or_missing_input_is_refused_naming_the_input(
    data, field, dtype, shape
) -> None:
    arrays = data.draw(well_typed_requests())
    spec = next(s for s in SCORING.inputs if s.name == field)
    if data.draw(st.booleans()):
        del arrays[field]
        fits = False
    else:
        arrays[field] = np.zeros(shape, dtype=dtype)
        rows = len(arrays["CARD_ID"] if field != "CARD_ID" else arrays["TERMINAL_ID"])
        fits = np.dtype(dtype) == np.dtype(spec.dtype) and list(shape) == [rows, 1]
    try:
        scoring.validate(arrays, now_ms=NOW_MS)
    except scoring.InvalidRequest as err:
        assert not fits
        # A row-count mismatch names both inputs; anything else starts with the input.
        assert str(err).startswith((f"{field}:", "batch:")) or f"but {field} has" in str(err), str(
            err
        )
    else:
        assert fits, f"{field} {np.dtype(dtype)} {shape} was accepted"


def test_extra_inputs_are_ignored_and_empty_batches_refused() -> None:
    one = {
        "TRANSACTION_ID": np.array([[b"t-1"]], dtype=np.object_),
        "CARD_ID": np.array([[1]], dtype=np.int64),
        "TERMINAL_ID": np.array([[1]], dtype=np.int64),
        "AMOUNT": np.array([[1.0]], dtype=np.float32),
        "TIMESTAMP_MS": np.array([[NOW_MS]], dtype=np.int64),
    }
    _, errors = scoring.validate({**one, "EXTRA": np.zeros((1, 1))}, now_ms=NOW_MS)
    assert errors == [None]
    empty = {k: v[:0] for k, v in one.items()}
    try:
        scoring.validate(empty, now_ms=NOW_MS)
    except scoring.InvalidRequest as err:
        assert str(err).startswith("batch:")
    else:
        raise AssertionError("an empty batch was accepted")
