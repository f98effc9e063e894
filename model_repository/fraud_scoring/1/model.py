"""fraud_scoring: the BLS model callers use. One decision per transaction, always.

Lifecycle:
- ``initialize``: the decision policy, the rules, the online-feature reader, the model
  ladder (the primary through Triton, the fallback in this process by default), the custom
  metrics and, with ``KAFKA_BOOTSTRAP``, the outbox (scored transactions and decision log).
- ``execute``: the requests the dynamic batcher handed over, decided together by
  ``python_backend.fraud.FraudService``; one response per request, in order, errors included.
  A batch holding a traced request (the client sent a ``traceparent``) records its stages
  and gets spans under that request's Triton span (``BatchTrace``), its model calls carry
  the trace, and its Kafka records the context; the metrics count every batch and are
  handed to Triton after it and every ``METRICS_FLUSH_S`` from a timer.
- ``finalize``: flush the metrics, close the reader and the outbox (decisions the broker has
  not taken by then go to the spool, replayed by the next instance).

Parameters (``config.pbtxt``): each is declared once, with its default and meaning, in
``python_backend.parameters`` and listed by ``python -m client settings``. ``PRIMARY`` says
where the primary runs: ``in_process`` (what the build writes on the CPU, ``FRAUD_PRIMARY``:
an ONNX Runtime session of ``PRIMARY_DIR``'s version here, given up at the call's deadline,
``python_backend.fraud.callers.GuardedOnnxCaller``; ``in_process_thread`` and
``in_process_unguarded`` are measured variants, see ``IN_PROCESS_PRIMARY``) or ``triton``
(the ``fraud_primary`` model, one hop; the only choice for TensorRT engines). ``FALLBACK``:
``in_process`` (a session of ``FALLBACK_ONNX`` here, sharing no fate with the primary) or
``triton`` (``fraud_fallback``, hedged per ``HEDGE_FALLBACK``). ``PRIMARY_TIMEOUT_MS`` is the
backstop: a batch whose remaining budget cannot cover the primary's recent call time skips
it (``python_backend.fraud.deadline`` and ``.ladder``). ``ROLLOUT_*``: which
``fraud_primary`` version decides, and which scores in shadow (``python_backend.fraud.rollout``,
set by ``python -m client rollout``).
"""

import gc
import json
import time
from pathlib import Path

import triton_python_backend_utils as pb_utils

from python_backend import parameters as P
from python_backend.fraud import FraudService, ModelLadder, run_now, scoring
from python_backend.fraud.callers import (
    GuardedOnnxCaller,
    OnnxCaller,
    ThreadedOnnxCaller,
    Unavailable,
    onnx_or_unavailable,
    version_folder,
)
from python_backend.fraud.contract import FALLBACK, PRIMARY
from python_backend.fraud.metrics import ServiceMetrics
from python_backend.fraud.online import open_reader
from python_backend.fraud.online.cache import DailyCache
from python_backend.fraud.outbox import Outbox
from python_backend.fraud.rollout import RolloutPlan, RoutedPrimary
from python_backend.fraud.rules import load_rules
from python_backend.fraud.triton import BatchTrace, TritonCaller, responses, scoring_requests
from python_backend.tracing import endpoint, tracer

#: The primary in this process: given up at its deadline by ONNX Runtime's terminate flag
#: (``in_process``), run in a worker thread and abandoned (``in_process_thread``), or with no
#: deadline (``in_process_unguarded``: measured by ``python -m perf tune``, never shipped).
IN_PROCESS_PRIMARY = {
    "in_process": GuardedOnnxCaller.from_onnx,
    "in_process_thread": ThreadedOnnxCaller.from_onnx,
    "in_process_unguarded": OnnxCaller,
}
#: Those whose calls never suspend (``in_process_thread`` awaits its worker thread).
SYNCHRONOUS_PRIMARY = ("in_process", "in_process_unguarded")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        model_dir, version = Path(args["model_repository"]), args["model_version"]
        log = pb_utils.Logger
        try:
            reader = open_reader()
        except Exception as err:  # decide on defaults rather than refuse to load
            log.log_warn(f"fraud_scoring: no online features ({err}); using defaults")
            reader = None
        if reader is not None and reader.remote:
            reader.cache = DailyCache.from_settings()  # the hot keys' daily views
        in_process = P.FALLBACK.get(params) == "in_process"
        if in_process:
            onnx = model_dir / P.FALLBACK_ONNX.get(params)
            fallback = onnx_or_unavailable(onnx, FALLBACK, log.log_error)
        else:
            fallback = TritonCaller(pb_utils, FALLBACK)
        # Which fraud_primary version decides (and which scores in shadow): the rollout's
        # parameters; a bad one fails this load, and the version loaded before keeps serving.
        plan = RolloutPlan.from_params(params)
        where = P.PRIMARY.get(params)
        if where in IN_PROCESS_PRIMARY:
            primary_dir = model_dir / P.PRIMARY_DIR.get(params)
            kind = IN_PROCESS_PRIMARY[where]

            def caller_for(v):
                # An artefact that does not load fails its calls, not this load (as the
                # fallback's): a replica that boots without its primary still decides.
                try:
                    return kind(version_folder(primary_dir, v) / "model.onnx", PRIMARY)
                except Exception as err:
                    log.log_error(f"fraud_primary (in process) version {v} did not load: {err}")
                    return Unavailable(PRIMARY.name, str(err))

        elif where == "triton":

            def caller_for(v):
                return TritonCaller(pb_utils, PRIMARY, version=v)

        else:
            raise ValueError(f"PRIMARY: triton or {', '.join(IN_PROCESS_PRIMARY)}, got {where!r}")
        self.primary = RoutedPrimary(caller_for, plan)
        self.callers = [self.primary] if in_process else [self.primary, fallback]
        ladder = ModelLadder(
            self.primary,
            fallback,
            fallback_in_process=in_process,
            hedge=P.HEDGE_FALLBACK.get(params),
            hedge_window_s=P.HEDGE_WINDOW_S.get_float(params),
            primary_timeout_ms=P.PRIMARY_TIMEOUT_MS.get_float(params),
            log=log.log_verbose,
        )
        self.service = FraudService(
            scoring.DecisionPolicy.load(model_dir / version / "decision_policy.json"),
            load_rules(),
            reader,
            ladder,
            budget_ms=P.BUDGET_MS.get_float(params),
            log=log.log_warn,
        )
        flush_s = P.METRICS_FLUSH_S.get_float(params)
        self.metrics = ServiceMetrics(pb_utils.MetricFamily, self.service.breakers, flush_s=flush_s)
        self.metrics.start_timer()  # what the last second counted is reported while idle
        self.tracing = endpoint() is not None
        if self.tracing:  # the SDK's import (~0.1 s) at load, not in the first traced batch
            tracer("fraud-scoring")
        self.outbox = Outbox.from_env(args["model_instance_name"], self.metrics.count, log.log_warn)
        if self.outbox is not None:
            self.metrics.decision_log = self.outbox.decision_log
        if reader is not None:
            self.metrics.cache = reader.cache
        if P.GC_FREEZE.get(params) == "1":
            gc.freeze()  # the sessions, rules and reader stay: no full sweep walks them again
        # Every call of a batch in this process (the primary and the fallback, no shadow
        # awaited beside): nothing to wait for, so no event loop either.
        self.synchronous = (
            P.SYNC_EXECUTE.get(params) == "1"
            and where in SYNCHRONOUS_PRIMARY
            and in_process
            and plan.shadow is None
        )

    def execute(self, requests):
        """The batch decided in this thread where nothing in it waits (:attr:`synchronous`):
        Triton's Python backend runs a coroutine that ``execute`` returns on its event-loop
        thread, a hand-off per batch; otherwise that coroutine."""
        if self.synchronous:
            return run_now(self._decide(requests))
        return self._decide(requests)

    async def _decide(self, requests):
        entered = time.perf_counter()
        traced = BatchTrace.of(requests) if self.tracing else None
        for caller in self.callers:
            caller.trace = traced.first_trace if traced is not None else None
        timeline = traced.timeline if traced is not None else None
        batch = await self.service.handle(scoring_requests(pb_utils, requests), timeline)
        decided = time.perf_counter()
        total_us = self.service.total_us(batch)
        out = responses(pb_utils, batch, total_us)
        self.metrics.observe(batch, total_us)
        routes = self.primary.take()
        self.metrics.observe_routes(routes)
        if traced is not None:
            responded = time.perf_counter()
            timeline.add("fraud.inputs", entered, batch.started)
            timeline.add("fraud.respond", decided, responded)
            traced.answered(batch, entered, responded)
        if self.outbox is not None:
            contexts = traced.publishing(batch) if traced is not None else None
            self.outbox.send(batch, contexts, routes[-1] if routes else None)
        if traced is not None:
            traced.published_done()
        self.metrics.flush()
        self.service.batch_done()  # from here the instance is idle: the next batch did not queue
        return out

    def finalize(self):
        for caller in self.primary.callers.values():
            if hasattr(caller, "close"):  # the in-process primary's worker thread
                caller.close()
        self.metrics.stop_timer()
        self.metrics.flush(force=True)
        if self.service.reader is not None:
            self.service.reader.close()
        if self.outbox is not None:
            self.outbox.close()
