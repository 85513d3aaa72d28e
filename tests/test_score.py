"""Batch scoring against brute-force references, and the score stage's Delta contract: run_date
partitions, idempotent reruns, failed runs, incremental runs and the unknown-user fallback."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pyspark.sql import functions as F

from xdrec import files
from xdrec.config import ScoreConfig, load_config
from xdrec.data import tables
from xdrec.errors import XdrecError
from xdrec.modeling.model import FactorModel, TwoTower
from xdrec.training import artifact, selection, tracking
from xdrec.serving.score import (COLD_START, POPULARITY, WARM, changed_users, models_to_score, recommend_top_k,
                                 run_score, score_pairs, served_model)
from xdrec.modeling.topk import TopKScorer, blocked_top_k, stable_top_k

REPO = Path(__file__).resolve().parents[1]

SOURCE, TARGET = "books", "movies"
NUM_USERS, SOURCE_ITEMS, TARGET_ITEMS = 12, 8, 12
TARGET_ITEM_IDX = np.arange(SOURCE_ITEMS, SOURCE_ITEMS + TARGET_ITEMS)
D1, D2 = "2030-01-01", "2030-01-02"
INTERACTIONS = "domain string, user_idx int, item_idx int, timestamp long, split string, cold boolean"


def random_model(seed: int) -> TwoTower:
    torch.manual_seed(seed)
    model = TwoTower(NUM_USERS, SOURCE_ITEMS + TARGET_ITEMS, embedding_dim=4, hidden_dim=8)
    torch.nn.init.normal_(model.item_bias.weight, std=0.1)  # zero at init; make the bias count
    return model.eval()


def save_artifact(warehouse, method: str, version: str, model) -> str:
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


def assert_rows_match_reference(rows: pd.DataFrame, expected: dict) -> None:
    """``rows`` (user_idx, rank, item_idx, item_id, score) hold exactly the reference's items, in order."""
    assert sorted(rows["user_idx"].unique()) == sorted(expected)
    for user, ranked in rows.sort_values(["user_idx", "rank"]).groupby("user_idx"):
        assert ranked["rank"].tolist() == list(range(1, len(ranked) + 1))
        assert ranked["item_idx"].tolist() == [item for item, _ in expected[user]], user
        assert ranked["item_id"].tolist() == [f"i{item}" for item, _ in expected[user]]
        np.testing.assert_allclose(ranked["score"], [score for _, score in expected[user]], atol=1e-5)


# ----- the torch kernel -------------------------------------------------------------------------------

def test_top_k_matches_numpy_reference_across_batches():
    model = random_model(0)
    users = np.arange(NUM_USERS)
    seen = {1: {8, 9, 10}, 4: {19}, 7: {0, 1}}  # 0 and 1 are source items: not candidates, ignored
    scorer = TopKScorer(model, TARGET_ITEM_IDX, k=4)
    items, scores = scorer.top_k(users, [np.array(sorted(seen[u])) if u in seen else None for u in users],
                                 batch_size=5)
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
    scorer = TopKScorer(model, np.array([15, 12, 9, 10, 11]), k=4)
    items, scores = scorer.top_k(np.array([0, 3]), [np.array([10, 11]), np.array([], dtype=np.int64)])
    assert items[0, :3].tolist() == [9, 12, 15] and scores[0, 3] == float("-inf")
    tie_positions = [items[1].tolist().index(item) for item in (9, 12, 15) if item in items[1]]
    assert tie_positions == sorted(tie_positions)
    # Without exclusion only the three tied candidates remain: the lower items win the two places.
    tied_items, _ = TopKScorer(model, np.array([15, 12, 9]), k=2).top_k(np.array([0]))
    assert tied_items.tolist() == [[9, 12]]


@pytest.mark.parametrize("k", [1, 4, 29, 30])
def test_stable_top_k_equals_a_full_sort_under_heavy_ties(k):
    scores = torch.from_numpy(np.random.default_rng(k).integers(0, 4, size=(40, 30)).astype(np.float32))
    scores[5, :] = float("-inf")
    positions, values = stable_top_k(scores.clone(), k)
    for row in range(len(scores)):
        expected = np.lexsort((np.arange(30), -scores[row].numpy()))[:k]  # by score, then lower column
        assert positions[row].tolist() == expected.tolist()
        assert values[row].tolist() == scores[row, expected].tolist()


@pytest.mark.parametrize("tile_items", [1, 3, 16, 64])
def test_blocked_top_k_equals_the_whole_matrix_under_ties_and_seen_items(tile_items):
    rng = np.random.default_rng(tile_items)
    # Small integers: exact scores, and many ties across tiles.
    users, items_t, bias = (torch.from_numpy(rng.integers(-2, 3, size=shape).astype(np.float32))
                            for shape in ((50, 4), (4, 40), (40,)))
    seen_rows, seen_columns = rng.integers(0, 50, 600), rng.integers(0, 40, 600)
    seen_rows[:40], seen_columns[:40] = 7, np.arange(40)  # user 7 has seen every item: -inf fills its list
    seen = (torch.from_numpy(seen_rows), torch.from_numpy(seen_columns))
    whole = torch.addmm(bias, users, items_t)
    whole[seen] = float("-inf")
    for k in (1, 10, 39, 40):
        positions, values = blocked_top_k(users, items_t, bias, k, seen, tile_items)
        expected_positions, expected_values = stable_top_k(whole.clone(), k)
        assert torch.equal(positions, expected_positions) and torch.equal(values, expected_values), k


def test_a_nan_in_a_later_tile_stops_the_blocked_kernel():
    items_t = torch.randn(8, 100)
    items_t[3, 70] = float("nan")
    with pytest.raises(XdrecError, match="NaN"):
        blocked_top_k(torch.randn(5, 8), items_t, torch.zeros(100), 10, tile_items=16)


def test_nan_scores_stop_scoring():
    model = random_model(2)
    with torch.no_grad():
        model.user_embedding.weight[3] = float("nan")
    with pytest.raises(XdrecError, match="NaN"):
        TopKScorer(model, TARGET_ITEM_IDX, k=3).top_k(np.arange(6))


def test_score_settings_are_validated_by_key():
    for override, key in (("score.mode=sometimes", "score.mode"), ("score.run_date=01/02/2030", "score.run_date"),
                          ("score.partitions=-1", "score.partitions"), ("score.device=tpu", "score.device"),
                          ("score.arrow_batch_size=0", "score.arrow_batch_size")):
        with pytest.raises(XdrecError, match=key.replace(".", r"\.")):
            load_config("synthetic", [override])


# ----- the Spark UDFs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("exclude_seen", [True, False])
def test_recommend_top_k_udf_matches_numpy_reference(spark, tmp_path, exclude_seen):
    model = random_model(2)
    path = save_artifact(tmp_path, "finetune", "v1", model)
    seen = {0: {8, 9}, 1: set(range(8, 18)), 5: {19, 3}}  # user 1 has two unseen target items left
    users = spark.createDataFrame(
        [(u, f"u{u}", WARM, sorted(seen.get(u, ()))) for u in range(NUM_USERS)],
        "user_idx int, user_id string, route string, seen array<long>")
    settings = ScoreConfig(k=5, users_per_batch=2, exclude_seen=exclude_seen, partitions=3)

    rows = recommend_top_k(users, path, TARGET, settings).toPandas()

    assert_rows_match_reference(rows, reference_top_k(model, list(range(NUM_USERS)), TARGET_ITEM_IDX,
                                                      seen if exclude_seen else {}, 5))
    assert set(rows["route"]) == {WARM} and (rows["user_id"] == "u" + rows["user_idx"].astype(str)).all()
    per_user = rows.groupby("user_idx").size()
    assert per_user[1] == (2 if exclude_seen else 5) and per_user.drop(1).eq(5).all()


def test_a_factor_model_is_served_by_the_same_udf(spark, tmp_path):
    """ALS-family models are artifacts too: their top-K through the UDF is the brute-force one."""
    rng = np.random.default_rng(5)
    user_factors, item_factors = rng.normal(size=(NUM_USERS, 3)), rng.normal(size=(SOURCE_ITEMS + TARGET_ITEMS, 3))
    bias = rng.normal(size=SOURCE_ITEMS + TARGET_ITEMS)
    path = save_artifact(tmp_path, "als_merged", "v1", FactorModel(user_factors, item_factors, bias))
    loaded = artifact.load(path)
    assert isinstance(loaded.model, FactorModel) and loaded.meta["model_class"] == "FactorModel"
    users = spark.createDataFrame([(u, f"u{u}", WARM, []) for u in range(NUM_USERS)],
                                  "user_idx int, user_id string, route string, seen array<long>")

    rows = recommend_top_k(users, path, TARGET, ScoreConfig(k=4, users_per_batch=5)).toPandas()

    scores = user_factors @ item_factors[TARGET_ITEM_IDX].T + bias[TARGET_ITEM_IDX]
    expected = {user: [(int(TARGET_ITEM_IDX[j]), float(scores[user, j]))
                       for j in sorted(range(TARGET_ITEMS), key=lambda j: (-scores[user, j], j))[:4]]
                for user in range(NUM_USERS)}
    assert_rows_match_reference(rows, expected)


def test_score_pairs_matches_the_model_and_leaves_unknown_pairs_null(spark, tmp_path):
    model = random_model(3)
    path = save_artifact(tmp_path, "finetune", "v1", model)
    known = [(f"u{u}", f"i{i}", n) for n, (u, i) in enumerate([(0, 8), (0, 19), (7, 12), (11, 8), (3, 3)])]
    unknown = [("stranger", "i8", 90), ("u1", "i999", 91), (None, "i9", 92)]
    pairs = spark.createDataFrame(known + unknown, "user_id string, item_id string, line int")

    # i3 is a books item: scored against the books domain it is known, against movies it is not.
    rows = {row.line: row.score for row in score_pairs(pairs, path, TARGET, pairs_per_call=2).collect()}

    for user_id, item_id, line in known:
        user, item = int(user_id[1:]), int(item_id[1:])
        if item < SOURCE_ITEMS:
            assert rows[line] is None
        else:
            assert rows[line] == pytest.approx(numpy_scores(model, np.array([user]), np.array([item]))[0, 0], abs=1e-5)
    assert all(rows[line] is None for _, _, line in unknown)


def test_changed_users_sees_added_removed_altered_and_repeated_rows(spark):
    schema = "domain string, user_idx int, item_idx int, split string"
    before = spark.createDataFrame([(TARGET, 1, 1, "train"), (TARGET, 1, 2, "train"), (TARGET, 2, 1, "train"),
                                    (TARGET, 3, 5, "test"), (TARGET, 4, 7, "train"), (TARGET, 5, 1, "train")], schema)
    after = spark.createDataFrame([(TARGET, 1, 2, "train"), (TARGET, 1, 1, "train"),  # u1: same rows, other order
                                   (TARGET, 2, 1, "train"), (TARGET, 2, 1, "train"),  # u2: a row repeated
                                   (TARGET, 3, 5, "valid"),                           # u3: a row altered
                                   (TARGET, 5, 1, "train"), (TARGET, 6, 1, "train")], schema)  # u4 gone, u6 new
    assert sorted(row.user_idx for row in changed_users(before, after).collect()) == [2, 3, 4, 6]


# ----- the stage: one warehouse, four runs -----------------------------------------------------------

def write_tables(spark, warehouse, rows, users):
    tables.overwrite(spark.createDataFrame(users, "user_id string, user_idx int"), warehouse, tables.USER_INDEX)
    tables.overwrite(spark.createDataFrame(
        [(SOURCE, f"i{i}", i) for i in range(SOURCE_ITEMS)] + [(TARGET, f"i{i}", int(i)) for i in TARGET_ITEM_IDX],
        "domain string, item_id string, item_idx int"), warehouse, tables.ITEM_INDEX)
    tables.overwrite(spark.createDataFrame(rows, INTERACTIONS), warehouse, tables.INDEXED_INTERACTIONS,
                     partition_by=["domain"])


def base_interactions():
    """u0-u5 have target history; u6 and u7 are cold (source rows only); u8 has no interactions at all.

    'newcomer' (user_idx 9, which the model knows as u9) and 'late' (user_idx 12, past the model's users)
    are unknown to the model and have target history of their own.
    """
    users = [(f"u{i}", i) for i in range(9)] + [("newcomer", 9), ("late", 12)]
    rows = [(TARGET, u, 8 + (u + j) % TARGET_ITEMS, 0, "train", False) for u in range(6) for j in range(3)]
    rows += [(TARGET, u, 8 + (u + 5) % TARGET_ITEMS, 0, "test", False) for u in range(6)]
    rows += [(SOURCE, u, u % SOURCE_ITEMS, 0, "train", u >= 6) for u in range(8)]
    rows += [(TARGET, 9, 10, 0, "train", False), (TARGET, 12, 8, 0, "train", False), (SOURCE, 12, 1, 0, "train", False)]
    return rows, users


def seen_of(rows):
    seen = {}
    for domain, user, item, _, split, _ in rows:
        if domain == TARGET and split == "train":
            seen.setdefault(user, set()).add(item)
    return seen


def partitions(spark, warehouse):
    """{run_date: rows} of every finetune partition of recommendations, as it is now."""
    rows = tables.read(spark, warehouse, tables.RECOMMENDATIONS).where("model = 'finetune'").toPandas()
    return {str(day): group.drop(columns="run_date").sort_values(["user_idx", "rank"]).reset_index(drop=True)
            for day, group in rows.groupby("run_date")}


@pytest.fixture(scope="module")
def scenario(spark, tmp_path_factory, make_config):
    """Four runs on one warehouse, with what each left behind:

    1. D1 in incremental mode, but with no run recorded yet: a full run;
    2. the interactions change; D2 incremental;
    3. D2 again, full: a rerun of the same date (and what incremental must equal);
    4. D2 again with a model whose vector of user 4 is NaN: the run fails midway.
    """
    warehouse = str(tmp_path_factory.mktemp("score"))

    def config(day, *more):
        return make_config(warehouse, "score.k=4", f"score.run_date={day}", "train.methods=[finetune]",
                           "train.factor_models=[]", "score.model=finetune", *more)

    rows, users = base_interactions()
    write_tables(spark, warehouse, rows, users)
    model = random_model(4)
    save_artifact(warehouse, "finetune", "v1", model)
    result = {"model": model, "rows": rows, "summaries": {}, "snapshots": {}, "versions": {}}

    def run(step, day, *more):
        result["summaries"][step] = run_score(spark, config(day, *more))["finetune"]
        result["snapshots"][step] = partitions(spark, warehouse)
        result["versions"][step] = tables.version(spark, warehouse, tables.RECOMMENDATIONS)

    run(1, D1, "score.mode=incremental")
    result["input_versions"] = {name: tables.version(spark, warehouse, name)
                                for name in (tables.INDEXED_INTERACTIONS, tables.USER_INDEX, tables.ITEM_INDEX)}
    # u2 gains its top recommendation as a training item, u4 loses its test row, u10 arrives (known to
    # the model), u7 leaves.
    day1 = result["snapshots"][1][D1]
    top_of_u2 = int(day1.loc[(day1["user_idx"] == 2) & (day1["rank"] == 1), "item_idx"].iloc[0])
    changed_rows = [row for row in rows if row[1] != 7 and not (row[1] == 4 and row[4] == "test")]
    changed_rows += [(TARGET, 2, top_of_u2, 5, "train", False), (TARGET, 10, 9, 5, "train", False)]
    write_tables(spark, warehouse, changed_rows, users + [("u10", 10)])
    result.update(top_of_u2=top_of_u2, changed_rows=changed_rows)
    run(2, D2, "score.mode=incremental")
    run(3, D2)

    broken = random_model(8)
    with torch.no_grad():  # one user's vector diverged: the task scoring that user fails, others succeed
        broken.user_embedding.weight[4] = float("nan")
    save_artifact(warehouse, "finetune", "broken", broken)
    with pytest.raises(Exception) as failure:
        run(4, D2, "score.partitions=4")
    result["failure"] = str(failure.value)
    result["snapshots"][4] = partitions(spark, warehouse)
    result["versions"][4] = tables.version(spark, warehouse, tables.RECOMMENDATIONS)
    result["runs"] = tables.read(spark, warehouse, tables.SCORE_RUNS).orderBy("recommendations_version").toPandas()
    return result


def test_full_run_routes_every_user_and_matches_the_references(scenario):
    summary, first = scenario["summaries"][1], scenario["snapshots"][1][D1]
    assert {key: summary[key] for key in ("model_version", "mode", "users", "scored", "cold_start", "fallback",
                                          "copied", "rows")} == {
        "model_version": "v1", "mode": "full", "users": 10, "scored": 8, "cold_start": 2, "fallback": 2,
        "copied": 0, "rows": 40}
    by_route = first.groupby("route")["user_idx"].unique().map(sorted).to_dict()
    assert by_route == {WARM: list(range(6)), COLD_START: [6, 7], POPULARITY: [9, 12]}  # u8: no interactions
    seen = seen_of(scenario["rows"])
    assert_rows_match_reference(first[first["route"] != POPULARITY],
                                reference_top_k(scenario["model"], list(range(8)), TARGET_ITEM_IDX, seen, 4))
    # Popularity by brute force: training counts, ties to the lower item, the user's own items left out.
    counts = pd.Series([item for items in seen.values() for item in items]).value_counts()
    for user in (9, 12):
        ranked = sorted((item for item in counts.index if item not in seen[user]), key=lambda i: (-counts[i], i))[:4]
        got = first[first["user_idx"] == user]
        assert got["item_idx"].tolist() == ranked and got["score"].tolist() == [counts[i] for i in ranked]
    assert set(first["model_version"]) == {"v1"} and set(first["domain"]) == {TARGET}


def test_each_run_is_recorded_with_model_and_input_versions(scenario):
    runs = scenario["runs"]
    assert runs["run_date"].astype(str).tolist() == [D1, D2, D2]  # the failed run left no record
    assert runs["mode"].tolist() == ["full", "incremental", "full"] and set(runs["model_version"]) == {"v1"}
    assert runs["recommendations_version"].tolist() == [scenario["versions"][step] for step in (1, 2, 3)]
    assert runs["input_versions"][0] == scenario["input_versions"]
    first_version = scenario["input_versions"][tables.INDEXED_INTERACTIONS]
    assert runs["input_versions"][1][tables.INDEXED_INTERACTIONS] == first_version + 1  # the changed interactions


def test_incremental_run_rescores_only_changed_users_and_equals_a_full_run(scenario):
    incremental, full = scenario["summaries"][2], scenario["summaries"][3]
    assert {key: incremental[key] for key in ("mode", "users", "scored", "fallback", "copied")} == {
        "mode": "incremental", "users": 10, "scored": 3, "fallback": 2, "copied": 5}  # u2, u4, u10 changed
    assert (full["mode"], full["scored"], full["copied"]) == ("full", 8, 0)
    day2 = scenario["snapshots"][2][D2]
    pd.testing.assert_frame_equal(day2, scenario["snapshots"][3][D2])
    assert 7 not in set(day2["user_idx"])
    assert scenario["top_of_u2"] not in set(day2.loc[day2["user_idx"] == 2, "item_idx"])
    assert_rows_match_reference(day2[day2["route"] != POPULARITY], reference_top_k(
        scenario["model"], [0, 1, 2, 3, 4, 5, 6, 10], TARGET_ITEM_IDX, seen_of(scenario["changed_rows"]), 4))


def test_a_rerun_replaces_its_date_only(scenario):
    before, after = scenario["snapshots"][2], scenario["snapshots"][3]
    assert scenario["versions"][3] > scenario["versions"][2] and len(after[D2]) == 40  # replaced, not appended
    pd.testing.assert_frame_equal(after[D1], before[D1])
    pd.testing.assert_frame_equal(after[D1], scenario["snapshots"][1][D1])


def test_a_failed_run_leaves_the_previous_partition_in_place(scenario):
    assert "NaN" in scenario["failure"]
    assert scenario["versions"][4] == scenario["versions"][3]
    before, after = scenario["snapshots"][3], scenario["snapshots"][4]
    assert before.keys() == after.keys() == {D1, D2}
    for day in before:
        pd.testing.assert_frame_equal(after[day], before[day])


def test_a_write_that_loses_a_commit_race_is_redone_not_failed(spark, tmp_path, capsys):
    """Two runs replace one partition at once: the slower one's commit conflicts, and is redone."""
    warehouse = str(tmp_path)
    predicate = "day = 1"
    tables.overwrite(spark.createDataFrame([(1, "old")], "day int, value string"), warehouse, "pairs", ["day"])

    @F.udf("string")
    def slowly(value):  # the slow run reads the table, then spends a while before it commits
        time.sleep(4)
        return value

    slow = spark.createDataFrame([(1, "slow")], "day int, value string").withColumn("value", slowly("value"))
    outcome = {}
    writer = threading.Thread(target=lambda: outcome.update(
        version=tables.replace_where(slow, warehouse, "pairs", predicate, wait_seconds=0.5)))
    writer.start()
    time.sleep(1)
    fast_version = tables.replace_where(spark.createDataFrame([(1, "fast")], "day int, value string"), warehouse,
                                        "pairs", predicate)
    writer.join()
    assert outcome["version"] > fast_version  # the slow run committed after the fast one, and did not fail
    assert [tuple(row) for row in tables.read(spark, warehouse, "pairs").collect()] == [(1, "slow")]
    history = spark.sql(f"DESCRIBE HISTORY delta.`{tables.table_path(warehouse, 'pairs')}`").collect()
    assert len(history) == 3  # created, the fast run's replace, the slow run's redone replace: nothing else
    assert "pairs: another writer committed first (Concurrent" in capsys.readouterr().out


def test_reading_the_registry_writes_nothing_where_the_process_runs(tmp_path, make_config):
    # A fresh process, as a train stage whose models were all reused is: it reads the registry only.
    config = make_config(str(tmp_path / "warehouse"))
    client, name = tracking.registry(config), tracking.registered_model(config)
    client.create_registered_model(name)
    version = client.create_model_version(name, str(tmp_path), tags={"method": "finetune", "model_version": "v1"})
    client.set_registered_model_alias(name, tracking.CHAMPION, version.version)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    reader = ("from xdrec.config import load_config; from xdrec.training import tracking; "
              f"print(tracking.aliased_model(load_config('synthetic', ['warehouse={config.warehouse}']), 'champion'))")
    result = subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True, timeout=300, cwd=workdir,
                            env={**os.environ, "PYTHONPATH": str(REPO / "lib")})
    assert result.returncode == 0, result.stderr
    assert "'model_version': 'v1'" in result.stdout
    assert not list(workdir.iterdir())


def test_every_model_is_scored_at_the_version_the_train_run_offered_to_selection(tmp_path, make_config):
    warehouse = str(tmp_path)
    offered = {"finetune": save_artifact(warehouse, "finetune", "v1", random_model(1)),
               "joint": save_artifact(warehouse, "joint", "j1", random_model(2))}
    settings = ("train.methods=[finetune,joint]", "train.ensemble=false", "train.factor_models=[]",
                "score.models=trained")
    config = make_config(warehouse, *settings)
    key = f"{config.train.validation_group}/{config.train.validation_metric}@{config.train.validation_k}"
    selection.select_model(warehouse, config.train, offered, {"finetune": {key: 0.1}, "joint": {key: 0.2}})
    # A later run that failed after training finetune again moved its LATEST, not the record.
    save_artifact(warehouse, "finetune", "v2", random_model(3))
    assert models_to_score(config) == offered
    with pytest.raises(XdrecError, match=r"SELECTED: the last train run offered no target_only to selection "
                                         r"\(it offered finetune, joint\): run the train stage"):
        models_to_score(make_config(warehouse, *settings, "train.methods=[finetune,joint,target_only]"))


def test_score_model_names_an_alias_the_selection_a_method_or_a_version(tmp_path, make_config):
    warehouse = str(tmp_path)
    first = save_artifact(warehouse, "finetune", "v1", random_model(1))
    newest = save_artifact(warehouse, "finetune", "v2", random_model(2))
    joint = save_artifact(warehouse, "joint", "j1", random_model(3))
    config = make_config(warehouse, "train.methods=[finetune,joint]", "train.factor_models=[]")
    key = f"{config.train.validation_group}/{config.train.validation_metric}@{config.train.validation_k}"
    selection.select_model(warehouse, config.train, {"finetune": newest, "joint": joint},
                           {"finetune": {key: 0.1}, "joint": {key: 0.2}})

    def served(model: str, *more: str) -> tuple[str, str]:
        return served_model(make_config(warehouse, "train.methods=[finetune,joint]", "train.factor_models=[]",
                                        f"score.model={model}", *more))

    # No registered model yet, or tracking off: champion is the train stage's selection.
    assert served("champion") == served("champion", "train.mlflow=false") == served("selected") == ("joint", joint)
    assert served("finetune") == ("finetune", newest)
    assert served("v1") == ("finetune", first)
    with pytest.raises(XdrecError, match=r"score.model: 'v9' is no registry alias, method or model version"):
        served("v9")
    # A real MLflow registry: the alias points at the older finetune, and serving follows it.
    client = tracking.registry(config)
    name = tracking.registered_model(config)
    client.create_registered_model(name)
    version = client.create_model_version(name, first, tags={"method": "finetune", "model_version": "v1"})
    client.set_registered_model_alias(name, "champion", version.version)
    assert served("champion") == ("finetune", first)
    assert served("champion", "train.mlflow=false") == ("joint", joint)
    client.set_registered_model_alias(name, "rollback", version.version)
    files.remove(first)
    with pytest.raises(XdrecError, match=r"holds the alias 'rollback', but its artifact v1 is not under"):
        served("rollback")
