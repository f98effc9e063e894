"""An OTLP/HTTP trace receiver that stores spans where the tools read them.

Triton (2.51) posts OTLP/HTTP **JSON**, the OpenTelemetry SDK (the BLS, the consumer, the
client) posts protobuf; both arrive at ``POST /v1/traces`` and are appended, one span per
line, to ``spans.jsonl`` in the collector's folder (``python -m client collector``). A
production setup points the same endpoint (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) at an
OpenTelemetry Collector, Jaeger or Tempo instead; nothing else changes.

A stored span: ``trace_id``, ``span_id``, ``parent_id`` (hex, "" for a root), ``name``,
``service``, ``start_ns``, ``end_ns``, ``attributes`` (flat), ``events`` (``[name, ns]``).
"""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SPANS_FILE = "spans.jsonl"


def _value(value: dict):
    """An OTLP ``AnyValue`` (JSON form) as a plain value."""
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in value:
            return value[key]
    if "intValue" in value:
        return int(value["intValue"])
    if "arrayValue" in value:
        return [_value(v) for v in value["arrayValue"].get("values", [])]
    return None


def spans_from_json(body: dict) -> list[dict]:
    """Spans of an OTLP/HTTP JSON export (ids in hex, times as strings, as Triton sends)."""
    out = []
    for resource_spans in body.get("resourceSpans", []):
        resource = {
            a["key"]: _value(a["value"])
            for a in resource_spans.get("resource", {}).get("attributes", [])
        }
        service = resource.get("service.name", "")
        for scope in resource_spans.get("scopeSpans", []):
            for span in scope.get("spans", []):
                out.append(
                    {
                        "trace_id": span["traceId"].lower(),
                        "span_id": span["spanId"].lower(),
                        "parent_id": span.get("parentSpanId", "").lower(),
                        "name": span["name"],
                        "service": service,
                        "start_ns": int(span["startTimeUnixNano"]),
                        "end_ns": int(span["endTimeUnixNano"]),
                        "attributes": {
                            a["key"]: _value(a["value"]) for a in span.get("attributes", [])
                        },
                        "events": [
                            [e["name"], int(e["timeUnixNano"])] for e in span.get("events", [])
                        ],
                    }
                )
    return out


def spans_from_protobuf(payload: bytes) -> list[dict]:
    """Spans of an OTLP/HTTP protobuf export (``ExportTraceServiceRequest``)."""
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    request.ParseFromString(payload)
    out = []
    for resource_spans in request.resource_spans:
        resource = {
            a.key: _value(MessageToDict(a.value)) for a in resource_spans.resource.attributes
        }
        service = resource.get("service.name", "")
        for scope in resource_spans.scope_spans:
            for span in scope.spans:
                out.append(
                    {
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_id": span.parent_span_id.hex(),
                        "name": span.name,
                        "service": service,
                        "start_ns": span.start_time_unix_nano,
                        "end_ns": span.end_time_unix_nano,
                        "attributes": {
                            a.key: _value(MessageToDict(a.value)) for a in span.attributes
                        },
                        "events": [[e.name, e.time_unix_nano] for e in span.events],
                    }
                )
    return out


class SpanStore:
    """``spans.jsonl`` in ``folder``, appended under a lock."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / SPANS_FILE
        self.lock = threading.Lock()
        self.received = 0

    def add(self, spans: list[dict]) -> None:
        if not spans:
            return
        lines = "".join(json.dumps(s, separators=(",", ":")) + "\n" for s in spans)
        with self.lock, self.path.open("a") as f:
            f.write(lines)
            self.received += len(spans)


def _handler(store: SpanStore):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            if self.path != "/health":
                return self._answer(404, b"only /health and POST /v1/traces here\n")
            self._answer(200, json.dumps({"spans": store.received}).encode())

        def do_POST(self):
            if self.path.rstrip("/") != "/v1/traces":
                return self._answer(404, b"spans are posted to /v1/traces\n")
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = self._chunked()
            else:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            kind = self.headers.get("Content-Type", "")
            try:
                if "json" in kind:
                    spans = spans_from_json(json.loads(body))
                else:
                    spans = spans_from_protobuf(body)
            except Exception as err:  # a malformed export is refused, the receiver stays
                print(f"collector: refused an export ({kind}, {len(body)} bytes): {err}")
                return self._answer(400, f"not an OTLP trace export: {err}\n".encode())
            store.add(spans)
            self._answer(200, b"{}" if "json" in kind else b"", kind or "application/x-protobuf")

        def _chunked(self) -> bytes:
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()

        def _answer(self, status: int, body: bytes, kind: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args) -> None:
            pass

    return Handler


def serve(port: int, folder: str | Path, ready_file: Path | None = None) -> None:
    """Receive spans on ``127.0.0.1:port`` until stopped (SIGTERM / Ctrl-C)."""
    import signal

    store = SpanStore(folder)
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(store))
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    if ready_file is not None:
        ready_file.write_text(str(port))
    import sys

    sys.stdout.reconfigure(line_buffering=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
