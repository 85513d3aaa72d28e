"""Batch scoring against a brute-force numpy reference, and the score stage's Delta writes."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch

from xdrec import artifact, tables
from xdrec.model import TwoTower
from xdrec.score import run_score, score_users, top_k

SOURCE, TARGET = "books", "movies"
NUM_USERS, SOURCE_ITEMS, TARGET_ITEMS = 12, 8, 12
SOURCE_ITEM_IDX = np.arange(SOURCE_ITEMS)
TARGET_ITEM_IDX = np.arange(SOURCE_ITEMS, SOURCE_ITEMS + TARGET_ITEMS)


def random_model(seed: int) -> TwoTower:
    torch.manual_seed(seed)
    model = TwoTower(NUM_USERS, SOURCE_ITEMS + TARGET_ITEMS, embedding_dim=4, hidden_dim=8)
    torch.nn.init.normal_(model.item_bias.weight, std=0.1)  # zero at init; make the bias count
    return model.eval()


def save_artifact(warehouse, method: str, version: str, model: TwoTower) -> str:
    user_index = pd.DataFrame({"user_id": [f"u{i}" for i in range(NUM_USERS)], "user_idx": np.arange(NUM_USERS)})
    item_index = pd.DataFrame({
        "domain": [SOURCE] * SOURCE_ITEMS + [TARGET] * TARGET_ITEMS,
        "item_id": [f"i{i}" for i in range(SOURCE_ITEMS + TARGET_ITEMS)],
        "item_idx": np.arange(SOURCE_ITEMS + TARGET_ITEMS),
    })
    meta = {"method": method, "model_version": version, "source_domain": SOURCE, "target_domain": TARGET}
    return artifact.save(os.path.join(artifact.models_dir(str(warehouse), method), version), model, meta,
                         user_index, item_index)


def numpy_scores(model: TwoTower, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """The model's logits recomputed in float64 numpy from its weights."""
    weights = {name: value.detach().double().numpy() for name, value in model.state_dict().items()}

    def tower(prefix: str, x: np.ndarray) -> np.ndarray:
        hidden = np.maximum(x @ weights[f"{prefix}.mlp.0.weight"].T + weights[f"{prefix}.mlp.0.bias"], 0)
        return x + hidden @ weights[f"{prefix}.mlp.2.weight"].T + weights[f"{prefix}.mlp.2.bias"]

    user_vectors = tower("user_tower", weights["user_embedding.weight"][users])
    item_vectors = tower("item_tower", weights["item_embedding.weight"][items])
    return user_vectors @ item_vectors.T + weights["item_bias.weight"][items, 0]


def reference_top_k(model, users, candidates, seen, k):
    """{user: [(item, score), ...]} by brute force: sort every unseen candidate, ties by item index."""
    scores = numpy_scores(model, np.asarray(users), np.asarray(candidates))
    expected = {}
    for row, user in enumerate(users):
        eligible = [j for j, item in enumerate(candidates) if item not in seen.get(user, ())]
        ordered = sorted(eligible, key=lambda j: (-scores[row, j], candidates[j]))[:k]
        expected[user] = [(int(candidates[j]), float(scores[row, j])) for j in ordered]
    return expected


def test_top_k_matches_numpy_reference_across_batches():
    model = random_model(0)
    users = np.arange(NUM_USERS)
    seen = {1: {8, 9, 10}, 4: {19}, 7: {0, 1}}  # 0 and 1 are source items: not candidates, ignored
    items, scores = top_k(model, users, TARGET_ITEM_IDX, [np.array(sorted(seen.get(u, ())), dtype=np.int64)
                                                          for u in users], k=4, batch_size=5)
    expected = reference_top_k(model, users, TARGET_ITEM_IDX, seen, 4)
    assert items.dtype == np.int64 and scores.dtype == np.float32 and items.shape == (NUM_USERS, 4)
    for user in users:
        assert items[user].tolist() == [item for item, _ in expected[user]]
        np.testing.assert_allclose(scores[user], [score for _, score in expected[user]], atol=1e-5)


def test_top_k_breaks_ties_by_lower_item_and_pads_with_minus_inf():
    model = random_model(1)
    with torch.no_grad():  # items 9, 12 and 15 score the same for every user
        for item in (12, 15):
            model.item_embedding.weight[item] = model.item_embedding.weight[9]
            model.item_bias.weight[item] = model.item_bias.weight[9]
    # Candidates unsorted on purpose; user 0 has seen every candidate but three.
    candidates = np.array([15, 12, 9, 10, 11])
    items, scores = top_k(model, np.array([0, 3]), candidates, [np.array([10, 11]), np.array([], dtype=np.int64)], 4)
    assert items[0, :3].tolist() == [9, 12, 15] and scores[0, 3] == float("-inf")
    tie_positions = [items[1].tolist().index(item) for item in (9, 12, 15) if item in items[1]]
    assert tie_positions == sorted(tie_positions)
    # Without exclusion only the three tied candidates remain against the full set: ascending order.
    tied_items, _ = top_k(model, np.array([0]), np.array([15, 12, 9]), None, 2)
    assert tied_items.tolist() == [[9, 12]]


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_score_users_udf_matches_numpy_reference(spark, tmp_path, exclude_seen):
    model = random_model(2)
    path = save_artifact(tmp_path, "finetune", "v1", model)
    seen = {0: {8, 9}, 1: set(range(8, 18)), 5: {19, 3}}  # user 1 has two unseen target items left
    users_df = spark.createDataFrame([(u, f"u{u}") for u in range(NUM_USERS)], "user_idx int, user_id string")
    seen_df = spark.createDataFrame([(u, i) for u, items in seen.items() for i in items], "user_idx int, item_idx int")

    rows = score_users(spark, path, users_df, seen_df, TARGET, k=5, exclude_seen=exclude_seen,
                       users_per_batch=4).collect()

    expected = reference_top_k(model, list(range(NUM_USERS)), TARGET_ITEM_IDX, seen if exclude_seen else {}, 5)
    got = {}
    for row in sorted(rows, key=lambda r: (r.user_idx, r.rank)):
        assert (row.model, row.model_version, row.domain) == ("finetune", "v1", TARGET)
        assert row.user_id == f"u{row.user_idx}" and row.item_id == f"i{row.item_idx}"
        got.setdefault(row.user_idx, []).append((row.rank, row.item_idx, row.score))
    assert sorted(got) == list(range(NUM_USERS))
    for user, recommendations in got.items():
        assert [rank for rank, _, _ in recommendations] == list(range(1, len(recommendations) + 1))
        assert [item for _, item, _ in recommendations] == [item for item, _ in expected[user]]
        np.testing.assert_allclose([s for _, _, s in recommendations], [s for _, s in expected[user]], atol=1e-5)
    if exclude_seen:
        assert len(got[1]) == 2 and not any(item in seen[0] for _, item, _ in got[0])
    else:
        assert all(len(recommendations) == 5 for recommendations in got.values())


def write_interaction_tables(spark, warehouse):
    """u0-u5 have target history; u6 and u7 are cold (source rows only); u8 has no interactions at all."""
    user_index = spark.createDataFrame([(f"u{i}", i) for i in range(9)], "user_id string, user_idx int")
    tables.overwrite(user_index, warehouse, tables.USER_INDEX)
    rows = [(TARGET, u, 8 + (u + j) % TARGET_ITEMS, 0, "train", False) for u in range(6) for j in range(3)]
    rows += [(TARGET, u, 8 + (u + 5) % TARGET_ITEMS, 0, "test", False) for u in range(6)]
    rows += [(SOURCE, u, u % SOURCE_ITEMS, 0, "train", u >= 6) for u in range(8)]
    rows += [(TARGET, 3, 19, 0, "valid", False)]
    interactions = spark.createDataFrame(
        rows, "domain string, user_idx int, item_idx int, timestamp long, split string, cold boolean")
    tables.overwrite(interactions, warehouse, tables.INDEXED_INTERACTIONS, partition_by=["domain"])
    return {u: {8 + (u + j) % TARGET_ITEMS for j in range(3)} for u in range(6)}


def test_run_score_scores_cold_users_and_rerun_replaces_rows(spark, tmp_path, make_config):
    warehouse = str(tmp_path)
    config = make_config(warehouse, "score.k=4")
    seen = write_interaction_tables(spark, warehouse)
    save_artifact(warehouse, "finetune", "v1", random_model(3))
    save_artifact(warehouse, "target_only", "v1", random_model(4))

    summary = run_score(spark, config)

    assert set(summary) == {"finetune", "target_only"} and summary["finetune"]["users"] == 8
    first = tables.read(spark, warehouse, tables.RECOMMENDATIONS).toPandas()
    assert len(first) == 2 * 8 * 4
    per_user = first.groupby(["model", "user_idx"]).size()
    assert (per_user == 4).all() and set(first["user_idx"]) == set(range(8))  # cold u6, u7 in; u8 out
    assert set(first["item_idx"]) <= set(TARGET_ITEM_IDX)
    for user, items in seen.items():
        assert not items & set(first.loc[first["user_idx"] == user, "item_idx"])

    save_artifact(warehouse, "finetune", "v2", random_model(5))
    run_score(spark, config, methods=["finetune"])

    second = tables.read(spark, warehouse, tables.RECOMMENDATIONS).toPandas()
    assert len(second) == len(first)
    assert set(second.loc[second["model"] == "finetune", "model_version"]) == {"v2"}
    target_only = lambda df: df[df["model"] == "target_only"].sort_values(["user_idx", "rank"]).reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(target_only(first), target_only(second))
