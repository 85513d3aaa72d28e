"""The SparkSession factory.

When a session already exists (a Databricks notebook) or ``spark-submit`` started the JVM, that session is
used as it is: whoever launched it configured the master and Delta. Otherwise a local session is started with Delta Lake from the jars
that ``scripts/setup.sh`` cached (``$XDREC_CACHE/jars``), with quiet logs.
"""
from __future__ import annotations

import getpass
import glob
import importlib.metadata
import os
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import pyspark
from pyspark.sql import DataFrame, SparkSession

from xdrec.config import SparkConfig
from xdrec.errors import XdrecError
from xdrec.logs import get_logger

# The jars must be the installed delta-spark's own version (scripts/setup.sh fetches them for each stack).
DELTA_VERSION = importlib.metadata.version("delta-spark")
_LOG4J = os.path.join(os.path.dirname(__file__), "log4j2.properties")


def cache_dir() -> str:
    return os.environ.get("XDREC_CACHE", os.path.expanduser("~/.cache/xdrec"))


def delta_jars() -> list[str]:
    jars = sorted(glob.glob(os.path.join(cache_dir(), "jars", f"delta-*-{DELTA_VERSION}.jar")))
    if len(jars) != 2:
        raise XdrecError(
            f"Delta jars {DELTA_VERSION} not found in {cache_dir()}/jars: run scripts/setup.sh first"
        )
    return jars


def s3a_jars() -> list[str]:
    """Hadoop's s3a:// file system and its AWS SDK, when ``scripts/setup_store.sh`` has fetched them for the
    Hadoop this pyspark bundles (``jars/s3a-hadoop-<version>/``). Another Hadoop's would not load, and an
    older SDK's unshaded netty breaks a newer Spark."""
    bundled = glob.glob(os.path.join(os.path.dirname(pyspark.__file__), "jars", "hadoop-client-api-*.jar"))
    hadoop = os.path.basename(bundled[0])[len("hadoop-client-api-"):-len(".jar")] if bundled else "none"
    return sorted(glob.glob(os.path.join(cache_dir(), "jars", f"s3a-hadoop-{hadoop}", "*.jar")))


def native_blas_dir() -> str | None:
    """The folder of the OpenBLAS that ``scripts/setup.sh`` fetched for Spark MLlib, or None. A local session
    loads it through netlib's JNI bindings: ALS solves a small system per user and item each iteration, and
    its fits took less than half the time with it as with the Java fallback, the factors the same up to
    their last bits (``benchmarks/bench_als_repeat.py --blas both``)."""
    folder = os.path.join(cache_dir(), "openblas")
    return folder if os.path.isfile(os.path.join(folder, ".complete")) else None


def get_spark(config: SparkConfig | None = None) -> SparkSession:
    """The active SparkSession if there is one, else a local one with Delta configured."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if "PYSPARK_GATEWAY_PORT" in os.environ:
        # Under spark-submit the JVM is already up with the submitter's master, jars and conf.
        return SparkSession.builder.getOrCreate()
    config = config or SparkConfig()
    # Executors (and Horovod's workers) must run the driver's interpreter, not whatever python3 is.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    java_options = f"-Dlog4j2.configurationFile=file:{_LOG4J}"
    blas = native_blas_dir()
    if blas:
        java_options += (f" -Ddev.ludovic.netlib.blas.nativeLibPath={blas}/libblas.so.3"
                         f" -Ddev.ludovic.netlib.lapack.nativeLibPath={blas}/liblapack.so.3")
    # On the class path rather than in spark.jars: Spark would copy the SDK's 560 MB to every executor.
    class_path = os.pathsep.join(s3a_jars())
    builder = (
        SparkSession.builder.master(config.master)
        .appName(config.app_name)
        .config("spark.jars", ",".join(delta_jars()))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.driver.memory", config.driver_memory)
        .config("spark.driver.extraJavaOptions", java_options)
        .config("spark.executor.extraJavaOptions", java_options)
        .config("spark.sql.shuffle.partitions", str(config.shuffle_partitions))
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.databricks.delta.snapshotPartitions", "2")
        .config("spark.databricks.delta.optimizeWrite.enabled", "true")
        .config("spark.driver.extraClassPath", class_path)
        .config("spark.executor.extraClassPath", class_path)
        # xdrec keeps no managed tables: Spark SQL's default database folder goes to the temporary folder
        # instead of the working directory.
        .config("spark.sql.warehouse.dir", os.path.join(tempfile.gettempdir(), f"xdrec-spark-sql-{getpass.getuser()}"))
    )
    if blas:  # where the JVMs find the libraries OpenBLAS needs (libgfortran)
        builder = builder.config("spark.driver.extraLibraryPath", blas).config("spark.executor.extraLibraryPath", blas)
    for key, value in config.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(config.log_level)
    return spark


@contextmanager
def progress(spark: SparkSession, stage: str, what: str, every_seconds: float = 30.0) -> Iterator[None]:
    """Within the block, log every ``every_seconds`` how far the Spark jobs it runs have come (tasks done of
    the active stages' tasks), so a long step (embedding texts, scoring, ranking) shows it is moving::

        with progress(spark, "score", "scoring joint"):
            tables.replace_where(rows, ...)   # "12:00:30 [score] scoring joint: 3 of 8 tasks done, 30s"
    """
    log, tracker, stop = get_logger(stage), spark.sparkContext.statusTracker(), threading.Event()
    started = time.perf_counter()

    def report() -> None:
        while not stop.wait(every_seconds):
            stages = [info for info in map(tracker.getStageInfo, tracker.getActiveStageIds()) if info]
            if stages:
                done, total = sum(info.numCompletedTasks for info in stages), sum(info.numTasks for info in stages)
                log.info(f"{what}: {done:,} of {total:,} tasks done, {time.perf_counter() - started:.0f}s")

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    try:
        yield
    finally:
        stop.set()
        reporter.join()


def spread_by_user(frame: DataFrame) -> DataFrame:
    """``frame`` in one partition per core, each user's rows in one of them: for tasks whose rows cost more
    than their few bytes show (the planner coalesced MovieLens-1M's 121,458 test lines into one task, one
    core of two) or that need a user's rows together.

    >>> spread_by_user(test_lines).mapInPandas(rank_users, schema)  # doctest: +SKIP
    """
    return frame.repartition(frame.sparkSession.sparkContext.defaultParallelism, "user_idx")
