"""recommend_scorer: (user embedding, last five items) -> a score per item, the ONNX model of
``make recommender`` in ONNX Runtime behind Triton's dynamic batcher (the logic lives in
python_backend.onnx_triton)."""

import numpy as np

from python_backend.onnx_triton import OnnxTritonModel, ort_session
from python_backend.recommender.core import SCORER


class TritonPythonModel(OnnxTritonModel):
    contract = SCORER

    def load(self, path, threads):
        self.session = ort_session(path, threads)

    def infer(self, joined):
        feeds = {s.name: joined[s.name] for s in self.contract.inputs}
        return {self.contract.outputs[0].name: self.session.run(None, feeds)[0].astype(np.float32)}
