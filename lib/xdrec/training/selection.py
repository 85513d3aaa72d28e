"""Model selection: of every model the train stage made, the one to serve, chosen on validation data.

Every candidate (the trained methods and the factor models, ``train.factor_models``) is ranked on the
same validation users that early stopping uses, and the best by ``train.validation_metric`` @
``train.validation_k`` on ``train.validation_group`` wins; so xdrec never serves a model that validates
worse than one of its own baselines. The choice, with every candidate's figure, is written atomically to
``<warehouse>/models/SELECTED`` (JSON), which the score stage serves by default.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

from xdrec.config import TrainConfig
from xdrec.errors import XdrecError
from xdrec.files import atomic_path
from xdrec.logs import get_logger
from xdrec.training import artifact
from xdrec.training.loop import Collective, selecting_key
from xdrec.training.validation import ValidationSet, ranking_figures

log = get_logger("train")

SELECTED = "SELECTED"


def selection_path(warehouse: str) -> str:
    return os.path.join(os.path.abspath(warehouse), "models", SELECTED)


def select_model(warehouse: str, train: TrainConfig, candidates: dict[str, str],
                 validation: ValidationSet) -> dict[str, Any]:
    """Rank every candidate ``{method: artifact folder}`` on ``validation``, record the best as the served
    model and return the record. On a tie the candidate listed first wins (the trained methods come
    before the factor models)."""
    if not candidates:
        raise XdrecError("no model to select from: train.methods and train.factor_models are both empty")
    if not len(validation):
        raise XdrecError("no target-domain validation users: the split holds none, so no model can be selected")
    loaded = {method: artifact.load(path) for method, path in candidates.items()}
    figures = {method: ranking_figures(saved.model, validation, train.validation_k, Collective())
               for method, saved in loaded.items()}
    key = selecting_key(train, next(iter(figures.values())))
    winner = max(candidates, key=lambda method: figures[method][key])
    record = {"method": winner, "model_version": loaded[winner].model_version,
              "path": candidates[winner], "selected_on": key,
              "validation": {method: figures[method][key] for method in candidates},
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    ranked = sorted(record["validation"].items(), key=lambda item: -item[1])
    record["reason"] = (f"the best on validation {key}: "
                        + ", ".join(f"{method} {value:.4f}" for method, value in ranked))
    with atomic_path(selection_path(warehouse)) as temporary, open(temporary, "w") as handle:
        json.dump(record, handle, indent=2)
    log.info(f"serving {winner}: {record['reason']}")
    return record


def read_selection(warehouse: str) -> dict[str, Any]:
    """The served model's record; raises when the train stage has not selected one."""
    path = selection_path(warehouse)
    if not os.path.isfile(path):
        raise XdrecError(f"no model selected to serve ({path} is missing): run the train stage first")
    with open(path) as handle:
        return json.load(handle)
