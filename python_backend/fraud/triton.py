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


class TritonCaller:
    """A model served by Triton, called from a BLS with ``async_exec`` under a deadline.

    The request carries the timeout too: the model's queue drops it once it waited
    that long (REJECT policy), so a stuck model does not work on answers nobody awaits."""

    def __init__(self, pb_utils, contract: ModelContract) -> None:
        self.pb_utils = pb_utils
        self.contract = contract
        self.fields = [(s.name, s.field) for s in contract.inputs]
        self.outputs = [o.name for o in contract.outputs]

    async def __call__(self, inputs: ModelInputs, timeout_ms: float) -> np.ndarray:
        pb = self.pb_utils
        request = pb.InferenceRequest(
            model_name=self.contract.name,
            requested_output_names=self.outputs,
            inputs=[
                pb.Tensor(name, np.ascontiguousarray(getattr(inputs, attr)))
                for name, attr in self.fields
            ],
            timeout=int(timeout_ms * 1000),
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
