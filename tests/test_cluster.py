"""xdrec as a cluster runs it, with its warehouse on a real S3-compatible server (SeaweedFS): the wheel that
``python -m build`` makes, installed into an environment that cannot see this checkout, jobs run by
``spark-submit --master spark://...`` on a standalone Spark cluster (a master and two workers, each its own JVM,
with executors in their own JVMs and Python workers). Delta tables go through Spark's s3a://, everything else
through xdrec.files. Driver-only paths (a file written on the driver and read by an executor) and files missing
from the wheel fail here; and a store that dies mid-write loses nothing."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import pytest

import second_stack
from stores import free_port, point_spark_at, s3a_settings
from xdrec import files
from xdrec.config import load_config
from xdrec.data import tables
from xdrec.pipeline import run_stage
from xdrec.spark import delta_jars, s3a_jars
from xdrec.training import artifact, selection

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPARK_HOME = os.path.dirname(__import__("pyspark").__file__)
# The first test's setup also waits for the second stack's pipeline (tests/second_stack.py).
pytestmark = pytest.mark.timeout(1800)


def _shared_packages() -> str:
    """The site-packages folder holding the pinned stack (pyspark, torch, horovod, ...)."""
    return os.path.dirname(os.path.dirname(__import__("pyspark").__file__))


@pytest.fixture(scope="module")
def wheel_python(tmp_path_factory):
    """A Python with the pinned stack and xdrec installed from its wheel, not from this checkout."""
    folder = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(folder / "dist"),
                    REPOSITORY], check=True, capture_output=True)
    wheel = glob.glob(str(folder / "dist" / "xdrec-*.whl"))[0]
    environment = folder / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(environment)], check=True)
    python = str(environment / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, "shared-packages.pth"), "w") as handle:
        handle.write(f"import site; site.addsitedir('{_shared_packages()}')\n")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], check=True,
                   env={**os.environ, "PYTHONPATH": ""})
    installed = subprocess.run([python, "-c", "import xdrec, xdrec.config as c; print(xdrec.__file__, c.CONF_DIR)"],
                               check=True, capture_output=True, text=True, cwd=str(folder),
                               env={**os.environ, "PYTHONPATH": ""}).stdout
    assert installed.startswith(site) and REPOSITORY not in installed, installed
    return python


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory):
    """A standalone master and two workers (1 core each), each its own JVM; stopped afterwards."""
    folder = tmp_path_factory.mktemp("cluster")
    port, web = free_port(), free_port()
    env = {**os.environ, "SPARK_HOME": SPARK_HOME, "SPARK_LOG_DIR": str(folder), "PYTHONPATH": ""}
    spark_class = os.path.join(SPARK_HOME, "bin", "spark-class")
    daemons = [subprocess.Popen([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                 "--port", str(port), "--webui-port", str(web)], env=env,
                                stdout=open(folder / "master.log", "w"), stderr=subprocess.STDOUT)]
    master = f"spark://127.0.0.1:{port}"
    for number in (1, 2):
        daemons.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "1",
             "--memory", "3g", "--webui-port", str(free_port()), "--work-dir", str(folder / f"work{number}"), master],
            env=env, stdout=open(folder / f"worker{number}.log", "w"), stderr=subprocess.STDOUT))
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{web}/json/", timeout=5) as response:
                if json.load(response).get("aliveworkers") == 2:
                    break
        except OSError:
            pass
        if time.time() > deadline or any(daemon.poll() is not None for daemon in daemons):
            pytest.fail(f"the standalone cluster did not come up: see {folder}")
        time.sleep(2)
    yield master, folder
    for daemon in reversed(daemons):
        daemon.terminate()
    for daemon in daemons:
        daemon.wait(timeout=60)


def spark_submit(wheel_python: str, master: str, store, job: str, *arguments: str) -> subprocess.CompletedProcess:
    """``spark-submit jobs/<job>.py`` on the cluster, as the README's cluster section shows it."""
    class_path = os.pathsep.join(s3a_jars())
    settings = {
        "spark.pyspark.python": wheel_python, "spark.pyspark.driver.python": wheel_python,
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.executor.cores": "1", "spark.executor.memory": "2g", "spark.driver.memory": "2g",
        "spark.sql.shuffle.partitions": "4", "spark.driver.extraClassPath": class_path,
        # The README's setting for xdrec's small Delta logs: with Delta's default of 50 partitions to rebuild a
        # table's snapshot, reading a 100-row table on this cluster took 20 s instead of 9 s.
        "spark.databricks.delta.snapshotPartitions": "2",
        # Spark SQL's default database folder; it would be made in the working directory that the test watches.
        "spark.sql.warehouse.dir": os.path.join(tempfile.gettempdir(), "xdrec-spark-sql-cluster"),
        "spark.executor.extraClassPath": class_path,
        **s3a_settings(store.endpoint),
        **{f"spark.executorEnv.{key}": os.environ[key]
           for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")},
    }
    command = [os.path.join(SPARK_HOME, "bin", "spark-submit"), "--master", master, "--jars", ",".join(delta_jars()),
               *[part for key, value in settings.items() for part in ("--conf", f"{key}={value}")],
               os.path.join(REPOSITORY, "jobs", f"{job}.py"), *arguments]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPOSITORY, timeout=900,
                          env={**os.environ, "SPARK_HOME": SPARK_HOME, "PYTHONPATH": ""})
    assert done.returncode == 0, f"spark-submit {job} failed:\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def cluster_run(spark, wheel_python, standalone_cluster, s3_store, second_stack_run, tmp_path_factory):
    """``spark-submit jobs/pipeline.py`` on the warehouse that the second stack's pipeline left in its bucket
    (second_stack.start_pipeline): Spark 4.0's Delta reads what Spark 4.1's wrote, and fetch, ingest and
    features find their work done. On the cluster it trains (Horovod processes inside its executors), scores
    (its executors' pandas UDF, reading the model files the driver wrote to the store) and evaluates."""
    master, _ = standalone_cluster
    point_spark_at(spark, s3_store.endpoint)
    # MLflow's file store cannot live in a bucket: as on a cluster, the environment says where runs go.
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_TRACKING_URI", "file://" + str(tmp_path_factory.mktemp("mlruns")))
    # The stack's settings but Horovod's launcher and another seed: the launcher alone does not make another
    # model (train.model_version), and the model must be trained here. The cheapest yardstick: ALS on Spark
    # is tested in tests/test_pipeline_e2e.py.
    settings = [f"warehouse={second_stack_run['warehouse']}", *second_stack.SETTINGS, "train.launcher=horovod",
                "train.seed=4321", "evaluate.baselines=[popularity]"]
    config = load_config("synthetic", settings)
    here = set(os.listdir("."))
    spark_submit(wheel_python, master, s3_store, "pipeline", "--conf", "synthetic",
                 *[part for setting in settings for part in ("--set", setting)])
    assert set(os.listdir(".")) == here, "a stage wrote into the working directory instead of the store"
    yield config
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
