"""A standalone Spark cluster (a master and two workers, each its own JVM) running xdrec from its wheel, as
``spark-submit`` runs it on a cluster: tests/test_cluster.py's run. :func:`start_submission` starts it in the
background once the second stack's pipeline (tests/second_stack.py) has left its warehouse, so that it runs
beside the main stack's tests; :func:`finish_submission` waits for it."""
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

import second_stack
from stores import free_port, s3a_settings
from xdrec.spark import delta_jars, s3a_jars

REPOSITORY = second_stack.REPOSITORY
SPARK_HOME = os.path.dirname(__import__("pyspark").__file__)
# The site-packages folder holding the pinned stack (pyspark, torch, horovod, ...).
SHARED_PACKAGES = os.path.dirname(SPARK_HOME)


def wheel_python(folder: str) -> str:
    """A Python with the pinned stack and xdrec installed from its wheel, not from this checkout."""
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", os.path.join(folder, "dist"),
                    REPOSITORY], check=True, capture_output=True)
    wheel = glob.glob(os.path.join(folder, "dist", "xdrec-*.whl"))[0]
    environment = os.path.join(folder, "env")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", environment], check=True)
    python = os.path.join(environment, "bin", "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, "shared-packages.pth"), "w") as handle:
        handle.write(f"import site; site.addsitedir('{SHARED_PACKAGES}')\n")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], check=True,
                   env={**os.environ, "PYTHONPATH": ""})
    installed = subprocess.run([python, "-c", "import xdrec, xdrec.config as c; print(xdrec.__file__, c.CONF_DIR)"],
                               check=True, capture_output=True, text=True, cwd=folder,
                               env={**os.environ, "PYTHONPATH": ""}).stdout
    assert installed.startswith(site) and REPOSITORY not in installed, installed
    return python


def start_cluster(folder: str) -> tuple[str, list[subprocess.Popen]]:
    """A standalone master and two workers (1 core each), each its own JVM: (master URL, their processes)."""
    port, web = free_port(), free_port()
    env = {**os.environ, "SPARK_HOME": SPARK_HOME, "SPARK_LOG_DIR": folder, "PYTHONPATH": "",
           **second_stack.BACKGROUND_JVM}
    spark_class = os.path.join(SPARK_HOME, "bin", "spark-class")
    daemons = [subprocess.Popen([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                 "--port", str(port), "--webui-port", str(web)], env=env,
                                stdout=open(os.path.join(folder, "master.log"), "w"), stderr=subprocess.STDOUT)]
    master = f"spark://127.0.0.1:{port}"
    for number in (1, 2):
        daemons.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "1",
             "--memory", "3g", "--webui-port", str(free_port()), "--work-dir", os.path.join(folder, f"work{number}"),
             master],
            env=env, stdout=open(os.path.join(folder, f"worker{number}.log"), "w"), stderr=subprocess.STDOUT))
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{web}/json/", timeout=5) as response:
                if json.load(response).get("aliveworkers") == 2:
                    return master, daemons
        except OSError:
            pass
        if time.time() > deadline or any(daemon.poll() is not None for daemon in daemons):
            stop_cluster(daemons)
            raise RuntimeError(f"the standalone cluster did not come up: see {folder}")
        time.sleep(2)


def stop_cluster(daemons: list[subprocess.Popen]) -> None:
    for daemon in reversed(daemons):
        daemon.terminate()
    for daemon in daemons:
        daemon.wait(timeout=60)


def spark_submit(python: str, master: str, endpoint: str, job: str, *arguments: str,
                 **environment: str) -> subprocess.Popen:
    """Start ``spark-submit jobs/<job>.py`` on the cluster, as the README's cluster section shows it."""
    class_path = os.pathsep.join(s3a_jars())
    settings = {
        "spark.pyspark.python": python, "spark.pyspark.driver.python": python,
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
        **s3a_settings(endpoint),
        **{f"spark.executorEnv.{key}": os.environ[key]
           for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")},
    }
    command = [os.path.join(SPARK_HOME, "bin", "spark-submit"), "--master", master, "--jars", ",".join(delta_jars()),
               *[part for key, value in settings.items() for part in ("--conf", f"{key}={value}")],
               os.path.join(REPOSITORY, "jobs", f"{job}.py"), *arguments]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPOSITORY,
                            env={**os.environ, "SPARK_HOME": SPARK_HOME, "PYTHONPATH": "", **second_stack.BACKGROUND_JVM,
                                 **environment})


def pipeline_settings(warehouse: str) -> list[str]:
    """The run's settings: the second stack's (tests/second_stack.py) on its warehouse, but Horovod's launcher
    and another seed. The launcher alone does not make another model (train.model_version), and the model must
    be trained here. The cheapest yardstick: ALS on Spark is tested in tests/test_pipeline_e2e.py."""
    return [f"warehouse={warehouse}", *second_stack.SETTINGS, "train.launcher=horovod", "train.seed=4321",
            "evaluate.baselines=[popularity]"]


def start_submission(second_stack_started: dict, endpoint: str, folder: str) -> dict:
    """In a thread: once the second stack's pipeline (second_stack.start_pipeline) has ended well, build the
    wheel, start the cluster and ``spark-submit jobs/pipeline.py`` on its warehouse (:func:`pipeline_settings`),
    with MLflow's runs in ``folder``. Returns at once: :func:`finish_submission` waits, :func:`stop_submission`
    stops it and the cluster."""
    submission = {"settings": pipeline_settings(second_stack_started["warehouse"]), "daemons": [], "process": None,
                  "mlruns": "file://" + os.path.join(folder, "mlruns"), "error": None, "stop": threading.Event()}

    def submit() -> None:
        try:
            # Checked before the wheel's build adds build/ to the working directory that the check watches.
            second_stack.finish_pipeline(second_stack_started)
            python = wheel_python(os.path.join(folder, "wheel"))
            os.makedirs(os.path.join(folder, "cluster"))
            if submission["stop"].is_set():
                return
            master, submission["daemons"] = start_cluster(os.path.join(folder, "cluster"))
            if submission["stop"].is_set():
                return
            here = set(os.listdir(REPOSITORY))
            submission["process"] = spark_submit(python, master, endpoint, "pipeline", "--conf", "synthetic",
                                                 *[part for setting in submission["settings"] for part in ("--set", setting)],
                                                 MLFLOW_TRACKING_URI=submission["mlruns"])
            _, errors = submission["process"].communicate(timeout=900)
            assert submission["process"].returncode == 0, f"spark-submit pipeline failed:\n{errors[-4000:]}"
            assert set(os.listdir(REPOSITORY)) == here, "a stage wrote into the working directory instead of the store"
        except BaseException as error:  # noqa: BLE001 - handed to the test that waits for it
            submission["error"] = error

    submission["thread"] = threading.Thread(target=submit, daemon=True)
    submission["thread"].start()
    return submission


def finish_submission(submission: dict) -> None:
    """Wait for :func:`start_submission`'s run; raise what failed in it."""
    submission["thread"].join()
    if submission["error"] is not None:
        raise submission["error"]


def stop_submission(submission: dict) -> None:
    """Stop the run if it is still going (the session ended before a test waited for it), then the cluster."""
    submission["stop"].set()
    if submission["process"] is not None and submission["process"].poll() is None:
        submission["process"].kill()
    submission["thread"].join(timeout=120)
    stop_cluster(submission["daemons"])
