"""One batch of ``fraud_scoring`` requests, from their input arrays to their output arrays.

Triton's dynamic batcher hands the BLS several requests at once. Each is validated alone (a
bad request is refused alone, with a message naming the input and the rule; bad rows are
answered INVALID); the valid rows of all of them are decided together: one feature read, one
ladder run (:class:`~python_backend.fraud.ladder.ModelLadder`), one rules pass, one decision
pass, within the tightest budget among them. Outputs are built per batch with numpy, and the
JSON of each distinct set of reason codes once, not per row.

No Triton here: ``model.py`` turns arrays into tensors; the tests and the in-process peers
call :meth:`FraudService.handle` directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from python_backend.breaker import CircuitBreaker
from python_backend.fraud import decision_log, scoring
from python_backend.fraud.contract import DECISIONS, INVALID, INVALID_PATH, SCORING, STAGES
from python_backend.fraud.deadline import Deadline, QueueBound, request_deadline
from python_backend.fraud.features import ModelInputs
from python_backend.fraud.ladder import Budget, ModelLadder
from python_backend.fraud.online import OnlineFeatureReader
from python_backend.fraud.reasons import (
    FEATURES_CIRCUIT_OPEN,
    FEATURES_FROM_CACHE,
    FEATURES_UNAVAILABLE,
    INVALID_INPUT,
)
from python_backend.fraud.rules import RuleSet
from python_backend.tracing import Timeline

#: DECISION bytes by decision code: DECISIONS in order, then INVALID.
DECISION_BYTES = np.array([d.encode() for d in (*DECISIONS, INVALID)], dtype=np.object_)
INVALID_CODE = len(DECISIONS)
_REASONS_JSON: dict[tuple[str, ...], bytes] = {}


def reasons_bytes(reasons: list[str]) -> bytes:
    """The REASONS JSON of one row, encoded once per distinct set of codes."""
    key = tuple(reasons)
    found = _REASONS_JSON.get(key)
    if found is None:
        if len(_REASONS_JSON) > 4096:  # bounded: rows with row-specific messages
            _REASONS_JSON.clear()
        found = _REASONS_JSON[key] = scoring.reasons_json(reasons)
    return found


@dataclass
class ScoringRequest:
    """What the BLS takes from one Triton request."""

    arrays: dict[str, np.ndarray | None]
    parameters: str | None = None
    request_id: str = ""


@dataclass
class Decided:
    """The decisions of a batch of valid rows."""

    scores: np.ndarray  # [B] float32
    path: str
    codes: np.ndarray  # [B] int: index into DECISIONS
    reasons: list[list[str]]
    stage_us: np.ndarray  # features, primary, fallback, rules (µs; total added per request)
    degradations: list[str]  # ladder and feature-read codes, the same for every row
    #: Rows decided without each stale view, by view.
    stale: dict[str, int] | None = None
    #: What the models were given (logged with each decision: ``python_backend.fraud.served``).
    inputs: ModelInputs | None = None

    @property
    def decisions(self) -> list[str]:
        return [DECISIONS[c] for c in self.codes]

    def as_dicts(self, transaction_ids: list[str], total_us: int) -> list[dict]:
        """One JSON-ready decision per row, as the HTTP peers answer."""
        stage = dict(zip(STAGES, [*self.stage_us.tolist(), total_us], strict=True))
        rows = zip(transaction_ids, self.scores, self.decisions, self.reasons, strict=True)
        return [
            {
                "transaction_id": t,
                "score": float(s),
                "decision": d,
                "path": self.path,
                "reasons": list(dict.fromkeys(r)),
                "stage_us": stage,
            }
            for t, s, d, r in rows
        ]


class Answer:
    """The outputs of one request (or its error), filled in as its rows are decided."""

    def __init__(self, transaction_ids: list[str], row_errors: list[str | None], request_id=""):
        n = len(row_errors)
        self.error: str | None = None
        self.transaction_ids = transaction_ids
        self.request_id = request_id
        self.valid = [i for i, e in enumerate(row_errors) if e is None]
        self.score = np.full(n, np.nan, dtype=np.float32)
        self.codes = np.full(n, INVALID_CODE, dtype=np.int64)
        self.path = np.full(n, INVALID_PATH.encode(), dtype=np.object_)
        self.reasons = [[INVALID_INPUT, e] if e else [] for e in row_errors]
        self.stages = np.zeros((n, len(STAGES)), dtype=np.int64)
        self.offset = 0

    @classmethod
    def refused(cls, message: str) -> Answer:
        answer = cls([], [])
        answer.error = message
        return answer

    def fill(self, decided: Decided, offset: int) -> None:
        rows = self.valid
        self.offset = offset  # where its rows are in the batch's transactions
        taken = slice(offset, offset + len(rows))
        self.score[rows] = decided.scores[taken]
        self.codes[rows] = decided.codes[taken]
        self.path[rows] = decided.path.encode()
        self.stages[rows, :-1] = decided.stage_us
        for j, i in enumerate(rows, start=offset):
            self.reasons[i] = decided.reasons[j]

    def outputs(self, total_us: int) -> dict[str, np.ndarray]:
        """SCORING's outputs by name."""
        self.stages[:, -1] = total_us
        columns = (
            self.score.reshape(-1, 1),
            DECISION_BYTES[self.codes].reshape(-1, 1),
            self.path.reshape(-1, 1),
            np.array([[reasons_bytes(r)] for r in self.reasons], dtype=np.object_),
            self.stages,
        )
        return {spec.name: col for spec, col in zip(SCORING.outputs, columns, strict=True)}

    def records(self, model: str = "fraud_scoring") -> list[dict]:
        """Decision-log records of the rows decided (refused rows are not decisions)."""
        return [
            decision_log.record(
                self.transaction_ids[i],
                DECISIONS[self.codes[i]],
                float(self.score[i]),
                self.path[i].decode(),
                self.reasons[i],
                self.request_id,
                model,
            )
            for i in self.valid
        ]


@dataclass
class Batch:
    """One ``handle`` call: an answer per request, in order, and what was decided."""

    answers: list[Answer]
    transactions: scoring.Transactions | None
    decided: Decided | None
    started: float
    #: Each valid request's deadline (how much of its budget it had spent on arrival).
    deadlines: list[Deadline] = field(default_factory=list)


class FraudService:
    """Features, the ladder, rules and the decision policy for batches of requests."""

    def __init__(
        self,
        policy: scoring.DecisionPolicy,
        rules: RuleSet,
        reader: OnlineFeatureReader | None,
        ladder: ModelLadder,
        budget_ms: float = scoring.DEFAULT_BUDGET_MS,
        clock: Callable[[], float] = time.perf_counter,
        features_breaker: CircuitBreaker | None = None,
        log: Callable[[str], None] = lambda _m: None,
        heartbeat: scoring.StreamHeartbeat | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.rules = rules
        self.reader = reader
        self.ladder = ladder
        self.budget_ms = budget_ms
        self.clock = clock
        self.features_breaker = features_breaker or CircuitBreaker(
            "features", slow_ms=20, cooldown_s=2
        )
        self.log = log
        #: Unix time now, to read the edge's arrival stamps (``python_backend.fraud.deadline``).
        self.wall = wall
        #: The most this instance's batch can have waited in Triton's queue; ``batch_done``
        #: (``model.py`` calls it once the responses are out) marks the instance free.
        self.queue = QueueBound(clock)
        self.heartbeat = heartbeat or (
            scoring.StreamHeartbeat(reader) if reader is not None else None
        )

    @property
    def breakers(self) -> dict[str, CircuitBreaker]:
        return {"features": self.features_breaker, **self.ladder.breakers}

    async def handle(
        self, requests: Sequence[ScoringRequest], timeline: Timeline | None = None
    ) -> Batch:
        """Decide a batch. With a ``timeline`` (a traced request is in it), its stages are
        noted there for the trace (validation, the feature read and each store call, each
        model call, rules); without one this costs nothing extra."""
        started = self.clock()
        queued_ms = self.queue.begin(started)
        now_wall = self.wall()
        answers, parts, owners, deadlines = [], [], [], []
        for request in requests:
            try:
                every_row, row_errors = scoring.validate(request.arrays)
            except scoring.InvalidRequest as err:
                answers.append(Answer.refused(str(err)))
                continue
            answer = Answer(every_row.transaction_id, row_errors, request.request_id)
            answers.append(answer)
            if answer.valid:
                whole = len(answer.valid) == len(row_errors)
                parts.append(every_row if whole else every_row.take(answer.valid))
                owners.append(answer)
                deadlines.append(
                    request_deadline(request.parameters, self.budget_ms, now_wall, queued_ms)
                )
        if timeline is not None:
            timeline.add("fraud.validate", started, self.clock(), requests=len(requests))
        tx = decided = None
        if parts:
            tx = parts[0] if len(parts) == 1 else scoring.Transactions.concat(parts)
            # The batch is decided together, within the time its most pressed request has
            # left: requests queued together waited alike.
            remaining_ms = min(d.remaining_ms for d in deadlines)
            decided = await self.decide(tx, Budget(remaining_ms, started, self.clock), timeline)
            offset = 0
            for answer in owners:
                answer.fill(decided, offset)
                offset += len(answer.valid)
        return Batch(answers, tx, decided, started, deadlines)

    def batch_done(self) -> None:
        """The batch's responses are out: the instance takes the next one."""
        self.queue.end()

    def total_us(self, batch: Batch) -> int:
        return int((self.clock() - batch.started) * 1e6)

    async def decide(
        self, tx: scoring.Transactions, budget: Budget, timeline: Timeline | None = None
    ) -> Decided:
        """Features, models, rules and decisions for valid rows."""
        started = self.clock()
        reasons: list[list[str]] = [[] for _ in range(len(tx))]
        degradations: list[str] = []
        breaker = self.features_breaker
        reader = self.reader if self.reader is not None and breaker.allow() else None
        if self.reader is not None and reader is None:
            degradations.append(FEATURES_CIRCUIT_OPEN)
        if reader is not None:
            reader.timeline = timeline
        features, ok = scoring.read_features(
            reader, tx, reasons, on_error=self._feature_error, cache=self.reader
        )
        if reader is not None:
            reader.timeline = None
            breaker.record(ok, (self.clock() - started) * 1000)
        if not ok:
            degradations.append(FEATURES_UNAVAILABLE)
            if features.from_cache:
                degradations.append(FEATURES_FROM_CACHE)
        # A stale view is not extrapolated from: the models decide without it, as trained to.
        stream_stale = ok and self.heartbeat is not None and self.heartbeat.stale()
        unavailable = scoring.unavailable_views(tx, features, ok, reasons, stream_stale)
        inputs = scoring.model_inputs(tx, features, unavailable)
        features_done = self.clock()

        outcome = await self.ladder.run(inputs, budget)
        models_done = self.clock()
        rule_scores, rule_reasons = scoring.rules_outcome(self.rules, inputs)
        scores = rule_scores if outcome.scores is None else outcome.scores
        codes = self.policy.decide_codes(scores, outcome.path)
        done = self.clock()
        if timeline is not None:
            timeline.add("fraud.features", started, features_done, rows=len(tx), available=bool(ok))
            for mark in timeline.marks:  # the store calls the reader noted, inside the read
                if mark.name.startswith("store.") and mark.parent is None:
                    mark.parent = "fraud.features"
            for model, call_start, call_end, problem in outcome.calls:
                timeline.add(f"fraud.{model}", call_start, call_end, outcome=problem or "ok")
            timeline.add("fraud.rules", models_done, done, path=outcome.path)

        stage = np.array(
            [
                (features_done - started) * 1e6,
                outcome.primary_wait_s * 1e6,
                outcome.fallback_wait_s * 1e6,
                (done - models_done) * 1e6,
            ],
            dtype=np.int64,
        )
        shared = degradations + outcome.reasons
        rows = [r + shared + rr for r, rr in zip(reasons, rule_reasons, strict=True)]
        stale = {view: int(mask.sum()) for view, mask in unavailable.items()} if ok else None
        return Decided(
            np.asarray(scores, dtype=np.float32),
            outcome.path,
            codes,
            rows,
            stage,
            shared,
            stale,
            inputs,
        )

    def _feature_error(self, err: Exception) -> None:
        self.log(f"fraud_scoring: features: {err!r}")
