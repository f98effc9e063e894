"""Every config parameter the serving models read (``config.pbtxt``'s ``parameters``), with its
default and meaning, declared once; and the latency budgets every budget comes from.

A model reads a parameter as ``parameters.BUDGET_MS.get(params)`` (``params``: the config's
parameters as ``{name: string_value}``); ``python -m client settings`` lists them beside the
environment variables (``python_backend.settings``). The configs are written by
``build_engines.triton_config`` (and changed at run time by the rollout and the chaos tools
through Triton's model-control API).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: The fraud decision's latency budget: the mission's P99 target, in milliseconds.
FRAUD_BUDGET_MS = 95.0
#: The recommender's latency budget, in milliseconds.
RECOMMEND_BUDGET_MS = 80.0


@dataclass(frozen=True)
class Parameter:
    model: str
    name: str
    default: str
    doc: str

    def get(self, params: Mapping[str, str]) -> str:
        """The value in the model's config parameters, else the default."""
        return params.get(self.name, self.default)

    def get_float(self, params: Mapping[str, str]) -> float:
        return float(self.get(params))


_ALL: list[Parameter] = []


def _parameter(model: str, name: str, default: str, doc: str) -> Parameter:
    parameter = Parameter(model, name, default, doc)
    _ALL.append(parameter)
    return parameter


# fraud_scoring, the BLS callers use (model_repository/fraud_scoring/1/model.py).
BUDGET_MS = _parameter(
    "fraud_scoring", "BUDGET_MS", f"{FRAUD_BUDGET_MS:g}", "the decision's latency budget, ms"
)
PRIMARY = _parameter(
    "fraud_scoring",
    "PRIMARY",
    "triton",
    "where the primary runs: triton (a hop to fraud_primary) or in_process (a session here, "
    "given up at its deadline); the build writes FRAUD_PRIMARY's choice",
)
PRIMARY_DIR = _parameter(
    "fraud_scoring",
    "PRIMARY_DIR",
    "../fraud_primary",
    "the in-process primary's versions (relative to the model's folder)",
)
PRIMARY_TIMEOUT_MS = _parameter(
    "fraud_scoring",
    "PRIMARY_TIMEOUT_MS",
    "40",
    "the most a batch waits for the primary, ms (the backstop behind the deadline's shed)",
)
FALLBACK = _parameter(
    "fraud_scoring",
    "FALLBACK",
    "in_process",
    "where the fallback runs: in_process (a session here) or triton (fraud_fallback, hedged)",
)
FALLBACK_ONNX = _parameter(
    "fraud_scoring",
    "FALLBACK_ONNX",
    "../fraud_fallback/1/model.onnx",
    "the in-process fallback's model (relative to the model's folder)",
)
HEDGE_FALLBACK = _parameter(
    "fraud_scoring",
    "HEDGE_FALLBACK",
    "always",
    "with FALLBACK=triton: always, auto (while the primary is troubled) or never",
)
HEDGE_WINDOW_S = _parameter(
    "fraud_scoring", "HEDGE_WINDOW_S", "10", "auto hedging: how long the primary counts as troubled"
)
METRICS_FLUSH_S = _parameter(
    "fraud_scoring", "METRICS_FLUSH_S", "1", "seconds between the metrics' hand-overs to Triton"
)
GC_FREEZE = _parameter(
    "fraud_scoring",
    "GC_FREEZE",
    "0",
    "1: objects made at start-up leave the garbage collector's sweeps",
)
SYNC_EXECUTE = _parameter(
    "fraud_scoring",
    "SYNC_EXECUTE",
    "1",
    "1: a batch with every call in this process (primary and fallback, no shadow) is decided "
    "in Triton's calling thread, not handed to the Python backend's event loop",
)
ROLLOUT_CHAMPION = _parameter(
    "fraud_scoring",
    "ROLLOUT_CHAMPION",
    "-1",
    "the fraud_primary version that decides (-1: the one loaded)",
)
ROLLOUT_CANARY = _parameter(
    "fraud_scoring", "ROLLOUT_CANARY", "", "a version that decides a share of the batches instead"
)
ROLLOUT_CANARY_SHARE = _parameter(
    "fraud_scoring", "ROLLOUT_CANARY_SHARE", "0", "the canary's share of the batches (0 to 1)"
)
ROLLOUT_SHADOW = _parameter(
    "fraud_scoring",
    "ROLLOUT_SHADOW",
    "",
    "a version that scores beside the champion, deciding nothing",
)
ROLLOUT_SHADOW_SHARE = _parameter(
    "fraud_scoring", "ROLLOUT_SHADOW_SHARE", "0", "the shadow's share of the batches (0 to 1)"
)
ROLLOUT_SHADOW_TIMEOUT_MS = _parameter(
    "fraud_scoring", "ROLLOUT_SHADOW_TIMEOUT_MS", "15", "the most the shadow is awaited, ms"
)
# recommend_top5, the recommender's BLS.
RECOMMEND_BUDGET = _parameter(
    "recommend_top5", "BUDGET_MS", f"{RECOMMEND_BUDGET_MS:g}", "the answer's latency budget, ms"
)


def all_parameters() -> list[Parameter]:
    return list(_ALL)


def table() -> list[tuple[str, str, str, str]]:
    """(model, name, default, meaning) of every parameter, for the settings command."""
    return [(p.model, p.name, p.default, p.doc) for p in _ALL]
