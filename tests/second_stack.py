"""The second stack, built by ``scripts/setup.sh torch_distributor`` (Python 3.12, numpy 2, the newest
pyspark/delta pair, no Horovod, no Petastorm): its interpreter, and the synthetic pipeline run in it as a user
runs it, ``jobs/pipeline.py`` in its own process with the warehouse on the S3 server, as on a Databricks
runtime. tests/test_torch_distributor_stack.py checks that run; tests/test_cluster.py goes on from its
warehouse on the main stack's cluster."""
from __future__ import annotations

import json
import os
import subprocess
import threading

import pytest

from stores import new_bucket, s3a_settings
from xdrec import files
from xdrec.training import artifact, selection

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Training through TorchDistributor; Spark ALS runs as the yardstick that the stack test compares against
# (the main stack's tests run the ALS factor models, their blend and the other baselines).
SETTINGS = ["train.launcher=torch_distributor", "train.methods=[joint]", "train.factor_models=[popularity]",
            "train.blend=false", "tune.enabled=false", "train.source_epochs=2", "train.target_epochs=2",
            "evaluate.baselines=[popularity,als_target]"]

# For the JVMs that run beside the main stack's tests on 2 cores (this pipeline's, the cluster's): the JIT's C1
# compiler alone. In a fresh session's fetch, ingest and features, C2 compiling took 88 of the JVM's 208 CPU
# seconds; C1 alone took the JVM from 183-194 to 132-149 CPU seconds (two runs each), CPU the main tests get.
BACKGROUND_JVM = {"JDK_JAVA_OPTIONS": "-XX:TieredStopAtLevel=1"}


def interpreter() -> str:
    """The second stack's python (``XDREC_TORCH_DISTRIBUTOR_ENV``, which scripts/test.sh sets)."""
    folder = os.environ.get("XDREC_TORCH_DISTRIBUTOR_ENV") or ""
    python = os.path.join(folder, "bin", "python")
    if not os.access(python, os.X_OK):
        pytest.fail(f"no second stack at XDREC_TORCH_DISTRIBUTOR_ENV={folder!r}: run scripts/setup.sh "
                    "torch_distributor (scripts/test.sh does)")
    return python


def _environment(**extra: str) -> dict:
    """This process's environment with nothing of the test's interpreter: its PYTHONPATH, nor the
    PYSPARK_PYTHON that this session's Spark set (Spark would start 3.11 workers for a 3.12 driver)."""
    inherited = {key: value for key, value in os.environ.items()
                 if key not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")}
    return {**inherited, "PYTHONPATH": "", **extra}


def run(python: str, *arguments: str, **environment: str) -> subprocess.CompletedProcess:
    """``python arguments...`` in this checkout, in the stack's own environment (:func:`_environment`)."""
    return subprocess.run([python, *arguments], capture_output=True, text=True, cwd=REPOSITORY, timeout=1700,
                          env=_environment(**environment))


def start_pipeline(python: str, endpoint: str, folder: str) -> dict:
    """Start every stage of the synthetic pipeline in the stack, in a new bucket, and return at once: it runs
    beside the main stack's tests (:func:`finish_pipeline` waits for it). Its output goes to a file in
    ``folder``, where its MLflow runs go too (MLflow's file store cannot live in a bucket)."""
    warehouse = f"s3a://{new_bucket()}/warehouse"
    # Its Spark 4.1 reads s3a:// through hadoop-aws 3.4.2 (xdrec.spark.s3a_jars), the store's keys and
    # endpoint come from the environment (the s3_store fixture).
    settings = [f"warehouse={warehouse}", *SETTINGS, f"spark.conf={json.dumps(s3a_settings(endpoint))}"]
    output, here = os.path.join(folder, "pipeline.log"), set(os.listdir(REPOSITORY))
    with open(output, "w") as handle:  # a file, not a pipe: nobody reads a pipe until the run ends
        process = subprocess.Popen(
            [python, "jobs/pipeline.py", "--conf", "synthetic", *[part for setting in settings for part in ("--set", setting)]],
            stdout=handle, stderr=subprocess.STDOUT, cwd=REPOSITORY,
            env=_environment(MLFLOW_TRACKING_URI="file://" + os.path.join(folder, "mlruns"), **BACKGROUND_JVM))
    return {"process": process, "output": output, "warehouse": warehouse, "here": here, "lock": threading.Lock()}


def finish_pipeline(started: dict) -> dict:
    """Wait for :func:`start_pipeline`'s run; what it served and reported, read as it finished:
    {warehouse, joint (its artifact's meta), selection, report (metrics.json)}. The first call checks the run
    (tests/standalone.py's thread may be first); a later one returns what it found, or raises what it raised."""
    with started["lock"]:
        if "finished" not in started:
            try:
                started["finished"] = _checked(started)
            except BaseException as error:  # noqa: BLE001 - every caller raises it
                started["finished"] = error
    if isinstance(started["finished"], BaseException):
        raise started["finished"]
    return started["finished"]


def _checked(started: dict) -> dict:
    try:
        started["process"].wait(timeout=1700)
    except subprocess.TimeoutExpired:
        started["process"].kill()
        raise
    with open(started["output"]) as handle:
        output = handle.read()
    assert started["process"].returncode == 0, f"the pipeline failed in the second stack:\n{output[-4000:]}"
    assert set(os.listdir(REPOSITORY)) == started["here"], (
        "a stage, or a test that ran beside the pipeline, wrote into the working directory instead of the store")
    warehouse = started["warehouse"]
    return {"warehouse": warehouse, "joint": artifact.load(artifact.latest_path(warehouse, "joint")).meta,
            "selection": selection.read_selection(warehouse),
            "report": json.loads(files.read_text(files.join(warehouse, "reports", "latest", "metrics.json")))}
