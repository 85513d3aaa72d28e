"""The test oracle: ranking metrics straight from their definitions (see xdrec.modeling.metrics)."""
from __future__ import annotations

import math


def reference_user_metrics(ranked_items: list, relevant: set, ks: list[int]) -> dict[str, float]:
    """The same metrics straight from their definitions, walking a user's full ranked list.

    Deliberately naive (no ranks, no numpy): tests check :func:`xdrec.modeling.metrics.user_metrics` and
    the Spark path by it.
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
