"""Declarative fraud rules: the last resort when no model answers.

A rules file (YAML) lists rules; each has an id, a reason code, a score and conditions that
must all hold. A transaction's score is the highest score of the rules it fires (or the
file's ``base_score``), and its reasons are the fired reason codes, strongest first.

Conditions compare a named column of :class:`python_backend.fraud.features.ModelInputs.columns`
with a constant. Files are validated when loaded: an unknown column, operator or a score
outside [0, 1] is an error that names the rule and the field.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

_OPERATORS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}

DEFAULT_RULES_FILE = "rules.yaml"


class RulesError(ValueError):
    """A rules file that cannot be used, with the rule and field at fault."""


@dataclass(frozen=True)
class Condition:
    column: str
    op: str
    value: float

    def evaluate(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        return _OPERATORS[self.op](np.asarray(columns[self.column]), self.value)


@dataclass(frozen=True)
class Rule:
    id: str
    reason: str
    score: float
    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class RuleDecision:
    """Per-row outcome of the rules: score and fired reason codes."""

    scores: np.ndarray  # [B] float32
    reasons: list[list[str]]


class RuleSet:
    """A validated set of rules, evaluated on whole batches at once."""

    def __init__(self, rules: tuple[Rule, ...], base_score: float, version: int) -> None:
        self.rules = rules
        self.base_score = base_score
        self.version = version

    @property
    def columns(self) -> set[str]:
        """Every column a rule reads."""
        return {c.column for rule in self.rules for c in rule.conditions}

    def evaluate(self, columns: Mapping[str, np.ndarray]) -> RuleDecision:
        """Score a batch given its named columns (each ``[B]``)."""
        missing = self.columns - set(columns)
        if missing:
            raise RulesError(f"rules read columns the batch lacks: {sorted(missing)}")
        batch = len(next(iter(columns.values()))) if columns else 0
        scores = np.full(batch, self.base_score, dtype=np.float32)
        fired_by_rule = []
        for rule in self.rules:
            fired = np.ones(batch, dtype=bool)
            for condition in rule.conditions:
                fired &= condition.evaluate(columns)
            scores = np.where(fired, np.maximum(scores, rule.score), scores)
            fired_by_rule.append(fired)
        order = sorted(range(len(self.rules)), key=lambda i: -self.rules[i].score)
        reasons = [
            [self.rules[i].reason for i in order if fired_by_rule[i][row]] for row in range(batch)
        ]
        return RuleDecision(scores=scores.astype(np.float32), reasons=reasons)


def parse_rules(document: Mapping, known_columns: set[str]) -> RuleSet:
    """Validate a parsed rules document against the columns the features provide."""
    if not isinstance(document, Mapping):
        raise RulesError("rules file: the top level must be a mapping with 'rules'")
    base_score = _score(document.get("base_score", 0.0), "base_score")
    raw_rules = document.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise RulesError("rules file: 'rules' must be a non-empty list")
    rules = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_rules):
        where = f"rules[{index}]"
        if not isinstance(raw, Mapping):
            raise RulesError(f"{where}: each rule must be a mapping")
        rule_id = str(raw.get("id", ""))
        if not rule_id:
            raise RulesError(f"{where}.id: required")
        if rule_id in seen:
            raise RulesError(f"{where}.id: '{rule_id}' is used twice")
        seen.add(rule_id)
        where = f"rule '{rule_id}'"
        reason = str(raw.get("reason", ""))
        if not reason.isupper():
            raise RulesError(f"{where}.reason: must be an UPPER_CASE reason code")
        conditions = []
        for c_index, cond in enumerate(raw.get("when") or []):
            c_where = f"{where}.when[{c_index}]"
            column = cond.get("feature") if isinstance(cond, Mapping) else None
            if column not in known_columns:
                raise RulesError(
                    f"{c_where}.feature: unknown feature {column!r}; "
                    f"known: {', '.join(sorted(known_columns))}"
                )
            op = cond.get("op")
            if op not in _OPERATORS:
                raise RulesError(f"{c_where}.op: {op!r} is not one of {sorted(_OPERATORS)}")
            value = cond.get("value")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise RulesError(f"{c_where}.value: must be a number, got {value!r}")
            conditions.append(Condition(column, op, float(value)))
        if not conditions:
            raise RulesError(f"{where}.when: needs at least one condition")
        rules.append(
            Rule(rule_id, reason, _score(raw.get("score"), f"{where}.score"), tuple(conditions))
        )
    return RuleSet(tuple(rules), base_score, int(document.get("version", 1)))


def _score(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise RulesError(f"{where}: must be a number in [0, 1], got {value!r}")
    return float(value)


def load_rules(path: str | Path | None = None) -> RuleSet:
    """Load and validate a rules file (the packaged default when ``path`` is None)."""
    from python_backend.fraud.features import RULE_COLUMNS

    if path is None:
        text = resources.files("python_backend.fraud").joinpath(DEFAULT_RULES_FILE).read_text()
    else:
        text = Path(path).read_text()
    return parse_rules(yaml.safe_load(text), set(RULE_COLUMNS))
