"""image_classifier, CPU variant: EfficientNet-Lite0 in ONNX Runtime behind Triton's dynamic
batcher (a TensorRT plan on GPUs, where this file is unused). Batches of requests are joined,
run as one call, and split back (python_backend.onnx_triton); ``INFER_US`` is the time that
call took, reported to every request of the batch."""

import time

import numpy as np

from python_backend.image import IMAGE_CLASSIFIER, INFER_US, LOGITS, PIXELS
from python_backend.onnx_triton import OnnxTritonModel, ort_session


class TritonPythonModel(OnnxTritonModel):
    contract = IMAGE_CLASSIFIER

    def load(self, path, threads):
        self.session = ort_session(path, threads)

    def infer(self, joined):
        started = time.perf_counter()
        logits = self.session.run([LOGITS.name], {PIXELS.name: joined[PIXELS.name]})[0]
        took = int((time.perf_counter() - started) * 1e6)
        return {LOGITS.name: logits, INFER_US.name: np.full((len(logits), 1), took, np.int64)}
