"""The whole pipeline with its warehouse on a real S3-compatible server (SeaweedFS): Delta tables through
Spark's s3a://, everything else through xdrec.files; and a store that dies mid-write loses nothing."""
from __future__ import annotations

import os
import threading
import time

import pytest

from stores import point_spark_at
from xdrec import files
from xdrec.data import tables
from xdrec.pipeline import run_pipeline, run_stage
from xdrec.training import artifact, selection


@pytest.fixture(scope="module")
def store_run(spark, s3_store, make_config, tmp_path_factory):
    import uuid

    import fsspec

    point_spark_at(spark, s3_store.endpoint)
    # MLflow's file store cannot live in a bucket: as on a cluster, the environment says where runs go.
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_TRACKING_URI", "file://" + str(tmp_path_factory.mktemp("mlruns")))
    bucket = f"xdrec-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir(bucket)
    config = make_config(f"s3a://{bucket}/warehouse", "train.methods=[joint]", "tune.enabled=false",
                         "train.source_epochs=2", "train.target_epochs=2", "evaluate.baselines=[als_target]")
    here = set(os.listdir("."))
    results = run_pipeline(spark, config)
    assert set(os.listdir(".")) == here, "a stage wrote into the working directory instead of the store"
    yield config, results
    patch.undo()


@pytest.mark.e2e
def test_every_stage_writes_to_the_store(spark, store_run):
    config, results = store_run
    assert config.warehouse.startswith("s3a://")
    for name in (tables.INTERACTIONS, tables.INDEXED_INTERACTIONS, tables.TRAINING_EXAMPLES, tables.RECOMMENDATIONS,
                 tables.METRICS):
        assert tables.read(spark, config.warehouse, name).count() > 0, name
    served = selection.read_selection(config.warehouse)
    assert served["path"].startswith(config.warehouse + "/models/")
    loaded = artifact.load(served["path"])
    assert loaded.model_version == served["model_version"]
    joint = results["train"]["models"]["joint"]["model_version"]  # its Horovod workers checkpoint to the store
    assert files.is_file(files.join(config.warehouse, "checkpoints", "joint", joint, "checkpoint.pt"))
    report = files.join(config.warehouse, "reports", "latest")
    assert {"summary.md", "metrics.json", "warm_vs_cold.png"} <= set(files.listdir(report))
    assert files.read_json(files.join(report, "metrics.json"))["metrics"]["full"]["joint"]
    users = tables.read(spark, config.warehouse, tables.USER_INDEX).count()
    assert results["score"][served["method"]]["rows"] == config.score.k * users


@pytest.mark.e2e
def test_a_rerun_on_the_store_changes_nothing(spark, store_run):
    config, _ = store_run
    before = {name: tables.version(spark, config.warehouse, name)
              for name in (tables.INTERACTIONS, tables.TRAINING_EXAMPLES, tables.RECOMMENDATIONS)}
    trained = run_stage(spark, config, "train")
    assert all(meta.get("reused") for meta in trained["models"].values())
    run_stage(spark, config, "score")
    assert {name: tables.version(spark, config.warehouse, name) for name in before} == before


@pytest.mark.e2e
def test_a_store_killed_mid_training_keeps_the_served_model_and_recommendations_and_the_rerun_finishes(
        spark, store_run, s3_store):
    config, _ = store_run
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
