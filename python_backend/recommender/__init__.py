"""The top-5 recommender's serving logic: its contracts and Feast layout (``core``), the
user-feature readers (``online``), and the service (``service``) that
``model_repository/recommend_top5/1/model.py`` is glue around."""

from python_backend.recommender.core import (
    CLICK_BUFFER,
    CLICKS_VIEW,
    DEFAULT_BUDGET_MS,
    RECOMMEND,
    SCORER,
    TOPIC_CLICKS,
    USER_JOIN_KEY,
    USER_VIEW,
    Catalog,
    InvalidUser,
    UserFeatures,
)
from python_backend.recommender.online import READERS, open_user_reader
from python_backend.recommender.service import Answer, RecommenderService, ScorerError

__all__ = [
    "CLICKS_VIEW",
    "CLICK_BUFFER",
    "DEFAULT_BUDGET_MS",
    "READERS",
    "RECOMMEND",
    "SCORER",
    "TOPIC_CLICKS",
    "USER_JOIN_KEY",
    "USER_VIEW",
    "Answer",
    "Catalog",
    "InvalidUser",
    "RecommenderService",
    "ScorerError",
    "UserFeatures",
    "open_user_reader",
]
