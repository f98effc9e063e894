"""A client of ``recommend_top5``: plain unary gRPC ``ModelInfer`` (tritonclient's ``infer``)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient

from python_backend.recommender.core import RECOMMEND, STAGES


@dataclass
class Recommendation:
    user_id: int
    items: list[dict]  # item_id, title, score
    path: str
    reasons: list[str]
    stage_us: dict[str, int]

    def as_dict(self) -> dict:
        return {
            "user_id": self.user_id,
            "items": self.items,
            "path": self.path,
            "reasons": self.reasons,
            "stage_us": self.stage_us,
        }


def user_input(user_ids: list[int]) -> list[grpcclient.InferInput]:
    array = np.asarray(user_ids, dtype=np.int64).reshape(-1, 1)
    tensor = grpcclient.InferInput("USER_ID", list(array.shape), "INT64")
    tensor.set_data_from_numpy(array)
    return [tensor]


def parse(result, user_ids: list[int]) -> list[Recommendation]:
    out = {spec.name: result.as_numpy(spec.name) for spec in RECOMMEND.outputs}
    recs = []
    for i, user in enumerate(user_ids):
        items = [
            {"item_id": int(j), "title": t.decode(), "score": round(float(s), 4)}
            for j, t, s in zip(out["ITEM_IDS"][i], out["TITLES"][i], out["SCORES"][i], strict=True)
        ]
        recs.append(
            Recommendation(
                user,
                items,
                out["PATH"][i, 0].decode(),
                json.loads(out["REASONS"][i, 0]),
                dict(zip(STAGES, out["STAGE_US"][i].tolist(), strict=True)),
            )
        )
    return recs


def recommend(client: grpcclient.InferenceServerClient, user_ids: list[int]) -> list:
    return parse(client.infer(RECOMMEND.name, user_input(user_ids)), user_ids)
