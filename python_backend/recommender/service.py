"""The top-5 service, without Triton: validate, read, score, rank, fall back.

``RecommenderService.handle`` takes the requests the dynamic batcher handed over (arrays of
user ids, one per request), validates each alone, reads the users of all of them in one
round trip, scores them in one call to the injected scorer and answers each request with the
tensors of the ``RECOMMEND`` contract, or with the message of the rule it broke. A user
without features, a store that is away, or a scorer that fails, is late or has no budget
left gets the recent-popularity list, with the reason.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from python_backend.breaker import CircuitBreaker
from python_backend.recommender.core import (
    RANK_RESERVE_MS,
    RECOMMEND,
    TOP_K,
    Catalog,
    InvalidUser,
    UserFeatures,
    empty_features,
    popular,
    top_k,
    validate_users,
)

#: A scorer: (features, timeout in ms) -> scores ``[B, items + 1]``; raises on failure.
Scorer = Callable[[UserFeatures, float], Awaitable[np.ndarray]]


class ScorerError(RuntimeError):
    """The scorer answered with an error."""


@dataclass
class Answer:
    """One request's outputs (tensor name -> array), or the message of the rule it broke."""

    outputs: dict[str, np.ndarray] | None = None
    error: str | None = None


def default_breakers() -> dict[str, CircuitBreaker]:
    return {
        "features": CircuitBreaker("features", slow_ms=20, cooldown_s=2),
        "scorer": CircuitBreaker("scorer", slow_ms=40, cooldown_s=2),
    }


class RecommenderService:
    def __init__(self, catalog: Catalog, reader, scorer: Scorer, budget_ms: float, log=print):
        self.catalog = catalog
        self.reader = reader
        self.scorer = scorer
        self.budget_ms = budget_ms
        self.log = log
        self.breakers = default_breakers()

    async def handle(self, user_arrays: list[np.ndarray | None]) -> list[Answer]:
        """An answer per request (its ``USER_ID`` array, None where absent), in order."""
        started = time.perf_counter()
        answers = [Answer() for _ in user_arrays]
        users, owners = [], []
        for k, array in enumerate(user_arrays):
            try:
                ids = validate_users(array)
            except InvalidUser as err:
                answers[k].error = str(err)
                continue
            owners.append((k, len(users), len(ids)))
            users.extend(int(u) for u in ids)
        if users:
            out = await self.recommend(np.asarray(users, dtype=np.int64), started)
            for k, start, n in owners:
                rows = slice(start, start + n)
                answers[k].outputs = {name: value[rows] for name, value in out.items()}
        return answers

    async def recommend(self, users: np.ndarray, started: float) -> dict[str, np.ndarray]:
        """The ``RECOMMEND`` outputs of every user, tensor name -> ``[B, ...]``."""
        n = len(users)
        reasons: list[list[str]] = [[] for _ in range(n)]
        t0 = time.perf_counter()
        features = self._features(users, reasons)
        t1 = time.perf_counter()
        scores = await self._score(features, reasons, started)
        t2 = time.perf_counter()
        item_ids = np.zeros((n, TOP_K), dtype=np.int64)
        values = np.zeros((n, TOP_K), dtype=np.float32)
        paths = []
        for i in range(n):
            if scores is not None and features.has_embedding[i]:
                item_ids[i], values[i] = top_k(scores[i], features.seen[i])
                paths.append("model")
                continue
            if not features.has_embedding[i] and not any(
                r.startswith("FEATURES_") for r in reasons[i]
            ):
                reasons[i].append("UNKNOWN_USER")
            picked = popular(self.catalog.popularity, features.seen[i])
            item_ids[i, : len(picked)] = picked
            values[i, : len(picked)] = -np.arange(1, len(picked) + 1)
            paths.append("popularity")
        done = time.perf_counter()
        titles = np.array(
            [[self.catalog.titles.get(int(j), "").encode() for j in row] for row in item_ids],
            dtype=np.object_,
        )
        stage = [
            int((t1 - t0) * 1e6),
            int((t2 - t1) * 1e6),
            int((done - t2) * 1e6),
            int((done - started) * 1e6),
        ]
        columns = (
            item_ids,
            titles,
            values,
            np.array([[p.encode()] for p in paths], dtype=np.object_),
            np.array([[json.dumps(sorted(set(r))).encode()] for r in reasons], dtype=np.object_),
            np.tile(np.asarray(stage, dtype=np.int64), (n, 1)),
        )
        return {spec.name: column for spec, column in zip(RECOMMEND.outputs, columns, strict=True)}

    def _features(self, users: np.ndarray, reasons: list[list[str]]) -> UserFeatures:
        breaker = self.breakers["features"]
        if self.reader is None or not breaker.allow():
            code = "FEATURES_UNAVAILABLE" if self.reader is None else "FEATURES_CIRCUIT_OPEN"
            for r in reasons:
                r.append(code)
            return empty_features(len(users))
        t0 = time.perf_counter()
        try:
            features = self.reader.read(users)
        except Exception as err:  # a store that is away: popularity, with the reason
            breaker.record(False)
            self.log(f"recommend_top5: features: {err!r}")
            for r in reasons:
                r.append("FEATURES_UNAVAILABLE")
            return empty_features(len(users))
        breaker.record(True, (time.perf_counter() - t0) * 1000)
        return features

    async def _score(self, features: UserFeatures, reasons, started: float):
        """Scores ``[B, items + 1]``, or None (reason added) when the scorer cannot answer."""
        if not features.has_embedding.any():
            return None
        breaker = self.breakers["scorer"]
        if not breaker.allow():
            for r in reasons:
                r.append("SCORER_CIRCUIT_OPEN")
            return None
        remaining_ms = self.budget_ms - RANK_RESERVE_MS - (time.perf_counter() - started) * 1e3
        if remaining_ms < 1:
            breaker.cancel()  # allowed but not called: a half-open probe must not stay out
            for r in reasons:
                r.append("SCORER_NO_BUDGET")
            return None
        t0 = time.perf_counter()
        try:
            scores = await asyncio.wait_for(self.scorer(features, remaining_ms), remaining_ms / 1e3)
        except TimeoutError:
            code = "SCORER_TIMEOUT"
        except ScorerError:
            code = "SCORER_ERROR"
        except Exception as err:  # a failed call, never a lost outcome
            self.log(f"recommend_top5: scorer call raised {err!r}")
            code = "SCORER_ERROR"
        else:
            breaker.record(True, (time.perf_counter() - t0) * 1000)
            return scores
        breaker.record(False)
        for r in reasons:
            r.append(code)
        return None
