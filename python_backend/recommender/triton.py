"""What the recommender needs of Triton's Python backend (given ``pb_utils``; the rest of
the package never imports it): the scorer call and the responses."""

from __future__ import annotations

from python_backend.contract import request_arrays
from python_backend.recommender.core import RECOMMEND, SCORER, UserFeatures
from python_backend.recommender.service import Answer, ScorerError


class TritonScorer:
    """Calls ``recommend_scorer`` through BLS, the timeout also sent to its queue."""

    def __init__(self, pb_utils) -> None:
        self.pb = pb_utils
        self.output = SCORER.outputs[0].name

    async def __call__(self, features: UserFeatures, timeout_ms: float):
        embedding, last_items = SCORER.inputs
        request = self.pb.InferenceRequest(
            model_name=SCORER.name,
            requested_output_names=[self.output],
            inputs=[
                self.pb.Tensor(embedding.name, features.embedding),
                self.pb.Tensor(last_items.name, features.last_items),
            ],
            timeout=int(timeout_ms * 1000),
        )
        response = await request.async_exec()
        if response.has_error():
            raise ScorerError(response.error().message())
        return self.pb.get_output_tensor_by_name(response, self.output).as_numpy()


def user_arrays(pb_utils, requests) -> list:
    """Each request's ``USER_ID`` array, None where absent."""
    (user_id,) = RECOMMEND.inputs
    get = pb_utils.get_input_tensor_by_name
    return [request_arrays(r, get, RECOMMEND)[user_id.name] for r in requests]


def responses(pb_utils, answers: list[Answer]) -> list:
    return [
        pb_utils.InferenceResponse(error=pb_utils.TritonError(a.error))
        if a.error is not None
        else pb_utils.InferenceResponse(
            [pb_utils.Tensor(name, value) for name, value in a.outputs.items()]
        )
        for a in answers
    ]
