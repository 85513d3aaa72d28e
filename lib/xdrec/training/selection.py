"""Model selection: of every model the train stage made, the one to serve, chosen on validation data.

Every candidate (the trained methods, their ensemble, the factor models of ``train.factor_models`` and the
blend) is ranked on the same validation users that early stopping uses, and the best by
``train.validation_metric`` @ ``train.validation_k`` on ``train.validation_group`` wins; so xdrec never
serves a model that validates worse than one of its own baselines.

The ensemble (``train.ensemble``) adds the two best transfer methods' scores, the blend (``train.blend``)
the best trained model's (a method or the ensemble) and the best factor model's; each model's scores are
divided by their spread, and the weight is the one that validates best. Two models that learned from
different losses make different mistakes, and their sum can rank better than either (docs/methods.md,
"Model selection").

The choice, with every candidate's figure and version, is written atomically to
``<warehouse>/models/SELECTED`` (JSON), which the score stage serves by default.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from xdrec.config import TrainConfig
from xdrec import files
from xdrec.errors import XdrecError
from xdrec.logs import get_logger
from xdrec.modeling.model import FactorModel, ScoreSum, blended
from xdrec.training import artifact
from xdrec.training.loop import Collective, selecting_key
from xdrec.training.validation import ValidationSet, ranking_figures

log = get_logger("train")

SELECTED = "SELECTED"
ENSEMBLE = "ensemble"
BLEND = "blend"
# The models selection builds from other candidates' scores, in the order it builds them.
COMBINED = (ENSEMBLE, BLEND)
# The first model's weights tried in a blend (the second has the rest).
BLEND_WEIGHTS = tuple(step / 10 for step in range(11))


def selection_path(warehouse: str) -> str:
    return files.join(warehouse, "models", SELECTED)


def transfer_methods(methods: list[str]) -> list[str]:
    """The ``methods`` that learn from the source domain: all but the target_only yardstick."""
    return [method for method in methods if method != "target_only"]


def served_candidates(train: TrainConfig, methods: list[str] | None = None) -> list[str]:
    """The models the train stage offers to selection: the trained methods (``train.methods`` unless
    ``methods`` is given); with ``train.ensemble`` and two transfer methods or more, their ensemble; the
    factor models; and, with ``train.blend`` and both kinds present, the blend of the best of each."""
    methods = train.methods if methods is None else methods
    ensemble = [ENSEMBLE] if train.ensemble and len(transfer_methods(methods)) >= 2 else []
    blend = [BLEND] if train.blend and methods and train.factor_models else []
    return [*methods, *ensemble, *train.factor_models, *blend]


def combined_components(name: str, figures: dict[str, dict], key: str, methods: list[str],
                        factor_models: list[str]) -> tuple[str, str]:
    """The two candidates that the model ``name`` of :data:`COMBINED` sums, by their validation ``figures``
    under ``key``: for the ensemble the two best transfer ``methods``, for the blend the best trained
    model (a method, or the ensemble where ``figures`` has it) and the best of ``factor_models``. On a tie
    the one listed first.

    >>> figures = {"joint": {"cold/NDCG@10": 0.05}, "finetune": {"cold/NDCG@10": 0.06},
    ...            "ensemble": {"cold/NDCG@10": 0.07}, "als_merged": {"cold/NDCG@10": 0.04}}
    >>> combined_components("blend", figures, "cold/NDCG@10", ["joint", "finetune"], ["als_merged"])
    ('ensemble', 'als_merged')
    """
    def ranked(names: list[str]) -> list[str]:
        return sorted(names, key=lambda candidate: -figures[candidate][key])

    if name == ENSEMBLE:
        first, second = ranked(transfer_methods(methods))[:2]
        return first, second
    trained = ranked([*methods, *([ENSEMBLE] if ENSEMBLE in figures else [])])[0]
    return trained, ranked(factor_models)[0]


def validation_figures(candidates: dict[str, str], validation: ValidationSet, train: TrainConfig) -> dict[str, dict]:
    """Every candidate ``{name: artifact folder}`` ranked on ``validation``: ``{name: {figure: value}}``."""
    if not len(validation):
        raise XdrecError("no target-domain validation users: the split holds none, so no model can be selected")
    return {name: ranking_figures(artifact.load(path).model, validation, train.validation_k, Collective())
            for name, path in candidates.items()}


def score_spread(model: nn.Module, validation: ValidationSet, seed: int, users: int = 256, items: int = 10_000) -> float:
    """How far a model's scores spread: their standard deviation within a user's row, over a seeded sample
    of validation users and target items. Dividing by it puts two models' scores on one scale."""
    draw = np.random.default_rng(seed)
    sample_users = validation.users[draw.permutation(len(validation))[:users]]
    sample_items = validation.candidates[draw.permutation(len(validation.candidates))[:items]]
    with torch.no_grad():
        scores = model.score_matrix(torch.as_tensor(sample_users), torch.as_tensor(sample_items)).numpy()
    return float((scores - scores.mean(axis=1, keepdims=True)).std()) or 1.0


def fit_blend(first: nn.Module, second: nn.Module, validation: ValidationSet, train: TrainConfig,
              num_users: int, num_items: int,
              weights: tuple[float, ...] = BLEND_WEIGHTS) -> tuple[FactorModel, dict[str, Any]]:
    """The blend ``w * first + (1 - w) * second`` of the two models' scores, each divided by its spread,
    with the weight ``w`` of ``weights`` that validates best. The weights 0 and 1 are the models alone, so
    a blend over :data:`BLEND_WEIGHTS` never validates below either. Returns the blend and what was chosen:
    ``{"weight", "spreads", "selected_on", "validation": {weight: figure}}``."""
    spreads = (score_spread(first, validation, train.seed), score_spread(second, validation, train.seed))

    def scales(weight: float) -> tuple[float, float]:
        return weight / spreads[0], (1 - weight) / spreads[1]

    # Scored for the validation users only: the blend of every user is built once, for the weight chosen.
    scorer = ScoreSum((first, second), scales(weights[0]))
    figures, key, best = {}, None, None
    for weight in weights:
        scorer.weights = scales(weight)
        ranked = ranking_figures(scorer, validation, train.validation_k, Collective())
        key = key or selecting_key(train, ranked)
        figures[weight] = ranked[key]
        # On a tie, the weight nearest to a model alone: no more of a second model than validation asks for.
        if best is None or (figures[weight], abs(weight - 0.5)) > (figures[best], abs(best - 0.5)):
            best = weight
    model = blended((first, second), scales(best), num_users, num_items)
    return model, {"weight": best, "spreads": list(spreads), "selected_on": key, "validation": figures}


def select_model(warehouse: str, train: TrainConfig, candidates: dict[str, str],
                 figures: dict[str, dict]) -> dict[str, Any]:
    """Of every candidate ``{name: artifact folder}``, with its ``figures`` (:func:`validation_figures`),
    record the best as the served model and return the record. On a tie the candidate listed first wins
    (the trained methods come before the factor models, and the blend last)."""
    if not candidates:
        raise XdrecError("no model to select from: train.methods and train.factor_models are both empty")
    key = selecting_key(train, next(iter(figures.values())))
    winner = max(candidates, key=lambda name: figures[name][key])
    record = {"method": winner, "model_version": files.basename(candidates[winner]),
              "path": candidates[winner], "selected_on": key,
              "models": {name: files.basename(path) for name, path in candidates.items()},
              "validation": {name: figures[name][key] for name in candidates},
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    ranked = sorted(record["validation"].items(), key=lambda item: -item[1])
    record["reason"] = (f"the best on validation {key}: "
                        + ", ".join(f"{name} {value:.4f}" for name, value in ranked))
    files.write_json(selection_path(warehouse), record)
    log.info(f"serving {winner}: {record['reason']}")
    return record


def read_selection(warehouse: str) -> dict[str, Any]:
    """The served model's record; raises when the train stage has not selected one."""
    path = selection_path(warehouse)
    if not files.is_file(path):
        raise XdrecError(f"no model selected to serve ({path} is missing): run the train stage first")
    return files.read_json(path)


def offered_models(warehouse: str, names: list[str], record: dict[str, Any] | None = None) -> dict[str, str]:
    """``{name: artifact folder}`` of the models ``names`` at the versions the last train run offered to
    selection, as its ``record`` holds them (read here unless given). Scoring every model and evaluating
    read these, not each method's ``LATEST``, which a train run that failed midway may have moved."""
    record = read_selection(warehouse) if record is None else record
    offered = record.get("models", {})
    missing = [name for name in names if name not in offered]
    if missing:
        raise XdrecError(f"{selection_path(warehouse)}: the last train run offered no {', '.join(missing)} to "
                         f"selection (it offered {', '.join(offered) or 'none on record'}): run the train stage "
                         "with this config")
    return {name: files.join(artifact.models_dir(warehouse, name), offered[name]) for name in names}
