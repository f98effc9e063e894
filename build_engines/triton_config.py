"""Triton ``config.pbtxt`` for the generated models, from the contracts in
``python_backend.contract``.

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

from python_backend.contract import ModelContract, TensorSpec
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
#: BLS instances of ``fraud_scoring`` (chosen by ``python -m perf tune``, see the README).
SCORING_INSTANCES = 2
#: Requests ``fraud_scoring`` lets wait in its queue (about 1.5 s of work at its capacity).
SCORING_MAX_QUEUE = 1024
#: Requests that waited longer than this in the primary's queue are rejected.
PRIMARY_QUEUE_TIMEOUT_US = 50_000


def _tensor(spec: TensorSpec) -> str:
    dims = ", ".join(str(d) for d in spec.dims)
    return (
        f'  {{\n    name: "{spec.name}"\n    data_type: {spec.triton_dtype}\n'
        f"    dims: [ {dims} ]\n  }}"
    )


def _io(contract: ModelContract) -> str:
    inputs = ",\n".join(_tensor(s) for s in contract.inputs)
    outputs = ",\n".join(_tensor(s) for s in contract.outputs)
    return f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n"


def primary_config(
    variant: str, cpu_instances: int = 2, queue_delay_us: int = PRIMARY_QUEUE_DELAY_US
) -> str:
    """``config.pbtxt`` of ``fraud_primary`` for ``variant``."""
    _check(variant)
    if variant == "tensorrt":
        head = 'platform: "tensorrt_plan"\n'
        instances = "instance_group [ { count: 1, kind: KIND_GPU } ]\n"
    else:
        head = 'backend: "python"\n'
        instances = f"instance_group [ {{ count: {cpu_instances}, kind: KIND_CPU }} ]\n"
    preferred = ", ".join(str(b) for b in PREFERRED_BATCH_SIZES)
    return (
        f'name: "{PRIMARY.name}"\n{head}max_batch_size: {MAX_BATCH_SIZE}\n{_io(PRIMARY)}'
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {preferred} ]\n"
        f"  max_queue_delay_microseconds: {queue_delay_us}\n"
        "  default_queue_policy {\n"
        "    timeout_action: REJECT\n"
        f"    default_timeout_microseconds: {PRIMARY_QUEUE_TIMEOUT_US}\n"
        "    allow_timeout_override: true\n"
        "  }\n"
        "}\n"
        f"{instances}{warmup(PRIMARY) if variant != 'tensorrt' else ''}"
    )


def fallback_config(variant: str, cpu_instances: int = 1) -> str:
    """``config.pbtxt`` of ``fraud_fallback``: always on the CPU."""
    _check(variant)
    head = 'backend: "onnxruntime"\n' if variant == "tensorrt" else 'backend: "python"\n'
    return (
        f'name: "{FALLBACK.name}"\n{head}max_batch_size: {MAX_BATCH_SIZE}\n{_io(FALLBACK)}'
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}\n}}\n"
        f"instance_group [ {{ count: {cpu_instances}, kind: KIND_CPU }} ]\n"
        f"{warmup(FALLBACK)}"
    )


def warmup(contract) -> str:
    """``model_warmup``: Triton runs these requests when the model loads, before it takes
    traffic (a reload loads beside the old version and swaps once warm): the first calls
    into a fresh ONNX Runtime session are several times slower than the rest."""
    inputs = "".join(
        f'    inputs {{ key: "{s.name}" value: {{ data_type: {s.triton_dtype} '
        f"dims: [ {', '.join(str(d) for d in s.dims)} ] zero_data: true }} }}\n"
        for s in contract.inputs
    )
    return "".join(
        f'model_warmup {{\n  name: "batch_{n}"\n  batch_size: {n}\n  count: 3\n{inputs}}}\n'
        for n in (1, 16)
    )


def _check(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def scoring_config(
    instances: int = SCORING_INSTANCES,
    budget_ms: float = DEFAULT_BUDGET_MS,
    name: str = SCORING.name,
    parameters: dict[str, str] | None = None,
    batching: bool = True,
) -> str:
    """``config.pbtxt`` of ``fraud_scoring``, the BLS model callers use (same on every
    machine). Several instances: a non-decoupled Python model runs one ``execute`` at a
    time per instance, so one slow request must not hold up the others. With ``batching``
    the dynamic batcher hands an instance what queued while it was busy (no added delay), and
    the BLS decides those requests together: one feature read and one primary call for all.
    ``name`` and ``parameters`` serve models that speak the same contract (the benchmark's
    peers and variants)."""
    params = {"BUDGET_MS": f"{budget_ms:g}", **(parameters or {})}
    lines = "".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n' for k, v in params.items()
    )
    # A bounded queue: past SCORING_MAX_QUEUE waiting requests Triton refuses at once
    # ("Exceeds maximum queue size") instead of queueing without limit under overload.
    batcher = (
        "dynamic_batching {\n  max_queue_delay_microseconds: 0\n"
        f"  default_queue_policy {{ max_queue_size: {SCORING_MAX_QUEUE}\n"
        # A caller may send its own timeout: a request still queued when its caller gave up
        # is refused rather than decided for nobody (and decided again on the retry).
        "    timeout_action: REJECT allow_timeout_override: true }\n}\n"
        if batching
        else ""
    )
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: {SCORING_MAX_BATCH}\n'
        f"{_io(SCORING)}{batcher}"
        f"instance_group [ {{ count: {instances}, kind: KIND_CPU }} ]\n"
        f"{lines}"
    )


def refresh_configs(repository) -> None:
    """Rewrite the fraud models' generated ``config.pbtxt`` from the contract and the current
    settings, so a build made before a contract or tuning change serves with the committed
    ``model.py`` files (the weights and the decision policy stay)."""
    metadata = json.loads((repository / "fraud_primary" / "1" / "metadata.json").read_text())
    variant = metadata.get("variant", "cpu")
    (repository / PRIMARY.name / "config.pbtxt").write_text(primary_config(variant))
    (repository / FALLBACK.name / "config.pbtxt").write_text(fallback_config(variant))
    (repository / SCORING.name / "config.pbtxt").write_text(scoring_config())
