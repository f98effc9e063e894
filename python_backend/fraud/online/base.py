"""The serving side's view of the online feature store: one small interface.

Given a batch of (card, terminal) pairs, a reader returns every stored model feature as a
column in the declared order (defaults filled in where an entity is missing), per-row flags
for missing cards and terminals, and each view's event time: one store round trip per batch.

One module per store (``redis_store``, ``sqlite_store``), as Feast's online stores are
organised; ``python_backend.fraud.online.open_reader`` picks one from the configuration.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from python_backend.fraud.features import FEATURE_GROUPS, RECENT_BUFFER, default_stored
from python_backend.fraud.online.cache import DailyCache
from python_backend.tracing import Timeline


@dataclass
class OnlineFeatures:
    """Stored features of a batch, ready for :func:`assemble_model_inputs`."""

    stored: dict[str, np.ndarray]
    card_found: np.ndarray  # [B] bool
    terminal_found: np.ndarray  # [B] bool
    #: Event time (ms) of each feature view's row per transaction, 0 where missing.
    event_ms: dict[str, np.ndarray]
    #: Transaction ids in each card's recent buffer (only with ``with_tx_ids``).
    recent_tx_ids: list[list[str]] | None = None
    #: Read from the BLS's cache alone, the store not answering: the daily views it held
    #: (found flags say whose), no recent view.
    from_cache: bool = False

    @property
    def missing(self) -> np.ndarray:
        """Rows decided on defaults for at least one entity."""
        return ~(self.card_found & self.terminal_found)


class OnlineFeatureReader(abc.ABC):
    """Reads the fraud features of a batch from one online store."""

    #: Whether one read is a single network round trip.
    single_round_trip: bool = True
    #: Whether the store is across a network (a cache in front of it saves round trips).
    remote: bool = False
    #: Set by the service around the read of a traced batch: the reader notes each store
    #: call on it (``store.<what>`` marks), so the trace shows the round trips.
    timeline: Timeline | None = None
    #: The hot keys' daily views (``python_backend.fraud.online.cache``), where the store
    #: is remote; set by the BLS.
    cache: DailyCache | None = None

    @abc.abstractmethod
    def read(
        self, card_ids: np.ndarray, terminal_ids: np.ndarray | None, with_tx_ids: bool = False
    ) -> OnlineFeatures:
        """Features for each (card, terminal) pair, in the same order. With
        ``terminal_ids=None`` only card features are read (terminal ones get defaults)."""

    def cached_features(
        self, card_ids: np.ndarray, terminal_ids: np.ndarray
    ) -> OnlineFeatures | None:
        """Without the store: what the cache holds, or None (no cache, nothing held)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def empty_features(batch: int) -> OnlineFeatures:
    """Every default, no entity found: what a request gets when the store is unreachable."""
    return OnlineFeatures(
        stored=default_stored(batch),
        card_found=np.zeros(batch, dtype=bool),
        terminal_found=np.zeros(batch, dtype=bool),
        event_ms={g.name: np.zeros(batch, dtype=np.int64) for g in FEATURE_GROUPS},
    )


def left_padded(rows: list[list | None], dtype: type) -> np.ndarray:
    """Lists of up to ``RECENT_BUFFER`` items (oldest first) as a ``[B, RECENT_BUFFER]``
    array, left-padded with zeros: the buffer layout ``derive_recent`` reads."""
    out = np.zeros((len(rows), RECENT_BUFFER), dtype=dtype)
    for i, row in enumerate(rows):
        if row:
            tail = row[-RECENT_BUFFER:]
            out[i, RECENT_BUFFER - len(tail) :] = tail
    return out


def columns_from_values(values: dict[str, list[bytes | None]], batch: int) -> dict[str, np.ndarray]:
    """Decode serialized Feast values (one list per stored feature, ``None`` where the
    entity or field is missing) into model columns with the declared defaults."""
    from python_backend.feast_layout import decode_value, float_columns, number_list_column
    from python_backend.fraud.features import MODEL_STORED

    stored: dict[str, np.ndarray] = {}
    floats = [f for f in MODEL_STORED if f.dtype == "float32"]
    stored.update(
        zip(
            [f.name for f in floats],
            float_columns([values[f.name] for f in floats], [f.default for f in floats]),
            strict=True,
        )
    )
    for feature in MODEL_STORED:
        raw = values[feature.name]
        if feature.dtype == "int64":
            stored[feature.name] = np.array(
                [int(feature.default) if v is None else decode_value(v) for v in raw],
                dtype=np.int64,
            )
        elif feature.dtype.endswith("_list"):
            dtype = np.int64 if feature.dtype.startswith("int64") else np.float32
            if batch <= 4:  # numpy's per-call cost outweighs the work on tiny batches
                stored[feature.name] = left_padded([decode_value(v) for v in raw], dtype)
            else:
                stored[feature.name] = number_list_column(raw, dtype, RECENT_BUFFER)
    assert all(len(c) == batch for c in stored.values())
    return stored


def features_from_values(
    values: dict[str, list[bytes | None]],
    event_ms: dict[str, np.ndarray],
    found: dict[str, np.ndarray],
    batch: int,
    with_tx_ids: bool,
) -> OnlineFeatures:
    """The reader's answer from what a store returned: serialized values per feature,
    event times per view, found flags per entity column."""
    from python_backend.feast_layout import decode_value

    tx_ids = None
    if with_tx_ids:
        tx_ids = [decode_value(v) or [] for v in values["recent_tx_ids"]]
    return OnlineFeatures(
        stored=columns_from_values(values, batch),
        card_found=found["card_id"],
        terminal_found=found["terminal_id"],
        event_ms=event_ms,
        recent_tx_ids=tx_ids,
    )
