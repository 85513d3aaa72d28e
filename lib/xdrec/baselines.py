"""Baselines that evaluation runs beside xdrec's own methods, each a real model fitted on the same split.

- ``popularity``: target items ranked by their count of training interactions;
- ``als_target``: Spark MLlib ALS (implicit feedback) on the target domain's training interactions;
- ``als_merged``: the same ALS on both domains' training interactions merged into one matrix;
- ``emcdr``: EMCDR (Man et al., IJCAI 2017) over matrix factorisation: ALS factors per domain, and an
  MLP mapping source user factors to target user factors, fitted on users warm in both domains; cold
  users are scored with their mapped factors.

Each baseline becomes a :class:`~xdrec.ranking.FactorScorer` saved as ``factors.npz`` under
``<warehouse>/baselines/<name>/``, which the evaluation UDFs load just as they load a model artifact.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from torch import nn

from xdrec.ranking import FactorScorer

FACTORS_FILE = "factors.npz"


def save_scorer(path: str, scorer: FactorScorer) -> str:
    """Write a scorer's factors atomically as ``<path>/factors.npz``."""
    os.makedirs(path, exist_ok=True)
    temporary = os.path.join(path, "factors.tmp.npz")
    np.savez(temporary, user_factors=scorer.user_factors.numpy(), item_factors=scorer.item_factors.numpy(),
             item_bias=scorer.item_bias.numpy())
    os.replace(temporary, os.path.join(path, FACTORS_FILE))
    return path


def load_scorer(path: str) -> FactorScorer:
    with np.load(os.path.join(path, FACTORS_FILE)) as factors:
        return FactorScorer(factors["user_factors"], factors["item_factors"], factors["item_bias"])


def popularity(train: DataFrame, num_users: int, num_items: int) -> FactorScorer:
    """Bias-only scorer: an item's score is its number of training interactions."""
    counts = np.zeros(num_items, dtype=np.float32)
    for row in train.groupBy("item_idx").count().collect():
        counts[row["item_idx"]] = row["count"]
    return FactorScorer(np.zeros((num_users, 1)), np.zeros((num_items, 1)), counts)


def als_factors(train: DataFrame, num_users: int, num_items: int, rank: int, iterations: int,
                regularization: float, alpha: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Implicit-feedback ALS on (user_idx, item_idx) rows; dense factor matrices indexed by idx."""
    ratings = train.select("user_idx", "item_idx").distinct().withColumn("rating", F.lit(1.0))
    model = ALS(rank=rank, maxIter=iterations, regParam=regularization, alpha=alpha, implicitPrefs=True,
                userCol="user_idx", itemCol="item_idx", ratingCol="rating", seed=seed,
                coldStartStrategy="nan").fit(ratings)
    user_factors = np.zeros((num_users, rank), dtype=np.float32)
    item_factors = np.zeros((num_items, rank), dtype=np.float32)
    for row in model.userFactors.collect():
        user_factors[row["id"]] = row["features"]
    for row in model.itemFactors.collect():
        item_factors[row["id"]] = row["features"]
    return user_factors, item_factors


def fit_mapping(source_vectors: np.ndarray, target_vectors: np.ndarray, hidden_dim: int, epochs: int,
                seed: int) -> nn.Module:
    """EMCDR's mapping: an MLP from source to target user factors, trained by mean squared error."""
    torch.manual_seed(seed)
    dim_in, dim_out = source_vectors.shape[1], target_vectors.shape[1]
    mapping = nn.Sequential(nn.Linear(dim_in, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, dim_out))
    optimizer = torch.optim.Adam(mapping.parameters(), lr=0.01, weight_decay=1e-4)
    inputs, outputs = torch.from_numpy(source_vectors), torch.from_numpy(target_vectors)
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(mapping(inputs), outputs)
        loss.backward()
        optimizer.step()
    return mapping.eval()


def emcdr(source_train: DataFrame, target_train: DataFrame, num_users: int, num_items: int, rank: int,
          iterations: int, regularization: float, alpha: float, seed: int) -> FactorScorer:
    """EMCDR over ALS factors: warm target users keep their own factors, others get mapped ones."""
    source_users, _ = als_factors(source_train, num_users, num_items, rank, iterations, regularization, alpha, seed)
    target_users, target_items = als_factors(target_train, num_users, num_items, rank, iterations,
                                             regularization, alpha, seed)
    has_source = np.abs(source_users).sum(axis=1) > 0
    has_target = np.abs(target_users).sum(axis=1) > 0
    overlap = has_source & has_target
    mapping = fit_mapping(source_users[overlap], target_users[overlap], hidden_dim=2 * rank, epochs=300, seed=seed)
    with torch.no_grad():
        mapped = mapping(torch.from_numpy(source_users)).numpy()
    user_factors = np.where(has_target[:, None], target_users, np.where(has_source[:, None], mapped, 0.0))
    return FactorScorer(user_factors, target_items)
