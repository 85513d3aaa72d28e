"""Ingest: every configured input validated into Delta, good rows kept and every bad row quarantined.

Good rows are MERGEd into ``interactions``, ``items`` and ``user_links``; each rejected row goes to
``quarantine`` with its reason, its source file and the raw record, and the counts per reason are printed.
Ingest is incremental: ``ingested_files`` remembers every file (size, modification time) and table
version it has read, so only new or changed sources are read again, and rows are merged by content, so a
rerun on the same input changes no table. ``ingested_contents`` remembers the SHA-256 of every file's
bytes, so the same file delivered again under another name is skipped as already present. When more than
``data.max_bad_share`` of the rows read from one input is quarantined, the run writes the quarantine (to
look at) and nothing else, and fails.

Quarantine reasons, the first that applies (docs/data.md, "Validation"):

- ``malformed``: the line could not be parsed (wrong number of fields, broken quoting or JSON);
- ``missing_id``: a key is null or blank (user_id, item_id; a link's domains and user ids);
- ``bad_encoding``: a key holds bytes that are not UTF-8 (read as U+FFFD, so two different bad ids would
  otherwise become one);
- ``unknown_domain``: a link names a domain that is not configured;
- ``bad_timestamp``: a timestamp given but neither epoch seconds nor a date-time, or outside
  [data.min_timestamp, data.max_timestamp];
- ``bad_rating``: a rating given but not a number in the domain's [min_rating, max_rating];
- ``bad_weight``: a weight given but not a finite number of at least 0;
- ``bad_split``: a split given but not one of train, valid, test;
- ``unknown_item``: the item is not in the catalogue of a domain that has one;
- ``duplicate``: the same values as a row kept from another file or earlier in the same file (but with
  ``data.repeats: merge``, the default, repeats without a timestamp within one file are merged into one
  row that sums their weights: :func:`merge_repeats`);
- ``conflicting_item``: a catalogue row for an item that another row read in the same run describes
  differently (the one first by source file, then title, is kept; a later run's rows update an item).
"""
from __future__ import annotations

import time
from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from xdrec.config import Config, DataConfig, DomainInput
from xdrec.data import contract, lineage, tables
from xdrec.data.readers import Source, list_sources, read_sources
from xdrec.errors import XdrecError
from xdrec.logs import get_logger
from xdrec.spark import progress

log = get_logger("ingest")

# The table each kind of input is merged into, with the key that makes a row itself, and its partitioning.
TARGETS = {
    contract.USER_LINKS: (tables.USER_LINKS, ["link_id"], None),
    contract.ITEMS: (tables.ITEMS, ["domain", "item_id"], ["domain"]),
    contract.INTERACTIONS: (tables.INTERACTIONS, ["domain", "interaction_id"], ["domain"]),
}
QUARANTINE_COLUMNS = ("kind", "domain", "reason", "source_file", "record", "quarantine_id", "run_id")
MANIFEST_SCHEMA = "kind string, domain string, source string, size bigint, modified bigint, run_id string"
CONTENTS_SCHEMA = "kind string, domain string, content_hash string, source string, run_id string"
ITEM_TEXT_SEPARATOR = " | "


def _blank_to_null(column: str) -> Column:
    """The trimmed value; blank becomes null."""
    trimmed = F.trim(F.col(column))
    return F.when(trimmed != "", trimmed)


def badly_encoded(*keys: Column) -> Column:
    """Whether any of ``keys`` held bytes that are not UTF-8: the reader turns each into U+FFFD."""
    return reduce(lambda a, b: a | b, [F.coalesce(key.contains("\ufffd"), F.lit(False)) for key in keys])


def epoch_seconds(text: Column) -> Column:
    """Seconds since the epoch from a number ("978300760", "978300760.0") or a date-time string (UTC);
    null when it is neither."""
    return F.coalesce(text.try_cast("double").try_cast("long"), F.unix_timestamp(F.try_to_timestamp(text)))


def parse_interactions(raw: DataFrame, domain: str, spec: DomainInput, data: DataConfig) -> DataFrame:
    """Raw interaction rows of one domain, typed, with a ``reason`` for those that break a row rule.

    Columns: domain, user_id, item_id, rating (double, null when not given), timestamp (epoch seconds,
    null when not given), weight (1.0 when not given), split (lower case, null when not given), interaction_id (a hash of all those values),
    source_file, record, reason (null: no row rule broken). unknown_item and duplicate need other rows:
    :func:`label_unknown_items`, :func:`label_duplicates`.
    """
    rating_text, timestamp_text, weight_text = (_blank_to_null(name) for name in ("rating", "timestamp", "weight"))
    split = F.lower(_blank_to_null("split"))
    rating, timestamp, weight = rating_text.try_cast("double"), epoch_seconds(timestamp_text), weight_text.try_cast("double")
    bad_rating = rating_text.isNotNull() & (rating.isNull() | F.isnan(rating) | (rating < spec.min_rating)
                                            | (rating > spec.max_rating))
    bad_timestamp = timestamp_text.isNotNull() & (timestamp.isNull() | (timestamp < data.min_timestamp)
                                                  | (timestamp > data.max_timestamp))
    bad_weight = weight_text.isNotNull() & (weight.isNull() | F.isnan(weight) | (weight < 0)
                                            | (weight == float("inf")))
    user_id, item_id = _blank_to_null("user_id"), _blank_to_null("item_id")
    reason = (F.when(F.col("malformed"), "malformed")
              .when(user_id.isNull() | item_id.isNull(), "missing_id")
              .when(badly_encoded(user_id, item_id), "bad_encoding")
              .when(bad_timestamp, "bad_timestamp")
              .when(bad_rating, "bad_rating")
              .when(bad_weight, "bad_weight")
              .when(split.isNotNull() & ~split.isin(*contract.SPLITS), "bad_split"))
    typed = raw.select(
        F.lit(domain).alias("domain"), user_id.alias("user_id"), item_id.alias("item_id"),
        rating.alias("rating"), timestamp.alias("timestamp"), F.coalesce(weight, F.lit(1.0)).alias("weight"),
        split.alias("split"), "source_file", "record", reason.alias("reason"),
    )
    # to_json leaves null fields out, so rows without a split hash as they did before splits existed.
    values = F.to_json(F.struct("domain", "user_id", "item_id", "rating", "timestamp", "weight", "split"))
    return typed.withColumn("interaction_id", F.md5(values))


def label_unknown_items(interactions: DataFrame, catalogue: DataFrame, catalogued_domains: list[str]) -> DataFrame:
    """``reason`` 'unknown_item' for good interactions of a catalogued domain whose (domain, item_id) is
    not in ``catalogue``; domains without a catalogue accept every item."""
    known = catalogue.select("domain", "item_id").distinct().withColumn("_known", F.lit(True))
    unknown = F.col("domain").isin(catalogued_domains) & F.col("_known").isNull()
    return (interactions.join(known, ["domain", "item_id"], "left")
            .withColumn("reason", F.coalesce(F.col("reason"), F.when(unknown, "unknown_item")))
            .drop("_known"))


def merge_repeats(interactions: DataFrame) -> DataFrame:
    """Good interaction rows without a timestamp that repeat (domain, user_id, item_id, rating, split) within
    one source file, merged into one row whose weight is the sum of theirs.

    Without a timestamp a repeat is a repeated event (a user buying an item twice), real signal rather than
    a copy: merged, it keeps its weight instead of being quarantined as a duplicate. ``merged`` counts the
    rows folded into a row (0 for every other row); the merged row keeps the first record and gets the
    interaction_id of its values, so reading the file again merges to the same row::

        merge_repeats(parsed)  # u1,b1 / u1,b1 / u1,b1 in one file -> one row u1,b1 with weight 3.0, merged 2
    """
    mergeable = F.col("reason").isNull() & F.col("timestamp").isNull()
    group = ["domain", "user_id", "item_id", "rating", "split", "source_file"]
    columns = [name for name in interactions.columns if name not in ("weight", "record", "interaction_id")]
    merged = (interactions.where(mergeable)
              .groupBy(*group)
              .agg(F.sum("weight").alias("weight"), F.min("record").alias("record"),
                   (F.count("*") - 1).alias("merged"),
                   *[F.first(name).alias(name) for name in columns if name not in group]))
    values = F.to_json(F.struct("domain", "user_id", "item_id", "rating", "timestamp", "weight", "split"))
    merged = merged.withColumn("interaction_id", F.md5(values))
    kept = interactions.where(~mergeable).withColumn("merged", F.lit(0).cast("long"))
    return kept.unionByName(merged)


def label_duplicates(rows: DataFrame, existing: DataFrame | None, keys: list[str]) -> DataFrame:
    """``reason`` 'duplicate' for good rows whose ``keys`` repeat a row kept before them, and ``present``
    True for good rows already in the table from the same source file (kept, nothing to write).

    ``existing`` holds the table's ``keys`` and source_file. The row kept of repeats is the one the table
    has, else the first by source file; the others are duplicates, so rereading a file adds nothing.
    """
    if existing is None:
        in_table = rows.withColumn("_kept_from", F.lit(None).cast("string"))
    else:
        in_table = rows.join(existing.select(*keys, F.col("source_file").alias("_kept_from")), keys, "left")
    good = F.col("reason").isNull()
    same_source = F.coalesce(F.col("_kept_from") == F.col("source_file"), F.lit(False))
    first = Window.partitionBy(*keys, good).orderBy(same_source.desc(), "source_file", "record")
    repeat = good & ((F.row_number().over(first) > 1) | (F.col("_kept_from").isNotNull() & ~same_source))
    return (in_table
            .withColumn("present", good & ~repeat & same_source)
            .withColumn("reason", F.when(repeat, "duplicate").otherwise(F.col("reason")))
            .drop("_kept_from"))


def item_text(title: Column, description: Column, category: Column) -> Column:
    """The text a sentence encoder embeds: title | description | category, blank parts left out."""
    return F.concat_ws(ITEM_TEXT_SEPARATOR, *[F.when(F.trim(part) != "", F.trim(part)) for part in
                                              (title, description, category)])


def parse_items(raw: DataFrame, domain: str) -> DataFrame:
    """Raw catalogue rows of one domain: domain, item_id, title, description, category (null text ""),
    attributes, text, content_hash, source_file, record, reason (malformed, missing_id, bad_encoding or null)."""
    item_id = _blank_to_null("item_id")
    text_or_empty = [F.coalesce(F.col(name), F.lit("")).alias(name) for name in ("title", "description", "category")]
    typed = raw.select(F.lit(domain).alias("domain"), item_id.alias("item_id"), *text_or_empty, "attributes",
                       "source_file", "record",
                       F.when(F.col("malformed"), "malformed").when(item_id.isNull(), "missing_id")
                       .when(badly_encoded(item_id), "bad_encoding").alias("reason"))
    content = F.to_json(F.struct("title", "description", "category",
                                 F.array_sort(F.map_entries("attributes")).alias("attributes")))
    return (typed.withColumn("text", item_text(F.col("title"), F.col("description"), F.col("category")))
            .withColumn("content_hash", F.md5(content)))


def label_item_conflicts(items: DataFrame) -> DataFrame:
    """``reason`` for good catalogue rows repeating an item_id of the same run: 'duplicate' when equal
    to the row kept (the first by source file, title, description, category), 'conflicting_item' when not."""
    good = F.col("reason").isNull()
    first = Window.partitionBy("domain", "item_id", good).orderBy(
        "source_file", "title", "description", "category", "content_hash", "record")
    kept_hash = F.first("content_hash").over(first)
    repeat = good & (F.row_number().over(first) > 1)
    reason = F.when(repeat & (F.col("content_hash") == kept_hash), "duplicate").when(repeat, "conflicting_item")
    return items.withColumn("reason", F.coalesce(F.col("reason"), reason))


def parse_links(raw: DataFrame, domains: list[str]) -> DataFrame:
    """Raw user link rows: domain_a, user_id_a, domain_b, user_id_b, link_id, source_file, record, reason
    (malformed, missing_id, bad_encoding, unknown_domain or null)."""
    keys = {name: _blank_to_null(name) for name in contract.COLUMNS[contract.USER_LINKS][0]}
    reason = (F.when(F.col("malformed"), "malformed")
              .when(reduce(lambda a, b: a | b, [key.isNull() for key in keys.values()]), "missing_id")
              .when(badly_encoded(*keys.values()), "bad_encoding")
              .when(~keys["domain_a"].isin(domains) | ~keys["domain_b"].isin(domains), "unknown_domain"))
    typed = raw.select(*[column.alias(name) for name, column in keys.items()], "source_file", "record",
                       reason.alias("reason"))
    return typed.withColumn("link_id", F.md5(F.to_json(F.struct(*keys))))


def quarantine_rows(labeled: DataFrame, kind: str, domain: Column, run_id: str) -> DataFrame:
    """The rows of ``labeled`` with a reason, as ``quarantine`` rows. quarantine_id hashes the kind,
    source file, record and its occurrence there, so quarantining the same rows again adds none."""
    bad = labeled.where(F.col("reason").isNotNull()).select(
        F.lit(kind).alias("kind"), domain.alias("domain"), "reason", "source_file", "record")
    occurrence = F.row_number().over(Window.partitionBy("kind", "source_file", "record").orderBy("reason"))
    return (bad.withColumn("quarantine_id", F.md5(F.concat_ws("\n", "kind", "source_file", "record",
                                                              occurrence.cast("string"))))
            .withColumn("run_id", F.lit(run_id))
            .select(*QUARANTINE_COLUMNS))


def count_outcomes(labeled: DataFrame, domain: Column) -> dict[tuple[str | None, str], dict[str, int]]:
    """{(domain, source file): {"read", "added", "present", "merged" (rows folded into others) and each reason:
    rows}} of one labeled kind."""
    outcome = (F.when(F.col("reason").isNotNull(), F.col("reason"))
               .when(F.col("present"), "present").otherwise("added"))
    folded = F.col("merged") if "merged" in labeled.columns else F.lit(0)
    counts: dict[tuple[str | None, str], dict[str, int]] = {}
    for row in (labeled.groupBy(domain.alias("domain"), "source_file", outcome.alias("outcome"))
                .agg(F.count("*").alias("count"), F.sum(folded).alias("merged")).collect()):
        per_file = counts.setdefault((row["domain"], row["source_file"]),
                                     {"read": 0, "added": 0, "present": 0, "merged": 0})
        per_file[row["outcome"]] = row["count"]
        per_file["merged"] += row["merged"]
        per_file["read"] += row["count"] + row["merged"]
    return counts


def per_domain(by_file: dict[tuple[str | None, str], dict[str, int]]) -> dict[str | None, dict[str, int]]:
    """The outcome counts of :func:`count_outcomes` summed over each domain's files."""
    totals: dict[str | None, dict[str, int]] = {}
    for (domain, _), outcome in by_file.items():
        total = totals.setdefault(domain, {})
        for key, rows in outcome.items():
            total[key] = total.get(key, 0) + rows
    return totals


def _union(frames: list[DataFrame]) -> DataFrame | None:
    return reduce(DataFrame.unionByName, frames) if frames else None


def _new_sources(spark: SparkSession, config: Config, full: bool) -> dict[tuple[str, str | None], tuple[str, str, list[Source]]]:
    """{(kind, domain): (location, format, sources not read before or changed since)} for every input;
    ``full``: every source."""
    inputs = []
    for domain in config.data.domains:
        spec = config.domain_input(domain)
        inputs.append((contract.INTERACTIONS, domain, spec.interactions, spec.format))
        if spec.items:
            inputs.append((contract.ITEMS, domain, spec.items, spec.items_format or spec.format))
    if config.data.user_links:
        inputs.append((contract.USER_LINKS, None, config.expand(config.data.user_links), config.data.user_links_format))
    seen = set()
    if not full:
        seen = {(row.kind, row.domain, row.source, row.size, row.modified)
                for row in tables.read(spark, config.warehouse, tables.INGESTED_FILES).collect()}
    found = {}
    for kind, domain, location, file_format in inputs:
        sources = list_sources(spark, location, file_format)
        fresh = [source for source in sources if source.modified is None
                 or (kind, domain, source.path, source.size, source.modified) not in seen]
        found[(kind, domain)] = (location, file_format, fresh)
    return found


def content_hashes(spark: SparkSession, paths: list[str]) -> dict[str, str]:
    """{path: SHA-256 of the file's bytes}, computed by Spark on the executors (local and remote files alike)."""
    if not paths:
        return {}
    rows = (spark.read.format("binaryFile").load(paths)
            .select("path", F.sha2("content", 256).alias("content_hash")).collect())
    return {row.path: row.content_hash for row in rows}


def _skip_repeated_contents(spark: SparkSession, config: Config, new_sources: dict, full: bool) -> tuple[dict, dict, dict]:
    """Take out of ``new_sources`` every file whose bytes were ingested before (or are another new file's):
    the same file delivered again under another name, or touched, adds nothing. Returns (the sources to
    read, {(kind, domain): [(skipped source, the file it repeats)]}, {path: content hash} of those to read)."""
    hashes = content_hashes(spark, [source.path for (_, file_format, sources) in new_sources.values()
                                    if file_format not in ("delta", "table") for source in sources])
    known = {}
    if not full and tables.exists(spark, config.warehouse, tables.INGESTED_CONTENTS):
        known = {(row.kind, row.domain, row.content_hash): row.source
                 for row in tables.read(spark, config.warehouse, tables.INGESTED_CONTENTS).collect()}
    to_read, repeated = {}, {}
    for (kind, domain), (location, file_format, sources) in new_sources.items():
        fresh = []
        for source in sources:
            key = (kind, domain, hashes.get(source.path))
            if key[2] is not None and key in known:
                repeated.setdefault((kind, domain), []).append((source, known[key]))
                log.warning(f"{source.path}: the same bytes as {known[key]}, ingested before: skipped as already present")
                continue
            if key[2] is not None:
                known[key] = source.path
            fresh.append(source)
        to_read[(kind, domain)] = (location, file_format, fresh)
    return to_read, repeated, {path: hashes[path] for (_, _, sources) in to_read.values()
                               for path in (source.path for source in sources) if path in hashes}


def _read_kind(spark: SparkSession, config: Config, kind: str, new_sources: dict) -> DataFrame | None:
    """The new rows of one kind over all its inputs, parsed and labeled with their row-level reasons."""
    frames = []
    for (source_kind, domain), (location, file_format, sources) in new_sources.items():
        if source_kind != kind or not sources:
            continue
        if kind == contract.USER_LINKS:
            raw = read_sources(spark, sources, file_format, kind, location)
            frames.append(parse_links(raw, list(config.data.domains)))
            continue
        spec = config.domain_input(domain)
        column_map = spec.columns if kind == contract.INTERACTIONS else spec.item_columns
        raw = read_sources(spark, sources, file_format, kind, location, spec.header, column_map)
        frames.append(parse_interactions(raw, domain, spec, config.data) if kind == contract.INTERACTIONS
                      else parse_items(raw, domain))
    return _union(frames)


def _label_all(spark: SparkSession, config: Config, new_sources: dict, full: bool) -> dict[str, DataFrame]:
    """{kind: the new rows of that kind with ``reason`` and ``present``} for the kinds with new rows.

    ``full``: the tables are rebuilt from these rows alone, so rows already in them do not count.
    """
    warehouse, labeled = config.warehouse, {}

    def _existing(name: str) -> DataFrame | None:
        return tables.read(spark, warehouse, name) if not full and tables.exists(spark, warehouse, name) else None
    links = _read_kind(spark, config, contract.USER_LINKS, new_sources)
    if links is not None:
        labeled[contract.USER_LINKS] = label_duplicates(links, _existing(tables.USER_LINKS),
                                                        ["link_id"])
    items = _read_kind(spark, config, contract.ITEMS, new_sources)
    existing_items = _existing(tables.ITEMS)
    if items is not None:
        items = label_item_conflicts(items)
        if existing_items is None:
            labeled[contract.ITEMS] = items.withColumn("present", F.lit(False))
        else:
            unchanged = existing_items.select("domain", "item_id", "content_hash", F.lit(True).alias("present"))
            labeled[contract.ITEMS] = (items.join(unchanged, ["domain", "item_id", "content_hash"], "left")
                                       .withColumn("present", F.coalesce("present", F.lit(False))
                                                   & F.col("reason").isNull()))
    interactions = _read_kind(spark, config, contract.INTERACTIONS, new_sources)
    if interactions is not None:
        catalogues = [frame.select("domain", "item_id") for frame in (
            existing_items, items.where(F.col("reason").isNull()) if items is not None else None) if frame is not None]
        catalogued = [domain for domain in config.data.domains if config.data.domains[domain].items]
        catalogue = _union(catalogues) or spark.createDataFrame([], "domain string, item_id string")
        interactions = label_unknown_items(interactions, catalogue, catalogued)
        if config.data.repeats == "merge":
            interactions = merge_repeats(interactions)
        labeled[contract.INTERACTIONS] = label_duplicates(
            interactions, _existing(tables.INTERACTIONS), ["domain", "interaction_id"])
    return labeled


def _domain_of(kind: str, for_counts: bool = False) -> Column:
    """The domain a row of ``kind`` is filed under: a link's first domain, or none when counting links."""
    if kind == contract.USER_LINKS:
        return F.lit(None).cast("string") if for_counts else F.col("domain_a")
    return F.col("domain")


def _check_bad_shares(counts: dict[str, dict], max_bad_share: float, warehouse: str) -> str | None:
    """A one-line message naming every input whose quarantined share is above ``max_bad_share``."""
    failures = []
    for kind, by_domain in counts.items():
        for domain, outcome in by_domain.items():
            bad = _quarantined(outcome)
            share = sum(bad.values()) / max(1, outcome["read"])
            if share > max_bad_share:
                reasons = ", ".join(f"{reason} {n:,}" for reason, n in sorted(bad.items(), key=lambda kv: -kv[1]))
                where = kind if domain is None else f"{kind} of {domain}"
                failures.append(f"{where}: {share:.1%} of {outcome['read']:,} rows ({reasons})")
    if not failures:
        return None
    return (f"too many bad rows, above data.max_bad_share={max_bad_share}: {'; '.join(failures)}; see the "
            f"quarantine table at {tables.table_path(warehouse, tables.QUARANTINE)}")


def _write_good_rows(kind: str, labeled: DataFrame, config: Config, full: bool) -> int:
    """MERGE the good rows that are not in the table yet (``full``: replace the table); return its version."""
    name, keys, partition_by = TARGETS[kind]
    rows = labeled.where(F.col("reason").isNull() & ~F.col("present")).drop("reason", "present", "record",
                                                                            "merged")
    properties = tables.retention_properties(config.data.retention_days)
    if full:
        return tables.overwrite(rows, config.warehouse, name, partition_by, properties)
    if kind == contract.ITEMS:
        return tables.upsert(rows, config.warehouse, name, keys, "t.content_hash <> s.content_hash",
                             partition_by, properties)
    return tables.merge_new(rows, config.warehouse, name, keys, partition_by, properties)


def _manifest_rows(spark: SparkSession, new_sources: dict, repeated: dict, run_id: str) -> DataFrame:
    """The ``ingested_files`` rows of the sources read and of those skipped as repeated contents."""
    read = [(kind, domain, source) for (kind, domain), (_, _, sources) in new_sources.items() for source in sources]
    skipped = [(kind, domain, source) for (kind, domain), pairs in repeated.items() for source, _ in pairs]
    rows = [(kind, domain, source.path, source.size, source.modified, run_id) for kind, domain, source in read + skipped]
    return spark.createDataFrame(rows, MANIFEST_SCHEMA)


def _quarantined(outcome: dict[str, int]) -> dict[str, int]:
    return {reason: n for reason, n in outcome.items() if reason not in ("read", "added", "present", "merged")}


def _outcome_line(outcome: dict[str, int]) -> str:
    bad = _quarantined(outcome)
    listed = ", ".join(f"{reason} {n:,}" for reason, n in sorted(bad.items()))
    merged = f"{outcome['merged']:,} repeats merged into them, " if outcome["merged"] else ""
    return (f"{outcome['added']:,} added, {merged}{outcome['present']:,} already present, "
            f"{sum(bad.values()):,} quarantined" + (f" ({listed})" if listed else ""))


def _print_outcomes(by_file: dict[str, dict], counts: dict[str, dict], new_sources: dict) -> None:
    """One line per file read, then one per input (kind and domain)."""
    files = sorted(((kind, key) for kind, outcomes in by_file.items() for key in outcomes),
                   key=lambda kind_key: (kind_key[0], str(kind_key[1][0]), kind_key[1][1]))
    for number, (kind, (domain, path)) in enumerate(files, 1):
        outcome = by_file[kind][(domain, path)]
        log.info(f"file {number} of {len(files)}, {path}: {outcome['read']:,} rows, {_outcome_line(outcome)}")
    for kind, by_domain in counts.items():
        for domain, outcome in sorted(by_domain.items(), key=lambda kv: str(kv[0])):
            sources = len(new_sources[(kind, domain)][2])
            where = kind if domain is None else f"{kind} of {domain}"
            log.info(f"{where}: {outcome['read']:,} rows from {sources} new source(s): {_outcome_line(outcome)}")


def run_ingest(spark: SparkSession, config: Config) -> dict:
    """The ingest stage (see the module doc). Returns {"read", "added", "present", "merged": {kind: {domain: rows}},
    "quarantined": {kind: {domain: {reason: rows}}}, "sources": new sources read, "files": {kind: {file read: its
    counts, as per domain}}, "repeated": {input: [(file skipped, the file whose bytes it repeats)]},
    "versions": {table: v}}."""
    started, run_id, warehouse = time.time(), lineage.new_run_id(), config.warehouse
    # Without a record of what was read (a new warehouse, or tables from before ingest kept one), the
    # tables are rebuilt from every source.
    full = not tables.exists(spark, warehouse, tables.INGESTED_FILES)
    new_sources, repeated, hashes = _skip_repeated_contents(spark, config, _new_sources(spark, config, full), full)
    source_count = sum(len(sources) for _, _, sources in new_sources.values())
    labeled = {kind: frame.cache() for kind, frame in _label_all(spark, config, new_sources, full).items()}
    try:
        with progress(spark, "ingest", f"reading and checking {source_count} new source(s)"):
            by_file = {kind: count_outcomes(frame, _domain_of(kind, for_counts=True)) for kind, frame in labeled.items()}
        counts = {kind: per_domain(outcomes) for kind, outcomes in by_file.items()}
        _print_outcomes(by_file, counts, new_sources)
        versions = {}
        properties = tables.retention_properties(config.data.retention_days)
        quarantine = _union([quarantine_rows(frame, kind, _domain_of(kind), run_id) for kind, frame in labeled.items()])
        any_bad = any(_quarantined(outcome) for by_domain in counts.values() for outcome in by_domain.values())
        if full and (any_bad or tables.exists(spark, warehouse, tables.QUARANTINE)):
            versions[tables.QUARANTINE] = tables.overwrite(quarantine, warehouse, tables.QUARANTINE, ["domain"], properties)
        elif any_bad and not full:
            versions[tables.QUARANTINE] = tables.merge_new(quarantine, warehouse, tables.QUARANTINE,
                                                           ["domain", "quarantine_id"], ["domain"], properties)
        failure = _check_bad_shares(counts, config.data.max_bad_share, warehouse)
        if failure:
            lineage.record_run(spark, warehouse, "ingest", run_id, started, {}, versions, status="failed",
                               summary={"error": failure})
            raise XdrecError(failure)
        for kind in (contract.USER_LINKS, contract.ITEMS, contract.INTERACTIONS):
            if kind in labeled:
                versions[TARGETS[kind][0]] = _write_good_rows(kind, labeled[kind], config, full)
        if source_count or repeated:
            versions[tables.INGESTED_FILES] = tables.upsert(
                _manifest_rows(spark, new_sources, repeated, run_id), warehouse, tables.INGESTED_FILES,
                ["kind", "domain", "source"], "t.size <> s.size OR NOT (t.modified <=> s.modified)",
                properties=properties)
        if hashes:
            contents = [(kind, domain, hashes[source.path], source.path, run_id)
                        for (kind, domain), (_, _, sources) in new_sources.items() for source in sources
                        if source.path in hashes]
            versions[tables.INGESTED_CONTENTS] = tables.merge_new(
                spark.createDataFrame(contents, CONTENTS_SCHEMA), warehouse, tables.INGESTED_CONTENTS,
                ["kind", "domain", "content_hash"], properties=properties)
    finally:
        for frame in labeled.values():
            frame.unpersist()
    # A full run wrote its tables afresh, in few files; every merge adds files, so merged tables may
    # need compacting.
    for name in [] if full else list(versions):
        if tables.compact(spark, warehouse, name, config.data.compact_files_per_partition, config.data.retention_days):
            versions[name] = tables.version(spark, warehouse, name)
            log.info(f"{name}: compacted (v{versions[name]})")
    if not source_count:
        log.info("no new or changed input since the last run: nothing to do")
    else:
        log.info("tables: " + ", ".join(f"{name} v{version}" for name, version in versions.items()))
    outputs = [name for name, _, _ in TARGETS.values()] + [tables.QUARANTINE, tables.INGESTED_FILES]
    current = {name: tables.version(spark, warehouse, name) for name in outputs if tables.exists(spark, warehouse, name)}
    summary = {
        **{key: {kind: {domain: outcome[key] for domain, outcome in by_domain.items()}
                 for kind, by_domain in counts.items()} for key in ("read", "added", "present", "merged")},
        "quarantined": {kind: {domain: _quarantined(outcome) for domain, outcome in by_domain.items()}
                        for kind, by_domain in counts.items()},
        "sources": source_count,
        "files": {kind: {path: outcome for (_, path), outcome in outcomes.items()} for kind, outcomes in by_file.items()},
        "repeated": {f"{kind}/{domain}" if domain else kind: [(source.path, original) for source, original in pairs]
                     for (kind, domain), pairs in repeated.items()},
        "versions": current,
    }
    lineage.record_run(spark, warehouse, "ingest", run_id, started, {}, current,
                       summary={key: summary[key] for key in ("added", "quarantined", "sources")})
    return summary
