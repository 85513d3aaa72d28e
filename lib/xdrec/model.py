"""The two-tower model: a plain ``torch.nn.Module`` that knows nothing of Spark, Delta or Horovod.

Users and items are integer indices (``user_index`` / ``item_index`` tables). One user embedding table
is shared by every domain, which is what lets knowledge learned on the source domain reach users of the
target domain; items of all domains share one table too, indexed globally.

score(user, item) = <user_tower(user_embedding[user]), item_tower(item_embedding[item])> + item_bias[item]
"""
from __future__ import annotations

import torch
from torch import nn

from xdrec.config import FREEZABLE as PARTS


class Tower(nn.Module):
    """A residual MLP: starts close to the identity so embeddings keep their meaning early on."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x)


class TwoTower(nn.Module):
    def __init__(self, num_users: int, num_items: int, embedding_dim: int = 32, hidden_dim: int = 64):
        super().__init__()
        self.num_users, self.num_items = num_users, num_items
        self.embedding_dim, self.hidden_dim = embedding_dim, hidden_dim
        self.user_embedding = nn.Embedding(num_users, embedding_dim)
        self.item_embedding = nn.Embedding(num_items, embedding_dim)
        self.item_bias = nn.Embedding(num_items, 1)
        self.user_tower = Tower(embedding_dim, hidden_dim)
        self.item_tower = Tower(embedding_dim, hidden_dim)
        nn.init.normal_(self.user_embedding.weight, std=0.1)
        nn.init.normal_(self.item_embedding.weight, std=0.1)
        nn.init.zeros_(self.item_bias.weight)

    def hyperparameters(self) -> dict[str, int]:
        return {"num_users": self.num_users, "num_items": self.num_items,
                "embedding_dim": self.embedding_dim, "hidden_dim": self.hidden_dim}

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_tower(self.user_embedding(users))

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return self.item_tower(self.item_embedding(items))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits for (user, item) pairs, shape ``[batch]``."""
        user_vectors = self.user_vectors(users)
        item_vectors = self.item_vectors(items)
        return (user_vectors * item_vectors).sum(-1) + self.item_bias(items).squeeze(-1)

    def score_matrix(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits of every user against every item, shape ``[len(users), len(items)]``."""
        item_vectors = self.item_vectors(items)
        bias = self.item_bias(items).squeeze(-1)
        return self.user_vectors(users) @ item_vectors.T + bias

    def freeze(self, parts: list[str] | tuple[str, ...]) -> None:
        """Stop gradient updates of the named parts (see PARTS)."""
        for part in parts:
            if part not in PARTS:
                raise ValueError(f"unknown model part {part!r}; known: {', '.join(PARTS)}")
            for parameter in getattr(self, part).parameters():
                parameter.requires_grad_(False)
