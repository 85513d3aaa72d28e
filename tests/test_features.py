"""Features: stable ids across runs, reruns that change nothing, leakage, feature tables, examples, lineage."""
from __future__ import annotations

import os

import pandas as pd
import pytest

from xdrec.data import lineage, tables
from xdrec.data.features import assign_dense_ids, item_features, resolve_people, run_features, user_features
from xdrec.data.ingest import run_ingest
from xdrec.errors import XdrecError

FEATURE_TABLES = (tables.USER_INDEX, tables.ITEM_INDEX, tables.COLD_START_USERS, tables.INDEXED_INTERACTIONS,
                  tables.USER_FEATURES, tables.ITEM_FEATURES, tables.CROSS_DOMAIN_USERS, tables.ITEM_EMBEDDINGS,
                  tables.TRAINING_EXAMPLES)


def _snapshot(spark, warehouse):
    """Every feature table as a pandas frame sorted by its plain columns, for exact comparison."""
    frames = {}
    for name in FEATURE_TABLES:
        frame = tables.read(spark, warehouse, name).toPandas()
        plain = [column for column in frame.columns if column != "embedding"]
        frames[name] = frame.sort_values(plain).reset_index(drop=True)
    return frames


def _versions(spark, warehouse):
    return {name: tables.version(spark, warehouse, name) for name in FEATURE_TABLES}


@pytest.fixture(scope="module")
def pipeline(spark, make_config, featured_warehouse, featured_copy, tmp_path_factory):
    """The session's synthetic data through ingest and features (``featured_warehouse``); on a copy, features
    again unchanged, and after new files, which the configured patterns take in."""
    config = make_config(featured_copy(tmp_path_factory.mktemp("features")),
                         "data.domains.movies.interactions=\"{raw}/movies/interactions*.csv\"",
                         "data.domains.movies.items=\"{raw}/movies/items*.csv\"")
    runs = {"first": featured_warehouse[1]}
    first_tables, first_versions = _snapshot(spark, config.warehouse), _versions(spark, config.warehouse)
    runs["unchanged"] = run_features(spark, config)
    runs["unchanged_versions"] = _versions(spark, config.warehouse)
    # New files: a new user with a new movie, and a catalogue file with that movie and a new title for m0.
    folder = os.path.dirname(config.domain_input("movies").items)
    with open(os.path.join(folder, "interactions-new.csv"), "w") as handle:
        handle.write("user_id,item_id,rating,timestamp\nnewcomer,m_new,5,1700000000\nnewcomer,m1,4,1700000001\n")
    with open(os.path.join(folder, "items-new.csv"), "w") as handle:
        handle.write("item_id,title,category\nm_new,a brand new movie,romance\nm0,movie zero retitled,mystery\n")
    run_ingest(spark, config)
    runs["incremental"] = run_features(spark, config)
    runs["incremental_tables"] = _snapshot(spark, config.warehouse)
    return config, runs, first_tables, first_versions


@pytest.fixture(scope="module")
def frames(pipeline):
    return pipeline[2]


def test_indices_are_dense_and_ordered(frames):
    users = frames[tables.USER_INDEX].sort_values("user_idx")
    assert users["user_idx"].tolist() == list(range(len(users)))
    assert users["user_id"].tolist() == sorted(users["user_id"])
    items = frames[tables.ITEM_INDEX].sort_values("item_idx")
    assert items["item_idx"].tolist() == list(range(len(items)))
    assert list(zip(items["domain"], items["item_id"])) == sorted(zip(items["domain"], items["item_id"]))
    assert len(users) == 400 and len(items) == 240


def test_rerun_on_unchanged_inputs_changes_no_table(pipeline):
    _, runs, _, first_versions = pipeline
    assert runs["unchanged"]["skipped"] and not runs["first"]["skipped"]
    assert runs["unchanged_versions"] == first_versions
    drop = ("skipped", "versions")
    assert {k: v for k, v in runs["unchanged"].items() if k not in drop} == \
        {k: v for k, v in runs["first"].items() if k not in drop}


def test_new_input_gets_new_ids_and_old_ids_never_change(pipeline, frames):
    _, runs, _, _ = pipeline
    after = runs["incremental_tables"]
    for name, key in ((tables.USER_INDEX, ["user_id"]), (tables.ITEM_INDEX, ["domain", "item_id"])):
        before = frames[name]
        merged = before.merge(after[name], on=key, suffixes=("_before", "_after"))
        id_column = name.replace("_index", "_idx")
        assert len(merged) == len(before)
        assert (merged[f"{id_column}_before"] == merged[f"{id_column}_after"]).all(), name
    new_user = after[tables.USER_INDEX].set_index("user_id")["user_idx"]["newcomer"]
    assert new_user == len(frames[tables.USER_INDEX])
    new_item = after[tables.ITEM_INDEX].set_index("item_id")["item_idx"]["m_new"]
    assert new_item == len(frames[tables.ITEM_INDEX])
    indexed = after[tables.INDEXED_INTERACTIONS]
    assert len(indexed[indexed["user_idx"] == new_user]) == 2


def test_item_text_is_embedded_once_per_text(pipeline):
    _, runs, _, _ = pipeline
    assert runs["first"]["text"] == {"items": 240, "embedded_texts": 240}
    # m_new's text and m0's new title: only those two are embedded, the other 239 come from the cache.
    assert runs["incremental"]["text"] == {"items": 241, "embedded_texts": 2}
    embeddings = runs["incremental_tables"][tables.ITEM_EMBEDDINGS]
    assert embeddings["embedding"].map(len).eq(384).all()
    assert embeddings["item_idx"].is_unique


def test_cold_start_users_are_held_out_of_target_training(pipeline, frames):
    config = pipeline[0]
    source, target = config.data.source_domain, config.data.target_domain
    indexed, cold = frames[tables.INDEXED_INTERACTIONS], frames[tables.COLD_START_USERS]
    users_of = lambda domain: set(indexed.loc[indexed["domain"] == domain, "user_idx"])  # noqa: E731
    overlapping = users_of(source) & users_of(target)
    cold_users = set(cold["user_idx"])
    assert cold_users <= overlapping
    assert set(cold["split"]) == {"valid", "test"}
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


def test_no_held_out_interaction_reaches_what_the_trainer_reads(pipeline, frames):
    config = pipeline[0]
    target = config.data.target_domain
    indexed, cold = frames[tables.INDEXED_INTERACTIONS], set(frames[tables.COLD_START_USERS]["user_idx"])
    train = indexed[indexed["split"] == "train"]
    examples = frames[tables.TRAINING_EXAMPLES]
    held_out = indexed[indexed["split"] != "train"][["domain", "user_idx", "item_idx"]]
    assert held_out.merge(examples, on=["domain", "user_idx", "item_idx"]).empty
    assert not examples[(examples["domain"] == target) & examples["user_idx"].isin(cold)].shape[0]

    user_rows = frames[tables.USER_FEATURES]
    assert not user_rows[(user_rows["domain"] == target) & user_rows["user_idx"].isin(cold)].shape[0]
    expected_counts = train.groupby(["domain", "user_idx"]).size()
    assert user_rows.set_index(["domain", "user_idx"])["interactions"].sort_index().equals(
        expected_counts.sort_index().rename("interactions"))

    items = frames[tables.ITEM_FEATURES].set_index(["domain", "item_idx"])
    popularity = train.groupby(["domain", "item_idx"]).size().reindex(items.index, fill_value=0)
    assert (items["popularity"] == popularity).all()  # train pairs only: held-out ones never counted

    crossing = frames[tables.CROSS_DOMAIN_USERS].set_index("user_idx")
    cold_rows = crossing.loc[sorted(cold)]
    assert cold_rows["in_source"].all() and not cold_rows["in_target"].any() and not cold_rows["overlap"].any()
    assert crossing["source_top_category"].notna().sum() == crossing["in_source"].sum()


def test_every_warm_target_user_keeps_a_train_interaction(pipeline, frames):
    config = pipeline[0]
    indexed = frames[tables.INDEXED_INTERACTIONS]
    warm = indexed[(indexed["domain"] == config.data.target_domain) & ~indexed["cold"]]
    assert warm.groupby("user_idx")["split"].apply(lambda splits: (splits == "train").any()).all()
    shares = warm["split"].value_counts(normalize=True)
    assert abs(shares["valid"] - config.features.valid_ratio) < 0.05
    assert abs(shares["test"] - config.features.test_ratio) < 0.05


def test_training_examples_are_the_train_splits_pairs_and_nothing_else(frames):
    """No negative rows: the trainer draws those (train.negatives)."""
    examples, indexed = frames[tables.TRAINING_EXAMPLES], frames[tables.INDEXED_INTERACTIONS]
    assert sorted(examples.columns) == ["domain", "item_idx", "shard", "user_idx"]
    columns = ["domain", "user_idx", "item_idx"]
    train = indexed.loc[indexed["split"] == "train", columns]
    pd.testing.assert_frame_equal(examples[columns].sort_values(columns).reset_index(drop=True),
                                  train.sort_values(columns).reset_index(drop=True), check_dtype=False)


def test_training_examples_are_in_even_shards(spark, pipeline, frames):
    config = pipeline[0]
    sizes = frames[tables.TRAINING_EXAMPLES].groupby(["domain", "shard"]).size()
    for domain, per_shard in sizes.groupby(level=0):
        assert len(per_shard) == config.features.shards
        assert per_shard.max() - per_shard.min() <= 1, domain
    files = spark.read.format("delta").load(tables.table_path(config.warehouse, tables.TRAINING_EXAMPLES))
    assert files.select("_metadata.file_path").distinct().count() == 2 * config.features.shards


def test_runs_record_the_versions_read_and_written(spark, pipeline):
    config, runs, _, _ = pipeline
    recorded = tables.read(spark, config.warehouse, tables.RUNS).where("stage = 'features'").orderBy("started_at").toPandas()
    assert len(recorded) == 3
    last = recorded.iloc[-1]
    assert dict(last["reads"])[tables.INTERACTIONS] == tables.version(spark, config.warehouse, tables.INTERACTIONS)
    assert lineage.pinned_versions(spark, config.warehouse, "features", [tables.TRAINING_EXAMPLES]) == {
        tables.TRAINING_EXAMPLES: tables.version(spark, config.warehouse, tables.TRAINING_EXAMPLES)}
    # An unchanged rerun pins what the run before it wrote.
    assert dict(recorded.iloc[1]["writes"]) == dict(recorded.iloc[0]["writes"])
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{tables.table_path(config.warehouse, tables.TRAINING_EXAMPLES)}`").first()
    assert detail["properties"]["delta.deletedFileRetentionDuration"] == f"interval {config.data.retention_days} days"
    assert detail["partitionColumns"] == ["domain", "shard"]


def test_pinned_versions_without_a_run_is_a_one_line_error(spark, tmp_path):
    with pytest.raises(XdrecError, match="no successful 'features' run"):
        lineage.pinned_versions(spark, str(tmp_path), "features", [tables.TRAINING_EXAMPLES])


def test_dense_ids_number_only_new_keys_after_the_existing_ones(spark):
    existing = spark.createDataFrame([("a", 0), ("c", 1), ("gone", 2)], "user_id string, user_idx int")
    keys = spark.createDataFrame([("d",), ("c",), ("b",), ("a",), ("b",)], "user_id string")
    new = {row.user_id: row.user_idx for row in assign_dense_ids(keys, "user_idx", existing).collect()}
    assert new == {"b": 3, "d": 4}
    fresh = {row.user_id: row.user_idx for row in assign_dense_ids(keys, "user_idx", None).collect()}
    assert fresh == {"a": 0, "b": 1, "c": 2, "d": 3}


def test_links_make_one_person_of_users_with_different_ids(spark):
    users = spark.createDataFrame([("game", "7"), ("video", "7"), ("video", "9"), ("music", "x"), ("game", "8")],
                                  "domain string, user_id string")
    links = spark.createDataFrame([("game", "7", "video", "7"), ("video", "7", "music", "x")],
                                  "domain_a string, user_id_a string, domain_b string, user_id_b string")
    people = {(r.domain, r.user_id): r.person for r in resolve_people(users, links, shared_user_ids=False).collect()}
    assert people == {("game", "7"): "game:7", ("video", "7"): "game:7", ("music", "x"): "game:7",  # a chain
                      ("video", "9"): "video:9", ("game", "8"): "game:8"}
    shared = {(r.domain, r.user_id): r.person for r in resolve_people(users, None, shared_user_ids=True).collect()}
    assert shared[("game", "7")] == shared[("video", "7")] == "7"


def test_user_and_item_features_on_known_rows(spark):
    train = spark.createDataFrame(
        [("a", 0, 10, 0, 4.0, 1.0, 1), ("a", 0, 11, 86400, 2.0, 2.0, 3), ("a", 1, 10, 2 * 86400, None, 1.0, 1)],
        "domain string, user_idx int, item_idx int, timestamp long, rating double, weight double, events long")
    users = {r.user_idx: r for r in user_features(train).collect()}
    assert (users[0].interactions, users[0].events, users[0].weight, users[0].ratings) == (2, 4, 3.0, 2)
    assert users[0].rating_mean == 3.0 and users[0].recency_days == 1.0 and users[1].rating_mean is None
    index = spark.createDataFrame([("a", 10), ("a", 11), ("a", 12)], "domain string, item_idx int")
    items = {r.item_idx: r for r in item_features(train, index).collect()}
    assert [items[i].popularity for i in (10, 11, 12)] == [2, 1, 0]
    assert [items[i].popularity_rank for i in (10, 11, 12)] == [1, 2, 3]
    assert items[10].recency_days == 0.0 and items[12].recency_days is None
