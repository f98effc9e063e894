"""``python -m client rollout`` (``make rollout VERSION=N``): a new ``fraud_primary`` version
from shadow to every decision, or back out, decided on Prometheus's numbers.

The plan, on every replica at once (Triton's model-control API, the operator's key):

1. both versions loaded: ``fraud_primary`` with ``version_policy { specific [champion, N] }``;
2. shadow: ``fraud_scoring`` reloaded with ``ROLLOUT_SHADOW=N`` (``python_backend.fraud.
   rollout``): the challenger scores a share of the batches beside the champion, its scores
   go to the decision log (``shadow_score``) and the metrics, never to a caller;
3. canary: ``ROLLOUT_CANARY=N`` decides 1%, 10%, 50%, then 100% of the batches;
4. after each step the tool reads Prometheus over the step's window: the challenger's share
   of failed calls, its call time (p99) against the champion's, the population stability
   index (PSI) of its scores against the champion's, the share of decisions over budget and
   the share that left the primary path. A gate broken rolls back at once; all kept at 100%
   promotes;
5. promote: ``config.pbtxt`` pins N (a restart serves N), the replicas load N alone, the
   rollout parameters go. Roll back: the champion decides alone again, N is unloaded and its
   folder moved to ``build/rollouts/rejected/`` (nothing loads it by mistake later).

Every step, number and reason goes to ``build/reports/rollout-<N>.json`` and ``.md``.

Canary by versioned calls inside the BLS, not by Envoy's weighted clusters: the weights
would split whole replicas (a replica per version: here a third Triton on two cores, about
1 GB and the CPU of its stubs) and the share would be of requests, not decisions; the BLS
splits batches of one server, keeps the champion's answer as the fallback rung of a failed
canary call, and shadow needs the BLS anyway (the caller must get the champion's answer).
The cost is one reload of ``fraud_scoring`` per step (the old version serves until the new
one is loaded) and a label on the model-call metrics.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from client.mesh.rotation import Rotation
from python_backend.fraud.rollout import SCORE_BUCKETS, RolloutPlan, psi
from python_backend.fraud.scoring import DEFAULT_BUDGET_MS
from python_backend.paths import BUILD, REPORTS

MODEL = "fraud_primary"
BLS = "fraud_scoring"
REJECTED = BUILD / "rollouts" / "rejected"
#: The canary's shares of decisions, in order.
STEPS = (0.01, 0.10, 0.50, 1.0)


# -- the repository ------------------------------------------------------------------------


def versions_on_disk(repository: Path) -> list[int]:
    """The versions of ``fraud_primary`` in the repository (folders with a model)."""
    folder = repository / MODEL
    return sorted(
        int(p.name)
        for p in folder.iterdir()
        if p.is_dir() and p.name.isdigit() and any((p / f).exists() for f in MODEL_FILES)
    )


MODEL_FILES = ("model.onnx", "model.plan")


def _config_path(repository: Path) -> Path:
    return repository / MODEL / "config.pbtxt"


def pinned(repository: Path) -> list[int]:
    """The versions ``config.pbtxt`` tells Triton to load (its ``version_policy``); without
    a specific policy, the latest on disk."""
    from build_engines.model_config import parse

    config = parse(_config_path(repository).read_text())
    if config.version_policy.HasField("specific"):
        return sorted(config.version_policy.specific.versions)
    on_disk = versions_on_disk(repository)
    return on_disk[-1:]


def pin(repository: Path, versions: list[int]) -> None:
    """``config.pbtxt`` with ``version_policy { specific { versions: ... } }``, written
    atomically: what a restarted server loads."""
    from google.protobuf import text_format

    from build_engines.model_config import parse

    path = _config_path(repository)
    config = parse(path.read_text())
    config.version_policy.specific.versions[:] = sorted(versions)
    temporary = path.with_suffix(".pbtxt.tmp")
    temporary.write_text(text_format.MessageToString(config))
    temporary.replace(path)


def publish(repository: Path, version: int, source: str = "copy", log=print) -> Path:
    """Put a candidate in the repository as ``fraud_primary/<version>``: ``copy`` (the
    champion's model again: one that should pass), ``inverted`` (1 - p: a deliberately bad
    one, for the rollback's test and drills), or the path of an ONNX file (a model trained
    later, from ``make engines`` on newer data). The champion is pinned first, so no
    restart serves the new folder before a rollout does."""
    import onnx

    champion = pinned(repository)
    pin(repository, champion)
    target = repository / MODEL / str(version)
    if target.exists():
        raise FileExistsError(f"{target} exists: choose another VERSION, or remove it first")
    origin = repository / MODEL / str(champion[-1])
    target.mkdir(parents=True)
    for name in ("model.py", "metadata.json"):
        if (origin / name).exists():
            shutil.copy(origin / name, target / name)
    if source == "copy":
        shutil.copy(origin / "model.onnx", target / "model.onnx")
    elif source == "inverted":
        model = onnx.load(origin / "model.onnx")
        _invert(model)
        onnx.save(model, target / "model.onnx")
    else:
        onnx.checker.check_model(source)  # a clear error for a file that is not a model
        shutil.copy(source, target / "model.onnx")
    log(f"rollout: published {target} ({source}); {MODEL} stays pinned to {champion}")
    return target


def _invert(model) -> None:
    """The graph's ``PROBABILITY`` output replaced by ``1 - PROBABILITY``."""
    from onnx import TensorProto, helper

    output = model.graph.output[0].name
    inner = f"{output}_before_inversion"
    for node in model.graph.node:
        node.output[:] = [inner if o == output else o for o in node.output]
    one = helper.make_tensor("inversion_one", TensorProto.FLOAT, [], [1.0])
    model.graph.initializer.append(one)
    model.graph.node.append(helper.make_node("Sub", ["inversion_one", inner], [output]))


# -- Prometheus ----------------------------------------------------------------------------


@dataclass
class Prometheus:
    url: str  # http://host:port

    def query(self, expr: str, at: float) -> list[dict]:
        import urllib.parse
        import urllib.request

        query = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{query}", timeout=10) as answer:
            body = json.loads(answer.read())
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus refused {expr!r}: {body.get('error', body)}")
        return body["data"]["result"]

    def by(self, expr: str, label: str, at: float) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr, at)}

    def scalar(self, expr: str, at: float) -> float:
        result = self.query(expr, at)
        return float(result[0]["value"][1]) if result else 0.0


def _buckets(cumulative: dict[str, float], bounds: tuple) -> np.ndarray:
    """Per-bucket counts from Prometheus's cumulative ``le`` buckets (+Inf last)."""
    values = [cumulative.get(f"{b:g}", 0.0) for b in bounds] + [cumulative.get("+Inf", 0.0)]
    return np.diff(np.array([0.0, *values]))


def _quantile(cumulative: dict[str, float], q: float) -> float | None:
    """``histogram_quantile`` of cumulative buckets (linear within a bucket), in ms."""
    from python_backend.fraud.metrics import LATENCY_BUCKETS

    counts = np.array([cumulative.get(f"{b:g}", 0.0) for b in LATENCY_BUCKETS])
    total = cumulative.get("+Inf", 0.0)
    if total <= 0:
        return None
    rank = q * total
    k = int(np.searchsorted(counts, rank))
    if k >= len(LATENCY_BUCKETS):
        return LATENCY_BUCKETS[-1] * 1000
    lower = LATENCY_BUCKETS[k - 1] if k else 0.0
    below = counts[k - 1] if k else 0.0
    share = (rank - below) / max(counts[k] - below, 1e-9)
    return (lower + (LATENCY_BUCKETS[k] - lower) * share) * 1000


@dataclass(frozen=True)
class Gates:
    """What a challenger must keep to go on."""

    #: Rows the challenger must have scored in a step before it is judged (the step is held
    #: until then, up to ``max_step_s``).
    min_rows: int = 30
    max_error_share: float = 0.01
    #: Population stability index of its scores against the champion's (0.25: a large shift).
    max_psi: float = 0.25
    #: Its p99 call time at most this times the champion's, plus the slack.
    latency_ratio: float = 1.5
    latency_slack_ms: float = 5.0
    #: Of every decision in the step: over the budget, and off the primary path.
    max_over_budget: float = 0.01
    max_degraded: float = 0.02


@dataclass
class Step:
    name: str
    role: str
    share: float
    started: float = 0.0
    ended: float = 0.0
    challenger: dict = field(default_factory=dict)
    champion: dict = field(default_factory=dict)
    service: dict = field(default_factory=dict)
    psi: float | None = None
    psi_limit: float | None = None
    verdict: str = ""
    reasons: list[str] = field(default_factory=list)


def measure(prometheus: Prometheus, role: str, version: str, start: float, end: float) -> dict:
    """A version's calls in the window: rows by outcome, p99 call time, score histogram."""
    window = f"{max(1, round(end - start))}s"
    match = f'role="{role}",version="{version}"'
    rows = prometheus.by(
        f"sum by (outcome) (increase(fraud_model_rows_total{{{match}}}[{window}]))",
        "outcome",
        end,
    )
    seconds = prometheus.by(
        f"sum by (le) (increase(fraud_model_seconds_bucket{{{match}}}[{window}]))", "le", end
    )
    scores = prometheus.by(
        f"sum by (le) (increase(fraud_model_score_bucket{{{match}}}[{window}]))", "le", end
    )
    total = sum(rows.values())
    failed = total - rows.get("ok", 0.0)
    return {
        "rows": round(total, 1),
        "failed_share": round(failed / total, 4) if total else None,
        "outcomes": {k: round(v, 1) for k, v in rows.items()},
        "p99_ms": _quantile(seconds, 0.99),
        "scores": _buckets(scores, SCORE_BUCKETS).round(1).tolist(),
    }


def service_health(prometheus: Prometheus, start: float, end: float) -> dict:
    """Every decision of the window: the share over budget and off the primary path."""
    window = f"{max(1, round(end - start))}s"
    budget = f"{DEFAULT_BUDGET_MS / 1000:g}"
    decided = prometheus.scalar(f"sum(increase(fraud_decision_seconds_count[{window}]))", end)
    within = prometheus.scalar(
        f'sum(increase(fraud_decision_seconds_bucket{{le="{budget}"}}[{window}]))', end
    )
    by_path = prometheus.by(
        f"sum by (path) (increase(fraud_decisions_total[{window}]))", "path", end
    )
    paths = sum(by_path.values())
    return {
        "decisions": round(decided, 1),
        "over_budget_share": round(1 - within / decided, 4) if decided else None,
        "degraded_share": round(1 - by_path.get("primary", 0.0) / paths, 4) if paths else None,
    }


def psi_limit(expected: np.ndarray, actual: np.ndarray, floor: float, confidence=0.999) -> float:
    """The PSI a step is held to: ``floor``, or what sampling alone reaches with this
    ``confidence`` when it is higher. Between two samples of one distribution, PSI (the
    symmetric Kullback-Leibler divergence) is about (1/n_e + 1/n_a) times a chi-square with
    k - 1 degrees of freedom (k: the bins either sample reaches): a canary step of a few dozen
    rows cannot tell a shift of 0.25 from noise, and must not roll back a sound version for it."""
    from scipy.stats import chi2

    e, a = np.asarray(expected, dtype=float), np.asarray(actual, dtype=float)
    bins = int(np.sum((e > 0) | (a > 0)))
    if bins < 2 or e.sum() == 0 or a.sum() == 0:
        return floor
    noise = float(chi2.ppf(confidence, bins - 1)) * (1 / e.sum() + 1 / a.sum())
    return max(floor, noise)


def judge(step: Step, gates: Gates) -> None:
    """The step's verdict and, when it fails, each gate it broke."""
    c, k, s = step.challenger, step.champion, step.service
    reasons = []
    if c["failed_share"] is not None and c["failed_share"] > gates.max_error_share:
        reasons.append(
            f"failed calls {c['failed_share']:.1%} > {gates.max_error_share:.0%} ({c['outcomes']})"
        )
    step.psi = psi(np.array(k["scores"]), np.array(c["scores"]))
    step.psi_limit = psi_limit(np.array(k["scores"]), np.array(c["scores"]), gates.max_psi)
    if step.psi == step.psi and step.psi > step.psi_limit:
        reasons.append(f"score distribution shifted: PSI {step.psi:.2f} > {step.psi_limit:.2f}")
    if c["p99_ms"] is not None and k["p99_ms"] is not None:
        limit = k["p99_ms"] * gates.latency_ratio + gates.latency_slack_ms
        if c["p99_ms"] > limit:
            reasons.append(f"p99 call {c['p99_ms']:.1f} ms > {limit:.1f} ms")
    if (s.get("over_budget_share") or 0) > gates.max_over_budget:
        reasons.append(f"decisions over budget {s['over_budget_share']:.2%}")
    if (s.get("degraded_share") or 0) > gates.max_degraded:
        reasons.append(f"decisions off the primary path {s['degraded_share']:.2%}")
    step.reasons = reasons
    step.verdict = "fail" if reasons else "pass"


# -- the rollout ---------------------------------------------------------------------------


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
        judge(step, self.gates)
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
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rollout-{self.version}.json").write_text(json.dumps(report, indent=2))
        (self.out / f"rollout-{self.version}.md").write_text(markdown(report))
        return report


def markdown(report: dict) -> str:
    lines = [
        f"# Rollout of {report['model']} {report['challenger']} "
        f"(champion {report['champion']}): {report['outcome']}",
        "",
        f"{report['reason'] or 'every gate kept at every step'}. "
        f"{report['seconds']:.0f} s on {len(report['replicas'])} replica(s); the challenger "
        f"decided {report['challenger_decided_share']:.1%} of the decisions meanwhile.",
        "",
        "| step | window s | challenger rows | failed | p99 call ms (champion) | PSI (limit) "
        "| over budget | off primary | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in report["steps"]:
        c, k, v = s["challenger"], s["champion"], s["service"]
        lines.append(
            f"| {s['name']} | {s['ended'] - s['started']:.0f} | {c.get('rows', 0):.0f} "
            f"| {_pct(c.get('failed_share'))} | {_ms(c.get('p99_ms'))} ({_ms(k.get('p99_ms'))}) "
            f"| {_round(s['psi'])} ({_round(s.get('psi_limit'))}) "
            f"| {_pct(v.get('over_budget_share'))} | {_pct(v.get('degraded_share'))} "
            f"| {s['verdict']}{': ' + '; '.join(s['reasons']) if s['reasons'] else ''} |"
        )
    lines += [
        "",
        f"Score histograms (buckets ending at {', '.join(f'{b:g}' for b in SCORE_BUCKETS)}, "
        "+Inf), champion then challenger, per step:",
        "",
    ]
    for s in report["steps"]:
        champion, challenger = s["champion"].get("scores"), s["challenger"].get("scores")
        lines.append(f"- {s['name']}: {champion} / {challenger}")
    reloads = report.get("reloads", [])
    if reloads:
        quiesced = [r for r in reloads if not r["in_place"]]
        lines += [
            "",
            f"Reloads: {len(reloads)}, {len(quiesced)} out of Envoy's rotation (drained, "
            f"reloaded, warmed, readmitted), {len(reloads) - len(quiesced)} in place "
            "(no other replica served).",
        ]
        if quiesced:
            for step in ("drain_s", "reload_s", "warm_s", "admit_s"):
                values = sorted(r.get(step, 0.0) for r in quiesced)
                lines.append(
                    f"- {step}: median {values[len(values) // 2]:.2f}, max {values[-1]:.2f}"
                )
    if report["rejected_to"]:
        lines += ["", f"The rejected version was moved to `{report['rejected_to']}`."]
    return "\n".join(lines) + "\n"


def _round(value) -> str:
    return "-" if value is None or value != value else f"{value:.3f}"


def _pct(value) -> str:
    return "-" if value is None else f"{value:.2%}"


def _ms(value) -> str:
    return "-" if value is None else f"{value:.1f}"
