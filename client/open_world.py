"""The same genuine transactions, as they were and as an open world shows them: at a
terminal the store has never seen, from cards it has never seen, and weeks later against a
store that has gone stale. What share of them the service declines and flags, over gRPC.

``make demo`` prints this table; ``python -m client open-world`` runs it against a server.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pandas as pd

from client.scoring import FraudClient
from python_backend.fraud.features import MS_PER_DAY

#: Far above any simulated id: entities no store has seen.
UNSEEN_ID = 900_000_000


def variants(genuine: pd.DataFrame, later_days: int = 45) -> dict[str, pd.DataFrame]:
    """The genuine rows four ways (ids made unique per variant)."""
    n = len(genuine)

    def tagged(frame: pd.DataFrame, tag: str) -> pd.DataFrame:
        return frame.assign(transaction_id=frame["transaction_id"] + f"-{tag}")

    return {
        "as they were": tagged(genuine, "asis"),
        "at a terminal the store has never seen": tagged(
            genuine.assign(terminal_id=UNSEEN_ID + pd.RangeIndex(n)), "new-terminal"
        ),
        "from cards the store has never seen": tagged(
            genuine.assign(card_id=UNSEEN_ID + pd.RangeIndex(n)), "new-card"
        ),
        f"{later_days} days later (store stale)": tagged(
            genuine.assign(ts_ms=genuine["ts_ms"] + later_days * MS_PER_DAY), "later"
        ),
    }


@dataclass
class Outcome:
    rows: int
    declined: float
    flagged: float
    reasons: Counter

    def as_dict(self) -> dict:
        return {
            "rows": self.rows,
            "declined": round(self.declined, 4),
            "flagged": round(self.flagged, 4),
            "top_reasons": dict(self.reasons.most_common(4)),
        }


def score_variants(url: str, genuine: pd.DataFrame) -> dict[str, Outcome]:
    client = FraudClient(url)
    out = {}
    try:
        for name, frame in variants(genuine).items():
            rows = frame[["transaction_id", "card_id", "terminal_id", "amount", "ts_ms"]]
            records = rows.to_dict("records")
            decided = [
                d for i in range(0, len(records), 64) for d in client.score(records[i : i + 64])
            ]
            decisions = Counter(d.decision for d in decided)
            n = len(decided)
            out[name] = Outcome(
                n,
                decisions["DECLINE"] / n,
                (decisions["DECLINE"] + decisions["REVIEW"]) / n,
                Counter(r for d in decided for r in d.reasons),
            )
    finally:
        client.close()
    return out


def table(outcomes: dict[str, Outcome]) -> str:
    lines = [
        f"{'the same genuine transactions':<42} {'declined':>9} {'flagged':>8}  reasons",
    ]
    for name, o in outcomes.items():
        reasons = ", ".join(f"{k} {v}" for k, v in o.reasons.most_common(3)) or "-"
        lines.append(f"{name:<42} {o.declined:>9.2%} {o.flagged:>8.2%}  {reasons}")
    return "\n".join(lines)
