"""The value rules of a transaction's fields (and a click's), declared once with their wording.

A transaction enters twice: as a ``fraud_scoring`` request (``fraud.scoring.validate``, numpy
columns, messages naming the tensor and the row) and as a Kafka event (``events.decode``, one
value at a time, messages naming the event's field). Both check the fields below, in this
order, so a value one refuses the other refuses too, for the same field and in the same words.

A rule's ``breaks`` takes a numpy column or one value and answers a mask or a bool: the
vectorised and the scalar check are one expression.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_AMOUNT = 1_000_000.0
MAX_ID_BYTES = 128
#: Timestamps accepted: from 2000-01-01 to one day after the checker's clock.
MIN_TIMESTAMP_MS = 946_684_800_000
MAX_FUTURE_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Rule:
    """One rule a field's values keep: what it demands, in the words every error uses, and
    which values break it (``breaks(values, now_ms)``: a mask for a column, a bool for one
    value). Ids are checked as bytes."""

    wording: str
    breaks: Callable[[Any, int], Any]


@dataclass(frozen=True)
class Field:
    """A field of an event: its name there, the JSON type its value must have (``float``
    takes an int too), and its rules in the order checked (the first broken is reported)."""

    name: str
    kind: type
    rules: tuple[Rule, ...]

    def first_broken(self, value: Any, now_ms: int) -> Rule | None:
        """The first rule one value breaks, None if it keeps them all."""
        return next((rule for rule in self.rules if rule.breaks(value, now_ms)), None)


def _each(test: Callable[[bytes], bool]) -> Callable[[Any, int], Any]:
    """A bytes test as a rule's ``breaks``: per element of a column, or on one value."""

    def breaks(values: Any, _now_ms: int) -> Any:
        if isinstance(values, np.ndarray):
            return np.fromiter((test(v) for v in values), dtype=bool, count=len(values))
        return test(values)

    return breaks


def _not_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


ID_LENGTH = Rule(
    f"must be 1..{MAX_ID_BYTES} bytes", _each(lambda raw: not 1 <= len(raw) <= MAX_ID_BYTES)
)
ID_UTF8 = Rule("must be valid UTF-8", _each(_not_utf8))
POSITIVE_ID = Rule("must be a positive id", lambda values, _now_ms: values <= 0)
AMOUNT = Rule(
    f"must be a finite number in [0, {MAX_AMOUNT:.0f}]",
    # isfinite first: NaN compares False with everything.
    lambda values, _now_ms: ~np.isfinite(values) | (values < 0) | (values > MAX_AMOUNT),
)
TIMESTAMP = Rule(
    "must be epoch milliseconds between 2000-01-01 and one day from now",
    lambda values, now_ms: (values < MIN_TIMESTAMP_MS) | (values > now_ms + MAX_FUTURE_MS),
)

#: An id of a transaction or a click: 1..MAX_ID_BYTES bytes of UTF-8.
ID_RULES = (ID_LENGTH, ID_UTF8)

#: A transaction, as the ``transactions`` events name its fields.
TRANSACTION = (
    Field("transaction_id", str, ID_RULES),
    Field("card_id", int, (POSITIVE_ID,)),
    Field("terminal_id", int, (POSITIVE_ID,)),
    Field("amount", float, (AMOUNT,)),
    Field("ts_ms", int, (TIMESTAMP,)),
)

#: What a label says of a transaction, and who said it (see ``build_engines.labels``).
LABEL_KINDS = ("cardholder_report", "chargeback", "decline_confirmation", "investigator_verdict")
LABEL_KIND = Rule(
    "must be one of " + ", ".join(LABEL_KINDS),
    _each(lambda raw: raw.decode("utf-8", "replace") not in LABEL_KINDS),
)
BINARY = Rule("must be 0 or 1", lambda values, _now_ms: (values != 0) & (values != 1))

#: A label, as the ``labels`` events name its fields: the transaction's id and time, what was
#: reported (1: fraud, 0: genuine) and when (``reported_ms``, in the transactions' time).
LABEL = (
    Field("transaction_id", str, ID_RULES),
    Field("kind", str, (LABEL_KIND,)),
    Field("is_fraud", int, (BINARY,)),
    Field("ts_ms", int, (TIMESTAMP,)),
    Field("reported_ms", int, (TIMESTAMP,)),
)

#: A click, as the ``clicks`` events name its fields.
CLICK = (
    Field("click_id", str, ID_RULES),
    Field("user_id", int, (POSITIVE_ID,)),
    Field("item_id", int, (POSITIVE_ID,)),
    Field("ts_ms", int, (TIMESTAMP,)),
)
