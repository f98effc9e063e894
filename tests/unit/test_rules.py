"""The declarative rules: validation names the field at fault; scoring is max-of-fired."""

from __future__ import annotations

import numpy as np
import pytest

from python_backend.fraud.features import RULE_COLUMNS
from python_backend.fraud.rules import RulesError, load_rules, parse_rules

KNOWN = set(RULE_COLUMNS)


def _doc(**rule):
    base = {
        "id": "r",
        "reason": "R",
        "score": 0.5,
        "when": [{"feature": "amount", "op": ">", "value": 10}],
    }
    return {"base_score": 0.01, "rules": [{**base, **rule}]}


def test_packaged_rules_cover_amount_velocity_card_testing_and_new_terminal() -> None:
    rules = load_rules()
    reasons = {r.reason for r in rules.rules}
    assert {
        "AMOUNT_VERY_LARGE",
        "VELOCITY_10M",
        "CARD_TESTING",
        "NEW_TERMINAL_AMOUNT_SPIKE",
    } <= reasons


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"when": [{"feature": "amout", "op": ">", "value": 1}]}, r"when\[0\]\.feature: unknown"),
        ({"when": [{"feature": "amount", "op": "=>", "value": 1}]}, r"when\[0\]\.op"),
        ({"when": [{"feature": "amount", "op": ">", "value": "x"}]}, r"when\[0\]\.value"),
        ({"score": 1.5}, r"rule 'r'\.score: must be a number in \[0, 1\]"),
        ({"reason": "lower"}, r"rule 'r'\.reason"),
        ({"when": []}, r"rule 'r'\.when: needs at least one condition"),
    ],
)
def test_invalid_rules_name_the_rule_and_field(rule, message) -> None:
    with pytest.raises(RulesError, match=message):
        parse_rules(_doc(**rule), KNOWN)


def test_score_is_the_strongest_fired_rule_and_reasons_are_ordered() -> None:
    doc = {
        "base_score": 0.05,
        "rules": [
            {
                "id": "big",
                "reason": "BIG",
                "score": 0.6,
                "when": [{"feature": "amount", "op": ">=", "value": 100}],
            },
            {
                "id": "fast",
                "reason": "FAST",
                "score": 0.9,
                "when": [
                    {"feature": "card_tx_count_10m", "op": ">=", "value": 3},
                    {"feature": "amount", "op": ">", "value": 1},
                ],
            },
        ],
    }
    rules = parse_rules(doc, KNOWN)
    columns = {
        "amount": np.array([5.0, 150.0, 150.0, 0.5]),
        "card_tx_count_10m": np.array([0.0, 0.0, 4.0, 9.0]),
    }
    decision = rules.evaluate(columns)
    np.testing.assert_allclose(decision.scores, [0.05, 0.6, 0.9, 0.05])
    assert decision.reasons == [[], ["BIG"], ["FAST", "BIG"], []]


def test_evaluating_without_a_needed_column_is_a_clear_error() -> None:
    rules = parse_rules(_doc(), KNOWN)
    with pytest.raises(RulesError, match="lacks"):
        rules.evaluate({"hour": np.zeros(2)})
