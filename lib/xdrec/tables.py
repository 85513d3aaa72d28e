"""Reading and writing xdrec's Delta tables: the I/O edge of the pipeline.

Every table lives at ``<warehouse>/delta/<name>``. Transforms elsewhere are pure DataFrame functions;
only the stage functions call into this module.

Tables (columns; partitioning):

- ``interactions``: domain, user_id, item_id, rating, timestamp; by domain
- ``items``: domain, item_id, title, category, text; by domain
- ``user_index``: user_id, user_idx
- ``item_index``: domain, item_id, item_idx
- ``cold_start_users``: user_idx, split ("valid" or "test")
- ``indexed_interactions``: domain, user_idx, item_idx, timestamp, split ("train"/"valid"/"test"),
  cold (the user is a cold-start user of the target domain); by domain
- ``training_examples``: domain, user_idx, item_idx, label (1.0 positive, 0.0 sampled negative); by domain
- ``recommendations``: model, model_version, domain, user_idx, user_id, rank, item_idx, item_id, score;
  by model
- ``metrics``: model, user_group, metric, k, value, users
"""
from __future__ import annotations

import os

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession

from xdrec.errors import XdrecError

INTERACTIONS = "interactions"
ITEMS = "items"
USER_INDEX = "user_index"
ITEM_INDEX = "item_index"
COLD_START_USERS = "cold_start_users"
INDEXED_INTERACTIONS = "indexed_interactions"
TRAINING_EXAMPLES = "training_examples"
RECOMMENDATIONS = "recommendations"
METRICS = "metrics"


def table_path(warehouse: str, name: str) -> str:
    return os.path.join(os.path.abspath(warehouse), "delta", name)


def exists(spark: SparkSession, warehouse: str, name: str) -> bool:
    return DeltaTable.isDeltaTable(spark, table_path(warehouse, name))


def read(spark: SparkSession, warehouse: str, name: str, version: int | None = None) -> DataFrame:
    """Read a table, at ``version`` when given (Delta time travel)."""
    if not exists(spark, warehouse, name):
        raise XdrecError(f"Delta table '{name}' not found at {table_path(warehouse, name)}: run the stage that writes it first")
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(table_path(warehouse, name))


def version(spark: SparkSession, warehouse: str, name: str) -> int:
    """The latest committed version of a table."""
    if not exists(spark, warehouse, name):
        raise XdrecError(f"Delta table '{name}' not found at {table_path(warehouse, name)}")
    history = DeltaTable.forPath(spark, table_path(warehouse, name)).history(1)
    return int(history.select("version").first()[0])


def overwrite(df: DataFrame, warehouse: str, name: str, partition_by: list[str] | None = None) -> int:
    """Replace a table's content (schema included) in one Delta commit; return the new version."""
    writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.save(table_path(warehouse, name))
    return version(df.sparkSession, warehouse, name)


def replace_where(df: DataFrame, warehouse: str, name: str, predicate: str,
                  partition_by: list[str] | None = None) -> int:
    """Atomically replace only the rows matching ``predicate`` (e.g. one model's recommendations)."""
    spark = df.sparkSession
    if not exists(spark, warehouse, name):
        return overwrite(df, warehouse, name, partition_by)
    (df.write.format("delta").mode("overwrite").option("replaceWhere", predicate)
     .save(table_path(warehouse, name)))
    return version(spark, warehouse, name)
