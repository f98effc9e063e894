"""The heavy model's verdict on one decision as it goes on the ``analysis`` and ``review``
topics (``feature_repo/analysis.py`` writes it; the loop, the review queue and the tests read
it): binary by default (``records.proto``'s ``AnalysisRecord``), JSON with
``EVENT_FORMAT=json``; :func:`decode` reads both.

The dict is the one the case store keeps: the attributions a list of dicts, or None when
not explained yet; the inputs' rows base64 text (JSON-ready), raw bytes in the binary record.
"""

from __future__ import annotations

import json

from python_backend import events, records_pb2
from python_backend.fraud import served

#: A binary record's fields that the dict names otherwise.
_INPUTS = ("inputs_layout", "inputs_rows")


def encode(record: dict, binary: bool | None = None) -> bytes:
    """``record`` (an analysis) as a topic's value; ``binary`` None: as ``EVENT_FORMAT``
    says."""
    if binary is None:
        binary = events.binary_by_default()
    if not binary:
        return json.dumps(record, separators=(",", ":")).encode()
    fields = {
        k: v
        for k, v in record.items()
        if v is not None and k not in ("inputs", "attributions", "explained_when_opened")
    }
    attributions = record.get("attributions")
    if attributions is not None:
        fields["explained"] = True
        fields["attributions"] = [
            records_pb2.Attribution(**{k: v for k, v in a.items() if v is not None})
            for a in attributions
        ]
    inputs = record.get("inputs")
    if inputs is not None:
        fields["inputs_layout"] = inputs["layout"]
        fields["inputs_rows"] = served.raw_rows(inputs["rows"])
    return events.binary_record(records_pb2.AnalysisRecord(**fields))


def decode(value: bytes) -> dict:
    """A topic's value as the analysis dict, binary or JSON; ``ValueError`` naming what is
    wrong when it is neither."""
    if value[:1] != events.BINARY:
        record = json.loads(value)  # ValueError (JSONDecodeError, UnicodeDecodeError)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        return record
    message = records_pb2.AnalysisRecord
    record = events.parsed_binary(value, message)  # EventError
    record["reasons"] = list(record.get("reasons", ()))
    explained = record.pop("explained", False)
    attributions = record.pop("attributions", ())
    record["attributions"] = (
        [
            {
                "feature": a.feature,
                "group": a.group,
                "position": a.position if a.HasField("position") else None,
                "value": a.value,
                "contribution": a.contribution,
                "words": a.words,
            }
            for a in attributions
        ]
        if explained
        else None
    )
    for name in ("score", "model_version"):
        record.setdefault(name, None)
    layout, rows = record.pop(_INPUTS[0], None), record.pop(_INPUTS[1], None)
    if layout is not None:
        record["inputs"] = served.json_ready({"layout": layout, "rows": rows})
    return record
