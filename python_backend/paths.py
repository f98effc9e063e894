"""Where things live in a checkout, declared once. Everything else takes its paths from here."""

from __future__ import annotations

from pathlib import Path

#: The repository's root (``python_backend`` is installed in development mode in both
#: environments, so this is the checkout, not a copy in site-packages).
ROOT = Path(__file__).resolve().parent.parent
#: What the make targets build: data, reports, the feature store, Triton's scratch folders.
BUILD = ROOT / "build"
#: Simulated and real data sets, one folder per scale (``build/data/small``...).
DATA = BUILD / "data"
#: MovieLens 100k and the recommender's offline feature tables.
MOVIELENS_DATA = DATA / "movielens"
#: The Feast registry and the embedded SQLite online store.
FEATURE_REPO_BUILD = BUILD / "feature_repo"
#: The Triton model repository callers are served from.
MODEL_REPOSITORY = ROOT / "model_repository"
#: The serving interpreter (numpy<2, ONNX Runtime, the Triton server wheel; no Feast).
SERVING_VENV = ROOT / ".venv-serving"
#: The background server's state: pid files, logs, the Python backend directory.
TRITON_STATE = BUILD / "triton"
#: ``make serve REPLICAS=N``'s mesh: Envoy's pid and the replicas (the launcher writes it; the
#: watchdog, the rollout and ``make observe`` read it).
MESH_STATE = TRITON_STATE / "mesh.json"
#: Model quality, feature latency and parity reports.
REPORTS = BUILD / "reports"
#: Benchmark and chaos results.
PERF_RESULTS = ROOT / "perf" / "results"
#: What ``make observe`` runs and keeps: the collector's spans, Prometheus's data and config.
OBSERVE = BUILD / "observe"
