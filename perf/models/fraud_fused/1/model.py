"""fraud_fused: the benchmark's ``fused_triton`` peer, never served to callers.

The same contract, service, ladder, features, rules and decision policy as
``fraud_scoring``, but both models as ONNX Runtime sessions in this one Python-backend
process: no BLS hop to a model server. Measured beside ``fraud_scoring``, it tells what the
hop to the primary costs or buys.
"""

import json

import triton_python_backend_utils as pb_utils

from python_backend.fraud import in_process_service, run_now
from python_backend.fraud.online import open_reader
from python_backend.fraud.triton import responses, scoring_requests


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.service = in_process_service(params["REPOSITORY"], open_reader())

    def execute(self, requests):
        batch = run_now(self.service.handle(scoring_requests(pb_utils, requests)))
        return responses(pb_utils, batch, self.service.total_us(batch))

    def finalize(self):
        self.service.reader.close()
