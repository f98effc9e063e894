"""Triton ``config.pbtxt`` of the fraud models, from the contracts in
``python_backend.fraud.contract`` (built with ``build_engines.model_config``).

Two variants of the same model names, chosen by what the machine has:

* ``tensorrt``: ``fraud_primary`` is a ``tensorrt_plan`` on the GPU; ``fraud_fallback`` runs
  in Triton's ONNX Runtime backend on the CPU (``KIND_CPU``).
* ``cpu``: no GPU or TensorRT (and the PyPI Triton build ships only the Python backend): both
  are Python-backend models that run the ONNX files with ONNX Runtime.

The primary sits behind the dynamic batcher with a queue policy that rejects requests that
waited past their timeout, so stale work is dropped instead of served late.
"""

from __future__ import annotations

import json

from build_engines import model_config
from python_backend import settings
from python_backend.fraud.contract import (
    FALLBACK,
    MAX_BATCH_SIZE,
    PREFERRED_BATCH_SIZES,
    PRIMARY,
    SCORING,
    SCORING_MAX_BATCH,
)
from python_backend.fraud.scoring import DEFAULT_BUDGET_MS

VARIANTS = ("cpu", "tensorrt")
#: Queue delay the batcher may add to gather a batch: small against the 95 ms budget.
MAX_QUEUE_DELAY_US = 500
#: The primary's batcher adds no delay: the BLS already sends whole batches, and a wait
#: only added latency at low load (``python -m perf tune``: p50 at concurrency 1, 7.46 ->
#: 6.53 ms); requests that queued while an instance was busy are still batched.
PRIMARY_QUEUE_DELAY_US = 0
#: BLS instances of ``fraud_scoring`` (chosen by ``python -m perf tune``, see perf/README.md).
SCORING_INSTANCES = 2
#: Requests ``fraud_scoring`` lets wait in its queue (about 1.5 s of work at its capacity).
SCORING_MAX_QUEUE = 1024
#: Requests that waited longer than this in the primary's queue are rejected.
PRIMARY_QUEUE_TIMEOUT_US = 50_000


def _queue_policy_reject(**extra) -> dict:
    return {"timeout_action": "REJECT", "allow_timeout_override": True, **extra}


def primary_config(
    variant: str, cpu_instances: int = 2, queue_delay_us: int = PRIMARY_QUEUE_DELAY_US
) -> str:
    """``config.pbtxt`` of ``fraud_primary`` for ``variant``."""
    _check(variant)
    gpu = variant == "tensorrt"
    return model_config.render(
        {"name": PRIMARY.name, "max_batch_size": MAX_BATCH_SIZE},
        {"platform": "tensorrt_plan"} if gpu else {"backend": "python"},
        model_config.io(PRIMARY),
        {
            "dynamic_batching": {
                "preferred_batch_size": list(PREFERRED_BATCH_SIZES),
                "max_queue_delay_microseconds": queue_delay_us,
                "default_queue_policy": _queue_policy_reject(
                    default_timeout_microseconds=PRIMARY_QUEUE_TIMEOUT_US
                ),
            }
        },
        model_config.instances(1, "KIND_GPU") if gpu else model_config.instances(cpu_instances),
        {} if gpu else model_config.warmup(PRIMARY),
    )


def fallback_config(variant: str, cpu_instances: int = 1) -> str:
    """``config.pbtxt`` of ``fraud_fallback``: always on the CPU."""
    _check(variant)
    return model_config.render(
        {"name": FALLBACK.name, "max_batch_size": MAX_BATCH_SIZE},
        {"backend": "onnxruntime" if variant == "tensorrt" else "python"},
        model_config.io(FALLBACK),
        {"dynamic_batching": {"max_queue_delay_microseconds": MAX_QUEUE_DELAY_US}},
        model_config.instances(cpu_instances),
        model_config.warmup(FALLBACK),
    )


def _check(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


#: Where ``fraud_scoring`` runs the primary (its ``PRIMARY`` parameter): a session in its own
#: process (the CPU default: ``python -m perf tune`` measured it cheaper and faster than the
#: hop, perf/README.md), or a hop to Triton's ``fraud_primary`` (TensorRT engines, a GPU).
PRIMARY_PLACEMENTS = ("in_process", "triton")


def primary_placement(variant: str) -> str:
    """``FRAUD_PRIMARY`` for the CPU variant; TensorRT engines run only in Triton."""
    _check(variant)
    default = settings.FRAUD_PRIMARY.default
    chosen = (settings.FRAUD_PRIMARY.get() or default).strip()
    if chosen not in PRIMARY_PLACEMENTS:
        raise ValueError(
            f"FRAUD_PRIMARY: {' or '.join(PRIMARY_PLACEMENTS)}, got {chosen!r}; unset it for "
            f"the default ({default})"
        )
    return chosen if variant == "cpu" else "triton"


def scoring_config(
    instances: int = SCORING_INSTANCES,
    budget_ms: float = DEFAULT_BUDGET_MS,
    name: str = SCORING.name,
    parameters: dict[str, str] | None = None,
    batching: bool = True,
    primary: str = "triton",
) -> str:
    """``config.pbtxt`` of ``fraud_scoring``, the BLS model callers use (same on every
    machine). Several instances: a non-decoupled Python model runs one ``execute`` at a
    time per instance, so one slow request must not hold up the others. With ``batching``
    the dynamic batcher hands an instance what queued while it was busy (no added delay), and
    the BLS decides those requests together: one feature read and one primary call for all.
    ``name`` and ``parameters`` serve models that speak the same contract (the benchmark's
    peers and variants); ``primary``: where it runs the primary (:func:`primary_placement`)."""
    # A bounded queue: past SCORING_MAX_QUEUE waiting requests Triton refuses at once
    # ("Exceeds maximum queue size") instead of queueing without limit under overload. A
    # caller may send its own timeout: a request still queued when its caller gave up is
    # refused rather than decided for nobody (and decided again on the retry).
    batcher = {
        "dynamic_batching": {
            "max_queue_delay_microseconds": 0,
            "default_queue_policy": _queue_policy_reject(max_queue_size=SCORING_MAX_QUEUE),
        }
    }
    return model_config.render(
        {"name": name, "backend": "python", "max_batch_size": SCORING_MAX_BATCH},
        model_config.io(SCORING),
        batcher if batching else {},
        model_config.instances(instances),
        model_config.parameters(
            {
                "BUDGET_MS": f"{budget_ms:g}",
                **({"PRIMARY": primary} if primary != "triton" else {}),
                **(parameters or {}),
            }
        ),
    )


def refresh_configs(repository) -> None:
    """Rewrite the fraud models' generated ``config.pbtxt`` from the contract and the current
    settings, so a build made before a contract or tuning change serves with the committed
    ``model.py`` files (the weights and the decision policy stay)."""
    metadata = json.loads((repository / "fraud_primary" / "1" / "metadata.json").read_text())
    variant = metadata.get("variant", "cpu")
    (repository / PRIMARY.name / "config.pbtxt").write_text(primary_config(variant))
    (repository / FALLBACK.name / "config.pbtxt").write_text(fallback_config(variant))
    (repository / SCORING.name / "config.pbtxt").write_text(
        scoring_config(primary=primary_placement(variant))
    )
