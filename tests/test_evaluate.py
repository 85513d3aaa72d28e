"""Metrics against hand-computed cases, the popularity baseline, and the evaluate stage's outputs."""
from __future__ import annotations

import json
import os

import pytest

from xdrec import tables
from xdrec.evaluate import group_metrics, per_user_metrics, popularity_recommendations, run_evaluate

RECOMMENDATIONS = "model string, user_idx int, rank int, item_idx int"
TEST = "user_idx int, item_idx int, cold boolean"


def by_key(rows, *key):
    return {tuple(row[name] for name in key): row for row in rows}


@pytest.fixture(scope="module")
def hand_case(spark):
    """Two models, five test users (1, 2, 5 warm; 3, 4 cold), k = 3.

    Model m: u1 hits at rank 3; u2 hits at ranks 1 and 3 of its two relevant items; u3's only hit is at
    rank 4, beyond k; u4 hits at rank 1 of four relevant items; u5 gets no recommendations at all.
    Model other recommends only to u1, a hit at rank 1.
    """
    recommendations = spark.createDataFrame([
        ("m", 1, 1, 20), ("m", 1, 2, 21), ("m", 1, 3, 10),
        ("m", 2, 1, 11), ("m", 2, 2, 30), ("m", 2, 3, 10),
        ("m", 3, 1, 40), ("m", 3, 2, 41), ("m", 3, 3, 42), ("m", 3, 4, 12),
        ("m", 4, 1, 13), ("m", 4, 2, 50), ("m", 4, 3, 51),
        ("other", 1, 1, 10),
    ], RECOMMENDATIONS)
    test = spark.createDataFrame([
        (1, 10, False), (1, 10, False),  # a repeated interaction is one relevant item
        (2, 10, False), (2, 11, False),
        (3, 12, True),
        (4, 13, True), (4, 14, True), (4, 15, True), (4, 16, True),
        (5, 17, False),
    ], TEST)
    per_user = per_user_metrics(recommendations, test, k=3)
    return per_user.collect(), group_metrics(per_user, k=3).collect()


# Hand-computed per-user NDCG@3 of model m (DCG / ideal DCG, gain 1/log2(rank + 1)).
NDCG_U1 = (1 / 2) / 1                           # hit at rank 3: 1/log2(4) = 0.5; ideal one hit at rank 1
NDCG_U2 = (1 + 1 / 2) / (1 + 0.6309297535714575)  # hits at ranks 1, 3; ideal ranks 1, 2 (1/log2(3) = 0.63093)
NDCG_U4 = 1 / (1 + 0.6309297535714575 + 1 / 2)    # hit at rank 1; ideal min(4, k) = 3 hits


def test_per_user_hr_and_ndcg_by_hand(hand_case):
    per_user = by_key(hand_case[0], "model", "user_idx")
    expected = {1: (1.0, NDCG_U1, 1), 2: (1.0, NDCG_U2, 2), 3: (0.0, 0.0, 1), 4: (1.0, NDCG_U4, 4), 5: (0.0, 0.0, 1)}
    for user, (hr, ndcg, relevant) in expected.items():
        row = per_user[("m", user)]
        assert (row["HR"], row["relevant"]) == (hr, relevant)
        assert row["NDCG"] == pytest.approx(ndcg, abs=1e-12)
    assert per_user[("m", 3)]["cold"] and not per_user[("m", 5)]["cold"]


def test_users_without_recommendations_count_as_zeros(hand_case):
    per_user = by_key(hand_case[0], "model", "user_idx")
    assert len(per_user) == 2 * 5
    assert [per_user[("other", user)]["HR"] for user in range(1, 6)] == [1.0, 0.0, 0.0, 0.0, 0.0]
    groups = by_key(hand_case[1], "model", "user_group", "metric")
    assert groups[("other", "all", "NDCG")]["value"] == pytest.approx(1 / 5)
    assert groups[("other", "all", "NDCG")]["users"] == 5


def test_group_means_split_warm_and_cold(hand_case):
    groups = by_key(hand_case[1], "model", "user_group", "metric")
    expected = {
        ("warm", "HR"): (2 / 3, 3), ("warm", "NDCG"): ((NDCG_U1 + NDCG_U2 + 0) / 3, 3),
        ("cold", "HR"): (1 / 2, 2), ("cold", "NDCG"): ((0 + NDCG_U4) / 2, 2),
        ("all", "HR"): (3 / 5, 5), ("all", "NDCG"): ((NDCG_U1 + NDCG_U2 + NDCG_U4) / 5, 5),
    }
    for (group, metric), (value, users) in expected.items():
        row = groups[("m", group, metric)]
        assert row["value"] == pytest.approx(value, abs=1e-12)
        assert (row["users"], row["k"]) == (users, 3)
    assert len(groups) == 2 * 3 * 2


def test_popularity_excludes_seen_items_and_breaks_ties_by_item(spark):
    # Training counts: item 10 three times, 11 and 12 twice each (tie), 13 once.
    train = spark.createDataFrame([(1, 10), (2, 10), (3, 10), (1, 11), (4, 11), (2, 12), (5, 12), (7, 13)],
                                  "user_idx int, item_idx int")
    users = spark.createDataFrame([(1, "u1"), (2, "u2"), (6, "u6")], "user_idx int, user_id string")
    item_index = spark.createDataFrame([("movies", f"i{i}", i) for i in range(10, 14)] + [("books", "b0", 0)],
                                       "domain string, item_id string, item_idx int")

    rows = popularity_recommendations(train, users, item_index, "movies", k=2, model_version="t@v0").collect()

    got = {}
    for row in sorted(rows, key=lambda r: (r.user_idx, r.rank)):
        assert (row.model, row.model_version, row.domain, row.item_id) == ("popularity", "t@v0", "movies", f"i{row.item_idx}")
        got.setdefault(row.user_id, []).append((row.rank, row.item_idx, row.score))
    assert got == {
        "u1": [(1, 12, 2.0), (2, 13, 1.0)],  # seen 10 and 11
        "u2": [(1, 11, 2.0), (2, 13, 1.0)],  # seen 10 and 12
        "u6": [(1, 10, 3.0), (2, 11, 2.0)],  # no history: 11 wins the tie with 12
    }


def test_run_evaluate_writes_table_and_report(spark, tmp_path, make_config, capsys):
    warehouse = str(tmp_path)
    config = make_config(warehouse, "score.k=2", "evaluate.k=2")
    interactions = spark.createDataFrame([
        ("movies", 1, 8, "train", False), ("movies", 1, 9, "train", False), ("movies", 2, 8, "train", False),
        ("movies", 3, 10, "train", False),
        ("movies", 1, 10, "test", False), ("movies", 2, 9, "test", False), ("movies", 4, 8, "test", True),
        ("movies", 3, 11, "valid", False), ("books", 4, 0, "train", True),
    ], "domain string, user_idx int, item_idx int, split string, cold boolean")
    tables.overwrite(interactions, warehouse, tables.INDEXED_INTERACTIONS, partition_by=["domain"])
    tables.overwrite(spark.createDataFrame([(f"u{i}", i) for i in range(1, 5)], "user_id string, user_idx int"),
                     warehouse, tables.USER_INDEX)
    tables.overwrite(spark.createDataFrame([("movies", f"i{i}", i) for i in range(8, 12)] + [("books", "b0", 0)],
                                           "domain string, item_id string, item_idx int"),
                     warehouse, tables.ITEM_INDEX)
    # finetune: u1 hit at rank 1, u2 hit at rank 2, nothing for cold u4 (u3 has no test rows).
    recommendations = spark.createDataFrame(
        [("finetune", "v1", "movies", u, f"u{u}", rank, item, f"i{item}", 1.0)
         for u, rank, item in [(1, 1, 10), (1, 2, 11), (2, 1, 11), (2, 2, 9), (3, 1, 8), (3, 2, 9)]],
        "model string, model_version string, domain string, user_idx int, user_id string, rank int, "
        "item_idx int, item_id string, score float")
    tables.overwrite(recommendations, warehouse, tables.RECOMMENDATIONS, partition_by=["model"])

    result = run_evaluate(spark, config)

    ndcg_u2 = 0.6309297535714575  # hit at rank 2: 1/log2(3); ideal: one hit at rank 1, 1
    assert result["finetune"]["warm"] == pytest.approx({"HR@2": 1.0, "NDCG@2": (1 + ndcg_u2) / 2})
    assert result["finetune"]["cold"] == {"HR@2": 0.0, "NDCG@2": 0.0}
    assert result["finetune"]["all"] == pytest.approx({"HR@2": 2 / 3, "NDCG@2": (1 + ndcg_u2) / 3})
    # Popularity (train counts 8: 2, 9: 1, 10: 1): u1 -> [10], u2 -> [9, 10], u4 -> [8, 9]: all hit at rank 1.
    assert result["popularity"] == {group: {"HR@2": 1.0, "NDCG@2": 1.0} for group in ("warm", "cold", "all")}

    table = tables.read(spark, warehouse, tables.METRICS).collect()
    assert len(table) == 2 * 3 * 2 and {row.users for row in table if row.user_group == "all"} == {3}
    with open(os.path.join(warehouse, "reports", "metrics.json")) as handle:
        report = json.load(handle)
    assert report["metrics"] == json.loads(json.dumps(result)) and report["users"] == {"warm": 2, "cold": 1, "all": 3}
    printed = capsys.readouterr().out
    assert "HR@2" in printed and "cold (1 users)" in printed
    assert printed.index("finetune") < printed.index("popularity")
