"""Offline evaluation: HR@K and NDCG@K of every scored model and a popularity baseline on held-out
target-domain interactions, for warm users, cold-start users and all of them.

The metric and baseline functions are pure DataFrame transforms; :func:`run_evaluate` is the stage.
"""
from __future__ import annotations

import json
import os
from typing import Any

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from xdrec import tables
from xdrec.config import Config
from xdrec.errors import XdrecError

POPULARITY = "popularity"
METRICS = ("HR", "NDCG")
GROUPS = ("warm", "cold", "all")


def _discount(rank: F.Column) -> F.Column:
    """The DCG gain of a relevant item at 1-based ``rank``: 1 / log2(rank + 1)."""
    return 1.0 / F.log2(rank + 1)


def per_user_metrics(recommendations: DataFrame, test: DataFrame, k: int) -> DataFrame:
    """HR@k and NDCG@k of each (model, test user), binary relevance.

    ``recommendations``: model, user_idx, rank, item_idx. ``test``: user_idx, item_idx, cold (the user is
    a cold-start user). Every model present in ``recommendations`` is paired with every test user, so a
    user the model recommended nothing to scores 0 instead of being dropped. NDCG divides the DCG of the
    hits by the ideal DCG of min(#relevant items, k) hits.

    Columns: model, user_idx, cold, relevant, hits, HR, NDCG.
    """
    relevant = test.select("user_idx", "item_idx").distinct()
    test_users = test.groupBy("user_idx").agg(
        F.bool_or("cold").alias("cold"), F.countDistinct("item_idx").alias("relevant"))
    hits = (
        recommendations.where(F.col("rank") <= k)
        .join(relevant, ["user_idx", "item_idx"])
        .groupBy("model", "user_idx")
        .agg(F.count("*").alias("hits"), F.sum(_discount(F.col("rank"))).alias("dcg"))
    )
    ideal_dcg = F.aggregate(F.sequence(F.lit(1), F.least(F.col("relevant"), F.lit(k))), F.lit(0.0),
                            lambda total, rank: total + _discount(rank))
    return (
        recommendations.select("model").distinct()
        .crossJoin(test_users)
        .join(hits, ["model", "user_idx"], "left")
        .fillna(0, subset=["hits", "dcg"])
        .select("model", "user_idx", "cold", "relevant", "hits",
                (F.col("hits") > 0).cast("double").alias("HR"),
                (F.col("dcg") / ideal_dcg).alias("NDCG"))
    )


def group_metrics(per_user: DataFrame, k: int) -> DataFrame:
    """Means of HR and NDCG over the users of each group ('warm', 'cold', 'all') of each model.

    Columns: model, user_group, metric, k, value, users (the number of users averaged over).
    """
    means = (
        per_user.withColumn("user_group", F.explode(F.array(
            F.when(F.col("cold"), F.lit("cold")).otherwise(F.lit("warm")), F.lit("all"))))
        .groupBy("model", "user_group")
        .agg(F.count("*").alias("users"), *[F.avg(metric).alias(metric) for metric in METRICS])
    )
    return (
        means.unpivot(["model", "user_group", "users"], list(METRICS), "metric", "value")
        .select("model", "user_group", "metric", F.lit(k).alias("k"), "value", "users")
    )


def popularity_recommendations(train: DataFrame, users: DataFrame, item_index: DataFrame, domain: str,
                               k: int, model_version: str) -> DataFrame:
    """The baseline: the ``k`` most interacted ``domain`` items of ``train`` each user has not seen.

    ``train``: user_idx, item_idx (the target domain's training rows); ``users``: user_idx, user_id to
    recommend to; ``item_index``: domain, item_id, item_idx. Ties in popularity go to the lower item index.
    Same columns as the ``recommendations`` table, model 'popularity', score = training interactions.
    """
    popular = (train.groupBy("item_idx").agg(F.count("*").alias("count"))
               .withColumn("popularity_rank", F.row_number().over(
                   Window.orderBy(F.desc("count"), F.asc("item_idx")))))
    seen = train.select("user_idx", "item_idx").distinct()
    seen_counts = seen.groupBy("user_idx").agg(F.count("*").alias("seen"))
    # A user's top k unseen items lie within the (k + #seen) most popular ones.
    candidates = (
        users.join(seen_counts, "user_idx", "left")
        .join(F.broadcast(popular), F.col("popularity_rank") <= F.lit(k) + F.coalesce(F.col("seen"), F.lit(0)))
        .join(seen, ["user_idx", "item_idx"], "left_anti")
    )
    ranked = candidates.withColumn("rank", F.row_number().over(
        Window.partitionBy("user_idx").orderBy("popularity_rank")))
    item_ids = item_index.where(F.col("domain") == domain).select("item_idx", "item_id")
    return (
        ranked.where(F.col("rank") <= k)
        .join(item_ids, "item_idx")
        .select(F.lit(POPULARITY).alias("model"), F.lit(model_version).alias("model_version"),
                F.lit(domain).alias("domain"), "user_idx", "user_id", "rank", "item_idx", "item_id",
                F.col("count").cast("float").alias("score"))
    )


def metrics_dict(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{model: {group: {"HR@k": value, "NDCG@k": value}}}`` from rows of the metrics table."""
    result: dict[str, dict[str, dict[str, float]]] = {}
    for row in rows:
        group = result.setdefault(row["model"], {}).setdefault(row["user_group"], {})
        group[f"{row['metric']}@{row['k']}"] = row["value"]
    return result


def format_table(rows: list[dict[str, Any]], k: int) -> str:
    """An aligned text table: one line per model, HR@k and NDCG@k per user group, with user counts."""
    users = {row["user_group"]: row["users"] for row in rows}
    values = {(row["model"], row["user_group"], row["metric"]): row["value"] for row in rows}
    models = sorted({row["model"] for row in rows}, key=lambda model: (model == POPULARITY, model))
    width = max([len("model"), *map(len, models)])
    labels = [f"{group} ({users.get(group, 0)} users)" for group in GROUPS]
    # Each group spans one cell per metric; widen the cells when its label is longer.
    cell = max(9, *[(len(label) + 2 + len(METRICS) - 1) // len(METRICS) for label in labels])
    group_header = "".join(f"{label:<{cell * len(METRICS)}}" for label in labels)
    metric_header = "".join(f"{f'{metric}@{k}':<{cell}}" for _ in GROUPS for metric in METRICS)
    lines = [f"{'':<{width}}  {group_header}".rstrip(), f"{'model':<{width}}  {metric_header}".rstrip()]
    for model in models:
        cells = [values.get((model, group, metric)) for group in GROUPS for metric in METRICS]
        lines.append(f"{model:<{width}}  " + "".join(
            f"{'-' if value is None else f'{value:.4f}':<{cell}}" for value in cells).rstrip())
    return "\n".join(lines)


def run_evaluate(spark: SparkSession, config: Config) -> dict[str, dict[str, dict[str, float]]]:
    """Evaluate every model in ``recommendations`` plus the popularity baseline on the target test split.

    Writes the ``metrics`` table and ``<warehouse>/reports/metrics.json``, prints the table, and returns
    ``{model: {group: {"HR@k": value, "NDCG@k": value}}}``.
    """
    k, target = config.evaluate.k, config.data.target_domain
    if k > config.score.k:
        raise XdrecError(f"evaluate.k={k} exceeds score.k={config.score.k}: models were asked for fewer items")
    interactions = (tables.read(spark, config.warehouse, tables.INDEXED_INTERACTIONS)
                    .where(F.col("domain") == target))
    test = interactions.where(F.col("split") == "test").select("user_idx", "item_idx", "cold")
    train = interactions.where(F.col("split") == "train").select("user_idx", "item_idx")
    test_users = (tables.read(spark, config.warehouse, tables.USER_INDEX)
                  .join(test.select("user_idx").distinct(), "user_idx"))
    popularity = popularity_recommendations(
        train, test_users, tables.read(spark, config.warehouse, tables.ITEM_INDEX), target, k,
        f"{tables.INDEXED_INTERACTIONS}@v{tables.version(spark, config.warehouse, tables.INDEXED_INTERACTIONS)}")
    recommendations = (tables.read(spark, config.warehouse, tables.RECOMMENDATIONS)
                       .where(F.col("domain") == target)
                       .select("model", "user_idx", "rank", "item_idx")
                       .unionByName(popularity.select("model", "user_idx", "rank", "item_idx")))

    metrics = group_metrics(per_user_metrics(recommendations, test, k), k)
    collected = metrics.collect()  # a few dozen rows: compute them once, then write and report them
    rows = [row.asDict() for row in collected]
    if not rows:
        raise XdrecError(f"no '{target}' test interactions or recommendations to evaluate in {config.warehouse}")
    tables.overwrite(spark.createDataFrame(collected, metrics.schema), config.warehouse, tables.METRICS)

    result = metrics_dict(rows)
    report_path = os.path.join(os.path.abspath(config.warehouse), "reports", "metrics.json")
    os.makedirs(os.path.dirname(report_path), exist_ok=True)
    users = {row["user_group"]: row["users"] for row in rows}
    with open(report_path, "w") as handle:
        json.dump({"k": k, "domain": target, "users": users, "metrics": result}, handle, indent=2, sort_keys=True)
    print(format_table(rows, k))
    print(f"metrics written to {report_path}")
    return result
