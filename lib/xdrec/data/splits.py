"""Splits: which interactions train, which are held out for validation and test (docs/data.md, "Splits").

Two layers, both seeded by a hash and never by ``rand()``, so a rerun gives the same split:

- cold-start users (:func:`choose_cold_start_users`): a share of the users present in both domains
  whose target interactions are all held out, "valid" and "test" users apart; their source interactions
  stay for training;
- the warm users' target interactions (:func:`assign_splits`), by ``features.warm_holdout``: "random"
  (a seeded share per interaction), "leave_last_out" (each user's latest interaction to test, the one
  before to valid) or "none" (all train).

Or the split comes with the data (``features.warm_holdout`` "given", :func:`given_cold_start_users`): each
pair keeps its given split, and the target users with held-out pairs but no train pair are cold-start.

Source-domain interactions always train. A warm target user always keeps at least one train interaction.
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

_UNIT_BITS = 53  # a double holds 53 bits exactly
SPLIT_COLUMNS = ("domain", "user_idx", "item_idx", "timestamp", "rating", "weight", "events", "split", "cold")


def hash_unit(*columns: Column | str, seed: int) -> Column:
    """A pseudo-random double in [0, 1), fixed by the columns' values and ``seed``."""
    bits = F.xxhash64(*columns, F.lit(seed)).bitwiseAND(F.lit((1 << _UNIT_BITS) - 1))
    return bits.cast("double") / float(1 << _UNIT_BITS)


def choose_cold_start_users(pairs: DataFrame, source_domain: str, target_domain: str,
                            valid_share: float, test_share: float, seed: int) -> DataFrame:
    """(user_idx, split) of the cold-start users: users of both domains picked by a seeded hash of user_id.

    A share ``valid_share`` of the overlapping users goes to "valid", the next ``test_share`` to "test".
    ``pairs`` has domain, user_id and user_idx.
    """
    def users_of(domain: str) -> DataFrame:
        return pairs.where(F.col("domain") == domain).select("user_id", "user_idx").distinct()

    overlapping = users_of(source_domain).join(users_of(target_domain), ["user_id", "user_idx"])
    draw = hash_unit("user_id", seed=seed)
    split = F.when(draw < valid_share, "valid").when(draw < valid_share + test_share, "test")
    return overlapping.select("user_idx", split.alias("split")).where(F.col("split").isNotNull())


def given_cold_start_users(pairs: DataFrame, target_domain: str) -> DataFrame:
    """(user_idx, split) of the target users whose given splits hold out all their pairs: "test" when any
    of their pairs is a test pair, else "valid". ``pairs`` has domain, user_idx and given_split."""
    target = pairs.where(F.col("domain") == target_domain).groupBy("user_idx").agg(
        F.bool_or(F.col("given_split") == "train").alias("trains"),
        F.bool_or(F.col("given_split") == "test").alias("tested"))
    return target.where(~F.col("trains")).select("user_idx", F.when(F.col("tested"), "test").otherwise("valid").alias("split"))


def _random_holdout(valid_ratio: float, test_ratio: float, seed: int) -> tuple[Column, Column]:
    """(split, closeness to train): a seeded draw per (user, item); the highest draw is nearest to train."""
    draw = hash_unit("user_id", "item_id", seed=seed)
    split = F.when(draw < valid_ratio, "valid").when(draw < valid_ratio + test_ratio, "test").otherwise("train")
    return split, draw


def _leave_last_out(seed: int) -> tuple[Column, Column]:
    """(split, closeness to train): a user's latest interaction is "test", the one before "valid", when
    the user has that many more; equal timestamps are ordered by a seeded hash."""
    per_user = Window.partitionBy("domain", "user_idx")
    latest_first = per_user.orderBy(F.col("timestamp").desc(), hash_unit("user_id", "item_id", seed=seed).desc())
    recency = F.row_number().over(latest_first)
    count = F.count("*").over(per_user)
    split = F.when((recency == 1) & (count >= 2), "test").when((recency == 2) & (count >= 3), "valid").otherwise("train")
    return split, -recency.cast("double")


def assign_splits(pairs: DataFrame, cold_start_users: DataFrame, target_domain: str, warm_holdout: str,
                  valid_ratio: float, test_ratio: float, seed: int) -> DataFrame:
    """Every (domain, user, item) pair of ``pairs`` with ``split`` and ``cold``; columns SPLIT_COLUMNS.

    ``pairs`` has domain, user_id, item_id, user_idx, item_idx, timestamp, rating, weight, events and
    given_split. A cold-start user's target pairs all go to the user's split. Warm users' target pairs are
    held out by ``warm_holdout``; when that leaves a warm user no train pair, the one nearest to train
    goes back. With "given" every target pair keeps its given split, a cold-start user's pairs included.
    """
    cold = cold_start_users.select("user_idx", F.col("split").alias("cold_split"), F.lit(True).alias("cold"))
    is_target = F.col("domain") == target_domain
    if warm_holdout == "random":
        warm_split, closeness = _random_holdout(valid_ratio, test_ratio, seed)
    elif warm_holdout == "leave_last_out":
        warm_split, closeness = _leave_last_out(seed)
    elif warm_holdout == "none":
        warm_split, closeness = F.lit("train"), F.lit(0.0)
    elif warm_holdout == "given":
        warm_split, closeness = F.col("given_split"), F.lit(0.0)
    else:
        raise ValueError(f"unknown warm_holdout {warm_holdout!r}")
    cold_split = F.col("given_split") if warm_holdout == "given" else F.col("cold_split")
    split = F.when(~is_target, "train").when(F.col("cold"), cold_split).otherwise(warm_split)
    per_user = Window.partitionBy("domain", "user_idx")
    nearest_to_train = per_user.orderBy(F.col("closeness").desc(), "item_idx")
    has_no_train = ~F.max((F.col("split") == "train").cast("int")).over(per_user).cast("boolean")
    return (
        pairs.join(F.broadcast(cold), "user_idx", "left")
        .withColumn("cold", F.coalesce(F.col("cold"), F.lit(False)))
        .withColumn("closeness", closeness)
        .withColumn("split", split)
        .withColumn("split", F.when(is_target & ~F.col("cold") & has_no_train
                                    & (F.row_number().over(nearest_to_train) == 1), "train")
                    .otherwise(F.col("split")))
        .select(*SPLIT_COLUMNS)
    )
