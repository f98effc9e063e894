"""The case store: what the heavy model found about each decision, for an investigator.

``open_case_store()`` returns the store ``CASE_STORE`` names (``sqlite``, the default, at
``CASE_STORE_PATH``); a server database fits behind the same interface (``base.CaseStore``).
"""

from __future__ import annotations

from python_backend import settings
from python_backend.fraud.cases import analysis_record
from python_backend.fraud.cases.base import ANALYSIS_VERSION, CaseStore, Event
from python_backend.fraud.cases.sqlite_store import SqliteCaseStore

#: The case stores by kind.
STORES: dict[str, type[CaseStore]] = {"sqlite": SqliteCaseStore}


def open_case_store(kind: str | None = None, location: str | None = None) -> CaseStore:
    kind = kind or settings.CASE_STORE.get()
    if kind not in STORES:
        raise ValueError(f"CASE_STORE={kind!r}: choose one of {sorted(STORES)}")
    return STORES[kind](location or settings.CASE_STORE_PATH.get())


__all__ = [
    "ANALYSIS_VERSION",
    "STORES",
    "CaseStore",
    "Event",
    "SqliteCaseStore",
    "analysis_record",
    "open_case_store",
]
