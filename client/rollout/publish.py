"""The repository's side of a rollout: the ``fraud_primary`` versions on disk, the pin in its
``config.pbtxt`` (the versions a restarted server loads), and ``publish``, which puts a
candidate beside the champion (a copy, a deliberately bad inversion for drills, or a newer
ONNX file) with the champion pinned first, so no restart serves it before a rollout does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from python_backend.fraud.contract import WEIGHTS_FILE
from python_backend.paths import BUILD

MODEL = "fraud_primary"
#: Where a rolled-back version's folder goes: out of the repository, so nothing loads it later.
REJECTED = BUILD / "rollouts" / "rejected"


def versions_on_disk(repository: Path) -> list[int]:
    """The versions of ``fraud_primary`` in the repository (folders with a model)."""
    folder = repository / MODEL
    return sorted(
        int(p.name)
        for p in folder.iterdir()
        if p.is_dir() and p.name.isdigit() and any((p / f).exists() for f in MODEL_FILES)
    )


MODEL_FILES = ("model.onnx", "model.plan")


def _config_path(repository: Path) -> Path:
    return repository / MODEL / "config.pbtxt"


def pinned(repository: Path) -> list[int]:
    """The versions ``config.pbtxt`` tells Triton to load (its ``version_policy``); without
    a specific policy, the latest on disk."""
    from build_engines.model_config import parse

    config = parse(_config_path(repository).read_text())
    if config.version_policy.HasField("specific"):
        return sorted(config.version_policy.specific.versions)
    on_disk = versions_on_disk(repository)
    return on_disk[-1:]


def pin(repository: Path, versions: list[int]) -> None:
    """``config.pbtxt`` with ``version_policy { specific { versions: ... } }``, written
    atomically: what a restarted server loads."""
    from google.protobuf import text_format

    from build_engines.model_config import parse

    path = _config_path(repository)
    config = parse(path.read_text())
    config.version_policy.specific.versions[:] = sorted(versions)
    temporary = path.with_suffix(".pbtxt.tmp")
    temporary.write_text(text_format.MessageToString(config))
    temporary.replace(path)


def publish(repository: Path, version: int, source: str = "copy", log=print) -> Path:
    """Put a candidate in the repository as ``fraud_primary/<version>``: ``copy`` (the
    champion's model again: one that should pass), ``inverted`` (1 - p: a deliberately bad
    one, for the rollback's test and drills), or the path of an ONNX file (a model trained
    later, from ``make engines`` on newer data). The champion is pinned first, so no
    restart serves the new folder before a rollout does."""
    import onnx

    champion = pinned(repository)
    pin(repository, champion)
    target = repository / MODEL / str(version)
    if target.exists():
        raise FileExistsError(f"{target} exists: choose another VERSION, or remove it first")
    origin = repository / MODEL / str(champion[-1])
    target.mkdir(parents=True)
    for name in ("model.py", "metadata.json"):
        if (origin / name).exists():
            shutil.copy(origin / name, target / name)
    if source == "copy":
        shutil.copy(origin / "model.onnx", target / "model.onnx")
        if (origin / WEIGHTS_FILE).exists():  # the same model: a later retrain starts from it
            shutil.copy(origin / WEIGHTS_FILE, target / WEIGHTS_FILE)
    elif source == "inverted":
        model = onnx.load(origin / "model.onnx")
        _invert(model)
        onnx.save(model, target / "model.onnx")
    else:
        onnx.checker.check_model(source)  # a clear error for a file that is not a model
        shutil.copy(source, target / "model.onnx")
    log(f"rollout: published {target} ({source}); {MODEL} stays pinned to {champion}")
    return target


def _invert(model) -> None:
    """The graph's ``PROBABILITY`` output replaced by ``1 - PROBABILITY``."""
    from onnx import TensorProto, helper

    output = model.graph.output[0].name
    inner = f"{output}_before_inversion"
    for node in model.graph.node:
        node.output[:] = [inner if o == output else o for o in node.output]
    one = helper.make_tensor("inversion_one", TensorProto.FLOAT, [], [1.0])
    model.graph.initializer.append(one)
    model.graph.node.append(helper.make_node("Sub", ["inversion_one", inner], [output]))
