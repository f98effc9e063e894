"""The events on the Kafka topics: one schema each, versioned.

``transactions``: the simulator's replayer and the serving side produce them; the stream
consumer reads them. ``clicks``: what a user clicked (the recommender's real-time input).
JSON (one object per message) with a ``v`` field, keyed by card id (user id) so that each
entity's events stay in order on one partition.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

TOPIC_TRANSACTIONS = "transactions"
SCHEMA_VERSION = 1


class EventError(ValueError):
    """A message that is not a valid transaction event; names the field at fault."""


@dataclass(frozen=True)
class TransactionEvent:
    transaction_id: str
    card_id: int
    terminal_id: int
    amount: float
    ts_ms: int

    @property
    def key(self) -> bytes:
        return str(self.card_id).encode()

    def encode(self) -> bytes:
        return json.dumps({"v": SCHEMA_VERSION, **asdict(self)}, separators=(",", ":")).encode()


_FIELDS = {"transaction_id": str, "card_id": int, "terminal_id": int, "amount": float, "ts_ms": int}


def _fields(message: bytes, kinds: dict[str, type]) -> dict:
    """The message's fields, each of its declared type (an int is accepted for a float)."""
    try:
        raw = json.loads(message)
    except (ValueError, UnicodeDecodeError) as err:
        raise EventError(f"not JSON: {err}") from None
    if not isinstance(raw, dict):
        raise EventError("the message must be a JSON object")
    if raw.get("v") != SCHEMA_VERSION:
        raise EventError(f"v: schema version {raw.get('v')!r} is not {SCHEMA_VERSION}")
    values = {}
    for name, kind in kinds.items():
        value = raw.get(name)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise EventError(f"{name}: expected {kind.__name__}, got {value!r}")
        values[name] = value
    return values


def decode(message: bytes) -> TransactionEvent:
    """Parse and validate one message."""
    values = _fields(message, _FIELDS)
    if not values["transaction_id"]:
        raise EventError("transaction_id: must not be empty")
    if values["ts_ms"] <= 0:
        raise EventError("ts_ms: must be a positive epoch time in milliseconds")
    if not values["amount"] >= 0:  # also rejects NaN
        raise EventError(f"amount: must be >= 0, got {values['amount']!r}")
    return TransactionEvent(**values)


@dataclass(frozen=True)
class ClickEvent:
    click_id: str
    user_id: int
    item_id: int
    ts_ms: int

    @property
    def key(self) -> bytes:
        return str(self.user_id).encode()

    def encode(self) -> bytes:
        return json.dumps({"v": SCHEMA_VERSION, **asdict(self)}, separators=(",", ":")).encode()


def decode_click(message: bytes) -> ClickEvent:
    """Parse and validate one ``clicks`` message."""
    values = _fields(message, {"click_id": str, "user_id": int, "item_id": int, "ts_ms": int})
    if not values["click_id"]:
        raise EventError("click_id: must not be empty")
    for name in ("user_id", "item_id", "ts_ms"):
        if values[name] <= 0:
            raise EventError(f"{name}: must be positive, got {values[name]}")
    return ClickEvent(**values)
