"""``python -m client rollout`` (``make rollout VERSION=N``): a new ``fraud_primary`` version
from shadow to every decision, or back out, decided on Prometheus's numbers.

The plan, on every replica at once (Triton's model-control API, the operator's key):

1. both versions loaded: ``fraud_primary`` with ``version_policy { specific [champion, N] }``;
2. shadow: ``fraud_scoring`` reloaded with ``ROLLOUT_SHADOW=N`` (``python_backend.fraud.
   rollout``): the challenger scores a share of the batches beside the champion, its scores
   go to the decision log (``shadow_score``) and the metrics, never to a caller;
3. canary: ``ROLLOUT_CANARY=N`` decides 1%, 10%, 50%, then 100% of the batches;
4. after each step the tool reads Prometheus over the step's window: the challenger's share
   of failed calls, its call time (p99) against the champion's, the population stability
   index (PSI) of its scores against the champion's, the share of decisions over budget and
   the share that left the primary path. A gate broken rolls back at once; all kept at 100%
   promotes;
5. promote: ``config.pbtxt`` pins N (a restart serves N), the replicas load N alone, the
   rollout parameters go. Roll back: the champion decides alone again, N is unloaded and its
   folder moved to ``build/rollouts/rejected/`` (nothing loads it by mistake later).

Every step, number and reason goes to ``build/reports/rollout-<N>.json`` and ``.md``.

Canary by versioned calls inside the BLS, not by Envoy's weighted clusters: the weights
would split whole replicas (a replica per version: here a third Triton on two cores, about
1 GB and the CPU of its stubs) and the share would be of requests, not decisions; the BLS
splits batches of one server, keeps the champion's answer as the fallback rung of a failed
canary call, and shadow needs the BLS anyway (the caller must get the champion's answer).
The cost is one reload of ``fraud_scoring`` per step (the old version serves until the new
one is loaded) and a label on the model-call metrics.

Modules: ``publish`` (the versions on disk, the pin in ``config.pbtxt``, a candidate put
beside the champion), ``prometheus`` (a step's numbers read from Prometheus), ``gates`` (what
a challenger must keep, and a step's verdict), ``orchestrate`` (``Rollout``: the reloads, one
replica at a time, the steps held and judged, promote or roll back) and ``report`` (the JSON
and Markdown report). Imports run one way: ``orchestrate`` uses the four others, none of
them uses it.
"""

from client.rollout.gates import Gates, Step, judge, psi_limit
from client.rollout.orchestrate import BLS, STEPS, Rollout
from client.rollout.prometheus import Prometheus, measure, service_health
from client.rollout.publish import (
    MODEL,
    MODEL_FILES,
    REJECTED,
    _invert,
    pin,
    pinned,
    publish,
    versions_on_disk,
)
from client.rollout.report import markdown, write_report

__all__ = [
    "BLS",
    "MODEL",
    "MODEL_FILES",
    "REJECTED",
    "STEPS",
    "Gates",
    "Prometheus",
    "Rollout",
    "Step",
    "_invert",
    "judge",
    "markdown",
    "measure",
    "pin",
    "pinned",
    "psi_limit",
    "publish",
    "service_health",
    "versions_on_disk",
    "write_report",
]
