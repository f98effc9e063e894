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
    # The refills (the first fill, redis_down's, the batch job's) ran as batch work.
    lowest = {"SCHED_IDLE", "nice 19"}
    assert len(summary["refill_s"]) == 3 and set(summary["refill_priority"]) <= lowest, (
        summary["refill_s"],
        summary["refill_priority"],
    )
    # Every restart really replaced a server process behind Envoy, and no caller was left
    # without a decision across them.
    restarts = summary["replica_restarts"]
    assert [(r["fault"], r["replica"]) for r in restarts] == [
        ("server_restart", 0),
        ("rolling_restart", 0),
        ("rolling_restart", 1),
        ("replica_crash", 1),
    ], restarts
    for r in restarts:
        assert r["pids"][0] != r["pids"][1] and None not in r["pids"], r
    for name in ("server_restart", "rolling_restart", "replica_crash"):
        assert faults[name]["decided"] == faults[name]["offered"], (name, faults[name])
    # Nothing lost: every request decided (retries included), every accepted decision logged,
    # every second decision explained by a retry, every published event applied once.
    assert summary["overall"]["decided"] == summary["overall"]["offered"]
    log = summary["decision_log"]
    # Also across the kill -9: what the killed replica had answered but not yet handed to the
    # broker is in its journal, replayed by the replica started after it.
    assert log["missing"] == 0, log
    assert log["duplicates_unexplained"] == 0, log
    stream = summary["stream"]
    assert stream["applied_equals_distinct"], stream
    assert stream["lost"] == 0 and stream["lag"] == 0, stream
