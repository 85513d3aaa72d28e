"""xdrec as a cluster runs it: the wheel that ``python -m build`` makes, installed into an environment
that cannot see this checkout, jobs run by ``spark-submit --master spark://...`` on a standalone Spark
cluster (a master and two workers, each its own JVM, with executors in their own JVMs and Python
workers), and the warehouse on the S3-compatible server. Driver-only paths (a file written on the
driver and read by an executor) and files missing from the wheel fail here."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from stores import free_port, point_spark_at, s3a_settings
from xdrec import files
from xdrec.config import load_config
from xdrec.data import tables
from xdrec.pipeline import run_stage
from xdrec.spark import delta_jars, s3a_jars
from xdrec.training import selection

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPARK_HOME = os.path.dirname(__import__("pyspark").__file__)


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


@pytest.mark.e2e
def test_spark_submit_on_a_standalone_cluster_from_the_wheel_with_the_warehouse_on_s3(
        spark, wheel_python, standalone_cluster, s3_store, s3_bucket):
    master, _ = standalone_cluster
    warehouse = f"s3a://{s3_bucket}/warehouse"
    settings = [f"warehouse={warehouse}", "train.methods=[joint]", "tune.enabled=false", "train.source_epochs=2",
                "train.target_epochs=2"]
    # The raw files and the feature tables come from this process (test_object_store runs those stages on
    # the store too); the cluster trains, in Horovod processes inside its executors, and scores, in its
    # executors' pandas UDF, from the model files the driver wrote to the store.
    point_spark_at(spark, s3_store.endpoint)
    for stage in ("fetch", "ingest", "features"):
        run_stage(spark, load_config("synthetic", settings), stage)
    for job in ("train", "score"):
        spark_submit(wheel_python, master, s3_store, job, "--conf", "synthetic",
                     *[part for setting in settings for part in ("--set", setting)])

    served = selection.read_selection(warehouse)
    recommendations = tables.read(spark, warehouse, tables.RECOMMENDATIONS).where(f"model = '{served['method']}'")
    users = tables.read(spark, warehouse, tables.USER_INDEX).count()
    assert recommendations.select("user_idx").distinct().count() == users
    joint = files.read_text(files.join(warehouse, "models", "joint", "LATEST")).strip()
    # The two Horovod processes ran in the executors, and checkpointed to the store.
    assert files.is_file(files.join(warehouse, "checkpoints", "joint", joint, "checkpoint.pt"))
