"""``python -m client case`` and ``python -m client cases`` against a real SQLite case store,
filled through ``write()`` as the analysis consumer fills it: the analyses and the events the
histories are built from, in batches."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from client.__main__ import main
from python_backend.fraud.cases import ANALYSIS_VERSION, Event, SqliteCaseStore

T = 1_772_669_018_541  # the case's transaction time (2026-03-05 00:03:38 UTC)
MINUTE = 60_000
HOUR = 60 * MINUTE
CASE = "tx-7-000036481"

ATTRIBUTIONS = [
    {
        "feature": "card_tx_count_1h",
        "group": "velocity",
        "position": None,
        "value": 12.0,
        "contribution": 0.83,
        "words": "12 transactions on this card in the last hour",
    },
    {
        "feature": "card_history",
        "group": "card_history",
        "position": 3,
        "value": 1250.0,
        "contribution": 0.41,
        "words": "a 1,250.00 purchase on this card 2.0 hours before, at another terminal",
    },
    {
        "feature": "terminal_fraud_rate_28d",
        "group": "terminal_risk",
        "position": None,
        "value": 0.0,
        "contribution": -0.27,
        "words": "no fraud reported at this terminal in the last 28 days",
    },
]


def _analysis(
    transaction_id: str,
    card_id: int,
    terminal_id: int,
    amount: float,
    ts_ms: int,
    heavy_score: float,
    *,
    decision: str = "APPROVE",
    path: str = "primary",
    score: float = 0.01,
    reasons: tuple[str, ...] = (),
    attributions: list[dict] | None = None,
) -> dict:
    """An analysis record as the consumer writes it; review as the consumer decides it (an
    approval the heavy model scores at or above a threshold of 0.3)."""
    return {
        "v": ANALYSIS_VERSION,
        "transaction_id": transaction_id,
        "card_id": card_id,
        "terminal_id": terminal_id,
        "amount": amount,
        "ts_ms": ts_ms,
        "decided_at_ms": ts_ms + 7,
        "analysed_at_ms": ts_ms + 1_500,
        "decision": decision,
        "path": path,
        "reasons": list(reasons),
        "score": score,
        "model_version": "1" if path == "primary" else None,
        "heavy_score": heavy_score,
        "heavy_version": "1:3f9c2a1b",
        "review": decision == "APPROVE" and heavy_score >= 0.3,
        "attributions": attributions if attributions is not None else ATTRIBUTIONS[:1],
    }


def _event(record: dict) -> Event:
    return Event(
        record["transaction_id"],
        record["card_id"],
        record["terminal_id"],
        record["ts_ms"],
        record["amount"],
    )


# The card's and the terminal's earlier transactions: some analysed, some only seen (before
# the consumer was started), one of them in review itself.
CARD_BEFORE = _analysis("tx-card-2h", 12, 41, 1250.0, T - 2 * HOUR, 0.05)
CARD_AND_TERMINAL_BEFORE = _analysis("tx-card-30m", 12, 40, 310.0, T - 30 * MINUTE, 0.62)
CARD_UNANALYSED = Event("tx-card-5h", 12, 43, T - 5 * HOUR, 8.5)
TERMINAL_BEFORE = _analysis("tx-term-10m", 77, 40, 42.0, T - 10 * MINUTE, 0.02)
TERMINAL_UNANALYSED = Event("tx-term-3h", 78, 40, T - 3 * HOUR, 15.0)
THE_CASE = _analysis(
    CASE,
    12,
    40,
    2500.0,
    T,
    0.41,
    score=0.012,
    reasons=("AMOUNT_SPIKE",),
    attributions=ATTRIBUTIONS,
)
# After the case: in the queue (the newest), never in the case's history.
LATER = _analysis("tx-card-later", 12, 40, 990.0, T + HOUR, 0.9)
# Not in review: declined in real time, or approved and not doubted.
DECLINED = _analysis(
    "tx-declined", 55, 40, 4000.0, T - 20 * MINUTE, 0.95, decision="DECLINE", score=0.97
)
FALLBACK = _analysis("tx-fallback", 56, 41, 20.0, T - 40 * MINUTE, 0.04, path="fallback")
REVIEW_NEWEST_FIRST = ["tx-card-later", CASE, "tx-card-30m"]


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "cases" / "cases.db"
    store = SqliteCaseStore(path)
    batches = [
        ([], [CARD_UNANALYSED, TERMINAL_UNANALYSED]),
        ([CARD_BEFORE, FALLBACK, CARD_AND_TERMINAL_BEFORE], []),
        ([DECLINED, TERMINAL_BEFORE, THE_CASE], []),
        ([LATER], []),
    ]
    for analyses, only_seen in batches:
        store.write(analyses, [*only_seen, *(_event(a) for a in analyses)])
    store.close()
    return path


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _section(out: str, title: str) -> str:
    """The lines of one history table (from its title to the next blank line)."""
    return out.split(title, 1)[1].split("\n\n", 1)[0]


def test_case_shows_decision_heavy_score_reasons_and_histories(store_path, capsys) -> None:
    code, out, _ = _run(capsys, "case", CASE, "--store", str(store_path))
    assert code == 0, out
    assert "IN THE REVIEW QUEUE" in out
    assert "2,500.00 by card 12 at terminal 40, 2026-03-05 00:03:38 UTC" in out
    assert "APPROVE on the primary path (fraud_primary version 1), score 0.012" in out
    assert "reasons: AMOUNT_SPIKE" in out
    assert "score 0.410 (version 1:3f9c2a1b)" in out
    for attribution in ATTRIBUTIONS:
        assert attribution["words"] in out
    assert "+0.83  raises the risk  12 transactions on this card in the last hour" in out
    assert "-0.27  lowers the risk  no fraud reported at this terminal" in out

    card = _section(out, "Card 12: ")
    assert [line.split()[-1] for line in card.splitlines()[2:]] == ["review", "0.050", "analysed"]
    assert "30 min" in card and "tx-card-30m" in card and "0.620  in review" in card
    assert "2.0 h" in card and "1,250.00" in card and "tx-card-2h" in card
    assert "5.0 h" in card and "tx-card-5h" in card and "not analysed" in card
    terminal = _section(out, "Terminal 40: ")
    rows = [line.split() for line in terminal.splitlines()[2:]]
    assert [r[4] for r in rows] == ["tx-term-10m", "tx-declined", "tx-card-30m", "tx-term-3h"]
    assert [r[3] for r in rows] == ["77", "55", "12", "78"]  # the cards
    assert "tx-card-later" not in out  # after the case: not its history


def test_case_of_a_decision_the_primary_did_not_make_says_why_not_in_review(
    store_path, capsys
) -> None:
    code, out, _ = _run(capsys, "case", "tx-declined", "--store", str(store_path))
    assert code == 0
    assert "IN THE REVIEW QUEUE" not in out
    assert "review queue  no: already DECLINE in real time" in out
    _, out, _ = _run(capsys, "case", "tx-fallback", "--store", str(store_path))
    assert "APPROVE on the fallback path, score 0.010" in out
    assert "no: the heavy score is below the review threshold" in out


def test_case_json_round_trips_the_record(store_path, capsys) -> None:
    code, out, _ = _run(capsys, "case", CASE, "--json", "--store", str(store_path))
    assert code == 0
    case = json.loads(out)
    assert case["analysis"] == THE_CASE
    card = case["history"]["card"]
    assert [e["transaction_id"] for e in card] == ["tx-card-30m", "tx-card-2h", "tx-card-5h"]
    assert [e["heavy_score"] for e in card] == [0.62, 0.05, None]
    assert card[0] | {"heavy_score": None} == {
        "transaction_id": "tx-card-30m",
        "ts_ms": T - 30 * MINUTE,
        "before_ms": 30 * MINUTE,
        "amount": 310.0,
        "other_id": 40,
        "heavy_score": None,
        "review": True,
    }
    assert [e["other_id"] for e in case["history"]["terminal"]] == [77, 55, 12, 78]


def test_case_plot_writes_a_png_timeline(store_path, tmp_path, capsys) -> None:
    png = tmp_path / "plots" / "case.png"
    code, out, _ = _run(capsys, "case", CASE, "--plot", str(png), "--store", str(store_path))
    assert code == 0
    assert f"timeline: {png}" in out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height) == (1100, 715)
    assert 30_000 < len(data) < 1_000_000


def test_unknown_transaction_exits_1_and_says_what_to_check(store_path, capsys) -> None:
    code, out, err = _run(capsys, "case", "tx-never-seen", "--store", str(store_path))
    assert code == 1 and out == ""
    assert "no analysis of tx-never-seen in the case store at" in err
    assert "python -m feature_repo analyze" in err and "CASE_STORE_PATH" in err


def test_a_store_path_that_does_not_exist_is_named_and_not_created(tmp_path, capsys) -> None:
    missing = tmp_path / "typo" / "cases.db"
    for argv in (["case", CASE], ["cases"]):
        code, _, err = _run(capsys, *argv, "--store", str(missing))
        assert code == 1
        assert f"no case store at {missing}" in err
    assert not missing.parent.exists()


def test_review_listing_lists_exactly_the_review_cases_newest_first(store_path, capsys) -> None:
    code, out, _ = _run(capsys, "cases", "--store", str(store_path))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "Review queue: 3 of 3, newest first"
    rows = lines[2:]
    assert [r.split()[2] for r in rows] == REVIEW_NEWEST_FIRST
    assert rows[1].split()[:9] == [
        "2026-03-05",
        "00:03:38",
        CASE,
        "2,500.00",
        "12",
        "40",
        "APPROVE",
        "0.012",
        "0.410",
    ]
    assert rows[1].endswith(ATTRIBUTIONS[0]["words"])

    code, out, _ = _run(capsys, "cases", "--json", "--limit", "2", "--store", str(store_path))
    assert [r["transaction_id"] for r in json.loads(out)] == REVIEW_NEWEST_FIRST[:2]
    assert json.loads(out)[1] == THE_CASE


def test_an_empty_review_queue_says_so(tmp_path, capsys) -> None:
    path = tmp_path / "cases.db"
    SqliteCaseStore(path).write([FALLBACK], [_event(FALLBACK)])
    code, out, _ = _run(capsys, "cases", "--store", str(path))
    assert code == 0
    assert out.startswith("The review queue is empty")
    code, out, _ = _run(capsys, "cases", "--json", "--store", str(path))
    assert json.loads(out) == []
