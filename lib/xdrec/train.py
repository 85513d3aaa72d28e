"""The train stage: Delta tables at pinned versions in, a model artifact out.

For each configured method it pins the versions of the feature tables, stages the training examples
of that version as plain Parquet for Petastorm (Delta's folder also holds files of older versions,
which a Parquet reader would read too), launches Horovod inside Spark, and saves the artifact with the
versions it was trained on. The model version is a hash of the method, its settings and those input
versions, so a rerun with the same inputs resumes or reuses the same run instead of starting another.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid

import torch
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from xdrec import artifact, distributed, tables
from xdrec.config import Config
from xdrec.model import TwoTower
from xdrec.trainer import Phase

INPUT_TABLES = (tables.TRAINING_EXAMPLES, tables.USER_INDEX, tables.ITEM_INDEX)


def phases_for(method: str, config: Config) -> list[Phase]:
    """The training phases of a method."""
    train, data = config.train, config.data
    target = Phase("target", data.target_domain, train.target_epochs, train.learning_rate)
    if method == "target_only":
        return [target]
    if method == "finetune":
        source = Phase("source", data.source_domain, train.source_epochs, train.learning_rate)
        target.freeze = list(train.freeze)
        return [source, target] if train.source_epochs else [target]
    raise ValueError(f"unknown method {method!r}")


def model_version(method: str, config: Config, input_versions: dict[str, int]) -> str:
    """Same method, settings, split and input versions -> same version."""
    settings = {"method": method, "train": config.to_dict()["train"], "features": config.to_dict()["features"],
                "data": [config.data.source_domain, config.data.target_domain], "inputs": input_versions}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def shuffled_for_training(examples: DataFrame, seed: int) -> DataFrame:
    """Only what the trainer reads, in a seeded pseudo-random order (Petastorm shuffles row groups only)."""
    order = F.xxhash64("user_idx", "item_idx", "label", F.lit(seed))
    return (examples.select(F.col("user_idx").cast("int"), F.col("item_idx").cast("int"),
                            F.col("label").cast("float"))
            .withColumn("_order", order).sort("_order").drop("_order"))


def stage_examples(spark: SparkSession, config: Config, domain: str, version: int, files: int) -> distributed.DomainData:
    """Write one domain's training examples at ``version`` as Parquet once; reuse it afterwards."""
    folder = os.path.join(os.path.abspath(config.warehouse), "staging", tables.TRAINING_EXAMPLES,
                          f"v{version}", domain)
    marker = os.path.join(folder, "_ROWS")
    if not os.path.isfile(marker):
        examples = tables.read(spark, config.warehouse, tables.TRAINING_EXAMPLES, version)
        staged = shuffled_for_training(examples.where(F.col("domain") == domain), config.features.seed)
        temporary = f"{folder}.tmp-{uuid.uuid4().hex}"
        # Small row groups let Petastorm spread them evenly over the shards and shuffle them.
        (staged.repartition(files).write.option("parquet.block.size", 256 * 1024).parquet(temporary))
        rows = spark.read.parquet(temporary).count()
        with open(os.path.join(temporary, "_ROWS"), "w") as handle:
            handle.write(str(rows))
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(temporary, folder)
    with open(marker) as handle:
        rows = int(handle.read())
    return distributed.DomainData(url="file://" + folder, rows=rows)


def train_method(spark: SparkSession, config: Config, method: str, input_versions: dict[str, int]) -> dict:
    """Train one method and save its artifact; skip if that exact version already exists."""
    version = model_version(method, config, input_versions)
    path = os.path.join(artifact.models_dir(config.warehouse, method), version)
    if os.path.isfile(os.path.join(path, "artifact.json")):
        print(f"[train] {method}: model {version} already trained on these inputs, reusing it")
        with open(os.path.join(path, "artifact.json")) as handle:
            return json.load(handle)

    user_index = tables.read(spark, config.warehouse, tables.USER_INDEX, input_versions[tables.USER_INDEX]).toPandas()
    item_index = tables.read(spark, config.warehouse, tables.ITEM_INDEX, input_versions[tables.ITEM_INDEX]).toPandas()
    phases = phases_for(method, config)
    files = config.train.num_proc * 4
    data = {phase.domain: stage_examples(spark, config, phase.domain, input_versions[tables.TRAINING_EXAMPLES], files)
            for phase in phases}
    model_settings = TwoTower(int(user_index["user_idx"].max()) + 1, int(item_index["item_idx"].max()) + 1,
                              config.train.embedding_dim, config.train.hidden_dim).hyperparameters()
    checkpoint_dir = os.path.join(os.path.abspath(config.warehouse), "checkpoints", method, version)
    spec = distributed.TrainSpec(model=model_settings, phases=phases, data=data, batch_size=config.train.batch_size,
                                 seed=config.train.seed, checkpoint_dir=checkpoint_dir)
    print(f"[train] {method}: model {version}, {config.train.num_proc} Horovod processes, phases "
          + ", ".join(f"{phase.name} ({phase.domain}, {data[phase.domain].rows:,} examples x {phase.epochs} epochs)"
                      for phase in phases), flush=True)
    started = time.perf_counter()
    history = distributed.launch(spec, config.train.num_proc, config.train.start_timeout)
    seconds = time.perf_counter() - started

    model = TwoTower(**model_settings)
    model.load_state_dict(torch.load(os.path.join(checkpoint_dir, distributed.FINAL_WEIGHTS), weights_only=True))
    meta = {
        "method": method,
        "model_version": version,
        "source_domain": config.data.source_domain,
        "target_domain": config.data.target_domain,
        "inputs": {"warehouse": os.path.abspath(config.warehouse), "versions": input_versions},
        "config": config.to_dict(),
        "history": history,
        "train_seconds": round(seconds, 1),
        "num_proc": config.train.num_proc,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    artifact.save(path, model, meta, user_index, item_index)
    print(f"[train] {method}: saved {path} ({seconds:.0f}s)", flush=True)
    return meta


def run_train(spark: SparkSession, config: Config, methods: list[str] | None = None) -> dict:
    """Train every configured method (or ``methods``) on the current feature tables."""
    input_versions = {name: tables.version(spark, config.warehouse, name) for name in INPUT_TABLES}
    return {method: train_method(spark, config, method, input_versions)
            for method in (methods or config.train.methods)}
