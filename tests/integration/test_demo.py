"""``make demo``, the README's main job, through the same function (``client.demo.run``) on
the tiny build and the embedded SQLite store: what it prints for each step is checked
against the server's own counters (``fraud_decisions_total`` by path and decision, read on
Triton's metrics port between the steps) and ``demo.json``. The primary runs where
``FRAUD_PRIMARY``'s default puts it (in ``fraud_scoring``'s process), so the stub-kill step
says why it has nothing to kill; the watchdog reloading a killed ``fraud_primary`` stub
(that step behind Triton's hop) is tested in ``test_self_healing.py``."""

from __future__ import annotations

import ast
import inspect
import itertools
import json
import re
import urllib.request
from collections import Counter

import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import serving_repository
from tests.support import wait_until

LIMIT = 600  # of the tiny build's last day (629 transactions)
OUTAGE = 300  # replayed with the primary taken away


def test_demo_prints_what_the_server_decided_and_opens_a_case(tiny_build, tmp_path) -> None:
    from client import demo
    from client.launcher import warm_up
    from feature_repo.store import StoreSettings, fill
    from python_backend.fraud.features import MS_PER_DAY

    data = tiny_build.build_dir / "data" / "tiny"
    store = StoreSettings.from_env(kind="sqlite", data_dir=data, repo_dir=tmp_path / "features")
    env = {**fill(store, log=lambda _m: None), "DECISION_SPOOL_DIR": str(tmp_path / "spool")}

    # What each step sends, stated from the data: the first LIMIT transactions of the last
    # calendar day; up to OPEN_WORLD_ROWS genuine ones of those, four ways; OUTAGE of them;
    # no stub to kill.
    tx = pd.read_parquet(data / "transactions.parquet")
    day = tx[tx["ts_ms"] // MS_PER_DAY == tx["ts_ms"].max() // MS_PER_DAY].head(LIMIT)
    genuine = min(demo.OPEN_WORLD_ROWS, int((day["is_fraud"] == 0).sum()))
    sent = {
        "started": inspect.signature(warm_up).parameters["requests"].default,
        "normal": len(day),
        "open_world": 4 * genuine,
        "primary_unloaded": min(len(day), OUTAGE),
        "analysed": 0,  # off the hot path: the analysis decides nothing
    }
    counted: dict[str, Counter] = {}  # (path, decision) -> decisions, by step
    servers = []

    def on_step(name: str, server) -> None:
        # The BLS hands its counts to Triton once a second: wait for this step's.
        servers.append(server)
        before = sum(list(counted.values())[-1].values()) if counted else 0
        wait_until(
            lambda: sum(_decisions(server.ports.metrics).values()) - before >= sent[name],
            15,
            what=f"{sent[name]} decisions counted for {name}",
            interval_s=0.2,
        )
        counted[name] = _decisions(server.ports.metrics)

    printed: list[str] = []
    result = demo.run(
        "tiny",
        repository=serving_repository(tiny_build, tmp_path),
        env=env,
        data=data,
        limit=LIMIT,
        outage=OUTAGE,
        state_dir=tmp_path / "triton",
        report_path=tmp_path / "reports" / "demo.json",
        cases_path=tmp_path / "cases.db",
        out=printed.append,
        on_step=on_step,
    )
    text = "\n".join(printed)
    print(text)
    server = servers[0]
    assert all(s is server for s in servers)
    assert server.process.poll() is not None, "the demo stops its server"
    steps = [s for s in demo.STEPS if s != "primary_stub_killed"]
    assert list(counted) == steps
    step = {name: counted[name] - counted[previous] for previous, name in itertools.pairwise(steps)}
    for name, decided in step.items():
        assert sum(decided.values()) == sent[name], (name, decided)

    sections = _sections(text)
    tables = {
        "normal": sections[3],
        "primary_unloaded": sections[5],
    }
    for name, lines in tables.items():
        shown = _replay_table(lines)
        assert shown["sent"] == shown["decided"] == sent[name], (name, shown)
        assert shown["errors"] == 0
        assert shown["decisions"] == _by(step[name], 1), (name, shown, step[name])
        assert shown["paths"] == _by(step[name], 0), (name, shown, step[name])

    # The primary taken away (in process: its artefact pointed at nothing): the fallback
    # decided every one of them.
    assert "in fraud_scoring's process: its artefact pointed at nothing" in sections[5][0]
    assert set(_by(step["primary_unloaded"], 0)) == {"fallback"}
    (skipped,) = sections[6]
    assert skipped.startswith("== 6. no stub to kill: the primary runs in fraud_scoring's")

    # The open world: four variants of the same genuine purchases, their shares declined and
    # flagged (declined or reviewed) against the server's decisions.
    header, *rows = sections[4]
    assert f"the open world: {genuine} of those genuine purchases" in header
    world = _open_world_table(rows)
    assert len(world) == 4
    decided = _by(step["open_world"], 1)
    assert sum(round(d * genuine) for d, _ in world.values()) == decided.get("DECLINE", 0)
    assert sum(round(f * genuine) for _, f in world.values()) == decided.get(
        "DECLINE", 0
    ) + decided.get("REVIEW", 0)

    # The conclusion: every request decided, and the paths as the server counted them.
    (line,) = sections[7]
    found = re.fullmatch(
        r"== 7\. every request got a decision: (yes|NO) \(([\d,]+) of ([\d,]+)\); paths with "
        r"the primary away: (\{.*?\})",
        line,
    )
    assert found, line
    replayed = ("normal", "primary_unloaded")
    assert found[1] == "yes" and result.every_request_decided
    assert _int(found[2]) == sum(sum(step[n].values()) for n in replayed)
    assert _int(found[3]) == sum(sent[n] for n in replayed)
    assert ast.literal_eval(found[4]) == _by(step["primary_unloaded"], 0)

    # demo.json says what was printed.
    (last,) = (line for line in printed if line.startswith("== 9."))
    assert last.endswith(f"summary in {tmp_path / 'reports' / 'demo.json'}")
    report = json.loads((tmp_path / "reports" / "demo.json").read_text())
    assert set(report) == {*tables, "primary_stub_killed", "open_world", "analysis", "case"}
    assert report["primary_stub_killed"] is None
    for name, lines in tables.items():
        shown = _replay_table(lines)
        assert report[name]["errors"] == {}  # as printed: errors 0
        for key in ("sent", "decided", "decisions", "paths"):
            assert report[name][key] == shown[key], (name, key)
    assert {k: v["rows"] for k, v in report["open_world"].items()} == dict.fromkeys(world, genuine)
    for name, (declined, flagged) in world.items():
        assert abs(report["open_world"][name]["declined"] - declined) < 1e-4
        assert abs(report["open_world"][name]["flagged"] - flagged) < 1e-4
    assert report["case"] == result.case["transaction_id"]
    _check_the_case_opened(result, text, tmp_path)


def _check_the_case_opened(result, text: str, tmp_path) -> None:
    """Step 8: the heavy model analysed the demo's decisions into the case store, and the
    case printed is one of them, shown as ``python -m client case`` shows it."""
    from client.investigation import case_text, load_case
    from python_backend.fraud.cases import SqliteCaseStore

    section = _sections(text)[8]
    found = re.search(r"analysed ([\d,]+) decisions \(([\d,]+) approved ones to review", section[1])
    assert found, section[:3]
    store = SqliteCaseStore(tmp_path / "cases.db")
    counts = store.counts()
    assert _int(found[1]) == counts["analyses"] > 0
    assert _int(found[2]) == counts["review"] == result.analysis["review"]
    case = result.case
    assert case is not None and store.case(case["transaction_id"]) == case
    if any(not r["transaction_id"].startswith("warm-up-") for r in store.review_queue(10_000)):
        assert case["review"], "a review case is the one opened when there is any"
    assert not case["transaction_id"].startswith("warm-up-"), "a case of the replayed day"
    shown = case_text(load_case(store, case["transaction_id"]))
    assert shown in "\n".join(section), "the case printed as `python -m client case` prints it"
    assert (tmp_path / "reports" / "demo_case.png").stat().st_size > 10_000


def _decisions(metrics_port: int) -> Counter:
    """``fraud_decisions_total`` as Triton exports it: (path, decision) -> decisions."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return Counter(
        {
            (s.labels["path"], s.labels["decision"]): int(s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "fraud_decisions_total"
        }
    )


def _by(counts: Counter, label: int) -> dict[str, int]:
    """``counts`` summed by path (0) or decision (1), zeros left out."""
    summed = Counter()
    for key, n in counts.items():
        summed[key[label]] += n
    return {k: n for k, n in summed.items() if n}


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def _sections(text: str) -> dict[int, list[str]]:
    """The printed lines by step (``== N.``), each section's header first."""
    sections: dict[int, list[str]] = {}
    number = 0
    for line in text.splitlines():
        header = re.match(r"== (\d)\. ", line)
        if header:
            number = int(header[1])
        sections.setdefault(number, []).append(line)
    return sections


def _replay_table(lines: list[str]) -> dict:
    """A replay's summary as printed (``ReplaySummary.table``): sent, decided, errors, and
    the decisions and paths with their counts."""

    def counts(label: str) -> dict[str, int]:
        (line,) = (x for x in lines if x.startswith(f"  {label} "))
        return {k: _int(v) for k, v in re.findall(r"([A-Za-z_]+) ([\d,]+)", line)}

    (totals,) = (x for x in lines if x.startswith("  transactions sent "))
    found = re.fullmatch(
        r"  transactions sent +([\d,]+) +decided ([\d,]+) +errors ([\d,]+)", totals
    )
    assert found, totals
    return {
        "sent": _int(found[1]),
        "decided": _int(found[2]),
        "errors": _int(found[3]),
        "decisions": counts("decisions"),
        "paths": counts("paths"),
    }


def _open_world_table(lines: list[str]) -> dict[str, tuple[float, float]]:
    """The open world's table as printed: variant -> (share declined, share flagged)."""
    rows = {}
    for line in lines[1:]:  # the first is the table's header
        found = re.match(r"(.+?) +([\d.]+)% +([\d.]+)%  ", line)
        assert found, line
        rows[found[1]] = (float(found[2]) / 100, float(found[3]) / 100)
    return rows
