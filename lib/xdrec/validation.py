"""Validation during training: NDCG@K and HR@K on the target domain's validation split, by user group.

Pure numpy and torch. Every user's held-out items are ranked among all target items the user has not
trained on, with :func:`xdrec.ranking.full_ranks` (the evaluate stage's kernel), and the figures follow
the evaluate stage's definitions: HR is 1 when any held-out item is in the top K, NDCG divides the hits'
DCG by the ideal DCG of min(#held-out items, K). Under Horovod each rank ranks its share of the users and
the sums are combined, so every rank gets the figures of all users.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xdrec.model import TwoTower
from xdrec.ranking import full_ranks

GROUPS = ("all", "warm", "cold")


@dataclass
class ValidationSet:
    """Validation users of the target domain: what each should find, and what each has trained on."""

    users: np.ndarray  # int64 user_idx
    cold: np.ndarray  # bool: a cold-start user (no target training history)
    relevant: list[np.ndarray]  # held-out target item_idx per user
    seen: list[np.ndarray]  # target training item_idx per user, never recommended
    candidates: np.ndarray  # every target item_idx

    def __len__(self) -> int:
        return len(self.users)


def user_figures(ranks: list[np.ndarray], relevant_counts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per user (HR@k, NDCG@k) from the 1-based ranks of the user's held-out items."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)[np.minimum(relevant_counts, k) - 1]
    hits = np.array([float((user_ranks <= k).any()) for user_ranks in ranks])
    dcg = np.array([discounts[user_ranks[user_ranks <= k] - 1].sum() for user_ranks in ranks])
    return hits, dcg / ideal


class OnDevice:
    """A model on any device as a scorer of CPU tensors, which is what the ranking kernels hand over."""

    def __init__(self, model: TwoTower):
        self.model = model
        self.device = next(model.parameters()).device

    def score_matrix(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.model.score_matrix(users.to(self.device), items.to(self.device)).cpu()


def ranking_figures(model: TwoTower, validation: ValidationSet, k: int, collective) -> dict[str, float]:
    """``{"<group>/HR@k": value, "<group>/NDCG@k": value}`` over all validation users, for the groups
    all, warm and cold that have users. Each rank of ``collective`` ranks every size-th user."""
    mine = np.arange(collective.rank, len(validation), collective.size)
    ranks, _ = full_ranks(OnDevice(model), validation.users[mine], [validation.relevant[j] for j in mine],
                          [validation.seen[j] for j in mine], validation.candidates)
    counts = np.array([len(validation.relevant[j]) for j in mine], dtype=np.int64)
    hits, ndcg = user_figures(ranks, counts, k) if len(mine) else (np.empty(0), np.empty(0))
    cold = validation.cold[mine]
    figures = {}
    for group, members in (("all", np.ones(len(mine), dtype=bool)), ("warm", ~cold), ("cold", cold)):
        users = collective.average(float(members.sum()), f"valid.{group}.users") * collective.size
        if users < 0.5:
            continue
        for name, values in (("HR", hits), ("NDCG", ndcg)):
            total = collective.average(float(values[members].sum()), f"valid.{group}.{name}") * collective.size
            figures[f"{group}/{name}@{k}"] = total / users
    return figures
