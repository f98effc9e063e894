"""A Python client of the fraud service over Triton's gRPC API (plain unary ``infer``).

The tensors come from the contract in ``python_backend.contract``: nothing here names a
tensor or a dtype by hand.

Tracing: a client traces a share of its requests (``trace_share``, default
``TRACE_SAMPLE``; ``score(..., trace=True)`` forces one). A traced request gets a
``client.score`` span and carries its context to Triton as gRPC metadata ``traceparent``;
Triton, the BLS, the primary and the stream consumer continue that trace. The decision's
``trace_id`` says which (``python -m client trace TRANSACTION_ID`` draws it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient

from python_backend import tracing
from python_backend.fraud.contract import SCORING, STAGES

_FIELDS = {
    "TRANSACTION_ID": "transaction_id",
    "CARD_ID": "card_id",
    "TERMINAL_ID": "terminal_id",
    "AMOUNT": "amount",
    "TIMESTAMP_MS": "ts_ms",
}


@dataclass
class Decision:
    transaction_id: str
    score: float
    decision: str
    path: str
    reasons: list[str]
    stage_us: dict[str, int]
    #: The trace this decision was traced in, None when it was not traced.
    trace_id: str | None = None

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def build_inputs(transactions: Iterable[Mapping]) -> list[grpcclient.InferInput]:
    """One row per transaction (keys: transaction_id, card_id, terminal_id, amount, ts_ms)."""
    rows = list(transactions)
    inputs = []
    for spec in SCORING.inputs:
        values = [row[_FIELDS[spec.name]] for row in rows]
        if spec.dtype is np.object_:
            array = np.array([[str(v).encode()] for v in values], dtype=np.object_)
        else:
            array = np.asarray(values, dtype=spec.dtype).reshape(-1, 1)
        tensor = grpcclient.InferInput(spec.name, list(array.shape), spec.wire_dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def parse(result: grpcclient.InferResult, transaction_ids: list[str]) -> list[Decision]:
    score, decision, path, reasons, stages = (result.as_numpy(s.name) for s in SCORING.outputs)
    return [
        Decision(
            transaction_id=tx_id,
            score=float(score[i, 0]),
            decision=decision[i, 0].decode(),
            path=path[i, 0].decode(),
            reasons=json.loads(reasons[i, 0]),
            stage_us=dict(zip(STAGES, stages[i].tolist(), strict=True)),
        )
        for i, tx_id in enumerate(transaction_ids)
    ]


def infer_arguments(
    rows: list[Mapping], budget_ms: float | None, timeout_s: float, context: str | None = None
) -> dict:
    """Keyword arguments of ``infer`` for both clients (the grpc and grpc.aio ones);
    ``context``: the ``traceparent`` the request carries."""
    return {
        "model_name": SCORING.name,
        "inputs": build_inputs(rows),
        "outputs": [grpcclient.InferRequestedOutput(s.name) for s in SCORING.outputs],
        "parameters": {"budget_ms": budget_ms} if budget_ms else None,
        "client_timeout": timeout_s,
        "headers": {tracing.TRACEPARENT: context} if context else None,
    }


class ClientTrace:
    """The ``client.score`` span of one request when it is traced (``context`` is then its
    ``traceparent``), nothing otherwise. A context manager: the span ends with the call,
    an error recorded on it."""

    def __init__(self, rows: list[Mapping], traced: bool) -> None:
        self.spans = tracing.tracer("fraud-client") if traced else None
        self.span = self.context = self.trace_id = None
        if self.spans is not None:
            ids = [str(r["transaction_id"]) for r in rows]
            self.span, self.context = self.spans.start(
                "client.score", None, {"fraud.transaction_ids": ids}
            )
            self.trace_id = tracing.parse_traceparent(self.context)[0]

    @classmethod
    def sampled(cls, sampler: tracing.Sampler, rows: list[Mapping], trace: bool | None):
        return cls(rows, sampler() if trace is None else trace)

    def decided(self, decisions: list[Decision]) -> list[Decision]:
        if self.span is not None and decisions:
            first = decisions[0]
            self.span.set_attribute("fraud.path", first.path)
            for stage, us in first.stage_us.items():
                self.span.set_attribute(f"fraud.stage_us.{stage}", us)
            for decision in decisions:
                decision.trace_id = self.trace_id
        return decisions

    def __enter__(self) -> ClientTrace:
        return self

    def __exit__(self, kind, error, _tb) -> None:
        if self.span is None:
            return
        if error is not None:
            self.span.set_attribute("error", repr(error))
        self.span.end()


def _ids(rows: list[Mapping]) -> list[str]:
    return [str(r["transaction_id"]) for r in rows]


class FraudClient:
    """``FraudClient("127.0.0.1:8001").score([...])`` -> one :class:`Decision` per row."""

    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        timeout_s: float = 5.0,
        trace_share: float | None = None,
        **channel,
    ) -> None:
        """``channel``: tritonclient's connection options (``ssl``, ``root_certificates``
        for a TLS listener, ``channel_args``)."""
        self.client = grpcclient.InferenceServerClient(url, **channel)
        self.timeout_s = timeout_s
        self.sampler = tracing.Sampler(trace_share)

    def score(
        self,
        transactions: Iterable[Mapping],
        budget_ms: float | None = None,
        trace: bool | None = None,
    ) -> list[Decision]:
        """``trace``: True traces this request, False does not, None samples."""
        rows = list(transactions)
        with ClientTrace.sampled(self.sampler, rows, trace) as traced:
            arguments = infer_arguments(rows, budget_ms, self.timeout_s, traced.context)
            return traced.decided(parse(self.client.infer(**arguments), _ids(rows)))

    def close(self) -> None:
        self.client.close()


class AsyncFraudClient:
    """The asyncio twin of :class:`FraudClient` (``tritonclient.grpc.aio``), for callers
    that keep many requests in flight from one thread."""

    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        timeout_s: float = 5.0,
        trace_share: float | None = None,
        **channel,
    ) -> None:
        """``channel``: tritonclient's connection options (``ssl``, ``root_certificates``
        for a TLS listener, ``channel_args``)."""
        import tritonclient.grpc.aio as grpcaio

        self.client = grpcaio.InferenceServerClient(url, **channel)
        self.timeout_s = timeout_s
        self.sampler = tracing.Sampler(trace_share)

    async def score(
        self,
        transactions: Iterable[Mapping],
        budget_ms: float | None = None,
        trace: bool | None = None,
    ) -> list[Decision]:
        rows = list(transactions)
        with ClientTrace.sampled(self.sampler, rows, trace) as traced:
            arguments = infer_arguments(rows, budget_ms, self.timeout_s, traced.context)
            return traced.decided(parse(await self.client.infer(**arguments), _ids(rows)))

    async def close(self) -> None:
        await self.client.close()
