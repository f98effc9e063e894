"""``make retrain``: a challenger for ``fraud_primary`` from what was served and what was
reported, judged against the champion on the newest matured days.

1. **The label join** as of a time (``label_join``: served inputs, labels reported by then,
   declines imputed). The mature rows are cut by time into the *training* days, the
   *validation* days (early stopping, calibration) and the newest *gate* days.
2. **Three challengers**, the primary's architecture and training: one on the labels
   (``plain``), one distilled from the heavy model's scores of the same rows (``distilled``:
   the target ``(1 - w) * label + w * heavy score``, the heavy model's knowledge of the
   histories passed to a model that never sees them), and one that starts from the
   champion's weights and refines them on the distilled target (``fine_tuned``: where the
   champion's folder holds them). Each exported to ONNX (checked against PyTorch) and
   quantized to INT8. The challenger is the one with the best validation PR-AUC, the
   fine-tuned one unless another leads beyond the noise (:func:`choose`); the gate days
   choose nothing.
3. **The gate** (:func:`gate`), on the gate days: PR-AUC, recall at 1% FPR, the cold-start
   slices, calibration (ECE), CPU per row (at most 1.2x the champion's), the INT8 drop (at
   most 0.005), and the genuine transactions declined at the served thresholds. Labels of
   the gate days are the join's observed ones (an unlabelled decline is not evaluated; a
   confirmed one counts for the declines it stands for, ``label_join``'s ``weighted``).
4. **The report** puts the champion, both challengers, the heavy model and LightGBM side by
   side on the gate days (``build/reports/retrain.{json,md,png}``); where the simulator's
   truth is known, beside the observed labels.

Publishing a challenger that passed (the next ``fraud_primary`` version, which ``make
rollout`` takes through shadow and canary) is the caller's (``client.retrain``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_curve

from build_engines import primary
from build_engines.label_join import JoinPolicy, LabelledSet, join
from build_engines.log import log
from build_engines.metrics import microseconds_per_row
from build_engines.quantize import calibration_rows, quantize_primary
from build_engines.slices import NEW_WITHIN_DAYS
from build_engines.training import DISTILL_WEIGHT, PARITY_TOLERANCE
from python_backend.fraud.contract import PRIMARY, WEIGHTS_FILE
from python_backend.fraud.drift import Reference
from python_backend.fraud.features import MS_PER_DAY, ModelInputs
from python_backend.onnx_runner import OnnxModel

#: The cold-start slices the gate holds the challenger to.
GATE_SLICES = ("new_terminal", "new_card")


@dataclass(frozen=True)
class RetrainSettings:
    maturity_days: float = 30.0
    #: The newest matured days, held out: the gate judges on them.
    gate_days: int = 7
    valid_days: int = 5
    #: At most this many days of training before the validation days (the newest window).
    train_days: int = 60
    #: The heavy model's share of the distilled target (``make engines``'s).
    distill_weight: float = DISTILL_WEIGHT
    #: A challenger trained from scratch is chosen over the fine-tuned one only when its
    #: validation PR-AUC is higher by more than this many standard errors (:func:`choose`).
    selection_z: float = 1.645
    primary: primary.PrimaryConfig = field(default_factory=primary.PrimaryConfig)


@dataclass(frozen=True)
class GateLimits:
    """How much worse than the champion a challenger may be, per check."""

    pr_auc_loss: float = 0.005
    recall_loss: float = 0.01
    slice_pr_auc_loss: float = 0.03
    #: A slice's loss is judged against its sampling noise too: the allowed loss is at least
    #: this many standard errors of the champion's PR-AUC there, ``sqrt(ap (1 - ap) / n)``
    #: over its ``n`` frauds (the binomial interval of Boyd et al., 2013). A cold-start slice
    #: of the gate days holds tens of frauds: 0.03 there is one fraud ranked differently.
    slice_noise_z: float = 1.645
    ece_gain: float = 0.005
    cost_ratio: float = 1.2
    int8_drop: float = 0.005
    #: Genuine transactions declined at the served thresholds: at most this times the
    #: champion's share, plus ``declined_slack`` (0.05 percentage points) for noise.
    declined_ratio: float = 1.5
    declined_slack: float = 0.0005


@dataclass
class RetrainData:
    """What a retrain reads: decision-log records (with inputs), labels, and optionally the
    heavy model's score per transaction (for distillation and the report), LightGBM's, and
    the simulator's truth (for the report only)."""

    records: pd.DataFrame
    labels: pd.DataFrame
    heavy: pd.Series | None = None
    gbdt: pd.Series | None = None
    truth: pd.Series | None = None
    #: Rows' inputs as if the store had never seen their card or terminal (the entity
    #: dropout ``make engines`` trains with): transaction ids and their inputs, put in place
    #: of those rows' served inputs in the challengers' training rows only.
    cold_start: tuple[np.ndarray, ModelInputs] | None = None


def with_cold_start(train: LabelledSet, cold_start) -> tuple[ModelInputs, int]:
    """The training rows' inputs, those ``cold_start`` names as never seen; and how many."""
    if cold_start is None:
        return train.inputs, 0
    ids, inputs = cold_start
    where = pd.Index(ids).get_indexer(train.transaction_id)
    rows = np.flatnonzero(where >= 0)
    if not len(rows):
        return train.inputs, 0
    out = train.inputs.take(np.arange(len(train)))  # a copy
    out.tabular[rows] = inputs.tabular[where[rows]]
    out.sequence[rows] = inputs.sequence[where[rows]]
    out.categorical[rows] = inputs.categorical[where[rows]]
    return out, len(rows)


def _weighted_recall_at_fpr(y, scores, weight, fpr_limit: float = 0.01) -> float:
    fpr, tpr, _ = roc_curve(y, scores, sample_weight=weight)
    return float(tpr[fpr <= fpr_limit].max())


def _ece(y, scores, weight, bins: int = 15) -> float:
    scores = np.clip(np.asarray(scores, dtype=np.float64), 0, 1)
    which = np.minimum((scores * bins).astype(np.int64), bins - 1)
    total, mass = 0.0, weight.sum()
    for b in range(bins):
        inside = which == b
        if inside.any():
            w = weight[inside]
            total += (
                w.sum()
                / mass
                * abs(np.average(y[inside], weights=w) - np.average(scores[inside], weights=w))
            )
    return float(total)


def slice_masks(records: pd.DataFrame, rows: LabelledSet) -> dict[str, np.ndarray]:
    """New terminals and new cards among ``rows``, from the decision log itself (the
    service's own record of who it has seen, as ``slices`` reads the transaction log)."""
    ts = records["ts_ms"].to_numpy()
    first_card = pd.Series(ts).groupby(records["card_id"].to_numpy()).min()
    first_terminal = pd.Series(ts).groupby(records["terminal_id"].to_numpy()).min()
    by_id = records.set_index("transaction_id")
    terminal = by_id.loc[rows.transaction_id, "terminal_id"].to_numpy()
    since = rows.ts_ms // MS_PER_DAY * MS_PER_DAY - NEW_WITHIN_DAYS * MS_PER_DAY
    return {
        "new_terminal": first_terminal.loc[terminal].to_numpy() >= since,
        "new_card": first_card.loc[rows.card_id].to_numpy() >= since,
    }


def evaluate(
    y: np.ndarray,
    scores: np.ndarray,
    weight: np.ndarray,
    masks: dict[str, np.ndarray],
    decline_threshold: float | None = None,
) -> dict:
    """The gate's quality columns of one model on labelled rows (weighted)."""
    out = {
        "pr_auc": round(float(average_precision_score(y, scores, sample_weight=weight)), 4),
        "recall_at_1pct_fpr": round(_weighted_recall_at_fpr(y, scores, weight), 4),
        "ece": round(_ece(y, scores, weight), 5),
    }
    for name, mask in masks.items():
        ok = mask & np.isfinite(scores)
        out[f"{name}_pr_auc"] = (
            round(float(average_precision_score(y[ok], scores[ok], sample_weight=weight[ok])), 4)
            if y[ok].any()
            else None
        )
        out[f"{name}_frauds"] = int(y[ok].sum())
    if decline_threshold is not None:
        genuine, fraud = y == 0, y == 1
        out["genuine_declined"] = round(
            float(np.average(scores[genuine] >= decline_threshold, weights=weight[genuine])), 5
        )
        out["fraud_declined"] = round(
            float(np.average(scores[fraud] >= decline_threshold, weights=weight[fraud])), 4
        )
    return out


def gate(champion: dict, challenger: dict, limits: GateLimits = GateLimits()) -> dict:
    """Each check of the challenger against the champion: name, both values, the limit,
    passed or not; the whole passes when every check does. A metric the champion lacks (a
    slice with no fraud) is not checked, and says so."""
    checks = []

    def check(name: str, ok: bool, limit: str) -> None:
        checks.append(
            {
                "check": name,
                "champion": champion.get(name),
                "challenger": challenger.get(name),
                "limit": limit,
                "passed": bool(ok),
            }
        )

    check(
        "pr_auc",
        challenger["pr_auc"] >= champion["pr_auc"] - limits.pr_auc_loss,
        f">= champion - {limits.pr_auc_loss}",
    )
    check(
        "recall_at_1pct_fpr",
        challenger["recall_at_1pct_fpr"] >= champion["recall_at_1pct_fpr"] - limits.recall_loss,
        f">= champion - {limits.recall_loss}",
    )
    for name in GATE_SLICES:
        key = f"{name}_pr_auc"
        if champion.get(key) is None or challenger.get(key) is None:
            checks.append({"check": key, "passed": True, "limit": "no fraud in the slice"})
            continue
        allowed, limit = limits.slice_pr_auc_loss, f">= champion - {limits.slice_pr_auc_loss}"
        frauds = champion.get(f"{name}_frauds")
        if frauds:
            ap = champion[key]
            noise = limits.slice_noise_z * float(np.sqrt(ap * (1 - ap) / frauds))
            if noise > allowed:
                allowed = noise
                limit = (
                    f">= champion - {noise:.3f} ({limits.slice_noise_z} standard errors "
                    f"over {frauds} frauds)"
                )
        check(key, challenger[key] >= champion[key] - allowed, limit)
    check(
        "ece",
        challenger["ece"] <= champion["ece"] + limits.ece_gain,
        f"<= champion + {limits.ece_gain}",
    )
    check(
        "us_per_row_b64",
        challenger["us_per_row_b64"] <= champion["us_per_row_b64"] * limits.cost_ratio,
        f"<= {limits.cost_ratio}x champion",
    )
    check("int8_drop", challenger["int8_drop"] <= limits.int8_drop, f"<= {limits.int8_drop}")
    if "genuine_declined" in champion and "genuine_declined" in challenger:
        check(
            "genuine_declined",
            challenger["genuine_declined"]
            <= champion["genuine_declined"] * limits.declined_ratio + limits.declined_slack,
            f"<= {limits.declined_ratio}x champion + {limits.declined_slack * 100:g} pp",
        )
    failed = [c["check"] for c in checks if not c["passed"]]
    return {"passed": not failed, "failed": failed, "checks": checks, "limits": asdict(limits)}


@dataclass
class Windows:
    train: tuple[int, int]
    valid: tuple[int, int]
    gate: tuple[int, int]

    def as_days(self) -> dict:
        return {
            k: [time.strftime("%Y-%m-%d", time.gmtime(v / 1000)) for v in getattr(self, k)]
            for k in ("train", "valid", "gate")
        }


def choose(candidates: dict[str, dict], frauds: int, z: float) -> tuple[str, str]:
    """The challenger among the candidates, and why: the best validation PR-AUC, except that
    the fine-tuned one (the champion's weights refined, the conservative step) stays unless
    a candidate trained from scratch beats it by more than ``z`` standard errors of PR-AUC
    over the validation days' ``frauds``, ``sqrt(ap (1 - ap) / n)`` (as the gate's slices).

    The validation days are few (five at the small scale, some tens of frauds): measured on
    the loop's retrain, the from-scratch distilled challenger led there (0.457 against 0.405)
    and lost on the gate days (0.721 against 0.748; the champion 0.742)."""
    best = max(candidates, key=lambda n: candidates[n]["valid_pr_auc"])
    if "fine_tuned" not in candidates or best == "fine_tuned":
        return best, "the best validation PR-AUC"
    ap = candidates[best]["valid_pr_auc"]
    noise = z * float(np.sqrt(ap * (1 - ap) / max(frauds, 1)))
    lead = ap - candidates["fine_tuned"]["valid_pr_auc"]
    if lead > noise:
        return best, f"validation PR-AUC {lead:.3f} above the fine-tuned one's, beyond {noise:.3f}"
    return "fine_tuned", (
        f"{best} led on the validation days by {lead:.3f}, within the noise of "
        f"{frauds} frauds ({noise:.3f}, {z} standard errors)"
    )


def windows(records: pd.DataFrame, as_of_ms: int, settings: RetrainSettings) -> Windows:
    """The gate days end where the matured rows end (at a midnight), the validation days
    before them, the training days before those, back to the log's first day at most."""
    mature_end = (as_of_ms - int(settings.maturity_days * MS_PER_DAY)) // MS_PER_DAY * MS_PER_DAY
    mature_end = min(mature_end, (int(records["ts_ms"].max()) // MS_PER_DAY + 1) * MS_PER_DAY)
    gate_lo = mature_end - settings.gate_days * MS_PER_DAY
    valid_lo = gate_lo - settings.valid_days * MS_PER_DAY
    first = int(records["ts_ms"].min()) // MS_PER_DAY * MS_PER_DAY
    train_lo = max(first, valid_lo - settings.train_days * MS_PER_DAY)
    if valid_lo - train_lo < 7 * MS_PER_DAY:
        raise ValueError(
            f"under a week of matured training days before {time.gmtime(valid_lo / 1000)}: "
            "serve longer, or let the labels arrive (a later as-of time)"
        )
    return Windows((train_lo, valid_lo), (valid_lo, gate_lo), (gate_lo, mature_end))


def _export(net, sample: ModelInputs, train: ModelInputs, y: np.ndarray, out: Path, name: str):
    fp32, int8 = out / f"{name}_fp32.onnx", out / f"{name}_int8.onnx"
    primary.export_onnx(net, sample, fp32)
    diff = float(
        np.abs(OnnxModel(fp32, PRIMARY).predict(sample) - primary.predict(net, sample)).max()
    )
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"{name}: ONNX differs from PyTorch by {diff:.2e}")
    quantize_primary(fp32, int8, train.take(calibration_rows(y)))
    return fp32, int8, diff


def retrain(
    data: RetrainData,
    as_of_ms: int,
    champion: Path,
    decline_threshold: float,
    out_dir: Path,
    settings: RetrainSettings = RetrainSettings(),
    limits: GateLimits = GateLimits(),
) -> dict:
    """Train, export and gate the challengers; returns the report (``challenger`` names the
    chosen one's ONNX files, ``gate`` the verdict). ``champion``: the served version's
    folder (``model.fp32.onnx``, ``model.int8.onnx``)."""
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    win = windows(data.records, as_of_ms, settings)
    joined = join(data.records, data.labels, as_of_ms, JoinPolicy(settings.maturity_days))
    train = joined.within(*win.train)
    # Validation and the gate on observed labels, a confirmed decline weighted for the
    # unlabelled ones it stands for (the calibration's scale is the served population's).
    observed = join(
        data.records, data.labels, as_of_ms, JoinPolicy(settings.maturity_days, "weighted")
    )
    valid = observed.within(*win.valid)
    gate_rows = observed.within(*win.gate)
    log(
        f"retrain as of {time.strftime('%Y-%m-%d', time.gmtime(as_of_ms / 1000))}: "
        f"{int((~train.imputed).sum()):,} training rows ({int(train.y[~train.imputed].sum()):,}"
        f" fraud, {int(train.imputed.sum()) // 2:,} declines imputed), {len(valid):,} "
        f"validation, {len(gate_rows):,} gate rows ({int(gate_rows.y.sum()):,} fraud)"
    )
    train_inputs, cold = with_cold_start(train, data.cold_start)
    if cold:
        log(f"{cold:,} training rows as if their card or terminal were never seen")
    weight = train.weight.astype(np.float32)
    targets = {"plain": train.y.astype(np.float32)}
    if data.heavy is not None:
        teacher = data.heavy.reindex(train.transaction_id).to_numpy(dtype=np.float64)
        known = np.isfinite(teacher)
        w = settings.distill_weight
        soft = train.y.astype(np.float64)
        soft[known] = (1 - w) * soft[known] + w * teacher[known]
        targets["distilled"] = soft.astype(np.float32)
        log(f"distilling from the heavy model's scores of {known.mean():.1%} of the rows")
    trainings = {
        name: (settings.primary.distilled() if name == "distilled" else settings.primary, target)
        for name, target in targets.items()
    }
    # The champion's own weights, refined on the window (the distilled target where there
    # is one): what it learnt from every earlier day is kept, which a window of at most
    # ``train_days`` trained from scratch cannot see.
    weights = champion / WEIGHTS_FILE
    if weights.exists():
        trainings["fine_tuned"] = (settings.primary, targets.get("distilled", targets["plain"]))
    else:
        log(f"no {weights.name} in the champion's folder: no fine-tuned challenger")
    candidates = {}
    for name, (cfg, target) in trainings.items():
        log(f"training the {name} challenger")
        if name == "fine_tuned":
            net, facts = primary.fine_tune(
                primary.load(weights, cfg), train_inputs, target, valid.inputs, valid.y, cfg,
                weight, valid.weight,
            )  # fmt: skip
        else:
            net, facts = primary.train(
                train_inputs, target, valid.inputs, valid.y, cfg, weight, valid.weight
            )
        fp32, int8, diff = _export(net, gate_rows.inputs, train_inputs, train.y, out_dir, name)
        candidates[name] = {
            "fp32": fp32,
            "int8": int8,
            "weights": primary.save(net, out_dir / f"{name}.pt"),
            "valid_pr_auc": round(facts["valid_pr_auc"], 4),
            "best_epoch": facts["best_epoch"],
            "onnx_parity_max_abs_diff": diff,
        }
    chosen, selection = choose(candidates, int((valid.y > 0).sum()), settings.selection_z)
    log(f"challenger: {chosen} ({selection})")
    # Live traffic is compared with the challenger's own training rows once it serves.
    seen = train.observed()
    reference = Reference.fit(
        seen.inputs,
        OnnxModel(candidates[chosen]["fp32"], PRIMARY).predict(seen.inputs),
        {"windows": win.as_days()["train"]},
    )
    candidates[chosen]["drift_reference"] = reference.write(out_dir)

    masks = slice_masks(data.records, gate_rows)
    y, w = gate_rows.y, gate_rows.weight
    models = {
        "champion": (champion / "model.fp32.onnx", champion / "model.int8.onnx"),
        **{f"challenger_{n}": (c["fp32"], c["int8"]) for n, c in candidates.items()},
    }
    runners = {name: OnnxModel(paths[0], PRIMARY) for name, paths in models.items()}
    feeds = {name: r.feeds(gate_rows.inputs) for name, r in runners.items()}
    scorers = {
        name: (lambda s, b, r=r, f=f: r.run({k: v[s : s + b] for k, v in f.items()}))
        for (name, r), f in zip(runners.items(), feeds.values(), strict=True)
    }
    costs = microseconds_per_row(scorers, len(y), 64)
    table: dict[str, dict] = {}
    scores: dict[str, np.ndarray] = {}
    for name, (_fp32, int8) in models.items():
        s = runners[name].predict(gate_rows.inputs)
        s8 = OnnxModel(int8, PRIMARY).predict(gate_rows.inputs)
        scores[name] = s
        table[name] = evaluate(y, s, w, masks, decline_threshold)
        table[name]["us_per_row_b64"] = costs[name]
        table[name]["int8_drop"] = round(
            table[name]["pr_auc"] - float(average_precision_score(y, s8, sample_weight=w)), 4
        )
    for name, series in (("heavy", data.heavy), ("gbdt_baseline", data.gbdt)):
        if series is not None:
            s = series.reindex(gate_rows.transaction_id).to_numpy(dtype=np.float64)
            if np.isfinite(s).all():
                scores[name] = s
                table[name] = evaluate(y, s, w, masks)
    if data.truth is not None:
        truth = data.truth.reindex(gate_rows.transaction_id).to_numpy()
        for name, s in scores.items():
            # The same rows and weights: a confirmed decline stands for the unlabelled ones.
            table[name]["truth_pr_auc"] = round(
                float(average_precision_score(truth, s, sample_weight=w)), 4
            )
    verdict = gate(table["champion"], table[f"challenger_{chosen}"], limits)
    report = {
        "as_of": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(as_of_ms / 1000)),
        "windows": win.as_days(),
        "join": joined.facts,
        "gate_rows": len(y),
        "gate_frauds": int(y.sum()),
        "settings": {k: v for k, v in asdict(settings).items() if k != "primary"},
        "candidates": {
            n: {k: (str(v) if isinstance(v, Path) else v) for k, v in c.items()}
            for n, c in candidates.items()
        },
        "chosen": chosen,
        "selection": selection,
        "models": table,
        "gate": verdict,
        "seconds": round(time.perf_counter() - started, 1),
    }
    report["challenger"] = {"name": chosen, **report["candidates"][chosen]}
    return report


def write(report: dict, folder: Path, stem: str = "retrain") -> dict[str, Path]:
    """``<stem>.json``, ``.md`` and ``.png`` (PR-AUC per model on the gate days)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        k: folder / f"{stem}{ext}"
        for k, ext in (("report", ".json"), ("table", ".md"), ("plot", ".png"))
    }
    paths["report"].write_text(json.dumps(report, indent=2) + "\n")
    columns = [
        ("pr_auc", "PR-AUC"),
        ("truth_pr_auc", "PR-AUC (truth)"),
        ("recall_at_1pct_fpr", "recall @1% FPR"),
        ("new_terminal_pr_auc", "new terminal"),
        ("new_card_pr_auc", "new card"),
        ("ece", "ECE"),
        ("genuine_declined", "genuine declined"),
        ("fraud_declined", "fraud declined"),
        ("us_per_row_b64", "µs/row b64"),
        ("int8_drop", "INT8 drop"),
    ]
    columns = [c for c in columns if any(c[0] in m for m in report["models"].values())]

    def cell(value) -> str:
        return (
            "-" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))
        )

    lines = [
        "| model | " + " | ".join(label for _, label in columns) + " |",
        "|---|" + "---:|" * len(columns),
        *(
            f"| {name} | " + " | ".join(cell(m.get(key)) for key, _ in columns) + " |"
            for name, m in report["models"].items()
        ),
    ]
    gate_lines = [
        "| check | champion | challenger | limit | |",
        "|---|---:|---:|---|---|",
        *(
            f"| {c['check']} | {cell(c.get('champion'))} | {cell(c.get('challenger'))} | "
            f"{c['limit']} | {'pass' if c['passed'] else '**FAIL**'} |"
            for c in report["gate"]["checks"]
        ),
    ]
    j = report["join"]
    verdict = (
        "passed" if report["gate"]["passed"] else "refused: " + ", ".join(report["gate"]["failed"])
    )
    paths["table"].write_text(
        f"# Retrain as of {report['as_of']}: challenger `{report['chosen']}` {verdict}\n\n"
        f"Windows (first day, end): {report['windows']}. Join: {j['rows']:,} labelled rows "
        f"({j['fraud']:,} fraud; {j['imputed_declines']:,} declines imputed at a fraud share "
        f"of {j['declined_fraud_share_estimate']}), {j['young']:,} too young, "
        f"{j['labels_reported_after_as_of']:,} labels reported after the as-of time.\n\n"
        f"## The gate days ({report['gate_rows']:,} rows, {report['gate_frauds']:,} "
        "frauds by the labels known)\n\n"
        "PR-AUC and the slices on the labels known (a confirmed decline weighted for the "
        "declines it stands for); PR-AUC (truth): against the simulator's truth, which no "
        "service has (same rows and weights). Genuine / fraud declined: shares at the served "
        "decline threshold (fraud_scoring's, shared by every version).\n\n"
        + "\n".join(lines)
        + "\n\n## The gate\n\n"
        + "\n".join(gate_lines)
        + f"\n\n![PR-AUC]({paths['plot'].name})\n"
    )
    names = list(report["models"])
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    x = np.arange(len(names))
    keys = [k for k in ("pr_auc", "truth_pr_auc") if any(k in m for m in report["models"].values())]
    for i, key in enumerate(keys):
        values = [report["models"][n].get(key) or 0 for n in names]
        bars = ax.bar(
            x + (i - (len(keys) - 1) / 2) * 0.38,
            values,
            0.38,
            label=dict(columns).get(key, key),
        )
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(x, [n.replace("challenger_", "challenger\n") for n in names], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Gate days: champion, challengers, heavy model, LightGBM ({verdict})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths["plot"], dpi=120)
    plt.close(fig)
    return paths


def simulated_service(
    scale: str,
    build_dir: Path,
    repository: Path,
    champion: Path,
    settle_days: float = 30.0,
    seed: int = 7,
) -> tuple[RetrainData, int]:
    """The simulated period as a service would hold it, for a project that has not served
    it: the days after the burn-in decided by the champion (``served_log``), the world's
    labels of those decisions, the heavy model's and LightGBM's scores (what the analysis
    consumer would have written), and the truth (for the report). The as-of time is
    ``settle_days`` after the last transaction: the labels have had that long to arrive.
    Returns the data and the as-of time."""
    from build_engines.labels import simulate_labels
    from build_engines.served_log import decision_records
    from build_engines.simulate import SimulatedData, SimulationConfig
    from build_engines.split import BURN_IN_DAYS, ENTITY_DROPOUT
    from python_backend.fraud.heavy_model import HeavyModel
    from python_backend.fraud.history import HeavyInputs, history_columns, offline_histories
    from python_backend.fraud.offline import FeatureTables, entity_dropout, model_inputs
    from python_backend.fraud.scoring import DecisionPolicy

    config = SimulationConfig.scale(scale, seed=seed)
    data_dir = build_dir / "data" / scale
    if not (data_dir / "transactions.parquet").exists():
        raise FileNotFoundError(
            f"no simulated data in {data_dir}: run `make engines SCALE={scale}`"
        )
    world = SimulatedData.read(data_dir, config)
    tx = world.transactions
    log(f"deciding the simulated days after the burn-in with the champion ({scale})")
    tables = FeatureTables.build(tx, world.terminals)
    positions = np.flatnonzero((tx["day"] >= BURN_IN_DAYS).to_numpy())
    rows = tx.iloc[positions].reset_index(drop=True)
    inputs = model_inputs(tables, tx, rows)
    unknown = entity_dropout(len(rows), ENTITY_DROPOUT, np.random.default_rng([seed, 1]))
    cold_rows = np.flatnonzero(unknown["card"] | unknown["terminal"])
    cold = model_inputs(
        tables,
        tx,
        rows.iloc[cold_rows],
        unknown={entity: mask[cold_rows] for entity, mask in unknown.items()},
    )
    policy = DecisionPolicy.load(repository / "fraud_scoring" / "1" / "decision_policy.json")
    records = decision_records(rows, inputs, champion / "model.fp32.onnx", policy, champion.name)
    labels = simulate_labels(
        rows,
        (records["decision"] == "DECLINE").to_numpy(),
        (records["decision"] == "REVIEW").to_numpy(),
        seed,
    )
    log("the heavy model's and LightGBM's scores of those decisions (the analysis')")
    heavy = HeavyModel(repository / "fraud_heavy" / "1")
    columns = history_columns(tx)
    heavy_scores, tree_scores = [], []
    for start in range(0, len(rows), 20_000):
        part = np.arange(start, min(start + 20_000, len(rows)))
        histories = offline_histories(*columns, rows=positions[part])
        chunk = HeavyInputs.of(inputs.take(part), histories)
        heavy_scores.append(heavy.score(chunk))
        tree_scores.append(heavy.trees_predict(chunk))
    ids = records["transaction_id"].to_numpy()
    data = RetrainData(
        records,
        labels,
        heavy=pd.Series(np.concatenate(heavy_scores), index=ids),
        gbdt=pd.Series(np.concatenate(tree_scores), index=ids),
        truth=pd.Series(rows["is_fraud"].to_numpy().astype(np.int64), index=ids),
        cold_start=(ids[cold_rows], cold),
    )
    return data, int(rows["ts_ms"].max() + settle_days * MS_PER_DAY)
