"""The topics' binary records (``python_backend/records.proto``): the committed module is what
the schema generates; events written either way read back the same; a binary record that is
wrong is refused naming what is wrong, as a JSON one is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from python_backend import events, paths, records_pb2

NOW_MS = 1_780_000_000_000
TX = events.TransactionEvent("tx-1", 7, 9, 12.5, NOW_MS - 1000)


def test_the_committed_module_is_what_the_schema_generates(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I.", f"--python_out={tmp_path}",
         "python_backend/records.proto"],
        cwd=paths.ROOT, check=True,
    )  # fmt: skip
    generated = (tmp_path / "python_backend" / "records_pb2.py").read_text()
    committed = (paths.ROOT / "python_backend" / "records_pb2.py").read_text()
    assert generated == committed, "records.proto changed: run `make records` and commit"


def test_events_are_written_binary_by_default_and_json_on_request(monkeypatch) -> None:
    binary = TX.encode()
    assert binary[:2] == events.BINARY + bytes((events.SCHEMA_VERSION,))
    assert len(binary) < len(TX.encode(binary=False)) / 2
    monkeypatch.setenv("EVENT_FORMAT", "json")
    assert TX.encode().startswith(b'{"v":1,')
    monkeypatch.setenv("EVENT_FORMAT", "avro")
    with pytest.raises(ValueError, match=r"EVENT_FORMAT: protobuf or json, got 'avro'"):
        TX.encode()


@pytest.mark.parametrize(
    "event, decode",
    [
        (TX, events.decode),
        (events.LabelEvent("tx-1", "chargeback", 0, NOW_MS - 5000, NOW_MS), events.decode_label),
        (events.ClickEvent("c-1", 3, 4, NOW_MS - 1), events.decode_click),
    ],
)
def test_each_event_reads_back_the_same_either_way(event, decode) -> None:
    for binary in (True, False):
        assert decode(event.encode(binary=binary), NOW_MS) == event


def _binary(message, version: int = events.SCHEMA_VERSION) -> bytes:
    return events.BINARY + bytes((version,)) + message.SerializeToString()


def test_a_wrong_binary_record_is_refused_naming_the_field_or_the_schema() -> None:
    whole = {"transaction_id": "t", "card_id": 1, "terminal_id": 2, "amount": 1.0,
             "ts_ms": NOW_MS}  # fmt: skip
    missing = records_pb2.TransactionEvent(**{k: v for k, v in whole.items() if k != "card_id"})
    with pytest.raises(events.EventError, match=r"^card_id: missing$"):
        events.decode(_binary(missing), NOW_MS)
    negative = records_pb2.TransactionEvent(**{**whole, "amount": -3.0})
    with pytest.raises(events.EventError, match=r"^amount: "):
        events.decode(_binary(negative), NOW_MS)
    with pytest.raises(events.EventError, match=r"^v: record schema version 2 is not 1$"):
        events.decode(_binary(records_pb2.TransactionEvent(**whole), version=2), NOW_MS)
    with pytest.raises(events.EventError, match=r"^v: record schema version None is not 1$"):
        events.decode(events.BINARY, NOW_MS)
    with pytest.raises(events.EventError, match=r"^not a TransactionEvent record: "):
        events.decode(events.BINARY + b"\x01\xff\xff\xff", NOW_MS)
    # A zero that was set is a value, not a missing field (explicit presence).
    label = records_pb2.LabelEvent(transaction_id="t", kind="chargeback", is_fraud=0,
                                   ts_ms=NOW_MS - 1, reported_ms=NOW_MS)  # fmt: skip
    assert events.decode_label(_binary(label), NOW_MS).is_fraud == 0


@pytest.mark.parametrize("binary", [True, False], ids=["protobuf", "json"])
@pytest.mark.parametrize("explained", [True, False])
def test_an_analysis_record_round_trips_in_either_format(binary, explained) -> None:
    """The heavy model's verdict as the analysis consumer publishes it and its readers get it
    back: the same dict (attributions None until explained, the inputs JSON-ready)."""
    from python_backend.fraud.cases import analysis_record

    record = {
        "v": 1,
        "transaction_id": "tx-1",
        "card_id": 12,
        "terminal_id": 40,
        "amount": 25.5,
        "ts_ms": 1_773_900_000_000,
        "decided_at_ms": 1_773_900_000_012,
        "analysed_at_ms": 1_773_900_000_900,
        "decision": "APPROVE",
        "path": "fallback",
        "reasons": ["PRIMARY_TIMEOUT"],
        "score": None,
        "model_version": None,
        "heavy_score": 0.625,
        "heavy_version": "1:3f2a9c",
        "review": explained,
        "disagrees": False,
        "attributions": [
            {
                "feature": "amount",
                "group": "transaction",
                "position": None,
                "value": 25.5,
                "contribution": 0.25,
                "words": "amount 25.5",
            },
            {
                "feature": "seq_amount",
                "group": "sequence",
                "position": 3,
                "value": 0.5,
                "contribution": -0.125,
                "words": "fourth last purchase",
            },
        ]
        if explained
        else None,
        "inputs": {"layout": "0123456789ab", "rows": "AACAPwAAAEA="},
    }
    value = analysis_record.encode(record, binary=binary)
    assert (value[:1] == events.BINARY) is binary
    assert analysis_record.decode(value) == record
