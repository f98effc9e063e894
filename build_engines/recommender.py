"""``make recommender``: MovieLens-100k -> a two-tower model with a last-five-clicks encoder ->
evaluation against a popularity baseline and against itself without the clicks -> ONNX ->
the offline feature files -> the Triton repository.

Ratings in time order are the click stream. The split is by time: the first
``TRAIN_FRACTION`` of the ratings (by timestamp) train, the rest evaluate. Each evaluated
rating asks: given the user's embedding (learnt on the training period) and the five items
they rated just before it, is the item they rated next in the top 5 among the items they had
not rated yet? Recall@5 (one target per case, so the hit rate) and NDCG@5.

The model: ``query = user_embedding + tanh(W · mean(item_in[last five] + position))``, and
``score(item) = query · item_out[item] + bias[item]``, trained with a softmax over every item.
The served scorer takes the precomputed user embedding and the last five items and returns a
score per item; the user tower becomes a Feast feature (``user_embedding``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from build_engines.log import log
from python_backend.paths import MODEL_REPOSITORY, MOVIELENS_DATA, REPORTS
from python_backend.recommender.core import (
    CLICK_BUFFER,
    EMBEDDING_DIM,
    LAST_N,
    RECOMMEND,
    RECOMMEND_MAX_BATCH,
    SCORER,
    TOP_K,
    USER_JOIN_KEY,
    Catalog,
)

PACKAGE = "recbole"
MEMBERS = {
    "recbole/dataset_example/ml-100k/ml-100k.inter": "ratings.tsv",
    "recbole/dataset_example/ml-100k/ml-100k.item": "items.tsv",
}
REPOSITORY = MODEL_REPOSITORY
REPORT = REPORTS / "recommender_quality.json"
TRAIN_FRACTION = 0.8
#: Popularity (baseline and fallback) counts the ratings of the last days before the split.
POPULAR_WINDOW_DAYS = 30
POPULARITY_LIST = 200


@dataclass(frozen=True)
class RecConfig:
    epochs: int = 12
    batch_size: int = 512
    learning_rate: float = 3e-3
    weight_decay: float = 1e-5
    dim: int = EMBEDDING_DIM
    seed: int = 7
    #: Evaluate on at most this many test ratings (None: all).
    eval_limit: int | None = None


def load(data_dir: Path = MOVIELENS_DATA) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ratings (user_id, item_id, rating, ts_ms) in time order, and item titles."""
    from build_engines.real_data import extract_from_wheel

    targets = {member: data_dir / name for member, name in MEMBERS.items()}
    if not all(t.exists() for t in targets.values()):
        log(f"fetching MovieLens-100k ({PACKAGE}, pinned in requirements-data.txt)")
        extract_from_wheel(PACKAGE, targets)
    ratings = pd.read_csv(data_dir / "ratings.tsv", sep="\t")
    ratings.columns = ["user_id", "item_id", "rating", "ts"]
    ratings["ts_ms"] = (ratings.pop("ts") * 1000).astype(np.int64)
    ratings = ratings.astype({"user_id": np.int64, "item_id": np.int64})
    ratings = ratings.sort_values(["ts_ms", "user_id", "item_id"], kind="stable")
    items = pd.read_csv(data_dir / "items.tsv", sep="\t", usecols=[0, 1, 2])
    items.columns = ["item_id", "title", "year"]
    year = pd.to_numeric(items["year"], errors="coerce")  # a few are "unkonwn"
    items["title"] = [
        f"{t} ({int(y)})" if pd.notna(y) else str(t)
        for t, y in zip(items["title"], year, strict=True)
    ]
    return ratings.reset_index(drop=True), items[["item_id", "title"]]


@dataclass
class Cases:
    """One row per rating: the user, the five items rated before it (0 pads), the item."""

    user: np.ndarray
    last: np.ndarray
    target: np.ndarray
    ts_ms: np.ndarray
    #: Position of the rating in its user's history (for "items seen before").
    position: np.ndarray

    def take(self, mask: np.ndarray) -> Cases:
        return Cases(*(getattr(self, f)[mask] for f in self.__dataclass_fields__))


def cases(ratings: pd.DataFrame) -> tuple[Cases, dict[int, np.ndarray]]:
    """Every rating as a case, and each user's items in time order."""
    ordered = ratings.sort_values(["user_id", "ts_ms", "item_id"], kind="stable")
    users = ordered["user_id"].to_numpy()
    items = ordered["item_id"].to_numpy()
    starts = np.r_[0, np.flatnonzero(np.diff(users)) + 1]
    position = np.arange(len(users)) - np.repeat(starts, np.diff(np.r_[starts, len(users)]))
    last = np.zeros((len(users), LAST_N), dtype=np.int64)
    for k in range(1, LAST_N + 1):
        ok = position >= k
        last[ok, LAST_N - k] = items[np.flatnonzero(ok) - k]
    ends = np.r_[starts[1:], len(users)]
    history = {int(users[s]): items[s:e] for s, e in zip(starts, ends, strict=True)}
    return Cases(users, last, items, ordered["ts_ms"].to_numpy(), position), history


def _torch_model(n_users: int, n_items: int, cfg: RecConfig, use_clicks: bool):
    import torch
    from torch import nn

    class TwoTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.use_clicks = use_clicks
            self.user = nn.Embedding(n_users + 1, cfg.dim)
            self.item_in = nn.Embedding(n_items + 1, cfg.dim, padding_idx=0)
            self.position = nn.Parameter(torch.zeros(LAST_N, cfg.dim))
            self.session = nn.Linear(cfg.dim, cfg.dim)
            self.item_out = nn.Embedding(n_items + 1, cfg.dim)
            self.bias = nn.Parameter(torch.zeros(n_items + 1))
            for table in (self.user, self.item_in, self.item_out):
                nn.init.normal_(table.weight, std=0.05)

        def score(self, user_vector, last):
            query = user_vector
            if self.use_clicks:
                mask = (last > 0).unsqueeze(-1).to(user_vector.dtype)
                pooled = ((self.item_in(last) + self.position) * mask).sum(1)
                pooled = pooled / mask.sum(1).clamp(min=1.0)
                query = query + torch.tanh(self.session(pooled))
            return query @ self.item_out.weight.T + self.bias

        def forward(self, users, last):
            return self.score(self.user(users), last)

    return TwoTower()


def scorer_module(model):
    """The served half of ``model``: (user embedding, last five items) -> a score per item."""
    from torch import nn

    class Scorer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, user_embedding, last_items):
            return self.model.score(user_embedding, last_items)

    return Scorer()


def train(train: Cases, n_users: int, n_items: int, cfg: RecConfig, use_clicks: bool, label=""):
    import torch
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = _torch_model(n_users, n_items, cfg, use_clicks)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    users = torch.from_numpy(train.user)
    last = torch.from_numpy(train.last)
    target = torch.from_numpy(train.target)
    loss_fn = torch.nn.CrossEntropyLoss()
    losses = []
    with torch.enable_grad():
        for _epoch in tqdm(range(cfg.epochs), desc=f"recommender {label}", unit="epoch"):
            model.train()
            order = torch.from_numpy(rng.permutation(len(users)))
            total = 0.0
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                optimizer.zero_grad()
                loss = loss_fn(model(users[idx], last[idx]), target[idx])
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
            losses.append(round(total / len(order), 4))
    model.eval()
    return model, losses


def ranks(scores: np.ndarray, test: Cases, history: dict[int, np.ndarray]) -> np.ndarray:
    """Rank (0 = best) of each case's target among the items its user had not rated before."""
    out = np.empty(len(test.target), dtype=np.int64)
    for i in range(len(test.target)):
        row = scores[i].astype(np.float64, copy=True)
        row[0] = -np.inf
        seen = history[int(test.user[i])][: test.position[i]]
        row[seen] = -np.inf
        out[i] = int(np.sum(row > row[test.target[i]]))
    return out


def quality(rank: np.ndarray, k: int = TOP_K) -> dict:
    hit = rank < k
    return {
        f"recall@{k}": round(float(hit.mean()), 4),
        f"ndcg@{k}": round(float(np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0).mean()), 4),
    }


def model_scores(model, test: Cases, batch: int = 2048) -> np.ndarray:
    import torch

    parts = []
    with torch.no_grad():
        for s in range(0, len(test.user), batch):
            users = torch.from_numpy(test.user[s : s + batch])
            parts.append(model(users, torch.from_numpy(test.last[s : s + batch])).numpy())
    return np.concatenate(parts)


def export_onnx(model, path: Path) -> float:
    """The scorer to ONNX (dynamic batch); returns max |onnx - torch| on a sample."""
    import onnxruntime as ort
    import torch

    scorer = scorer_module(model).eval()
    sample = (torch.randn(4, EMBEDDING_DIM), torch.randint(0, 50, (4, LAST_N)))
    batch = torch.export.Dim("batch", min=1, max=1024)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        scorer,
        sample,
        str(path),
        input_names=[s.name for s in SCORER.inputs],
        output_names=[SCORER.outputs[0].name],
        dynamic_shapes={"user_embedding": {0: batch}, "last_items": {0: batch}},
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {s.name: t.numpy() for s, t in zip(SCORER.inputs, sample, strict=True)}
    with torch.no_grad():
        expected = scorer(*sample).numpy()
    return float(np.abs(session.run(None, feeds)[0] - expected).max())


def scorer_config() -> str:
    from build_engines import model_config

    return model_config.render(
        {"name": SCORER.name, "backend": "python", "max_batch_size": RECOMMEND_MAX_BATCH},
        model_config.io(SCORER),
        {"dynamic_batching": {"max_queue_delay_microseconds": 0}},
        model_config.instances(1),
        # Warm at load: the first call into a fresh session took 60 ms in a test (the BLS's
        # timeout sent that user to the popularity list).
        model_config.warmup(SCORER),
    )


def recommend_config(budget_ms: float) -> str:
    from build_engines import model_config

    return model_config.render(
        {"name": RECOMMEND.name, "backend": "python", "max_batch_size": RECOMMEND_MAX_BATCH},
        model_config.io(RECOMMEND),
        {"dynamic_batching": {"max_queue_delay_microseconds": 0}},
        model_config.instances(2),
        model_config.parameters({"BUDGET_MS": f"{budget_ms:g}"}),
    )


def feature_files(model, ratings: pd.DataFrame, cutoff_ms: int, data_dir: Path) -> None:
    """The offline store: each user's embedding and items rated before the split
    (``user_embedding``), and their click buffer as of the split (``user_recent_clicks``)."""
    from python_backend.recommender.core import clicks_source, user_source

    before = ratings[ratings["ts_ms"] < cutoff_ms].sort_values(["user_id", "ts_ms", "item_id"])
    weights = model.user.weight.detach().numpy()
    grouped = before.groupby("user_id")
    users = np.array(sorted(grouped.groups), dtype=np.int64)
    stamp = pd.Timestamp(cutoff_ms, unit="ms", tz="UTC")
    pd.DataFrame(
        {
            USER_JOIN_KEY: users,
            "event_timestamp": stamp,
            "embedding": [weights[u].astype(np.float32).tolist() for u in users],
            "seen_items": [grouped.get_group(u)["item_id"].tolist() for u in users],
        }
    ).to_parquet(user_source(data_dir), index=False)
    tail = before.groupby("user_id").tail(CLICK_BUFFER)
    rows = []
    for user, part in tail.groupby("user_id"):
        rows.append(
            {
                USER_JOIN_KEY: int(user),
                "event_timestamp": pd.Timestamp(int(part["ts_ms"].iloc[-1]), unit="ms", tz="UTC"),
                "recent_ts_ms": part["ts_ms"].tolist(),
                "recent_items": part["item_id"].tolist(),
                "recent_click_ids": [
                    f"ml-{user}-{i}-{t}"
                    for i, t in zip(part["item_id"], part["ts_ms"], strict=True)
                ],
            }
        )
    pd.DataFrame(rows).to_parquet(clicks_source(data_dir), index=False)


def build(
    cfg: RecConfig = RecConfig(),
    data_dir: Path = MOVIELENS_DATA,
    repository: Path = REPOSITORY,
    report_path: Path = REPORT,
    budget_ms: float = 80.0,
) -> dict:
    """Everything ``make recommender`` does; returns the quality report."""
    started = time.perf_counter()
    ratings, items = load(data_dir)
    cutoff_ms = int(np.quantile(ratings["ts_ms"], TRAIN_FRACTION))
    every, history = cases(ratings)
    n_users, n_items = int(ratings["user_id"].max()), int(ratings["item_id"].max())
    is_train = every.ts_ms < cutoff_ms
    train_cases = every.take(is_train)
    known = np.isin(every.user, np.unique(train_cases.user))
    test = every.take(~is_train & known)
    cold = int((~is_train & ~known).sum())
    if cfg.eval_limit and len(test.user) > cfg.eval_limit:
        rng = np.random.default_rng(cfg.seed)
        pick = np.sort(rng.choice(len(test.user), cfg.eval_limit, replace=False))
        test = test.take(pick)
    log(
        f"movielens: {len(ratings):,} ratings, {n_users} users, {n_items} items; "
        f"train {int(is_train.sum()):,} before {pd.Timestamp(cutoff_ms, unit='ms'):%Y-%m-%d}, "
        f"evaluate {len(test.user):,} ({cold:,} ratings of users unseen in training left out)"
    )
    since = cutoff_ms - POPULAR_WINDOW_DAYS * 86_400_000
    window = ratings[(ratings["ts_ms"] < cutoff_ms) & (ratings["ts_ms"] >= since)]
    counts = np.bincount(window["item_id"], minlength=n_items + 1).astype(np.float64)
    popularity = np.argsort(-counts[1:], kind="stable")[:POPULARITY_LIST] + 1
    results = {"popularity": quality(ranks(np.tile(counts, (len(test.user), 1)), test, history))}
    models = {}
    for name, use_clicks in (("two_tower_without_last5", False), ("two_tower_with_last5", True)):
        model, losses = train(train_cases, n_users, n_items, cfg, use_clicks, label=name)
        scored = quality(ranks(model_scores(model, test), test, history))
        results[name] = {**scored, "train_loss": losses}
        models[name] = model
    served = models["two_tower_with_last5"]
    scorer_dir = repository / SCORER.name / "1"
    parity = export_onnx(served, scorer_dir / "model.onnx")
    (repository / SCORER.name / "config.pbtxt").write_text(scorer_config())
    (repository / RECOMMEND.name / "1").mkdir(parents=True, exist_ok=True)
    (repository / RECOMMEND.name / "config.pbtxt").write_text(recommend_config(budget_ms))
    titles = dict(zip(items["item_id"].astype(int), items["title"], strict=True))
    Catalog(titles, [int(i) for i in popularity]).write(repository / RECOMMEND.name / "1")
    feature_files(served, ratings, cutoff_ms, data_dir)
    base = results["popularity"][f"recall@{TOP_K}"]
    report = {
        "data": {
            "ratings": len(ratings),
            "users": n_users,
            "items": n_items,
            "split": f"time: first {TRAIN_FRACTION:.0%} of ratings train",
            "cutoff": pd.Timestamp(cutoff_ms, unit="ms").isoformat(),
            "train_cases": int(is_train.sum()),
            "test_cases": len(test.user),
            "cold_start_cases_left_out": cold,
        },
        "config": asdict(cfg),
        "results": results,
        "lift_over_popularity": {
            k: round(v[f"recall@{TOP_K}"] / base, 2) if base else None for k, v in results.items()
        },
        "onnx_max_abs_diff": parity,
        "seconds": round(time.perf_counter() - started, 1),
    }
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2))
    log(table(report))
    return report


def table(report: dict) -> str:
    lines = [f"{'model':<26}{'Recall@5':>10}{'NDCG@5':>10}"]
    for name, r in report["results"].items():
        lines.append(f"{name:<26}{r[f'recall@{TOP_K}']:>10.4f}{r[f'ndcg@{TOP_K}']:>10.4f}")
    return "\n".join(lines)


def built(repository: Path = REPOSITORY, data_dir: Path = MOVIELENS_DATA) -> bool:
    from python_backend.recommender.core import user_source

    return (
        (repository / SCORER.name / "1" / "model.onnx").exists()
        and (repository / RECOMMEND.name / "1" / "catalog.json").exists()
        and user_source(data_dir).exists()
    )
