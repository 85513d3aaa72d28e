"""The Spark evaluation path against hand-computed ranks and the plain-Python reference."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from reference_metrics import reference_user_metrics
from xdrec.evaluation import baselines
from xdrec.evaluation.evaluate import (FULL, SERVED, compare_best, coverage, draw_per_group, full_ranking_metrics,
                                       group_means, long_format, negative_draws, paired_bootstrap,
                                       rating_error_means, sampled_metrics, sampled_names, seed_pooled,
                                       target_test_users)
from xdrec.modeling.metrics import metric_names
from xdrec.modeling.model import FactorModel
from xdrec.spark import native_blas_dir
from xdrec.training import factors

KS = [1, 5]
CANDIDATES = np.arange(10)  # target items 0..9; items 10..11 belong to another domain


@pytest.fixture(scope="module")
def ordered_scorer(tmp_path_factory):
    """Every user ranks items by index: item 0 best. Saved as a baseline's factors, as evaluation loads it."""
    scorer = FactorModel(np.zeros((6, 1)), np.zeros((12, 1)), -np.arange(12, dtype=np.float32))
    return baselines.save_scorer(str(tmp_path_factory.mktemp("scorer")), scorer)


@pytest.fixture(scope="module")
def indexed(spark):
    """Target 'movies' rows of users 1 (warm), 2 (warm), 3 (cold); one source row."""
    rows = [
        ("movies", 1, 0, "train", False), ("movies", 1, 3, "test", False),              # unseen order 1,2,3..
        ("movies", 2, 1, "train", False), ("movies", 2, 0, "test", False), ("movies", 2, 4, "test", False),
        ("movies", 3, 6, "test", True), ("movies", 3, 7, "valid", True),
        ("books", 3, 11, "train", False),
    ]
    return spark.createDataFrame(rows, "domain string, user_idx int, item_idx int, split string, cold boolean")


def by_user(rows):
    return {row["user_idx"]: row for row in rows}


@pytest.fixture(scope="module")
def reversed_scorer(tmp_path_factory):
    """Every user ranks items against their index: item 11 best."""
    scorer = FactorModel(np.zeros((6, 1)), np.zeros((12, 1)), np.arange(12, dtype=np.float32))
    return baselines.save_scorer(str(tmp_path_factory.mktemp("reversed")), scorer)


def test_full_ranking_in_spark_matches_hand_ranks_and_the_reference(spark, indexed, ordered_scorer, reversed_scorer):
    users = target_test_users(indexed, "movies")
    ranked = full_ranking_metrics(users, {"ordered": ordered_scorer, "reversed": reversed_scorer}, CANDIDATES,
                                  KS).collect()
    rows = by_user(row for row in ranked if row["model"] == "ordered")
    names = metric_names(KS)
    # user 1 saw item 0; item 3 is third of 1..9 -> rank 3. User 2 saw item 1; items 0 and 4 rank 1 and 4.
    # user 3 saw nothing in the target; item 6 ranks 7 of 10.
    hand = {1: {"HR@5": 1.0, "NDCG@5": 0.5, "MRR": 1 / 3, "AUC": 1 - 2 / 8},
            2: {"HR@1": 1.0, "Recall@1": 0.5, "MAP@5": (1 / 1 + 2 / 4) / 2, "AUC": 1 - (0 + 2) / (2 * 7)},
            3: {"HR@5": 0.0, "MRR": 1 / 7, "AUC": 1 - 6 / 9}}
    for user, expected in hand.items():
        values = dict(zip(names, rows[user]["values"]))
        for name, value in expected.items():
            assert values[name] == pytest.approx(value), (user, name)
    unseen = {1: [i for i in range(10) if i != 0], 2: [i for i in range(10) if i != 1], 3: list(range(10))}
    relevant = {1: {3}, 2: {0, 4}, 3: {6}}
    for user in unseen:
        reference = reference_user_metrics(unseen[user], relevant[user], KS)
        assert dict(zip(names, rows[user]["values"])) == pytest.approx(reference)
        assert rows[user]["candidate_count"] == len(unseen[user])
    assert rows[3]["cold"] and not rows[1]["cold"]
    # The same pass ranks with the other model, by its own scores.
    reversed_rows = by_user(row for row in ranked if row["model"] == "reversed")
    assert len(ranked) == 6
    for user in unseen:
        reference = reference_user_metrics(unseen[user][::-1], relevant[user], KS)
        assert dict(zip(names, reversed_rows[user]["values"])) == pytest.approx(reference)


def test_group_means_split_warm_and_cold_users(spark, indexed, ordered_scorer):
    users = target_test_users(indexed, "movies")
    per_user = long_format(full_ranking_metrics(users, {"m": ordered_scorer}, CANDIDATES, KS), metric_names(KS), FULL)
    means = {(row["user_group"], row["metric"]): (row["value"], row["count"])
             for row in group_means(per_user).collect()}
    assert means[("warm", "MRR")] == pytest.approx(((1 / 3 + 1) / 2, 2))
    assert means[("cold", "MRR")] == pytest.approx((1 / 7, 1))
    assert means[("all", "HR@1")] == pytest.approx((1 / 3, 3))


def test_sampled_protocol_is_seeded_and_ranks_among_negatives(spark, indexed, ordered_scorer, reversed_scorer):
    lines = indexed.where("domain = 'movies' and split = 'test'").select("user_idx", "item_idx", "cold")
    train_items = np.array([5, 8, 9])  # every negative scores below items 0..4 and above 6 only sometimes
    scorers = {"ordered": ordered_scorer, "reversed": reversed_scorer}
    first = sampled_metrics(lines, scorers, train_items, 50, seed=3, ks=KS).collect()
    second = sampled_metrics(lines, scorers, train_items, 50, seed=3, ks=KS).collect()
    assert sorted(map(tuple, first)) == sorted(map(tuple, second))
    values = {(row["model"], row["user_idx"], row["item_idx"]): dict(zip(sampled_names(KS), row["values"]))
              for row in first}
    assert values[("ordered", 1, 3)]["MRR"] == 1.0 and values[("ordered", 2, 4)]["HR@1"] == 1.0
    # item 6 is beaten by every drawn 5 and by nothing else: rank = 1 + count of 5s among 50 draws
    fives = 1 / values[("ordered", 3, 6)]["MRR"] - 1
    assert 0 < fives < 50
    # Both models rank against the same draws: reversed, item 6 is beaten by every drawn 8 and 9.
    assert 1 / values[("reversed", 3, 6)]["MRR"] - 1 == 50 - fives


def test_a_lines_negative_draws_are_its_own_and_uniform():
    users, items = np.arange(2_000) % 50, np.arange(2_000) // 50
    drawn = negative_draws(3, users, items, pool_size=10, count=100)
    assert drawn.shape == (2_000, 100) and drawn.min() == 0 and drawn.max() == 9
    # A line's draws are the same alone, among other lines, under another seed they are not.
    assert (negative_draws(3, users[[17]], items[[17]], 10, 100) == drawn[17]).all()
    assert (negative_draws(4, users[[17]], items[[17]], 10, 100) != drawn[17]).any()
    # (user, item) is not (item, user): user 1 with item 2 draws unlike user 2 with item 1.
    assert (negative_draws(3, np.array([1]), np.array([2]), 10, 100)
            != negative_draws(3, np.array([2]), np.array([1]), 10, 100)).any()
    # 200,000 draws over 10 positions: each count is binomial with sd 134; 6 sd allows a chance failure of
    # about 1 in 10^8.
    counts = np.bincount(drawn.ravel(), minlength=10)
    assert np.abs(counts - 20_000).max() < 6 * np.sqrt(200_000 * 0.1 * 0.9)


def test_als_on_the_target_alone_is_read_from_emcdrs_target_half(spark):
    """The als_target baseline taken from EMCDR's model equals ALS fitted on the target alone, real Spark ALS
    both times with the same settings and rows."""
    draw = np.random.default_rng(5)
    books = [("books", user, int(item)) for user in range(30) for item in draw.choice(10, 4, replace=False)]
    movies = [("movies", user, int(item)) for user in range(20) for item in draw.choice(range(10, 18), 3, False)]
    train = spark.createDataFrame(books + movies, "domain string, user_idx int, item_idx int").cache()
    target = train.where("domain = 'movies'")
    settings = dict(rank=4, iterations=5, regularization=0.1, alpha=1.0, seed=3)
    emcdr = factors.emcdr(train.where("domain = 'books'"), target, 32, 18, **settings)
    user_factors, item_factors = factors.als_factors(target, 32, 18, **settings)
    derived = baselines.als_target_from_emcdr(emcdr, target)
    # Users 20..29 have only source rows: EMCDR maps them, ALS on the target leaves them at zero.
    assert (emcdr.user_embedding.weight[20:30] != 0).any(dim=1).all()
    # Spark sums each normal equation in the order its shuffle delivers the rows, which may differ between two
    # fits in the last bits; nothing else differs.
    np.testing.assert_allclose(derived.user_embedding.weight.numpy(), user_factors, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(derived.item_embedding.weight.numpy(), item_factors, rtol=1e-4, atol=1e-6)
    train.unpersist()


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="scripts/setup.sh fetches OpenBLAS with apt-get")
def test_mllib_solves_through_the_openblas_that_setup_fetched(spark):
    """The local session loads the OpenBLAS of scripts/setup.sh through netlib's JNI bindings, not netlib's
    Java fallback, at half the speed for ALS (README, "Native BLAS for ALS")."""
    assert native_blas_dir() is not None, "scripts/setup.sh did not fetch OpenBLAS into the cache"
    netlib = spark.sparkContext._jvm.dev.ludovic.netlib
    assert netlib.blas.BLAS.getInstance().getClass().getSimpleName() == "JNIBLAS"
    assert netlib.lapack.LAPACK.getInstance().getClass().getSimpleName() == "JNILAPACK"


def test_paired_bootstrap():
    same = paired_bootstrap(np.ones(50), np.ones(50), samples=200, seed=0)
    assert same["difference"] == 0 and not same["significant"]
    better = paired_bootstrap(np.linspace(0.5, 1, 80), np.linspace(0, 0.5, 80), samples=200, seed=0)
    assert better["significant"] and better["low"] > 0 and better["difference"] == pytest.approx(0.5)


def test_coverage_uses_each_models_latest_run(spark):
    recommendations = spark.createDataFrame(
        [("a", "2026-01-01", 1, 1, 0), ("a", "2026-01-02", 1, 1, 1), ("a", "2026-01-02", 2, 1, 2),
         ("a", "2026-01-02", 2, 2, 3)],
        "model string, run_date string, user_idx int, rank int, item_idx int")
    assert coverage(recommendations, catalogue_size=10, k=1) == {"a": pytest.approx(0.2)}


def test_rating_errors_match_hand_computed_mae_and_rmse(spark):
    """Target ratings: global mean 3; user 1 (warm, mean 4) and user 2 (cold, source mean 5 where the
    source's mean is 4, so 5 - 4 + 3 = 4 on the target's scale)."""
    schema = "domain string, user_idx int, item_idx int, rating double, split string, cold boolean"
    train = spark.createDataFrame([
        ("movies", 1, 0, 4.0, "train", False), ("movies", 1, 1, 4.0, "train", False),
        ("movies", 3, 0, 2.0, "train", False), ("movies", 3, 1, 2.0, "train", False),
        ("books", 2, 10, 5.0, "train", False), ("books", 4, 10, 3.0, "train", False)], schema)
    test = spark.createDataFrame([
        ("movies", 1, 2, 5.0, "test", False), ("movies", 2, 0, 2.0, "test", True),
        ("movies", 2, 1, 4.0, "test", True)], schema)
    predictions = baselines.rating_predictions(train, test, "movies", rank=2, iterations=5, regularization=0.1, seed=1)
    by_model = {}
    for row in predictions.collect():
        by_model.setdefault(row["model"], {})[(row["user_idx"], row["item_idx"])] = row["prediction"]
    assert by_model["global_mean"] == {(1, 2): 3.0, (2, 0): 3.0, (2, 1): 3.0}
    assert by_model["user_mean"] == pytest.approx({(1, 2): 4.0, (2, 0): 4.0, (2, 1): 4.0})
    # ALS knows neither item 2 nor user 2: every prediction falls back to user_mean.
    assert by_model["als_explicit"] == pytest.approx(by_model["user_mean"])
    errors = {(r["model"], r["user_group"], r["metric"]): (r["value"], r["count"])
              for r in rating_error_means(predictions).collect()}
    assert errors[("user_mean", "warm", "MAE")] == pytest.approx((1.0, 1))
    assert errors[("user_mean", "cold", "MAE")] == pytest.approx((1.0, 2))  # |4-2| and |4-4| over 2
    assert errors[("user_mean", "cold", "RMSE")][0] == pytest.approx((4.0 / 2) ** 0.5)
    assert errors[("global_mean", "all", "RMSE")][0] == pytest.approx(((4 + 1 + 1) / 3) ** 0.5)


def test_bootstrap_pairs_the_models_best_on_cold_start_users(spark):
    """finetune leads on all users but joint on cold ones: the cold-start comparison must use joint."""
    means = {"finetune": {"all": {"NDCG@10": 0.5}, "cold": {"NDCG@10": 0.1}},
             "joint": {"all": {"NDCG@10": 0.3}, "cold": {"NDCG@10": 0.2}},
             "popularity": {"all": {"NDCG@10": 0.4}, "cold": {"NDCG@10": 0.05}},
             "als_merged": {"all": {"NDCG@10": 0.2}, "cold": {"NDCG@10": 0.15}}}
    rows = [(model, user, user % 2 == 0, "NDCG@10", means[model]["cold" if user % 2 == 0 else "all"]["NDCG@10"])
            for model in means for user in range(6)]
    per_user = spark.createDataFrame(rows, "model string, user_idx int, cold boolean, metric string, value double")
    result = compare_best(per_user, ["finetune", "joint"], ["popularity", "als_merged"], "NDCG@10", 200, 0, means)
    assert (result["picked_on"], result["transfer"], result["baseline"]) == ("cold", "joint", "als_merged")
    assert result["cold"]["difference"] == pytest.approx(0.05) and result["cold"]["users"] == 3
    versus = result["versus"]
    assert set(versus) == {"popularity", "als_merged"}
    assert versus["popularity"]["cold"]["difference"] == pytest.approx(0.15) and versus["popularity"]["cold"]["significant"]
    assert versus["als_merged"]["cold"] == result["cold"]


def test_the_bootstrap_interval_does_not_depend_on_the_order_spark_returns_the_users_in(spark):
    """Resampling draws user positions: the same users in another order gave another interval."""
    rng = np.random.default_rng(3)
    means = {model: {"all": {"NDCG@10": 0.0}} for model in ("joint", "als_merged")}
    rows = [(model, user, False, "NDCG@10", float(rng.random())) for model in means for user in range(300)]
    schema = "model string, user_idx int, cold boolean, metric string, value double"
    intervals = [compare_best(spark.createDataFrame(order, schema).repartition(partitions), ["joint"], ["als_merged"],
                              "NDCG@10", 200, 0, means)["all"]
                 for order, partitions in ((rows, 1), (rows[::-1], 7))]
    assert intervals[0] == intervals[1]


def test_seeds_pooled_compare_each_users_mean_over_the_seeds_and_each_seeds_served_model(spark):
    """Two seeds' runs over users 0-3 (user 3 evaluated by the first only): joint beats als_merged by 0.1 on
    the first seed and 0.3 on the second, so by 0.2 on each user's mean; the second seed served
    als_merged, so the served model's mean is joint's 0.1 margin halved."""
    schema = "model string, user_idx int, cold boolean, metric string, value double"
    first = [(model, user, True, "NDCG@10", value) for user in range(4)
             for model, value in (("joint", 0.5), ("als_merged", 0.4))]
    second = [(model, user, True, "NDCG@10", value) for user in range(3)
              for model, value in (("joint", 0.6), ("als_merged", 0.3))]
    pooled = seed_pooled([spark.createDataFrame(first, schema), spark.createDataFrame(second, schema)],
                         ["joint", "als_merged"])
    assert sorted({row["user_idx"] for row in pooled.collect()}) == [0, 1, 2]
    means = {"joint": {"cold": {"NDCG@10": 0.55}}, "als_merged": {"cold": {"NDCG@10": 0.35}},
             SERVED: {"cold": {"NDCG@10": 0.4}}}
    best = compare_best(pooled, ["joint"], ["als_merged"], "NDCG@10", 200, 0, means)
    assert best["transfer"] == "joint" and best["cold"]["users"] == 3
    assert best["cold"]["difference"] == pytest.approx(0.2) and best["cold"]["significant"]
    served = compare_best(pooled, [SERVED], ["als_merged"], "NDCG@10", 200, 0, means)
    assert served["cold"]["difference"] == pytest.approx((0.1 + 0.0) / 2)


def test_draw_per_group_keeps_the_same_users_of_each_group_on_any_partitioning(spark):
    users = spark.createDataFrame([(user, user % 3 == 0) for user in range(300)], "user_idx int, cold boolean")
    drawn = draw_per_group(users, per_group=20, seed=5)
    chosen = {row["user_idx"]: row["cold"] for row in drawn.collect()}
    assert sum(chosen.values()) == 20 and len(chosen) == 40
    assert {row["user_idx"] for row in draw_per_group(users.repartition(7), 20, seed=5).collect()} == set(chosen)
    assert {row["user_idx"] for row in draw_per_group(users, 20, seed=6).collect()} != set(chosen)
    assert draw_per_group(users, 150, seed=5).count() == 100 + 150  # a smaller group is kept whole
    assert draw_per_group(users, 0, seed=5).count() == 300
