"""recommend_top5: the recommender callers use. Five items for every user, always.

- ``initialize``: the catalog (titles, the recent-popularity list), the user-feature reader
  (``python_backend.recommender.online``: Redis or the embedded SQLite store), the service
  with a circuit breaker per dependency.
- ``execute``: the requests the dynamic batcher handed over, answered together by
  ``python_backend.recommender.RecommenderService``: each validated alone, the users of all
  of them read in one round trip and scored in one call to ``recommend_scorer``; items the
  user has seen dropped; the recent-popularity list, with the reason, where features or the
  scorer are missing. Within ``BUDGET_MS`` (80) from arrival.

Outputs: ITEM_IDS, TITLES, SCORES (the model's, or the items' popularity rank as a negative
number on the popularity path), PATH (``model`` / ``popularity``), REASONS, STAGE_US
(features, scorer, rank, total).
"""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from python_backend.parameters import RECOMMEND_BUDGET
from python_backend.recommender import (
    Catalog,
    RecommenderService,
    open_user_reader,
)
from python_backend.recommender.triton import TritonScorer, responses, user_arrays


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        try:
            reader = open_user_reader()
        except Exception as err:  # answer from popularity rather than refuse to load
            pb_utils.Logger.log_warn(f"recommend_top5: no online features ({err})")
            reader = None
        self.service = RecommenderService(
            Catalog.load(Path(args["model_repository"]) / args["model_version"]),
            reader,
            TritonScorer(pb_utils),
            budget_ms=RECOMMEND_BUDGET.get_float(params),
            log=pb_utils.Logger.log_warn,
        )

    async def execute(self, requests):
        return responses(pb_utils, await self.service.handle(user_arrays(pb_utils, requests)))

    def finalize(self):
        if self.service.reader is not None:
            self.service.reader.close()
