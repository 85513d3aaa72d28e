"""Ranking metrics from the ranks of relevant items, and a plain-Python reference to check them by.

Definitions (binary relevance; ``ranks`` are the 1-based positions of a user's relevant items in the
user's full ranking, see :func:`xdrec.ranking.full_ranks`; R relevant items, N ranked candidates):

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


def user_metrics(ranks: np.ndarray, candidates: int, ks: list[int]) -> dict[str, float]:
    """Every metric for one user from the sorted ranks of the user's relevant items (at least one)."""
    ranks = np.sort(np.asarray(ranks, dtype=np.float64))
    relevant = len(ranks)
    if relevant == 0:
        raise ValueError("user_metrics needs at least one relevant item")
    values: dict[str, float] = {}
    discounts = 1.0 / np.log2(ranks + 1.0)
    hits_at_or_above = np.arange(1, relevant + 1)
    for k in ks:
        in_top = ranks <= k
        hits = int(in_top.sum())
        recall, precision = hits / relevant, hits / k
        ideal = float((1.0 / np.log2(np.arange(2, min(relevant, k) + 2))).sum())
        values[f"HR@{k}"] = float(hits > 0)
        values[f"Recall@{k}"] = recall
        values[f"Precision@{k}"] = precision
        values[f"F1@{k}"] = 2 * precision * recall / (precision + recall) if hits else 0.0
        values[f"NDCG@{k}"] = float(discounts[in_top].sum()) / ideal
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


def reference_user_metrics(ranked_items: list, relevant: set, ks: list[int]) -> dict[str, float]:
    """The same metrics straight from their definitions, walking a user's full ranked list.

    Deliberately naive (no ranks, no numpy): tests check :func:`user_metrics` and the Spark path by it.
    """
    values: dict[str, float] = {}
    for k in ks:
        top = ranked_items[:k]
        hits = [item in relevant for item in top]
        dcg = sum(1 / math.log2(position + 2) for position, hit in enumerate(hits) if hit)
        idcg = sum(1 / math.log2(position + 2) for position in range(min(len(relevant), k)))
        precision, recall = sum(hits) / k, sum(hits) / len(relevant)
        average_precision, found = 0.0, 0
        for position, hit in enumerate(hits):
            if hit:
                found += 1
                average_precision += found / (position + 1)
        values[f"HR@{k}"] = 1.0 if any(hits) else 0.0
        values[f"Recall@{k}"] = recall
        values[f"Precision@{k}"] = precision
        values[f"F1@{k}"] = 2 * precision * recall / (precision + recall) if any(hits) else 0.0
        values[f"NDCG@{k}"] = dcg / idcg
        values[f"MAP@{k}"] = average_precision / min(len(relevant), k)
    first = next(position for position, item in enumerate(ranked_items) if item in relevant)
    values["MRR"] = 1 / (first + 1)
    negatives = [item for item in ranked_items if item not in relevant]
    pairs_ordered = 0
    for item_position, item in enumerate(ranked_items):
        if item in relevant:
            pairs_ordered += sum(1 for other in ranked_items[item_position + 1:] if other not in relevant)
    values["AUC"] = pairs_ordered / (len(relevant) * len(negatives)) if negatives else 1.0
    return values
