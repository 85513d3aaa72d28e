"""The whole pipeline on synthetic data: real Delta tables, 2 real Horovod processes, the pandas UDF; then the
Databricks notebooks on its warehouse."""
from __future__ import annotations

import json
import os

import pytest

from test_notebooks import notebook_cells, notebook_paths
from xdrec.config import CONF_DIR
from xdrec.data import tables
from xdrec.evaluation.benchmark import run_benchmark
from xdrec.pipeline import run_pipeline, run_stage
from xdrec.training import artifact, selection


@pytest.fixture(scope="module")
def pipeline_run(spark, make_config, featured_copy, tmp_path_factory):
    """The pipeline on a copy of the session's featured warehouse: fetch, ingest and features find their work
    done (tests/test_features.py builds features from scratch), the stages after them run."""
    config = make_config(featured_copy(tmp_path_factory.mktemp("e2e")))
    return config, run_pipeline(spark, config)


@pytest.mark.e2e
def test_every_stage_writes_its_tables(spark, pipeline_run):
    config, _ = pipeline_run
    for name in (tables.INTERACTIONS, tables.ITEMS, tables.USER_INDEX, tables.ITEM_INDEX, tables.COLD_START_USERS,
                 tables.INDEXED_INTERACTIONS, tables.TRAINING_EXAMPLES, tables.RECOMMENDATIONS, tables.METRICS):
        assert tables.read(spark, config.warehouse, name).count() > 0, name
    for name in (tables.USER_METRICS, tables.METRICS):
        assert tables.read(spark, config.warehouse, name).count() > 0, name
    runs = tables.read(spark, config.warehouse, tables.RUNS).toPandas()
    assert set(runs["stage"]) == {"ingest", "features", "train", "score", "evaluate"}
    evaluated = runs[runs["stage"] == "evaluate"].iloc[-1]
    assert dict(evaluated["writes"])[tables.METRICS] == tables.version(spark, config.warehouse, tables.METRICS)
    assert dict(runs[runs["stage"] == "train"].iloc[-1]["reads"])[tables.TRAINING_EXAMPLES] == tables.version(
        spark, config.warehouse, tables.TRAINING_EXAMPLES)
    report = os.path.join(config.warehouse, "reports", "latest")
    assert {"summary.md", "metrics.json", "warm_vs_cold.png", "training_curves.png"} <= set(os.listdir(report))
    with open(os.path.join(report, "metrics.json")) as handle:
        evaluated = json.load(handle)["metrics"]
    models = {"finetune", "joint", "target_only", "popularity", "als_target", "als_merged", "emcdr", "ease",
              "ensemble", "blend"}
    assert set(evaluated["full"]) == models and set(evaluated["sampled"]) == models


@pytest.mark.e2e
def test_artifact_records_the_delta_versions_it_was_trained_on(spark, pipeline_run):
    config, _ = pipeline_run
    trained = artifact.load(artifact.latest_path(config.warehouse, "finetune"))
    versions = trained.meta["inputs"]["versions"]
    assert versions[tables.TRAINING_EXAMPLES] == tables.version(spark, config.warehouse, tables.TRAINING_EXAMPLES)
    assert trained.meta["num_proc"] == 2
    phases = [epoch["phase"] for epoch in trained.meta["history"]]
    # The target phase stops early once validation NDCG@10 stalls for train.patience epochs.
    target_epochs = len(phases) - config.train.source_epochs
    assert phases == ["source"] * config.train.source_epochs + ["target"] * target_epochs
    assert min(config.train.target_epochs, config.train.patience + 1) <= target_epochs <= config.train.target_epochs
    assert all(epoch["validation"] for epoch in trained.meta["history"] if epoch["phase"] == "target")


@pytest.mark.e2e
def test_every_user_gets_k_recommendations_cold_start_users_included(spark, pipeline_run):
    config, results = pipeline_run
    served = results["train"]["selected"]["method"]
    recommendations = tables.read(spark, config.warehouse, tables.RECOMMENDATIONS).where(f"model = '{served}'")
    per_user = recommendations.groupBy("user_idx").count()
    assert per_user.where(f"count != {config.score.k}").count() == 0
    cold_users = tables.read(spark, config.warehouse, tables.COLD_START_USERS).select("user_idx")
    assert cold_users.join(per_user, "user_idx", "left_anti").count() == 0


@pytest.mark.e2e
def test_transfer_beats_popularity_and_target_only_on_cold_start_users(pipeline_run):
    _, results = pipeline_run
    metrics = results["evaluate"]["metrics"]["full"]
    cold_ndcg = {model: metrics[model]["cold"]["NDCG@10"] for model in ("finetune", "target_only", "popularity")}
    # The synthetic data plants one taste per user in both domains: a model that carries it over must
    # clearly beat the yardsticks, which know nothing of a cold user's taste.
    assert cold_ndcg["finetune"] > 1.2 * cold_ndcg["popularity"], cold_ndcg
    assert cold_ndcg["finetune"] > 1.2 * cold_ndcg["target_only"], cold_ndcg


# The tables a stage writes when it has work to do (the runs tables log every run, work or not).
WORK_TABLES = (tables.INTERACTIONS, tables.ITEMS, tables.USER_INDEX, tables.ITEM_INDEX, tables.COLD_START_USERS,
               tables.INDEXED_INTERACTIONS, tables.TRAINING_EXAMPLES, tables.ITEM_EMBEDDINGS, tables.RECOMMENDATIONS,
               tables.USER_METRICS, tables.METRICS)


@pytest.mark.e2e
def test_every_notebook_runs_its_cells_in_order_and_finds_the_pipelines_work_done(spark, pipeline_run, monkeypatch,
                                                                                  capsys):
    """The stage notebooks in their order (01 fetch ... 07 evaluate), then the end-to-end one, their widgets
    naming the pipeline's config: as a scheduled rerun, each stage finds its work done and writes nothing."""
    config, results = pipeline_run
    found_done = {  # what each stage notebook's result says
        "02_ingest.py": lambda result: result["sources"] == 0,
        "03_features.py": lambda result: result["skipped"],
        "04_tune.py": lambda result: result == results["tune"],
        "05_train.py": lambda result: all(meta.get("reused") for meta in result["models"].values()),
        "06_score.py": lambda result: [summary["mode"] for summary in result.values()] == ["unchanged"],
        "07_evaluate.py": lambda result: result["key"] == results["evaluate"]["key"],
    }
    versions = {name: tables.version(spark, config.warehouse, name) for name in WORK_TABLES}
    served = selection.read_selection(config.warehouse)
    monkeypatch.setenv("XDREC_CONF", "synthetic")  # overrides one per line or split by ";", as a widget takes them
    monkeypatch.setenv("XDREC_OVERRIDES", f"warehouse={config.warehouse}\n"
                                          f"train.seed={config.train.seed}; features.seed={config.features.seed}")
    stages, end_to_end = notebook_paths()[1:], notebook_paths()[0]
    assert [os.path.basename(path) for path in stages] == [
        "01_fetch.py", "02_ingest.py", "03_features.py", "04_tune.py", "05_train.py", "06_score.py", "07_evaluate.py"]
    for path in [*stages, end_to_end]:
        name, namespace = os.path.basename(path), {"__name__": "__main__"}
        for number, cell in enumerate(notebook_cells(path), start=1):
            exec(compile(cell, f"{name} cell {number}", "exec"), namespace)
        assert namespace["config"] == config, name
        assert name not in found_done or found_done[name](namespace["result"]), (name, namespace["result"])
    assert {name: tables.version(spark, config.warehouse, name) for name in WORK_TABLES} == versions
    assert selection.read_selection(config.warehouse)["model_version"] == served["model_version"]
    printed = capsys.readouterr().out
    assert "the best on validation" in printed  # 05_train and 00_end_to_end print the selection's reason
    assert "NDCG@10" in printed                  # 07_evaluate prints the report's summary


@pytest.mark.e2e
def test_rerun_reuses_the_model_the_recommendations_and_an_unchanged_evaluation(spark, pipeline_run):
    config, results = pipeline_run
    recommendations_version = tables.version(spark, config.warehouse, tables.RECOMMENDATIONS)
    assert run_stage(spark, config, "tune") == results["tune"]  # the same search is not run twice
    retrained = run_stage(spark, config, "train")
    assert retrained["models"]["finetune"]["model_version"] == results["train"]["models"]["finetune"]["model_version"]
    scored = run_stage(spark, config, "score")
    assert [summary["mode"] for summary in scored.values()] == ["unchanged"]
    assert tables.version(spark, config.warehouse, tables.RECOMMENDATIONS) == recommendations_version
    metrics_version = tables.version(spark, config.warehouse, tables.METRICS)
    again = run_stage(spark, config, "evaluate")
    assert again["key"] == results["evaluate"]["key"] and again["metrics"] == results["evaluate"]["metrics"]
    assert tables.version(spark, config.warehouse, tables.METRICS) == metrics_version  # nothing rewritten
    # Another run_date is new work: scored, and its coverage evaluated again. The test figures cannot change:
    # they stand, and no table is rewritten.
    rescored = run_stage(spark, config.model_copy(update={"score": config.score.model_copy(
        update={"run_date": "2031-01-02"})}), "score")
    assert [summary["mode"] for summary in rescored.values()] == ["full"]
    evaluated = run_stage(spark, config, "evaluate")
    assert evaluated["key"] != results["evaluate"]["key"] and evaluated["metrics"] == results["evaluate"]["metrics"]
    assert evaluated["coverage"] == results["evaluate"]["coverage"]  # the same model recommends the same items
    assert tables.version(spark, config.warehouse, tables.METRICS) == metrics_version
    runs = tables.read(spark, config.warehouse, tables.RUNS).where("stage = 'evaluate'").orderBy("started_at").collect()
    assert dict(runs[-1]["writes"]) == results["evaluate"]["written"]


@pytest.mark.e2e
def test_benchmark_takes_a_config_given_by_path(featured_copy, tmp_path):
    """A config file given by path names the report folder by its file name (it once became a folder path).
    The tune stage runs at the first seed's seeds, so that seed's train stage serves the ALS fit the tune
    saved (the only model reused). Two seeds are also compared together: each test user's mean over the
    seeds' served models."""
    overrides = [f"warehouse={featured_copy(tmp_path)}", "train.methods=[target_only]", "train.launcher=local",
                 "train.num_proc=1", "train.factor_models=[popularity, als_merged]", "train.blend=false",
                 "evaluate.baselines=[popularity]", "tune.als_trials=1", "tune.method_trials=0"]
    out = tmp_path / "report"
    datasets = run_benchmark([str(CONF_DIR / "synthetic.yaml")], overrides, [5, 6], str(out), None)
    assert list(datasets) == ["synthetic"] and datasets["synthetic"]["seeds"] == [5, 6]
    assert datasets["synthetic"]["reused_models"] == 1
    assert (out / "synthetic" / "seed5" / "summary.md").is_file()
    summary = (out / "summary.md").read_text()
    assert "### synthetic" in summary
    served = datasets["synthetic"]["bootstrap_pooled"]["served"]
    assert served["transfer"] == "served" and set(served["versus"]) == {"popularity", "als_merged", "target_only"}
    assert served["versus"]["popularity"][served["picked_on"]]["users"] > 0
    assert "- seeds 5, 6 together (each test user's mean over them), `served` minus" in summary


@pytest.mark.e2e
def test_the_served_model_is_the_best_validated_and_the_only_one_scored(pipeline_run):
    """Selection ranks the methods, their ensemble, the ALS family and the blend on validation; score serves
    the winner alone."""
    config, results = pipeline_run
    selected = results["train"]["selected"]
    validated = selected["validation"]
    assert set(validated) == {*config.train.methods, *config.train.factor_models, "ensemble", "blend"}
    models = results["train"]["models"]
    assert set(models["ensemble"]["blend"]["components"]) == {"finetune", "joint"}  # target_only is no transfer
    trained, factor = models["blend"]["blend"]["components"]
    assert trained in {*config.train.methods, "ensemble"} and factor in config.train.factor_models
    # The weights 0 and 1 are the components alone: each sum validates at least as well as either part.
    for name in ("ensemble", "blend"):
        assert validated[name] >= max(validated[part] for part in models[name]["blend"]["components"]) - 1e-6
    assert validated[selected["method"]] == max(validated.values())
    assert selected["selected_on"] == f"{config.train.validation_group}/NDCG@10"
    assert set(results["score"]) == {selected["method"]}  # the score stage wrote the served model's partition only
    assert results["evaluate"]["selected"] == selected


@pytest.mark.e2e
def test_tune_searches_on_validation_and_the_models_use_its_choice(pipeline_run):
    config, results = pipeline_run
    record = results["tune"]
    assert len(record["searches"]["als"]["trials"]) == config.tune.als_trials
    assert len(record["searches"]["finetune"]["trials"]) == config.tune.method_trials
    assert record["selected_on"] == f"validation {config.train.validation_group}/NDCG@10"
    models = results["train"]["models"]  # what artifact.json records of each model the pipeline trained
    assert {key: models["finetune"]["config"]["train"][key] for key in record["train"]} == record["train"]
    assert {key: models["als_merged"]["config"]["als"][key] for key in record["als"]} == record["als"]


@pytest.mark.e2e
def test_evaluation_of_a_seeded_sample_of_each_groups_test_users(spark, pipeline_run):
    """``evaluate.users_per_group`` caps both protocols' users per group; the report says so. Last in this
    module: it rewrites the warehouse's metrics."""
    config, results = pipeline_run
    everyone = results["evaluate"]["test_users"]
    assert all(counts["evaluated"] == counts["all"] > 3 for counts in everyone.values())
    # The benchmark test trained other models on this warehouse since; evaluate reads the last train run's.
    run_stage(spark, config, "train")
    sampled = run_stage(spark, config.model_copy(update={"evaluate": config.evaluate.model_copy(
        update={"users_per_group": 3})}), "evaluate")
    assert sampled["test_users"] == {group: {"evaluated": 3, "all": counts["all"]}
                                     for group, counts in everyone.items()}
    method = config.train.methods[0]
    ranked = (tables.read(spark, config.warehouse, tables.USER_METRICS).where(f"model = '{method}'")
              .select("user_idx").distinct().count())
    assert 0 < ranked <= 6 and sampled["counts"]["full"][method]["all"] == ranked
    # The sampled protocol ranks the same users' test lines: fewer than everyone's.
    assert 0 < sampled["counts"]["sampled"][method]["all"] < results["evaluate"]["counts"]["sampled"][method]["all"]
    report = open(os.path.join(config.warehouse, "reports", "latest", "summary.md")).read()
    assert "a seeded sample (`evaluate.users_per_group`)" in report
