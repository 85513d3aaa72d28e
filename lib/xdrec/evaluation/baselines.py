"""Baselines that evaluation runs beside xdrec's own methods, each a real model fitted on the same split
(the fitting itself: :mod:`xdrec.training.factors`): ``popularity``, ``als_target``, ``als_merged``, ``emcdr``.

Where the target domain has ratings, :func:`rating_predictions` adds the rating-prediction yardsticks
that MAE and RMSE are reported for (xdrec's own models rank implicit feedback and predict no ratings).

Each baseline becomes a :class:`~xdrec.modeling.model.FactorModel` saved as ``factors.npz`` under
``<warehouse>/baselines/<name>/``, which the evaluation UDFs load just as they load a model artifact.
A baseline that the train stage fitted as a servable model (``train.factor_models``) is evaluated from
its artifact instead, and ``als_target`` is read from the train stage's EMCDR when that ran with the same
ALS settings (:func:`als_target_from_emcdr`).
"""
from __future__ import annotations

import io
from functools import reduce

import numpy as np
from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from xdrec import files
from xdrec.modeling.model import FactorModel

FACTORS_FILE = "factors.npz"


def save_scorer(path: str, model: FactorModel) -> str:
    """Write a baseline's factors atomically as ``<path>/factors.npz``."""
    buffer = io.BytesIO()
    np.savez(buffer, user_factors=model.user_embedding.weight.numpy(),
             item_factors=model.item_embedding.weight.numpy(), item_bias=model.item_bias.weight[:, 0].numpy())
    files.write_bytes(files.join(path, FACTORS_FILE), buffer.getvalue())
    return path


def als_target_from_emcdr(emcdr: FactorModel, target_train: DataFrame) -> FactorModel:
    """The ``als_target`` baseline read from an EMCDR model fitted with the same ALS settings, rather than
    fitted again: EMCDR keeps ALS-on-the-target's factors for every user with target training rows
    (``target_train``: the target domain's training rows, user_idx) and maps the others', which ALS on the
    target alone leaves at zero.

    >>> als_target_from_emcdr(artifact.load(emcdr_path).model, train.where("domain = 'movies'"))  # doctest: +SKIP
    """
    user_factors = emcdr.user_embedding.weight.numpy()
    known = np.zeros(len(user_factors), dtype=bool)
    known[[row["user_idx"] for row in target_train.select("user_idx").distinct().collect()]] = True
    return FactorModel(np.where(known[:, None], user_factors, 0.0), emcdr.item_embedding.weight.numpy())


def load_scorer(path: str) -> FactorModel:
    with np.load(io.BytesIO(files.read_bytes(files.join(path, FACTORS_FILE)))) as factors:
        return FactorModel(factors["user_factors"], factors["item_factors"], factors["item_bias"])


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
