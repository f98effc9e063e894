"""``python -m build_engines selection-bias``: what the declines' missing labels do to a model
trained on what was served, and what each remedy of ``label_join`` gets back.

The simulated period after the burn-in is decided by the champion (``served_log``), its
labels reported as the world reports them (``labels``), and joined once every label that
will come has come (so maturity plays no part: this measures the declines alone). The primary
is trained four times on the same training days, validated on the same validation days, each
with its own labels of both:

* ``oracle``: the simulator's truth for every row (what ``make engines`` trains on; no
  service has it);
* ``genuine``: unlabelled declines taken as genuine (the naive join);
* ``dropped``: unlabelled declines left out;
* ``weighted``: left out, the confirmed declines weighted by the inverse confirmation share;
* ``imputed``: kept, each twice (fraud and genuine) weighted by the fraud share of the
  confirmed declines.

Each is scored on the test days against the truth: PR-AUC, recall at 1% FPR, and the recall
at 1% FPR of the frauds the champion declined (the region the bias is about).
Writes ``build/reports/selection_bias.{json,md,png}``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from build_engines import primary
from build_engines.label_join import DECLINED_POLICIES, JoinPolicy, LabelledSet, join
from build_engines.labels import LabelModel, simulate_labels
from build_engines.log import log, shown
from build_engines.metrics import recall_at_fpr
from build_engines.served_log import decision_records
from build_engines.simulate import SimulatedData, SimulationConfig
from build_engines.split import split_days
from python_backend.fraud.features import MS_PER_DAY
from python_backend.fraud.offline import FeatureTables, model_inputs
from python_backend.fraud.scoring import DecisionPolicy
from python_backend.paths import BUILD, MODEL_REPOSITORY

#: Far enough after the last transaction for every label that will come to have come.
SETTLED_DAYS = 365


def _recall_of(y: np.ndarray, scores: np.ndarray, among: np.ndarray, fpr: float = 0.01) -> float:
    """Recall, at the threshold of ``fpr`` over all genuine rows, of the frauds in ``among``."""
    threshold = np.quantile(scores[y == 0], 1 - fpr)
    frauds = among & (y == 1)
    return float((scores[frauds] > threshold).mean()) if frauds.any() else float("nan")


def run(
    scale: str = "small",
    build_dir: Path = BUILD,
    repository: Path = MODEL_REPOSITORY,
    seed: int = 7,
    cfg: primary.PrimaryConfig | None = None,
) -> dict:
    started = time.perf_counter()
    config = SimulationConfig.scale(scale, seed=seed)
    data_dir = build_dir / "data" / scale
    champion = build_dir / "models" / scale / "primary_fp32.onnx"
    policy_file = repository / "fraud_scoring" / "1" / "decision_policy.json"
    if not champion.exists() or not (data_dir / "transactions.parquet").exists():
        raise FileNotFoundError(f"no {scale} build: run `make engines SCALE={scale}` first")
    data = SimulatedData.read(data_dir, config)
    tx = data.transactions
    days = split_days(config.n_days)
    log(f"deciding days {days['train'][0]}..{config.n_days} with the champion ({champion.name})")
    tables = FeatureTables.build(tx, data.terminals)
    rows = tx[tx["day"] >= days["train"][0]].reset_index(drop=True)
    inputs = model_inputs(tables, tx, rows)
    records = decision_records(rows, inputs, champion, DecisionPolicy.load(policy_file), "1")
    declined = (records["decision"] == "DECLINE").to_numpy()
    labels = simulate_labels(
        rows, declined, (records["decision"] == "REVIEW").to_numpy(), seed, LabelModel()
    )
    as_of = int(rows["ts_ms"].max()) + SETTLED_DAYS * MS_PER_DAY
    y_true = rows["is_fraud"].to_numpy().astype(np.int64)
    truth = pd.Series(y_true, index=rows["transaction_id"].astype(str).to_numpy())
    day_ms = {d: config.start_ms + d * MS_PER_DAY for d in range(config.n_days + 1)}

    def window(labelled: LabelledSet, name: str) -> LabelledSet:
        lo, hi = days[name]
        return labelled.within(day_ms[lo], day_ms[hi])

    oracle = LabelledSet(
        inputs,
        y_true,
        np.ones(len(rows)),
        rows["transaction_id"].to_numpy(),
        rows["ts_ms"].to_numpy(),
        rows["card_id"].to_numpy(),
        records["decision"].to_numpy(),
        {"rows": len(rows), "fraud": int(y_true.sum())},
    )
    sets = {"oracle": oracle}
    for name in DECLINED_POLICIES:
        sets[name] = join(records, labels, as_of, JoinPolicy(maturity_days=0, declined=name))
    test = window(oracle, "test")
    champion_declined = test.decision == "DECLINE"
    cfg = cfg or primary.PrimaryConfig()
    results: dict[str, dict] = {}
    test_scores = {}
    for name, labelled in sets.items():
        # Validated on observed labels only: an imputed row is there twice, once each way.
        train, valid = window(labelled, "train"), window(labelled, "valid").observed()
        log(
            f"training the primary on the {name} labels ({len(train):,} rows, "
            f"{int(train.y.sum()):,} fraud)"
        )
        weight = None if np.all(train.weight == 1) else train.weight.astype(np.float32)
        net, facts = primary.train(train.inputs, train.y, valid.inputs, valid.y, cfg, weight)
        scores = primary.predict(net, test.inputs)
        test_scores[name] = scores
        results[name] = {
            "train_rows": int((~train.imputed).sum()),
            "train_imputed_rows": int(train.imputed.sum() // 2),
            "train_fraud": int(train.y[~train.imputed].sum()),
            # Frauds of the training days these labels call genuine.
            "train_fraud_as_genuine": int(
                (
                    (train.y == 0)
                    & ~train.imputed
                    & (truth.loc[train.transaction_id].to_numpy() == 1)
                ).sum()
            ),
            "test_pr_auc": round(float(average_precision_score(test.y, scores)), 4),
            "test_recall_at_1pct_fpr": round(recall_at_fpr(test.y, scores), 4),
            "declined_region_recall_at_1pct_fpr": round(
                _recall_of(test.y, scores, champion_declined), 4
            ),
            "best_epoch": facts["best_epoch"],
        }
    joined = sets["imputed"].facts
    result = {
        "scale": scale,
        "as_of": "every label settled",
        "served_rows": len(rows),
        "declined": int(declined.sum()),
        "declined_fraud": int((declined & (y_true == 1)).sum()),
        "declined_confirmed_share": joined["declined_confirmed_share"],
        "declined_fraud_share_estimate": joined["declined_fraud_share_estimate"],
        "labels": labels["kind"].value_counts().to_dict(),
        "frauds_never_reported": int(
            (y_true == 1).sum() - labels.loc[labels["is_fraud"] == 1, "transaction_id"].nunique()
        ),
        "test_rows": len(test),
        "test_fraud": int(test.y.sum()),
        "test_fraud_champion_declined": int((champion_declined & (test.y == 1)).sum()),
        "policies": results,
        "seconds": round(time.perf_counter() - started, 1),
    }
    written = write(result, build_dir / "reports")
    for path in written.values():
        print(f"  {shown(path)}")
    return result


def write(result: dict, folder: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "report": folder / "selection_bias.json",
        "table": folder / "selection_bias.md",
        "plot": folder / "selection_bias.png",
    }
    paths["report"].write_text(json.dumps(result, indent=2) + "\n")
    rows = [
        f"| {name} | {r['train_rows']:,} | {r['train_imputed_rows']:,} | {r['train_fraud']:,} | "
        f"{r['train_fraud_as_genuine']:,} | {r['test_pr_auc']:.4f} | "
        f"{r['test_recall_at_1pct_fpr']:.4f} | {r['declined_region_recall_at_1pct_fpr']:.4f} |"
        for name, r in result["policies"].items()
    ]
    paths["table"].write_text(
        f"# Selection bias of the declines ({result['scale']})\n\n"
        f"{result['served_rows']:,} transactions decided by the champion, "
        f"{result['declined']:,} declined ({result['declined_fraud']:,} of them fraud), "
        f"{result['declined_confirmed_share']:.1%} of the declines confirmed either way; "
        f"{result['frauds_never_reported']:,} frauds never reported. Labels: "
        + ", ".join(f"{k} {v:,}" for k, v in result["labels"].items())
        + ".\n\nThe primary trained on the same days with each policy's labels, scored on "
        f"the test days against the truth ({result['test_rows']:,} rows, "
        f"{result['test_fraud']:,} frauds, {result['test_fraud_champion_declined']:,} of "
        "them declined by the champion).\n\n"
        "| labels | train rows | imputed declines | train frauds | frauds as genuine | PR-AUC | "
        "recall @1% FPR | recall @1% FPR of the champion's declined frauds |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|\n" + "\n".join(rows) + "\n\n"
        f"![selection bias]({paths['plot'].name})\n"
    )
    names = list(result["policies"])
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.38
    x = np.arange(len(names))
    for i, (key, label) in enumerate(
        [
            ("test_pr_auc", "PR-AUC, test days"),
            ("declined_region_recall_at_1pct_fpr", "recall @1% FPR, champion-declined frauds"),
        ]
    ):
        values = [result["policies"][n][key] for n in names]
        bars = ax.bar(x + (i - 0.5) * width, values, width, label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Declines without labels: training labels vs quality ({result['scale']})")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(paths["plot"], dpi=120)
    plt.close(fig)
    return paths
