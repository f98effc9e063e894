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
        rows.append(f"| {name} | " + " | ".join(f"{metrics[k]:g}" for k, _ in COLUMNS) + " |")
    return "\n".join([head, rule, *rows])


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
        if k not in ("models", "data", "split_days", "tensorrt") and not isinstance(v, dict)
    ]
    notes += [f"- {k}: {v}" for k, v in result.get("notes", {}).items()]
    trt = result.get("tensorrt")
    if trt:
        notes.append(f"- tensorrt: {'built' if trt['built'] else 'skipped'} ({trt['reason']})")
    paths["table"].write_text(
        f"# {title}: model quality on held-out days\n\n"
        f"{markdown_table(result['models'])}\n\n"
        "Card P@100/day: share of compromised cards among the day's 100 riskiest cards, "
        "averaged over test days. µs/row: median CPU time of one call (1 thread) / batch.\n\n"
        + "\n".join(notes)
        + "\n"
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
