"""The Prometheus rules an operator deploys (deploy/prometheus/): valid for Prometheus's own
checker, and each alert raised by the series that should raise it and by no healthy ones
(``promtool test rules``). promtool comes with Debian's ``prometheus`` package (make setup)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from python_backend.paths import ROOT

RULES = ROOT / "deploy" / "prometheus"


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not found: run `make setup` (it installs Debian's prometheus)")
    return found


def _run(*args: str | Path) -> str:
    done = subprocess.run(
        [_promtool(), *map(str, args)], capture_output=True, text=True, timeout=60, cwd=RULES
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_rules_pass_promtool_check() -> None:
    files = sorted(RULES.glob("*.rules.yml"))
    assert files, f"no rule files in {RULES}"
    out = _run("check", "rules", *files)
    assert "SUCCESS" in out


def test_every_alert_is_unit_tested_and_the_tests_pass() -> None:
    tests = sorted((RULES / "tests").glob("*.test.yml"))
    assert tests
    out = _run("test", "rules", *tests)
    assert "SUCCESS" in out
    alerts = {
        line.split(":", 1)[1].strip()
        for path in RULES.glob("*.rules.yml")
        for line in path.read_text().splitlines()
        if line.strip().startswith("- alert:")
    }
    tested = "\n".join(t.read_text() for t in tests)
    untested = sorted(a for a in alerts if f"alertname: {a}" not in tested)
    assert not untested, f"alerts without a promtool test: {untested}"
