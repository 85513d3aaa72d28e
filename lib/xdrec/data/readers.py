"""Raw inputs: the files (or table) behind a configured input, and reading them as rows of strings.

An input is a file, a folder or glob of files (csv, tsv, parquet, json lines), a Delta table's path
("delta") or a Spark catalogue table's name ("table"). :func:`list_sources` says what is there now, with
what tells a changed source from an unchanged one (a file's size and modification time, a Delta table's
version); :func:`read_sources` reads some of them as the contract's columns, as strings, each row with its
``source_file`` and ``record`` (the raw line when it could not be parsed, else its fields as JSON), so a
rejected row can be traced back to where it came from.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from xdrec.data import contract
from xdrec.errors import XdrecError
from xdrec.logs import get_logger

log = get_logger("ingest")

_CORRUPT = "_corrupt_record"


@dataclass(frozen=True)
class Source:
    """One unit of input: a file, or a whole table. ``size`` and ``modified`` (ms since the epoch) are a
    file's; for a Delta table ``modified`` is its version, and None for a table that has none."""

    path: str
    size: int
    modified: int | None


def _hadoop_files(spark: SparkSession, location: str) -> list[Source]:
    """Files matching a path, folder (recursively) or glob, through Hadoop: local and remote alike.

    Names starting with "_" or "." (``_SUCCESS``, ``.crc``, ``_delta_log``) are skipped, as Spark does.
    """
    jvm = spark.sparkContext._jvm
    pattern = jvm.org.apache.hadoop.fs.Path(location)
    file_system = pattern.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    found = []
    for status in file_system.globStatus(pattern) or []:
        root = status.getPath().toString()
        if status.isDirectory():
            listing = file_system.listFiles(status.getPath(), True)
            while listing.hasNext():
                found.append((root, listing.next()))
        else:
            found.append((root.rsplit("/", 1)[0], status))
    sources = []
    for root, status in found:
        path = status.getPath().toString()
        if any(part.startswith(("_", ".")) for part in path[len(root):].split("/") if part):
            continue
        sources.append(Source(path, int(status.getLen()), int(status.getModificationTime())))
    return sorted(sources, key=lambda source: source.path)


def _table_version(spark: SparkSession, table: str) -> int | None:
    """The Delta version of a table reference (``delta.`path``` or a name), None when it is not Delta."""
    try:
        return int(spark.sql(f"DESCRIBE HISTORY {table} LIMIT 1").first()["version"])
    except Exception:  # noqa: BLE001 - any catalogue table that is not Delta has no history
        return None


def list_sources(spark: SparkSession, location: str, file_format: str) -> list[Source]:
    """What ``location`` holds now, as sources. Raises XdrecError naming it when there is nothing."""
    if file_format == "table":
        if not spark.catalog.tableExists(location):
            raise XdrecError(f"input table not found: {location}")
        return [Source(location, 0, _table_version(spark, location))]
    if file_format == "delta":
        version = _table_version(spark, f"delta.`{location}`")
        if version is None:
            raise XdrecError(f"input Delta table not found: {location}")
        return [Source(location, 0, version)]
    sources = _hadoop_files(spark, location)
    if not sources:
        raise XdrecError(f"input file not found: {location}")
    empty = [source.path for source in sources if source.size == 0]
    for path in empty:  # nothing to read, and no header to check: a delivery still being written, say
        log.info(f"warning: skipping the empty file {path}")
    if len(empty) == len(sources):
        raise XdrecError(f"{location}: every input file is empty ({', '.join(empty)})")
    return [source for source in sources if source.size > 0]


def _read_raw(spark: SparkSession, sources: list[Source], file_format: str, header: bool) -> tuple[DataFrame, bool]:
    """Every column as the input has it, plus the corrupt-record column for text formats (and whether
    there is one); a file-backed input also gets Spark's ``_metadata`` column."""
    paths = [source.path for source in sources]
    if file_format == "table":
        return spark.read.table(paths[0]), False
    if file_format == "delta":
        return spark.read.format("delta").option("versionAsOf", sources[0].modified).load(paths[0]), False
    if file_format == "parquet":
        return spark.read.parquet(*paths), False
    if file_format == "json":
        names = [name for name in spark.read.json(paths).columns if name != _CORRUPT]
        reader = spark.read
    else:
        # escape='"' reads quotes doubled inside quoted fields (RFC 4180), as pandas and Excel write them.
        separator = "\t" if file_format == "tsv" else ","
        reader = spark.read.option("header", header).option("escape", '"').option("sep", separator)
        names = reader.csv(paths).columns  # from the first line only
        if header and len(paths) > 1:
            _check_headers(spark, paths, separator)
        # Check every file's header against these names rather than trusting the column order.
        reader = reader.option("enforceSchema", False)
    schema = T.StructType([T.StructField(name, T.StringType()) for name in names]
                          + [T.StructField(_CORRUPT, T.StringType())])
    reader = reader.schema(schema).option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", _CORRUPT)
    return (reader.json(paths) if file_format == "json" else reader.csv(paths)), True


def edit_distance(first: str, second: str) -> int:
    """Levenshtein distance: the fewest single-character insertions, deletions and substitutions."""
    previous = list(range(len(second) + 1))
    for row, left in enumerate(first, 1):
        current = [row]
        for column, right in enumerate(second, 1):
            current.append(min(previous[column] + 1, current[column - 1] + 1, previous[column - 1] + (left != right)))
        previous = current
    return previous[-1]


def _header(spark: SparkSession, path: str, separator: str) -> list[str]:
    """The column names on the first line of a (possibly compressed) text file, read through Hadoop."""
    jvm, configuration = spark.sparkContext._jvm, spark.sparkContext._jsc.hadoopConfiguration()
    location = jvm.org.apache.hadoop.fs.Path(path)
    stream = location.getFileSystem(configuration).open(location)
    codec = jvm.org.apache.hadoop.io.compress.CompressionCodecFactory(configuration).getCodec(location)
    if codec is not None:
        stream = codec.createInputStream(stream)
    reader = jvm.java.io.BufferedReader(jvm.java.io.InputStreamReader(stream, "UTF-8"))
    try:
        line = reader.readLine() or ""
    finally:
        reader.close()
    return next(csv.reader([line.lstrip("\ufeff")], delimiter=separator), [])


def _check_headers(spark: SparkSession, paths: list[str], separator: str) -> None:
    """Every file of a folder must name the same columns in the same order: Spark would otherwise read a
    file whose header swaps two columns by position, or fail deep inside a task."""
    first = _header(spark, paths[0], separator)
    for path in paths[1:]:
        names = _header(spark, path, separator)
        if names != first:
            raise XdrecError(f"{path}: header {','.join(names)} differs from {','.join(first)} of {paths[0]}; "
                             "every file of an input must have the same columns in the same order")


def _as_string(frame: DataFrame, name: str) -> Column:
    """A column as a string; nested values as JSON."""
    data_type = frame.schema[name].dataType
    if isinstance(data_type, (T.StructType, T.ArrayType, T.MapType)):
        return F.to_json(F.col(f"`{name}`"))
    return F.col(f"`{name}`").cast("string")


def read_sources(spark: SparkSession, sources: list[Source], file_format: str, kind: str, location: str,
                 header: bool = True, columns: dict[str, str] | None = None) -> DataFrame:
    """``sources`` of one input as the contract columns of ``kind`` (strings; absent optional ones null),
    ``attributes`` (map of the input's other columns), ``malformed`` (the line could not be parsed),
    ``record`` and ``source_file``. ``columns`` maps contract names to the input's own names.

    Raises XdrecError naming ``location`` when a required column is missing.
    """
    frame, has_corrupt = _read_raw(spark, sources, file_format, header)
    renamed = {name: (columns or {}).get(name, name) for name in contract.all_columns(kind)}
    required, _ = contract.COLUMNS[kind]
    input_columns = [name for name in frame.columns if name != _CORRUPT]
    missing = [name for name in required if renamed[name] not in input_columns]
    if missing:
        raise XdrecError(f"{location}: missing column(s) {', '.join(missing)} "
                         f"(required: {', '.join(required)}; found: {', '.join(input_columns)})")
    others = [name for name in input_columns if name not in renamed.values()]
    for name in others:  # a misspelt optional column would silently read as all nulls
        absent = [wanted for wanted in renamed.values() if wanted not in input_columns]
        close = [wanted for wanted in absent if edit_distance(name.lower(), wanted.lower()) <= 2]
        if close:
            raise XdrecError(f"{location}: column {name!r} looks like a misspelling of the optional column "
                             f"{close[0]!r}; rename it, or map it with the input's columns setting")
    contract_columns = [(F.col(f"`{renamed[name]}`").cast("string") if renamed[name] in input_columns
                         else F.lit(None).cast("string")).alias(name) for name in contract.all_columns(kind)]
    attributes = (F.map_from_arrays(F.array(*[F.lit(name) for name in others]),
                                    F.array(*[_as_string(frame, name) for name in others])) if others
                  else F.create_map().cast("map<string,string>"))
    fields_json = F.to_json(F.struct(*[F.col(f"`{name}`") for name in input_columns]))
    malformed = F.col(_CORRUPT).isNotNull() if has_corrupt else F.lit(False)
    source_file = F.col("_metadata.file_path") if file_format not in ("table", "delta") else F.lit(location)
    return frame.select(
        *contract_columns,
        attributes.alias("attributes"),
        malformed.alias("malformed"),
        (F.coalesce(F.col(_CORRUPT), fields_json) if has_corrupt else fields_json).alias("record"),
        source_file.alias("source_file"),
    )
