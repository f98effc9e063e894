"""Quality reports: JSON for machines, a markdown table and a PR-curve plot for people."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import precision_recall_curve

COLUMNS = (
    ("roc_auc", "ROC-AUC"),
    ("pr_auc", "PR-AUC"),
    ("recall_at_1pct_fpr", "Recall@1%FPR"),
    ("card_precision_at_100", "Card P@100/day"),
    ("ece", "ECE"),
    ("us_per_row_b1", "µs/row b1"),
    ("us_per_row_b64", "µs/row b64"),
)


def markdown_table(models: dict[str, dict | None]) -> str:
    head = "| model | " + " | ".join(label for _, label in COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(COLUMNS)
    rows = []
    for name, metrics in models.items():
        if metrics is None:
            rows.append(f"| {name} | " + " | ".join("n/a" for _ in COLUMNS) + " |")
            continue
        cells = [_cell(metrics.get(k)) for k, _ in COLUMNS]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *rows])


def _cell(value, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.2f}%" if percent else f"{value:g}"


SLICE_COLUMNS = (
    ("rows", "rows", False),
    ("frauds", "frauds", False),
    ("pr_auc", "PR-AUC", False),
    ("recall_at_1pct_fpr", "Recall@1%FPR", False),
    ("genuine_declined", "genuine declined", True),
    ("genuine_flagged", "genuine flagged", True),
)


def slice_table(slices: dict[str, dict[str, dict]]) -> str:
    """One row per (slice, model): the open-world table of the report."""
    head = "| slice | model | " + " | ".join(label for _, label, _ in SLICE_COLUMNS) + " |"
    rule = "|---|---|" + "---:|" * len(SLICE_COLUMNS)
    rows = [
        f"| {name} | {model} | "
        + " | ".join(_cell(m[k], pct) for k, _, pct in SLICE_COLUMNS)
        + " |"
        for name, models in slices.items()
        for model, m in models.items()
    ]
    return "\n".join([head, rule, *rows])


def slice_plot(slices: dict[str, dict[str, dict]], path: Path, title: str) -> None:
    """PR-AUC and the share of genuine transactions flagged, per slice and model."""
    names = list(slices)
    models = list(next(iter(slices.values())))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(models), 1)
    x = np.arange(len(names))
    for panel, (key, label) in zip(
        axes, (("pr_auc", "PR-AUC"), ("genuine_flagged", "genuine flagged (%)")), strict=True
    ):
        for i, model in enumerate(models):
            values = [slices[n].get(model, {}).get(key) for n in names]
            values = [np.nan if v is None else v * (100 if "%" in label else 1) for v in values]
            panel.bar(x + (i - (len(models) - 1) / 2) * width, values, width, label=model)
        panel.set_xticks(x, names, rotation=20, ha="right")
        panel.set(ylabel=label, title=f"{label} by slice")
        panel.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title}: open-world slices of the test days")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(
    result: dict, scores: dict[str, np.ndarray], y: np.ndarray, folder: Path, stem: str, title: str
) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>_pr.png``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "report": folder / f"{stem}.json",
        "table": folder / f"{stem}.md",
        "plot": folder / f"{stem}_pr.png",
    }
    paths["report"].write_text(json.dumps(result, indent=2) + "\n")
    notes = [
        f"- {k}: {v}"
        for k, v in result.items()
        if k not in ("models", "data", "split_days", "tensorrt", "slices")
        and not isinstance(v, dict)
    ]
    notes += [f"- {k}: {v}" for k, v in result.get("notes", {}).items()]
    trt = result.get("tensorrt")
    if trt:
        notes.append(f"- tensorrt: {'built' if trt['built'] else 'skipped'} ({trt['reason']})")
    open_world = ""
    if result.get("slices"):
        paths["slices"] = folder / f"{stem}_slices.png"
        slice_plot(result["slices"], paths["slices"], title)
        open_world = (
            "## Open-world slices of the test days\n\n"
            "new_terminal / new_card: first transaction under 7 days before the day's midnight "
            "(on the first day the store has no row at all); returning_card: previous "
            "transaction 30+ days before; stale_store: "
            "every test row decided with the daily views and recent buffers unavailable. "
            "Declined / flagged: share of genuine transactions at the served thresholds.\n\n"
            f"{slice_table(result['slices'])}\n\n"
            f"![slices]({paths['slices'].name})\n\n"
        )
    paths["table"].write_text(
        f"# {title}: model quality on held-out days\n\n"
        f"{markdown_table(result['models'])}\n\n"
        "Card P@100/day: share of compromised cards among the day's 100 riskiest cards, "
        "averaged over test days. ECE: expected calibration error (15 bins). µs/row: median "
        "CPU time of one call (1 thread) / batch.\n\n" + open_world + "\n".join(notes) + "\n"
    )
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for name, s in scores.items():
        precision, recall, _ = precision_recall_curve(y, s)
        pr_auc = result["models"][name]["pr_auc"]
        ax.plot(recall, precision, label=f"{name} (AP {pr_auc:.3f})", lw=1.4)
    ax.set(
        xlabel="recall",
        ylabel="precision",
        title=f"{title}: precision-recall, test days",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(paths["plot"], dpi=120)
    plt.close(fig)
    return paths
