"""The case store in one SQLite file (the default: embedded, nothing to run).

WAL mode: an investigator's reads never block the consumer's writes. Each batch is one
transaction; ``INSERT OR IGNORE`` on the transaction id makes a batch read again a no-op.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from python_backend.fraud.cases.base import CaseStore, Event

SCHEMA = """
CREATE TABLE IF NOT EXISTS analyses (
    transaction_id TEXT PRIMARY KEY,
    analysed_at_ms INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    card_id INTEGER NOT NULL,
    terminal_id INTEGER NOT NULL,
    heavy_score REAL NOT NULL,
    review INTEGER NOT NULL,
    published INTEGER NOT NULL DEFAULT 0,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS analyses_review ON analyses (review, ts_ms);
CREATE INDEX IF NOT EXISTS analyses_unpublished ON analyses (published, analysed_at_ms);
CREATE TABLE IF NOT EXISTS events (
    transaction_id TEXT PRIMARY KEY,
    card_id INTEGER NOT NULL,
    terminal_id INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    amount REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_card ON events (card_id, ts_ms);
CREATE INDEX IF NOT EXISTS events_terminal ON events (terminal_id, ts_ms);
"""


class SqliteCaseStore(CaseStore):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)

    def write(self, analyses: Iterable[dict], events: Iterable[Event]) -> list[str]:
        analyses = list(analyses)
        with self._lock, self._db:
            self._db.executemany(
                "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)",
                [(e.transaction_id, e.card_id, e.terminal_id, e.ts_ms, e.amount) for e in events],
            )
            new = []
            for a in analyses:
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO analyses (transaction_id, analysed_at_ms, ts_ms, "
                    "card_id, terminal_id, heavy_score, review, body) VALUES (?, ?, ?, ?, ?, ?, "
                    "?, ?)",
                    (
                        a["transaction_id"],
                        a["analysed_at_ms"],
                        a["ts_ms"],
                        a["card_id"],
                        a["terminal_id"],
                        a["heavy_score"],
                        int(a["review"]),
                        json.dumps(a, separators=(",", ":")),
                    ),
                )
                if cursor.rowcount:
                    new.append(a["transaction_id"])
        return new

    def analysed(self, transaction_ids: Iterable[str]) -> set[str]:
        ids = list(transaction_ids)
        found: set[str] = set()
        with self._lock:
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                rows = self._db.execute(
                    "SELECT transaction_id FROM analyses WHERE transaction_id IN "
                    f"({','.join('?' * len(part))})",
                    part,
                ).fetchall()
                found.update(r[0] for r in rows)
        return found

    def unpublished(self, limit: int = 10_000) -> list[dict]:
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM analyses WHERE published = 0 ORDER BY analysed_at_ms LIMIT ?",
                (limit,),
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def mark_published(self, transaction_ids: Iterable[str]) -> None:
        with self._lock, self._db:
            self._db.executemany(
                "UPDATE analyses SET published = 1 WHERE transaction_id = ?",
                [(t,) for t in transaction_ids],
            )

    def case(self, transaction_id: str) -> dict | None:
        with self._lock:
            row = self._db.execute(
                "SELECT body FROM analyses WHERE transaction_id = ?", (transaction_id,)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def review_queue(self, limit: int = 50) -> list[dict]:
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM analyses WHERE review = 1 ORDER BY ts_ms DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def highest(self, limit: int = 50) -> list[dict]:
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM analyses ORDER BY heavy_score DESC LIMIT ?", (limit,)
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def history(
        self,
        *,
        card_id: int | None = None,
        terminal_id: int | None = None,
        before_ms: int,
        limit: int = 20,
    ) -> list[Event]:
        column, value = (
            ("card_id", card_id) if card_id is not None else ("terminal_id", terminal_id)
        )
        with self._lock:
            rows = self._db.execute(
                f"SELECT transaction_id, card_id, terminal_id, ts_ms, amount FROM events "
                f"WHERE {column} = ? AND ts_ms < ? ORDER BY ts_ms DESC LIMIT ?",
                (value, before_ms, limit),
            ).fetchall()
        return [Event(*r) for r in rows]

    def recent_events(self, per_entity: int) -> list[Event]:
        query = """
            SELECT transaction_id, card_id, terminal_id, ts_ms, amount FROM (
                SELECT *, ROW_NUMBER() OVER (PARTITION BY card_id ORDER BY ts_ms DESC) AS c,
                          ROW_NUMBER() OVER (PARTITION BY terminal_id ORDER BY ts_ms DESC) AS t
                FROM events)
            WHERE c <= ? OR t <= ? ORDER BY ts_ms, transaction_id
        """
        with self._lock:
            rows = self._db.execute(query, (per_entity, per_entity)).fetchall()
        return [Event(*r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            analyses, review = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(review), 0) FROM analyses"
            ).fetchone()
            events = self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        return {"analyses": analyses, "review": review, "events": events}

    def close(self) -> None:
        with self._lock:
            self._db.close()
