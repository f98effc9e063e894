"""fraud_scoring: the BLS model callers use. One decision per transaction, always.

Lifecycle:
- ``initialize``: load the decision policy, the rules, open the online-feature reader and
  create one circuit breaker per dependency (features, primary, fallback).
- ``execute``: per request, validate; read features (defaults when the store is down);
  call the primary with what is left of the budget minus a reserve, else the fallback, else
  the rules, which always answer; return score, decision, path, reasons and stage times.
  One response per request, in order; a bad request fails alone with a clear error.
- ``finalize``: close the reader.

The decisions themselves live in ``python_backend.scoring`` (unit-tested without Triton).
"""

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from python_backend import scoring
from python_backend.breaker import CircuitBreaker
from python_backend.contract import FALLBACK, PRIMARY, SCORING
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
            tx = scoring.validate(arrays)
        except scoring.InvalidRequest as err:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(err)))
        reasons = [[] for _ in range(len(tx))]

        started = time.perf_counter()
        feature_breaker = self.breakers["features"]
        reader = self.reader if feature_breaker.allow() else None
        if self.reader is not None and reader is None:
            for r in reasons:
                r.append("FEATURES_CIRCUIT_OPEN")
        features = scoring.read_features(reader, tx, reasons)
        if reader is not None:
            ok = "FEATURES_UNAVAILABLE" not in reasons[0]
            feature_breaker.record(ok, (time.perf_counter() - started) * 1000)
        inputs = scoring.model_inputs(tx, features)
        features_done = time.perf_counter()

        scores, path = None, "rules"
        for name, contract, reserve in (("primary", PRIMARY, scoring.FALLBACK_RESERVE_MS),
                                        ("fallback", FALLBACK, scoring.RULES_RESERVE_MS)):
            code = name.upper()
            breaker = self.breakers[name]
            remaining = budget.remaining_ms(reserve)
            if remaining < 1:
                reasons_add(reasons, f"{code}_NO_BUDGET")
                continue
            if not breaker.allow():
                reasons_add(reasons, f"{code}_CIRCUIT_OPEN")
                continue
            call_started = time.perf_counter()
            try:
                scores = await self._call(contract, inputs, remaining)
            except asyncio.TimeoutError:
                breaker.record(False)
                reasons_add(reasons, f"{code}_TIMEOUT")
                continue
            except ModelCallError as err:
                breaker.record(False)
                reasons_add(reasons, f"{code}_ERROR")
                self.logger.log_verbose(f"fraud_scoring: {name} failed: {err}")
                continue
            breaker.record(True, (time.perf_counter() - call_started) * 1000)
            path = name
            break
        rule_scores, rule_reasons = scoring.rules_outcome(self.rules, inputs)
        if scores is None:
            scores = rule_scores
        decisions = self.policy.decide(scores, path)
        done = time.perf_counter()

        stage_us = np.array([[int((features_done - started) * 1e6),
                              int((done - features_done) * 1e6),
                              int((done - budget.started) * 1e6)]] * len(tx), dtype=np.int64)
        outputs = {
            "SCORE": np.asarray(scores, dtype=np.float32).reshape(-1, 1),
            "DECISION": np.array([[d.encode()] for d in decisions], dtype=np.object_),
            "PATH": np.array([[path.encode()]] * len(tx), dtype=np.object_),
            "REASONS": np.array([[scoring.reasons_json(r + rr)]
                                 for r, rr in zip(reasons, rule_reasons)], dtype=np.object_),
            "STAGE_US": stage_us,
        }
        return pb_utils.InferenceResponse(
            [pb_utils.Tensor(spec.name, outputs[spec.name]) for spec in SCORING.outputs])

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


def reasons_add(reasons, code):
    for r in reasons:
        r.append(code)
