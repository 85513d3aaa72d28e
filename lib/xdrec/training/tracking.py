"""Experiment tracking with MLflow: one run per trained model.

A run records the method and every ``train``, ``als`` and ``features`` setting as parameters (the tuned
values when the tune stage ran, see :mod:`xdrec.training.tune`), the Delta versions
of the input tables (parameters ``input.<table>.version``), the loss, throughput and validation figures of
every epoch as metrics (step = the epoch's position in the whole training), and the model artifact.
By default runs go to a local file store at ``<warehouse>/mlruns`` (``train.mlflow_tracking_uri`` points
elsewhere, e.g. a tracking server or ``databricks``); ``train.mlflow=false`` turns tracking off.
"""
from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from typing import Any, Iterator

from xdrec import files
from xdrec.config import Config
from xdrec.logs import get_logger

log = get_logger("train")


def tracking_uri(config: Config) -> str:
    """``train.mlflow_tracking_uri``; else a file store in a local warehouse's ``mlruns/``. An object store
    cannot hold MLflow's file store, so beside a remote warehouse it is MLflow's own setting
    (``MLFLOW_TRACKING_URI``; in a Databricks notebook, the workspace), else ``./mlruns``."""
    if config.train.mlflow_tracking_uri:
        return config.train.mlflow_tracking_uri
    if files.is_local(config.warehouse):
        return "file://" + files.join(config.warehouse, "mlruns")
    return os.environ.get("MLFLOW_TRACKING_URI") or "file://" + os.path.abspath("mlruns")


def metric_name(name: str) -> str:
    """MLflow's metric names take letters, digits and ``_ - . / space``: "all/NDCG@10" -> "all/NDCG_at_10"."""
    return re.sub(r"[^\w\-./ ]", "_", name.replace("@", "_at_"))


def _flat(prefix: str, values: dict[str, Any]) -> dict[str, str]:
    return {f"{prefix}.{key}": str(value) for key, value in values.items()}


@contextmanager
def run(config: Config, method: str, model_version: str) -> Iterator[str | None]:
    """An active MLflow run for training one model; yields its id (None with tracking off).

    A run that raises ends as FAILED, so a killed or failed training stays visible next to its retry.
    """
    if not config.train.mlflow:
        yield None
        return
    uri = tracking_uri(config)
    if uri.startswith("file:"):
        # MLflow 3 asks file-store users to opt in; the file store needs no database (sqlalchemy).
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    import mlflow

    # MLflow announces each new experiment at INFO; xdrec prints where the run went itself.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(config.train.mlflow_experiment)
    with mlflow.start_run(run_name=f"{method}-{model_version}") as active:
        mlflow.set_tags({"method": method, "model_version": model_version, "dataset": config.data.name})
        mlflow.log_params({"method": method, "source_domain": config.data.source_domain,
                           "target_domain": config.data.target_domain,
                           **_flat("train", config.to_dict()["train"]),
                           **_flat("als", config.to_dict()["als"]),
                           **_flat("features", config.to_dict()["features"])})
        yield active.info.run_id
    log.info(f"{method}: MLflow run {active.info.run_id} in {uri}")


def log_training(run_id: str | None, config: Config, meta: dict[str, Any], artifact_path: str) -> None:
    """Log a finished training's input versions, per-epoch metrics and artifact into the active run."""
    if run_id is None:
        return
    import mlflow

    versions = meta["inputs"]["versions"]
    mlflow.log_params({f"input.{table}.version": version for table, version in versions.items()})
    for step, epoch in enumerate(meta["history"]):
        figures = {f"{epoch['phase']}.loss": epoch["loss"],
                   f"{epoch['phase']}.examples_per_second": epoch["examples"] / max(epoch["seconds"], 1e-9)}
        figures.update({f"valid.{name}": value for name, value in (epoch.get("validation") or {}).items()})
        mlflow.log_metrics({metric_name(name): value for name, value in figures.items()}, step=step)
    mlflow.log_metric("train_seconds", meta["train_seconds"])
    mlflow.log_artifacts(artifact_path, artifact_path="model")
