"""The strongest conventional baseline: gradient-boosted trees (LightGBM) on the same
tabular and categorical features the models see, without the transaction sequence."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
from tqdm import tqdm

from python_backend.fraud.features import ModelInputs
from python_backend.fraud.heavy_model import tree_features

PARAMS = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 63,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbose": -1,
    "num_threads": 2,
    "seed": 0,
}


def features(inputs: ModelInputs) -> np.ndarray:
    """Tabular columns plus the categorical ids (as numbers the trees can split on); the
    heavy model's trees read the same (``heavy_model.tree_features``)."""
    return tree_features(inputs)


def train(
    train_inputs: ModelInputs,
    y_train: np.ndarray,
    valid_inputs: ModelInputs,
    y_valid: np.ndarray,
    rounds: int = 600,
) -> lgb.Booster:
    """Boost up to ``rounds`` trees, stopping when validation PR-AUC stops improving."""
    n_tab = train_inputs.tabular.shape[1]
    categorical = list(range(n_tab, n_tab + train_inputs.categorical.shape[1]))
    train_set = lgb.Dataset(features(train_inputs), y_train, categorical_feature=categorical)
    valid_set = lgb.Dataset(features(valid_inputs), y_valid, reference=train_set)
    with tqdm(total=rounds, desc="gbdt baseline rounds", leave=False, mininterval=1.0) as bar:
        return lgb.train(
            {**PARAMS, "metric": "average_precision"},
            train_set,
            num_boost_round=rounds,
            valid_sets=[valid_set],
            callbacks=[lgb.early_stopping(50, verbose=False), lambda _env: bar.update()],
        )


def predict(booster: lgb.Booster, inputs: ModelInputs) -> np.ndarray:
    return booster.predict(features(inputs), num_iteration=booster.best_iteration).astype(
        np.float32
    )
