"""The stages of xdrec and the pipeline that runs them in order."""
from __future__ import annotations

import importlib
import time

from pyspark.sql import SparkSession

from xdrec.config import Config

# Stage name -> "module:function(spark, config) -> dict", in pipeline order. Modules are imported only
# when their stage runs, so a stage loads just what it uses (torch, horovod, the text encoder, ...).
STAGES: dict[str, str] = {
    "fetch": "xdrec.data.fetch:run_fetch",
    "ingest": "xdrec.data.ingest:run_ingest",
    "features": "xdrec.data.features:run_features",
    "train": "xdrec.training.train:run_train",
    "score": "xdrec.serving.score:run_score",
    "evaluate": "xdrec.evaluation.evaluate:run_evaluate",
}


def run_stage(spark: SparkSession, config: Config, stage: str) -> dict:
    module_name, function_name = STAGES[stage].split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    started = time.perf_counter()
    print(f"== {stage} ==", flush=True)
    result = function(spark, config)
    print(f"== {stage} done in {time.perf_counter() - started:.1f}s ==", flush=True)
    return result


def run_pipeline(spark: SparkSession, config: Config) -> dict:
    """Every stage in order: fetch -> ingest -> features -> train -> score -> evaluate."""
    started = time.perf_counter()
    results = {stage: run_stage(spark, config, stage) for stage in STAGES}
    print(f"pipeline finished in {time.perf_counter() - started:.0f}s", flush=True)
    return results
