"""The rollout itself, ``Rollout.run``: both versions loaded, shadow, the canary's steps,
each held until the challenger has scored enough rows and judged, then promote or roll back.
Every reload goes to one replica after the other, each out of Envoy's rotation meanwhile
(``client.mesh.rotation``). It drives the other modules: ``publish`` for the versions on
disk and the pin, ``prometheus`` to measure a step, ``gates`` to judge it, ``report`` to
write what happened.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from client.mesh.rotation import Rotation
from client.rollout.gates import Gates, Step, judge
from client.rollout.prometheus import Prometheus, drift, measure, service_health
from client.rollout.publish import MODEL, REJECTED, pin, pinned, versions_on_disk
from client.rollout.report import write_report
from python_backend.fraud.rollout import RolloutPlan
from python_backend.paths import REPORTS

BLS = "fraud_scoring"
#: The canary's shares of decisions, in order.
STEPS = (0.01, 0.10, 0.50, 1.0)


def review_threshold(repository: Path) -> float | None:
    """The primary path's review threshold in ``fraud_scoring``'s policy, if there is one."""
    path = repository / BLS / "1" / "decision_policy.json"
    if not path.exists():
        return None
    return float(json.loads(path.read_text())["thresholds"]["primary"]["review"])


@dataclass
class Rollout:
    repository: Path
    version: int
    replicas: list[str]  # the replicas' gRPC addresses (the operator's API)
    prometheus: Prometheus
    shadow_share: float = 0.2
    steps: tuple[float, ...] = STEPS
    step_s: float = 15.0
    max_step_s: float = 90.0
    #: After a reload, before the window opens: the new instance serves and has flushed.
    settle_s: float = 2.0
    gates: Gates = field(default_factory=Gates)
    log: Callable[[str], None] = print
    out: Path = REPORTS
    rejected: Path = REJECTED
    history: list[Step] = field(default_factory=list)
    #: The champion's numbers from the last step where it scored enough rows.
    reference: dict | None = None
    #: Envoy's rotation of the replicas (``make serve REPLICAS=N``); None: one server, whose
    #: reloads happen in place.
    rotation: Rotation | None = None
    #: Each reload: the replica, in place or not, and its steps' seconds.
    reloads: list[dict] = field(default_factory=list)
    #: The server process of each replica address, where known: a replica out of rotation
    #: reloads at a lower CPU priority (``client.mesh.rotation.process_nice``).
    replica_pids: dict[str, int] = field(default_factory=dict)

    #: The served review threshold of the primary path: scores below it all approve.
    approve_below: float | None = None

    def _on_replicas(self, act: Callable) -> None:
        """``act(admin)`` (a reload) on one replica after the other, each out of Envoy's
        rotation meanwhile (``client.mesh.rotation``): Triton 2.51 crashes when a model is
        reloaded with requests to it in flight, and on two cores two replicas reloading at
        once held a request over a second (seen in CI). Without a mesh, in place."""
        from client.launcher import warm_up
        from client.local.operator import admin_client
        from client.mesh.rotation import process_nice, reloading

        for url in self.replicas:
            admin = admin_client(url)
            pid = self.replica_pids.get(url)
            nice = process_nice(pid) if pid else None
            try:
                with reloading(self.rotation, url, lambda u=url: warm_up(u, 20), nice) as steps:
                    act(admin)
                self.reloads.append({"replica": url, **steps})
            finally:
                admin.close()

    def _load_primary(self, versions: list[int]) -> None:
        """``fraud_primary`` with exactly ``versions`` loaded, on every replica."""

        def act(admin) -> None:
            config = admin.get_model_config(MODEL, as_json=True)["config"]
            config["version_policy"] = {"specific": {"versions": [str(v) for v in versions]}}
            admin.load_model(MODEL, config=json.dumps(config))
            for v in versions:
                if not admin.is_model_ready(MODEL, str(v)):
                    raise RuntimeError(f"{MODEL} version {v} did not become ready")

        self._on_replicas(act)

    def _plan(self, plan: RolloutPlan) -> None:
        from client.local.operator import override_parameters

        self._on_replicas(lambda admin: override_parameters(admin, BLS, **plan.params()))

    def _hold(self, step: Step) -> None:
        """Hold the step at least ``step_s``, longer (up to ``max_step_s``) until the
        challenger scored ``min_rows``; then measure and judge it."""
        time.sleep(self.settle_s)
        step.started = time.time()
        champion = str(self.champion)
        challenger = str(self.version)
        deadline = step.started + self.max_step_s
        time.sleep(self.step_s)
        while True:
            step.ended = time.time()
            step.challenger = measure(
                self.prometheus, step.role, challenger, step.started, step.ended
            )
            if step.challenger["rows"] >= self.gates.min_rows or time.time() >= deadline:
                break
            time.sleep(2)
        step.champion = measure(self.prometheus, "champion", champion, step.started, step.ended)
        if step.champion["rows"] >= self.gates.min_rows:
            self.reference = {**step.champion, "from": step.name}
        elif self.reference is not None:  # at 100% the champion scores nothing: the last seen
            step.champion = self.reference
        step.service = service_health(self.prometheus, step.started, step.ended)
        step.drift = drift(self.prometheus, step.ended)
        judge(step, self.gates, self.approve_below)
        if step.challenger["rows"] < self.gates.min_rows:
            step.verdict = "fail"
            step.reasons.append(
                f"only {step.challenger['rows']:.0f} rows scored in {self.max_step_s:.0f} s "
                f"(needs {self.gates.min_rows}): is traffic flowing?"
            )
        self.log(
            f"rollout: {step.name}: {step.verdict}"
            f" ({step.challenger['rows']:.0f} rows, PSI {step.psi:.3f} of {step.psi_limit:.3f},"
            f" p99 {step.challenger['p99_ms'] or 0:.1f} vs {step.champion['p99_ms'] or 0:.1f} ms)"
            + (f": {'; '.join(step.reasons)}" if step.reasons else "")
        )

    def run(self) -> dict:
        started = time.time()
        on_disk = versions_on_disk(self.repository)
        if self.version not in on_disk:
            raise SystemExit(
                f"rollout: {MODEL} version {self.version} is not in {self.repository / MODEL}: "
                f"publish it first (`python -m client rollout --publish copy|inverted|FILE.onnx "
                f"--version {self.version}`)"
            )
        self.champion = pinned(self.repository)[-1]
        self.approve_below = review_threshold(self.repository)
        if self.champion == self.version:
            raise SystemExit(f"rollout: version {self.version} is already the champion")
        self.log(
            f"rollout: {MODEL} {self.champion} -> {self.version} on {len(self.replicas)} "
            f"replica(s); shadow {self.shadow_share:.0%}, canary {self._shares()}"
        )
        outcome, reason = "promoted", ""
        try:
            self._load_primary([self.champion, self.version])
            if self.shadow_share > 0:
                self._plan(
                    RolloutPlan(self.champion, shadow=self.version, shadow_share=self.shadow_share)
                )
                step = Step("shadow", "shadow", self.shadow_share)
                self.history.append(step)
                self._hold(step)
            for share in self.steps:
                if self.history and self.history[-1].verdict == "fail":
                    break
                self._plan(RolloutPlan(self.champion, canary=self.version, canary_share=share))
                step = Step(f"canary {share:.0%}", "canary", share)
                self.history.append(step)
                self._hold(step)
            failed = [s for s in self.history if s.verdict == "fail"]
            if failed:
                outcome, reason = "rolled back", f"{failed[0].name}: {'; '.join(failed[0].reasons)}"
        except Exception as err:  # anything unexpected backs the challenger out too
            outcome, reason = "rolled back", f"{type(err).__name__}: {err}"
        if outcome == "promoted":
            self._promote()
        else:
            self.log(f"rollout: rolling back: {reason}")
            self._roll_back()
        report = self._report(outcome, reason, time.time() - started)
        self.log(
            f"rollout: {outcome} in {report['seconds']:.0f} s; "
            f"report {self.out / f'rollout-{self.version}.md'}"
        )
        return report

    def _shares(self) -> str:
        return " -> ".join(f"{s:.0%}" for s in self.steps)

    def _promote(self) -> None:
        pin(self.repository, [self.version])  # a restart from here serves the new version
        self._plan(RolloutPlan(self.version))  # the new one decides everything, by name
        self._load_primary([self.version])  # the old one unloaded
        self._plan(RolloutPlan())  # no rollout parameters: the config on disk again

    def _roll_back(self) -> None:
        self._plan(RolloutPlan(self.champion))  # the champion decides everything, by name
        self._load_primary([self.champion])
        self._plan(RolloutPlan())
        self.rejected.mkdir(parents=True, exist_ok=True)
        folder = self.repository / MODEL / str(self.version)
        moved = self.rejected / f"{MODEL}-{self.version}-{time.strftime('%Y%m%dT%H%M%S')}"
        shutil.move(str(folder), moved)
        self.rejected_to = moved

    def _report(self, outcome: str, reason: str, seconds: float) -> dict:
        decided = sum(
            s.challenger.get("outcomes", {}).get("ok", 0.0)
            for s in self.history
            if s.role == "canary"
        )
        total = sum(s.service.get("decisions", 0.0) for s in self.history)
        report = {
            "model": MODEL,
            "champion": self.champion,
            "challenger": self.version,
            "outcome": outcome,
            "reason": reason,
            "seconds": round(seconds, 1),
            "replicas": self.replicas,
            "gates": asdict(self.gates),
            "challenger_decided_share": round(decided / total, 4) if total else 0.0,
            "rejected_to": str(getattr(self, "rejected_to", "")) or None,
            "steps": [asdict(s) for s in self.history],
            "reloads": self.reloads,
        }
        write_report(report, self.out)
        return report
