"""Feature logging: what the models saw goes into the decision log and comes back the same."""

from __future__ import annotations

import json

import numpy as np
import pytest

from python_backend.fraud import served
from python_backend.fraud.contract import CATEGORICAL, SEQUENCE, TABULAR
from python_backend.fraud.features import ModelInputs


def _inputs(n: int = 5) -> ModelInputs:
    rng = np.random.default_rng(0)
    return ModelInputs(
        rng.normal(size=(n, *TABULAR.dims)).astype(np.float32),
        rng.normal(size=(n, *SEQUENCE.dims)).astype(np.float32),
        rng.integers(0, 7, size=(n, *CATEGORICAL.dims)).astype(np.int64),
        {},
    )


@pytest.mark.parametrize("binary", [True, False], ids=["protobuf", "json"])
def test_logged_inputs_round_trip_through_the_decision_log_exactly(binary) -> None:
    """Through the decision log's record, binary (the rows as raw bytes) or JSON (base64),
    and back: the same inputs, bit for bit."""
    from python_backend.fraud import decision_log

    inputs = _inputs()
    records = [
        decision_log.record(f"t{i}", "APPROVE", 0.01, "primary", []) | {"inputs": field}
        for i, field in enumerate(served.logged(inputs))
    ]
    values = [decision_log.encode(r, binary=binary) for r in records]
    back = served.decode([decision_log.decode(v)["inputs"] for v in values])
    np.testing.assert_array_equal(back.tabular, inputs.tabular)
    np.testing.assert_array_equal(back.sequence, inputs.sequence)
    np.testing.assert_array_equal(back.categorical, inputs.categorical)
    assert back.categorical.dtype == np.int64
    row_bytes = 4 * sum(served._WIDTHS)
    limit = row_bytes + 200 if binary else row_bytes * 4 / 3 + 300  # base64: 4/3 as long
    assert all(len(v) < limit for v in values), [len(v) for v in values[:3]]


def test_a_json_ready_field_decodes_as_the_field() -> None:
    fields = served.logged(_inputs(2))
    again = json.loads(json.dumps([served.json_ready(f) for f in fields]))
    np.testing.assert_array_equal(served.decode(again).tabular, served.decode(fields).tabular)


def test_inputs_of_another_layout_are_refused_by_name() -> None:
    fields = served.logged(_inputs(1))
    fields[0]["layout"] = "0123456789ab"
    with pytest.raises(served.LayoutError, match="0123456789ab"):
        served.decode(fields)


def test_a_decision_record_carries_its_transaction_and_inputs() -> None:
    from python_backend.fraud.outbox import with_transaction
    from python_backend.fraud.scoring import Transactions

    tx = Transactions.from_rows(
        [
            {
                "transaction_id": f"t{i}",
                "card_id": 10 + i,
                "terminal_id": 20 + i,
                "amount": 5.5 * i,
                "ts_ms": 1_767_571_200_000 + i,
            }
            for i in range(3)
        ]
    )
    inputs = _inputs(3)
    records = with_transaction(
        1, [{"transaction_id": "t1"}, {"transaction_id": "t2"}], tx, served.logged(inputs)
    )
    assert [r["card_id"] for r in records] == [11, 12]
    assert records[1]["amount"] == 11.0 and records[1]["ts_ms"] == 1_767_571_200_002
    np.testing.assert_array_equal(
        served.decode([r["inputs"] for r in records]).tabular, inputs.tabular[1:]
    )
