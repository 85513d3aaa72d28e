"""Train reads one consistent snapshot: the versions it pins at its start, even when features is rerun
before it reads them (a features run commits its tables one at a time)."""
from __future__ import annotations

import os

import pandas as pd

from xdrec.data import tables
from xdrec.pipeline import run_stage
from xdrec.training.train import read_inputs, train_method

METHOD = "target_only"


def example_rows(spark, config, version: int | None) -> set[tuple]:
    frame = tables.read(spark, config.warehouse, tables.TRAINING_EXAMPLES, version).where(
        f"domain = '{config.data.target_domain}'")
    return {tuple(row) for row in frame.select("user_idx", "item_idx").collect()}


def test_a_features_rerun_between_trains_start_and_its_read_does_not_reach_the_model(spark, tmp_path, make_config,
                                                                                    featured_copy):
    config = make_config(featured_copy(tmp_path), "tune.enabled=false", "train.launcher=local", "train.num_proc=1",
                         "train.target_epochs=1", f"train.methods=[{METHOD}]", "train.factor_models=[]")
    pinned = read_inputs(spark, config)  # train's start: every input version pinned

    # Features again, with another split: new versions of every table, committed one at a time.
    reseeded = config.model_copy(update={"features": config.features.model_copy(update={"seed": 43})})
    run_stage(spark, reseeded, "features")
    latest = tables.version(spark, config.warehouse, tables.TRAINING_EXAMPLES)
    assert latest > pinned.versions[tables.TRAINING_EXAMPLES]
    assert example_rows(spark, config, latest) != example_rows(spark, config, pinned.versions[tables.TRAINING_EXAMPLES])

    meta = train_method(spark, config, METHOD, pinned)

    assert meta["inputs"]["versions"] == pinned.versions
    staged = os.path.join(config.warehouse, "staging", tables.TRAINING_EXAMPLES,
                          f"v{pinned.versions[tables.TRAINING_EXAMPLES]}", config.data.target_domain)
    rows = pd.read_parquet(staged)
    assert set(rows.itertuples(index=False, name=None)) == example_rows(
        spark, config, pinned.versions[tables.TRAINING_EXAMPLES])
