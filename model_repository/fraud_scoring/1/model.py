"""fraud_scoring: the BLS model callers use. One decision per transaction, always.

Lifecycle:
- ``initialize``: load the decision policy, the rules, open the online-feature reader,
  create one circuit breaker per dependency (features, primary, fallback), the custom
  metrics, and (with ``KAFKA_BOOTSTRAP``) a producer that publishes each scored
  transaction to the ``transactions`` topic, so live features follow live traffic.
- ``execute``: per request, validate; read features (defaults when the store is down);
  call the primary with what is left of the budget minus a reserve, else the fallback, else
  the rules, which always answer; return score, decision, path, reasons and stage times.
  One response per request, in order; a bad request fails alone with a clear error.
- ``finalize``: close the reader.

The decisions themselves live in ``python_backend.scoring`` (unit-tested without Triton).
"""

import asyncio
import json
import os
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from python_backend import scoring
from python_backend.breaker import STATE_CODES, CircuitBreaker
from python_backend.contract import FALLBACK, INVALID, INVALID_PATH, PRIMARY, SCORING
from python_backend.events import TOPIC_TRANSACTIONS, TransactionEvent
from python_backend.onnx_runner import INPUT_FIELDS
from python_backend.online_features import open_reader
from python_backend.rules import load_rules


class ModelCallError(RuntimeError):
    pass


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.budget_ms = float(params.get("BUDGET_MS", scoring.DEFAULT_BUDGET_MS))
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
            "primary": CircuitBreaker("primary", slow_ms=60, cooldown_s=5),
            "fallback": CircuitBreaker("fallback", slow_ms=30, cooldown_s=5),
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
        }
        self._metrics = {}
        self.publisher = None
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
        if bootstrap:
            from confluent_kafka import Producer

            # Asynchronous: produce() only queues; a broker that is away never slows a
            # decision, and a full queue drops the event (counted) rather than block.
            self.publisher = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                                       "queue.buffering.max.messages": 100_000})
            self.topic = os.environ.get("SCORED_TOPIC", TOPIC_TRANSACTIONS)

    async def execute(self, requests):
        return [await self._score(request) for request in requests]

    async def _score(self, request):
        budget = scoring.Budget(
            scoring.budget_from_parameters(request.parameters(), self.budget_ms))
        arrays = {}
        for spec in SCORING.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
            arrays[spec.name] = None if tensor is None else tensor.as_numpy()
        try:
            every_row, row_errors = scoring.validate(arrays)
        except scoring.InvalidRequest as err:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(err)))
        n = len(every_row)
        # Rows that broke a value rule are answered as such; the others are decided.
        score = np.full(n, np.nan, dtype=np.float32)
        decision = [INVALID] * n
        paths = [INVALID_PATH] * n
        reasons_out = [["INVALID_INPUT", e] if e else [] for e in row_errors]
        stages = np.zeros((n, 3), dtype=np.int64)
        valid = [i for i, e in enumerate(row_errors) if e is None]
        if valid:
            tx = every_row.take(valid)
            scores, path, decisions, reasons, stage = await self._decide(tx, budget)
            for j, i in enumerate(valid):
                score[i], decision[i], paths[i] = scores[j], decisions[j], path
                reasons_out[i] = reasons[j]
                stages[i] = stage
            self._observe(path, decisions, reasons)
            self._publish(tx)
        stages[:, 2] = int((time.perf_counter() - budget.started) * 1e6)
        outputs = {
            "SCORE": score.reshape(-1, 1),
            "DECISION": np.array([[d.encode()] for d in decision], dtype=np.object_),
            "PATH": np.array([[p.encode()] for p in paths], dtype=np.object_),
            "REASONS": np.array([[scoring.reasons_json(r)] for r in reasons_out],
                                dtype=np.object_),
            "STAGE_US": stages,
        }
        return pb_utils.InferenceResponse(
            [pb_utils.Tensor(spec.name, outputs[spec.name]) for spec in SCORING.outputs])

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

        scores, path = await self._models(inputs, budget, reasons)
        rule_scores, rule_reasons = scoring.rules_outcome(self.rules, inputs)
        if scores is None:
            scores = rule_scores
        decisions = self.policy.decide(scores, path)
        done = time.perf_counter()

        stage = [int((features_done - started) * 1e6), int((done - features_done) * 1e6), 0]
        all_reasons = [r + rr for r, rr in zip(reasons, rule_reasons)]
        return np.asarray(scores, dtype=np.float32), path, decisions, all_reasons, stage

    def _metric(self, family, **labels):
        key = (family, tuple(sorted(labels.items())))
        if key not in self._metrics:
            self._metrics[key] = self.metric_families[family].Metric(labels=labels)
        return self._metrics[key]

    def _observe(self, path, decisions, reasons):
        for decision in set(decisions):
            self._metric("decisions", path=path, decision=decision).increment(
                decisions.count(decision))
        for code in {c for r in reasons for c in r}:
            if code.endswith(("_ERROR", "_TIMEOUT", "_CIRCUIT_OPEN", "_UNAVAILABLE",
                              "_NO_BUDGET")):
                self._metric("reasons", reason=code).increment(
                    sum(code in r for r in reasons))
        for name, breaker in self.breakers.items():
            self._metric("breakers", dependency=name).set(STATE_CODES[breaker.state])

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
        if sent:
            self._metric("published", outcome="queued").increment(sent)
        if sent < len(tx):
            self._metric("published", outcome="dropped").increment(len(tx) - sent)

    async def _models(self, inputs, budget, reasons):
        """Primary, else fallback; (None, "rules") when neither answers in time.

        The fallback is sent first, before the primary, and only used when the primary does
        not answer: measured here, a BLS call issued while another is pending is not
        answered before it, so a fallback sent after a hung primary came too late.
        """
        fallback = None
        if self.breakers["fallback"].allow():
            fallback = asyncio.ensure_future(
                self._timed("fallback", FALLBACK, inputs,
                            budget.remaining_ms(scoring.RULES_RESERVE_MS)))
        else:
            reasons_add(reasons, "FALLBACK_CIRCUIT_OPEN")
        if not self.breakers["primary"].allow():
            reasons_add(reasons, "PRIMARY_CIRCUIT_OPEN")
        else:
            scores, problem = await self._timed(
                "primary", PRIMARY, inputs, budget.remaining_ms(scoring.FALLBACK_RESERVE_MS))
            if problem is None:
                return scores, "primary"
            reasons_add(reasons, problem)
        if fallback is None:
            return None, "rules"
        scores, problem = await fallback
        if problem is None:
            return scores, "fallback"
        reasons_add(reasons, problem)
        return None, "rules"

    async def _timed(self, name, contract, inputs, timeout_ms):
        """(scores, None) or (None, reason code); feeds the model's breaker."""
        code = name.upper()
        if timeout_ms < 1:
            return None, f"{code}_NO_BUDGET"
        breaker = self.breakers[name]
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
        if self.reader is not None:
            self.reader.close()
        if self.publisher is not None:
            self.publisher.flush(5)


def reasons_add(reasons, code):
    for r in reasons:
        r.append(code)
