"""What ``make perf`` compares, declared once: the systems, the Triton models behind them,
and what "within budget" means for a load level. Read by the sweeps and the report."""

from __future__ import annotations

from pathlib import Path

from python_backend.fraud.scoring import DEFAULT_BUDGET_MS

PERF_MODELS = Path(__file__).resolve().parent / "models"
SYSTEMS = ("triton_bls", "fused_triton", "plain_service", "bentoml", "floor", "hop_floor")
MODEL_OF = {"triton_bls": "fraud_scoring", "fused_triton": "fraud_fused", "hop_floor": "perf_hop"}
#: The systems served by this run's Triton (their CPU is the server's and its stubs').
ON_TRITON = tuple(MODEL_OF)
COMPOSING = ("fraud_primary", "fraud_fallback")
#: The budget every system is held to (the service's P99 target).
BUDGET_MS = DEFAULT_BUDGET_MS


def within_budget(row: dict) -> bool:
    """A load level the system held: P99 within budget, no errors, 90% of the offered rate."""
    return (
        row["p99_ms"] is not None
        and row["p99_ms"] <= BUDGET_MS
        and not row["errors"]
        and row["achieved_rps"] >= 0.9 * row["offered_rps"]
    )


def max_rps_within(rates: list[dict]) -> float:
    ok = [r["achieved_rps"] for r in rates if within_budget(r)]
    return max(ok, default=0.0)
