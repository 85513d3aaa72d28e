"""Reading and writing xdrec's Delta tables: the I/O edge of the pipeline.

Every table lives at ``<warehouse>/delta/<name>``. Transforms elsewhere are pure DataFrame functions;
only the stage functions call into this module.

Tables (columns; partitioning):

- ``interactions``: domain, user_id, item_id, rating, timestamp, weight, split (given with the data, or
  null), interaction_id, source_file;
  by domain (docs/data.md)
- ``items``: domain, item_id, title, description, category, attributes, text, content_hash, source_file;
  by domain
- ``user_links``: domain_a, user_id_a, domain_b, user_id_b, link_id, source_file
- ``quarantine``: kind, domain, reason, source_file, record, quarantine_id, run_id; by domain
- ``ingested_files``: kind, domain, source, size, modified, rows, run_id (what ingest has read)
- ``ingested_contents``: kind, domain, content_hash (SHA-256 of a file's bytes), source, run_id (so the
  same bytes under another name are not read again)
- ``user_index``: user_id (the person, see docs/data.md), user_idx
- ``item_index``: domain, item_id, item_idx
- ``cold_start_users``: user_idx, split ("valid" or "test")
- ``indexed_interactions``: domain, user_idx, item_idx, timestamp, split ("train"/"valid"/"test"),
  cold (the user is a cold-start user of the target domain), rating, weight, events; by domain
- ``user_features``, ``item_features``, ``cross_domain_users``, ``item_embeddings``,
  ``text_embedding_cache``: feature tables, columns in docs/data.md
- ``training_examples``: domain, shard, user_idx, item_idx: the train split's pairs (the trainer draws
  their negatives); by domain, shard
- ``runs``: one row per stage run: the Delta versions it read and wrote (xdrec.data.lineage)
- ``recommendations``: run_date, model, model_version, domain, user_idx, user_id, rank, item_idx, item_id,
  score, route ("warm", "cold_start" or "popularity"); by run_date, model (see docs/scoring.md)
- ``score_runs``: one row per successful score run of a model: run_date, model, model_version, mode,
  input_versions, recommendations_version, user counts (see docs/scoring.md)
- ``user_metrics``: model, protocol, user_idx, cold, metric, value (full ranking, one row per user and
  metric, for paired comparisons); by model
- ``metrics``: model, protocol ("full" or "sampled"), user_group, metric, value, count (users or lines)
"""
from __future__ import annotations

import re
import time

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession

from xdrec import files
from xdrec.errors import XdrecError
from xdrec.logs import get_logger

log = get_logger("delta")

INTERACTIONS = "interactions"
ITEMS = "items"
USER_INDEX = "user_index"
ITEM_INDEX = "item_index"
COLD_START_USERS = "cold_start_users"
INDEXED_INTERACTIONS = "indexed_interactions"
TRAINING_EXAMPLES = "training_examples"
USER_LINKS = "user_links"
QUARANTINE = "quarantine"
INGESTED_FILES = "ingested_files"
INGESTED_CONTENTS = "ingested_contents"
USER_FEATURES = "user_features"
ITEM_FEATURES = "item_features"
CROSS_DOMAIN_USERS = "cross_domain_users"
ITEM_EMBEDDINGS = "item_embeddings"
TEXT_EMBEDDING_CACHE = "text_embedding_cache"
RUNS = "runs"
RECOMMENDATIONS = "recommendations"
SCORE_RUNS = "score_runs"
USER_METRICS = "user_metrics"
METRICS = "metrics"


def table_path(warehouse: str, name: str) -> str:
    return files.join(warehouse, "delta", name)


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


# A commit (``00000000000000000012.json``) or a checkpoint (``00000000000000000010.checkpoint...``) in a table's
# ``_delta_log``, named by its version (Delta's protocol, "Delta Log Entries").
_LOG_ENTRY = re.compile(r"^(\d{20})\.(json|checkpoint\..+)$")


def version(spark: SparkSession, warehouse: str, name: str) -> int:
    """The latest committed version of a table: the highest version in its ``_delta_log``.

    One listing of the log folder, where ``DeltaTable.history(1)`` ran a Spark job (about 0.3 s on a local
    session, many times a stage)::

        version(spark, "warehouse", "interactions")   # 3
    """
    if not exists(spark, warehouse, name):
        raise XdrecError(f"Delta table '{name}' not found at {table_path(warehouse, name)}")
    entries = [_LOG_ENTRY.match(entry) for entry in files.listdir(files.join(table_path(warehouse, name), "_delta_log"))]
    return max(int(entry.group(1)) for entry in entries if entry)


def overwrite(df: DataFrame, warehouse: str, name: str, partition_by: list[str] | None = None,
              properties: dict[str, str] | None = None) -> int:
    """Replace a table's content (schema included) in one Delta commit; return the new version.

    ``properties`` (Delta table properties) are set when the table is created, else by :func:`set_properties`.
    """
    writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.options(**(properties or {})).save(table_path(warehouse, name))
    set_properties(df.sparkSession, warehouse, name, properties or {})
    return version(df.sparkSession, warehouse, name)


# Delta's answers to a commit that lost a race with another writer's commit: the write may simply be redone.
WRITE_CONFLICTS = ("ConcurrentAppendException", "ConcurrentDeleteReadException", "ConcurrentDeleteDeleteException",
                   "ConcurrentWriteException", "ConcurrentTransactionException", "MetadataChangedException",
                   "ProtocolChangedException", "FileAlreadyExistsException")


def replace_where(df: DataFrame, warehouse: str, name: str, predicate: str,
                  partition_by: list[str] | None = None, attempts: int = 5, wait_seconds: float = 2.0) -> int:
    """Atomically replace only the rows matching ``predicate`` (e.g. one model's recommendations).

    A commit that conflicts with another writer's (two scoring runs of the same date) is redone against the
    table as that writer left it, up to ``attempts`` times, waiting longer each time: the later run wins,
    and neither fails::

        replace_where(rows, "warehouse", "recommendations", "run_date = DATE'2030-01-02' AND model = 'joint'")
    """
    spark, attempt = df.sparkSession, 1
    while True:
        try:
            if not exists(spark, warehouse, name):
                return overwrite(df, warehouse, name, partition_by)
            (df.write.format("delta").mode("overwrite").option("replaceWhere", predicate)
             .save(table_path(warehouse, name)))
            return version(spark, warehouse, name)
        except Exception as error:  # noqa: BLE001 - only a lost commit race is retried
            conflict = next((kind for kind in WRITE_CONFLICTS if kind in f"{type(error).__name__}: {error}"), None)
            if conflict is None or attempt == attempts:
                raise
            log.info(f"{name}: another writer committed first ({conflict}); writing again "
                     f"(attempt {attempt + 1} of {attempts})")
            time.sleep(wait_seconds * attempt)
            attempt += 1


def append(df: DataFrame, warehouse: str, name: str) -> int:
    """Add rows to a table (created by the first append) in one Delta commit; return the new version."""
    df.write.format("delta").mode("append").save(table_path(warehouse, name))
    return version(df.sparkSession, warehouse, name)


def retention_properties(days: int) -> dict[str, str]:
    """Table properties that keep every version of the last ``days`` days readable by time travel."""
    interval = f"interval {days} days"
    return {"delta.logRetentionDuration": interval, "delta.deletedFileRetentionDuration": interval}


def set_properties(spark: SparkSession, warehouse: str, name: str, properties: dict[str, str]) -> None:
    """Set Delta table properties; commits only when one differs from the table's."""
    if not properties:
        return
    path = table_path(warehouse, name)
    current = {row.key: row.value for row in spark.sql(f"SHOW TBLPROPERTIES delta.`{path}`").collect()}
    changed = {key: value for key, value in properties.items() if current.get(key) != value}
    if changed:
        assignments = ", ".join(f"'{key}' = '{value}'" for key, value in sorted(changed.items()))
        spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ({assignments})")


def _match_on(keys: list[str]) -> str:
    return " AND ".join(f"t.`{key}` <=> s.`{key}`" for key in keys)


def merge_new(df: DataFrame, warehouse: str, name: str, keys: list[str], partition_by: list[str] | None = None,
              properties: dict[str, str] | None = None) -> int:
    """MERGE: insert the rows whose ``keys`` the table lacks (creating it if absent); return its version.

    Rows already there are left alone, so merging the same rows again commits nothing. ``df`` must not
    repeat a key. Put the partition columns among ``keys`` so the merge reads only their partitions.
    """
    spark = df.sparkSession
    if not exists(spark, warehouse, name):
        return overwrite(df, warehouse, name, partition_by, properties)
    (DeltaTable.forPath(spark, table_path(warehouse, name)).alias("t")
     .merge(df.alias("s"), _match_on(keys)).whenNotMatchedInsertAll().execute())
    set_properties(spark, warehouse, name, properties or {})
    return version(spark, warehouse, name)


def upsert(df: DataFrame, warehouse: str, name: str, keys: list[str], changed_when: str,
           partition_by: list[str] | None = None, properties: dict[str, str] | None = None) -> int:
    """MERGE: insert rows with new ``keys``, replace the rows where SQL ``changed_when`` holds (t: table,
    s: ``df``), leave the others; return the version. Unchanged rows commit nothing."""
    spark = df.sparkSession
    if not exists(spark, warehouse, name):
        return overwrite(df, warehouse, name, partition_by, properties)
    (DeltaTable.forPath(spark, table_path(warehouse, name)).alias("t")
     .merge(df.alias("s"), _match_on(keys))
     .whenMatchedUpdateAll(condition=changed_when).whenNotMatchedInsertAll().execute())
    set_properties(spark, warehouse, name, properties or {})
    return version(spark, warehouse, name)


def compact(spark: SparkSession, warehouse: str, name: str, max_files_per_partition: int,
            retention_days: int) -> bool:
    """Compact a table's small files once it holds more than ``max_files_per_partition`` files per
    partition on average, then remove files unreferenced for ``retention_days`` (VACUUM). Returns
    whether it compacted; a table below the limit is not touched."""
    table = DeltaTable.forPath(spark, table_path(warehouse, name))
    data_files = table.toDF().inputFiles()  # the current snapshot's files, from the log: no data is read
    partitions = {path.rsplit("/", 1)[0] for path in data_files}
    if len(data_files) <= max_files_per_partition * max(1, len(partitions)):
        return False
    table.optimize().executeCompaction()
    # VACUUM lists the table's folders in this many tasks. Spark's default, 10,000, made vacuuming a small
    # table take minutes on a few cores; a shuffle's worth of tasks lists any table of ours.
    listing = "spark.sql.sources.parallelPartitionDiscovery.parallelism"
    previous = spark.conf.get(listing)
    spark.conf.set(listing, spark.conf.get("spark.sql.shuffle.partitions"))
    try:
        table.vacuum(retention_days * 24.0)
    finally:
        spark.conf.set(listing, previous)
    return True
