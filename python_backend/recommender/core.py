"""The top-5 recommender, without Triton: contracts, the online features it reads, ranking,
and the popularity fallback.

Given a user id, ``recommend_top5`` (the BLS model) reads the user's precomputed embedding and
the items already seen (feature view ``user_embedding``, batch) with the last five clicks
(``user_recent_clicks``, kept by the ``clicks`` stream consumer) in one round trip, asks
``recommend_scorer`` for scores over every item, drops what the user has seen, and returns
the best five with titles. Missing features or a failing scorer fall back to the recent
popularity list, with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from python_backend.contract import ModelContract, TensorSpec
from python_backend.feature_views import FeatureGroup, StoredFeature
from python_backend.parameters import RECOMMEND_BUDGET_MS

#: Clicks the model reads, newest last; item 0 pads a shorter history.
LAST_N = 5
TOP_K = 5
EMBEDDING_DIM = 32
#: Budget of one recommendation, end to end inside the server.
DEFAULT_BUDGET_MS = RECOMMEND_BUDGET_MS
#: Kept back from the scorer's share for ranking, the fallback and the response.
RANK_RESERVE_MS = 10.0

#: The Feast layout: entity ``user`` (join key ``user_id``), two views on the same entity,
#: so in Redis both live in one hash and one HMGET reads them together.
USER_JOIN_KEY = "user_id"
#: Kept ten years: the views are refreshed by ``make recommender`` and the clicks consumer.
USER_TTL_DAYS = 3650
USER_EMBEDDING = FeatureGroup(
    name="user_embedding",
    entity=USER_JOIN_KEY,
    source="batch",
    ttl_days=USER_TTL_DAYS,
    features=(
        StoredFeature("embedding", "float32_list", 0.0, "precomputed user vector"),
        StoredFeature("seen_items", "int64_list", 0.0, "items rated offline"),
    ),
)
#: The click buffer, in entry order: a buffer entry is (ts_ms, item_id, click_id).
USER_RECENT_CLICKS = FeatureGroup(
    name="user_recent_clicks",
    entity=USER_JOIN_KEY,
    source="stream",
    ttl_days=USER_TTL_DAYS,
    features=(
        StoredFeature("recent_ts_ms", "int64_list", 0.0, "timestamps (ms) of the last clicks"),
        StoredFeature("recent_items", "int64_list", 0.0, "last clicks, newest last"),
        # Not a model input: lets the clicks consumer apply each click exactly once.
        StoredFeature("recent_click_ids", "string_list", 0.0, "ids of the last clicks"),
    ),
)
USER_GROUPS = (USER_EMBEDDING, USER_RECENT_CLICKS)
USER_VIEW = USER_EMBEDDING.name
CLICKS_VIEW = USER_RECENT_CLICKS.name
TOPIC_CLICKS = "clicks"
#: Clicks kept per user by the consumer (the model reads the last LAST_N).
CLICK_BUFFER = 20


def user_source(data_dir: Path) -> Path:
    """The offline table of the batch view (written by ``make recommender``)."""
    return data_dir / f"{USER_VIEW}.parquet"


def clicks_source(data_dir: Path) -> Path:
    """The offline table of the click view (clicks before the split)."""
    return data_dir / f"{CLICKS_VIEW}.parquet"


SCORER = ModelContract(
    "recommend_scorer",
    (
        TensorSpec("USER_EMBEDDING", np.float32, (EMBEDDING_DIM,)),
        TensorSpec("LAST_ITEMS", np.int64, (LAST_N,)),
    ),
    (TensorSpec("SCORES", np.float32, (-1,)),),
)
STAGES = ("features", "scorer", "rank", "total")
PATHS = ("model", "popularity")
RECOMMEND = ModelContract(
    "recommend_top5",
    (TensorSpec("USER_ID", np.int64, (1,)),),
    (
        TensorSpec("ITEM_IDS", np.int64, (TOP_K,)),
        TensorSpec("TITLES", np.object_, (TOP_K,)),
        TensorSpec("SCORES", np.float32, (TOP_K,)),
        TensorSpec("PATH", np.object_, (1,)),
        TensorSpec("REASONS", np.object_, (1,)),
        TensorSpec("STAGE_US", np.int64, (len(STAGES),)),
    ),
)
RECOMMEND_MAX_BATCH = 64


class InvalidUser(ValueError):
    """A request the service cannot answer; the message names the field and the rule."""


def validate_users(user_ids: np.ndarray | None) -> np.ndarray:
    if user_ids is None:
        raise InvalidUser("USER_ID: missing (one INT64 per row, shape [N, 1])")
    if user_ids.dtype != np.int64 or user_ids.ndim != 2 or user_ids.shape[1] != 1:
        raise InvalidUser(
            f"USER_ID: must be INT64 of shape [N, 1], got {user_ids.dtype} {list(user_ids.shape)}"
        )
    if len(user_ids) == 0:
        raise InvalidUser("USER_ID: the batch is empty")
    return user_ids[:, 0]


@dataclass
class UserFeatures:
    """What the online store holds for a batch of users (found or not)."""

    embedding: np.ndarray  # [B, EMBEDDING_DIM], zeros where missing
    last_items: np.ndarray  # [B, LAST_N], newest last, 0 pads
    seen: list[set[int]]
    has_embedding: np.ndarray  # [B] bool
    has_clicks: np.ndarray  # [B] bool


def features_from_values(values: dict[str, list[bytes | None]], batch: int) -> UserFeatures:
    """Decode Feast values (one list per feature, None where missing)."""
    from python_backend.feast_layout import decode_value

    embedding = np.zeros((batch, EMBEDDING_DIM), dtype=np.float32)
    last = np.zeros((batch, LAST_N), dtype=np.int64)
    has_embedding = np.zeros(batch, dtype=bool)
    has_clicks = np.zeros(batch, dtype=bool)
    seen: list[set[int]] = []
    for i in range(batch):
        vector = decode_value(values["embedding"][i])
        if vector is not None and len(vector) == EMBEDDING_DIM:
            embedding[i] = vector
            has_embedding[i] = True
        items = decode_value(values["recent_items"][i]) or []
        if len(items):
            has_clicks[i] = True
            tail = list(items)[-LAST_N:]
            last[i, LAST_N - len(tail) :] = tail
        seen.append({int(v) for v in (decode_value(values["seen_items"][i]) or [])} | set(items))
    return UserFeatures(embedding, last, seen, has_embedding, has_clicks)


def empty_features(batch: int) -> UserFeatures:
    return UserFeatures(
        np.zeros((batch, EMBEDDING_DIM), dtype=np.float32),
        np.zeros((batch, LAST_N), dtype=np.int64),
        [set() for _ in range(batch)],
        np.zeros(batch, dtype=bool),
        np.zeros(batch, dtype=bool),
    )


def top_k(scores: np.ndarray, seen: set[int], k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best item ids (index 0 is padding, never returned) not in ``seen``."""
    scores = scores.astype(np.float32, copy=True)
    scores[0] = -np.inf
    if seen:
        scores[np.fromiter(seen, dtype=np.int64, count=len(seen))] = -np.inf
    best = np.argpartition(-scores, k)[:k]
    best = best[np.argsort(-scores[best], kind="stable")]
    return best.astype(np.int64), scores[best]


def popular(popularity: list[int], seen: set[int], k: int = TOP_K) -> np.ndarray:
    """The ``k`` most popular items (recent popularity, most popular first) not in ``seen``."""
    picked = [i for i in popularity if i not in seen][:k]
    return np.asarray(picked, dtype=np.int64)


@dataclass
class Catalog:
    """Item titles and the recent-popularity list, written next to the BLS model."""

    titles: dict[int, str]
    popularity: list[int]

    @classmethod
    def load(cls, directory: Path) -> Catalog:
        raw = json.loads((directory / "catalog.json").read_text())
        return cls({int(k): v for k, v in raw["titles"].items()}, raw["popularity"])

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        titles = {str(k): v for k, v in self.titles.items()}
        body = {"titles": titles, "popularity": self.popularity}
        (directory / "catalog.json").write_text(json.dumps(body))
