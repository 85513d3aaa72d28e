"""Features: dense stable ids, the cold-start split, leakage, negative sampling and determinism."""
from __future__ import annotations

import pandas as pd
import pytest

from xdrec import tables
from xdrec.datasets import materialize_raw
from xdrec.features import assign_dense_ids, hash_unit, run_features
from xdrec.ingest import run_ingest

FEATURE_TABLES = (tables.USER_INDEX, tables.ITEM_INDEX, tables.COLD_START_USERS, tables.INDEXED_INTERACTIONS,
                  tables.TRAINING_EXAMPLES)


def _snapshot(spark, warehouse):
    """Every feature table as a pandas frame sorted by all columns, for exact comparison."""
    frames = {}
    for name in FEATURE_TABLES:
        frame = tables.read(spark, warehouse, name).toPandas()
        frames[name] = frame.sort_values(list(frame.columns)).reset_index(drop=True)
    return frames


@pytest.fixture(scope="module")
def pipeline(spark, make_config, tmp_path_factory):
    """Ingest and features run twice on the same synthetic data (one module-wide run: Spark jobs are slow)."""
    config = make_config(tmp_path_factory.mktemp("features"), "data.synthetic_users=200")
    materialize_raw(config)
    run_ingest(spark, config)
    first = run_features(spark, config)
    first_tables = _snapshot(spark, config.warehouse)
    second = run_features(spark, config)
    return config, first, first_tables, second, _snapshot(spark, config.warehouse)


@pytest.fixture(scope="module")
def frames(pipeline):
    return pipeline[2]


def test_rerun_gives_identical_tables_and_new_versions(pipeline):
    _, first, first_tables, second, second_tables = pipeline
    for name in FEATURE_TABLES:
        pd.testing.assert_frame_equal(first_tables[name], second_tables[name], obj=name)
    assert all(second["versions"][name] == first["versions"][name] + 1 for name in FEATURE_TABLES)
    assert {k: v for k, v in first.items() if k != "versions"} == {k: v for k, v in second.items() if k != "versions"}


def test_indices_are_dense_and_ordered(frames):
    users = frames[tables.USER_INDEX].sort_values("user_idx")
    assert users["user_idx"].tolist() == list(range(len(users)))
    assert users["user_id"].tolist() == sorted(users["user_id"])
    items = frames[tables.ITEM_INDEX].sort_values("item_idx")
    assert items["item_idx"].tolist() == list(range(len(items)))
    assert list(zip(items["domain"], items["item_id"])) == sorted(zip(items["domain"], items["item_id"]))
    assert len(users) == 200 and len(items) == 240


def test_dense_ids_keep_existing_ids_and_append_new_keys(spark):
    existing = spark.createDataFrame([("a", 0), ("c", 1), ("gone", 2)], "user_id string, user_idx int")
    keys = spark.createDataFrame([("d",), ("c",), ("b",), ("a",), ("b",)], "user_id string")
    ids = {row.user_id: row.user_idx for row in assign_dense_ids(keys, "user_idx", existing).collect()}
    assert ids == {"a": 0, "c": 1, "gone": 2, "b": 3, "d": 4}
    fresh = {row.user_id: row.user_idx for row in assign_dense_ids(keys, "user_idx", None).collect()}
    assert fresh == {"a": 0, "b": 1, "c": 2, "d": 3}


def test_hash_unit_is_in_the_unit_interval_and_spread(spark):
    draws = [row.draw for row in spark.range(2000).select(hash_unit("id", seed=1).alias("draw")).collect()]
    assert 0.0 <= min(draws) and max(draws) < 1.0
    assert 0.45 < sum(draws) / len(draws) < 0.55


def test_cold_start_users_are_held_out_of_target_training(pipeline, frames):
    config = pipeline[0]
    source, target = config.data.source_domain, config.data.target_domain
    indexed, cold = frames[tables.INDEXED_INTERACTIONS], frames[tables.COLD_START_USERS]
    users_of = lambda domain: set(indexed.loc[indexed["domain"] == domain, "user_idx"])  # noqa: E731
    overlapping = users_of(source) & users_of(target)
    cold_users = set(cold["user_idx"])
    assert cold_users <= overlapping
    assert set(cold["split"]) == {"valid", "test"}

    # Shares of the overlapping users, configured as 0.1 and 0.2.
    shares = cold["split"].value_counts() / len(overlapping)
    assert abs(shares["valid"] - config.features.cold_start_valid_share) < 0.07
    assert abs(shares["test"] - config.features.cold_start_test_share) < 0.08

    target_rows = indexed[indexed["domain"] == target].merge(cold, on="user_idx", how="left", suffixes=("", "_cold"))
    cold_rows = target_rows[target_rows["split_cold"].notna()]
    assert (cold_rows["split"] == cold_rows["split_cold"]).all()  # no cold user has a target train row
    assert (indexed["cold"] == indexed["user_idx"].isin(cold_users)).all()
    source_rows = indexed[indexed["domain"] == source]
    assert (source_rows["split"] == "train").all()
    assert source_rows["user_idx"].isin(cold_users).any()  # cold users keep their source history


def test_every_warm_target_user_keeps_a_train_interaction(pipeline, frames):
    config = pipeline[0]
    indexed = frames[tables.INDEXED_INTERACTIONS]
    warm = indexed[(indexed["domain"] == config.data.target_domain) & ~indexed["cold"]]
    assert warm.groupby("user_idx")["split"].apply(lambda splits: (splits == "train").any()).all()
    shares = warm["split"].value_counts(normalize=True)
    assert abs(shares["valid"] - config.features.valid_ratio) < 0.05
    assert abs(shares["test"] - config.features.test_ratio) < 0.05


def test_held_out_pairs_never_appear_among_training_examples(frames):
    indexed, examples = frames[tables.INDEXED_INTERACTIONS], frames[tables.TRAINING_EXAMPLES]
    held_out = indexed[indexed["split"] != "train"][["domain", "user_idx", "item_idx"]]
    positives = examples[examples["label"] == 1.0]
    assert held_out.merge(positives, on=["domain", "user_idx", "item_idx"]).empty
    train = indexed[indexed["split"] == "train"][["domain", "user_idx", "item_idx"]]
    assert len(positives) == len(train)
    assert len(positives.merge(train, on=["domain", "user_idx", "item_idx"])) == len(train)


def test_negatives_avoid_train_items_and_match_the_ratio(pipeline, frames):
    config = pipeline[0]
    examples, items = frames[tables.TRAINING_EXAMPLES], frames[tables.ITEM_INDEX]
    assert str(examples["label"].dtype) == "float32"
    positives = examples[examples["label"] == 1.0]
    negatives = examples[examples["label"] == 0.0]
    assert positives.merge(negatives, on=["domain", "user_idx", "item_idx"]).empty
    in_domain = negatives.merge(items, on=["domain", "item_idx"], how="left")
    assert in_domain["item_id"].notna().all()  # negatives come from the positive's own domain
    for domain, rows in examples.groupby("domain"):
        ratio = (rows["label"] == 0.0).sum() / (rows["label"] == 1.0).sum()
        assert config.features.negatives * 0.97 <= ratio <= config.features.negatives, domain
    per_user = examples.groupby(["domain", "user_idx"])["label"].agg(["sum", "count"])
    assert (per_user["count"] - per_user["sum"] <= config.features.negatives * per_user["sum"]).all()
