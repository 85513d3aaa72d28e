"""The stages of xdrec and the pipeline that runs them in order."""
from __future__ import annotations

import importlib
import time
from contextlib import nullcontext

from pyspark.sql import SparkSession

from xdrec.config import Config
from xdrec.locks import warehouse_lock
from xdrec.logs import get_logger

log = get_logger("pipeline")

# Stage name -> "module:function(spark, config) -> dict", in pipeline order. Modules are imported only
# when their stage runs, so a stage loads just what it uses (torch, horovod, the text encoder, ...).
STAGES: dict[str, str] = {
    "fetch": "xdrec.data.fetch:run_fetch",
    "ingest": "xdrec.data.ingest:run_ingest",
    "features": "xdrec.data.features:run_features",
    "tune": "xdrec.training.tune:run_tune",
    "train": "xdrec.training.train:run_train",
    "score": "xdrec.serving.score:run_score",
    "evaluate": "xdrec.evaluation.evaluate:run_evaluate",
}


# The stages that hold the warehouse's lock (xdrec.locks): all but score, which serves the model version it
# reads once and may run beside them.
LOCKED_STAGES = ("fetch", "ingest", "features", "tune", "train", "evaluate")

# The stages that run with the tune stage's chosen settings laid over the config (xdrec.training.tune.tuned).
TUNED_STAGES = ("train", "score", "evaluate")


def run_stage(spark: SparkSession, config: Config, stage: str) -> dict:
    module_name, function_name = STAGES[stage].split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    if stage in TUNED_STAGES:
        from xdrec.training.tune import tuned

        config = tuned(config)
    started = time.perf_counter()
    log.info(f"== {stage} ==")
    with warehouse_lock(config.warehouse, stage) if stage in LOCKED_STAGES else nullcontext():
        result = function(spark, config)
    log.info(f"== {stage} done in {time.perf_counter() - started:.1f}s ==")
    return result


def run_pipeline(spark: SparkSession, config: Config) -> dict:
    """Every stage in order: fetch -> ingest -> features -> tune -> train -> score -> evaluate."""
    started = time.perf_counter()
    with warehouse_lock(config.warehouse, "pipeline"):  # from the first stage to the last
        results = {stage: run_stage(spark, config, stage) for stage in STAGES}
    served = results["train"]["selected"]
    log.info(f"pipeline finished in {time.perf_counter() - started:.0f}s; serving {served['method']} "
             f"({served['model_version']}), {served['reason']}")
    return results
