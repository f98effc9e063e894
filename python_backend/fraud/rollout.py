"""A model rollout inside the BLS: which ``fraud_primary`` version decides a batch, and which
scores beside it without deciding.

The rollout tool (``python -m client rollout``) sets it through ``fraud_scoring``'s config
parameters, reloaded with Triton's model-control API on every replica:

- ``ROLLOUT_CHAMPION``: the version that decides (default -1: the one the server loaded);
- ``ROLLOUT_CANARY`` and ``ROLLOUT_CANARY_SHARE``: that version decides this share of the
  batches instead (a batch is a few transactions at these rates: the share of decisions
  follows);
- ``ROLLOUT_SHADOW`` and ``ROLLOUT_SHADOW_SHARE``: that version scores this share of the
  batches beside the champion, concurrently, and is awaited at most
  ``ROLLOUT_SHADOW_TIMEOUT_MS`` (15); its scores go to the decision log (``shadow_score``)
  and the metrics, never to the caller.

Each primary call is a :class:`Route`: the version, its role (champion, canary, shadow), how
it ended, its scores and its seconds. ``ServiceMetrics.observe_routes`` counts them by
version and role (``fraud_model_rows_total``, ``fraud_model_score_bucket``,
``fraud_model_seconds_bucket``): what the rollout tool reads from Prometheus.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from python_backend import parameters as P
from python_backend.fraud.features import ModelInputs

ROLES = ("champion", "canary", "shadow")
#: Upper bounds of the score histogram's buckets (the last bucket is +Inf): the bins the
#: rollout's population stability index is computed over. Fraud scores crowd near 0 (most
#: transactions are genuine), so the bins are finer there: equal tenths put nearly every
#: score in the first one and would hide a shift among the low scores.
SCORE_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
#: What a rollout parameter is called in ``fraud_scoring``'s config (``python_backend.parameters``).
PARAMETERS = {
    "champion": P.ROLLOUT_CHAMPION.name,
    "canary": P.ROLLOUT_CANARY.name,
    "canary_share": P.ROLLOUT_CANARY_SHARE.name,
    "shadow": P.ROLLOUT_SHADOW.name,
    "shadow_share": P.ROLLOUT_SHADOW_SHARE.name,
    "shadow_timeout_ms": P.ROLLOUT_SHADOW_TIMEOUT_MS.name,
}
#: The version Triton serves when none is named (the one its version policy loaded).
LOADED = -1


class RolloutError(ValueError):
    """A rollout parameter that breaks its rule; the message names it."""


def _version(params: dict, key: str, default: int | None) -> int | None:
    raw = params.get(PARAMETERS[key])
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RolloutError(f"{PARAMETERS[key]}: a model version number, got {raw!r}") from None
    if value < 1 and not (key == "champion" and value == LOADED):
        raise RolloutError(f"{PARAMETERS[key]}: a version is 1 or more, got {value}")
    return value


def _share(params: dict, key: str) -> float:
    raw = params.get(PARAMETERS[key])
    if raw in (None, ""):
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise RolloutError(f"{PARAMETERS[key]}: a share in [0, 1], got {raw!r}") from None
    if not 0.0 <= value <= 1.0:
        raise RolloutError(f"{PARAMETERS[key]}: a share in [0, 1], got {value}")
    return value


@dataclass(frozen=True)
class RolloutPlan:
    champion: int = LOADED
    canary: int | None = None
    canary_share: float = 0.0
    shadow: int | None = None
    shadow_share: float = 0.0
    shadow_timeout_ms: float = 15.0

    @classmethod
    def from_params(cls, params: dict[str, str]) -> RolloutPlan:
        """From ``fraud_scoring``'s string parameters; :class:`RolloutError` names a bad one."""
        timeout = params.get(PARAMETERS["shadow_timeout_ms"]) or P.ROLLOUT_SHADOW_TIMEOUT_MS.default
        try:
            timeout_ms = float(timeout)
        except ValueError:
            raise RolloutError(
                f"{PARAMETERS['shadow_timeout_ms']}: milliseconds, got {timeout!r}"
            ) from None
        plan = cls(
            champion=_version(params, "champion", LOADED),
            canary=_version(params, "canary", None),
            canary_share=_share(params, "canary_share"),
            shadow=_version(params, "shadow", None),
            shadow_share=_share(params, "shadow_share"),
            shadow_timeout_ms=timeout_ms,
        )
        if plan.canary_share and plan.canary is None:
            raise RolloutError("ROLLOUT_CANARY_SHARE: set, but ROLLOUT_CANARY names no version")
        if plan.shadow_share and plan.shadow is None:
            raise RolloutError("ROLLOUT_SHADOW_SHARE: set, but ROLLOUT_SHADOW names no version")
        if (plan.canary or plan.shadow) and plan.champion == LOADED:
            # Two versions loaded: "the loaded one" is the highest, the challenger.
            raise RolloutError("ROLLOUT_CHAMPION: must name the champion while a rollout runs")
        return plan

    def params(self) -> dict[str, str | None]:
        """The parameters that set this plan (None: removed), for a config override."""
        values = {
            "champion": None if self.champion == LOADED else str(self.champion),
            "canary": None if self.canary is None else str(self.canary),
            "canary_share": str(self.canary_share) if self.canary is not None else None,
            "shadow": None if self.shadow is None else str(self.shadow),
            "shadow_share": str(self.shadow_share) if self.shadow is not None else None,
            "shadow_timeout_ms": None,
        }
        return {PARAMETERS[k]: v for k, v in values.items()}

    @property
    def versions(self) -> set[int]:
        return {v for v in (self.champion, self.canary, self.shadow) if v is not None}


@dataclass
class Route:
    """One call to a ``fraud_primary`` version for a batch."""

    version: int
    role: str
    rows: int
    outcome: str = ""  # ok, error, timeout
    scores: np.ndarray | None = None
    seconds: float = 0.0
    #: The shadow call beside it (a Route with role "shadow"), if the batch was sampled.
    shadow: Route | None = None

    @property
    def label(self) -> str:
        return "loaded" if self.version == LOADED else str(self.version)


@dataclass
class RoutedPrimary:
    """The ladder's primary caller: ``caller_for(version)`` makes the caller of one version
    (``TritonCaller`` with ``model_version``); the plan says which is called for a batch.
    The routes of the batches since the last :meth:`take` are kept for the metrics and the
    decision log."""

    caller_for: Callable[[int], Callable]
    plan: RolloutPlan = field(default_factory=RolloutPlan)
    draw: Callable[[], float] = random.random
    clock: Callable[[], float] = time.perf_counter
    routes: list[Route] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.callers = {v: self.caller_for(v) for v in self.plan.versions}

    @property
    def trace(self):
        return next(iter(self.callers.values())).trace

    @trace.setter
    def trace(self, trace) -> None:
        """The Triton trace of the batch (the BLS sets it), passed to every version's caller."""
        for caller in self.callers.values():
            caller.trace = trace

    def take(self) -> list[Route]:
        routes, self.routes = self.routes, []
        return routes

    async def __call__(self, inputs: ModelInputs, timeout_ms: float) -> np.ndarray:
        plan = self.plan
        if plan.canary is not None and self.draw() < plan.canary_share:
            route = Route(plan.canary, "canary", len(inputs.tabular))
        else:
            route = Route(plan.champion, "champion", len(inputs.tabular))
        self.routes.append(route)
        shadow = None
        if plan.shadow is not None and self.draw() < plan.shadow_share:
            limit = min(timeout_ms, plan.shadow_timeout_ms)
            shadow = asyncio.ensure_future(self._shadow(inputs, limit))
        try:
            route.scores = await self._timed(route, self.callers[route.version](inputs, timeout_ms))
            return route.scores
        finally:
            if shadow is not None:  # started beside the champion: bounded by its own timeout
                route.shadow = await shadow

    async def _timed(self, route: Route, call):
        started = self.clock()
        try:
            scores = await call
        except TimeoutError:
            route.outcome = "timeout"
            raise
        except Exception:
            route.outcome = "error"
            raise
        finally:
            route.seconds = self.clock() - started
        route.outcome = "ok"
        return scores

    async def _shadow(self, inputs: ModelInputs, timeout_ms: float) -> Route:
        """The shadow version's scores; never raises (its failures are counted, not felt)."""
        route = Route(self.plan.shadow, "shadow", len(inputs.tabular))
        with contextlib.suppress(Exception):  # noted in route.outcome
            route.scores = await self._timed(route, self.callers[route.version](inputs, timeout_ms))
        return route


def psi(expected: np.ndarray, actual: np.ndarray, pseudo: float = 0.5) -> float:
    """Population stability index of two histograms over the same bins (counts):
    sum((a - e) * ln(a / e)) over the bins' shares, each bin either sample reaches given
    ``pseudo`` counts first (Jeffreys' smoothing: a small sample's empty bins would otherwise
    dominate it). Under 0.1 is read as no shift, over 0.25 as a large one."""
    e = np.asarray(expected, dtype=float)
    a = np.asarray(actual, dtype=float)
    if e.sum() == 0 or a.sum() == 0:
        return float("nan")
    reached = (e > 0) | (a > 0)
    e, a = e[reached] + pseudo, a[reached] + pseudo
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))
