"""The primary in the BLS's process (``python_backend.fraud.callers.ThreadedOnnxCaller``):
its session runs in a worker thread under the call's deadline, so a stuck run is abandoned
on time and the ladder goes on; real threads and an event loop, a stand-in session."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from python_backend.fraud.callers import ThreadedOnnxCaller, version_folder
from python_backend.fraud.ladder import ModelCallError


class Session:
    """Speaks like ``OnnxModel``: ``feeds`` then ``run``; a run can be held or fail."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.release.set()
        self.fail: str | None = None
        self.runs = 0

    def feeds(self, inputs):
        return {"x": inputs}

    def run(self, feeds):
        self.release.wait()
        self.runs += 1
        if self.fail:
            raise RuntimeError(self.fail)
        return np.full(len(feeds["x"]), 0.25, dtype=np.float32)


def _call(caller, timeout_ms: float):
    return caller(np.zeros(3), timeout_ms)


def test_a_call_returns_the_sessions_scores() -> None:
    caller = ThreadedOnnxCaller(Session(), "fraud_primary")
    assert asyncio.run(_call(caller, 100)).tolist() == [0.25] * 3
    caller.close()


def test_a_stuck_run_is_abandoned_on_time_and_the_calls_behind_it_too() -> None:
    session = Session()
    caller = ThreadedOnnxCaller(session, "fraud_primary")

    async def scenario() -> tuple[list[float], list[str]]:
        session.release.clear()  # the session hangs
        took, outcomes = [], []
        for _ in range(2):  # the second queues behind the stuck run
            started = time.perf_counter()
            try:
                await _call(caller, 30)
                outcomes.append("ok")
            except TimeoutError:
                outcomes.append("timeout")
            took.append((time.perf_counter() - started) * 1000)
        session.release.set()  # the stuck run ends; the thread is free again
        await asyncio.sleep(0.05)
        outcomes.append("ok" if (await _call(caller, 100)).size == 3 else "wrong")
        return took, outcomes

    took, outcomes = asyncio.run(scenario())
    assert outcomes == ["timeout", "timeout", "ok"]
    assert max(took) < 30 + 40, took  # given up at its deadline, not when the run ended
    assert session.runs == 2, "the call that never started was dropped, not run late"
    caller.close()


def test_a_session_error_is_a_model_call_error_naming_the_model() -> None:
    session = Session()
    session.fail = "bad input"
    caller = ThreadedOnnxCaller(session, "fraud_primary")
    with pytest.raises(ModelCallError, match=r"^fraud_primary \(in process\): bad input$"):
        asyncio.run(_call(caller, 100))
    caller.close()


def test_the_loaded_version_is_the_newest_with_an_onnx_file(tmp_path) -> None:
    for v, onnx in ((1, True), (3, True), (7, False)):
        (tmp_path / str(v)).mkdir()
        if onnx:
            (tmp_path / str(v) / "model.onnx").write_bytes(b"")
    assert version_folder(tmp_path, -1) == tmp_path / "3"
    assert version_folder(tmp_path, 1) == tmp_path / "1"
    with pytest.raises(FileNotFoundError, match="no version folder"):
        version_folder(tmp_path / "7", -1)


def _chain_model(tmp_path, links: int = 120, width: int = 256):
    """A real ONNX model that takes tens of ms (a chain of MatMuls), speaking like OnnxModel."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.eye(width, dtype=np.float32) * 0.5, "W")
    nodes, last = [], "x"
    for i in range(links):
        out = "y" if i == links - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [last, "W"], [out]))
        last = out
    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, width])  # noqa: E731
    graph = helper.make_graph(nodes, "chain", [value("x")], [value("y")], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "chain.onnx"
    onnx.save(model, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    class Chain:
        def feeds(self, inputs):
            return {"x": np.ones((256, width), dtype=np.float32)}

        def run(self, feeds, run_options=None):
            return session.run(None, feeds, run_options)[0][:, 0]

    return Chain()


def test_a_guarded_run_past_its_deadline_is_given_up_by_onnx_runtime(tmp_path) -> None:
    from python_backend.fraud.callers import DeadlineGuard, GuardedOnnxCaller

    guard = DeadlineGuard()
    caller = GuardedOnnxCaller(_chain_model(tmp_path), "fraud_primary", guard)
    started = time.perf_counter()
    full = asyncio.run(caller(None, 10_000))
    whole_ms = (time.perf_counter() - started) * 1000
    assert full.shape == (256,) and guard.terminated == 0
    if whole_ms < 20:
        pytest.skip(f"the chain ran in {whole_ms:.1f} ms here: too fast to give up midway")
    started = time.perf_counter()
    with pytest.raises(TimeoutError, match=r"^fraud_primary \(in process\): over 5 ms$"):
        asyncio.run(caller(None, 5))
    took_ms = (time.perf_counter() - started) * 1000
    assert took_ms < whole_ms, (took_ms, whole_ms)  # stopped, not run to the end
    assert guard.terminated == 1
    assert asyncio.run(caller(None, 10_000)).shape == (256,), "the next run is not affected"
    assert guard.terminated == 1


def test_fraud_primary_places_the_primary_in_process_on_cpu_only(monkeypatch) -> None:
    """``FRAUD_PRIMARY`` chooses where ``fraud_scoring`` runs the primary on the CPU variant
    (in its own process unless told ``triton``); TensorRT engines always run in Triton; a
    wrong value names the choices."""
    from build_engines.triton_config import primary_placement, scoring_config

    monkeypatch.delenv("FRAUD_PRIMARY", raising=False)
    assert primary_placement("cpu") == "in_process"
    assert primary_placement("tensorrt") == "triton"
    config = scoring_config(primary=primary_placement("cpu"))
    assert 'key: "PRIMARY"' in config and 'string_value: "in_process"' in config
    monkeypatch.setenv("FRAUD_PRIMARY", "triton")
    assert primary_placement("cpu") == "triton"
    assert 'key: "PRIMARY"' not in scoring_config(primary=primary_placement("cpu"))
    monkeypatch.setenv("FRAUD_PRIMARY", "gpu")
    with pytest.raises(ValueError, match="FRAUD_PRIMARY: in_process or triton, got 'gpu'"):
        primary_placement("cpu")


def test_the_chaos_faulty_artefacts_fail_as_named(tmp_path) -> None:
    """``perf.chaos.artefacts``: the ``error`` primary loads and fails every run, whatever the
    batch; the ``slow`` one runs far past a deadline and the guard gives it up; ``missing``
    has no file."""
    from perf.chaos.artefacts import faulty_primary
    from python_backend.fraud.callers import DeadlineGuard, GuardedOnnxCaller
    from python_backend.fraud.contract import CATEGORICAL, PRIMARY, SEQUENCE, TABULAR
    from python_backend.onnx_runner import OnnxModel

    def inputs(batch: int):
        return type(
            "Inputs",
            (),
            {
                "tabular": np.random.rand(batch, *TABULAR.dims).astype(np.float32),
                "sequence": np.random.rand(batch, *SEQUENCE.dims).astype(np.float32),
                "categorical": np.zeros((batch, *CATEGORICAL.dims), dtype=np.int64),
            },
        )()

    error = OnnxModel(faulty_primary("error", tmp_path) / "1" / "model.onnx", PRIMARY)
    for batch in (1, 2, 3, 7, 40, 64):
        with pytest.raises(Exception, match="Reshape"):
            error.run(error.feeds(inputs(batch)))
    guard = DeadlineGuard()
    slow = GuardedOnnxCaller.from_onnx(
        faulty_primary("slow", tmp_path) / "1" / "model.onnx", PRIMARY
    )
    slow.guard = guard
    with pytest.raises(TimeoutError):
        asyncio.run(slow(inputs(4), 20))
    assert guard.terminated == 1
    assert not (faulty_primary("missing", tmp_path) / "1" / "model.onnx").exists()
