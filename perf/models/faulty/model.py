"""A stand-in the chaos run loads in place of a model (``fraud_primary``, ``fraud_fallback``)
through Triton's model-control API, with the model's own config plus a ``FAULT`` parameter:

- ``error``: every request is answered with an error;
- ``slow:MS``: every request is answered after MS milliseconds, with score 0.

Operator tooling only: the serving path has no switch for this. Lifting the fault is loading
the model again from the repository.
"""

import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.fault = config["parameters"]["FAULT"]["string_value"]
        self.output = config["output"][0]["name"]
        self.input = config["input"][0]["name"]

    def execute(self, requests):
        if self.fault.startswith("slow:"):
            time.sleep(float(self.fault.split(":")[1]) / 1000)
        responses = []
        for request in requests:
            if self.fault == "error":
                responses.append(
                    pb_utils.InferenceResponse(
                        error=pb_utils.TritonError("injected fault: this model is failing")
                    )
                )
                continue
            rows = pb_utils.get_input_tensor_by_name(request, self.input).as_numpy().shape[0]
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor(self.output, np.zeros((rows, 1), dtype=np.float32))]
                )
            )
        return responses
