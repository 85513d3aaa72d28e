"""Batch scoring: the top-K target-domain items of every user, written to the ``recommendations`` table.

:func:`top_k` is the pure torch kernel; :func:`score_users` wraps it in an iterator pandas UDF that loads
the model artifact once per Spark task; :func:`run_score` is the stage (Delta in, Delta out).
"""
from __future__ import annotations

import time
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from xdrec import artifact as artifacts
from xdrec import tables
from xdrec.config import Config
from xdrec.errors import XdrecError
from xdrec.model import TwoTower

TOP_K_TYPE = T.StructType([
    T.StructField("items", T.ArrayType(T.LongType())),
    T.StructField("scores", T.ArrayType(T.FloatType())),
])


def top_k(model: TwoTower, user_idx: np.ndarray, candidate_items: np.ndarray,
          seen: list[np.ndarray] | None, k: int, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of ``candidate_items`` for each user, best first.

    Scores are the model's logits (dot product of the towers' vectors plus item bias). When ``seen`` is
    given (one array of item indices per user), those items score ``-inf``: they sort last, so a user with
    fewer than ``k`` unseen candidates has ``-inf`` in the trailing slots. Ties go to the lower item index.

    Returns ``(items [n, min(k, len(candidates))] int64, scores [same] float32)``.
    """
    candidates = np.unique(np.asarray(candidate_items, dtype=np.int64))  # sorted: position order = item order
    if len(candidates) == 0:
        raise ValueError("top_k needs at least one candidate item")
    user_idx = np.array(user_idx, dtype=np.int64)  # a writable copy: Arrow hands over read-only buffers
    k = min(k, len(candidates))
    items = np.empty((len(user_idx), k), dtype=np.int64)
    scores = np.empty((len(user_idx), k), dtype=np.float32)
    with torch.inference_mode():
        candidate_tensor = torch.from_numpy(candidates)
        item_vectors = model.item_vectors(candidate_tensor)
        item_bias = model.item_bias(candidate_tensor).squeeze(-1)
        for start in range(0, len(user_idx), batch_size):
            stop = min(start + batch_size, len(user_idx))
            user_vectors = model.user_vectors(torch.from_numpy(user_idx[start:stop]))
            batch_scores = user_vectors @ item_vectors.T + item_bias
            if torch.isnan(batch_scores).any():
                raise XdrecError("the model scores NaN: its weights diverged, retrain it")
            if seen is not None:
                rows, positions = _seen_positions(seen[start:stop], candidates)
                batch_scores[rows, positions] = float("-inf")
            best_positions, best_scores = _stable_top_k(batch_scores, k)
            items[start:stop] = candidates[best_positions.numpy()]
            scores[start:stop] = best_scores.numpy()
    return items, scores


def _seen_positions(seen: list[np.ndarray], candidates: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, candidate position) of every seen item that is a candidate; other seen items are ignored."""
    rows, positions = [], []
    for row, user_seen in enumerate(seen):
        if user_seen is None or len(user_seen) == 0:
            continue
        user_seen = np.asarray(user_seen, dtype=np.int64)
        found = np.searchsorted(candidates, user_seen).clip(max=len(candidates) - 1)
        is_candidate = candidates[found] == user_seen
        positions.append(found[is_candidate])
        rows.append(np.full(int(is_candidate.sum()), row, dtype=np.int64))
    if not rows:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return torch.from_numpy(np.concatenate(rows)), torch.from_numpy(np.concatenate(positions))


def _stable_top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk`` with ties broken by lower column, also at the k-th place.

    topk's choice among equal scores is unspecified, so keep every score above the k-th best, fill the
    remaining places with the leftmost columns equal to it, then order the k kept by score (stable).
    """
    kth_best = torch.topk(scores, k, dim=1).values[:, -1:]
    above = scores > kth_best
    tied = scores == kth_best
    places_left = k - above.sum(dim=1, keepdim=True)
    keep = above | (tied & (torch.cumsum(tied, dim=1) <= places_left))
    positions = keep.nonzero()[:, 1].view(scores.shape[0], k)  # row-major: ascending columns per row
    kept_scores = scores.gather(1, positions)
    order = torch.sort(kept_scores, dim=1, descending=True, stable=True).indices
    return positions.gather(1, order), kept_scores.gather(1, order)


def top_k_udf(artifact_path: str, candidate_items: np.ndarray, k: int, exclude_seen: bool,
              users_per_batch: int):
    """A pandas UDF ``(user_idx, seen item array) -> struct<items, scores>`` scoring with one artifact.

    Only the path string, the candidate array and scalars travel in the closure; each task loads the
    artifact itself, once, and then scores every Arrow batch it is given.
    """
    candidate_items = np.asarray(candidate_items, dtype=np.int64)

    @F.pandas_udf(TOP_K_TYPE)
    def score_batches(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        model = artifacts.load(artifact_path).model
        for user_idx, seen in batches:
            items, scores = top_k(model, user_idx.to_numpy(dtype=np.int64), candidate_items,
                                  list(seen) if exclude_seen else None, k, users_per_batch)
            yield pd.DataFrame({"items": list(items), "scores": list(scores)})

    return score_batches


def score_users(spark: SparkSession, artifact_path: str, users_df: DataFrame, seen_df: DataFrame | None,
                domain: str, k: int, exclude_seen: bool, users_per_batch: int = 1024) -> DataFrame:
    """Recommendation rows for ``users_df`` (user_idx, user_id) from the artifact at ``artifact_path``.

    Candidates are every ``domain`` item of the artifact's item index; with ``exclude_seen`` the items of
    ``seen_df`` (user_idx, item_idx) are left out, so a user may get fewer than ``k`` rows when fewer
    unseen candidates remain. Reads the artifact's metadata and item index on the driver; scoring is lazy.

    Columns: model, model_version, domain, user_idx, user_id, rank (1..k), item_idx, item_id, score.
    """
    artifact = artifacts.load(artifact_path)
    candidates = artifact.domain_items(domain)
    if len(candidates) == 0:
        raise XdrecError(f"model artifact {artifact_path} has no items of domain {domain!r}")
    item_ids = spark.createDataFrame(
        artifact.item_index.loc[artifact.item_index["domain"] == domain, ["item_idx", "item_id"]]
    ).withColumn("item_idx", F.col("item_idx").cast("long"))

    users = users_df.select(F.col("user_idx").cast("long"), "user_id")
    if exclude_seen:
        seen_lists = (seen_df.groupBy(F.col("user_idx").cast("long").alias("user_idx"))
                      .agg(F.collect_set(F.col("item_idx").cast("long")).alias("seen")))
        users = users.join(seen_lists, "user_idx", "left")
    else:
        users = users.withColumn("seen", F.lit(None).cast("array<long>"))

    score_batches = top_k_udf(artifact_path, candidates, k, exclude_seen, users_per_batch)
    ranked = (
        users.select("user_idx", "user_id", score_batches("user_idx", "seen").alias("top"))
        .select("user_idx", "user_id", F.posexplode(F.arrays_zip("top.items", "top.scores")).alias("pos", "hit"))
    )
    return (
        ranked.where(F.col("hit.scores") > F.lit(float("-inf")))  # slots past the last unseen candidate
        .join(F.broadcast(item_ids), F.col("hit.items") == item_ids["item_idx"])
        .select(
            F.lit(artifact.method).alias("model"),
            F.lit(artifact.model_version).alias("model_version"),
            F.lit(domain).alias("domain"),
            "user_idx",
            "user_id",
            (F.col("pos") + 1).alias("rank"),
            "item_idx",
            "item_id",
            F.col("hit.scores").alias("score"),
        )
    )


def run_score(spark: SparkSession, config: Config, methods: list[str] | None = None) -> dict[str, Any]:
    """Score every user with interactions against the target domain, for each trained method.

    Each method's rows of ``recommendations`` are replaced in one Delta commit, so a rerun never
    duplicates them. Returns ``{method: {model_version, users, rows, seconds, users_per_second,
    table_version}}``.
    """
    target = config.data.target_domain
    interactions = tables.read(spark, config.warehouse, tables.INDEXED_INTERACTIONS)
    # Every user with history in either domain: cold-start users of the target have only source rows.
    users = (tables.read(spark, config.warehouse, tables.USER_INDEX)
             .join(interactions.select("user_idx").distinct(), "user_idx")
             .cache())
    seen = (interactions.where((F.col("domain") == target) & (F.col("split") == "train"))
            .select("user_idx", "item_idx"))
    user_count, max_user_idx = users.agg(F.count("*"), F.max("user_idx")).first()
    if user_count == 0:
        raise XdrecError(f"no user of {tables.USER_INDEX} has rows in {tables.INDEXED_INTERACTIONS}: nothing to score")

    summary = {}
    for method in methods or config.train.methods:
        path = artifacts.latest_path(config.warehouse, method)
        artifact = artifacts.load(path)
        if max_user_idx >= artifact.model.num_users:
            raise XdrecError(f"user_index has user_idx {max_user_idx} but the '{method}' model at {path} "
                             f"knows {artifact.model.num_users} users: retrain it on the current tables")
        started = time.perf_counter()
        recommendations = score_users(spark, path, users, seen, target, config.score.k,
                                      config.score.exclude_seen, config.score.users_per_batch)
        table_version = tables.replace_where(recommendations, config.warehouse, tables.RECOMMENDATIONS,
                                             f"model = '{method}'", partition_by=["model"])
        seconds = time.perf_counter() - started
        rows = (tables.read(spark, config.warehouse, tables.RECOMMENDATIONS)
                .where(F.col("model") == method).count())
        summary[method] = {"model_version": artifact.model_version, "users": user_count, "rows": rows,
                           "seconds": round(seconds, 2), "users_per_second": round(user_count / seconds, 1),
                           "table_version": table_version}
        print(f"score {method} ({artifact.model_version}): {user_count} users, {rows} rows in {seconds:.1f}s "
              f"({user_count / seconds:.0f} users/s)")
    users.unpersist()
    return summary
