"""How a pipeline declares its stored features: one :class:`FeatureGroup` per Feast feature
view, one :class:`StoredFeature` per field.

Everything else is derived from these declarations: the Feast objects
(``feature_repo.definitions``), the stream consumers' buffers (``feature_repo.stream``), the
online readers and the model inputs. The fraud views are in ``python_backend.fraud.features``,
the recommender's in ``python_backend.recommender.core``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StoredFeature:
    """One value kept in the online store (one Feast field)."""

    name: str
    dtype: str  # "float32" | "int64" | "float32_list" | "int64_list" | "string_list"
    default: float
    description: str
    window_days: int | None = None
    aggregate: str | None = None  # "count" | "sum" | "mean" | "fraud_rate" | None


@dataclass(frozen=True)
class FeatureGroup:
    """A set of features with one entity and one source: one Feast feature view."""

    name: str
    entity: str  # join key column: "card_id", "terminal_id", "user_id"
    source: str  # "batch" (daily snapshot) or "stream" (real time)
    features: tuple[StoredFeature, ...]
    #: How long a stored row stays valid (Feast TTL).
    ttl_days: int
    #: A row older than this (event time to the transaction's time) is stale: the view is
    #: treated as unavailable, and the decision says ``FEATURES_STALE:<view>``. None for the
    #: stream view, whose rows are as old as the card's last transaction, legitimately.
    freshness_ms: int | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)
