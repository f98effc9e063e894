"""recommend_top5: the recommender callers use. Five items for every user, always.

- ``initialize``: the catalog (titles, the recent-popularity list), the user-feature reader
  (``python_backend.user_features``: Redis or the embedded SQLite store), a circuit breaker
  per dependency.
- ``execute``: the dynamic batcher may hand over several requests; each is validated alone,
  the users of all of them are read in one round trip and scored in one call to
  ``recommend_scorer``; items the user has seen (rated offline or clicked lately) are dropped.
  A user without features, a store that is away or a scorer that fails or is late gets the
  recent-popularity list, with the reason. Within ``BUDGET_MS`` (80) from arrival.

Outputs: ITEM_IDS, TITLES, SCORES (the model's, or the items' popularity rank as a negative
number on the popularity path), PATH (``model`` / ``popularity``), REASONS, STAGE_US
(features, scorer, rank, total).
"""

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from python_backend import recommender as rec
from python_backend.breaker import CircuitBreaker
from python_backend.user_features import open_user_reader


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.budget_ms = float(params.get("BUDGET_MS", rec.DEFAULT_BUDGET_MS))
        self.catalog = rec.Catalog.load(Path(args["model_repository"]) / args["model_version"])
        try:
            self.reader = open_user_reader()
        except Exception as err:  # answer from popularity rather than refuse to load
            pb_utils.Logger.log_warn(f"recommend_top5: no online features ({err})")
            self.reader = None
        self.breakers = {
            "features": CircuitBreaker("features", slow_ms=20, cooldown_s=2),
            "scorer": CircuitBreaker("scorer", slow_ms=40, cooldown_s=2),
        }

    async def execute(self, requests):
        started = time.perf_counter()
        responses = [None] * len(requests)
        users, owners = [], []
        for k, request in enumerate(requests):
            tensor = pb_utils.get_input_tensor_by_name(request, "USER_ID")
            try:
                ids = rec.validate_users(None if tensor is None else tensor.as_numpy())
            except rec.InvalidUser as err:
                responses[k] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(err)))
                continue
            owners.append((k, len(users), len(ids)))
            users.extend(int(u) for u in ids)
        if users:
            out = await self._recommend(np.asarray(users, dtype=np.int64), started)
            for k, start, n in owners:
                rows = slice(start, start + n)
                responses[k] = pb_utils.InferenceResponse(
                    [pb_utils.Tensor(name, value[rows]) for name, value in out.items()])
        return responses

    async def _recommend(self, users, started):
        n = len(users)
        reasons = [[] for _ in range(n)]
        t0 = time.perf_counter()
        features = self._features(users, reasons)
        t1 = time.perf_counter()
        scores = await self._score(features, reasons, started)
        t2 = time.perf_counter()
        item_ids = np.zeros((n, rec.TOP_K), dtype=np.int64)
        values = np.zeros((n, rec.TOP_K), dtype=np.float32)
        paths = []
        for i in range(n):
            if scores is not None and features.has_embedding[i]:
                item_ids[i], values[i] = rec.top_k(scores[i], features.seen[i])
                paths.append("model")
                continue
            if not features.has_embedding[i] and not any(
                    r.startswith("FEATURES_") for r in reasons[i]):
                reasons[i].append("UNKNOWN_USER")
            picked = rec.popular(self.catalog.popularity, features.seen[i])
            item_ids[i, : len(picked)] = picked
            values[i, : len(picked)] = -np.arange(1, len(picked) + 1)
            paths.append("popularity")
        done = time.perf_counter()
        titles = np.array([[self.catalog.titles.get(int(j), "").encode() for j in row]
                           for row in item_ids], dtype=np.object_)
        stage = [int((t1 - t0) * 1e6), int((t2 - t1) * 1e6), int((done - t2) * 1e6),
                 int((done - started) * 1e6)]
        return {
            "ITEM_IDS": item_ids,
            "TITLES": titles,
            "SCORES": values,
            "PATH": np.array([[p.encode()] for p in paths], dtype=np.object_),
            "REASONS": np.array([[json.dumps(sorted(set(r))).encode()] for r in reasons],
                                dtype=np.object_),
            "STAGE_US": np.tile(np.asarray(stage, dtype=np.int64), (n, 1)),
        }

    def _features(self, users, reasons):
        breaker = self.breakers["features"]
        if self.reader is None or not breaker.allow():
            for r in reasons:
                r.append("FEATURES_UNAVAILABLE" if self.reader is None else
                         "FEATURES_CIRCUIT_OPEN")
            return rec.empty_features(len(users))
        t0 = time.perf_counter()
        try:
            features = self.reader.read(users)
        except Exception as err:
            breaker.record(False)
            pb_utils.Logger.log_warn(f"recommend_top5: features: {err!r}")
            for r in reasons:
                r.append("FEATURES_UNAVAILABLE")
            return rec.empty_features(len(users))
        breaker.record(True, (time.perf_counter() - t0) * 1000)
        return features

    async def _score(self, features, reasons, started):
        """Scores [B, items + 1], or None (reason added) when the scorer cannot answer."""
        if not features.has_embedding.any():
            return None
        breaker = self.breakers["scorer"]
        if not breaker.allow():
            for r in reasons:
                r.append("SCORER_CIRCUIT_OPEN")
            return None
        remaining_ms = self.budget_ms - rec.RANK_RESERVE_MS - (time.perf_counter() - started) * 1e3
        if remaining_ms < 1:
            breaker.cancel()  # allowed but not called: a half-open probe must not stay out
            for r in reasons:
                r.append("SCORER_NO_BUDGET")
            return None
        request = pb_utils.InferenceRequest(
            model_name=rec.SCORER.name,
            requested_output_names=["SCORES"],
            inputs=[pb_utils.Tensor("USER_EMBEDDING", features.embedding),
                    pb_utils.Tensor("LAST_ITEMS", features.last_items)],
            timeout=int(remaining_ms * 1000),
        )
        t0 = time.perf_counter()
        try:
            response = await asyncio.wait_for(request.async_exec(), remaining_ms / 1000)
        except asyncio.TimeoutError:
            breaker.record(False)
            for r in reasons:
                r.append("SCORER_TIMEOUT")
            return None
        except Exception as err:  # a failed call, never a lost outcome
            breaker.record(False)
            pb_utils.Logger.log_warn(f"recommend_top5: scorer call raised {err!r}")
            for r in reasons:
                r.append("SCORER_ERROR")
            return None
        if response.has_error():
            breaker.record(False)
            for r in reasons:
                r.append("SCORER_ERROR")
            return None
        breaker.record(True, (time.perf_counter() - t0) * 1000)
        return pb_utils.get_output_tensor_by_name(response, "SCORES").as_numpy()

    def finalize(self):
        if self.reader is not None:
            self.reader.close()
