"""Features: dense ids, the cold-start split of the target domain, and training examples with negatives.

Reads ``interactions`` and ``items``; writes ``user_index``, ``item_index``, ``cold_start_users``,
``indexed_interactions`` and ``training_examples`` (columns in :mod:`xdrec.tables`).

Every random choice is a hash of the row's ids and a seed, never ``rand()``: the same input and seed
give the same tables on every run, whatever the partitioning.
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from xdrec import tables
from xdrec.config import Config

# Negative sampling draws this many candidates per wanted negative from the items a user has not
# trained on (more when the user has trained on most of a domain), and at most MAX_CANDIDATES_PER_NEGATIVE.
CANDIDATES_PER_NEGATIVE = 2
MAX_CANDIDATES_PER_NEGATIVE = 20
_UNIT_BITS = 53  # a double holds 53 bits exactly


def hash_unit(*columns: Column | str, seed: int) -> Column:
    """A pseudo-random double in [0, 1), fixed by the columns' values and ``seed``."""
    bits = F.xxhash64(*columns, F.lit(seed)).bitwiseAND(F.lit((1 << _UNIT_BITS) - 1))
    return bits.cast("double") / float(1 << _UNIT_BITS)


def assign_dense_ids(keys: DataFrame, id_column: str, existing: DataFrame | None) -> DataFrame:
    """Distinct ``keys`` with an int ``id_column``, dense from 0 in key order.

    With an ``existing`` index (keys plus ``id_column``), its ids are kept and keys it lacks get ids after
    its maximum, again in key order; keys no longer present keep their rows, so ids never change meaning.
    """
    key_columns = keys.columns
    keys = keys.distinct()
    if existing is None:
        new_keys, first_id = keys, F.lit(0)
    else:
        new_keys = keys.join(existing.select(*key_columns), key_columns, "left_anti")
        next_id = existing.agg(F.coalesce(F.max(id_column) + 1, F.lit(0)).alias("first_id"))
        new_keys, first_id = new_keys.crossJoin(F.broadcast(next_id)), F.col("first_id")
    # One global ordering: indices are small (users, items), a single partition is fine here.
    numbered = new_keys.withColumn(
        id_column, (first_id + F.row_number().over(Window.orderBy(*key_columns)) - 1).cast("int")
    ).select(*key_columns, id_column)
    return numbered if existing is None else existing.select(*key_columns, id_column).unionByName(numbered)


def build_user_index(interactions: DataFrame, existing: DataFrame | None) -> DataFrame:
    """(user_id, user_idx): one id per user across all domains (equal user_id means the same user)."""
    return assign_dense_ids(interactions.select("user_id"), "user_idx", existing)


def build_item_index(interactions: DataFrame, items: DataFrame, existing: DataFrame | None) -> DataFrame:
    """(domain, item_id, item_idx): global ids over catalogued and interacted items, by domain then item_id."""
    keys = items.select("domain", "item_id").unionByName(interactions.select("domain", "item_id"))
    return assign_dense_ids(keys, "item_idx", existing)


def index_interactions(interactions: DataFrame, user_index: DataFrame, item_index: DataFrame) -> DataFrame:
    """Interactions with user_idx and item_idx added (ids kept: the split hashes them)."""
    return (interactions.join(user_index, "user_id").join(item_index, ["domain", "item_id"])
            .select("domain", "user_id", "item_id", "user_idx", "item_idx", "timestamp"))


def choose_cold_start_users(indexed: DataFrame, source_domain: str, target_domain: str,
                            valid_share: float, test_share: float, seed: int) -> DataFrame:
    """(user_idx, split) of the cold-start users: users of both domains picked by a seeded hash of user_id.

    A share ``valid_share`` of the overlapping users goes to "valid", the next ``test_share`` to "test";
    their target interactions are all held out, their source interactions stay for training.
    """
    def users_of(domain: str) -> DataFrame:
        return indexed.where(F.col("domain") == domain).select("user_id", "user_idx").distinct()

    overlapping = users_of(source_domain).join(users_of(target_domain), ["user_id", "user_idx"])
    draw = hash_unit("user_id", seed=seed)
    split = F.when(draw < valid_share, "valid").when(draw < valid_share + test_share, "test")
    return overlapping.select("user_idx", split.alias("split")).where(F.col("split").isNotNull())


def assign_splits(indexed: DataFrame, cold_start_users: DataFrame, target_domain: str,
                  valid_ratio: float, test_ratio: float, seed: int) -> DataFrame:
    """(domain, user_idx, item_idx, timestamp, split, cold) for every indexed interaction.

    Non-target domains are all "train". In the target domain a cold-start user's interactions all go to
    the user's split; a warm user's go to valid/test/train by a seeded hash of (user_id, item_id), and
    when that leaves a warm user no train interaction, the one drawn closest to train is moved back.
    """
    cold = cold_start_users.select("user_idx", F.col("split").alias("cold_split"), F.lit(True).alias("cold"))
    draw = hash_unit("user_id", "item_id", seed=seed)
    is_target = F.col("domain") == target_domain
    drawn_split = (F.when(~is_target, "train")
                   .when(F.col("cold"), F.col("cold_split"))
                   .when(draw < valid_ratio, "valid")
                   .when(draw < valid_ratio + test_ratio, "test")
                   .otherwise("train"))
    per_user = Window.partitionBy("domain", "user_idx")
    closest_to_train = per_user.orderBy(F.col("draw").desc(), "item_idx")
    keeps_no_train = ~F.max((F.col("split") == "train").cast("int")).over(per_user).cast("boolean")
    return (
        indexed.join(cold, "user_idx", "left")
        .withColumn("cold", F.coalesce(F.col("cold"), F.lit(False)))
        .withColumn("draw", draw)
        .withColumn("split", drawn_split)
        .withColumn("split", F.when(is_target & ~F.col("cold") & keeps_no_train
                                    & (F.row_number().over(closest_to_train) == 1), "train")
                    .otherwise(F.col("split")))
        .select("domain", "user_idx", "item_idx", "timestamp", "split", "cold")
    )


def sample_negatives(positives: DataFrame, item_index: DataFrame, negatives: int, seed: int) -> DataFrame:
    """(domain, user_idx, item_idx) negatives: ``negatives`` per positive, from the same domain's items.

    Candidates are item positions drawn by a seeded hash of (user, positive item, draw number); candidates
    the user has a positive for are removed, repeats too, and the first ``negatives`` draws are kept.
    A user with positives for nearly all of a domain's items can get fewer; one with all gets none.
    """
    positions = item_index.select(
        "domain", "item_idx",
        (F.row_number().over(Window.partitionBy("domain").orderBy("item_idx")) - 1).alias("position"),
    )
    domain_sizes = item_index.groupBy("domain").agg(F.count("*").alias("domain_items"))
    user_sizes = positives.groupBy("domain", "user_idx").agg(F.count("*").alias("user_items"))
    free_items = F.col("domain_items") - F.col("user_items")
    draws = F.least(
        F.ceil(F.lit(CANDIDATES_PER_NEGATIVE * negatives) * F.col("domain_items") / free_items),
        F.lit(MAX_CANDIDATES_PER_NEGATIVE * negatives),
    ).cast("int")
    candidates = (
        positives.join(user_sizes, ["domain", "user_idx"]).join(F.broadcast(domain_sizes), "domain")
        .where(free_items > 0)
        .select("domain", "user_idx", F.col("item_idx").alias("positive_idx"), "domain_items",
                F.explode(F.sequence(F.lit(0), draws - 1)).alias("draw"))
        .withColumn("position", F.pmod(F.xxhash64("user_idx", "positive_idx", "draw", F.lit(seed)),
                                       F.col("domain_items")))
        .join(positions, ["domain", "position"])
        .join(positives, ["domain", "user_idx", "item_idx"], "left_anti")
        .groupBy("domain", "user_idx", "positive_idx", "item_idx").agg(F.min("draw").alias("draw"))
    )
    first_draws = Window.partitionBy("domain", "user_idx", "positive_idx").orderBy("draw")
    return (candidates.withColumn("draw_rank", F.row_number().over(first_draws))
            .where(F.col("draw_rank") <= negatives)
            .select("domain", "user_idx", "item_idx"))


def build_training_examples(indexed: DataFrame, item_index: DataFrame, negatives: int, seed: int) -> DataFrame:
    """(domain, user_idx, item_idx, label float): train interactions as 1.0 plus sampled negatives as 0.0."""
    positives = indexed.where(F.col("split") == "train").select("domain", "user_idx", "item_idx")
    negative_rows = sample_negatives(positives, item_index, negatives, seed)
    return (positives.withColumn("label", F.lit(1.0).cast("float"))
            .unionByName(negative_rows.withColumn("label", F.lit(0.0).cast("float"))))


def _read_if_exists(spark: SparkSession, warehouse: str, name: str) -> DataFrame | None:
    return tables.read(spark, warehouse, name) if tables.exists(spark, warehouse, name) else None


def _counts(frame: DataFrame, *columns: str) -> dict:
    """Rows per value of ``columns``, nested in column order: {a: {b: n}} for two columns."""
    counts: dict = {}
    for row in frame.groupBy(*columns).count().orderBy(*columns).collect():
        node = counts
        for column in columns[:-1]:
            node = node.setdefault(row[column], {})
        node[row[columns[-1]]] = row["count"]
    return counts


def run_features(spark: SparkSession, config: Config) -> dict:
    """Build and write the feature tables; return row counts, cold-start users per split and versions."""
    warehouse, data, features = config.warehouse, config.data, config.features
    interactions = tables.read(spark, warehouse, tables.INTERACTIONS)
    items = tables.read(spark, warehouse, tables.ITEMS)
    versions = {}

    def write(frame: DataFrame, name: str, partition_by: list[str] | None = None) -> DataFrame:
        """Write a table and read it back, so later steps start from what was committed."""
        versions[name] = tables.overwrite(frame, warehouse, name, partition_by)
        return tables.read(spark, warehouse, name)

    user_index = write(build_user_index(interactions, _read_if_exists(spark, warehouse, tables.USER_INDEX)),
                       tables.USER_INDEX)
    item_index = write(build_item_index(interactions, items, _read_if_exists(spark, warehouse, tables.ITEM_INDEX)),
                       tables.ITEM_INDEX)
    indexed = index_interactions(interactions, user_index, item_index)
    cold_start_users = write(
        choose_cold_start_users(indexed, data.source_domain, data.target_domain,
                                features.cold_start_valid_share, features.cold_start_test_share, features.seed),
        tables.COLD_START_USERS,
    )
    split = write(
        assign_splits(indexed, cold_start_users, data.target_domain, features.valid_ratio, features.test_ratio,
                      features.seed),
        tables.INDEXED_INTERACTIONS, ["domain"],
    )
    examples = write(build_training_examples(split, item_index, features.negatives, features.seed),
                     tables.TRAINING_EXAMPLES, ["domain"])

    summary = {
        "users": user_index.count(),
        "items": _counts(item_index, "domain"),
        "cold_start_users": _counts(cold_start_users, "split"),
        "indexed_interactions": _counts(split, "domain", "split"),
        "training_examples": _counts(
            examples.withColumn("kind", F.when(F.col("label") == 1.0, "positive").otherwise("negative")),
            "domain", "kind"),
        "versions": versions,
    }
    cold = summary["cold_start_users"]
    split_rows = {name: sum(per_domain.get(name, 0) for per_domain in summary["indexed_interactions"].values())
                  for name in ("train", "valid", "test")}
    kinds = {kind: sum(per_domain.get(kind, 0) for per_domain in summary["training_examples"].values())
             for kind in ("positive", "negative")}
    print(f"[features] user_index: {summary['users']:,} users (v{versions[tables.USER_INDEX]})")
    print(f"[features] item_index: {sum(summary['items'].values()):,} items (v{versions[tables.ITEM_INDEX]})")
    print(f"[features] cold_start_users: {cold.get('valid', 0):,} valid, {cold.get('test', 0):,} test "
          f"(v{versions[tables.COLD_START_USERS]})")
    print(f"[features] indexed_interactions: {sum(split_rows.values()):,} rows (train {split_rows['train']:,}, "
          f"valid {split_rows['valid']:,}, test {split_rows['test']:,}) (v{versions[tables.INDEXED_INTERACTIONS]})")
    print(f"[features] training_examples: {sum(kinds.values()):,} rows ({kinds['positive']:,} positive, "
          f"{kinds['negative']:,} negative) (v{versions[tables.TRAINING_EXAMPLES]})")
    return summary
