"""Tensor contracts of the fraud models and of the ``fraud_scoring`` service, declared once.

The ONNX exports, the generated Triton configs, the engine builder, the BLS, the clients and
the tests read them from here. Shapes leave out the batch dimension, as Triton's ``dims`` do.
"""

from __future__ import annotations

import numpy as np

from python_backend.contract import ModelContract, TensorSpec
from python_backend.fraud.features import (
    CATEGORICAL_COLUMNS,
    SEQUENCE_CHANNELS,
    SEQUENCE_LENGTH,
    TABULAR_COLUMNS,
)
from python_backend.fraud.history import (
    CARD_HISTORY_CHANNELS,
    CARD_HISTORY_LENGTH,
    TERMINAL_HISTORY_CHANNELS,
    TERMINAL_HISTORY_LENGTH,
)

#: Largest batch the model servers accept (dynamic batcher and TensorRT profile).
#: A deep model's PyTorch weights in its version folder, beside its ONNX files: what a retrain
#: fine-tunes the primary from, what the analysis consumer explains the heavy model with.
WEIGHTS_FILE = "model.pt"

MAX_BATCH_SIZE = 256
#: Batch sizes the dynamic batcher prefers and the TensorRT profile is tuned for.
PREFERRED_BATCH_SIZES = (16, 64)

TABULAR = TensorSpec("TABULAR", np.float32, (len(TABULAR_COLUMNS),))
SEQUENCE = TensorSpec("SEQUENCE", np.float32, (SEQUENCE_LENGTH, len(SEQUENCE_CHANNELS)))
CATEGORICAL = TensorSpec("CATEGORICAL", np.int64, (len(CATEGORICAL_COLUMNS),))
PROBABILITY = TensorSpec("PROBABILITY", np.float32, (1,))

#: The deep model: tabular MLP + categorical embeddings + sequence encoder.
PRIMARY = ModelContract("fraud_primary", (TABULAR, SEQUENCE, CATEGORICAL), (PROBABILITY,))
#: The cheap CPU model: tabular features only.
FALLBACK = ModelContract("fraud_fallback", (TABULAR,), (PROBABILITY,))

CARD_HISTORY = TensorSpec(
    "CARD_HISTORY", np.float32, (CARD_HISTORY_LENGTH, len(CARD_HISTORY_CHANNELS))
)
TERMINAL_HISTORY = TensorSpec(
    "TERMINAL_HISTORY", np.float32, (TERMINAL_HISTORY_LENGTH, len(TERMINAL_HISTORY_CHANNELS))
)
#: The heavy model, off the hot path (``feature_repo analyze``): what the primary saw, plus
#: the card's and the terminal's longer histories (``python_backend.fraud.history``).
HEAVY = ModelContract(
    "fraud_heavy",
    (TABULAR, SEQUENCE, CATEGORICAL, CARD_HISTORY, TERMINAL_HISTORY),
    (PROBABILITY,),
)

#: The service's own contract: what callers send to ``fraud_scoring``, one row per
#: transaction, and what they get back. ``STAGE_US`` holds microseconds spent on
#: ``STAGES`` in order, measured inside the server: the feature read, the wait for the
#: primary (its queue, compute and the hops), the extra wait for the fallback when the primary
#: did not answer, the rules and the decision policy, and the request's total in the BLS
#: (from its arrival in ``execute`` to its response, so total minus the others is overhead).
STAGES = ("features", "primary", "fallback", "rules", "total")
DECISIONS = ("APPROVE", "REVIEW", "DECLINE")
PATHS = ("primary", "fallback", "rules")
#: A row that breaks a value rule (NaN amount, unknown epoch...) is not scored: it gets this
#: decision and path, a NaN score and the reasons ``INVALID_INPUT`` and the rule it broke,
#: while the other rows of its request are decided as usual.
INVALID = "INVALID"
INVALID_PATH = "invalid"
SCORING = ModelContract(
    "fraud_scoring",
    (
        TensorSpec("TRANSACTION_ID", np.object_, (1,)),
        TensorSpec("CARD_ID", np.int64, (1,)),
        TensorSpec("TERMINAL_ID", np.int64, (1,)),
        TensorSpec("AMOUNT", np.float32, (1,)),
        TensorSpec("TIMESTAMP_MS", np.int64, (1,)),
    ),
    (
        TensorSpec("SCORE", np.float32, (1,)),
        TensorSpec("DECISION", np.object_, (1,)),
        TensorSpec("PATH", np.object_, (1,)),
        TensorSpec("REASONS", np.object_, (1,)),
        TensorSpec("STAGE_US", np.int64, (len(STAGES),)),
    ),
)

#: Largest batch one ``fraud_scoring`` request may carry.
SCORING_MAX_BATCH = 64
