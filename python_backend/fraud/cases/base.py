"""What the case store does, whatever holds it: the interface the analysis consumer writes
through and an investigator's tools read through (``python -m client case``).

An analysis record (one per decided transaction, JSON-ready) holds the transaction, the
real-time decision (score, decision, path, reasons, the primary's version), the heavy
model's score and version, whether it went to the review queue, and the top attributions of
the heavy score in an analyst's words (``python_backend.fraud.explain``). The store also
keeps the transactions the histories are built from, so a consumer that restarts rebuilds
them, and so a case shows the card's and the terminal's recent history.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass

#: Version of the analysis record's layout.
ANALYSIS_VERSION = 1


@dataclass(frozen=True)
class Event:
    """One transaction as the histories hold it."""

    transaction_id: str
    card_id: int
    terminal_id: int
    ts_ms: int
    amount: float


class CaseStore(ABC):
    """Analyses and the transactions behind them. Writes are idempotent by transaction id:
    a batch read again after a crash writes nothing twice."""

    @abstractmethod
    def write(self, analyses: Iterable[dict], events: Iterable[Event]) -> list[str]:
        """Both in one transaction; returns the ids of the analyses that were new."""

    @abstractmethod
    def analysed(self, transaction_ids: Iterable[str]) -> set[str]:
        """Which of these transactions have an analysis already."""

    @abstractmethod
    def unpublished(self, limit: int = 10_000) -> list[dict]:
        """Analyses written but not yet confirmed on the ``analysis`` topic (oldest first)."""

    @abstractmethod
    def mark_published(self, transaction_ids: Iterable[str]) -> None: ...

    @abstractmethod
    def case(self, transaction_id: str) -> dict | None:
        """The analysis of one transaction, or None."""

    @abstractmethod
    def review_queue(self, limit: int = 50) -> list[dict]:
        """Analyses sent to review, newest first."""

    @abstractmethod
    def highest(self, limit: int = 50) -> list[dict]:
        """Analyses with the highest heavy scores, highest first."""

    @abstractmethod
    def history(
        self,
        *,
        card_id: int | None = None,
        terminal_id: int | None = None,
        before_ms: int,
        limit: int = 20,
    ) -> list[Event]:
        """A card's or a terminal's transactions before ``before_ms``, newest first."""

    @abstractmethod
    def recent_events(self, per_entity: int) -> list[Event]:
        """What a restarted consumer rebuilds its histories from: at least each card's and
        each terminal's last ``per_entity`` transactions, in time order."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Rows held: ``analyses``, ``review``, ``events``."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections."""
