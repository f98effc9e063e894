"""fraud_scoring: the BLS model callers use. One decision per transaction, always.

Lifecycle:
- ``initialize``: load the decision policy, the rules, open the online-feature reader,
  create one circuit breaker per dependency (features, primary, fallback), the custom
  metrics, and (with ``KAFKA_BOOTSTRAP``) a producer that publishes each scored
  transaction to the ``transactions`` topic, so live features follow live traffic, and a
  decision log that appends every decision to the ``decisions`` topic, keyed by
  transaction id, with a bounded local spool while the broker is away
  (``python_backend.decision_log``).
- ``execute``: Triton's dynamic batcher may hand over several requests. Each is validated
  alone (a bad request fails alone, with a clear error; bad rows are answered INVALID); the
  valid rows of all of them are decided together: one feature read, one primary call (the
  fallback when the primary fails, is slow or its circuit is open; the rules when both fail),
  one rules pass, within the tightest budget among them. One response per request, in order,
  with score, decision, path, reasons and stage times.
- ``finalize``: flush the metrics, close the reader and the producers (decisions the broker
  has not taken by then go to the spool, replayed by the next instance).

Parameters (``config.pbtxt``): ``BUDGET_MS`` (95), ``HEDGE_FALLBACK`` (``always``, the
default: the fallback is sent beside every primary call; ``auto``: only while the primary is
troubled, else after it failed; measured 17% more throughput but, under a hung primary, the
first request of each instance goes to the rules and one test saw a request end at 98 ms),
``HEDGE_WINDOW_S`` (how long a bad primary outcome keeps the hedge on, 10), ``METRICS_FLUSH_S``
(custom metrics are counted in process and handed to Triton at most this often, 1; 0: each
execute).

The decisions themselves live in ``python_backend.scoring`` (unit-tested without Triton).
"""

import asyncio
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from python_backend import decision_log, scoring
from python_backend.breaker import STATE_CODES, CircuitBreaker
from python_backend.contract import (
    FALLBACK,
    INVALID,
    INVALID_PATH,
    PRIMARY,
    SCORING,
    STAGES,
    request_arrays,
)
from python_backend.decision_log import TOPIC_DECISIONS, DecisionLog
from python_backend.events import TOPIC_TRANSACTIONS, TransactionEvent
from python_backend.onnx_runner import INPUT_FIELDS
from python_backend.online_features import open_reader
from python_backend.rules import load_rules

DEGRADATIONS = ("_ERROR", "_TIMEOUT", "_CIRCUIT_OPEN", "_UNAVAILABLE", "_NO_BUDGET")


class ModelCallError(RuntimeError):
    pass


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.budget_ms = float(params.get("BUDGET_MS", scoring.DEFAULT_BUDGET_MS))
        self.hedge = params.get("HEDGE_FALLBACK", "always")
        self.hedge_window_s = float(params.get("HEDGE_WINDOW_S", 10))
        self.metrics_flush_s = float(params.get("METRICS_FLUSH_S", 1))
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.policy = scoring.DecisionPolicy.load(version_dir / "decision_policy.json")
        self.rules = load_rules()
        self.logger = pb_utils.Logger
        try:
            self.reader = open_reader()
        except Exception as err:  # decide on defaults rather than refuse to load
            self.logger.log_warn(f"fraud_scoring: no online features ({err}); using defaults")
            self.reader = None
        self.breakers = {
            "features": CircuitBreaker("features", slow_ms=20, cooldown_s=2),
            # Short cooldowns: a probe costs nothing while the fallback is hedged beside it,
            # and recovery after a fault waits for the probe.
            "primary": CircuitBreaker("primary", slow_ms=60, cooldown_s=2),
            "fallback": CircuitBreaker("fallback", slow_ms=30, cooldown_s=2),
        }
        family = pb_utils.MetricFamily
        self.metric_families = {
            "decisions": family("fraud_decisions_total", "Decisions by path and decision",
                                family.COUNTER),
            "reasons": family("fraud_degradations_total",
                              "Transactions that met a degradation, by reason", family.COUNTER),
            "breakers": family("fraud_breaker_state",
                               "Circuit breaker state: 0 closed, 1 half-open, 2 open",
                               family.GAUGE),
            "published": family("fraud_published_total",
                                "Scored transactions handed to Kafka, by outcome",
                                family.COUNTER),
            "logged": family("fraud_decision_log_total",
                             "Decision-log records by outcome: delivered, spooled, replayed, "
                             "dropped (spool full)", family.COUNTER),
            "spool": family("fraud_decision_log_spooled",
                            "Decision-log records waiting in the local spool", family.GAUGE),
        }
        self._metrics = {}
        # Each metric call is a round trip to the Triton process: count here, hand over
        # the sums at most every METRICS_FLUSH_S.
        self._counts = Counter()
        self._flushed_at = time.monotonic()
        self.publisher = None
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
        if bootstrap:
            from confluent_kafka import Producer

            # Asynchronous: produce() only queues; a broker that is away never slows a
            # decision, and a full queue drops the event (counted) rather than block.
            # linger 20 ms: fewer, larger produce requests (the broker's CPU is the cost).
            self.publisher = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                                       "queue.buffering.max.messages": 100_000})
            self.topic = os.environ.get("SCORED_TOPIC", TOPIC_TRANSACTIONS)
        self.decision_log = None
        self._logged = Counter()
        if bootstrap and os.environ.get("DECISION_LOG", "on") != "off":
            spool_dir = Path(os.environ.get("DECISION_SPOOL_DIR",
                                            Path(tempfile.gettempdir()) / "fraud-decision-spool"))
            self.decision_log = DecisionLog(
                bootstrap, spool_dir / f"spool-{args['model_instance_name']}.jsonl",
                topic=os.environ.get("DECISIONS_TOPIC", TOPIC_DECISIONS),
                log=self.logger.log_warn)

    async def execute(self, requests):
        started = time.perf_counter()
        responses = [None] * len(requests)
        parts, owners, budget_ms = [], [], self.budget_ms
        answers = []
        for k, request in enumerate(requests):
            arrays = request_arrays(request, pb_utils.get_input_tensor_by_name)
            try:
                every_row, row_errors = scoring.validate(arrays)
            except scoring.InvalidRequest as err:
                responses[k] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(err)))
                continue
            budget_ms = min(budget_ms, scoring.budget_from_parameters(request.parameters(),
                                                                      self.budget_ms))
            answer = Answer(len(every_row), row_errors, every_row.transaction_id,
                            request.request_id())
            answers.append((k, answer))
            valid = answer.valid_rows()
            if valid:
                parts.append(every_row.take(valid))
                owners.append((answer, valid))
        if parts:
            # Every valid row of every request, decided together.
            tx = scoring.Transactions.concat(parts)
            budget = scoring.Budget(budget_ms, started)
            scores, path, decisions, reasons, stage = await self._decide(tx, budget)
            offset = 0
            for answer, valid in owners:
                rows = slice(offset, offset + len(valid))
                answer.fill(valid, scores[rows], decisions[rows], path, reasons[rows], stage)
                offset += len(valid)
            self._observe(path, decisions, reasons)
            self._publish(tx)
        for k, answer in answers:
            responses[k] = answer.response(started)
        if self.decision_log is not None:
            self.decision_log.append(rec for _k, a in answers for rec in a.records())
        self._flush_metrics()
        return responses

    async def _decide(self, tx, budget):
        """Features, models, rules and decisions for valid rows."""
        reasons = [[] for _ in range(len(tx))]
        started = time.perf_counter()
        feature_breaker = self.breakers["features"]
        reader = self.reader if feature_breaker.allow() else None
        if self.reader is not None and reader is None:
            for r in reasons:
                r.append("FEATURES_CIRCUIT_OPEN")
        features = scoring.read_features(
            reader, tx, reasons,
            on_error=lambda err: self.logger.log_warn(f"fraud_scoring: features: {err!r}"))
        if reader is not None:
            ok = "FEATURES_UNAVAILABLE" not in reasons[0]
            feature_breaker.record(ok, (time.perf_counter() - started) * 1000)
        inputs = scoring.model_inputs(tx, features)
        features_done = time.perf_counter()

        scores, path, waits = await self._models(inputs, budget, reasons)
        models_done = time.perf_counter()
        rule_scores, rule_reasons = scoring.rules_outcome(self.rules, inputs)
        if scores is None:
            scores = rule_scores
        decisions = self.policy.decide(scores, path)
        done = time.perf_counter()

        stage = [int((features_done - started) * 1e6), int(waits[0] * 1e6),
                 int(waits[1] * 1e6), int((done - models_done) * 1e6), 0]
        all_reasons = [r + rr for r, rr in zip(reasons, rule_reasons)]
        return np.asarray(scores, dtype=np.float32), path, decisions, all_reasons, stage

    def _metric(self, family, labels):
        key = (family, labels)
        if key not in self._metrics:
            self._metrics[key] = self.metric_families[family].Metric(labels=dict(labels))
        return self._metrics[key]

    def _count(self, family, n, **labels):
        self._counts[(family, tuple(sorted(labels.items())))] += n

    def _observe(self, path, decisions, reasons):
        for decision, n in Counter(decisions).items():
            self._count("decisions", n, path=path, decision=decision)
        for code, n in Counter(c for r in reasons for c in set(r)).items():
            if code.endswith(DEGRADATIONS):
                self._count("reasons", n, reason=code)

    def _flush_metrics(self, force=False):
        now = time.monotonic()
        if not force and now - self._flushed_at < self.metrics_flush_s:
            return
        self._flushed_at = now
        for (family, labels), n in self._counts.items():
            if n:
                self._metric(family, labels).increment(n)
        self._counts.clear()
        for name, breaker in self.breakers.items():
            self._metric("breakers", (("dependency", name),)).set(STATE_CODES[breaker.state])
        if self.decision_log is not None:
            counts = self.decision_log.counts.copy()
            for outcome, n in counts.items():
                if n > self._logged[outcome]:
                    self._metric("logged", (("outcome", outcome),)).increment(
                        n - self._logged[outcome])
            self._logged = counts
            self._metric("spool", ()).set(self.decision_log.counts["spooled"]
                                          - self.decision_log.counts["replayed"])

    def _publish(self, tx):
        if self.publisher is None:
            return
        sent = 0
        for i in range(len(tx)):
            event = TransactionEvent(tx.transaction_id[i], int(tx.card_id[i]),
                                     int(tx.terminal_id[i]), float(tx.amount[i]),
                                     int(tx.timestamp_ms[i]))
            try:
                self.publisher.produce(self.topic, key=event.key, value=event.encode())
                sent += 1
            except BufferError:
                pass
        self.publisher.poll(0)
        self._count("published", sent, outcome="queued")
        self._count("published", len(tx) - sent, outcome="dropped")

    async def _models(self, inputs, budget, reasons):
        """Primary, else fallback; (None, "rules") when neither answers in time. Also the
        seconds spent waiting for the primary and, after it, for the fallback.

        With HEDGE_FALLBACK=auto, while the primary is healthy the fallback is called only
        after the primary failed; while it is troubled (circuit not closed, or a bad outcome
        within HEDGE_WINDOW_S) the fallback is sent first, beside it: measured here, a BLS call issued while another is
        pending is not answered before it, so a fallback sent after a hung primary came too
        late. A primary that times out while healthy is answered by the rules and turns the
        hedge on for the next requests.
        """
        waits = [0.0, 0.0]
        primary_breaker = self.breakers["primary"]
        hedged = self.hedge == "always" or primary_breaker.troubled(self.hedge_window_s)
        fallback = self._start_fallback(inputs, budget, reasons) if hedged else None
        started = time.perf_counter()
        primary_timed_out = False
        if not primary_breaker.allow():
            reasons_add(reasons, "PRIMARY_CIRCUIT_OPEN")
        else:
            scores, problem = await self._timed(
                "primary", PRIMARY, inputs, budget.remaining_ms(scoring.FALLBACK_RESERVE_MS))
            waits[0] = time.perf_counter() - started
            if problem is None:  # a hedged fallback, if any, finishes unread
                return scores, "primary", waits
            reasons_add(reasons, problem)
            primary_timed_out = problem.endswith("_TIMEOUT")
        if not hedged:
            if primary_timed_out:
                # The primary may still hold the call: a fallback now would wait behind it.
                reasons_add(reasons, "FALLBACK_NOT_HEDGED")
                return None, "rules", waits
            fallback = self._start_fallback(inputs, budget, reasons)
        if fallback is None:
            return None, "rules", waits
        started = time.perf_counter()
        scores, problem = await fallback
        waits[1] = time.perf_counter() - started
        if problem is None:
            return scores, "fallback", waits
        reasons_add(reasons, problem)
        return None, "rules", waits

    def _start_fallback(self, inputs, budget, reasons):
        """The fallback call under way, or None (reason added) while its circuit is open.
        Asked only when the call is really made: a half-open breaker lets one probe out."""
        if not self.breakers["fallback"].allow():
            reasons_add(reasons, "FALLBACK_CIRCUIT_OPEN")
            return None
        return asyncio.ensure_future(self._fallback(inputs, budget))

    def _fallback(self, inputs, budget):
        return self._timed("fallback", FALLBACK, inputs,
                           budget.remaining_ms(scoring.RULES_RESERVE_MS))

    async def _timed(self, name, contract, inputs, timeout_ms):
        """(scores, None) or (None, reason code); feeds the model's breaker."""
        code = name.upper()
        breaker = self.breakers[name]
        if timeout_ms < 1:
            breaker.cancel()  # allowed but not called: a half-open probe must not stay out
            return None, f"{code}_NO_BUDGET"
        started = time.perf_counter()
        try:
            scores = await self._call(contract, inputs, timeout_ms)
        except asyncio.TimeoutError:
            breaker.record(False)
            return None, f"{code}_TIMEOUT"
        except ModelCallError as err:
            breaker.record(False)
            self.logger.log_verbose(f"fraud_scoring: {name} failed: {err}")
            return None, f"{code}_ERROR"
        except Exception as err:  # anything else is a failed call too, never a lost outcome
            breaker.record(False)
            self.logger.log_warn(f"fraud_scoring: {name} call raised {err!r}")
            return None, f"{code}_ERROR"
        breaker.record(True, (time.perf_counter() - started) * 1000)
        return scores, None

    async def _call(self, contract, inputs, timeout_ms):
        tensors = [pb_utils.Tensor(s.name, np.ascontiguousarray(getattr(inputs,
                                                                        INPUT_FIELDS[s.name])))
                   for s in contract.inputs]
        request = pb_utils.InferenceRequest(
            model_name=contract.name,
            requested_output_names=[o.name for o in contract.outputs],
            inputs=tensors,
            # The model's queue drops the request once it waited this long (REJECT policy),
            # so a stuck model does not keep working on answers nobody waits for.
            timeout=int(timeout_ms * 1000),
        )
        response = await asyncio.wait_for(request.async_exec(), timeout_ms / 1000)
        if response.has_error():
            raise ModelCallError(response.error().message())
        output = pb_utils.get_output_tensor_by_name(response, contract.outputs[0].name)
        return output.as_numpy()[:, 0]

    def finalize(self):
        self._flush_metrics(force=True)
        if self.reader is not None:
            self.reader.close()
        if self.publisher is not None:
            self.publisher.flush(5)
        if self.decision_log is not None:
            self.decision_log.close()


def reasons_add(reasons, code):
    for r in reasons:
        r.append(code)


class Answer:
    """The outputs of one request, filled in as its rows are decided."""

    def __init__(self, n, row_errors, transaction_ids, request_id):
        self.score = np.full(n, np.nan, dtype=np.float32)
        self.decision = [INVALID] * n
        self.path = [INVALID_PATH] * n
        self.reasons = [["INVALID_INPUT", e] if e else [] for e in row_errors]
        self.stages = np.zeros((n, len(STAGES)), dtype=np.int64)
        self.row_errors = row_errors
        self.transaction_ids = transaction_ids
        self.request_id = request_id

    def valid_rows(self):
        return [i for i, e in enumerate(self.row_errors) if e is None]

    def fill(self, rows, scores, decisions, path, reasons, stage):
        for j, i in enumerate(rows):
            self.score[i], self.decision[i], self.path[i] = scores[j], decisions[j], path
            self.reasons[i] = reasons[j]
            self.stages[i] = stage

    def records(self):
        """Decision-log records of the rows decided (refused rows are not decisions)."""
        return [decision_log.record(self.transaction_ids[i], self.decision[i],
                                    float(self.score[i]), self.path[i], self.reasons[i],
                                    self.request_id)
                for i in self.valid_rows()]

    def response(self, started):
        self.stages[:, -1] = int((time.perf_counter() - started) * 1e6)
        outputs = {
            "SCORE": self.score.reshape(-1, 1),
            "DECISION": np.array([[d.encode()] for d in self.decision], dtype=np.object_),
            "PATH": np.array([[p.encode()] for p in self.path], dtype=np.object_),
            "REASONS": np.array([[scoring.reasons_json(r)] for r in self.reasons],
                                dtype=np.object_),
            "STAGE_US": self.stages,
        }
        return pb_utils.InferenceResponse(
            [pb_utils.Tensor(spec.name, outputs[spec.name]) for spec in SCORING.outputs])
