"""The events on the Kafka topics: one schema each, versioned.

``transactions``: the simulator's replayer and the serving side produce them; the stream
consumer reads them. ``labels``: what card holders, issuers and investigators reported of a
transaction, days to weeks after it (the retraining loop's labels). ``clicks``: what a user
clicked (the recommender's real-time input).
Keyed by card id (user id) so that each entity's events stay in order on one partition.
Written as binary records by default (``records.proto``: a byte 0x00, a byte of the schema's
version, the protobuf message), as JSON with ``EVENT_FORMAT=json`` (one object with a ``v``
field); both are read, whatever a producer wrote. Their values keep the rules of
``field_rules`` (the request path's too): a bad event is refused here, as its request would be.
Measured against JSON (``python -m perf records``): see perf/README.md.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass

from google.protobuf.message import DecodeError

from python_backend import records_pb2, settings
from python_backend.field_rules import CLICK, LABEL, TRANSACTION, Field

TOPIC_TRANSACTIONS = "transactions"
TOPIC_LABELS = "labels"
SCHEMA_VERSION = 1
#: A binary record's first byte (no JSON value starts with it), then its schema version.
BINARY = b"\x00"
JSON = "json"
PROTOBUF = "protobuf"
#: Integers the store's int64 keys and times can hold.
_INT64 = range(-(2**63), 2**63)


class EventError(ValueError):
    """A message that is not a valid event; names the field at fault and the rule."""


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

    def encode(self, binary: bool | None = None) -> bytes:
        return _encode(self, records_pb2.TransactionEvent, binary)


def _encode(event, schema, binary: bool | None) -> bytes:
    """``event`` as a binary record (``schema``: its protobuf message) or as JSON; ``binary``
    None: as ``EVENT_FORMAT`` says."""
    if binary is None:
        binary = binary_by_default()
    values = asdict(event)
    if binary:
        return binary_record(schema(**values))
    return json.dumps({"v": SCHEMA_VERSION, **values}, separators=(",", ":")).encode()


def binary_by_default() -> bool:
    chosen = settings.EVENT_FORMAT.get()
    if chosen not in (PROTOBUF, JSON):
        raise ValueError(f"EVENT_FORMAT: {PROTOBUF} or {JSON}, got {chosen!r}")
    return chosen == PROTOBUF


def _shown(value: object) -> str:
    """A value as an error quotes it: short, whatever came."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _typed(name: str, kind: type, value: object) -> object:
    """``value`` as ``kind`` (an int is taken for a float), or EventError."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # beyond any float: the amount rule refuses it as infinite
            return math.inf if value > 0 else -math.inf
    if not isinstance(value, kind) or isinstance(value, bool):
        raise EventError(f"{name}: expected {kind.__name__}, got {_shown(value)}")
    if kind is int and value not in _INT64:
        raise EventError(f"{name}: expected a 64-bit integer, got {_shown(value)}")
    return value


def binary_record(message) -> bytes:
    """A protobuf message as a binary record: the mark, the schema version, the message."""
    return BINARY + bytes((SCHEMA_VERSION,)) + message.SerializeToString()


def parsed_binary(message: bytes, schema) -> dict:
    """A binary record's fields that are set (``schema``: its protobuf message); EventError
    naming the version or the schema when it is not one."""
    if len(message) < 2 or message[1] != SCHEMA_VERSION:
        found = message[1] if len(message) > 1 else None
        raise EventError(f"v: record schema version {found} is not {SCHEMA_VERSION}")
    try:
        parsed = schema.FromString(message[2:])
    except DecodeError as err:
        raise EventError(f"not a {schema.DESCRIPTOR.name} record: {err}") from None
    return {field.name: value for field, value in parsed.ListFields()}


def _parsed_json(message: bytes) -> dict:
    try:
        # Python's json takes NaN and Infinity literals: the rules refuse them below.
        raw = json.loads(message)
    except (ValueError, UnicodeDecodeError) as err:
        raise EventError(f"not JSON: {err}") from None
    if not isinstance(raw, dict):
        raise EventError("the message must be a JSON object")
    version = raw.get("v")
    if type(version) is not int or version != SCHEMA_VERSION:  # not True, not 1.0
        raise EventError(f"v: schema version {_shown(version)} is not {SCHEMA_VERSION}")
    return raw


def _fields(message: bytes, fields: tuple[Field, ...], now_ms: int | None, schema) -> dict:
    """The message's fields (a binary record of ``schema``, or JSON), each of its declared
    type and keeping its rules (``now_ms``: the clock the timestamp rule reads; None: this
    machine's)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    raw = parsed_binary(message, schema) if message[:1] == BINARY else _parsed_json(message)
    values = {}
    for field in fields:
        if field.name not in raw:
            raise EventError(f"{field.name}: missing")
        values[field.name] = _typed(field.name, field.kind, raw[field.name])
    for field in fields:
        value = values[field.name]
        # Ids are checked as the bytes a request carries; a lone surrogate comes out invalid.
        checked = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
        rule = field.first_broken(checked, now_ms)
        if rule is not None:
            raise EventError(f"{field.name}: {rule.wording}, got {_shown(raw[field.name])}")
    return values


def decode(message: bytes, now_ms: int | None = None) -> TransactionEvent:
    """Parse and validate one ``transactions`` message (``now_ms``: the clock the timestamp
    rule reads; None: this machine's)."""
    return TransactionEvent(**_fields(message, TRANSACTION, now_ms, records_pb2.TransactionEvent))


@dataclass(frozen=True)
class LabelEvent:
    """A label of one transaction: ``is_fraud`` 1 or 0, reported at ``reported_ms`` (time of
    the simulated world, like ``ts_ms``), by a ``kind`` of reporter. Keyed by transaction, so
    a transaction's labels stay in order on one partition."""

    transaction_id: str
    kind: str
    is_fraud: int
    ts_ms: int
    reported_ms: int

    @property
    def key(self) -> bytes:
        return self.transaction_id.encode()

    def encode(self, binary: bool | None = None) -> bytes:
        return _encode(self, records_pb2.LabelEvent, binary)


def decode_label(message: bytes, now_ms: int | None = None) -> LabelEvent:
    """Parse and validate one ``labels`` message (``now_ms`` as in :func:`decode`); a label
    reported before its transaction is refused."""
    label = LabelEvent(**_fields(message, LABEL, now_ms, records_pb2.LabelEvent))
    if label.reported_ms < label.ts_ms:
        raise EventError(
            f"reported_ms: must not be before ts_ms ({label.ts_ms}), got {label.reported_ms}"
        )
    return label


@dataclass(frozen=True)
class ClickEvent:
    click_id: str
    user_id: int
    item_id: int
    ts_ms: int

    @property
    def key(self) -> bytes:
        return str(self.user_id).encode()

    def encode(self, binary: bool | None = None) -> bytes:
        return _encode(self, records_pb2.ClickEvent, binary)


def decode_click(message: bytes, now_ms: int | None = None) -> ClickEvent:
    """Parse and validate one ``clicks`` message (``now_ms`` as in :func:`decode`)."""
    return ClickEvent(**_fields(message, CLICK, now_ms, records_pb2.ClickEvent))
