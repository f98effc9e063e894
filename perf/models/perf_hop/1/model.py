"""perf_hop: the floor this architecture sets, never served to callers.

A BLS that speaks ``fraud_scoring``'s contract and does no work of its own: the AMOUNT
column of every request the dynamic batcher handed over goes to ``perf_empty`` in one
``async_exec`` under ``asyncio.wait_for`` (the hop ``fraud_scoring`` makes to its primary,
with the same deadline machinery), and each request gets constant outputs back. No
validation, features, model or rules: what is left is the cost of gRPC, Triton's scheduler,
the Python backend and one BLS hop, which ``fraud_scoring`` cannot go below.
"""

import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils

from python_backend.fraud.contract import SCORING, STAGES
from python_backend.fraud.scoring import DEFAULT_BUDGET_MS


class TritonPythonModel:
    async def execute(self, requests):
        amounts = [pb_utils.get_input_tensor_by_name(r, "AMOUNT").as_numpy() for r in requests]
        hop = pb_utils.InferenceRequest(
            model_name="perf_empty",
            requested_output_names=["OUTPUT"],
            inputs=[pb_utils.Tensor("INPUT", np.concatenate(amounts))],
            timeout=int(DEFAULT_BUDGET_MS * 1000),
        )
        response = await asyncio.wait_for(hop.async_exec(), DEFAULT_BUDGET_MS / 1000)
        if response.has_error():
            error = pb_utils.TritonError(response.error().message())
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        scores = pb_utils.get_output_tensor_by_name(response, "OUTPUT").as_numpy()
        out, offset = [], 0
        for amount in amounts:
            n = len(amount)
            outputs = {
                "SCORE": scores[offset : offset + n],
                "DECISION": np.full((n, 1), b"APPROVE", dtype=np.object_),
                "PATH": np.full((n, 1), b"primary", dtype=np.object_),
                "REASONS": np.full((n, 1), b"[]", dtype=np.object_),
                "STAGE_US": np.zeros((n, len(STAGES)), dtype=np.int64),
            }
            out.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor(s.name, outputs[s.name]) for s in SCORING.outputs]
                )
            )
            offset += n
        return out
