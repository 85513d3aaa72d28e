"""Experiment tracking with MLflow: one run per trained model.

A run records the method and every ``train``, ``als`` and ``features`` setting as parameters (the tuned
values when the tune stage ran, see :mod:`xdrec.training.tune`), the Delta versions
of the input tables (parameters ``input.<table>.version``), the loss, throughput and validation figures of
every epoch as metrics (step = the epoch's position in the whole training), and the model: the artifact in
an MLflow pyfunc (:mod:`xdrec.training.pyfunc`), registered as a version of ``xdrec-<data.name>``. The
served model's version gets the alias ``champion`` by the rule ``train.promote`` (:func:`promote`).
By default runs go to a local file store at ``<warehouse>/mlruns`` (``train.mlflow_tracking_uri`` points
elsewhere, e.g. a tracking server or ``databricks``); ``train.mlflow=false`` turns tracking off.
"""
from __future__ import annotations

import json
import logging
import os
import re
from contextlib import contextmanager
from typing import Any, Iterator

import xdrec
from xdrec import files
from xdrec.config import Config
from xdrec.logs import get_logger

log = get_logger("train")

CHAMPION = "champion"


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
    uri = allow_file_store(tracking_uri(config))
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
    if "temperature_probe" in meta:
        mlflow.log_param("temperature.chosen", meta["temperature_probe"]["chosen"])
        if "ensemble" in meta["temperature_probe"]:
            mlflow.log_param("temperature.finalist_weight", meta["temperature_probe"]["ensemble"]["weight"])
    from xdrec.training import pyfunc

    # The artifact goes in whole, inside a pyfunc model logged as code (nothing pickled), and is registered.
    with files.local_copy(artifact_path) as local:
        logged = mlflow.pyfunc.log_model(name="model", python_model=pyfunc.CODE,
                                         artifacts={pyfunc.ARTIFACT_KEY: local}, signature=pyfunc.SIGNATURE,
                                         pip_requirements=[f"xdrec=={xdrec.__version__}"],
                                         registered_model_name=registered_model(config))
    client = mlflow.MlflowClient()
    for key in ("method", "model_version"):
        client.set_model_version_tag(registered_model(config), logged.registered_model_version, key, meta[key])


def allow_file_store(uri: str) -> str:
    """MLflow 3 asks file-store users to opt in; the file store needs no database (sqlalchemy)."""
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def registered_model(config: Config) -> str:
    return config.train.mlflow_registered_model or f"xdrec-{config.data.name}"


def promote(config: Config, selected: dict[str, Any], input_versions: dict[str, int]) -> str | None:
    """Give the served model (``selected``, the record of :func:`xdrec.training.selection.select_model`) the
    registry alias ``champion`` when ``train.promote`` says so; log the decision either way and return it."""
    if not config.train.mlflow or config.train.promote == "never":
        return None
    client, name = registry(config), registered_model(config)
    key, figure, inputs = selected["selected_on"], selected["validation"][selected["method"]], json.dumps(input_versions)
    version = next((found for found in client.search_model_versions(f"name = '{name}'")
                    if found.tags.get("model_version") == selected["model_version"]), None)
    if version is None:
        return log_decision(f"{selected['method']} {selected['model_version']} is not in the registry {name}: no promotion")
    champion = alias_holder(client, name, CHAMPION)
    figure_tag = f"validation.{metric_name(key)}"
    client.set_model_version_tag(name, version.version, figure_tag, str(figure))
    client.set_model_version_tag(name, version.version, "validation.inputs", inputs)
    if champion is not None and champion.version == version.version:
        return log_decision(f"{name} version {version.version} ({selected['method']}) is already the {CHAMPION}")
    if champion is not None and config.train.promote == "better" and champion.tags.get("validation.inputs") == inputs:
        held = float(champion.tags.get(figure_tag, "-inf"))
        if figure <= held:
            return log_decision(f"{name}: keeping {CHAMPION} version {champion.version} ({key} {held:.4f}); "
                                f"{selected['method']} version {version.version} validates {figure:.4f}")
    client.set_registered_model_alias(name, CHAMPION, version.version)
    return log_decision(f"{name}: {CHAMPION} -> version {version.version} ({selected['method']} "
                        f"{selected['model_version']}, {key} {figure:.4f}"
                        + (f"; was version {champion.version}" if champion is not None else "") + ")")


def registry(config: Config):
    """An MLflow client of the configured tracking store. MLflow 3 reads part of a model version (its
    logged model) through the process's tracking URI, not the client's, and that URI defaults to
    ``./mlflow.db``: so it is set too, or a process that only reads the registry (a train stage whose
    models were all reused) would create that database wherever it ran."""
    import mlflow

    uri = allow_file_store(tracking_uri(config))
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(uri)


def alias_holder(client, name: str, alias: str):
    """The version of registered model ``name`` that holds ``alias``; None when there is none."""
    import mlflow

    try:
        return client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:  # no such registered model, or no version with the alias
        return None


def aliased_model(config: Config, alias: str) -> dict[str, str] | None:
    """The registered version that holds ``alias``, as its tags ``{"method", "model_version", "version"}``;
    None when tracking is off or no version holds it."""
    found = alias_holder(registry(config), registered_model(config), alias) if config.train.mlflow else None
    if found is None:
        return None
    return {"method": found.tags.get("method", ""), "model_version": found.tags.get("model_version", ""),
            "version": found.version}


def log_decision(message: str) -> str:
    log.info(f"registry: {message}")
    return message
