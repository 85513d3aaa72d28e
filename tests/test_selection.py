"""Model selection's ensemble and blend: one factor model that adds two models' scores and is served like
either, and which two candidates each adds."""
from __future__ import annotations

import numpy as np
import torch

from xdrec.config import TrainConfig
from xdrec.modeling.model import FactorModel, ScoreSum, TwoTower, blended
from xdrec.training.loop import Collective
from xdrec.training.selection import BLEND_WEIGHTS, combined_components, fit_blend, served_candidates
from xdrec.training.validation import ValidationSet, ranking_figures

NUM_USERS, NUM_ITEMS = 40, 30


def test_a_blend_and_a_score_sum_score_the_weighted_sum_of_their_models_scores():
    torch.manual_seed(0)
    network = TwoTower(NUM_USERS, NUM_ITEMS, embedding_dim=4, temperature=0.1).eval()
    with torch.no_grad():
        network.item_bias.weight.normal_()
    factors = FactorModel(np.random.default_rng(1).normal(size=(NUM_USERS, 3)),
                          np.random.default_rng(2).normal(size=(NUM_ITEMS, 3)), np.arange(NUM_ITEMS, dtype=float))
    users, items = torch.arange(NUM_USERS), torch.arange(NUM_ITEMS)
    blend = blended((network, factors), (0.3, 2.0), NUM_USERS, NUM_ITEMS, chunk=7)  # chunks split the rows
    with torch.no_grad():
        expected = 0.3 * network.score_matrix(users, items) + 2.0 * factors.score_matrix(users, items)
    torch.testing.assert_close(blend.score_matrix(users, items), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # what fit_blend validates each weight with, for the users asked only
        score_sum = ScoreSum((network, factors), (0.3, 2.0))
        torch.testing.assert_close(score_sum.score_matrix(users[::3], items), expected[::3], rtol=1e-5, atol=1e-5)
        # Other users of the same items (their item sides kept), other weights, then other items.
        torch.testing.assert_close(score_sum.score_matrix(users[1::3], items), expected[1::3], rtol=1e-5, atol=1e-5)
        score_sum.weights = (1.0, 0.0)
        torch.testing.assert_close(score_sum.score_matrix(users, items), network.score_matrix(users, items))
        torch.testing.assert_close(score_sum.score_matrix(users, items[:5]), network.score_matrix(users, items[:5]))


def planted(rng: np.random.Generator) -> tuple[ValidationSet, np.ndarray]:
    """Validation users each with one relevant item of the first NUM_ITEMS - 10 (the candidates)."""
    users = np.arange(NUM_USERS, dtype=np.int64)
    relevant = rng.integers(0, NUM_ITEMS - 10, size=NUM_USERS)
    validation = ValidationSet(users=users, cold=np.ones(NUM_USERS, dtype=bool),
                               relevant=[np.array([item]) for item in relevant],
                               seen=[np.empty(0, dtype=np.int64)] * NUM_USERS,
                               candidates=np.arange(NUM_ITEMS - 10, dtype=np.int64))
    return validation, relevant


def knowing(users: np.ndarray, relevant: np.ndarray, rng: np.random.Generator, scale: float) -> FactorModel:
    """A model that ranks the relevant item of ``users`` first (and knows nothing of the others)."""
    user_factors = rng.normal(size=(NUM_USERS, NUM_ITEMS)) * 0.1
    user_factors[users, relevant[users]] += 1.0
    return FactorModel(user_factors * scale, np.eye(NUM_ITEMS))


def test_the_blend_of_two_models_that_know_different_users_beats_both_and_chooses_its_weight_on_validation():
    rng = np.random.default_rng(7)
    validation, relevant = planted(rng)
    first = knowing(np.arange(0, NUM_USERS // 2), relevant, rng, scale=100.0)  # scales differ: spreads even them
    second = knowing(np.arange(NUM_USERS // 2, NUM_USERS), relevant, rng, scale=0.01)
    train = TrainConfig(validation_group="cold")
    model, chosen = fit_blend(first, second, validation, train, NUM_USERS, NUM_ITEMS)
    alone = [ranking_figures(m, validation, 10, Collective())["cold/NDCG@10"] for m in (first, second)]
    assert chosen["weight"] in BLEND_WEIGHTS and 0 < chosen["weight"] < 1
    assert chosen["validation"][chosen["weight"]] == max(chosen["validation"].values())
    assert chosen["validation"][1.0] == alone[0] and chosen["validation"][0.0] == alone[1]
    assert ranking_figures(model, validation, 10, Collective())["cold/NDCG@10"] > max(alone) + 0.2, (chosen, alone)


def test_a_useless_second_model_gets_no_weight():
    rng = np.random.default_rng(8)
    validation, relevant = planted(rng)
    good = knowing(np.arange(NUM_USERS), relevant, rng, scale=1.0)
    noise = FactorModel(rng.normal(size=(NUM_USERS, 4)), rng.normal(size=(NUM_ITEMS, 4)))
    _, chosen = fit_blend(good, noise, validation, TrainConfig(validation_group="cold"), NUM_USERS, NUM_ITEMS)
    assert chosen["weight"] == 1.0 and chosen["validation"][1.0] == 1.0


def test_the_ensemble_sums_the_two_best_transfer_methods_and_the_blend_the_best_trained_and_factor_models():
    key, factor_models = "cold/NDCG@10", ["popularity", "als_merged"]
    methods = ["target_only", "joint", "finetune", "adversarial"]
    figures = {name: {key: value} for name, value in [("target_only", 0.09), ("joint", 0.05), ("finetune", 0.06),
                                                      ("adversarial", 0.04), ("popularity", 0.01), ("als_merged", 0.04)]}
    # target_only validates best here, but learns nothing from the source domain: it is no transfer method.
    assert combined_components("ensemble", figures, key, methods, factor_models) == ("finetune", "joint")
    assert combined_components("blend", figures, key, methods, factor_models) == ("target_only", "als_merged")
    figures["ensemble"] = {key: 0.1}
    assert combined_components("blend", figures, key, methods, factor_models) == ("ensemble", "als_merged")


def test_selection_is_offered_the_ensemble_only_with_two_transfer_methods():
    every = ["popularity", "als_merged", "emcdr", "ease", "blend"]
    assert served_candidates(TrainConfig(ensemble=True)) == ["joint", "finetune", "ensemble", *every]  # default methods
    assert served_candidates(TrainConfig(ensemble=True, methods=["joint", "target_only"])) == ["joint", "target_only",
                                                                                               *every]
    assert served_candidates(TrainConfig()) == ["joint", "finetune", *every]  # off by default
