"""Factor models fitted by Spark MLlib, outside xdrec's training loop: the ALS family that the train stage
offers to model selection (``train.factor_models``) and that evaluation fits as baselines.

- ``popularity``: target items ranked by their count of training interactions (a bias alone);
- ALS (implicit feedback) on one domain's or on both domains' training interactions merged into one
  matrix (``als_merged``: users shared across domains carry source behaviour to the target);
- ``emcdr``: EMCDR (Man et al., IJCAI 2017) over matrix factorisation: ALS factors per domain, and an
  MLP mapping source user factors to target user factors, fitted on users warm in both domains; cold
  users are scored with their mapped factors.

Each is a :class:`~xdrec.modeling.model.FactorModel`, so it is ranked and served like a trained model.
"""
from __future__ import annotations

import numpy as np
import torch
from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from torch import nn

from xdrec.config import AlsConfig
from xdrec.modeling.model import FactorModel


def popularity(train: DataFrame, num_users: int, num_items: int) -> FactorModel:
    """Bias-only scorer: an item's score is its number of training interactions."""
    counts = np.zeros(num_items, dtype=np.float32)
    for row in train.groupBy("item_idx").count().collect():
        counts[row["item_idx"]] = row["count"]
    return FactorModel(np.zeros((num_users, 1)), np.zeros((num_items, 1)), counts)


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
          iterations: int, regularization: float, alpha: float, seed: int) -> FactorModel:
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
    return FactorModel(user_factors, target_items)


def fit_factor_model(name: str, train: DataFrame, source_domain: str, target_domain: str, num_users: int,
                     num_items: int, als: AlsConfig) -> FactorModel:
    """Fit factor model ``name`` (one of ``xdrec.config.BASELINES``) on training rows (domain, user_idx,
    item_idx) of every domain; ``als_merged`` uses them all, the others the source and target's."""
    target_train = train.where(F.col("domain") == target_domain)
    settings = dict(rank=als.rank, iterations=als.iterations, regularization=als.regularization, alpha=als.alpha,
                    seed=als.seed)
    if name == "popularity":
        return popularity(target_train, num_users, num_items)
    if name == "als_target":
        return FactorModel(*als_factors(target_train, num_users, num_items, **settings))
    if name == "als_merged":
        return FactorModel(*als_factors(train, num_users, num_items, **settings))
    if name == "emcdr":
        return emcdr(train.where(F.col("domain") == source_domain), target_train, num_users, num_items, **settings)
    raise ValueError(f"unknown factor model {name!r}")
