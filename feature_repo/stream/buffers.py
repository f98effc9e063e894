"""Per-entity buffers of recent events: what a stream view holds (a :class:`BufferSpec`
derived from its declaration), how events fold into it, exactly once by event id."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from python_backend.events import TransactionEvent, decode
from python_backend.feature_views import FeatureGroup
from python_backend.fraud.features import CARD_RECENT, RECENT_BUFFER
from python_backend.fraud.online import OnlineFeatureReader

#: Buffer entry: (ts_ms, ..., event_id), oldest first; the middle follows the spec's features.
#: Cards: (ts_ms, amount, terminal_id, transaction_id).
Entry = tuple


@dataclass(frozen=True)
class BufferSpec:
    """One stream's per-entity buffer: which view and features hold it, how many entries
    it keeps, and how an event becomes an entry."""

    view: str
    join_key: str
    #: (feature name, kind) in entry order; kind: int64_list, float32_list or string_list.
    features: tuple[tuple[str, str], ...]
    limit: int
    decode: Callable[[bytes], object]
    entity: Callable[[object], int]
    to_entry: Callable[[object], Entry]

    @classmethod
    def of(cls, group: FeatureGroup, **how) -> BufferSpec:
        """The buffer a stream view declares: its view, entity and features in entry order
        (the declaration's order; an entry's last element is the event's id)."""
        features = tuple((f.name, f.dtype) for f in group.features)
        return cls(view=group.name, join_key=group.entity, features=features, **how)


def merge_entries(
    buffer: list[Entry], entries: Iterable[Entry], limit: int
) -> tuple[list[Entry], int]:
    """Fold entries into a buffer: skip ids (last element) already there, keep the newest
    ``limit`` by time. Returns the new buffer and how many entries were new."""
    seen = {entry[-1] for entry in buffer}
    merged = list(buffer)
    added = 0
    for entry in entries:
        if entry[-1] in seen:
            continue
        seen.add(entry[-1])
        merged.append(entry)
        added += 1
    merged.sort(key=lambda e: (e[0], e[-1]))
    return merged[-limit:], added


def _card_entry(event: TransactionEvent) -> Entry:
    return (event.ts_ms, float(event.amount), event.terminal_id, event.transaction_id)


CARD_SPEC = BufferSpec.of(
    CARD_RECENT,
    limit=RECENT_BUFFER,
    decode=decode,
    entity=lambda event: event.card_id,
    to_entry=_card_entry,
)


def merge(buffer: list[Entry], events: Iterable[TransactionEvent]) -> tuple[list[Entry], int]:
    """Fold transaction events into a card's buffer (``merge_entries`` for cards)."""
    return merge_entries(buffer, (_card_entry(e) for e in events), RECENT_BUFFER)


def buffers_from_store(reader: OnlineFeatureReader, cards: list[int]) -> dict[int, list[Entry]]:
    """Current buffers of ``cards`` as the store holds them."""
    if not cards:
        return {}
    ids = np.asarray(cards, dtype=np.int64)
    features = reader.read(ids, None, with_tx_ids=True)
    out = {}
    for row, card in enumerate(cards):
        tx_ids = features.recent_tx_ids[row]
        n = len(tx_ids)
        columns = [
            features.stored[name][row][RECENT_BUFFER - n :].tolist() if n else []
            for name in ("recent_ts_ms", "recent_amounts", "recent_terminal_ids")
        ]
        out[card] = list(zip(*columns, tx_ids, strict=True))
    return out
