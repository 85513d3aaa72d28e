"""Features: who is who across domains, stable integer ids, the split, feature tables and training examples.

Reads ``interactions``, ``items`` and ``user_links`` at the versions it starts from; MERGEs new ids into
``user_index`` and ``item_index`` (an id once given never changes), then writes ``cold_start_users``,
``indexed_interactions`` (one row per user and item, with its split), ``user_features``,
``item_features``, ``cross_domain_users``, ``item_embeddings`` (through ``text_embedding_cache``) and
``training_examples``. Features are computed from training interactions only, so nothing held out (a
cold-start user's target interactions included) reaches a table the trainer reads.

Every random choice is a hash of the row's ids and a seed, never ``rand()``: the same input and seed give
the same tables whatever the partitioning. A run whose inputs and settings are those of the last run,
whose tables nobody changed since, changes nothing (:mod:`xdrec.data.lineage` records both).
"""
from __future__ import annotations

import json
import re
import time

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from xdrec.config import Config
from xdrec.data import contract, lineage, tables, text
from xdrec.data.splits import assign_splits, choose_cold_start_users, given_cold_start_users
from xdrec.errors import XdrecError
from xdrec.logs import get_logger
from xdrec.spark import progress

log = get_logger("features")

# Linked users are merged by label propagation: one round per link in the longest chain of links.
MAX_LINK_ROUNDS = 20
DAY_SECONDS = 86400.0
# A catalogue's category may list several, separated by this (MovieLens genres: "Action|Comedy").
CATEGORY_SEPARATOR = "|"
INPUT_TABLES = (tables.INTERACTIONS, tables.ITEMS, tables.USER_LINKS)


def _person_key(domain: str, user_id: str, shared_user_ids: bool) -> Column:
    """Who a domain's user is before links: the user_id when ids are shared, else "domain:user_id"."""
    return F.col(user_id) if shared_user_ids else F.concat_ws(":", domain, user_id)


def resolve_people(users: DataFrame, links: DataFrame | None, shared_user_ids: bool) -> DataFrame:
    """(domain, user_id, person) for the distinct (domain, user_id) of ``users``: who each one is.

    Without links a person is the user_id (``shared_user_ids``) or "domain:user_id". Users joined by a
    chain of ``links`` (domain_a, user_id_a, domain_b, user_id_b) are one person, named by the smallest of
    their keys; found by label propagation over the link graph, one Spark job per round.
    """
    keyed = users.select("domain", "user_id").distinct().withColumn(
        "person", _person_key("domain", "user_id", shared_user_ids))
    if links is None:
        return keyed
    one_way = links.select(_person_key("domain_a", "user_id_a", shared_user_ids).alias("key"),
                           _person_key("domain_b", "user_id_b", shared_user_ids).alias("neighbour"))
    edges = (one_way.unionByName(one_way.select(F.col("neighbour").alias("key"), F.col("key").alias("neighbour")))
             .where(F.col("key") != F.col("neighbour")).distinct().localCheckpoint())
    labels = edges.select("key").distinct().withColumn("label", F.col("key"))
    for _ in range(MAX_LINK_ROUNDS):
        offers = (edges.join(labels.select(F.col("key").alias("neighbour"), F.col("label").alias("offer")), "neighbour")
                  .groupBy("key").agg(F.min("offer").alias("offer")))
        updated = (labels.join(offers, "key")
                   .select("key", F.least("label", "offer").alias("label"), (F.col("offer") < F.col("label")).alias("lowered"))
                   .localCheckpoint())
        labels = updated.drop("lowered")
        if updated.where("lowered").isEmpty():
            break
    else:
        raise XdrecError(f"user_links: a chain of more than {MAX_LINK_ROUNDS} linked users; check the link table")
    return (keyed.join(labels.select(F.col("key").alias("person"), "label"), "person", "left")
            .select("domain", "user_id", F.coalesce("label", "person").alias("person")))


def assign_dense_ids(keys: DataFrame, id_column: str, existing: DataFrame | None) -> DataFrame:
    """The distinct ``keys`` that ``existing`` (keys plus ``id_column``) lacks, with int ids after its
    largest (from 0 without one), in key order. Existing ids are never changed or reused."""
    key_columns = keys.columns
    keys = keys.distinct()
    if existing is None:
        new_keys, first_id = keys, F.lit(0)
    else:
        new_keys = keys.join(existing.select(*key_columns), key_columns, "left_anti")
        next_id = existing.agg(F.coalesce(F.max(id_column) + 1, F.lit(0)).alias("first_id"))
        new_keys, first_id = new_keys.crossJoin(F.broadcast(next_id)), F.col("first_id")
    # One global ordering: indices are small (users, items), a single partition is fine here.
    return new_keys.withColumn(
        id_column, (first_id + F.row_number().over(Window.orderBy(*key_columns)) - 1).cast("int")
    ).select(*key_columns, id_column)


def new_user_ids(people: DataFrame, existing: DataFrame | None) -> DataFrame:
    """(user_id, user_idx) rows for the people ``user_index`` lacks; user_id is the person."""
    return assign_dense_ids(people.select(F.col("person").alias("user_id")), "user_idx", existing)


def new_item_ids(interactions: DataFrame, items: DataFrame, existing: DataFrame | None) -> DataFrame:
    """(domain, item_id, item_idx) rows for the catalogued or interacted items ``item_index`` lacks."""
    keys = items.select("domain", "item_id").unionByName(interactions.select("domain", "item_id"))
    return assign_dense_ids(keys, "item_idx", existing)


def collapse_pairs(interactions: DataFrame, people: DataFrame, user_index: DataFrame,
                   item_index: DataFrame) -> DataFrame:
    """One row per (domain, person, item): domain, user_id (the person), item_id, user_idx, item_idx,
    timestamp (the latest), rating (of the latest), weight (summed), events (interactions) and
    given_split (the split given with the data: "train" when any of the pair's rows trains or has none,
    else "valid" when any is valid, else "test"; so a pair that trains is never also held out)."""
    latest = F.max(F.struct(F.coalesce("timestamp", F.lit(-(1 << 62))).alias("at"), "rating"))
    split_order = F.array(*[F.lit(name) for name in contract.SPLITS])
    earliest_split = F.min(F.coalesce(F.array_position(split_order, F.col("split")), F.lit(1)))
    pairs = (interactions.join(people, ["domain", "user_id"])
             .groupBy("domain", F.col("person").alias("user_id"), "item_id")
             .agg(F.max("timestamp").alias("timestamp"), latest["rating"].alias("rating"),
                  F.sum("weight").alias("weight"), F.count("*").alias("events"),
                  F.element_at(split_order, earliest_split.cast("int")).alias("given_split")))
    return pairs.join(user_index, "user_id").join(item_index, ["domain", "item_id"])


def _days_before_domain_end(timestamp: str) -> Column:
    """Days from ``timestamp`` to the last train interaction of the row's domain (column _domain_end)."""
    return (F.col("_domain_end") - F.col(timestamp)) / DAY_SECONDS


def _domain_ends(train: DataFrame) -> DataFrame:
    return F.broadcast(train.groupBy("domain").agg(F.max("timestamp").alias("_domain_end")))


def user_features(train: DataFrame) -> DataFrame:
    """Per (domain, user_idx) with train pairs: interactions, events, weight, ratings, rating_mean,
    rating_std, first_timestamp, last_timestamp, recency_days (from the user's last interaction to the
    domain's last). ``train`` holds train pairs only."""
    return (train.groupBy("domain", "user_idx").agg(
                F.count("*").alias("interactions"), F.sum("events").alias("events"), F.sum("weight").alias("weight"),
                F.count("rating").alias("ratings"), F.avg("rating").alias("rating_mean"),
                F.stddev_samp("rating").alias("rating_std"),
                F.min("timestamp").alias("first_timestamp"), F.max("timestamp").alias("last_timestamp"))
            .join(_domain_ends(train), "domain")
            .withColumn("recency_days", _days_before_domain_end("last_timestamp"))
            .drop("_domain_end"))


def item_features(train: DataFrame, item_index: DataFrame) -> DataFrame:
    """Per indexed item: domain, item_idx, popularity (train users), weight, rating_mean, first_timestamp,
    last_timestamp, recency_days (null without train interactions), popularity_rank (1: most popular of
    its domain; ties by item_idx)."""
    stats = train.groupBy("domain", "item_idx").agg(
        F.count("*").alias("popularity"), F.sum("weight").alias("weight"), F.avg("rating").alias("rating_mean"),
        F.min("timestamp").alias("first_timestamp"), F.max("timestamp").alias("last_timestamp"))
    rank = Window.partitionBy("domain").orderBy(F.col("popularity").desc(), "item_idx")
    return (item_index.select("domain", "item_idx").join(stats, ["domain", "item_idx"], "left")
            .join(_domain_ends(train), "domain", "left")
            .withColumn("recency_days", _days_before_domain_end("last_timestamp"))
            .fillna(0, subset=["popularity", "weight"])
            .withColumn("popularity_rank", F.row_number().over(rank))
            .drop("_domain_end"))


def cross_domain_users(train: DataFrame, item_categories: DataFrame, source_domain: str,
                       target_domain: str) -> DataFrame:
    """One row per user with train pairs in the source or target domain (so every user the target domain
    serves, cold-start users included): user_idx, in_source, in_target, overlap (both), and summaries of
    the source history: source_interactions, source_weight, source_rating_mean, source_last_timestamp,
    source_recency_days, source_top_category (the most frequent category of the user's source items;
    null without a catalogue). ``item_categories``: domain, item_idx, category."""
    source = train.where(F.col("domain") == source_domain)
    summary = (source.groupBy("domain", "user_idx").agg(
                   F.count("*").alias("source_interactions"), F.sum("weight").alias("source_weight"),
                   F.avg("rating").alias("source_rating_mean"), F.max("timestamp").alias("source_last_timestamp"))
               .join(_domain_ends(source), "domain")
               .withColumn("source_recency_days", _days_before_domain_end("source_last_timestamp"))
               .drop("domain", "_domain_end"))
    categories = (source.join(item_categories, ["domain", "item_idx"])
                  .select("user_idx", F.explode(F.split("category", re.escape(CATEGORY_SEPARATOR))).alias("category"))
                  .where(F.trim("category") != "")
                  .groupBy("user_idx", "category").count())
    most_frequent = Window.partitionBy("user_idx").orderBy(F.col("count").desc(), "category")
    top_category = (categories.withColumn("rank", F.row_number().over(most_frequent)).where("rank = 1")
                    .select("user_idx", F.col("category").alias("source_top_category")))
    in_target = train.where(F.col("domain") == target_domain).select("user_idx").distinct()
    users = summary.select("user_idx").unionByName(in_target).distinct()
    return (users.join(summary, "user_idx", "left")
            .join(in_target.withColumn("in_target", F.lit(True)), "user_idx", "left")
            .join(top_category, "user_idx", "left")
            .withColumn("in_source", F.col("source_interactions").isNotNull())
            .withColumn("in_target", F.coalesce("in_target", F.lit(False)))
            .withColumn("overlap", F.col("in_source") & F.col("in_target"))
            .fillna(0, subset=["source_interactions", "source_weight"])
            .select("user_idx", "in_source", "in_target", "overlap", "source_interactions", "source_weight",
                    "source_rating_mean", "source_last_timestamp", "source_recency_days", "source_top_category"))


def training_pairs(indexed: DataFrame) -> DataFrame:
    """(domain, user_idx, item_idx): the train split's pairs, what the trainer learns from. Its negatives are
    not rows here: the trainer draws them, fresh every step (``train.negatives``), from a domain's items."""
    return indexed.where(F.col("split") == "train").select("domain", "user_idx", "item_idx")


def assign_shards(examples: DataFrame, shards: int) -> DataFrame:
    """``examples`` with ``shard`` in [0, shards): dealt round-robin in (user, item) order within each
    domain, so a domain's shards differ by at most one row. Reads ``examples`` twice: cache it."""
    per_user = Window.partitionBy("domain", "user_idx").orderBy("item_idx")
    earlier_users = (Window.partitionBy("domain").orderBy("user_idx")
                     .rowsBetween(Window.unboundedPreceding, -1))
    offsets = (examples.groupBy("domain", "user_idx").count()
               .withColumn("offset", F.coalesce(F.sum("count").over(earlier_users), F.lit(0)))
               .drop("count"))
    return (examples.join(offsets, ["domain", "user_idx"])
            .withColumn("shard", ((F.col("offset") + F.row_number().over(per_user) - 1) % shards).cast("int"))
            .select("domain", "shard", "user_idx", "item_idx"))


def _count_by(frame: DataFrame, *columns: str) -> dict:
    """Rows per value of ``columns``, nested in column order: {a: {b: n}} for two columns."""
    counts: dict = {}
    for row in frame.groupBy(*columns).count().orderBy(*columns).collect():
        node = counts
        for column in columns[:-1]:
            node = node.setdefault(row[column], {})
        node[row[columns[-1]]] = row["count"]
    return counts


def _unchanged_since(spark: SparkSession, warehouse: str, written: dict[str, int]) -> bool:
    """Whether every table a run wrote is still at the version it left."""
    return all(tables.exists(spark, warehouse, name) and tables.version(spark, warehouse, name) == version
               for name, version in written.items())


class _Writer:
    """Writes the stage's tables with the configured retention, keeping the versions, and reads them back
    so that later steps start from what was committed."""

    def __init__(self, spark: SparkSession, config: Config):
        self.spark, self.warehouse, self.versions = spark, config.warehouse, {}
        self.properties = tables.retention_properties(config.data.retention_days)
        self.compact_files, self.retention_days = config.data.compact_files_per_partition, config.data.retention_days

    def read(self, name: str) -> DataFrame | None:
        return tables.read(self.spark, self.warehouse, name) if tables.exists(self.spark, self.warehouse, name) else None

    def overwrite(self, frame: DataFrame, name: str, partition_by: list[str] | None = None) -> DataFrame:
        self.versions[name] = tables.overwrite(frame, self.warehouse, name, partition_by, self.properties)
        return tables.read(self.spark, self.warehouse, name)

    def merge_new(self, frame: DataFrame, name: str, keys: list[str]) -> DataFrame:
        """MERGE the rows of ``frame`` (rows with new keys), then compact when fragmented."""
        if not (tables.exists(self.spark, self.warehouse, name) and frame.isEmpty()):
            tables.merge_new(frame, self.warehouse, name, keys, properties=self.properties)
            tables.compact(self.spark, self.warehouse, name, self.compact_files, self.retention_days)
        self.versions[name] = tables.version(self.spark, self.warehouse, name)
        return tables.read(self.spark, self.warehouse, name)

    def report(self, name: str, what: str) -> None:
        log.info(f"{name}: {what} (v{self.versions[name]})")


def _embed_item_text(writer: _Writer, config: Config, items: DataFrame, item_index: DataFrame) -> dict:
    """Write ``item_embeddings`` for the items with text, embedding only texts the cache lacks."""
    encoder, domains = config.features.text_encoder, sorted(config.data.domains)
    without_catalogue = [domain for domain in domains if not config.data.domains[domain].items]
    for domain in without_catalogue:
        log.info(f"item_embeddings: skipped for {domain} (no catalogue, ids only)")
    if not encoder:
        log.info("item_embeddings: skipped (features.text_encoder is empty)")
        return {}
    with_text = text.with_text_hash(items.where(~F.col("domain").isin(without_catalogue)))
    if with_text.isEmpty():
        log.info("item_embeddings: skipped (no item has text)")
        return {}
    text.check_encoder(encoder)
    cache = writer.read(tables.TEXT_EMBEDDING_CACHE)
    missing = text.texts_to_embed(with_text, cache, encoder).cache()
    try:
        new_texts = missing.count()
        if new_texts:
            tasks = text.embedding_tasks(new_texts, writer.spark.sparkContext.defaultParallelism)
            embedded = text.embed_texts(missing, encoder, config.features.text_batch_size, tasks).cache()
            try:
                with progress(writer.spark, "features", f"embedding {new_texts:,} new texts with {encoder}"):
                    embedded.count()  # runs the encoder once; the MERGE below reuses the result
                cache = writer.merge_new(embedded, tables.TEXT_EMBEDDING_CACHE, ["encoder", "text_hash"])
            finally:
                embedded.unpersist()
    finally:
        missing.unpersist()
    vectors = writer.overwrite(text.item_embeddings(with_text, item_index, cache, encoder),
                               tables.ITEM_EMBEDDINGS, ["domain"])
    rows = vectors.count()
    writer.report(tables.ITEM_EMBEDDINGS, f"{rows:,} items with text, {new_texts:,} new texts embedded by {encoder}")
    return {"items": rows, "embedded_texts": new_texts}


def _pinned_inputs(spark: SparkSession, warehouse: str) -> dict[str, int]:
    """The current versions of the input tables (interactions is required)."""
    versions = {name: tables.version(spark, warehouse, name) for name in INPUT_TABLES
                if tables.exists(spark, warehouse, name)}
    if tables.INTERACTIONS not in versions:
        tables.read(spark, warehouse, tables.INTERACTIONS)  # raises the "run ingest first" error
    return versions


def run_features(spark: SparkSession, config: Config) -> dict:
    """The features stage (see the module doc); returns row counts, the tables' versions, and
    ``skipped`` True when inputs and settings were those of the last run."""
    started, run_id = time.time(), lineage.new_run_id()
    warehouse, data, features = config.warehouse, config.data, config.features
    reads = _pinned_inputs(spark, warehouse)
    settings = lineage.fingerprint(reads, config.to_dict()["features"], data.source_domain, data.target_domain,
                                   data.shared_user_ids, sorted(domain for domain in data.domains if data.domains[domain].items))
    last = lineage.last_run(spark, warehouse, "features")
    if last is not None and last["fingerprint"] == settings and _unchanged_since(spark, warehouse, last["writes"]):
        log.info(f"inputs and settings unchanged since run {last['run_id']}: tables kept as they are")
        summary = {**json.loads(last["summary"]), "skipped": True}
        lineage.record_run(spark, warehouse, "features", run_id, started, reads, last["writes"], fingerprint=settings,
                           summary=summary)
        return {**summary, "versions": dict(last["writes"])}

    interactions = tables.read(spark, warehouse, tables.INTERACTIONS, reads[tables.INTERACTIONS])
    if "split" not in interactions.columns:  # ingested before inputs could give a split
        interactions = interactions.withColumn("split", F.lit(None).cast("string"))
    if features.warm_holdout == "leave_last_out":
        undated = interactions.where((F.col("domain") == data.target_domain) & F.col("timestamp").isNull()).count()
        if undated:
            raise XdrecError(f"features.warm_holdout=leave_last_out needs timestamps, but {undated:,} interactions "
                             f"of {data.target_domain} have none: use 'random' or 'none'")
    items = (tables.read(spark, warehouse, tables.ITEMS, reads[tables.ITEMS]) if tables.ITEMS in reads else
             spark.createDataFrame([], "domain string, item_id string, category string, text string"))
    links = tables.read(spark, warehouse, tables.USER_LINKS, reads[tables.USER_LINKS]) if tables.USER_LINKS in reads else None
    writer, summary = _Writer(spark, config), {}

    people = resolve_people(interactions, links, data.shared_user_ids).cache()
    user_index = writer.merge_new(new_user_ids(people, writer.read(tables.USER_INDEX)), tables.USER_INDEX, ["user_id"])
    item_index = writer.merge_new(new_item_ids(interactions, items, writer.read(tables.ITEM_INDEX)),
                                  tables.ITEM_INDEX, ["domain", "item_id"])
    summary["users"], summary["items"] = user_index.count(), _count_by(item_index, "domain")
    writer.report(tables.USER_INDEX, f"{summary['users']:,} users")
    writer.report(tables.ITEM_INDEX, f"{sum(summary['items'].values()):,} items")

    pairs = collapse_pairs(interactions, people, user_index, item_index)
    if features.warm_holdout == "given":
        chosen = given_cold_start_users(pairs, data.target_domain)
    else:
        chosen = choose_cold_start_users(pairs, data.source_domain, data.target_domain,
                                         features.cold_start_valid_share, features.cold_start_test_share,
                                         features.seed)
    cold_start_users = writer.overwrite(chosen, tables.COLD_START_USERS)
    summary["cold_start_users"] = cold = _count_by(cold_start_users, "split")
    writer.report(tables.COLD_START_USERS, f"{cold.get('valid', 0):,} valid, {cold.get('test', 0):,} test")
    indexed = writer.overwrite(
        assign_splits(pairs, cold_start_users, data.target_domain, features.warm_holdout, features.valid_ratio,
                      features.test_ratio, features.seed),
        tables.INDEXED_INTERACTIONS, ["domain"])
    people.unpersist()
    summary["indexed_interactions"] = _count_by(indexed, "domain", "split")
    splits = {name: sum(per_domain.get(name, 0) for per_domain in summary["indexed_interactions"].values())
              for name in ("train", "valid", "test")}
    writer.report(tables.INDEXED_INTERACTIONS, f"{sum(splits.values()):,} user-item pairs (train {splits['train']:,}, "
                  f"valid {splits['valid']:,}, test {splits['test']:,}; {features.warm_holdout} for warm users)")

    train = indexed.where(F.col("split") == "train")
    writer.overwrite(user_features(train), tables.USER_FEATURES, ["domain"])
    writer.overwrite(item_features(train, item_index), tables.ITEM_FEATURES, ["domain"])
    item_categories = items.join(item_index, ["domain", "item_id"]).select("domain", "item_idx", "category")
    writer.overwrite(cross_domain_users(train, item_categories, data.source_domain, data.target_domain),
                     tables.CROSS_DOMAIN_USERS)
    for name in (tables.USER_FEATURES, tables.ITEM_FEATURES, tables.CROSS_DOMAIN_USERS):
        writer.report(name, "from train pairs only")
    summary["text"] = _embed_item_text(writer, config, items, item_index)

    examples = training_pairs(indexed).cache()
    try:
        written = writer.overwrite(assign_shards(examples, features.shards), tables.TRAINING_EXAMPLES,
                                   ["domain", "shard"])
    finally:
        examples.unpersist()
    summary["training_examples"] = _count_by(written, "domain")
    writer.report(tables.TRAINING_EXAMPLES, f"{sum(summary['training_examples'].values()):,} training pairs "
                  f"(the trainer draws their negatives) in {features.shards} even shards per domain")

    lineage.record_run(spark, warehouse, "features", run_id, started, reads, writer.versions, fingerprint=settings,
                       summary=summary)
    return {**summary, "skipped": False, "versions": writer.versions}
