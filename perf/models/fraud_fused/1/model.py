"""fraud_fused: the benchmark's ``fused_triton`` peer, never served to callers.

The same contract, features, models, rules and decision policy as ``fraud_scoring``, but all
in one Python-backend process: the feature read, ONNX Runtime sessions of the primary and the
fallback, and the rules run in ``execute``, with no BLS hop and no dynamic batcher in between.
Measured beside ``fraud_scoring``, it tells what the hops and the batcher cost or buy.
"""

import json
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from python_backend import scoring
from python_backend.contract import (
    FALLBACK,
    INVALID,
    INVALID_PATH,
    PRIMARY,
    SCORING,
    STAGES,
    request_arrays,
)
from python_backend.online_features import open_reader
from python_backend.onnx_runner import OnnxModel
from python_backend.rules import load_rules


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.policy = scoring.DecisionPolicy.load(Path(params["DECISION_POLICY"]))
        self.primary = OnnxModel(params["PRIMARY_ONNX"], PRIMARY)
        self.fallback = OnnxModel(params["FALLBACK_ONNX"], FALLBACK)
        self.rules = load_rules()
        self.reader = open_reader()

    def execute(self, requests):
        return [self._score(request) for request in requests]

    def _score(self, request):
        started = time.perf_counter()
        arrays = request_arrays(request, pb_utils.get_input_tensor_by_name)
        try:
            every_row, row_errors = scoring.validate(arrays)
        except scoring.InvalidRequest as err:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(err)))
        n = len(every_row)
        score = np.full(n, np.nan, dtype=np.float32)
        decision = [INVALID] * n
        paths = [INVALID_PATH] * n
        reasons_out = [["INVALID_INPUT", e] if e else [] for e in row_errors]
        stages = np.zeros((n, len(STAGES)), dtype=np.int64)
        valid = [i for i, e in enumerate(row_errors) if e is None]
        if valid:
            tx = every_row.take(valid)
            reasons = [[] for _ in valid]
            t0 = time.perf_counter()
            features = scoring.read_features(self.reader, tx, reasons)
            inputs = scoring.model_inputs(tx, features)
            t1 = time.perf_counter()
            scores, path, decisions, rule_reasons, (models_s, rules_s) = scoring.decide_in_process(
                self.primary, self.fallback, self.rules, self.policy, inputs
            )
            for j, i in enumerate(valid):
                score[i], decision[i], paths[i] = scores[j], decisions[j], path
                reasons_out[i] = reasons[j] + rule_reasons[j]
                stages[i, :4] = [(t1 - t0) * 1e6, models_s * 1e6, 0, rules_s * 1e6]
        stages[:, -1] = int((time.perf_counter() - started) * 1e6)
        outputs = {
            "SCORE": score.reshape(-1, 1),
            "DECISION": np.array([[d.encode()] for d in decision], dtype=np.object_),
            "PATH": np.array([[p.encode()] for p in paths], dtype=np.object_),
            "REASONS": np.array([[scoring.reasons_json(r)] for r in reasons_out], dtype=np.object_),
            "STAGE_US": stages,
        }
        return pb_utils.InferenceResponse(
            [pb_utils.Tensor(spec.name, outputs[spec.name]) for spec in SCORING.outputs]
        )

    def finalize(self):
        self.reader.close()
