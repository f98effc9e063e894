"""The perf tooling runs end to end (a smoke plan: every step, no numbers asserted).

Real perf_analyzer, real Triton with the served models and the benchmark's own, real Redis,
the plain FastAPI peer under uvicorn, the Python generator and the in-process floor.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_perf_smoke_writes_summary_report_and_plots(serving, tmp_path) -> None:
    from perf.run import SYSTEMS, Plan, run

    out = tmp_path / "results"
    summary = run(
        quick=True,
        scale="tiny",
        out=out,
        log=lambda _m: None,
        plan=Plan.smoke(),
        repository=serving.repository,
        data_dir=serving.data_dir,
        work=tmp_path / "work",
    )
    written = json.loads((out / "summary.json").read_text())
    assert set(written["systems"]) == set(SYSTEMS)
    for name in SYSTEMS:
        rates = written["systems"][name]["rates"]
        assert rates and {"offered_rps", "achieved_rps", "p50_ms", "p99_ms"} <= set(rates[0])
        assert rates[0]["ok"] > 0, f"{name} answered nothing"
        assert "max_rps_within_95ms" in written["systems"][name]
        cost = rates[0]["cpu"]
        assert cost["decisions"] == rates[0]["ok"] and cost["cpu_ms_per_decision"] > 0, cost
        assert written["systems"][name]["cpu_ms_per_decision"], f"{name}: no CPU by rate"
    served = written["systems"]["triton_bls"]["rates"][0]["cpu"]
    assert {"tritonserver", "stub:fraud_scoring", "stub:fraud_primary"} <= set(
        served["processes_ms"]
    ), "the split names Triton and the stubs that served"
    assert "stub:fraud_fused" not in served["processes_ms"] or (
        served["processes_ms"]["stub:fraud_fused"] < served["processes_ms"]["stub:fraud_scoring"]
    ), "another system's stub did not work in this system's window"
    assert served["load_generator_ms_per_decision"] > 0, "the generator's CPU is reported apart"
    point = written["perf_analyzer"]["fraud_scoring"]["concurrency"][0]
    assert "error" not in point, point
    assert point["achieved_rps"] > 0 and point["triton"]["fraud_scoring"]["requests"] > 0
    assert point["triton"]["fraud_primary"]["requests"] > 0, "the BLS called the primary"
    assert written["perf_analyzer"]["perf_empty"]["concurrency"][0]["p50_ms"] > 0
    assert {"max_rps_vs_plain_service", "max_rps_vs_fused_triton"} <= set(written["ratios"])
    assert set(summary["breakdown"]["low"]["segments_us"]) >= {"features", "primary compute"}
    assert written["perf_analyzer"]["perf_hop"]["concurrency"][0]["cpu"]["decisions"] > 0
    assert "cpu_per_decision_vs_one_hop_floor_200rps" in written["targets"]
    for name in ("report.md", "latency_vs_throughput.png", "cpu_per_decision.png", "breakdown.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "raw" / "fraud_scoring_concurrency_1.csv").exists()
