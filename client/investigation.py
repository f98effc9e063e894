"""Cases an investigator opens: ``python -m client case TXID`` and ``python -m client cases``.

A case is one analysis record from the case store (what the heavy model found about a
real-time decision, ``python_backend.fraud.cases``) with the card's and the terminal's
transactions before it, each with its own heavy score where it was analysed. The store is
read through ``open_case_store()``; nothing here writes to it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from python_backend import settings
from python_backend.fraud.cases import CaseStore, Event, open_case_store

#: Earlier transactions shown per card and per terminal.
HISTORY_LIMIT = 10
#: Smallest amount drawn on the timeline's log axis (a zero amount is drawn there).
PLOT_FLOOR_AMOUNT = 0.01


@dataclass(frozen=True)
class Earlier:
    """A transaction before the case's on the same card or at the same terminal."""

    transaction_id: str
    ts_ms: int
    before_ms: int
    amount: float
    #: The terminal in the card's history, the card in the terminal's.
    other_id: int
    #: None when that transaction has no analysis of its own.
    heavy_score: float | None
    review: bool | None


@dataclass(frozen=True)
class Case:
    analysis: dict
    card_history: list[Earlier]
    terminal_history: list[Earlier]

    def as_dict(self) -> dict:
        return {
            "analysis": self.analysis,
            "history": {
                "card": [asdict(e) for e in self.card_history],
                "terminal": [asdict(e) for e in self.terminal_history],
            },
        }


def load_case(store: CaseStore, transaction_id: str, limit: int = HISTORY_LIMIT) -> Case | None:
    """The analysis of ``transaction_id`` and its card's and terminal's recent history, or
    None when the store has no analysis of it."""
    analysis = store.case(transaction_id)
    if analysis is None:
        return None
    ts_ms = analysis["ts_ms"]

    def earlier(events: list[Event], other: str) -> list[Earlier]:
        rows = []
        for event in events:
            found = store.case(event.transaction_id)
            rows.append(
                Earlier(
                    transaction_id=event.transaction_id,
                    ts_ms=event.ts_ms,
                    before_ms=ts_ms - event.ts_ms,
                    amount=event.amount,
                    other_id=getattr(event, other),
                    heavy_score=found["heavy_score"] if found else None,
                    review=bool(found["review"]) if found else None,
                )
            )
        return rows

    card = store.history(card_id=analysis["card_id"], before_ms=ts_ms, limit=limit)
    terminal = store.history(terminal_id=analysis["terminal_id"], before_ms=ts_ms, limit=limit)
    return Case(analysis, earlier(card, "terminal_id"), earlier(terminal, "card_id"))


# Text -----------------------------------------------------------------------------------------


def _utc(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _span(ms: int) -> str:
    """A duration the way an analyst says it: 40 s, 12 min, 2.0 h, 3.5 d."""
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86_400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"


def _table(headers: list[str], rows: list[list[str]], left: set[int]) -> list[str]:
    """Columns as wide as their widest cell; the columns in ``left`` aligned left."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            (f"{c:<{w}}" if i in left else f"{c:>{w}}")
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def _before_it(rows: list[Earlier]) -> str:
    if len(rows) == 1:
        return "the transaction before it"
    return f"the {len(rows)} transactions before it" if rows else "no transaction before it"


def _heavy(score: float | None, review: bool | None) -> str:
    if score is None:
        return "not analysed"
    return f"{score:.3f}" + ("  in review" if review else "")


def _history_lines(title: str, rows: list[Earlier], other: str) -> list[str]:
    if not rows:
        return [f"{title}: no transaction before it in the store"]
    table = _table(
        ["before", "amount", other, "transaction", "heavy score"],
        [
            [
                _span(e.before_ms),
                f"{e.amount:,.2f}",
                str(e.other_id),
                e.transaction_id,
                _heavy(e.heavy_score, e.review),
            ]
            for e in rows
        ],
        left={3, 4},
    )
    return [f"{title}: {_before_it(rows)}", *("  " + t for t in table)]


def case_text(case: Case) -> str:
    """The case as an investigator reads it."""
    a = case.analysis
    version = f" (fraud_primary version {a['model_version']})" if a.get("model_version") else ""
    if a["review"]:
        review = "yes: approved in real time, the heavy score is at or above the review threshold"
    elif a["decision"] != "APPROVE":
        review = f"no: already {a['decision']} in real time"
    else:
        review = "no: the heavy score is below the review threshold"
    why = [
        f"{c['contribution']:+.2f}  {'raises' if c['contribution'] > 0 else 'lowers'} the risk"
        f"  {c['words']}"
        for c in a.get("attributions") or []
    ] or ["(not explained yet: `python -m client case` explains it with HEAVY_MODEL_DIR's model)"]
    if a.get("explained_when_opened"):
        why.append("(explained now, when opened: the consumer explains review cases first)")
    field = "{:<14}{}".format
    lines = [
        f"Case {a['transaction_id']}" + ("  IN THE REVIEW QUEUE" if a["review"] else ""),
        field(
            "transaction",
            f"{a['amount']:,.2f} by card {a['card_id']} at terminal {a['terminal_id']}, "
            f"{_utc(a['ts_ms'])} UTC",
        ),
        field(
            "real time",
            f"{a['decision']} on the {a['path']} path{version}, score {a['score']:.3f}",
        ),
        field("", f"reasons: {', '.join(a.get('reasons') or []) or 'none'}"),
        field("heavy model", f"score {a['heavy_score']:.3f} (version {a['heavy_version']})"),
        field("why", why[0]),
        *(field("", w) for w in why[1:]),
        field("review queue", review),
        field("analysed", f"{_utc(a['analysed_at_ms'])} UTC"),
        "",
        *_history_lines(f"Card {a['card_id']}", case.card_history, "terminal"),
        "",
        *_history_lines(f"Terminal {a['terminal_id']}", case.terminal_history, "card"),
    ]
    return "\n".join(lines)


def queue_text(records: list[dict], held: int) -> str:
    """The review queue, newest first, as a table; ``held`` is the queue's whole length."""
    if not records:
        return (
            "The review queue is empty: no transaction approved in real time has a heavy score "
            "at or above the review threshold."
        )
    rows = [
        [
            _utc(a["ts_ms"]),
            a["transaction_id"],
            f"{a['amount']:,.2f}",
            str(a["card_id"]),
            str(a["terminal_id"]),
            f"{a['decision']} {a['score']:.3f}",
            f"{a['heavy_score']:.3f}",
            a["attributions"][0]["words"] if a.get("attributions") else "",
        ]
        for a in records
    ]
    headers = ["time (UTC)", "transaction", "amount", "card", "terminal", "real time", "heavy"]
    table = _table([*headers, "top contributor"], rows, left={0, 1, 5, 7})
    return "\n".join([f"Review queue: {len(records)} of {held}, newest first", *table])


# Timeline -------------------------------------------------------------------------------------


def case_png(case: Case, path: Path) -> Path:
    """The case's timeline: the card's (above) and the terminal's (below) recent transactions
    by time before the case's and amount (log scale), coloured by their heavy score where
    known; the case's transaction a star at zero."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, NullFormatter

    a = case.analysis
    longest = max((e.before_ms for e in case.card_history + case.terminal_history), default=0)
    unit, unit_ms = ("days", 86_400_000) if longest > 2 * 86_400_000 else ("hours", 3_600_000)
    cmap, norm = plt.get_cmap("RdYlGn_r"), Normalize(0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, layout="constrained")
    panels = (
        (axes[0], case.card_history, f"card {a['card_id']}", "terminal"),
        (axes[1], case.terminal_history, f"terminal {a['terminal_id']}", "card"),
    )

    def x(events: list[Earlier]) -> list[float]:
        return [-e.before_ms / unit_ms for e in events]

    def y(events: list[Earlier]) -> list[float]:
        return [max(e.amount, PLOT_FLOOR_AMOUNT) for e in events]

    for ax, rows, name, other in panels:
        known = [e for e in rows if e.heavy_score is not None]
        unknown = [e for e in rows if e.heavy_score is None]
        ax.scatter(
            x(unknown),
            y(unknown),
            s=45,
            facecolors="none",
            edgecolors="#777777",
        )
        ax.scatter(
            x(known),
            y(known),
            s=55,
            c=[e.heavy_score for e in known],
            cmap=cmap,
            norm=norm,
            edgecolors="#333333",
            linewidths=0.6,
        )
        for e in known:
            if e.review:
                ax.annotate(
                    "review",
                    (x([e])[0], y([e])[0]),
                    xytext=(0, 7),
                    fontsize=7,
                    textcoords="offset points",
                    ha="center",
                    color="#b2182b",
                )
        ax.axvline(0, color="#999999", linestyle=":", linewidth=1)
        ax.scatter(
            [0],
            [max(a["amount"], PLOT_FLOOR_AMOUNT)],
            marker="*",
            s=380,
            c=[a["heavy_score"]],
            cmap=cmap,
            norm=norm,
            edgecolors="black",
            linewidths=1.2,
            zorder=5,
        )
        ax.set_yscale("log")
        amounts = [max(v, PLOT_FLOOR_AMOUNT) for v in (a["amount"], *(e.amount for e in rows))]
        ax.set_ylim(min(amounts) / 2.5, max(amounts) * 3)  # room for the star and the labels
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("amount (log)")
        ax.set_title(f"{name}: {_before_it(rows)} (any {other})", fontsize=9, loc="left")
        ax.grid(alpha=0.3, linewidth=0.5)
    key = [
        Line2D([], [], ls="", marker="o", mfc="none", mec="#777777", label="not analysed"),
        Line2D([], [], ls="", marker="o", mfc="#bbbbbb", mec="#333333", label="analysed"),
        Line2D(
            [],
            [],
            ls="",
            marker="*",
            ms=12,
            mfc=cmap(norm(a["heavy_score"])),
            mec="black",
            label=f"this transaction: {a['amount']:,.2f}, heavy {a['heavy_score']:.2f}",
        ),
    ]
    axes[0].legend(handles=key, loc="best", fontsize=7, framealpha=0.85)
    left = -max(longest / unit_ms, 1.0) * 1.05
    axes[1].set_xlim(left, -left * 0.03)
    axes[1].set_xlabel(f"{unit} before the transaction (star: this transaction)")
    fig.colorbar(
        ScalarMappable(norm=norm, cmap=cmap),
        ax=list(axes),
        label="heavy score",
        shrink=0.8,
    )
    verdict = "in the review queue" if a["review"] else "not in review"
    fig.suptitle(
        f"Case {a['transaction_id']}: {a['decision']} on the {a['path']} path "
        f"(score {a['score']:.3f}), heavy {a['heavy_score']:.3f}, {verdict}\n"
        f"{_utc(a['ts_ms'])} UTC",
        fontsize=10,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# The commands ---------------------------------------------------------------------------------


def _store_location(store: str | None) -> str:
    return store or settings.CASE_STORE_PATH.get() or ""


def _open(location: str) -> CaseStore | None:
    """The store, or None when the SQLite file is not there (opening it would create an
    empty one at a mistyped path)."""
    if settings.CASE_STORE.get() == "sqlite" and not Path(location).exists():
        print(
            f"no case store at {location}: has `python -m feature_repo analyze` run, and does "
            "CASE_STORE_PATH (or --store) name the file it writes?",
            file=sys.stderr,
        )
        return None
    return open_case_store(location=location)


def show_case(
    transaction_id: str, store: str | None = None, as_json: bool = False, plot: Path | None = None
) -> int:
    """``python -m client case``: print one case (text or JSON), draw its timeline; 1 when the
    store has no analysis of the transaction."""
    location = _store_location(store)
    opened = _open(location)
    if opened is None:
        return 1
    try:
        case = load_case(opened, transaction_id)
        held = opened.counts()["analyses"]
        if case is not None and case.analysis.get("attributions") is None:
            explain_now(case, opened)
    finally:
        opened.close()
    if case is None:
        print(
            f"no analysis of {transaction_id} in the case store at {location} ({held:,} "
            "analyses held): is the analysis consumer running (`python -m feature_repo "
            "analyze`) and has it reached this transaction, and does CASE_STORE_PATH (or "
            "--store) name its store?",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(case.as_dict(), indent=2) if as_json else case_text(case))
    if plot is not None:
        case_png(case, plot)
        print(f"timeline: {plot}", file=sys.stderr if as_json else sys.stdout)
    return 0


def explain_now(case: Case, store: CaseStore) -> None:
    """The consumer explains the cases an analyst opens first (the review queue,
    disagreements); any other is explained here, when opened, by the heavy model that
    scored it (``HEAVY_MODEL_DIR``), from the inputs its record keeps."""
    from python_backend.fraud.explain import Explainer, explain_case
    from python_backend.fraud.heavy_model import HeavyModel

    folder = Path(settings.HEAVY_MODEL_DIR.get())
    if not (folder / "metadata.json").exists() or "inputs" not in case.analysis:
        return
    model = HeavyModel(folder)
    if model.version != case.analysis["heavy_version"]:
        print(
            f"(explained by heavy model {model.version}; the case was scored by "
            f"{case.analysis['heavy_version']})",
            file=sys.stderr,
        )
    case.analysis["attributions"] = explain_case(case.analysis, store, Explainer(model))
    case.analysis["explained_when_opened"] = True


def show_review_queue(store: str | None = None, limit: int = 50, as_json: bool = False) -> int:
    """``python -m client cases``: the review queue, newest first (text or JSON)."""
    opened = _open(_store_location(store))
    if opened is None:
        return 1
    try:
        records = opened.review_queue(limit)
        held = opened.counts()["review"]
    finally:
        opened.close()
    print(json.dumps(records, indent=2) if as_json else queue_text(records, held))
    return 0
