"""The reason codes a fraud decision carries, and which of them mean "degraded", declared once.

A decision's ``REASONS`` holds, in order: what the features said (``UNKNOWN_CARD``,
``FEATURES_STALE:<view>``...), what the ladder went through (``<RUNG>_<DEGRADATION>``: the
primary or the fallback failed, timed out, had its circuit open, was unavailable or had no
budget left), and the rules that fired (their own names, from ``rules.yaml``). The BLS's
metrics, the chaos run and the tests classify codes with the functions here.
"""

from __future__ import annotations

#: A row that broke a value rule; the rule follows as the next reason.
INVALID_INPUT = "INVALID_INPUT"
#: No stored row for the card / the terminal (decided as "not known").
UNKNOWN_CARD = "UNKNOWN_CARD"
UNKNOWN_TERMINAL = "UNKNOWN_TERMINAL"
#: Every code about the feature read starts so.
FEATURES = "FEATURES_"
#: The feature store did not answer / its circuit is open: every view unavailable.
FEATURES_UNAVAILABLE = "FEATURES_UNAVAILABLE"
FEATURES_CIRCUIT_OPEN = "FEATURES_CIRCUIT_OPEN"
#: The store not answering, the daily views the BLS's cache held were used.
FEATURES_FROM_CACHE = "FEATURES_FROM_CACHE"
#: A view older than its freshness limit, not given to the models (``FEATURES_STALE:<view>``).
FEATURES_STALE = "FEATURES_STALE"
#: A remote fallback not sent behind a primary that timed out (it would wait behind it).
FALLBACK_NOT_HEDGED = "FALLBACK_NOT_HEDGED"

#: A rung skipped because the request's remaining budget could not cover what it is expected
#: to take (``DEADLINE_SHED:primary``, ``DEADLINE_SHED:fallback``): the path chosen at arrival.
DEADLINE_SHED = "DEADLINE_SHED"

#: How a rung of the ladder can fail: ``<RUNG>`` + one of these.
ERROR = "_ERROR"
TIMEOUT = "_TIMEOUT"
CIRCUIT_OPEN = "_CIRCUIT_OPEN"
UNAVAILABLE = "_UNAVAILABLE"
NO_BUDGET = "_NO_BUDGET"
DEGRADATIONS = (ERROR, TIMEOUT, CIRCUIT_OPEN, UNAVAILABLE, NO_BUDGET)


def rung(name: str, degradation: str) -> str:
    """The code of a rung (``primary``, ``fallback``) that failed so: ``PRIMARY_TIMEOUT``."""
    assert degradation in DEGRADATIONS, degradation
    return name.upper() + degradation


def shed_code(name: str) -> str:
    """The code of a rung (``primary``, ``fallback``) skipped for the deadline."""
    return f"{DEADLINE_SHED}:{name}"


def stale_code(view: str) -> str:
    return f"{FEATURES_STALE}:{view}"


def is_ladder_degradation(code: str) -> bool:
    """A rung that did not answer, or was skipped for the deadline (what
    ``fraud_degradations_total`` counts)."""
    return code.endswith(DEGRADATIONS) or code.startswith(DEADLINE_SHED)


def is_degraded(code: str) -> bool:
    """Anything that made the decision less informed than a healthy one: a rung that did
    not answer, a fallback not hedged, or a feature read that fell short."""
    return is_ladder_degradation(code) or code == FALLBACK_NOT_HEDGED or code.startswith(FEATURES)
