"""In-process model callers for the ladder (ONNX Runtime), and the service built on them.
Triton's caller is in ``python_backend.fraud.triton``; both speak
:data:`python_backend.fraud.ladder.ModelCaller`."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from python_backend.contract import ModelContract
from python_backend.fraud.features import ModelInputs
from python_backend.fraud.ladder import ModelCallError
from python_backend.onnx_runner import OnnxModel


def onnx_or_unavailable(path: str | Path, contract: ModelContract, log=print):
    """An :class:`OnnxCaller`, or :class:`Unavailable` (logged) when ``path`` does not load."""
    try:
        return OnnxCaller(path, contract)
    except Exception as err:  # a missing or corrupt artefact: fail its calls, not the load
        log(f"{contract.name} (in process) did not load from {path}: {err}")
        return Unavailable(contract.name, str(err))


class OnnxCaller:
    """A model in this process: an ONNX Runtime session, no hop, no queue. Runs to the end
    (microseconds for the fallback), so it never waits on a timeout."""

    def __init__(self, path: str | Path, contract: ModelContract) -> None:
        self.model = OnnxModel(path, contract)

    async def __call__(self, inputs: ModelInputs, timeout_ms: float) -> np.ndarray:
        try:
            return self.model.run(self.model.feeds(inputs))
        except Exception as err:  # ONNX Runtime's own errors: the model failed, say so
            raise ModelCallError(f"{self.model.contract.name} (in process): {err}") from err


class DeadlineGuard:
    """One thread per process that gives up ONNX Runtime runs at their deadlines: each
    guarded run carries its own ``RunOptions``; at the deadline the thread sets its
    ``terminate`` flag, and ONNX Runtime stops the run at its next node and raises.

    A guarded call costs a heap push and a flag, not a thread hand-off: a run that ends first
    is only marked done, and the thread is woken only for a deadline earlier than the one it
    already sleeps until. It sleeps until the earliest deadline of a run still going, and at
    most ``tick_s`` (so a new run's deadline, ``timeout_ms`` away, is seldom earlier than its
    next look, and nothing wakes it). Measured at 200 decisions/s: 9.39 context switches per
    decision in ``fraud_scoring``'s stubs against 9.88 when it slept to each run's deadline,
    its CPU within the machine's noise; the whole guard (against unguarded runs) 2-6% of the
    stub's CPU. A run stuck inside a single kernel is not interrupted (the flag is read between
    nodes); :class:`ThreadedOnnxCaller` abandons even that, at a hand-off's cost (measured:
    ``python -m perf tune``)."""

    def __init__(self, clock=time.monotonic, tick_s: float = 0.02) -> None:
        self.clock = clock
        self.tick_s = tick_s
        self._cv = threading.Condition()
        self._pending: list[tuple[float, int, list]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        #: When the thread looks next (it is woken for an earlier deadline only).
        self._wake_at = float("-inf")
        #: Runs whose flag this guard set.
        self.terminated = 0

    def guard(self, options, timeout_ms: float) -> list:
        """Watch ``options`` until ``timeout_ms`` from now; returns the entry to :meth:`done`."""
        deadline = self.clock() + timeout_ms / 1000
        entry = [options, False]
        with self._cv:
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="onnx-deadlines")
                self._thread.daemon = True
                self._thread.start()
            heapq.heappush(self._pending, (deadline, next(self._seq), entry))
            if deadline < self._wake_at:
                self._cv.notify()
        return entry

    @staticmethod
    def done(entry: list) -> None:
        entry[1] = True

    def _watch(self) -> None:
        with self._cv:
            while True:
                now = self.clock()
                pending = self._pending
                while pending and (pending[0][2][1] or pending[0][0] <= now):
                    _deadline, _, entry = heapq.heappop(pending)
                    if not entry[1]:  # still running at its deadline
                        entry[0].terminate = True
                        self.terminated += 1
                self._wake_at = now + self.tick_s
                if pending:
                    self._wake_at = min(self._wake_at, pending[0][0])
                self._cv.wait(max(0.0, self._wake_at - now))


#: The process's guard (its thread starts with the first guarded run).
GUARD = DeadlineGuard()


class GuardedOnnxCaller:
    """A model in this process, run where it is called (no hand-off) and given up at the
    call's deadline by :data:`GUARD` (ONNX Runtime's terminate flag): the ladder gets
    ``TimeoutError`` about when it would from Triton. The primary's in-process choice."""

    def __init__(self, model, name: str, guard: DeadlineGuard = GUARD) -> None:
        import onnxruntime as ort

        self.model = model
        self.name = name
        self.guard = guard
        self._options = ort.RunOptions
        #: Set by the BLS for Triton's callers; nothing to carry here.
        self.trace = None

    @classmethod
    def from_onnx(cls, path: str | Path, contract: ModelContract) -> GuardedOnnxCaller:
        return cls(OnnxModel(path, contract), contract.name)

    async def __call__(self, inputs: ModelInputs, timeout_ms: float) -> np.ndarray:
        options = self._options()
        entry = self.guard.guard(options, timeout_ms)
        try:
            return self.model.run(self.model.feeds(inputs), options)
        except Exception as err:
            if options.terminate:
                raise TimeoutError(f"{self.name} (in process): over {timeout_ms:.0f} ms") from err
            raise ModelCallError(f"{self.name} (in process): {err}") from err
        finally:
            self.guard.done(entry)


class ThreadedOnnxCaller:
    """A model in this process, called under a deadline (the primary without Triton's hop).

    Its session runs in a worker thread of its own (ONNX Runtime lets go of the GIL while it
    computes, so the BLS's event loop goes on); a call that outlasts ``timeout_ms`` is
    abandoned: the ladder gets ``TimeoutError`` on time, as from Triton, while the thread
    finishes the stuck run. Calls queued behind it time out too (those not started are
    dropped), the primary's breaker opens, and the fallback decides."""

    def __init__(self, model, name: str) -> None:
        #: An :class:`OnnxModel` (``feeds``, ``run``) or anything that speaks like one.
        self.model = model
        self.name = name
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-session")
        #: Set by the BLS for Triton's callers; nothing to carry here.
        self.trace = None

    @classmethod
    def from_onnx(cls, path: str | Path, contract: ModelContract) -> ThreadedOnnxCaller:
        return cls(OnnxModel(path, contract), contract.name)

    async def __call__(self, inputs: ModelInputs, timeout_ms: float) -> np.ndarray:
        feeds = self.model.feeds(inputs)
        running = asyncio.get_running_loop().run_in_executor(self.pool, self.model.run, feeds)
        try:
            return await asyncio.wait_for(running, timeout_ms / 1000)
        except TimeoutError:
            raise
        except Exception as err:  # ONNX Runtime's own errors: the model failed, say so
            raise ModelCallError(f"{self.name} (in process): {err}") from err

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def version_folder(model_dir: str | Path, version: int) -> Path:
    """The folder of ``version`` of a model in a Triton repository; -1: the newest one with
    an ONNX file (what Triton's default version policy loads)."""
    from python_backend.fraud.rollout import LOADED

    model_dir = Path(model_dir)
    if version != LOADED:
        return model_dir / str(version)
    found = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()]
    found = [v for v in found if (model_dir / str(v) / "model.onnx").exists()]
    if not found:
        raise FileNotFoundError(f"{model_dir}: no version folder with a model.onnx")
    return model_dir / str(max(found))


class Unavailable:
    """A model that could not be loaded: every call fails at once, naming why. The service
    still loads and decides on the other rungs (a broken fallback artefact must not take
    scoring down with it)."""

    def __init__(self, name: str, why: str) -> None:
        self.message = f"{name} unavailable: {why}"

    async def __call__(self, inputs: ModelInputs, timeout_ms: float) -> np.ndarray:
        raise ModelCallError(self.message)


def run_now(coroutine: Coroutine):
    """The result of a coroutine that never suspends (the ladder over in-process callers),
    without an event loop: the synchronous peers and the floor call the same ladder."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("run_now: the coroutine suspended; it needs an event loop")


def in_process_service(repository: str | Path, reader):
    """The service with the primary and the fallback of ``repository`` (a Triton model
    repository as ``make engines`` lays it out) as ONNX Runtime sessions in this process:
    the benchmark's in-process peers run exactly the decisions ``fraud_scoring`` makes."""
    from python_backend.fraud import scoring
    from python_backend.fraud.contract import FALLBACK, PRIMARY
    from python_backend.fraud.ladder import ModelLadder
    from python_backend.fraud.rules import load_rules
    from python_backend.fraud.service import FraudService

    repository = Path(repository)
    ladder = ModelLadder(
        OnnxCaller(repository / PRIMARY.name / "1" / "model.onnx", PRIMARY),
        OnnxCaller(repository / FALLBACK.name / "1" / "model.onnx", FALLBACK),
        fallback_in_process=True,
    )
    policy_json = repository / "fraud_scoring" / "1" / "decision_policy.json"
    policy = scoring.DecisionPolicy.load(policy_json)
    return FraudService(policy, load_rules(), reader, ladder)


def decide_rows(service, rows: list[dict]) -> list[dict]:
    """The HTTP peers' request: JSON rows in (already checked by their schema), one
    JSON-ready decision per row out, decided in process by ``service``."""
    import time

    from python_backend.fraud import scoring
    from python_backend.fraud.ladder import Budget

    started = time.perf_counter()
    tx = scoring.Transactions.from_rows(rows)
    decided = run_now(service.decide(tx, Budget(service.budget_ms, started)))
    return decided.as_dicts(tx.transaction_id, int((time.perf_counter() - started) * 1e6))
