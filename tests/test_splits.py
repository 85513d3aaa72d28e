"""Split protocols on hand-made pairs: random, leave-last-out and cold-start only, each with its leakage check."""
from __future__ import annotations

import pandas as pd
import pytest

from xdrec.data.features import assign_shards, training_pairs
from xdrec.data.splits import assign_splits, choose_cold_start_users, given_cold_start_users, hash_unit

SOURCE, TARGET = "books", "movies"
PAIR_SCHEMA = ("domain string, user_id string, item_id string, user_idx int, item_idx int, timestamp long, "
               "rating double, weight double, events long")


@pytest.fixture(scope="module")
def pairs(spark):
    """300 users: 240 in both domains, 60 in the target only; 8 target pairs each (timestamps 1..8, in a
    shuffled item order) and 3 source pairs for those in both."""
    rows = []
    for user in range(300):
        for position in range(8):
            item = (position * 5 + user) % 40
            rows.append((TARGET, f"u{user}", f"m{item}", user, 100 + item, 1000 * user + position + 1, 4.0, 1.0, 1))
        if user < 240:
            rows += [(SOURCE, f"u{user}", f"b{item}", user, item, 5, 3.0, 1.0, 1) for item in (user % 30, 30, 31)]
    return spark.createDataFrame(rows, PAIR_SCHEMA)


def _split(pairs, holdout, valid_share=0.1, test_share=0.2):
    cold = choose_cold_start_users(pairs, SOURCE, TARGET, valid_share, test_share, seed=3)
    split = assign_splits(pairs, cold, TARGET, holdout, valid_ratio=0.1, test_ratio=0.2, seed=3)
    return split, cold.toPandas()


def _assert_no_leakage(split, cold):
    """No held-out pair among the training positives; no cold-start user with a target training row."""
    examples = training_pairs(split).toPandas()
    frame = split.toPandas()
    held_out = frame[frame["split"] != "train"][["domain", "user_idx", "item_idx"]]
    assert held_out.merge(examples, on=["domain", "user_idx", "item_idx"]).empty
    assert not examples[(examples["domain"] == TARGET) & examples["user_idx"].isin(cold["user_idx"])].shape[0]
    assert len(examples) == (frame["split"] == "train").sum()
    assert (frame.loc[frame["domain"] == SOURCE, "split"] == "train").all()
    return frame


def test_random_holdout_shares_and_no_leakage(pairs):
    split, cold = _split(pairs, "random")
    frame = _assert_no_leakage(split, cold)
    warm = frame[(frame["domain"] == TARGET) & ~frame["cold"]]
    shares = warm["split"].value_counts(normalize=True)
    assert abs(shares["valid"] - 0.1) < 0.04 and abs(shares["test"] - 0.2) < 0.04
    assert warm.groupby("user_idx")["split"].apply(lambda splits: (splits == "train").any()).all()


def test_leave_last_out_holds_out_each_users_latest(pairs):
    split, cold = _split(pairs, "leave_last_out")
    frame = _assert_no_leakage(split, cold)
    warm = frame[(frame["domain"] == TARGET) & ~frame["cold"]]
    for _, rows in warm.groupby("user_idx"):
        ordered = rows.sort_values("timestamp")["split"].tolist()
        assert ordered == ["train"] * 6 + ["valid", "test"]
    # Time order: no held-out interaction of a user is older than one of the user's training ones.
    newest_train = warm[warm["split"] == "train"].groupby("user_idx")["timestamp"].max()
    oldest_held = warm[warm["split"] != "train"].groupby("user_idx")["timestamp"].min()
    assert (oldest_held > newest_train.reindex(oldest_held.index)).all()


def test_leave_last_out_keeps_a_short_history_for_training(spark):
    rows = [(TARGET, "solo", "m1", 0, 1, 5, None, 1.0, 1),
            (TARGET, "pair", "m1", 1, 1, 5, None, 1.0, 1), (TARGET, "pair", "m2", 1, 2, 6, None, 1.0, 1)]
    frame = spark.createDataFrame(rows, PAIR_SCHEMA)
    cold = spark.createDataFrame([], "user_idx int, split string")
    split = assign_splits(frame, cold, TARGET, "leave_last_out", 0.1, 0.2, seed=1).toPandas()
    assert sorted(zip(split["user_idx"], split["item_idx"], split["split"])) == [
        (0, 1, "train"), (1, 1, "train"), (1, 2, "test")]


def test_cold_start_only_holds_out_just_the_cold_users(pairs):
    split, cold = _split(pairs, "none")
    frame = _assert_no_leakage(split, cold)
    overlapping = set(range(240))
    assert set(cold["user_idx"]) <= overlapping
    assert set(cold["split"]) == {"valid", "test"}
    assert abs(len(cold) / len(overlapping) - 0.3) < 0.08
    target = frame[frame["domain"] == TARGET].merge(cold, on="user_idx", how="left", suffixes=("", "_cold"))
    assert (target.loc[target["split_cold"].isna(), "split"] == "train").all()
    assert (target.loc[target["split_cold"].notna(), "split"] == target.loc[target["split_cold"].notna(), "split_cold"]).all()
    # Separate validation and test users: no user is in both.
    assert not set(cold.loc[cold["split"] == "valid", "user_idx"]) & set(cold.loc[cold["split"] == "test", "user_idx"])


def test_a_given_split_is_kept_and_users_without_target_training_are_cold(spark):
    """CDRIB-style: the data says which pairs are held out; users with only held-out target pairs are cold."""
    rows = []
    for user in range(40):
        for position in range(6):
            item = (position * 7 + user) % 40
            # Users 0-9 have only held-out target pairs (valid or test); the others train on all but one.
            given = (("valid", "test")[position % 2] if user < 10 else "test" if position == 5 else "train")
            rows.append((TARGET, f"u{user}", f"m{item}", user, 100 + item, None, None, 1.0, 1, given))
        rows.append((SOURCE, f"u{user}", f"b{user % 30}", user, user % 30, None, None, 1.0, 1, "test"))
    frame = spark.createDataFrame(rows, PAIR_SCHEMA + ", given_split string")
    cold = given_cold_start_users(frame, TARGET)
    split = assign_splits(frame, cold, TARGET, "given", 0.1, 0.2, seed=3)
    result = _assert_no_leakage(split, cold.toPandas())
    target = result[result["domain"] == TARGET]
    assert sorted(cold.toPandas()["user_idx"]) == list(range(10))
    assert set(cold.toPandas()["split"]) == {"test"}  # each has a test pair
    assert target["cold"].tolist() == (target["user_idx"] < 10).tolist()
    assert {(row.user_idx, row.item_idx): row.split for row in target.itertuples()} == {
        (row[3], row[4]): row[9] for row in rows if row[0] == TARGET}


def test_splits_are_the_same_on_every_run(pairs):
    first, _ = _split(pairs, "random")
    second, _ = _split(pairs.repartition(7), "random")
    columns = ["domain", "user_idx", "item_idx"]
    pd.testing.assert_frame_equal(first.toPandas().sort_values(columns).reset_index(drop=True),
                                  second.toPandas().sort_values(columns).reset_index(drop=True))


def test_examples_and_their_shards_are_the_same_on_every_run(pairs):
    split, _ = _split(pairs, "random")

    def examples(frame):
        shards = assign_shards(training_pairs(frame), shards=4).toPandas()
        return shards.sort_values(list(shards.columns)).reset_index(drop=True)

    first = examples(split)
    pd.testing.assert_frame_equal(first, examples(split.repartition(5)))
    sizes = first.groupby(["domain", "shard"]).size()
    assert all(per_domain.max() - per_domain.min() <= 1 for _, per_domain in sizes.groupby(level=0))


def test_hash_unit_is_in_the_unit_interval_and_spread(spark):
    draws = [row.draw for row in spark.range(2000).select(hash_unit("id", seed=1).alias("draw")).collect()]
    assert 0.0 <= min(draws) and max(draws) < 1.0
    assert 0.45 < sum(draws) / len(draws) < 0.55
