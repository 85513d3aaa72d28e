"""Lineage: the ``runs`` table, one row per stage run with the Delta versions it read and wrote.

Any stage records itself with :func:`record_run`; a later stage pins its inputs to what the last
successful run of the stage before it wrote (:func:`pinned_versions`), so it reads one consistent set of
versions even while another run is writing. The tables' retention (``data.retention_days``) keeps those
versions readable by time travel.
"""
from __future__ import annotations

import hashlib
import json
import time
import uuid
from datetime import datetime, timezone

from pyspark.sql import Row, SparkSession
from pyspark.sql import functions as F

from xdrec.data import tables
from xdrec.errors import XdrecError

RUNS_SCHEMA = ("run_id string, stage string, status string, started_at timestamp, seconds double, "
               "fingerprint string, reads map<string,bigint>, writes map<string,bigint>, summary string")


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def fingerprint(*parts: object) -> str:
    """A short stable hash of JSON-serialisable ``parts`` (settings, input versions)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def record_run(spark: SparkSession, warehouse: str, stage: str, run_id: str, started: float,
               reads: dict[str, int], writes: dict[str, int], status: str = "ok", fingerprint: str = "",
               summary: dict | None = None) -> None:
    """Append one row to ``runs``. ``started`` is the run's ``time.time()`` at its start; ``reads`` and
    ``writes`` map table names to the Delta versions the run read and left (written or kept)."""
    row = (run_id, stage, status, datetime.fromtimestamp(started, timezone.utc), round(time.time() - started, 3),
           fingerprint, {k: int(v) for k, v in reads.items()}, {k: int(v) for k, v in writes.items()},
           json.dumps(summary or {}, sort_keys=True, default=str))
    tables.append(spark.createDataFrame([row], RUNS_SCHEMA), warehouse, tables.RUNS)


def last_run(spark: SparkSession, warehouse: str, stage: str) -> Row | None:
    """The latest successful run of ``stage``, or None."""
    if not tables.exists(spark, warehouse, tables.RUNS):
        return None
    return (tables.read(spark, warehouse, tables.RUNS)
            .where((F.col("stage") == stage) & (F.col("status") == "ok"))
            .orderBy(F.col("started_at").desc(), F.col("run_id").desc()).first())


def pinned_versions(spark: SparkSession, warehouse: str, stage: str, names: list[str] | tuple[str, ...]) -> dict[str, int]:
    """The versions of ``names`` that the last successful run of ``stage`` wrote: what a consumer reads.

    Raises XdrecError when ``stage`` has no successful run or did not write one of ``names``.
    """
    run = last_run(spark, warehouse, stage)
    if run is None:
        raise XdrecError(f"no successful '{stage}' run in {tables.table_path(warehouse, tables.RUNS)}: run {stage} first")
    missing = [name for name in names if name not in run["writes"]]
    if missing:
        raise XdrecError(f"the last '{stage}' run ({run['run_id']}) wrote no {', '.join(missing)}: run {stage} again")
    return {name: int(run["writes"][name]) for name in names}
