"""The second stack, built by ``scripts/setup.sh torch_distributor``: Python 3.12, numpy 2, current pyarrow
and the newest pyspark/delta pair, with no Horovod and no Petastorm. The whole pipeline runs in it as a user
runs it (tests/second_stack.py), training through Spark's TorchDistributor, with the warehouse on the S3
server as on a Databricks runtime."""
from __future__ import annotations

import json
import os

import pytest

import second_stack

PROBE = """import importlib.util, json, sys, numpy, pyarrow, pyspark, delta, xdrec.spark
print(json.dumps({"python": list(sys.version_info[:2]), "numpy": numpy.__version__, "pyarrow": pyarrow.__version__,
                  "pyspark": pyspark.__version__, "delta": xdrec.spark.DELTA_VERSION, "xdrec": xdrec.__file__,
                  "absent": [name for name in ("horovod", "petastorm") if importlib.util.find_spec(name) is None]}))"""


def test_the_second_stack_is_python_3_12_and_numpy_2_without_horovod_or_petastorm(second_stack_python):
    probe = second_stack.run(second_stack_python, "-c", PROBE)
    assert probe.returncode == 0, probe.stderr[-2000:]
    stack = json.loads(probe.stdout)
    assert stack["python"] == [3, 12] and int(stack["numpy"].split(".")[0]) >= 2, stack
    assert stack["absent"] == ["horovod", "petastorm"], stack
    assert stack["pyspark"].startswith("4.1.") and stack["delta"].startswith("4.1."), stack
    assert stack["xdrec"] == os.path.join(second_stack.REPOSITORY, "lib", "xdrec", "__init__.py"), stack


@pytest.mark.e2e
@pytest.mark.timeout(1800)  # every stage, in its own process: about 9 minutes beside another job on 2 cores
def test_the_pipeline_trains_scores_and_evaluates_in_the_second_stack_on_the_store(second_stack_run):
    joint = second_stack_run["joint"]
    assert joint["config"]["train"]["launcher"] == "torch_distributor" and joint["num_proc"] == 2
    assert second_stack_run["selection"]["method"] == "joint"  # over popularity, the other candidate
    full = second_stack_run["report"]["metrics"]["full"]
    # Measured on this stack: joint 0.412, als_target 0.262, popularity 0.180 on all users (synthetic data).
    assert full["joint"]["all"]["NDCG@10"] > full["als_target"]["all"]["NDCG@10"]
