"""The chaos run, short: every fault injected under load against real Triton, Redis, the
broker and the stream consumer; what is asserted is that each fault really happened and that
nothing was lost, never a latency (those are in the report, build/reports/chaos.md)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_chaos_short_run_loses_nothing(serving, tmp_path) -> None:
    from perf.chaos import FAULTS, Timing, run

    out = tmp_path / "reports"
    summary = run(
        out=out,
        log=lambda _m: None,
        repository=serving.repository,
        data_dir=serving.data_dir,
        work=tmp_path / "work",
        timing=Timing(rate=100, baseline_s=2, fault_s=2, watch_s=4),
    )
    assert json.loads((out / "chaos.json").read_text())["faults"]
    assert (out / "chaos.md").exists() and (out / "chaos_timeline.png").exists()
    faults = {f["fault"]: f for f in summary["faults"]}
    assert list(faults) == list(FAULTS)
    for name, f in faults.items():
        assert f["injection_error"] is None, (name, f["injection_error"])
    # Each fault showed in the answers (it was really injected).
    assert faults["primary_errors"]["paths"].get("fallback", 0) > 0
    assert faults["primary_unloaded"]["paths"].get("fallback", 0) > 0
    assert faults["fallback_fails_too"]["paths"].get("rules", 0) > 0
    assert faults["primary_stub_killed"]["watchdog_reloads"] >= 1
    assert any(r.startswith("FEATURES_") for r in faults["redis_down"]["degradations"])
    assert faults["server_restart"]["retried"] > 0
    assert faults["rolling_restart"]["decided"] == faults["rolling_restart"]["offered"]
    # Nothing lost: every request decided (retries included), every accepted decision logged,
    # every second decision explained by a retry, every published event applied once.
    assert summary["overall"]["decided"] == summary["overall"]["offered"]
    log = summary["decision_log"]
    assert log["missing"] == 0 and log["duplicates_unexplained"] == 0, log
    assert summary["stream"]["applied_equals_distinct"], summary["stream"]
