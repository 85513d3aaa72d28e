"""The model artifact: what training writes and scoring loads. No Spark here.

An artifact is a folder ``<warehouse>/models/<method>/<model_version>/`` holding

- ``model.pt``: the model's state dict (a ``TwoTower``, or a ``FactorModel`` for a factor model);
- ``artifact.json``: method, model version, model class and hyperparameters, source and target domain, the full
  configuration, the Delta versions of the tables training read, and training history;
- ``user_index.parquet`` (user_id, user_idx) and ``item_index.parquet`` (domain, item_id, item_idx).

It is written once, whole (:func:`xdrec.files.staged_folder`), at a local path or a URI; then
``<warehouse>/models/<method>/LATEST`` is pointed at it, so a reader never sees half of one.
"""
from __future__ import annotations

import io
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from xdrec import files
from xdrec.errors import XdrecError
from xdrec.modeling.model import FactorModel, TwoTower

FORMAT_VERSION = 1
# What builds each model class an artifact can hold from its hyperparameters, by the class name that
# artifact.json records ("model_class"; artifacts written before factor models hold a TwoTower).
MODEL_BUILDERS = {"TwoTower": TwoTower, "FactorModel": FactorModel.of_size}
Model = TwoTower | FactorModel


def models_dir(warehouse: str, method: str) -> str:
    return files.join(warehouse, "models", method)


@dataclass
class Artifact:
    path: str
    meta: dict[str, Any]
    model: Model
    user_index: pd.DataFrame
    item_index: pd.DataFrame

    @property
    def model_version(self) -> str:
        return self.meta["model_version"]

    @property
    def method(self) -> str:
        return self.meta["method"]

    def domain_items(self, domain: str) -> np.ndarray:
        """Sorted item indices of one domain."""
        items = self.item_index.loc[self.item_index["domain"] == domain, "item_idx"].to_numpy()
        return np.sort(items.astype(np.int64))


def save(path: str, model: Model, meta: dict[str, Any], user_index: pd.DataFrame,
         item_index: pd.DataFrame) -> str:
    """Write an artifact atomically at ``path`` and point ``LATEST`` at it."""
    with files.staged_folder(path) as staging:
        torch.save(model.state_dict(), os.path.join(staging, "model.pt"))
        meta = {**meta, "format": FORMAT_VERSION, "model_class": type(model).__name__,
                "model": model.hyperparameters()}
        with open(os.path.join(staging, "artifact.json"), "w") as handle:
            json.dump(meta, handle, indent=2, sort_keys=True, default=str)
        user_index.to_parquet(os.path.join(staging, "user_index.parquet"), index=False)
        item_index.to_parquet(os.path.join(staging, "item_index.parquet"), index=False)
    mark_latest(path)
    return path


def mark_latest(path: str) -> None:
    """Point its method's ``LATEST`` at the artifact folder ``path``."""
    files.write_text(files.join(files.parent(path), "LATEST"), files.basename(path) + "\n")


def latest_path(warehouse: str, method: str) -> str:
    """The folder of the newest complete artifact of ``method``."""
    pointer = files.join(models_dir(warehouse, method), "LATEST")
    if not files.is_file(pointer):
        raise XdrecError(f"no trained '{method}' model under {models_dir(warehouse, method)}: run the train stage first")
    return files.join(models_dir(warehouse, method), files.read_text(pointer).strip())


def version_path(warehouse: str, version: str) -> str | None:
    """The artifact folder of model version ``version``, whatever its method; None when there is none."""
    for method in files.listdir(files.join(warehouse, "models")):
        path = files.join(models_dir(warehouse, method), version)
        if files.is_file(files.join(path, "artifact.json")):
            return path
    return None


def load(path: str) -> Artifact:
    """Load an artifact folder onto the CPU, model in eval mode. A missing, cut or foreign file fails with
    one line naming it and its cause."""
    meta_path = files.join(path, "artifact.json")
    if not files.is_file(meta_path):
        raise XdrecError(f"not a model artifact (no artifact.json): {path}")
    with _reading(meta_path):
        meta = files.read_json(meta_path)
    if meta.get("format") != FORMAT_VERSION:
        raise XdrecError(f"{meta_path}: artifact format {meta.get('format')} is not {FORMAT_VERSION}")
    weights_path = files.join(path, "model.pt")
    with _reading(weights_path):
        model = MODEL_BUILDERS[meta.get("model_class", "TwoTower")](**meta["model"])
        weights = torch.load(io.BytesIO(files.read_bytes(weights_path)), map_location="cpu", weights_only=True)
        model.load_state_dict(weights)
    model.eval()
    indexes = {}
    for name in ("user_index", "item_index"):
        index_path = files.join(path, f"{name}.parquet")
        with _reading(index_path), files.open_file(index_path) as handle:
            indexes[name] = pd.read_parquet(handle)
    return Artifact(path=path, meta=meta, model=model, **indexes)


@contextmanager
def _reading(path: str):
    """Turn any failure to read ``path`` into one line that names the file and the root cause."""
    try:
        yield
    except XdrecError:
        raise
    except Exception as error:  # noqa: BLE001 - every reader's own errors (EOF, Unicode, Arrow, pickle)
        lines = str(error).strip().splitlines()
        raise XdrecError(f"{path}: unreadable model artifact file ({type(error).__name__}: "
                         f"{lines[0] if lines else 'no detail'}); retrain with the train stage") from error
