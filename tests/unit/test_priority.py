"""Batch work lowers its own CPU priority (``python_backend.priority``), unless told to keep
it; each case in a child process, since a lowered priority is not raised again."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import os
from python_backend.priority import as_batch_job
said = as_batch_job()
idle = os.sched_getscheduler(0) == os.SCHED_IDLE
print(said, "|", "idle" if idle else f"nice {os.nice(0)}")
"""


def _run(priority: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BATCH_PRIORITY": priority}
    return subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60
    )


def test_batch_work_runs_at_the_lowest_priority_the_kernel_gives() -> None:
    done = _run("idle")
    said, _, seen = done.stdout.strip().partition(" | ")
    assert done.returncode == 0, done.stderr
    assert (said, seen) in {("SCHED_IDLE", "idle"), ("nice 19", "nice 19")}, done.stdout


@pytest.mark.skipif(os.nice(0) != 0, reason="this test process is itself niced")
def test_normal_keeps_the_priority_it_was_started_with() -> None:
    done = _run("normal")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "nice 0 (BATCH_PRIORITY=normal) | nice 0", done.stdout


def test_an_unknown_priority_is_refused_naming_the_setting() -> None:
    done = _run("low")
    assert done.returncode != 0
    assert "BATCH_PRIORITY: idle or normal, got 'low'" in done.stderr
