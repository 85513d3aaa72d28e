"""Ranking kernels for evaluation: where each relevant item lands in a user's ranked candidates.

Plain torch and numpy, no Spark: :mod:`xdrec.evaluation.evaluate` runs them inside pandas UDFs. A *scorer* is any
object with ``score_matrix(users, items) -> [len(users), len(items)]`` logits, and for the sampled protocol
the ``user_vectors``, ``item_vectors`` and ``item_bias`` that the matrix is made of: a trained
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


def _rank_in_rows(scores: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor, max_compared: int) -> torch.Tensor:
    """1-based rank of ``scores[rows[j], columns[j]]`` within its row, ties to the lower column.

    Each pair compares its whole row, so the pairs go through in chunks of at most ``max_compared`` compared
    scores: memory then stays bounded however many relevant items a batch of users holds."""
    positions = torch.arange(scores.shape[1]).unsqueeze(0)
    chunk = max(1, max_compared // max(1, scores.shape[1]))
    ranks = []
    for start in range(0, len(rows), chunk):
        chunk_rows, chunk_columns = rows[start:start + chunk], columns[start:start + chunk]
        own = scores[chunk_rows, chunk_columns].unsqueeze(1)
        row_scores = scores[chunk_rows]
        ahead = (row_scores > own) | ((row_scores == own) & (positions < chunk_columns.unsqueeze(1)))
        ranks.append(ahead.sum(dim=1) + 1)
    return torch.cat(ranks)


def full_ranks(scorer: nn.Module, users: np.ndarray, relevant: list[np.ndarray], seen: list[np.ndarray] | None,
               candidates: np.ndarray, batch_size: int = 256,
               max_compared: int = 1 << 24) -> tuple[list[np.ndarray], np.ndarray]:
    """Full-ranking position of each user's relevant items among all candidates the user has not seen.

    ``relevant[j]`` and ``seen[j]`` are item indices of ``users[j]``; relevant items that are not
    candidates, or that the user has seen, are dropped (they cannot be recommended). Relevant items
    compete with each other, as they would in the user's recommendation list.

    Returns ``(ranks, candidate_counts)``: per user the sorted ranks of the kept relevant items, and the
    number of candidates the user was ranked over (all candidates minus the seen ones). ``max_compared``
    bounds the scores compared at once (16M: about 100 MB).
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
            batch_ranks = _rank_in_rows(scores, rows_t, columns_t, max_compared).numpy() if len(rows_t) else np.empty(0)
            owner_array = np.concatenate(owners)
            for user in range(start, stop):
                ranks.append(np.sort(batch_ranks[owner_array == user]).astype(np.int64))
    return ranks, candidate_counts


def sampled_ranks(scorer: nn.Module, users: np.ndarray, items: np.ndarray, pool: np.ndarray, negatives: np.ndarray,
                  batch_size: int = 1024) -> np.ndarray:
    """The literature's sampled protocol: rank of each test line's item among its own sampled negatives.

    ``negatives[j]`` holds positions in ``pool`` (item indices) of line j's negatives (drawn with
    replacement, the user's own items not excluded, as in the CDRIB / DisenCDR / UniCDR code). Rank = 1 +
    the negatives scoring higher, or equal without being the test item itself: ties count against the
    test item, so a model that scores everything alike (a user it knows nothing about) ranks it last, not
    first.

    The pool and the lines' items go through the item side once per call, not once per batch: with item
    text, that side costs about as much as the scores themselves.
    """
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    pool = np.asarray(pool, dtype=np.int64)
    vocabulary = np.union1d(pool, items)
    negative_columns = torch.from_numpy(np.searchsorted(vocabulary, pool)[np.asarray(negatives, dtype=np.int64)])
    own_columns = torch.from_numpy(np.searchsorted(vocabulary, items)).unsqueeze(1)
    ranks = np.empty(len(users), dtype=np.int64)
    with torch.inference_mode():
        vocabulary_items = torch.from_numpy(vocabulary)
        item_vectors = scorer.item_vectors(vocabulary_items).T
        item_bias = scorer.item_bias(vocabulary_items).squeeze(-1)
        for start in range(0, len(users), batch_size):
            stop = min(start + batch_size, len(users))
            scores = torch.addmm(item_bias, scorer.user_vectors(torch.from_numpy(users[start:stop])), item_vectors).float()
            own, columns = own_columns[start:stop], negative_columns[start:stop]
            own_score, negative_scores = scores.gather(1, own), scores.gather(1, columns)
            ahead = (negative_scores > own_score) | ((negative_scores == own_score) & (columns != own))
            ranks[start:stop] = (ahead.sum(dim=1) + 1).numpy()
    return ranks


def _positions(items: np.ndarray | None, candidates: np.ndarray) -> np.ndarray:
    """Positions in sorted ``candidates`` of those ``items`` that are candidates."""
    if items is None or len(items) == 0:
        return np.empty(0, dtype=np.int64)
    items = np.unique(np.asarray(items, dtype=np.int64))
    found = np.searchsorted(candidates, items).clip(max=len(candidates) - 1)
    return found[candidates[found] == items]
