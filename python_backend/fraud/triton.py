"""The Triton side of the service, with ``triton_python_backend_utils`` passed in (the
package never imports it): the caller of a served model, and the tensors in and out of
``FraudService`` that the ``fraud_scoring`` and ``fraud_fused`` models share."""

from __future__ import annotations

import asyncio

import numpy as np

from python_backend.contract import ModelContract, request_arrays
from python_backend.fraud.contract import SCORING
from python_backend.fraud.features import ModelInputs
from python_backend.fraud.ladder import ModelCallError
from python_backend.fraud.service import Batch, ScoringRequest
from python_backend.tracing import Timeline, Tracer, tracer, triton_context


class TritonCaller:
    """A model served by Triton, called from a BLS with ``async_exec`` under a deadline.

    The request carries the timeout too: the model's queue drops it once it waited
    that long (REJECT policy), so a stuck model does not work on answers nobody awaits."""

    def __init__(self, pb_utils, contract: ModelContract, version: int = -1) -> None:
        self.pb_utils = pb_utils
        self.contract = contract
        #: The model version called (-1: the one the server's version policy loaded).
        self.version = version
        self.fields = [(s.name, s.field) for s in contract.inputs]
        self.outputs = [o.name for o in contract.outputs]
        #: The Triton trace the next calls belong to (``request.trace()`` of the batch's
        #: first traced request, set by the BLS), so their queue and compute are in it.
        self.trace = None

    async def __call__(self, inputs: ModelInputs, timeout_ms: float) -> np.ndarray:
        pb = self.pb_utils
        traced = {"trace": self.trace} if self.trace is not None else {}
        request = pb.InferenceRequest(
            model_name=self.contract.name,
            model_version=self.version,
            requested_output_names=self.outputs,
            inputs=[
                pb.Tensor(name, np.ascontiguousarray(getattr(inputs, attr)))
                for name, attr in self.fields
            ],
            timeout=int(timeout_ms * 1000),
            **traced,
        )
        response = await asyncio.wait_for(request.async_exec(), timeout_ms / 1000)
        if response.has_error():
            raise ModelCallError(response.error().message())
        return pb.get_output_tensor_by_name(response, self.outputs[0]).as_numpy()[:, 0]


def scoring_requests(pb_utils, requests) -> list[ScoringRequest]:
    get = pb_utils.get_input_tensor_by_name
    return [
        ScoringRequest(request_arrays(r, get, SCORING), r.parameters(), r.request_id())
        for r in requests
    ]


def responses(pb_utils, batch: Batch, total_us: int) -> list:
    """One ``InferenceResponse`` per request, in order: its outputs, or its error."""
    out = []
    for answer in batch.answers:
        if answer.error is not None:
            out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(answer.error)))
            continue
        outputs = answer.outputs(total_us)
        tensors = [pb_utils.Tensor(s.name, outputs[s.name]) for s in SCORING.outputs]
        out.append(pb_utils.InferenceResponse(tensors))
    return out


class BatchTrace:
    """The traced requests of one batch (those whose ``request.trace()`` has a context: the
    client sent a ``traceparent``), the batch's :class:`Timeline`, and the spans made from
    it under each of them: ``fraud.bls`` (the BLS's part of the decision) holding
    ``fraud.inputs`` (the request tensors read), ``fraud.validate``, ``fraud.features``
    (with a ``store.*`` span per store call), ``fraud.primary`` / ``fraud.fallback`` (each
    model call), ``fraud.rules`` and ``fraud.respond``; then ``fraud.publish`` (the Kafka
    records, which carry its context in their ``traceparent`` header, and the decision log).

    The batch's stages are shared by its requests: each traced request gets the same stage
    spans. The model calls carry one Triton trace, the first traced request's, so the
    primary's queue and compute spans are under that one."""

    def __init__(self, parents: dict[int, str], first_trace, spans: Tracer) -> None:
        self.parents = parents
        self.first_trace = first_trace
        self.spans = spans
        self.timeline = Timeline()
        self.published: dict[int, object] = {}

    @classmethod
    def of(cls, requests, service: str = "fraud-scoring") -> BatchTrace | None:
        """None when no request of the batch is traced (or tracing is off here)."""
        parents, first = {}, None
        for i, request in enumerate(requests):
            trace = request.trace()
            context = triton_context(trace)
            if context:
                parents[i] = context
                first = first or trace
        spans = tracer(service) if parents else None
        return cls(parents, first, spans) if spans is not None else None

    def answered(self, batch: Batch, entered: float, responded: float) -> None:
        """The decision's spans, under each traced request's Triton span: ``fraud.bls``
        from ``execute``'s entry (``fraud.inputs``: the request tensors read) to the
        responses built."""
        timeline = self.timeline
        for i, parent in self.parents.items():
            answer = batch.answers[i]
            attributes = {
                "fraud.transaction_ids": answer.transaction_ids,
                "fraud.requests": len(batch.answers),
                "fraud.rows": 0 if batch.transactions is None else len(batch.transactions),
                "fraud.error": answer.error or "",
            }
            if batch.decided is not None:
                attributes["fraud.path"] = batch.decided.path
            bls = self.spans.span(
                "fraud.bls",
                parent,
                timeline.ns(entered),
                timeline.ns(responded),
                attributes,
            )
            self.spans.emit(timeline, bls)

    def publishing(self, batch: Batch) -> dict[int, str]:
        """Open a ``fraud.publish`` span per traced request; the ``traceparent`` each row
        of the batch's transactions carries to Kafka, by row."""
        rows: dict[int, str] = {}
        for i, parent in self.parents.items():
            answer = batch.answers[i]
            span, context = self.spans.start("fraud.publish", parent)
            self.published[i] = span
            for row in range(answer.offset, answer.offset + len(answer.valid)):
                rows[row] = context
        return rows

    def published_done(self) -> None:
        for span in self.published.values():
            span.end()
