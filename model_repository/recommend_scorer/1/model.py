"""recommend_scorer: (user embedding, last five items) -> a score per item, the ONNX model of
``make recommender`` in ONNX Runtime behind Triton's dynamic batcher (the logic lives in
python_backend.onnx_triton)."""

import numpy as np
import onnxruntime as ort

from python_backend.onnx_triton import OnnxTritonModel
from python_backend.recommender import SCORER


class TritonPythonModel(OnnxTritonModel):
    contract = SCORER

    def load(self, path, threads):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])

    def infer(self, joined):
        feeds = {s.name: joined[s.name] for s in self.contract.inputs}
        return {self.contract.outputs[0].name: self.session.run(None, feeds)[0].astype(np.float32)}
