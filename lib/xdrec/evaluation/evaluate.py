"""Offline evaluation: every trained method and every baseline, ranked against the held-out target items.

Two protocols, reported side by side and labelled:

- **full** ranking (the honest one): each test user's held-out target items are ranked among *all*
  target items the user has no training interaction with; HR, Recall, Precision, F1, NDCG and MAP at
  every K in ``evaluate.ks``, MRR and AUC, averaged over users (warm, cold-start, all);
- **sampled** (the cold-start literature's, for comparison with published tables): each test line's item
  is ranked among ``evaluate.sampled_negatives`` items drawn uniformly with replacement from the target
  domain's training items, the user's own items not excluded; MRR, HR@K and NDCG@K averaged over lines.

Where the target's test pairs have ratings, the ``rating`` protocol adds MAE and RMSE of the
rating-prediction baselines (:func:`xdrec.evaluation.baselines.rating_predictions`) over those pairs.

Per-user values go to the ``user_metrics`` table so methods can be compared pairwise; means to
``metrics``; a paired bootstrap confidence interval compares the best transfer method with the best
baseline (:func:`compare_best`; over several seeds' runs, each test user's mean over them:
:func:`seed_pooled`); catalogue coverage comes from the ``recommendations`` table. Ranking takes one pass over
the test users per protocol (``mapInPandas``): each task loads every model's artifact or factors once.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from xdrec import files
from xdrec.config import Config
from xdrec.data import lineage, tables
from xdrec.data.contract import USER_GROUPS
from xdrec.errors import XdrecError
from xdrec.evaluation import baselines, report
from xdrec.logs import get_logger
from xdrec.modeling.metrics import metric_names, sampled_line_metrics, user_metrics
from xdrec.modeling.ranking import full_ranks, sampled_ranks
from xdrec.spark import progress, spread_by_user
from xdrec.training import artifact as artifacts, factors, selection

log = get_logger("evaluate")

FULL, SAMPLED, RATING = "full", "sampled", "rating"
# The model each seed's run served (its ``models/SELECTED``), under one name in :func:`seed_pooled`.
SERVED = "served"


def headline_k(ks: list[int]) -> int:
    """The K that reports lead with: 10, or the largest of ``evaluate.ks`` without it."""
    return 10 if 10 in ks else max(ks)


def headline_metric(ks: list[int]) -> str:
    """The figure that reports lead with and that the bootstrap compares."""
    return f"NDCG@{headline_k(ks)}"


def load_scorer(path: str):
    """A model artifact's model or a baseline's FactorModel, from its folder."""
    if files.is_file(files.join(path, baselines.FACTORS_FILE)):
        return baselines.load_scorer(path)
    return artifacts.load(path).model


def target_test_users(indexed: DataFrame, target_domain: str) -> DataFrame:
    """(user_idx, cold, relevant array, seen array) of every user with target test interactions."""
    target = indexed.where(F.col("domain") == target_domain)
    relevant = (target.where(F.col("split") == "test").groupBy("user_idx")
                .agg(F.bool_or("cold").alias("cold"), F.sort_array(F.collect_set("item_idx")).alias("relevant")))
    seen = (target.where(F.col("split") == "train").groupBy("user_idx")
            .agg(F.sort_array(F.collect_set("item_idx")).alias("seen")))
    return (relevant.join(seen, "user_idx", "left")
            .withColumn("seen", F.coalesce("seen", F.array().cast("array<int>"))))


def draw_per_group(users: DataFrame, per_group: int, seed: int) -> DataFrame:
    """The rows of at most ``per_group`` users (``user_idx``) of each group (boolean ``cold``): those of least
    hash(seed, user), the same ones on every run and partitioning. ``per_group`` 0 keeps every row.

    Evaluation's cost grows with its users times the catalogue; a fixed sample per group keeps its cost per
    row flat as the data grows, and a group's mean to a standard error of about 1/sqrt(per_group).

    >>> draw_per_group(test_users, per_group=2000, seed=7)  # doctest: +SKIP
    """
    if per_group == 0:
        return users
    hashed = users.withColumn("draw", F.xxhash64(F.lit(seed), "user_idx"))
    # A top-N per group (each partition keeps its N least), not a window over a boolean: that would sort a
    # whole group in one task.
    cold, warm = (hashed.where(F.col("cold") == flag).orderBy("draw", "user_idx").limit(per_group)
                  for flag in (True, False))
    return cold.unionByName(warm).drop("draw")


def _group_counts(users: DataFrame) -> dict[str, int]:
    return {("cold" if row["cold"] else "warm"): row["count"] for row in users.groupBy("cold").count().collect()}


def full_ranking_metrics(users: DataFrame, scorers: dict[str, str], candidates: np.ndarray,
                         ks: list[int]) -> DataFrame:
    """(model, user_idx, cold, relevant_count, candidate_count, values array) for every model of ``scorers``
    ({name: folder}), values in ``metric_names(ks)`` order.

    One pass over ``users``: each task loads the scorers one after the other, once each, and ranks its users
    with each. Users none of whose relevant items can be ranked (all seen, or not candidates) get no row.
    """
    names = metric_names(ks)

    def rank_users(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        frames = list(frames)  # the task's test users, kept so that one scorer at a time is in memory
        for model, path in scorers.items():
            scorer = load_scorer(path)
            for frame in frames:
                ranks, counts = full_ranks(scorer, frame["user_idx"].to_numpy(dtype=np.int64),
                                           list(frame["relevant"]), list(frame["seen"]), candidates)
                ranked = [row for row, relevant in enumerate(ranks) if len(relevant)]
                yield pd.DataFrame({
                    "model": model, "user_idx": frame["user_idx"].to_numpy()[ranked],
                    "cold": frame["cold"].to_numpy()[ranked], "relevant_count": [len(ranks[row]) for row in ranked],
                    "candidate_count": [counts[row] for row in ranked],
                    "values": [_ordered(user_metrics(ranks[row], counts[row], ks), names) for row in ranked]})

    return spread_by_user(users.select("user_idx", "cold", "relevant", "seen")).mapInPandas(
        rank_users, "model string, user_idx int, cold boolean, relevant_count int, candidate_count int, "
                    "values array<double>")


def sampled_metrics(lines: DataFrame, scorers: dict[str, str], train_items: np.ndarray, negatives: int, seed: int,
                    ks: list[int]) -> DataFrame:
    """(model, user_idx, item_idx, cold, values array) for every model of ``scorers`` ({name: folder}) and test
    line, values in ``sampled_names(ks)`` order.

    One pass over ``lines``, each scorer loaded once per task. A line's negatives are
    :func:`negative_draws`: the same on every run and partitioning, and for every model.
    """
    names = sampled_names(ks)
    train_items = np.asarray(train_items, dtype=np.int64)

    def rank_lines(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        frames = list(frames)  # the task's test lines, kept so that one scorer at a time is in memory
        for model, path in scorers.items():
            scorer = load_scorer(path)
            for frame in frames:
                users, items = frame["user_idx"].to_numpy(dtype=np.int64), frame["item_idx"].to_numpy(dtype=np.int64)
                drawn = negative_draws(seed, users, items, len(train_items), negatives)
                ranks = sampled_ranks(scorer, users, items, train_items, drawn)
                yield pd.DataFrame({"model": model, "user_idx": users, "item_idx": items, "cold": frame["cold"],
                                    "values": [_ordered(sampled_line_metrics(int(rank), ks), names) for rank in ranks]})

    return spread_by_user(lines.select("user_idx", "item_idx", "cold")).mapInPandas(
        rank_lines, "model string, user_idx int, item_idx int, cold boolean, values array<double>")


def _mixed(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: each uint64 to one that looks independent of it (wrapping arithmetic)."""
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def negative_draws(seed: int, users: np.ndarray, items: np.ndarray, pool_size: int, count: int) -> np.ndarray:
    """``count`` positions in a pool of ``pool_size`` items for each test line (user, item), uniform with
    replacement: a hash of (seed, user, item, draw), so a line's draws do not depend on the lines beside it,
    on the partitioning or on the model. One vectorised pass, where a generator seeded per line cost about
    90 µs a line (half of the sampled protocol's time on MovieLens-1M).

    >>> negative_draws(7, np.array([0, 0]), np.array([3, 4]), pool_size=100, count=5).shape
    (2, 5)
    """
    golden = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / φ: SplitMix64's step between counters
    key = _mixed(np.full(len(users), seed & (2**64 - 1), dtype=np.uint64) + golden)
    key = _mixed(key ^ np.asarray(users).astype(np.uint64))
    key = _mixed(key ^ np.asarray(items).astype(np.uint64))
    hashed = _mixed(key[:, None] + np.arange(1, count + 1, dtype=np.uint64) * golden)
    # The top 32 bits times the pool size, over 2^32: uniform to within pool_size / 2^32, without a modulo.
    return ((hashed >> np.uint64(32)) * np.uint64(pool_size) >> np.uint64(32)).astype(np.int64)


def _ordered(values: dict[str, float], names: list[str]) -> list[float]:
    return [values[name] for name in names]


def sampled_names(ks: list[int]) -> list[str]:
    return ["MRR"] + [f"{name}@{k}" for k in ks for name in ("HR", "NDCG")]


def long_format(frame: DataFrame, names: list[str], protocol: str) -> DataFrame:
    """One row per (row of ``frame``, metric): model, protocol, user_idx, cold, metric, value."""
    pairs = F.arrays_zip(F.array(*[F.lit(name) for name in names]).alias("metric"), F.col("values").alias("value"))
    return (frame.select("model", "user_idx", "cold", F.explode(pairs).alias("pair"))
            .select("model", F.lit(protocol).alias("protocol"), "user_idx", "cold",
                    F.col("pair.metric").alias("metric"), F.col("pair.value").alias("value")))


def group_means(per_unit: DataFrame) -> DataFrame:
    """Means per (model, protocol, user_group, metric) over users (full) or test lines (sampled).

    Columns: model, protocol, user_group, metric, value, count.
    """
    grouped = per_unit.withColumn("user_group", F.explode(F.array(
        F.when(F.col("cold"), F.lit("cold")).otherwise(F.lit("warm")), F.lit("all"))))
    return (grouped.groupBy("model", "protocol", "user_group", "metric")
            .agg(F.avg("value").alias("value"), F.count("*").alias("count")))


def rating_error_means(predictions: DataFrame) -> DataFrame:
    """MAE and RMSE per (model, user group) over rated test pairs, as ``metrics`` rows (protocol "rating";
    count: pairs). ``predictions``: model, cold, rating, prediction."""
    grouped = predictions.withColumn("user_group", F.explode(F.array(
        F.when(F.col("cold"), F.lit("cold")).otherwise(F.lit("warm")), F.lit("all"))))
    error = F.col("prediction") - F.col("rating")
    return (grouped.groupBy("model", "user_group")
            .agg(F.avg(F.abs(error)).alias("MAE"), F.sqrt(F.avg(error * error)).alias("RMSE"),
                 F.count("*").alias("count"))
            .select("model", F.lit(RATING).alias("protocol"), "user_group",
                    F.expr("stack(2, 'MAE', MAE, 'RMSE', RMSE) as (metric, value)"), "count"))


def rating_errors(indexed: DataFrame, config: Config) -> DataFrame | None:
    """``metrics`` rows of the rating protocol, or None when the target's test pairs have no ratings."""
    rated = indexed.where(F.col("rating").isNotNull())
    test = rated.where((F.col("domain") == config.data.target_domain) & (F.col("split") == "test"))
    if test.isEmpty():
        return None
    predictions = baselines.rating_predictions(
        rated.where(F.col("split") == "train"), test, config.data.target_domain, config.als.rank,
        config.als.iterations, config.als.regularization, config.als.seed)
    return rating_error_means(predictions)


def coverage(recommendations: DataFrame, catalogue_size: int, k: int) -> dict[str, float]:
    """Share of the target catalogue that appears in anybody's top ``k``, per model (its latest run)."""
    if "run_date" in recommendations.columns:
        latest = recommendations.groupBy("model").agg(F.max("run_date").alias("run_date"))
        recommendations = recommendations.join(latest, ["model", "run_date"])
    rows = (recommendations.where(F.col("rank") <= k).groupBy("model")
            .agg(F.countDistinct("item_idx").alias("items")).collect())
    return {row["model"]: row["items"] / catalogue_size for row in rows}


def paired_bootstrap(first: np.ndarray, second: np.ndarray, samples: int, seed: int) -> dict[str, float]:
    """95% confidence interval of mean(first - second) over paired users, by resampling users."""
    differences = np.asarray(first, dtype=np.float64) - np.asarray(second, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = differences[rng.integers(0, len(differences), (samples, len(differences)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"difference": float(differences.mean()), "low": float(low), "high": float(high),
            "users": int(len(differences)), "significant": bool(low > 0 or high < 0)}


def fit_baselines(config: Config, indexed: DataFrame, num_users: int, num_items: int,
                  trained: dict[str, str]) -> dict[str, str]:
    """Fit every configured baseline that the train stage did not fit as a factor model, on the training
    split; return {name: folder of its factors}. ``trained``: the train stage's models ({name: folder}), whose
    EMCDR holds ``als_target`` when it ran with the same ALS settings."""
    train = indexed.where(F.col("split") == "train").select("domain", "user_idx", "item_idx")
    paths = {}
    for name in config.evaluate.baselines:
        if name in config.train.factor_models:
            continue
        started = time.perf_counter()
        emcdr = artifacts.load(trained["emcdr"]) if name == "als_target" and "emcdr" in trained else None
        if emcdr is not None and emcdr.meta["config"]["als"] == config.to_dict()["als"]:
            target_train = train.where(F.col("domain") == config.data.target_domain)
            model = baselines.als_target_from_emcdr(emcdr.model, target_train)
            how = "read from emcdr's target half"
        else:
            model = factors.fit_factor_model(name, train, config.data.source_domain, config.data.target_domain,
                                             num_users, num_items, config.als)
            how = "fitted"
        paths[name] = baselines.save_scorer(files.join(config.warehouse, "baselines", name), model)
        log.info(f"baseline {name} {how} in {time.perf_counter() - started:.1f}s")
    return paths


def _nested(rows: list[Any]) -> dict:
    """{protocol: {model: {group: {metric: value}}}} and the counts behind each group."""
    values: dict = {}
    counts: dict = {}
    for row in rows:
        values.setdefault(row["protocol"], {}).setdefault(row["model"], {}).setdefault(
            row["user_group"], {})[row["metric"]] = row["value"]
        counts.setdefault(row["protocol"], {}).setdefault(row["model"], {})[row["user_group"]] = row["count"]
    return {"values": values, "counts": counts}


def compare_best(per_user: DataFrame, methods: list[str], baseline_names: list[str], metric: str,
                 samples: int, seed: int, means: dict) -> dict[str, Any]:
    """Paired bootstrap of ``metric`` (full protocol) for the best transfer model of ``methods`` (the trained
    methods and their ensemble) vs the best baseline, both picked on cold-start users when the test split
    has any (the users transfer is for), else on all; ``versus`` holds the best transfer model against every
    baseline (and target_only) the same way. A user with several values of a model (:func:`seed_pooled`)
    counts with their mean."""
    transfer = selection.transfer_methods(methods)
    yardsticks = [m for m in [*baseline_names, *methods] if m not in transfer]
    if not transfer or not yardsticks:
        return {}
    picked_on = "cold" if all("cold" in means[m] for m in [*transfer, *yardsticks]) else "all"
    best = lambda models: max(models, key=lambda m: means[m][picked_on].get(metric, float("-inf")))  # noqa: E731
    best_transfer, best_baseline = best(transfer), best(yardsticks)
    rows = (per_user.where(F.col("metric") == metric)
            .where(F.col("model").isin(best_transfer, *yardsticks))
            .groupBy("user_idx", "cold").pivot("model", [best_transfer, *yardsticks]).agg(F.mean("value"))
            .toPandas()
            # Resampling draws positions: in Spark's order, the same users could give another interval.
            .sort_values("user_idx", ignore_index=True))

    def against(yardstick: str) -> dict[str, dict[str, float]]:
        groups = {}
        for group, selected in (("warm", ~rows["cold"]), ("cold", rows["cold"]), ("all", rows["cold"] | ~rows["cold"])):
            paired = rows.loc[selected, [best_transfer, yardstick]].dropna()
            if len(paired):
                groups[group] = paired_bootstrap(paired[best_transfer].to_numpy(), paired[yardstick].to_numpy(),
                                                 samples, seed)
        return groups

    versus = {yardstick: against(yardstick) for yardstick in yardsticks}
    return {"metric": metric, "picked_on": picked_on, "transfer": best_transfer, "baseline": best_baseline,
            **versus[best_baseline], "versus": versus}


def seed_pooled(per_seed_users: list[DataFrame], served: list[str]) -> DataFrame:
    """Several seeds' ``user_metrics`` as one table for :func:`compare_best`, which then compares each test
    user's mean over the seeds, so that the training's randomness is averaged over the seeds rather than
    drawn once per interval. Only the users that every seed evaluated are kept, and each seed's served
    model (``served[i]`` for ``per_seed_users[i]``) is added once more as :data:`SERVED`, whichever model
    it was.

        >>> pooled = seed_pooled([tables.read(spark, warehouse, tables.USER_METRICS, version)
        ...                       for version in (3, 4, 5)], ["blend", "finetune", "blend"])
        >>> compare_best(pooled, [SERVED], ["als_merged"], "NDCG@10", 1000, 1, means)["versus"]
    """
    numbered = [rows.withColumn("seed", F.lit(number)) for number, rows in enumerate(per_seed_users)]
    served_rows = [rows.where(F.col("model") == model).withColumn("model", F.lit(SERVED))
                   for rows, model in zip(numbered, served)]
    rows = functools.reduce(DataFrame.unionByName, numbered + served_rows)
    everywhere = (rows.groupBy("user_idx").agg(F.countDistinct("seed").alias("seeds"))
                  .where(F.col("seeds") == len(per_seed_users)))
    return rows.join(everywhere, "user_idx", "left_semi").drop("seed")


def run_evaluate(spark: SparkSession, config: Config) -> dict[str, Any]:
    """Evaluate every trained method and baseline; write ``user_metrics``, ``metrics`` and a report, and
    record the run in ``runs``. When only the recommendations changed since the last report (a new scoring
    run), its test figures stand and only the coverage is computed again."""
    run_started, run_id = time.time(), lineage.new_run_id()
    settings, target = config.evaluate, config.data.target_domain
    ks = sorted(settings.ks)
    headline = headline_metric(ks)
    versions = {name: tables.version(spark, config.warehouse, name)
                for name in (tables.INDEXED_INTERACTIONS, tables.USER_INDEX, tables.ITEM_INDEX)}
    selected = selection.read_selection(config.warehouse)  # once: the report names the models it scored
    scorers = selection.offered_models(config.warehouse, selection.served_candidates(config.train), selected)
    folder = files.join(config.warehouse, "reports", "latest")
    # The test figures depend on the split, the models and the settings; the coverage on the recommendations too.
    values = config.to_dict()
    ranking_key = lineage.fingerprint(values["evaluate"], values["als"], versions,
                                      {method: files.basename(path) for method, path in scorers.items()},
                                      selected["model_version"])
    recommendations = (tables.version(spark, config.warehouse, tables.RECOMMENDATIONS)
                       if tables.exists(spark, config.warehouse, tables.RECOMMENDATIONS) else None)
    evaluation_key = lineage.fingerprint(ranking_key, config.score.k, recommendations)
    previous = report.read(folder)
    if previous is not None and previous.get("key") == evaluation_key:
        log.info(f"inputs {versions}, models and settings unchanged since the report in {folder}: reusing it")
        return previous

    item_index = tables.read(spark, config.warehouse, tables.ITEM_INDEX, versions[tables.ITEM_INDEX]).toPandas()
    candidates = np.sort(item_index.loc[item_index["domain"] == target, "item_idx"].to_numpy(dtype=np.int64))
    covered = (coverage(tables.read(spark, config.warehouse, tables.RECOMMENDATIONS, recommendations),
                        len(candidates), config.score.k)
               if recommendations is not None else {})
    if previous is not None and previous.get("ranking_key") == ranking_key:
        log.info(f"only the recommendations (v{recommendations}) changed since the report in {folder}: its test "
                 "figures stand, the coverage is computed again")
        return _publish(spark, config, {**previous, "coverage": covered, "key": evaluation_key}, run_id, run_started,
                        headline, folder)

    indexed = tables.read(spark, config.warehouse, tables.INDEXED_INTERACTIONS, versions[tables.INDEXED_INTERACTIONS])
    num_users = int(tables.read(spark, config.warehouse, tables.USER_INDEX, versions[tables.USER_INDEX])
                    .agg(F.max("user_idx")).first()[0]) + 1
    num_items = int(item_index["item_idx"].max()) + 1
    scorers.update(fit_baselines(config, indexed, num_users, num_items, scorers))
    yardsticks = [name for name in scorers if name not in config.train.methods and name not in selection.COMBINED]
    # The ensemble is the transfer methods' own: it competes with them, not as a yardstick.
    transfer = [name for name in scorers if name in config.train.methods or name == selection.ENSEMBLE]

    lines = (indexed.where((F.col("domain") == target) & (F.col("split") == "test"))
             .select("user_idx", "item_idx", "cold"))
    test_users = lines.groupBy("user_idx").agg(F.bool_or("cold").alias("cold")).cache()
    chosen = draw_per_group(test_users, settings.users_per_group, settings.seed).select("user_idx")
    users = target_test_users(indexed, target).join(chosen, "user_idx", "left_semi").cache()
    lines = lines.join(chosen, "user_idx", "left_semi").cache()
    population, evaluated = _group_counts(test_users), _group_counts(users)
    if not evaluated:
        raise XdrecError(f"no test interactions of the target domain '{target}' in {tables.INDEXED_INTERACTIONS}")
    log.info("test users evaluated: " + ", ".join(f"{group} {evaluated.get(group, 0):,} of {count:,}"
                                                  for group, count in sorted(population.items()))
             + (f" (at most {settings.users_per_group:,} per group)" if settings.users_per_group else ""))
    train_items = np.array(sorted(row[0] for row in indexed.where(
        (F.col("domain") == target) & (F.col("split") == "train")).select("item_idx").distinct().collect()))

    full = long_format(full_ranking_metrics(users, scorers, candidates, ks), metric_names(ks), FULL)
    sampled = long_format(sampled_metrics(lines, scorers, train_items, settings.sampled_negatives, settings.seed, ks),
                          sampled_names(ks), SAMPLED)
    started = time.perf_counter()
    with progress(spark, "evaluate", f"full ranking of the test users with {len(scorers)} models"):
        user_metrics_version = tables.overwrite(full, config.warehouse, tables.USER_METRICS, ["model"])
    log.info(f"full ranking: {len(scorers)} models in {time.perf_counter() - started:.1f}s")
    started = time.perf_counter()
    with progress(spark, "evaluate", "rating errors"):
        errors = rating_errors(indexed, config)
    if errors is not None:
        log.info(f"rating errors: explicit ALS fitted in {time.perf_counter() - started:.1f}s")
    started = time.perf_counter()
    per_user = tables.read(spark, config.warehouse, tables.USER_METRICS)
    means = group_means(per_user).unionByName(group_means(sampled))
    if errors is not None:
        means = means.unionByName(errors)
    with progress(spark, "evaluate", f"sampled protocol of {len(scorers)} models and the means"):
        metrics_version = tables.overwrite(means, config.warehouse, tables.METRICS)
    summary = _nested(tables.read(spark, config.warehouse, tables.METRICS).collect())
    log.info(f"sampled protocol and means: {time.perf_counter() - started:.1f}s")

    results = {
        "target_domain": target,
        "ks": ks,
        "protocols": {FULL: "all unseen target items", SAMPLED: f"{settings.sampled_negatives} sampled negatives"},
        "metrics": summary["values"],
        "counts": summary["counts"],
        "test_users": {group: {"evaluated": evaluated.get(group, 0), "all": count}
                       for group, count in population.items()},
        "coverage": covered,
        "bootstrap": compare_best(per_user, transfer, yardsticks, headline,
                                  settings.bootstrap_samples, settings.seed, summary["values"][FULL]),
        # The blend against every other model, the trained ones included.
        "bootstrap_blend": (compare_best(per_user, [selection.BLEND], [*yardsticks, *transfer], headline,
                                         settings.bootstrap_samples, settings.seed, summary["values"][FULL])
                            if selection.BLEND in scorers else {}),
        "selected": selected,
        "inputs": versions,
        "written": {tables.USER_METRICS: user_metrics_version, tables.METRICS: metrics_version},
        "ranking_key": ranking_key,
        "key": evaluation_key,
        "histories": {method: artifacts.load(path).meta.get("history", [])
                      for method, path in scorers.items() if method in config.train.methods},
    }
    for cached in (test_users, users, lines):
        cached.unpersist()
    return _publish(spark, config, results, run_id, run_started, headline, folder)


def _publish(spark: SparkSession, config: Config, results: dict[str, Any], run_id: str, run_started: float,
             headline: str, folder: str) -> dict[str, Any]:
    """Record the run in ``runs``, write the report to ``folder`` and log its figures; returns ``results``."""
    lineage.record_run(spark, config.warehouse, "evaluate", run_id, run_started, results["inputs"],
                       results["written"], summary={"models": sorted(results["metrics"][FULL])})
    folder = report.write(folder, results, headline)
    log.info("test figures:\n" + report.summary_table(results, headline))
    for model, groups in results["metrics"].get(RATING, {}).items():
        log.info(f"rating error of {model} on {results['counts'][RATING][model]['all']:,} rated test pairs: "
                 + ", ".join(f"{group} MAE {groups[group]['MAE']:.4f} RMSE {groups[group]['RMSE']:.4f}"
                             for group in USER_GROUPS if group in groups))
    log.info(f"report in {folder}")
    return results
