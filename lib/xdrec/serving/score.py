"""Batch scoring: every user's top-K target-domain items into ``recommendations``, and pair scores for
candidate lists that come from elsewhere. See docs/scoring.md.

Innermost first:

- :class:`xdrec.modeling.topk.TopKScorer`: the torch kernel, no Spark: the item side computed once, then
  the exact top-k of each batch of users from one matrix product, on the GPU when there is one;
- :func:`recommend_top_k`: a DataFrame transform running the kernel in ``mapInPandas``, one artifact
  load per Spark task; :func:`pair_score_udf` / :func:`score_pairs`: the same for given (user, item) rows;
- :func:`users_to_score`, :func:`popularity_top_k` (the fallback for users the model does not know),
  :func:`changed_users` (incremental mode), :func:`recommendation_rows`: the other transforms;
- :func:`run_score`: the stage: pinned Delta inputs, full or incremental, one atomic replace of the
  (run_date, model) partition per method, then a row in ``score_runs``.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from datetime import date, datetime, timezone
from functools import reduce
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from xdrec import files
from xdrec.config import Config, ScoreConfig
from xdrec.data import lineage, tables
from xdrec.errors import XdrecError
from xdrec.logs import get_logger
from xdrec.modeling.topk import TopKScorer, resolve_device
from xdrec.spark import progress
from xdrec.training import artifact as artifacts, selection, tracking

log = get_logger("score")

# How a user's recommendations were made: by the model for a user with target-domain training history,
# by the model for a cold-start user (only other domains' history: the method's bridge carries it
# over), or by the popularity fallback for a user the model does not know.
WARM, COLD_START, POPULARITY = "warm", "cold_start", "popularity"

TOP_K_SCHEMA = "user_idx int, user_id string, route string, rank int, item_idx int, item_id string, score float"
PARTITION_COLUMNS = ["run_date", "model"]
SCORE_RUNS_SCHEMA = (
    "run_date date, model string, model_version string, domain string, mode string, k int, "
    "exclude_seen boolean, artifact string, input_versions map<string,bigint>, "
    "trained_on_versions map<string,bigint>, recommendations_version bigint, users bigint, scored bigint, "
    "cold_start bigint, fallback bigint, copied bigint, rows bigint, seconds double, finished_at timestamp"
)
# The inputs a score run reads, pinned at one Delta version each and recorded in score_runs.
INPUT_TABLES = (tables.INDEXED_INTERACTIONS, tables.USER_INDEX, tables.ITEM_INDEX)
SELECTION = "selected"  # score.model: the train stage's selection
ARROW_BATCH_KEY = "spark.sql.execution.arrow.maxRecordsPerBatch"


@contextmanager
def arrow_batch_size(spark: SparkSession, rows: int) -> Iterator[None]:
    """Within the block, hand pandas UDFs Arrow batches of ``rows`` rows; restore the session's setting after."""
    previous = spark.conf.get(ARROW_BATCH_KEY, None)
    spark.conf.set(ARROW_BATCH_KEY, str(rows))
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(ARROW_BATCH_KEY)
        else:
            spark.conf.set(ARROW_BATCH_KEY, previous)


def recommend_top_k(users: DataFrame, artifact_path: str, domain: str, settings: ScoreConfig) -> DataFrame:
    """The top ``settings.k`` ``domain`` items of each user, scored by the model at ``artifact_path``.

    ``users``: user_idx (the model's index), user_id, route, seen (array of item_idx or null; left out
    when ``settings.exclude_seen``). Users are hash-partitioned by user_idx into ``settings.partitions``
    (0: the default parallelism) so scoring uses every core whatever the input's size in bytes. Each task
    loads the artifact once from ``artifact_path`` (executors must be able to read it: shared storage)
    and scores its Arrow batches ``settings.users_per_batch`` users per model call. A user gets fewer than
    k rows when fewer unseen candidates remain.

    Columns: user_idx, user_id, route, rank (1..k), item_idx, item_id, score (the model's logit).
    """
    k, users_per_batch, exclude_seen, device = (settings.k, settings.users_per_batch, settings.exclude_seen,
                                                settings.device)

    def score_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        scorer = item_ids = None
        for batch in batches:
            if scorer is None:  # on the first batch: an empty partition loads nothing
                loaded = artifacts.load(artifact_path)
                domain_items = (loaded.item_index[loaded.item_index["domain"] == domain]
                                .set_index("item_idx")["item_id"])
                scorer = TopKScorer(loaded.model, domain_items.index.to_numpy(), k, resolve_device(device))
                item_ids = domain_items.loc[scorer.candidates].to_numpy()  # by candidate position
            items, scores = scorer.top_k(batch["user_idx"].to_numpy(), list(batch["seen"]) if exclude_seen else None,
                                         users_per_batch)
            filled = np.isfinite(scores).ravel()  # -inf slots: past the user's last unseen candidate
            rows = np.repeat(np.arange(len(batch)), scorer.k)[filled]
            items = items.ravel()[filled]
            yield pd.DataFrame({
                "user_idx": batch["user_idx"].to_numpy(dtype=np.int32)[rows],
                "user_id": batch["user_id"].to_numpy()[rows],
                "route": batch["route"].to_numpy()[rows],
                "rank": np.tile(np.arange(1, scorer.k + 1, dtype=np.int32), len(batch))[filled],
                "item_idx": items.astype(np.int32),
                "item_id": item_ids[np.searchsorted(scorer.candidates, items)],
                "score": scores.ravel()[filled],
            })

    partitions = settings.partitions or users.sparkSession.sparkContext.defaultParallelism
    return (users.select(F.col("user_idx").cast("int"), "user_id", "route", F.col("seen").cast("array<long>"))
            .repartition(partitions, "user_idx")
            .mapInPandas(score_partition, TOP_K_SCHEMA))


def pair_score_udf(artifact_path: str, pairs_per_call: int = 65536, device: str = "auto"):
    """An iterator pandas UDF ``(user_idx, item_idx) -> score`` (float) with the model at ``artifact_path``.

    Indices are the model's own (see :func:`score_pairs` to start from ids). The score is the same logit
    as in ``recommendations``; it is null when either index is null or outside the model. Each task
    loads the artifact once.
    """
    @F.pandas_udf("float")
    def score(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.Series]:
        model = target = None
        for users, items in batches:
            if model is None:
                target = resolve_device(device)
                model = artifacts.load(artifact_path).model.to(target)
            known = (users.notna() & items.notna()
                     & users.between(0, model.num_users - 1) & items.between(0, model.num_items - 1)).to_numpy()
            user_idx = users[known].to_numpy(dtype=np.int64)
            item_idx = items[known].to_numpy(dtype=np.int64)
            known_scores = np.empty(len(user_idx), dtype=np.float32)
            with torch.inference_mode():
                for start in range(0, len(user_idx), pairs_per_call):
                    stop = start + pairs_per_call
                    known_scores[start:stop] = model(torch.from_numpy(user_idx[start:stop]).to(target),
                                                     torch.from_numpy(item_idx[start:stop]).to(target)).cpu().numpy()
            scores = np.full(len(users), np.nan, dtype=np.float32)  # NaN reaches Spark as null
            scores[known] = known_scores
            yield pd.Series(scores)

    return score


def score_pairs(pairs: DataFrame, artifact_path: str, domain: str, pairs_per_call: int = 65536,
                device: str = "auto") -> DataFrame:
    """``pairs`` (any columns, with user_id and item_id) plus ``score``: the model's logit of each pair.

    Ids are mapped through the artifact's own user and ``domain`` item indexes; the score is null for a
    user or item the model does not know. For re-ranking candidate lists made elsewhere.
    """
    spark = pairs.sparkSession
    model_users = spark.read.parquet(files.join(artifact_path, "user_index.parquet"))
    model_items = (spark.read.parquet(files.join(artifact_path, "item_index.parquet"))
                   .where(F.col("domain") == domain))
    scored = (
        pairs.join(model_users.select(F.col("user_id").alias("_user_id"), F.col("user_idx").alias("_user_idx")),
                   F.col("user_id").cast("string") == F.col("_user_id"), "left")
        .join(F.broadcast(model_items.select(F.col("item_id").alias("_item_id"), F.col("item_idx").alias("_item_idx"))),
              F.col("item_id").cast("string") == F.col("_item_id"), "left")
    )
    udf = pair_score_udf(artifact_path, pairs_per_call, device)
    return scored.select(*pairs.columns, udf("_user_idx", "_item_idx").alias("score"))


def users_to_score(user_index: DataFrame, interactions: DataFrame, domain: str) -> DataFrame:
    """Every user with interactions in any domain: user_idx, user_id, seen, route.

    ``seen``: the user's ``domain`` training items (sorted, empty when none). ``route``: "warm" when the
    user has some, "cold_start" when the user's history is in other domains only.
    """
    seen = (interactions.where((F.col("domain") == domain) & (F.col("split") == "train"))
            .groupBy("user_idx").agg(F.array_sort(F.collect_set(F.col("item_idx").cast("long"))).alias("seen")))
    active = interactions.select("user_idx").distinct()
    return (
        user_index.join(active, "user_idx").join(seen, "user_idx", "left")
        .select("user_idx", "user_id",
                F.coalesce("seen", F.array().cast("array<long>")).alias("seen"),
                F.when(F.col("seen").isNotNull(), F.lit(WARM)).otherwise(F.lit(COLD_START)).alias("route"))
    )


def popularity_top_k(train: DataFrame, users: DataFrame, item_index: DataFrame, domain: str, k: int) -> DataFrame:
    """The fallback: the ``k`` most interacted ``domain`` items of ``train`` that each user has not seen.

    ``train``: user_idx, item_idx (the domain's training rows: popularity and what users have seen);
    ``users``: user_idx, user_id; ``item_index``: domain, item_id, item_idx. Ties in popularity go to the
    lower item index. Columns: user_idx, user_id, rank, item_idx, item_id, score (training interactions).
    """
    popular = (train.groupBy("item_idx").agg(F.count("*").alias("count"))
               .withColumn("popularity_rank", F.row_number().over(Window.orderBy(F.desc("count"), "item_idx"))))
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
    return (ranked.where(F.col("rank") <= k).join(item_ids, "item_idx")
            .select("user_idx", "user_id", "rank", "item_idx", "item_id", F.col("count").cast("float").alias("score")))


def changed_users(before: DataFrame, after: DataFrame) -> DataFrame:
    """user_idx of every user whose interaction rows differ between two versions of a table.

    Each row (every column but user_idx) is hashed; a user's rows reduce to (count, XOR, sum of the low
    32 bits) of those hashes: a fingerprint of the multiset of rows that Spark aggregates map-side.
    Users whose fingerprints differ, and users present in only one version, have changed.
    """
    def fingerprints(frame: DataFrame, name: str) -> DataFrame:
        row_hash = F.xxhash64(*sorted(column for column in frame.columns if column != "user_idx"))
        return frame.groupBy("user_idx").agg(F.struct(
            F.count("*"), F.bit_xor(row_hash), F.sum(row_hash.bitwiseAND(F.lit(0xFFFFFFFF)))).alias(name))

    return (fingerprints(before, "before").join(fingerprints(after, "after"), "user_idx", "full_outer")
            .where(~F.col("before").eqNullSafe(F.col("after")))
            .select("user_idx"))


def recommendation_rows(rows: DataFrame, run_date: date, method: str, model_version: str, domain: str) -> DataFrame:
    """``rows`` (user_idx, user_id, rank, item_idx, item_id, score, route) as rows of ``recommendations``."""
    return rows.select(
        F.lit(run_date).alias("run_date"), F.lit(method).alias("model"), F.lit(model_version).alias("model_version"),
        F.lit(domain).alias("domain"), F.col("user_idx").cast("int"), "user_id", F.col("rank").cast("int"),
        F.col("item_idx").cast("int"), "item_id", F.col("score").cast("float"), "route",
    )


def _read_last_run(spark: SparkSession, config: Config, method: str, model_version: str,
                   interactions: DataFrame) -> tuple[DataFrame, DataFrame, Any] | None:
    """For an incremental run: (changed users, the last run's model-made rows, its score_runs row).

    None, with the reason printed, when every user has to be scored: no recorded run, another model
    version or setting, or the last run's Delta versions can no longer be read (vacuumed).
    """
    warehouse, target, settings = config.warehouse, config.data.target_domain, config.score

    def score_everyone(reason: str) -> None:
        log.info(f"{method}: incremental mode, but {reason}: scoring every user")

    if not tables.exists(spark, warehouse, tables.SCORE_RUNS):
        return score_everyone("no score run is recorded yet")
    last = (tables.read(spark, warehouse, tables.SCORE_RUNS)
            .where((F.col("model") == method) & (F.col("domain") == target))
            .orderBy(F.desc("recommendations_version")).first())
    if last is None:
        return score_everyone(f"no '{method}' run on {target!r} is recorded yet")
    for key, now in (("model_version", model_version), ("k", settings.k), ("exclude_seen", settings.exclude_seen)):
        if last[key] != now:
            return score_everyone(f"the last run ({last.run_date}) had {key}={last[key]}, this one {now}")
    try:
        before = tables.read(spark, warehouse, tables.INDEXED_INTERACTIONS,
                             last.input_versions[tables.INDEXED_INTERACTIONS])
        last_rows = (tables.read(spark, warehouse, tables.RECOMMENDATIONS, last.recommendations_version)
                     .where((F.col("run_date") == F.lit(last.run_date)) & (F.col("model") == method)
                            & (F.col("route") != POPULARITY)))
    except AnalysisException as error:
        return score_everyone(f"the last run's Delta versions cannot be read ({str(error).splitlines()[0]})")
    return changed_users(before, interactions), last_rows, last


def _unchanged_run(spark: SparkSession, config: Config, method: str, run_date: date, model_version: str,
                   input_versions: dict[str, int]) -> Any:
    """The recorded run of ``method`` on ``run_date`` that this one would repeat (the same model version,
    input versions, k and exclude_seen; a full run for a full one, any for an incremental one) when its
    partition still holds the rows it wrote, else None."""
    warehouse, target, settings = config.warehouse, config.data.target_domain, config.score
    if not tables.exists(spark, warehouse, tables.SCORE_RUNS):
        return None
    last = (tables.read(spark, warehouse, tables.SCORE_RUNS)
            .where((F.col("model") == method) & (F.col("domain") == target) & (F.col("run_date") == F.lit(run_date)))
            .orderBy(F.desc("finished_at")).first())
    if last is None or (last.model_version, last.k, last.exclude_seen, dict(last.input_versions)) != (
            model_version, settings.k, settings.exclude_seen, input_versions):
        return None
    if settings.mode == "full" and last.mode != "full":
        return None
    partition = (F.col("run_date") == F.lit(run_date)) & (F.col("model") == method)
    rows = tables.read(spark, warehouse, tables.RECOMMENDATIONS).where(partition).count()
    return last if rows == last.rows else None


def _user_counts(users: DataFrame) -> dict[str, int]:
    """How many of ``users`` (known, changed, route) each part of a run handles."""
    groups = [row.asDict() for row in users.groupBy("known", "changed", "route").count().collect()]

    def count(**match: Any) -> int:
        return sum(group["count"] for group in groups if all(group[key] == value for key, value in match.items()))

    return {"users": count(), "known": count(known=True), "scored": count(known=True, changed=True),
            "cold_start": count(known=True, changed=True, route=COLD_START), "fallback": count(known=False),
            "copied": count(known=True, changed=False)}


def _score_method(spark: SparkSession, config: Config, method: str, path: str, run_date: date,
                  inputs: dict[str, DataFrame], input_versions: dict[str, int]) -> dict[str, Any]:
    """Score one method's artifact ``path`` into its (run_date, model) partition of recommendations and
    record the run."""
    warehouse, target, settings = config.warehouse, config.data.target_domain, config.score
    started = time.perf_counter()
    artifact = artifacts.load(path)
    if len(artifact.domain_items(target)) == 0:
        raise XdrecError(f"model artifact {path} has no items of domain {target!r}")
    done = _unchanged_run(spark, config, method, run_date, artifact.model_version, input_versions)
    if done is not None:
        version = tables.version(spark, warehouse, tables.RECOMMENDATIONS)
        log.info(f"{method} ({artifact.model_version}) {run_date}: model, inputs {input_versions} and settings "
                 f"unchanged since the run that finished at {done.finished_at:%Y-%m-%d %H:%M:%S}: its "
                 f"{done.rows:,} rows are kept, nothing is scored")
        return {"model_version": artifact.model_version, "run_date": run_date.isoformat(), "mode": "unchanged",
                **{key: done[key] for key in ("users", "scored", "cold_start", "fallback", "copied", "rows")},
                "seconds": round(time.perf_counter() - started, 2), "users_per_second": 0.0, "table_version": version}
    # Known to the model: the same user_id at the same user_idx in the artifact's own user index.
    model_users = (spark.read.parquet(files.join(path, "user_index.parquet"))
                   .select("user_id", F.col("user_idx").cast("int"), F.lit(True).alias("known")))
    users = inputs["users"].join(model_users, ["user_id", "user_idx"], "left").fillna(False, ["known"])
    last_run = (_read_last_run(spark, config, method, artifact.model_version, inputs["interactions"])
                if settings.mode == "incremental" else None)
    if last_run is None:
        users = users.withColumn("changed", F.lit(True))
    else:
        changed, last_rows, last = last_run
        users = users.join(changed.withColumn("changed", F.lit(True)), "user_idx", "left").fillna(False, ["changed"])

    users = users.cache()
    try:
        counts = _user_counts(users)
        if counts["users"] == 0:
            raise XdrecError(f"no user of {tables.USER_INDEX} has rows in {tables.INDEXED_INTERACTIONS}: "
                             "nothing to score")
        if last_run is not None:
            log.info(f"{method}: {counts['scored']:,} of {counts['known']:,} known users changed since the run "
                     f"of {last.run_date} (indexed_interactions v{last.input_versions[tables.INDEXED_INTERACTIONS]} -> "
                     f"v{input_versions[tables.INDEXED_INTERACTIONS]}); the others keep their rows")
        # Only the parts that have users: an empty part would still cost Spark jobs.
        parts = []
        if counts["scored"]:
            parts.append(recommend_top_k(users.where(F.col("known") & F.col("changed")), path, target, settings))
        if counts["fallback"]:  # popularity is global: every fallback user is redone on every run (no model call)
            unknown = users.where(~F.col("known")).select("user_idx", "user_id")
            parts.append(popularity_top_k(inputs["target_train"], unknown, inputs["item_index"], target, settings.k)
                         .withColumn("route", F.lit(POPULARITY)))
        if counts["copied"]:
            parts.append(last_rows.join(users.where(F.col("known") & ~F.col("changed")), "user_idx", "left_semi"))
        snapshot = reduce(DataFrame.unionByName, [
            recommendation_rows(part, run_date, method, artifact.model_version, target) for part in parts])
        # One commit replaces this (run_date, model) partition: a run failing before it leaves the old one.
        predicate = f"run_date = DATE'{run_date.isoformat()}' AND model = '{method}'"
        with arrow_batch_size(spark, settings.arrow_batch_size), progress(spark, "score", f"scoring {method}"):
            table_version = tables.replace_where(snapshot, warehouse, tables.RECOMMENDATIONS, predicate,
                                                 partition_by=PARTITION_COLUMNS)
    finally:
        users.unpersist()

    written = tables.read(spark, warehouse, tables.RECOMMENDATIONS, table_version).where(predicate).count()
    seconds = time.perf_counter() - started
    summary = {"model_version": artifact.model_version, "run_date": run_date.isoformat(),
               "mode": "full" if last_run is None else "incremental",
               **{key: counts[key] for key in ("users", "scored", "cold_start", "fallback", "copied")},
               "rows": written, "seconds": round(seconds, 2), "users_per_second": round(counts["users"] / seconds, 1),
               "table_version": table_version}
    record = {key: summary[key] for key in ("model_version", "mode", "users", "scored", "cold_start", "fallback",
                                             "copied", "rows", "seconds")}
    record.update(run_date=run_date, model=method, domain=target, k=settings.k, exclude_seen=settings.exclude_seen,
                  artifact=path, input_versions=input_versions,
                  trained_on_versions=artifact.meta.get("inputs", {}).get("versions", {}),
                  recommendations_version=table_version, finished_at=datetime.now(timezone.utc))
    tables.append(spark.createDataFrame([record], SCORE_RUNS_SCHEMA), warehouse, tables.SCORE_RUNS)
    log.info(f"{method} ({artifact.model_version}) {run_date} {summary['mode']}: {counts['users']:,} users "
             f"({counts['scored']:,} scored by the model, {counts['cold_start']:,} of them cold-start; "
             f"{counts['fallback']:,} unknown to the model got popularity; {counts['copied']:,} kept) -> "
             f"{written:,} rows in {seconds:.1f}s ({summary['users_per_second']:,.0f} users/s), "
             f"recommendations v{table_version}")
    return summary


def served_model(config: Config) -> tuple[str, str]:
    """``score.model`` as (method, artifact folder): an alias of the registry, ``selected``, a method or a
    model version, in that order.

    >>> served_model(load_config("demo", ["score.model=als_merged"]))    # doctest: +SKIP
    ('als_merged', 'warehouse/models/als_merged/3f2a9c1e0b7d')
    """
    warehouse, name = config.warehouse, config.score.model
    candidates = selection.served_candidates(config.train)
    if name not in (SELECTION, *candidates):
        aliased = tracking.aliased_model(config, name)
        if aliased is not None:
            path = artifacts.version_path(warehouse, aliased["model_version"])
            if path is None:
                raise XdrecError(f"score.model: {tracking.registered_model(config)} version {aliased['version']} "
                                 f"holds the alias {name!r}, but its artifact {aliased['model_version']} is not "
                                 f"under {files.join(warehouse, 'models')}")
            log.info(f"serving {aliased['method']} {aliased['model_version']}: {tracking.registered_model(config)} "
                     f"version {aliased['version']} holds the alias {name!r}")
            return aliased["method"], path
        if name == tracking.CHAMPION:
            log.info(f"no registered version holds the alias {name!r} (train.mlflow {config.train.mlflow}, "
                     f"train.promote {config.train.promote}): serving the train stage's selection")
            name = SELECTION
    if name == SELECTION:
        chosen = selection.read_selection(warehouse)
        return chosen["method"], files.join(artifacts.models_dir(warehouse, chosen["method"]), chosen["model_version"])
    if name in candidates or files.exists(artifacts.models_dir(warehouse, name)):
        return name, artifacts.latest_path(warehouse, name)
    path = artifacts.version_path(warehouse, name)
    if path is None:
        raise XdrecError(f"score.model: {name!r} is no registry alias, method or model version under "
                         f"{files.join(warehouse, 'models')}; methods: " + ", ".join(candidates))
    return artifacts.load(path).method, path


def models_to_score(config: Config) -> dict[str, str]:
    """``score.models``: ``{method: artifact folder}`` of the model ``score.model`` names, or of every model
    the train stage offered to selection."""
    if config.score.models == "selected":
        return dict([served_model(config)])
    return selection.offered_models(config.warehouse, selection.served_candidates(config.train))


def run_score(spark: SparkSession, config: Config) -> dict[str, Any]:
    """Score every user with interactions against the target domain, for the served model (``score.model``)
    or every trained one (``score.models``).

    Writes the ``score.run_date`` partition (default today, UTC) of each method in ``recommendations``,
    replacing that partition only, in one Delta commit, and appends the run to ``score_runs``; a method
    whose partition was written by a run with the same model version, input versions and settings is
    left as it is (mode "unchanged"). Returns
    ``{method: {model_version, run_date, mode, users, scored, cold_start, fallback, copied, rows, seconds,
    users_per_second, table_version}}``.
    """
    warehouse, target = config.warehouse, config.data.target_domain
    run_date = date.fromisoformat(config.score.run_date) if config.score.run_date else datetime.now(timezone.utc).date()
    if (tables.exists(spark, warehouse, tables.RECOMMENDATIONS)
            and "run_date" not in tables.read(spark, warehouse, tables.RECOMMENDATIONS).columns):
        raise XdrecError(f"{tables.table_path(warehouse, tables.RECOMMENDATIONS)} has the layout of an older xdrec "
                         "(no run_date partitions): delete that folder and score again")
    # Pin every input at one version, so the versions recorded are exactly what was read.
    input_versions = {name: tables.version(spark, warehouse, name) for name in INPUT_TABLES}
    interactions = tables.read(spark, warehouse, tables.INDEXED_INTERACTIONS,
                               input_versions[tables.INDEXED_INTERACTIONS])
    user_index = tables.read(spark, warehouse, tables.USER_INDEX, input_versions[tables.USER_INDEX])
    users = users_to_score(user_index, interactions, target).cache()
    inputs = {
        "interactions": interactions,
        "users": users,
        "target_train": (interactions.where((F.col("domain") == target) & (F.col("split") == "train"))
                         .select("user_idx", "item_idx")),
        "item_index": tables.read(spark, warehouse, tables.ITEM_INDEX, input_versions[tables.ITEM_INDEX]),
    }
    log.info(f"run_date {run_date}, mode {config.score.mode}, inputs "
             + ", ".join(f"{name} v{version}" for name, version in input_versions.items()))
    started, run_id = time.time(), lineage.new_run_id()
    try:
        scored = {method: _score_method(spark, config, method, path, run_date, inputs, input_versions)
                  for method, path in models_to_score(config).items()}
    finally:
        users.unpersist()
    written = {name: tables.version(spark, warehouse, name) for name in (tables.RECOMMENDATIONS, tables.SCORE_RUNS)}
    lineage.record_run(spark, warehouse, "score", run_id, started, input_versions, written,
                       summary={method: result["model_version"] for method, result in scored.items()})
    return scored
