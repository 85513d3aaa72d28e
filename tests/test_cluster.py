"""xdrec as a cluster runs it, with its warehouse on a real S3-compatible server (SeaweedFS): the wheel that
``python -m build`` makes, installed into an environment that cannot see this checkout, jobs run by
``spark-submit --master spark://...`` on a standalone Spark cluster (a master and two workers, each its own JVM,
with executors in their own JVMs and Python workers). Delta tables go through Spark's s3a://, everything else
through xdrec.files. Driver-only paths (a file written on the driver and read by an executor) and files missing
from the wheel fail here; and a store that dies mid-write loses nothing."""
from __future__ import annotations

import threading
import time

import pytest

import standalone
from stores import point_spark_at
from xdrec import files
from xdrec.config import load_config
from xdrec.data import tables
from xdrec.pipeline import run_stage
from xdrec.training import artifact, selection

# The first test's setup waits for the cluster's run, which starts when the second stack's pipeline ends.
pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def cluster_run(spark, s3_store, second_stack_run, cluster_submission):
    """``spark-submit jobs/pipeline.py`` on the warehouse that the second stack's pipeline left in its bucket
    (tests/standalone.py): Spark 4.0's Delta reads what Spark 4.1's wrote, and fetch, ingest and features find
    their work done. On the cluster it trained (Horovod processes inside its executors), scored (its executors'
    pandas UDF, reading the model files the driver wrote to the store) and evaluated."""
    standalone.finish_submission(cluster_submission)
    point_spark_at(spark, s3_store.endpoint)
    # MLflow's file store cannot live in a bucket: as on a cluster, the environment says where runs go.
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_TRACKING_URI", cluster_submission["mlruns"])
    yield load_config("synthetic", cluster_submission["settings"])
    patch.undo()


@pytest.mark.e2e
def test_spark_submit_on_a_standalone_cluster_from_the_wheel_with_the_warehouse_on_s3(spark, cluster_run):
    config = cluster_run
    served = selection.read_selection(config.warehouse)
    recommendations = tables.read(spark, config.warehouse, tables.RECOMMENDATIONS).where(
        f"model = '{served['method']}'")
    users = tables.read(spark, config.warehouse, tables.USER_INDEX).count()
    assert recommendations.count() == config.score.k * users
    assert recommendations.select("user_idx").distinct().count() == users
    assert served["path"].startswith(config.warehouse + "/models/")
    assert artifact.load(served["path"]).model_version == served["model_version"]
    joint = files.read_text(files.join(config.warehouse, "models", "joint", "LATEST")).strip()
    trained = artifact.load(artifact.latest_path(config.warehouse, "joint")).meta
    assert trained["config"]["train"]["launcher"] == "horovod" and trained["num_proc"] == 2
    # The two Horovod processes ran in the executors, and checkpointed to the store.
    assert files.is_file(files.join(config.warehouse, "checkpoints", "joint", joint, "checkpoint.pt"))


@pytest.mark.e2e
def test_every_stage_writes_to_the_store(spark, cluster_run):
    config = cluster_run
    for name in (tables.INTERACTIONS, tables.INDEXED_INTERACTIONS, tables.TRAINING_EXAMPLES, tables.RECOMMENDATIONS,
                 tables.METRICS):
        assert tables.read(spark, config.warehouse, name).count() > 0, name
    report = files.join(config.warehouse, "reports", "latest")
    assert {"summary.md", "metrics.json", "warm_vs_cold.png"} <= set(files.listdir(report))
    evaluated = files.read_json(files.join(report, "metrics.json"))
    assert evaluated["metrics"]["full"]["joint"] and evaluated["selected"] == selection.read_selection(config.warehouse)


@pytest.mark.e2e
def test_a_rerun_here_finds_the_clusters_work_done_and_changes_nothing(spark, cluster_run):
    """The wheel's code and this checkout's are the same code: the same model version, reused."""
    config = cluster_run
    before = {name: tables.version(spark, config.warehouse, name)
              for name in (tables.INTERACTIONS, tables.TRAINING_EXAMPLES, tables.RECOMMENDATIONS)}
    trained = run_stage(spark, config, "train")
    assert all(meta.get("reused") for meta in trained["models"].values())
    run_stage(spark, config, "score")
    assert {name: tables.version(spark, config.warehouse, name) for name in before} == before


@pytest.mark.e2e
def test_a_store_killed_mid_training_keeps_the_served_model_and_recommendations_and_the_rerun_finishes(
        spark, cluster_run, s3_store):
    config = cluster_run
    served = selection.read_selection(config.warehouse)
    recommendations = tables.version(spark, config.warehouse, tables.RECOMMENDATIONS)
    rows = tables.read(spark, config.warehouse, tables.RECOMMENDATIONS).count()
    retrained = config.model_copy(update={"train": config.train.model_copy(update={"seed": config.train.seed + 1})})
    checkpoints = files.join(config.warehouse, "checkpoints", "joint")
    versions_before = set(files.listdir(checkpoints))
    killed = threading.Event()

    def kill_after_the_first_checkpoint() -> None:
        """Kill the store once the new model's Horovod workers have written their first checkpoint to it."""
        deadline = time.time() + 300
        while time.time() < deadline:
            if any(files.is_file(files.join(checkpoints, version, "checkpoint.pt"))
                   for version in set(files.listdir(checkpoints)) - versions_before):
                s3_store.kill()
                killed.set()
                return
            time.sleep(0.5)

    watcher = threading.Thread(target=kill_after_the_first_checkpoint, daemon=True)
    watcher.start()
    with pytest.raises(Exception):  # noqa: B017 - whatever the first failing call raises; it must not hang
        run_stage(spark, retrained, "train")  # Horovod's launcher wants the main thread
    watcher.join()
    assert killed.is_set(), "training failed before the store was killed"
    s3_store.start()

    assert selection.read_selection(config.warehouse) == served
    assert artifact.load(served["path"]).model_version == served["model_version"]
    assert tables.version(spark, config.warehouse, tables.RECOMMENDATIONS) == recommendations
    assert tables.read(spark, config.warehouse, tables.RECOMMENDATIONS).count() == rows
    # Nothing blocks the rerun: it resumes from the store's checkpoint and serves what validates best.
    rerun = run_stage(spark, retrained, "train")
    assert artifact.load(rerun["selected"]["path"]).model_version == rerun["selected"]["model_version"]
