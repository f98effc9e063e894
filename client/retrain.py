"""``python -m client retrain`` (``make retrain``): train a challenger from the newest labelled
window, gate it against the champion, and publish it as the next ``fraud_primary`` version
when it passes (``make rollout VERSION=N`` then takes it through shadow and canary).

The training itself is ``build_engines.retrain``; this adds where the data comes from and what
happens to a challenger that passed. Today's source is the simulated service
(``build_engines.retrain.simulated_service``: the simulated period decided by the champion,
the world's labels, the heavy model's scores), as of ``--settle-days`` after its last
transaction.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from build_engines.retrain import (
    GateLimits,
    RetrainData,
    RetrainSettings,
    retrain,
    simulated_service,
    write,
)
from client.rollout import MODEL, pinned, publish, versions_on_disk
from python_backend.fraud.contract import WEIGHTS_FILE
from python_backend.fraud.drift import REFERENCE_FILE
from python_backend.fraud.scoring import DecisionPolicy


def champion_folder(repository: Path) -> Path:
    """The served version of ``fraud_primary``: the newest the config pins."""
    return repository / MODEL / str(pinned(repository)[-1])


def publish_challenger(repository: Path, report: dict, champion: Path, log=print) -> int:
    """The chosen challenger as the next version: served in the champion's precision (INT8
    where the champion serves INT8), both ONNX files beside it (TensorRT builds from them),
    its metadata the champion's with what the retrain measured."""
    metadata = json.loads((champion / "metadata.json").read_text())
    precision = "int8" if metadata.get("serves") == "primary_int8" else "fp32"
    challenger = report["challenger"]
    version = max(versions_on_disk(repository)) + 1
    target = publish(repository, version, challenger[precision], log=log)
    shutil.copy(challenger["fp32"], target / "model.fp32.onnx")
    shutil.copy(challenger["int8"], target / "model.int8.onnx")
    shutil.copy(challenger["drift_reference"], target / REFERENCE_FILE)
    shutil.copy(challenger["weights"], target / WEIGHTS_FILE)  # the next retrain's start
    metadata.update(
        {
            "serves": f"primary_{precision}",
            "retrained": {
                "as_of": report["as_of"],
                "windows": report["windows"],
                "candidate": report["chosen"],
                "gate": report["models"][f"challenger_{report['chosen']}"],
                "champion": champion.name,
            },
        }
    )
    (target / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return version


def challenge(
    data: RetrainData,
    as_of_ms: int,
    repository: Path,
    model_dir: Path,
    settings: RetrainSettings | None = None,
    limits: GateLimits | None = None,
) -> dict:
    """Train the challengers on ``data`` as of ``as_of_ms`` and gate them against the served
    champion, at the served decline threshold; the report (``build_engines.retrain``)."""
    champion = champion_folder(repository)
    policy = DecisionPolicy.load(repository / "fraud_scoring" / "1" / "decision_policy.json")
    report = retrain(
        data,
        as_of_ms,
        champion,
        policy.thresholds["primary"]["decline"],
        model_dir / "retrain",
        settings or RetrainSettings(),
        limits or GateLimits(),
    )
    report["champion_version"] = int(champion.name)
    return report


def run(
    scale: str,
    repository: Path,
    build_dir: Path,
    settle_days: float = 30.0,
    settings: RetrainSettings | None = None,
    publish_passed: bool = True,
    limits: GateLimits | None = None,
    log=print,
) -> dict:
    champion = champion_folder(repository)
    data, as_of = simulated_service(scale, build_dir, repository, champion, settle_days)
    report = challenge(data, as_of, repository, build_dir / "models" / scale, settings, limits)
    paths = write(report, build_dir / "reports")
    verdict = report["gate"]
    for check in verdict["checks"]:
        log(
            f"  gate {check['check']:<22} champion {_shown(check.get('champion')):>9}  "
            f"challenger {_shown(check.get('challenger')):>9}  {check['limit']:<28} "
            + ("pass" if check["passed"] else "FAIL")
        )
    if verdict["passed"] and publish_passed:
        version = publish_challenger(repository, report, champion, log)
        report["published_version"] = version
        log(
            f"retrain: passed; published {MODEL} version {version}: "
            f"`make rollout VERSION={version}`"
        )
    elif verdict["passed"]:
        log("retrain: passed; not published (--no-publish)")
    else:
        log(f"retrain: refused ({', '.join(verdict['failed'])}); nothing published")
    paths["report"].write_text(json.dumps(report, indent=2) + "\n")
    for path in paths.values():
        log(f"  {path}")
    return report


def _shown(value) -> str:
    return "-" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))
