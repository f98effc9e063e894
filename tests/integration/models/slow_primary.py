"""Test tooling, never served: a stand-in for fraud_primary that answers after 200 ms,
loaded over the real one through Triton's model-load API with a file override."""

import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.2)
        responses = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, "TABULAR").as_numpy().shape[0]
            probability = np.full((rows, 1), 0.5, dtype=np.float32)
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor("PROBABILITY", probability)])
            )
        return responses
