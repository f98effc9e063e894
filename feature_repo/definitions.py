"""Feast objects of every pipeline's features, generated from their declarations
(``python_backend.fraud.features``, ``python_backend.recommender.core``): nothing here names a
feature by hand."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float32, Int64, String

from python_backend.feature_views import FeatureGroup
from python_backend.fraud.features import FEATURE_GROUPS
from python_backend.recommender.core import USER_GROUPS, USER_JOIN_KEY

_FEAST_TYPES = {
    "float32": Float32,
    "int64": Int64,
    "float32_list": Array(Float32),
    "int64_list": Array(Int64),
    "string_list": Array(String),
}
ENTITIES = {
    "card_id": Entity(
        name="card", join_keys=["card_id"], value_type=ValueType.INT64, description="a payment card"
    ),
    "terminal_id": Entity(
        name="terminal",
        join_keys=["terminal_id"],
        value_type=ValueType.INT64,
        description="a merchant terminal",
    ),
    USER_JOIN_KEY: Entity(
        name="user", join_keys=[USER_JOIN_KEY], value_type=ValueType.INT64, description="a viewer"
    ),
}


def push_source_name(group: FeatureGroup) -> str:
    """The push source a stream consumer writes ``group`` through."""
    return f"{group.name}_push"


def source_path(data_dir: Path, group: FeatureGroup) -> Path:
    """The parquet file backing a feature view (written by ``make engines`` for the daily
    views, by ``materialize`` for the recent buffers)."""
    return data_dir / f"{group.name}.parquet"


def feature_view(group: FeatureGroup, data_dir: Path) -> FeatureView:
    batch = FileSource(
        name=f"{group.name}_source",
        path=str(source_path(data_dir, group)),
        timestamp_field="event_timestamp",
    )
    source = (
        PushSource(name=push_source_name(group), batch_source=batch)
        if group.source == "stream"
        else batch
    )
    return FeatureView(
        name=group.name,
        entities=[ENTITIES[group.entity]],
        ttl=timedelta(days=group.ttl_days),
        schema=[
            Field(name=f.name, dtype=_FEAST_TYPES[f.dtype], description=f.description)
            for f in group.features
        ],
        source=source,
        online=True,
        description=f"{group.source} features of the {group.entity.removesuffix('_id')}",
    )


def definitions(data_dir: Path) -> list:
    """Everything ``feast apply`` registers for the fraud features."""
    return [
        *(ENTITIES[k] for k in ("card_id", "terminal_id")),
        *(feature_view(g, data_dir) for g in FEATURE_GROUPS),
    ]


def user_definitions(data_dir: Path) -> list:
    """The recommender's user entity and its two views (registered beside the fraud ones)."""
    return [ENTITIES[USER_JOIN_KEY], *(feature_view(g, data_dir) for g in USER_GROUPS)]
