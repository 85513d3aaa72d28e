"""Metric formulas against hand-computed values, the naive reference, and the ranking kernels."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reference_metrics import reference_user_metrics
from xdrec.modeling.metrics import sampled_line_metrics, user_metrics
from xdrec.modeling.model import FactorModel
from xdrec.modeling.ranking import full_ranks, sampled_ranks


def test_one_relevant_item_at_rank_three_of_ten():
    values = user_metrics(np.array([3]), candidates=10, ks=[1, 5])
    assert values["HR@1"] == 0 and values["HR@5"] == 1
    assert values["NDCG@5"] == pytest.approx(0.5)               # 1/log2(4) over an ideal of 1
    assert values["Recall@5"] == 1 and values["Precision@5"] == pytest.approx(0.2)
    assert values["F1@5"] == pytest.approx(2 * 0.2 * 1 / 1.2)
    assert values["MAP@5"] == pytest.approx(1 / 3)
    assert values["MRR"] == pytest.approx(1 / 3)
    assert values["AUC"] == pytest.approx(7 / 9)                # 2 of the 9 negatives are above it


def test_two_relevant_items_at_ranks_one_and_four():
    values = user_metrics(np.array([4, 1]), candidates=6, ks=[3])
    assert values["HR@3"] == 1
    assert values["Recall@3"] == pytest.approx(0.5) and values["Precision@3"] == pytest.approx(1 / 3)
    assert values["NDCG@3"] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert values["MAP@3"] == pytest.approx(1 / 2)              # (1/1) / min(2, 3)
    assert values["MRR"] == 1
    # negatives: 4; item at 1 has none above, item at 4 has 2 above (ranks 2, 3)
    assert values["AUC"] == pytest.approx(((1 - 0 / 4) + (1 - 2 / 4)) / 2)


def test_more_relevant_items_than_k():
    values = user_metrics(np.array([1, 2, 3, 4]), candidates=8, ks=[3])
    assert values["NDCG@3"] == pytest.approx(1.0) and values["MAP@3"] == pytest.approx(1.0)
    assert values["Recall@3"] == pytest.approx(0.75) and values["AUC"] == 1


def test_sampled_line_metrics():
    assert sampled_line_metrics(1, [1, 10]) == {"MRR": 1.0, "HR@1": 1.0, "NDCG@1": 1.0, "HR@10": 1.0, "NDCG@10": 1.0}
    values = sampled_line_metrics(7, [5, 10])
    assert values["HR@5"] == 0 and values["NDCG@5"] == 0
    assert values["NDCG@10"] == pytest.approx(1 / 3) and values["MRR"] == pytest.approx(1 / 7)


def random_scorer(users=6, items=40, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    user_factors = rng.normal(size=(users, 4))
    item_factors = rng.normal(size=(items, 4))
    if ties:  # every item has a twin with an identical score
        item_factors[1::2] = item_factors[0::2]
    return FactorModel(user_factors, item_factors, rng.normal(size=items) * (0 if ties else 1))


@pytest.mark.parametrize("max_compared", [1 << 24, 80])  # 80: two relevant items' rows at a time
@pytest.mark.parametrize("ties", [False, True])
def test_kernel_plus_formulas_match_the_reference_on_brute_force_rankings(ties, max_compared):
    scorer = random_scorer(ties=ties)
    rng = np.random.default_rng(1)
    candidates = np.arange(40)
    users = np.arange(6)
    seen = [rng.choice(40, size=5, replace=False) for _ in users]
    relevant = [rng.choice(np.setdiff1d(candidates, s), size=3, replace=False) for s in seen]
    ranks, counts = full_ranks(scorer, users, relevant, seen, candidates, batch_size=4, max_compared=max_compared)
    scores = scorer.score_matrix(torch.from_numpy(users), torch.from_numpy(candidates)).numpy()
    for user in users:
        unseen = [item for item in candidates if item not in set(seen[user])]
        # best first; equal scores by lower item index, as top_k orders them
        ranked = sorted(unseen, key=lambda item: (-scores[user, item], item))
        expected = reference_user_metrics(ranked, set(relevant[user].tolist()), [1, 5, 10])
        got = user_metrics(ranks[user], counts[user], [1, 5, 10])
        assert counts[user] == 35
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, abs=1e-9), (user, name)


def test_relevant_items_already_seen_are_not_ranked():
    scorer = random_scorer()
    ranks, counts = full_ranks(scorer, np.array([0]), [np.array([3, 4])], [np.array([4, 9])], np.arange(40))
    assert len(ranks[0]) == 1 and counts[0] == 38


def test_sampled_ranks_count_better_negatives_the_item_itself_excluded():
    scorer = random_scorer()
    negatives = np.tile(np.arange(40), (3, 1))  # includes each test item itself, which must not count
    ranks = sampled_ranks(scorer, np.array([0, 1, 2]), np.array([5, 6, 7]), np.arange(40), negatives)
    scores = scorer.score_matrix(torch.arange(3), torch.arange(40)).numpy()
    expected = [1 + int((scores[u] > scores[u, item]).sum()) for u, item in zip(range(3), [5, 6, 7])]
    assert ranks.tolist() == expected


def test_sampled_ties_count_against_the_test_item():
    indifferent = FactorModel(np.zeros((1, 2)), np.zeros((10, 2)))
    ranks = sampled_ranks(indifferent, np.array([0]), np.array([3]), np.arange(10), np.array([[1, 2, 3, 4]]))
    assert ranks.tolist() == [4]  # the three other items tie and go ahead; item 3 itself does not
    outside_pool = sampled_ranks(indifferent, np.array([0]), np.array([3]), np.array([1, 2, 4]), np.array([[0, 1, 2]]))
    assert outside_pool.tolist() == [4]  # a test item need not be in the pool its negatives come from
