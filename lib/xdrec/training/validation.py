"""Validation during training: NDCG@K and HR@K on the target domain's validation split, by user group.

Pure numpy and torch. Every user's held-out items are ranked among all target items the user has not
trained on, with :func:`xdrec.modeling.ranking.full_ranks` (the evaluate stage's kernel), and scored by
:func:`xdrec.modeling.metrics.hit_and_ndcg`, the evaluate stage's definitions. Under Horovod each rank ranks its share of the users and
the sums are combined, so every rank gets the figures of all users.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xdrec.data.contract import USER_GROUPS
from xdrec.modeling.metrics import hit_and_ndcg
from xdrec.modeling.model import TwoTower
from xdrec.modeling.ranking import full_ranks

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
    figures_of_users = np.array([hit_and_ndcg(user_ranks, k) for user_ranks in ranks]).reshape(-1, 2)
    hits, ndcg = figures_of_users[:, 0], figures_of_users[:, 1]
    cold = validation.cold[mine]
    members_of = {"warm": ~cold, "cold": cold, "all": np.ones(len(mine), dtype=bool)}
    figures = {}
    for group in USER_GROUPS:
        members = members_of[group]
        users = collective.average(float(members.sum()), f"valid.{group}.users") * collective.size
        if users < 0.5:
            continue
        for name, values in (("HR", hits), ("NDCG", ndcg)):
            total = collective.average(float(values[members].sum()), f"valid.{group}.{name}") * collective.size
            figures[f"{group}/{name}@{k}"] = total / users
    return figures
