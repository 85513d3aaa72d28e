"""Ranking kernels for evaluation: where each relevant item lands in a user's ranked candidates.

Plain torch and numpy, no Spark: :mod:`xdrec.evaluation.evaluate` runs them inside pandas UDFs. A *scorer* is any
object with ``score_matrix(users, items) -> [len(users), len(items)]`` logits: a trained
:class:`~xdrec.modeling.model.TwoTower`, or a :class:`~xdrec.modeling.model.FactorModel` built from a
baseline's factors (ALS, EMCDR, popularity).

Ranks are 1-based and break ties the way the scorer's top-K does (:meth:`xdrec.modeling.topk.TopKScorer.top_k`): among
equal scores the lower item index ranks first, so the full-ranking metrics agree with the
recommendations a user would actually be shown.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def _rank_in_rows(scores: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """1-based rank of ``scores[rows[j], columns[j]]`` within its row, ties to the lower column."""
    own = scores[rows, columns].unsqueeze(1)
    row_scores = scores[rows]
    positions = torch.arange(scores.shape[1]).unsqueeze(0)
    ahead = (row_scores > own) | ((row_scores == own) & (positions < columns.unsqueeze(1)))
    return ahead.sum(dim=1) + 1


def full_ranks(scorer: nn.Module, users: np.ndarray, relevant: list[np.ndarray], seen: list[np.ndarray] | None,
               candidates: np.ndarray, batch_size: int = 256) -> tuple[list[np.ndarray], np.ndarray]:
    """Full-ranking position of each user's relevant items among all candidates the user has not seen.

    ``relevant[j]`` and ``seen[j]`` are item indices of ``users[j]``; relevant items that are not
    candidates, or that the user has seen, are dropped (they cannot be recommended). Relevant items
    compete with each other, as they would in the user's recommendation list.

    Returns ``(ranks, candidate_counts)``: per user the sorted ranks of the kept relevant items, and the
    number of candidates the user was ranked over (all candidates minus the seen ones).
    """
    candidates = np.unique(np.asarray(candidates, dtype=np.int64))
    users = np.asarray(users, dtype=np.int64)
    ranks: list[np.ndarray] = []
    candidate_counts = np.empty(len(users), dtype=np.int64)
    with torch.inference_mode():
        item_tensor = torch.from_numpy(candidates)
        for start in range(0, len(users), batch_size):
            stop = min(start + batch_size, len(users))
            scores = scorer.score_matrix(torch.from_numpy(users[start:stop]), item_tensor).float()
            rows, columns, owners = [], [], []
            for offset, user in enumerate(range(start, stop)):
                seen_positions = _positions(seen[user] if seen is not None else None, candidates)
                scores[offset, seen_positions] = float("-inf")
                candidate_counts[user] = len(candidates) - len(seen_positions)
                relevant_positions = np.setdiff1d(_positions(relevant[user], candidates), seen_positions)
                rows.append(np.full(len(relevant_positions), offset))
                columns.append(relevant_positions)
                owners.append(np.full(len(relevant_positions), user))
            rows_t = torch.from_numpy(np.concatenate(rows).astype(np.int64))
            columns_t = torch.from_numpy(np.concatenate(columns).astype(np.int64))
            batch_ranks = _rank_in_rows(scores, rows_t, columns_t).numpy() if len(rows_t) else np.empty(0)
            owner_array = np.concatenate(owners)
            for user in range(start, stop):
                ranks.append(np.sort(batch_ranks[owner_array == user]).astype(np.int64))
    return ranks, candidate_counts


def sampled_ranks(scorer: nn.Module, users: np.ndarray, items: np.ndarray, negatives: np.ndarray,
                  batch_size: int = 1024) -> np.ndarray:
    """The literature's sampled protocol: rank of each test line's item among its own sampled negatives.

    ``negatives[j]`` holds the negative item indices of line j (drawn with replacement, the user's own
    items not excluded, as in the CDRIB / DisenCDR / UniCDR code). Rank = 1 + the negatives scoring higher,
    or equal without being the test item itself: ties count against the test item, so a model that
    scores everything alike (a user it knows nothing about) ranks it last, not first.
    """
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    negatives = np.asarray(negatives, dtype=np.int64)
    ranks = np.empty(len(users), dtype=np.int64)
    with torch.inference_mode():
        for start in range(0, len(users), batch_size):
            stop = min(start + batch_size, len(users))
            batch_users = torch.from_numpy(users[start:stop])
            line_items = torch.from_numpy(np.concatenate([items[start:stop, None], negatives[start:stop]], axis=1))
            unique_items, inverse = torch.unique(line_items, return_inverse=True)
            scores = scorer.score_matrix(batch_users, unique_items).float()
            line_scores = scores.gather(1, inverse)
            own_score, negative_scores = line_scores[:, :1], line_scores[:, 1:]
            other_item = line_items[:, 1:] != line_items[:, :1]
            ahead = (negative_scores > own_score) | ((negative_scores == own_score) & other_item)
            ranks[start:stop] = (ahead.sum(dim=1) + 1).numpy()
    return ranks


def _positions(items: np.ndarray | None, candidates: np.ndarray) -> np.ndarray:
    """Positions in sorted ``candidates`` of those ``items`` that are candidates."""
    if items is None or len(items) == 0:
        return np.empty(0, dtype=np.int64)
    items = np.unique(np.asarray(items, dtype=np.int64))
    found = np.searchsorted(candidates, items).clip(max=len(candidates) - 1)
    return found[candidates[found] == items]
