"""Traces: the W3C trace context in and out, and OpenTelemetry spans from recorded times.

One setting turns tracing on for every process of the project:
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (OpenTelemetry's own name; ``off`` disables). Triton
is started in its ``opentelemetry`` trace mode at ``rate=0``, so it traces exactly the
requests that carry a ``traceparent``: the client decides which decisions are traced
(``TRACE_SAMPLE``), and a request that is not traced costs nothing here, not even the import
of the SDK, which happens on the first traced request.

Hot-path code does not hold spans open: it records ``(name, parent, start, end)`` on a
:class:`Timeline` (``perf_counter`` seconds, as the service already stamps its stages) only
when the request is traced, and :meth:`Tracer.emit` turns the timeline into spans after
the answer is built, with their true start and end times.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field

from python_backend import settings

TRACEPARENT = "traceparent"


def endpoint(environ=None) -> str | None:
    """Where spans go (OTLP over HTTP), or None when tracing is off."""
    value = settings.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT.get(environ)
    return None if not value or value == "off" else value


def endpoint_port(url: str | None = None) -> int:
    """The port of the traces endpoint (where ``make observe`` starts the collector)."""
    from urllib.parse import urlsplit

    found = urlsplit(url or settings.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT.default).port
    return found or 4318


def parse_traceparent(value: str | None) -> tuple[str, str] | None:
    """``(trace_id, span_id)`` in hex from a W3C ``traceparent``, None if malformed."""
    if not value:
        return None
    parts = value.strip().split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        int(parts[1], 16), int(parts[2], 16)
    except ValueError:
        return None
    return parts[1], parts[2]


def traceparent(trace_id: str, span_id: str, sampled: bool = True) -> str:
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def triton_context(trace) -> str | None:
    """The ``traceparent`` of a Triton request's span (``request.trace()`` in a Python
    model), None when the request is not traced. Triton gives ``{"traceparent": ...}``."""
    if trace is None:
        return None
    context = trace.get_context()
    if not context:
        return None
    try:
        return json.loads(context).get(TRACEPARENT)
    except (ValueError, AttributeError):
        return None


class Sampler:
    """Which requests a client traces: a share of them, at random (``TRACE_SAMPLE``)."""

    def __init__(self, share: float | None = None, rng: random.Random | None = None) -> None:
        if share is None:
            share = settings.TRACE_SAMPLE.get_float() if endpoint() else 0.0
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"TRACE_SAMPLE must be a share between 0 and 1, got {share}")
        self.share = share
        self.rng = rng or random.Random()

    def __call__(self) -> bool:
        return self.share > 0 and (self.share >= 1 or self.rng.random() < self.share)


@dataclass
class Mark:
    name: str
    start: float  # perf_counter seconds
    end: float
    parent: str | None = None  # the name of an earlier mark; None: the timeline's root
    attributes: dict = field(default_factory=dict)


class Timeline:
    """Stages of one batch as they happen (``perf_counter`` seconds), turned into spans
    later. ``anchor_ns`` maps ``perf_counter`` onto the wall clock spans are stamped with."""

    def __init__(self) -> None:
        self.anchor_ns = time.time_ns() - time.perf_counter_ns()
        self.marks: list[Mark] = []

    def add(self, name: str, start: float, end: float, parent: str | None = None, **attributes):
        self.marks.append(Mark(name, start, end, parent, attributes))

    def ns(self, t: float) -> int:
        return self.anchor_ns + int(t * 1e9)


class Tracer:
    """An OpenTelemetry tracer of one service, exporting over OTLP/HTTP in batches from a
    background thread (the SDK's ``BatchSpanProcessor``): emitting a span costs the caller
    microseconds, never a network round trip."""

    def __init__(self, service: str, url: str, delay_ms: int = 200) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = TracerProvider(resource=Resource.create({"service.name": service}))
        self.provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=url, timeout=2), schedule_delay_millis=delay_ms
            )
        )
        self.tracer = self.provider.get_tracer(service)
        self.propagator = TraceContextTextMapPropagator()

    def _context(self, parent: str | None):
        return self.propagator.extract({TRACEPARENT: parent}) if parent else None

    def span(
        self,
        name: str,
        parent: str | None,
        start_ns: int,
        end_ns: int,
        attributes: dict | None = None,
        kind: str = "INTERNAL",
    ) -> str:
        """One finished span under ``parent`` (a ``traceparent``); returns its own."""
        from opentelemetry.trace import SpanKind

        span = self.tracer.start_span(
            name,
            context=self._context(parent),
            kind=getattr(SpanKind, kind),
            start_time=start_ns,
            attributes=_attributes(attributes or {}),
        )
        span.end(end_time=end_ns)
        return _context_of(span)

    def start(self, name: str, parent: str | None, attributes: dict | None = None):
        """A span started now (the caller ends it: ``span.end()``) and its ``traceparent``."""
        span = self.tracer.start_span(
            name, context=self._context(parent), attributes=_attributes(attributes or {})
        )
        return span, _context_of(span)

    def emit(self, timeline: Timeline, parent: str) -> dict[str, str]:
        """The timeline's marks as spans under ``parent``; a mark whose ``parent`` names an
        earlier mark nests under it. Returns each mark's ``traceparent`` by name."""
        made: dict[str, str] = {}
        for mark in sorted(timeline.marks, key=lambda m: m.parent is not None):
            under = made.get(mark.parent, parent) if mark.parent else parent
            made[mark.name] = self.span(
                mark.name, under, timeline.ns(mark.start), timeline.ns(mark.end), mark.attributes
            )
        return made

    def flush(self, timeout_ms: int = 5000) -> None:
        self.provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        self.provider.shutdown()


def _context_of(span) -> str:
    """A span's own ``traceparent`` (what its children and the Kafka headers carry)."""
    ctx = span.get_span_context()
    return traceparent(f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")


def _attributes(attributes: dict) -> dict:
    out = {}
    for key, value in attributes.items():
        if isinstance(value, (list, tuple)):
            value = [str(v) for v in value]
        elif not isinstance(value, (str, bool, int, float)):
            value = str(value)
        out[key] = value
    return out


_TRACERS: dict[str, Tracer] = {}
_LOCK = threading.Lock()


def tracer(service: str) -> Tracer | None:
    """This process's tracer for ``service`` (made on first use), None when tracing is off."""
    url = endpoint()
    if url is None:
        return None
    with _LOCK:
        found = _TRACERS.get(service)
        if found is None:
            found = _TRACERS[service] = Tracer(service, url)
    return found


def shutdown() -> None:
    """Export what is buffered and stop (a process that exits calls this first)."""
    with _LOCK:
        for found in _TRACERS.values():
            found.shutdown()
        _TRACERS.clear()


def triton_trace_arguments(url: str | None) -> list[str]:
    """``tritonserver`` flags: OpenTelemetry mode at rate 0 (only requests that carry a
    ``traceparent`` are traced), timestamps, exported to ``url``; none when ``url`` is None."""
    if url is None:
        return []
    return [
        "--trace-config=mode=opentelemetry",
        f"--trace-config=opentelemetry,url={url}",
        "--trace-config=opentelemetry,resource=service.name=triton",
        # Spans in batches every 0.5 s from a queue deep enough for every request traced
        # at a few hundred a second (the default 2,048 spans dropped some at 200/s).
        "--trace-config=opentelemetry,bsp_schedule_delay=500",
        "--trace-config=opentelemetry,bsp_max_queue_size=65536",
        "--trace-config=opentelemetry,bsp_max_export_batch_size=2048",
        "--trace-config=rate=0",
        "--trace-config=count=-1",
        "--trace-config=level=TIMESTAMPS",
    ]
