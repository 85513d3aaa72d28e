"""Baselines that evaluation runs beside xdrec's own methods, each a real model fitted on the same split.

- ``popularity``: target items ranked by their count of training interactions;
- ``als_target``: Spark MLlib ALS (implicit feedback) on the target domain's training interactions;
- ``als_merged``: the same ALS on both domains' training interactions merged into one matrix;
- ``emcdr``: EMCDR (Man et al., IJCAI 2017) over matrix factorisation: ALS factors per domain, and an
  MLP mapping source user factors to target user factors, fitted on users warm in both domains; cold
  users are scored with their mapped factors.

Where the target domain has ratings, :func:`rating_predictions` adds the rating-prediction yardsticks
that MAE and RMSE are reported for (xdrec's own models rank implicit feedback and predict no ratings).

Each baseline becomes a :class:`~xdrec.modeling.ranking.FactorScorer` saved as ``factors.npz`` under
``<warehouse>/baselines/<name>/``, which the evaluation UDFs load just as they load a model artifact.
"""
from __future__ import annotations

import os
from functools import reduce

import numpy as np
import torch
from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from torch import nn

from xdrec.files import atomic_path
from xdrec.modeling.ranking import FactorScorer

FACTORS_FILE = "factors.npz"


def save_scorer(path: str, scorer: FactorScorer) -> str:
    """Write a scorer's factors atomically as ``<path>/factors.npz``."""
    with atomic_path(os.path.join(path, FACTORS_FILE)) as temporary, open(temporary, "wb") as handle:
        np.savez(handle, user_factors=scorer.user_factors.numpy(), item_factors=scorer.item_factors.numpy(),
                 item_bias=scorer.item_bias.numpy())
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


def rating_predictions(train: DataFrame, test: DataFrame, target_domain: str, rank: int, iterations: int,
                       regularization: float, seed: int) -> DataFrame:
    """Predicted ratings of the target ``test`` pairs: (model, user_idx, item_idx, cold, rating, prediction).

    ``train`` and ``test`` rows have domain, user_idx, item_idx, rating (not null), and ``test`` also cold.
    Models: ``global_mean`` (the target's mean training rating); ``user_mean`` (the user's mean target
    rating; a cold-start user's mean source rating, shifted by the difference of the domains' means: the
    simplest cross-domain transfer; else the global mean); ``als_explicit`` (Spark MLlib ALS on the target
    ratings; users or items it has no factors for get ``user_mean``'s prediction).
    """
    target = train.where(F.col("domain") == target_domain)
    domain_means = train.groupBy("domain").agg(F.avg("rating").alias("domain_mean"))
    global_mean = target.agg(F.avg("rating")).first()[0]
    # A user's mean in each domain, moved onto the target's scale by the difference of domain means.
    per_user = (train.groupBy("domain", "user_idx").agg(F.avg("rating").alias("mean"))
                .join(domain_means, "domain")
                .select("user_idx", F.when(F.col("domain") == target_domain, 0).otherwise(1).alias("order"),
                        (F.col("mean") - F.col("domain_mean") + F.lit(global_mean)).alias("shifted")))
    user_mean = (per_user.groupBy("user_idx")
                 .agg(F.min_by("shifted", "order").alias("user_mean")))
    als = ALS(rank=rank, maxIter=iterations, regParam=regularization, implicitPrefs=False, userCol="user_idx",
              itemCol="item_idx", ratingCol="rating", seed=seed, coldStartStrategy="nan"
              ).fit(target.select("user_idx", "item_idx", "rating"))
    predicted = (als.transform(test.select("user_idx", "item_idx", "cold", "rating"))
                 .join(user_mean, "user_idx", "left")
                 .withColumn("user_mean", F.coalesce("user_mean", F.lit(global_mean))))
    models = {"global_mean": F.lit(global_mean),
              "user_mean": F.col("user_mean"),
              "als_explicit": F.when(F.isnan("prediction"), F.col("user_mean")).otherwise(F.col("prediction"))}
    return reduce(DataFrame.unionByName, [
        predicted.select(F.lit(name).alias("model"), "user_idx", "item_idx", "cold", "rating",
                         column.cast("double").alias("prediction"))
        for name, column in models.items()])
