"""Property-based checks of the stream's events (pure logic: ``events.decode``,
``events.decode_click``), and of their agreement with the request path (``scoring.validate``).

Whatever arrives on a topic, decoding either returns the event exactly as sent or raises
``EventError`` naming the field at fault; nothing else escapes. The oracle below states the
rules in its own words (the limits written out, not imported), so a rule changed in
``python_backend/field_rules.py`` fails here until this statement of it changes too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from python_backend import events
from python_backend.fraud import scoring

NOW_MS = 1_780_000_000_000
Y2K_MS = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1000)
DAY_MS = 24 * 3600 * 1000
INT64_MAX = 2**63 - 1


# The rules, stated independently: each says whether one JSON value is acceptable.
def _id_ok(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8 spells it
        return False
    return 1 <= len(raw) <= 128


def _positive_id_ok(value: object) -> bool:
    return type(value) is int and 1 <= value <= INT64_MAX


def _amount_ok(value: object) -> bool:
    if type(value) is float and not math.isfinite(value):
        return False
    return type(value) in (int, float) and 0 <= value <= 1_000_000


def _ts_ok(value: object) -> bool:
    return type(value) is int and Y2K_MS <= value <= NOW_MS + DAY_MS


# Values of each kind, right and wrong: the wrong ones near the edges and past them.
INT64 = st.integers(min_value=-(2**63), max_value=INT64_MAX)
SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
ANY_ID = st.one_of(
    st.text(max_size=140),
    st.text(st.characters(min_codepoint=0x800), min_size=40, max_size=50),  # 3 bytes each
    st.text(st.one_of(st.characters(), SURROGATES), min_size=1, max_size=5),
)
ANY_POSITIVE_ID = st.one_of(
    st.integers(min_value=-3, max_value=3),
    INT64,
    st.integers(min_value=2**63, max_value=2**80),
)
ANY_AMOUNT = st.one_of(
    st.floats(),  # NaN and both infinities included: JSON writes them as literals
    st.floats(min_value=999_999.0, max_value=1_000_001.0),
    st.integers(min_value=-10, max_value=2_000_000),
    st.integers(min_value=2**1024, max_value=2**1100),  # beyond any float
)
ANY_TS = st.one_of(
    INT64,
    st.integers(min_value=Y2K_MS - 10, max_value=NOW_MS + DAY_MS + 10),
    st.sampled_from([Y2K_MS - 1, Y2K_MS, NOW_MS + DAY_MS, NOW_MS + DAY_MS + 1]),
)
VALID_ID = st.text(min_size=1, max_size=128).filter(lambda s: len(s.encode()) <= 128)
VALID_POSITIVE_ID = st.integers(min_value=1, max_value=INT64_MAX)
VALID_TS = st.integers(min_value=Y2K_MS, max_value=NOW_MS + DAY_MS)


@dataclass(frozen=True)
class Schema:
    """One topic's event: its decoder, its class, and per field (in the class's order) its
    JSON kind, the oracle's rule, valid values, and values of that kind either side of the
    rule."""

    decode: Callable
    event: type
    kinds: dict[str, type]
    ok: dict[str, Callable[[object], bool]]
    valid: dict[str, st.SearchStrategy]
    wide: dict[str, st.SearchStrategy]


TRANSACTION = Schema(
    events.decode,
    events.TransactionEvent,
    {"transaction_id": str, "card_id": int, "terminal_id": int, "amount": float, "ts_ms": int},
    {
        "transaction_id": _id_ok,
        "card_id": _positive_id_ok,
        "terminal_id": _positive_id_ok,
        "amount": _amount_ok,
        "ts_ms": _ts_ok,
    },
    {
        "transaction_id": VALID_ID,
        "card_id": VALID_POSITIVE_ID,
        "terminal_id": VALID_POSITIVE_ID,
        "amount": st.floats(min_value=0, max_value=1_000_000),
        "ts_ms": VALID_TS,
    },
    {
        "transaction_id": ANY_ID,
        "card_id": ANY_POSITIVE_ID,
        "terminal_id": ANY_POSITIVE_ID,
        "amount": ANY_AMOUNT,
        "ts_ms": ANY_TS,
    },
)
CLICK = Schema(
    events.decode_click,
    events.ClickEvent,
    {"click_id": str, "user_id": int, "item_id": int, "ts_ms": int},
    {"click_id": _id_ok, "user_id": _positive_id_ok, "item_id": _positive_id_ok, "ts_ms": _ts_ok},
    {
        "click_id": VALID_ID,
        "user_id": VALID_POSITIVE_ID,
        "item_id": VALID_POSITIVE_ID,
        "ts_ms": VALID_TS,
    },
    {"click_id": ANY_ID, "user_id": ANY_POSITIVE_ID, "item_id": ANY_POSITIVE_ID, "ts_ms": ANY_TS},
)
SCHEMAS = pytest.mark.parametrize("schema", [TRANSACTION, CLICK], ids=["transaction", "click"])


def _message(fields: dict, version: object = 1) -> bytes:
    return json.dumps({"v": version, **fields}).encode()


def _decode(schema: Schema, message: bytes):
    return schema.decode(message, now_ms=NOW_MS)


def _fixed(strategies: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    return st.fixed_dictionaries(strategies)


@SCHEMAS
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_valid_events_round_trip(schema: Schema, data) -> None:
    event = schema.event(**data.draw(_fixed(schema.valid)))
    assert _decode(schema, event.encode(binary=True)) == event
    assert _decode(schema, event.encode(binary=False)) == event


@SCHEMAS
@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_an_event_breaking_one_rule_is_refused_naming_that_field(schema: Schema, data) -> None:
    fields = data.draw(_fixed(schema.valid))
    field = data.draw(st.sampled_from(list(schema.ok)))
    fields[field] = data.draw(schema.wide[field].filter(lambda v: not schema.ok[field](v)))
    with pytest.raises(events.EventError) as refused:
        _decode(schema, _message(fields))
    assert str(refused.value).startswith(f"{field}: "), str(refused.value)


@SCHEMAS
@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_any_event_is_accepted_as_sent_or_refused_naming_a_broken_field(
    schema: Schema, data
) -> None:
    fields = data.draw(_fixed(schema.wide))
    broken = {name for name, ok in schema.ok.items() if not ok(fields[name])}
    try:
        event = _decode(schema, _message(fields))
    except events.EventError as err:
        assert broken, f"a valid event was refused: {err}"
        assert str(err).split(":")[0] in broken, (str(err), broken)
    else:
        assert not broken, f"{sorted(broken)} broken, but the event was accepted"
        assert event == schema.event(**fields)


@SCHEMAS
@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=60))
def test_any_bytes_marked_binary_decode_or_are_refused_by_name(schema: Schema, body) -> None:
    """Whatever follows the binary mark: an event that keeps every rule, or EventError."""
    try:
        event = _decode(schema, events.BINARY + bytes((events.SCHEMA_VERSION,)) + body)
    except events.EventError as err:
        assert str(err).startswith(("not a ", *(f"{name}: " for name in schema.ok))), err
    else:
        for name, ok in schema.ok.items():
            assert ok(getattr(event, name)), (name, event)


JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=5,
)


@SCHEMAS
@settings(max_examples=200, deadline=None)
@given(message=st.binary(max_size=40))
def test_bytes_that_are_not_json_are_refused(schema: Schema, message: bytes) -> None:
    assume(message[:1] != events.BINARY)  # a binary record's mark: the test below
    try:
        json.loads(message)
    except (ValueError, UnicodeDecodeError):
        pass
    else:
        assume(False)
    with pytest.raises(events.EventError, match=r"^not JSON: "):
        _decode(schema, message)


@SCHEMAS
@settings(max_examples=200, deadline=None)
@given(value=JSON_VALUES.filter(lambda v: not isinstance(v, dict)))
def test_json_that_is_not_an_object_is_refused(schema: Schema, value) -> None:
    with pytest.raises(events.EventError, match=r"^the message must be a JSON object$"):
        _decode(schema, json.dumps(value).encode())


@SCHEMAS
@settings(max_examples=200, deadline=None)
@given(data=st.data(), version=JSON_VALUES.filter(lambda v: type(v) is not int or v != 1))
def test_any_schema_version_but_1_is_refused(schema: Schema, data, version) -> None:
    fields = data.draw(_fixed(schema.valid))
    with pytest.raises(events.EventError, match=r"^v: schema version "):
        _decode(schema, _message(fields, version))
    with pytest.raises(events.EventError, match=r"^v: schema version "):
        _decode(schema, json.dumps(fields).encode())  # no version at all


def _of_kind(kind: type, value: object) -> bool:
    """Whether a JSON value is of a field's kind: bools are JSON's own type, never a number;
    an int stands for a float."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int | float) if kind is float else isinstance(value, kind)


@SCHEMAS
@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_a_field_of_the_wrong_type_or_missing_is_refused_naming_it(schema: Schema, data) -> None:
    fields = data.draw(_fixed(schema.valid))
    field = data.draw(st.sampled_from(list(schema.ok)))
    if data.draw(st.booleans()):
        del fields[field]
    else:
        kind = schema.kinds[field]
        fields[field] = data.draw(JSON_VALUES.filter(lambda v: not _of_kind(kind, v)))
    with pytest.raises(events.EventError) as refused:
        _decode(schema, _message(fields))
    assert str(refused.value).startswith(f"{field}: "), str(refused.value)


@SCHEMAS
@settings(max_examples=100, deadline=None)
@given(data=st.data(), value=st.booleans())
def test_bools_are_refused_in_every_field(schema: Schema, data, value: bool) -> None:
    fields = data.draw(_fixed(schema.valid))
    field = data.draw(st.sampled_from(list(schema.ok)))
    fields[field] = value
    with pytest.raises(events.EventError, match=f"^{field}: expected "):
        _decode(schema, _message(fields))


#: The request path's tensor carrying each transaction field (the contract's names).
TENSORS = {
    "transaction_id": "TRANSACTION_ID",
    "card_id": "CARD_ID",
    "terminal_id": "TERMINAL_ID",
    "amount": "AMOUNT",
    "ts_ms": "TIMESTAMP_MS",
}


@st.composite
def transaction_rows(draw, max_rows: int = 30) -> list[dict]:
    """Field values both entries can carry: ids any text (lone surrogates too), int64 ids
    and times, float32 amounts (NaN and infinities too)."""
    row = st.fixed_dictionaries(
        {
            "transaction_id": ANY_ID,
            "card_id": st.one_of(st.integers(min_value=-3, max_value=3), INT64),
            "terminal_id": st.one_of(st.integers(min_value=-3, max_value=3), INT64),
            "amount": st.one_of(
                st.floats(width=32), st.floats(min_value=999_990, max_value=1e6 + 10, width=32)
            ),
            "ts_ms": ANY_TS,
        }
    )
    return draw(st.lists(row, min_size=1, max_size=max_rows))


@settings(max_examples=300, deadline=None)
@given(transaction_rows())
def test_the_request_path_and_the_stream_refuse_the_same_transactions(rows) -> None:
    """A row ``scoring.validate`` refuses is an event ``events.decode`` refuses, for the
    same field and in the same words; a row one accepts, the other accepts."""
    arrays = {
        # What a client sends for a text id: its UTF-8 (a lone surrogate as such a client
        # would write it, which is not valid UTF-8).
        "TRANSACTION_ID": np.array(
            [[r["transaction_id"].encode("utf-8", "surrogatepass")] for r in rows],
            dtype=np.object_,
        ),
        "CARD_ID": np.array([[r["card_id"]] for r in rows], dtype=np.int64),
        "TERMINAL_ID": np.array([[r["terminal_id"]] for r in rows], dtype=np.int64),
        "AMOUNT": np.array([[r["amount"]] for r in rows], dtype=np.float32),
        "TIMESTAMP_MS": np.array([[r["ts_ms"]] for r in rows], dtype=np.int64),
    }
    _tx, errors = scoring.validate(arrays, now_ms=NOW_MS)
    for i, (row, error) in enumerate(zip(rows, errors, strict=True)):
        try:
            events.decode(_message(row), now_ms=NOW_MS)
        except events.EventError as err:
            field, rule = str(err).split(": ", 1)
            assert error is not None, f"row {i}: the stream refused ({err}), the request path not"
            assert error.startswith(f"{TENSORS[field]}[{i}]: "), (error, str(err))
            assert rule.startswith(f"{error.split(': ', 1)[1]}, got "), (error, str(err))
        else:
            assert error is None, f"row {i}: the request path refused ({error}), the stream not"
