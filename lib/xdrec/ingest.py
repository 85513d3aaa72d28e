"""Ingest: read each domain's raw files, clean them, and write the ``interactions`` and ``items`` tables.

Cleaning rules, each a named drop reason (see :func:`label_interaction_problems`):

- ``missing_id``: user_id or item_id is null or blank;
- ``duplicate``: the same user, item and timestamp as a row that is kept or dropped before it;
- ``superseded``: an older interaction of a (user, item) pair; only the latest one is kept;
- ``unknown_item``: the item is not in the domain's catalogue (only when the domain has one).
"""
from __future__ import annotations

import os
from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from xdrec import tables
from xdrec.config import Config
from xdrec.datasets import is_local_path
from xdrec.errors import XdrecError

# Input columns (README, "Input format"): required ones, then optional ones read as null when absent.
INTERACTION_COLUMNS = (("user_id", "item_id", "timestamp"), ("rating",))
ITEM_COLUMNS = (("item_id", "title"), ("category",))


def _input_exists(spark: SparkSession, path: str) -> bool:
    """Whether a local path or a Hadoop URI (dbfs:/, s3a://, ...) exists, checked without reading it."""
    if is_local_path(path):
        return os.path.exists(path)
    jvm = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    return hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).exists(hadoop_path)


def read_input(spark: SparkSession, path: str, file_format: str,
               columns: tuple[tuple[str, ...], tuple[str, ...]]) -> DataFrame:
    """One raw input file with (required, optional) ``columns`` as strings, absent optional ones null.

    Raises XdrecError when the file or a required column is missing.
    """
    if not _input_exists(spark, path):
        raise XdrecError(f"input file not found: {path}")
    if file_format in ("csv", "tsv"):
        # escape='"' reads quotes doubled inside quoted fields (RFC 4180), as pandas and Excel write them.
        frame = (spark.read.option("header", True).option("escape", '"')
                 .option("sep", "\t" if file_format == "tsv" else ",").csv(path))
    else:
        frame = spark.read.format(file_format).load(path)
    required, optional = columns
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise XdrecError(f"{path}: missing column(s) {', '.join(missing)} (required: {', '.join(required)})")
    return frame.select(*(
        (F.col(column) if column in frame.columns else F.lit(None)).cast("string").alias(column)
        for column in (*required, *optional)
    ))


def _clean_id(column: str) -> Column:
    """Trimmed id; blank ids become null."""
    trimmed = F.trim(F.col(column))
    return F.when(trimmed != "", trimmed)


def _epoch_seconds(column: str) -> Column:
    """Seconds since the epoch from a number ("978300760", "978300760.0") or a date-time string."""
    return F.coalesce(
        F.col(column).try_cast("double").cast("long"),
        F.unix_timestamp(F.try_to_timestamp(F.col(column))),
    )


def normalize_interactions(raw: DataFrame, domain: str) -> DataFrame:
    """Raw string interactions of one domain as (domain, user_id, item_id, rating double, timestamp long).

    A missing rating stays null: every interaction counts as implicit feedback whatever its rating.
    """
    return raw.select(
        F.lit(domain).alias("domain"),
        _clean_id("user_id").alias("user_id"),
        _clean_id("item_id").alias("item_id"),
        F.col("rating").try_cast("double").alias("rating"),
        _epoch_seconds("timestamp").alias("timestamp"),
    )


def normalize_items(raw: DataFrame, domain: str) -> DataFrame:
    """Raw string items of one domain as (domain, item_id, title, category); null text becomes ""."""
    return raw.select(
        F.lit(domain).alias("domain"),
        _clean_id("item_id").alias("item_id"),
        F.coalesce(F.col("title"), F.lit("")).alias("title"),
        F.coalesce(F.col("category"), F.lit("")).alias("category"),
    )


def label_item_problems(items: DataFrame) -> DataFrame:
    """Items with a ``drop_reason`` column: missing_id, duplicate (a repeated item_id), or null to keep.

    Of repeated item ids the row first by (title, category) is kept, so reruns keep the same one.
    """
    order = Window.partitionBy("domain", "item_id").orderBy("title", "category")
    return items.withColumn(
        "drop_reason",
        F.when(F.col("item_id").isNull(), "missing_id")
        .when(F.row_number().over(order) > 1, "duplicate"),
    )


def label_interaction_problems(interactions: DataFrame, catalogue: DataFrame) -> DataFrame:
    """Interactions with a ``drop_reason`` column (null for rows to keep); the rules are in the module doc.

    ``catalogue`` holds the kept (domain, item_id) of the domains that have an items file; interactions
    of other domains are never ``unknown_item``. The first matching reason wins, in the module doc's order.
    """
    catalogued_domains = catalogue.select("domain").distinct().withColumn("has_catalogue", F.lit(True))
    known_items = catalogue.select("domain", "item_id").distinct().withColumn("known_item", F.lit(True))
    # Latest first; equal timestamps by rating, so the kept row of a pair does not depend on file order.
    latest_first = (Window.partitionBy("domain", "user_id", "item_id")
                    .orderBy(F.col("timestamp").desc_nulls_last(), F.col("rating").desc_nulls_last()))
    valid_ids = F.col("user_id").isNotNull() & F.col("item_id").isNotNull()
    return (
        interactions
        .join(F.broadcast(catalogued_domains), "domain", "left")
        .join(known_items, ["domain", "item_id"], "left")
        .withColumn("pair_rank", F.when(valid_ids, F.row_number().over(latest_first)))
        .withColumn("previous_timestamp", F.lag("timestamp").over(latest_first))
        .withColumn(
            "drop_reason",
            F.when(~valid_ids, "missing_id")
            .when((F.col("pair_rank") > 1) & F.col("timestamp").eqNullSafe(F.col("previous_timestamp")),
                  "duplicate")
            .when(F.col("pair_rank") > 1, "superseded")
            .when(F.col("has_catalogue") & F.col("known_item").isNull(), "unknown_item"),
        )
        .select(*interactions.columns, "drop_reason")
    )


def count_outcomes(labeled: DataFrame) -> dict[str, dict[str, int]]:
    """{domain: {"kept" or drop_reason: rows}} of a frame labeled by one of the ``label_*_problems``."""
    counts: dict[str, dict[str, int]] = {}
    outcome = F.coalesce(F.col("drop_reason"), F.lit("kept")).alias("outcome")
    for row in labeled.groupBy("domain", outcome).count().orderBy("domain", "outcome").collect():
        counts.setdefault(row["domain"], {})[row["outcome"]] = row["count"]
    return counts


def with_item_text(items: DataFrame) -> DataFrame:
    """Add ``text`` = title | category, the string a text encoder embeds."""
    return items.withColumn("text", F.concat_ws(" | ", "title", "category"))


def _union_all(frames: list[DataFrame]) -> DataFrame:
    return reduce(DataFrame.unionByName, frames)


def _read_domains(spark: SparkSession, config: Config) -> tuple[DataFrame, DataFrame | None]:
    """All configured domains' normalized interactions and items (None when no domain has an items file)."""
    interactions, items = [], []
    for domain in config.data.domains:
        spec = config.domain_input(domain)
        raw = read_input(spark, spec.interactions, spec.format, INTERACTION_COLUMNS)
        interactions.append(normalize_interactions(raw, domain))
        if spec.items:
            items.append(normalize_items(read_input(spark, spec.items, spec.format, ITEM_COLUMNS), domain))
    return _union_all(interactions), (_union_all(items) if items else None)


def run_ingest(spark: SparkSession, config: Config) -> dict:
    """Read, clean and write ``interactions`` and ``items``; return rows per domain, drops and versions."""
    interactions, items = _read_domains(spark, config)
    if items is None:
        items = spark.createDataFrame([], "domain string, item_id string, title string, category string")
    labeled_items = label_item_problems(items).cache()
    catalogue = labeled_items.where(F.col("drop_reason").isNull()).drop("drop_reason")
    labeled_interactions = label_interaction_problems(interactions, catalogue).cache()
    try:
        outcomes = {tables.ITEMS: count_outcomes(labeled_items),
                    tables.INTERACTIONS: count_outcomes(labeled_interactions)}
        kept = labeled_interactions.where(F.col("drop_reason").isNull()).drop("drop_reason")
        versions = {
            tables.ITEMS: tables.overwrite(with_item_text(catalogue), config.warehouse, tables.ITEMS, ["domain"]),
            tables.INTERACTIONS: tables.overwrite(kept, config.warehouse, tables.INTERACTIONS, ["domain"]),
        }
    finally:
        labeled_items.unpersist()
        labeled_interactions.unpersist()
    rows = {name: {domain: counts.get("kept", 0) for domain, counts in per_domain.items()}
            for name, per_domain in outcomes.items()}
    dropped = {name: {domain: {reason: n for reason, n in counts.items() if reason != "kept"}
                      for domain, counts in per_domain.items()}
               for name, per_domain in outcomes.items()}
    for name, version in versions.items():
        per_domain = ", ".join(f"{domain} {count:,}" for domain, count in rows[name].items())
        print(f"[ingest] {name}: {sum(rows[name].values()):,} rows ({per_domain}) (v{version})")
        for domain, reasons in dropped[name].items():
            if reasons:
                listed = ", ".join(f"{reason} {n:,}" for reason, n in reasons.items())
                print(f"[ingest] {name} of {domain}: dropped {listed}")
    return {"rows": rows, "dropped": dropped, "versions": versions}
