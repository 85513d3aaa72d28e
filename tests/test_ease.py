"""The EASE factor model: Steck's closed form over both domains' interactions, its regularisation chosen on
validation, served exactly or through its top singular directions."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from conftest import synthetic_config
from xdrec.config import EaseConfig
from xdrec.modeling.model import FactorModel
from xdrec.training.factors import ease, item_gram, user_vectors
from xdrec.training.loop import Collective
from xdrec.training.train import model_version
from xdrec.training.validation import ValidationSet, ranking_figures

NUM_USERS, SOURCE_ITEMS, TARGET_ITEMS = 60, 12, 10
NUM_ITEMS = SOURCE_ITEMS + TARGET_ITEMS
TARGET = np.arange(SOURCE_ITEMS, NUM_ITEMS, dtype=np.int64)


@pytest.fixture(scope="module")
def interactions(spark):
    """(domain, user_idx, item_idx): users 0-39 in both domains, 40-59 source-only (cold-start). A user's
    source taste (item % 3) predicts the target items they pick, so a weight learns the link."""
    rng = np.random.default_rng(3)
    rows = []
    for user in range(NUM_USERS):
        taste = user % 3
        for item in rng.choice([i for i in range(SOURCE_ITEMS) if i % 3 == taste], size=3, replace=False):
            rows.append(("source", user, int(item)))
        if user < 40:
            for item in rng.choice([i for i in TARGET if i % 3 == taste], size=2, replace=False):
                rows.append(("target", user, int(item)))
    return spark.createDataFrame(rows, "domain string, user_idx int, item_idx int")


def closed_form(pairs: np.ndarray, kept: np.ndarray, regularization: float) -> tuple[np.ndarray, np.ndarray]:
    """(X, B) in float64 by the paper's formula, over the ``kept`` items' columns."""
    interactions = np.zeros((NUM_USERS, NUM_ITEMS))
    interactions[pairs[:, 0], pairs[:, 1]] = 1.0
    interactions = interactions[:, kept]
    inverse = np.linalg.inv(interactions.T @ interactions + regularization * np.eye(len(kept)))
    weights = -inverse / np.diag(inverse)
    np.fill_diagonal(weights, 0.0)
    return interactions, weights


def cold_validation() -> ValidationSet:
    """The cold-start users, each to find the target items of their taste."""
    users = np.arange(40, NUM_USERS, dtype=np.int64)
    return ValidationSet(users=users, cold=np.ones(len(users), dtype=bool),
                         relevant=[TARGET[TARGET % 3 == user % 3] for user in users],
                         seen=[np.empty(0, dtype=np.int64)] * len(users), candidates=TARGET)


def fit(interactions, folder, **settings):
    validation = cold_validation()

    def validated(scorer) -> float:
        return ranking_figures(scorer, validation, 3, Collective())["cold/NDCG@3"]

    return ease(interactions, NUM_USERS, NUM_ITEMS, TARGET, EaseConfig(**settings), validation.users, validated,
                str(folder))


@pytest.fixture(scope="module")
def pairs(spark):
    """(user_idx, column) of 200 users over 30 columns, on several partitions, and the same as a 0/1 matrix;
    users 150-199 have no row."""
    rng = np.random.default_rng(5)
    matrix = (rng.random((200, 30)) < 0.3) & (np.arange(200) < 150)[:, None]
    users, columns = np.nonzero(matrix)
    frame = spark.createDataFrame([(int(u), int(c)) for u, c in zip(users, columns)], "user_idx int, column int")
    return frame.repartition(4), matrix.astype(np.float32)


@pytest.mark.parametrize("block_values", [1 << 24, 100, 7])
def test_the_gram_matrix_is_summed_over_the_tasks_in_blocks_exactly(pairs, block_values, tmp_path):
    """Whole at once, in blocks of 3 rows (100 nonzeros at most), and a row at a time (7 nonzeros or fewer
    leave one row): the counts are integers, so equal to the last bit. The blocks' subfolder goes after."""
    frame, matrix = pairs
    folder = str(tmp_path / "gram")
    np.testing.assert_array_equal(item_gram(frame, 30, folder, block_values), matrix.T @ matrix)
    assert os.listdir(folder) == []


@pytest.mark.parametrize("block_values", [1 << 24, 9])
def test_every_user_vector_is_the_users_row_times_the_weights_and_zero_without_rows(pairs, block_values, tmp_path):
    """All of a task's users in one block, and two users a block (9 floats of vectors 4 wide)."""
    frame, matrix = pairs
    weights = np.random.default_rng(6).standard_normal((30, 4)).astype(np.float32)
    folder = str(tmp_path / "vectors")
    vectors = user_vectors(frame, weights, 220, folder, block_values)
    assert vectors.shape == (220, 4) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors[:200], matrix @ weights, rtol=1e-5, atol=1e-5)
    assert not vectors[150:].any()
    assert os.listdir(folder) == []


def test_ease_scores_users_by_the_closed_form_at_the_weight_that_validates_best(interactions, tmp_path):
    model, chosen = fit(interactions, tmp_path / "gram", regularization=[0.5, 4.0, 64.0])
    pairs = np.array([[row.user_idx, row.item_idx] for row in interactions.collect()])
    kept = np.arange(NUM_ITEMS)
    mean_users = np.bincount(pairs[:, 1], minlength=NUM_ITEMS).mean()
    figures = {}
    assert list(chosen["validation"])[:3] == [0.5, 4.0, 64.0]
    for multiple in chosen["validation"]:
        matrix, weights = closed_form(pairs, kept, multiple * mean_users)
        exact = FactorModel(matrix @ weights[:, TARGET], np.eye(NUM_ITEMS)[:, SOURCE_ITEMS:])
        figures[multiple] = ranking_figures(exact, cold_validation(), 3, Collective())["cold/NDCG@3"]
    assert chosen["validation"] == pytest.approx(figures, abs=1e-6)
    assert chosen["multiple"] == max(figures, key=figures.get)
    assert chosen["regularization"] == pytest.approx(chosen["multiple"] * mean_users, rel=1e-6)
    # Ten target items, rank 1024: served exactly, one column per target item.
    assert chosen["rank"] == TARGET_ITEMS and chosen["items"] == NUM_ITEMS
    matrix, weights = closed_form(pairs, kept, chosen["regularization"])
    expected = torch.as_tensor(matrix @ weights[:, TARGET], dtype=torch.float32)
    with torch.no_grad():
        served = model.score_matrix(torch.arange(NUM_USERS), torch.as_tensor(TARGET))
    torch.testing.assert_close(served, expected, rtol=1e-4, atol=1e-4)


def test_the_weight_search_goes_on_past_an_end_of_the_list_while_the_best_weight_is_there(interactions, tmp_path):
    """A figure that peaks at the multiple 8 (how near the validation scores' mean size comes to theirs at 8,
    a size that falls as the weight grows) is followed past either end of the list, as far as ``extend`` lets
    it go."""
    pairs = np.array([[row.user_idx, row.item_idx] for row in interactions.collect()])
    mean_users = np.bincount(pairs[:, 1], minlength=NUM_ITEMS).mean()
    matrix, weights = closed_form(pairs, np.arange(NUM_ITEMS), 8.0 * mean_users)
    users = cold_validation().users
    size_at_peak = np.abs(matrix[users] @ weights[:, TARGET]).mean()

    def peaked(scorer) -> float:
        return -abs(float(scorer.scores.abs().mean()) - size_at_peak)

    def searched(grid: list[float], extend: int) -> tuple[list[float], float]:
        _, chosen = ease(interactions, NUM_USERS, NUM_ITEMS, TARGET, EaseConfig(regularization=grid, extend=extend),
                         users, peaked, str(tmp_path / "gram"))
        return list(chosen["validation"]), chosen["multiple"]

    assert searched([0.5], 2) == ([0.5, 2.0, 8.0], 8.0)  # upwards, 4 times further each, a list of one
    assert searched([0.5], 1) == ([0.5, 2.0], 2.0)  # out of steps before the peak
    assert searched([128.0, 64.0], 3) == ([64.0, 128.0, 32.0, 16.0, 8.0], 8.0)  # downwards, by the list's ratio
    assert searched([0.5, 2.0], 4) == ([0.5, 2.0, 8.0, 32.0], 8.0)  # stops once the best is inside
    assert searched([2.0, 8.0, 32.0], 2) == ([2.0, 8.0, 32.0], 8.0)  # bracketed already


def test_ease_keeps_the_most_interacted_with_items_and_serves_a_larger_catalogue_in_fewer_directions(
        interactions, tmp_path):
    pairs = np.array([[row.user_idx, row.item_idx] for row in interactions.collect()])
    counts = np.bincount(pairs[:, 1], minlength=NUM_ITEMS)
    kept = np.sort(np.lexsort((np.arange(NUM_ITEMS), -counts))[:18])
    model, chosen = fit(interactions, tmp_path / "gram", regularization=[4.0], rank=4, max_items=18)
    assert chosen["items"] == 18 and chosen["rank"] == 4
    matrix, weights = closed_form(pairs, kept, chosen["regularization"])
    scored = np.isin(kept, TARGET)
    left, singular, right = np.linalg.svd(weights[:, scored], full_matrices=False)
    expected = np.zeros((NUM_USERS, TARGET_ITEMS))
    expected[:, np.isin(TARGET, kept)] = matrix @ (left[:, :4] * singular[:4]) @ right[:4]  # the best rank-4 weights
    with torch.no_grad():
        served = model.score_matrix(torch.arange(NUM_USERS), torch.as_tensor(TARGET)).numpy()
    np.testing.assert_allclose(served, expected, atol=1e-3)  # a randomized decomposition: 1e-3 of scores near 1
    assert not served[:, ~np.isin(TARGET, kept)].any()  # the rarest items, left out, score zero


def test_an_ease_version_follows_its_own_settings_and_how_it_is_validated(tmp_path):
    version = model_version("ease", synthetic_config(str(tmp_path)), {"inputs": 0})
    assert version == model_version("ease", synthetic_config(str(tmp_path), "als.rank=7"), {"inputs": 0})
    for change in ("ease.rank=16", "ease.regularization=[1.0]", "ease.extend=0", "train.validation_k=5"):
        assert model_version("ease", synthetic_config(str(tmp_path), change), {"inputs": 0}) != version
