"""Ranking metrics from the ranks of relevant items: the one definition, for validation and evaluation.

Definitions (binary relevance; ``ranks`` are the 1-based positions of a user's relevant items in the
user's full ranking, see :func:`xdrec.modeling.ranking.full_ranks`; R relevant items, N ranked candidates):

- HR@K: 1 if any relevant item is in the top K, else 0
- Recall@K: relevant items in the top K / R;  Precision@K: relevant items in the top K / K;
  F1@K: their harmonic mean (0 when both are 0)
- NDCG@K: sum over relevant items in the top K of 1/log2(rank+1), over the ideal sum for min(R, K) hits
- MAP@K: sum over relevant items in the top K of (relevant items at or above it / its rank), / min(R, K)
- MRR: 1 / rank of the first relevant item
- AUC: over relevant items, the share of non-relevant candidates ranked below it (other relevant items
  excluded), averaged
"""
from __future__ import annotations

import math

import numpy as np

AT_K = ("HR", "Recall", "Precision", "F1", "NDCG", "MAP")
OVERALL = ("MRR", "AUC")
SAMPLED_AT_K = ("HR", "NDCG")


def metric_names(ks: list[int]) -> list[str]:
    return [f"{name}@{k}" for k in ks for name in AT_K] + list(OVERALL)


def hit_and_ndcg(ranks: np.ndarray, k: int) -> tuple[float, float]:
    """(HR@k, NDCG@k) of one user from the 1-based ranks of the user's relevant items (at least one)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    in_top = ranks <= k
    ideal = float((1.0 / np.log2(np.arange(2, min(len(ranks), k) + 2))).sum())
    return float(in_top.any()), float((1.0 / np.log2(ranks[in_top] + 1.0)).sum()) / ideal


def user_metrics(ranks: np.ndarray, candidates: int, ks: list[int]) -> dict[str, float]:
    """Every metric for one user from the sorted ranks of the user's relevant items (at least one)."""
    ranks = np.sort(np.asarray(ranks, dtype=np.float64))
    relevant = len(ranks)
    if relevant == 0:
        raise ValueError("user_metrics needs at least one relevant item")
    values: dict[str, float] = {}
    hits_at_or_above = np.arange(1, relevant + 1)
    for k in ks:
        in_top = ranks <= k
        hits = int(in_top.sum())
        recall, precision = hits / relevant, hits / k
        values[f"HR@{k}"], values[f"NDCG@{k}"] = hit_and_ndcg(ranks, k)
        values[f"Recall@{k}"] = recall
        values[f"Precision@{k}"] = precision
        values[f"F1@{k}"] = 2 * precision * recall / (precision + recall) if hits else 0.0
        values[f"MAP@{k}"] = float((hits_at_or_above[in_top] / ranks[in_top]).sum()) / min(relevant, k)
    values["MRR"] = float(1.0 / ranks[0])
    negatives = candidates - relevant
    negatives_above = ranks - hits_at_or_above  # candidates above each relevant item, minus relevant ones
    values["AUC"] = float((1.0 - negatives_above / negatives).mean()) if negatives > 0 else 1.0
    return values


def sampled_line_metrics(rank: int, ks: list[int]) -> dict[str, float]:
    """The sampled protocol's metrics of one test line: its item's rank among its sampled negatives."""
    values = {"MRR": 1.0 / rank}
    for k in ks:
        values[f"HR@{k}"] = float(rank <= k)
        values[f"NDCG@{k}"] = 1.0 / math.log2(rank + 1) if rank <= k else 0.0
    return values
