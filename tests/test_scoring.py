"""Request validation and decisions, without a server."""

from __future__ import annotations

import json

import numpy as np
import pytest

from python_backend.scoring import (
    DecisionPolicy,
    InvalidRequest,
    budget_from_parameters,
    reasons_json,
    validate,
)

NOW = 1_780_000_000_000


def _arrays(n=2, **overrides):
    arrays = {
        "TRANSACTION_ID": np.array([[f"t{i}".encode()] for i in range(n)], dtype=np.object_),
        "CARD_ID": np.arange(1, n + 1, dtype=np.int64).reshape(-1, 1),
        "TERMINAL_ID": np.arange(1, n + 1, dtype=np.int64).reshape(-1, 1),
        "AMOUNT": np.full((n, 1), 12.5, dtype=np.float32),
        "TIMESTAMP_MS": np.full((n, 1), NOW - 1000, dtype=np.int64),
    }
    arrays.update(overrides)
    return arrays


def test_valid_request_has_no_row_errors() -> None:
    tx, errors = validate(_arrays(), now_ms=NOW)
    assert errors == [None, None] and tx.transaction_id == ["t0", "t1"]


@pytest.mark.parametrize(
    ("name", "values", "message"),
    [
        ("AMOUNT", [[1.0], [np.inf]], "AMOUNT[1]: must be a finite number"),
        ("AMOUNT", [[np.nan], [1.0]], "AMOUNT[0]"),
        ("TIMESTAMP_MS", [[NOW], [NOW + 3 * 86_400_000]], "TIMESTAMP_MS[1]"),
        ("CARD_ID", [[-3], [1]], "CARD_ID[0]: must be a positive id"),
        ("TRANSACTION_ID", [[b"ok"], [b"\xff\xfe"]], "TRANSACTION_ID[1]: must be valid UTF-8"),
        ("TRANSACTION_ID", [[b""], [b"ok"]], "TRANSACTION_ID[0]: must be 1..128 bytes"),
    ],
)
def test_bad_values_flag_their_row_only(name, values, message) -> None:
    dtype = _arrays()[name].dtype
    _tx, errors = validate(_arrays(**{name: np.array(values, dtype=dtype)}), now_ms=NOW)
    bad = [e for e in errors if e]
    assert len(bad) == 1 and bad[0].startswith(message)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"AMOUNT": None}, "AMOUNT: missing input"),
        ({"AMOUNT": np.ones((2, 1), dtype=np.float64)}, "AMOUNT: must be FLOAT32"),
        ({"CARD_ID": np.ones((2, 2), dtype=np.int64)}, "CARD_ID: shape must be"),
        ({"CARD_ID": np.ones((3, 1), dtype=np.int64)}, "CARD_ID: 3 rows"),
    ],
)
def test_malformed_requests_are_refused_whole(overrides, message) -> None:
    with pytest.raises(InvalidRequest, match=message.replace("(", r"\(")):
        validate(_arrays(**overrides), now_ms=NOW)


def test_thresholds_decide_per_path(tmp_path) -> None:
    path = tmp_path / "decision_policy.json"
    path.write_text(
        json.dumps(
            {
                "thresholds": {
                    p: {"review": 0.5, "decline": 0.9} for p in ("primary", "fallback", "rules")
                }
            }
        )
    )
    policy = DecisionPolicy.load(path)
    assert policy.decide(np.array([0.1, 0.5, 0.95]), "primary") == ["APPROVE", "REVIEW", "DECLINE"]


def test_budget_parameter_is_used_only_when_sane() -> None:
    assert budget_from_parameters('{"budget_ms": 40}', 95) == 40
    for raw in (
        None,
        "",
        "not json",
        '{"budget_ms": "fast"}',
        '{"budget_ms": 0}',
        '{"budget_ms": 1e9}',
    ):
        assert budget_from_parameters(raw, 95) == 95


def test_reasons_are_a_json_list_without_duplicates() -> None:
    assert json.loads(reasons_json(["A", "B", "A"])) == ["A", "B"]
