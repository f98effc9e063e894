"""image_preprocess: encoded JPEG, PNG or WebP bytes -> EfficientNet-Lite0 input.

Decode, resize (shorter side 256), center crop 224, scale (x - 127) / 128, as declared in
``python_backend.image`` (the same function prepared the calibration set). A request whose
bytes are not such an image fails alone, with the rule it broke; ``PREPROCESS_US`` is the time
spent on each image.
"""

import time

import numpy as np
import triton_python_backend_utils as pb_utils

from python_backend.image import IMAGE, PIXELS, PREPROCESS_US, ImageError, preprocess


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, IMAGE.name).as_numpy()
            pixels, took = [], []
            try:
                for row in images.reshape(-1):
                    started = time.perf_counter()
                    pixels.append(preprocess(bytes(row)))
                    took.append(int((time.perf_counter() - started) * 1e6))
            except ImageError as err:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(err))))
                continue
            except Exception as err:  # this request fails alone, the rest of the batch is served
                message = f"image_preprocess failed: {type(err).__name__}: {err}"
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)))
                continue
            responses.append(
                pb_utils.InferenceResponse(
                    [
                        pb_utils.Tensor(PIXELS.name, np.stack(pixels)),
                        pb_utils.Tensor(
                            PREPROCESS_US.name, np.array(took, dtype=np.int64)[:, None]
                        ),
                    ]
                )
            )
        return responses
