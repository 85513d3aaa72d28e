"""The tune stage: choose settings for a new dataset on its validation split, never on its test split.

Two seeded Optuna searches (TPE sampler, seed ``tune.seed``), one after the other, each within its share
of ``tune.minutes``:

1. the ALS factor models' settings (``als.rank``, ``als.regularization``, ``als.alpha``): each trial fits
   Spark ALS on both domains merged and ranks the validation users with it, within half the budget (all
   of it when no training search follows); a fit cannot stop midway, so none starts unless the slowest
   so far would still end within that share;
2. the methods' training settings (``METHOD_SPACE``: learning rate, dimension, loss, user encoder,
   start...; where the items have text, whether the model reads it): each trial trains ``tune.method``
   through the same launcher and loop as the train stage, which chooses the temperature of
   ``train.temperature`` itself (:func:`train_at_best_temperature`).

Each search tries the config's own settings first, so its choice never validates worse than them. A
training trial is pruned (stopped, and marked so in Optuna) once it has validated more than
``tune.prune_after_epochs`` epochs and its best figure is below the finished trials' median at that epoch;
a trial still running when the budget is spent stops after its epoch and counts with its best so far.
Every trial is scored like model selection scores models: ``train.validation_metric`` @
``train.validation_k`` on ``train.validation_group`` of the validation users. The best settings are
written to ``<warehouse>/tuning/best.json`` with every trial; :func:`tuned` lays them over the config of
the stages that follow (train, score, evaluate), so the trained models, the served model and the ALS
baselines all use them, and every artifact and MLflow run records them. A training trial checkpoints
where the train stage checkpoints the same settings, and the best trial's checkpoints are kept: the
train stage goes on from that trial's epochs instead of training them again.
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import numpy as np
from pyspark.sql import SparkSession

from xdrec.config import Config
from xdrec.data import tables
from xdrec import files
from xdrec.errors import XdrecError
from xdrec.logs import get_logger
from xdrec.training import factors
from xdrec.training.loop import Collective, below_median, selecting_key
from xdrec.training.train import (INPUT_TABLES, TrainingInputs, checkpoints_of, code_version, last_phase_curve,
                                  read_inputs, model_version, reused_artifact, save_factor_model,
                                  stage_method_examples, starting_factors, train_at_best_temperature, train_spec,
                                  training_rows)
from xdrec.training.validation import ranking_figures

log = get_logger("tune")

TUNING_FILE = "best.json"
# Search spaces, wide enough for catalogues of a few hundred to a few hundred thousand items: a tuple of
# choices, or (low, high) searched on a log scale.
ALS_SPACE = {"rank": (16, 32, 64, 128, 256), "regularization": (1e-3, 10.0), "alpha": (0.5, 100.0)}
METHOD_SPACE = {"learning_rate": (1e-4, 3e-2), "embedding_dim": (16, 32, 64, 128, 256),
                "loss": ("bce", "softmax", "sampled_softmax"),
                "table_update": ("dense", "lazy"), "user_encoder": ("embedding", "history"),
                "init": ("random", "als_merged")}
# Searched too where the items have text: whether the item vectors read it.
TEXT_SPACE = {"item_text": ("auto", "off")}


def _is_range(choices: tuple) -> bool:
    return len(choices) == 2 and all(isinstance(bound, float) for bound in choices)


def suggest(trial, space: dict[str, tuple]) -> dict[str, Any]:
    """One trial's settings from ``space``."""
    return {name: trial.suggest_float(name, *choices, log=True) if _is_range(choices)
            else trial.suggest_categorical(name, choices) for name, choices in space.items()}


def inside(space: dict[str, tuple], settings: dict[str, Any]) -> dict[str, Any]:
    """The config's own ``settings`` as a point of ``space`` (ranges clamped; a choice it lacks is left to
    the sampler), to try first: so the search never chooses worse than the config on validation."""
    point = {}
    for name, choices in space.items():
        if _is_range(choices):
            point[name] = min(max(float(settings[name]), choices[0]), choices[1])
        elif settings[name] in choices:
            point[name] = settings[name]
    return point


def tuning_path(warehouse: str) -> str:
    return files.join(warehouse, "tuning", TUNING_FILE)


def tuned(config: Config) -> Config:
    """``config`` with the tune stage's chosen settings in place, when tuning is on and has run."""
    path = tuning_path(config.warehouse)
    if not config.tune.enabled or not files.is_file(path):
        return config
    chosen = files.read_json(path)
    # Validated as a config file would be: a record written before a key changed type still reads.
    return config.model_copy(update={section: type(getattr(config, section)).model_validate(
        {**getattr(config, section).model_dump(), **chosen[section]}) for section in ("als", "train")})


def tuned_method(config: Config) -> str | None:
    """The method whose training runs tune the train settings (``tune.method``, else the first transfer method)."""
    if config.tune.method:
        return config.tune.method
    return next((method for method in config.train.methods if method != "target_only"),
                config.train.methods[0] if config.train.methods else None)


def seeded_study(seed: int):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))


def run_search(study, objective, family: str, trials: int, seconds: float, first: tuple[dict[str, Any], ...] = (),
               whole_trials: bool = False):
    """Run the search, trying the points of ``first`` first, in order; a failed trial (a diverged run, a lost
    worker) is recorded and the search goes on, but a search whose every trial failed stops the stage with
    the first failure's cause. Optuna starts no trial once ``seconds`` are spent; with ``whole_trials``
    (trials that cannot stop midway, such as an ALS fit) none starts unless the slowest so far would
    still end within them."""
    import optuna

    for point in first:
        study.enqueue_trial(point)

    failures: list[Exception] = []
    deadline, slowest = time.perf_counter() + seconds, 0.0

    def recorded(trial) -> float:
        nonlocal slowest
        started = time.perf_counter()
        try:
            return objective(trial)
        except optuna.TrialPruned:
            raise
        except Exception as error:  # Optuna logs it with its traceback and marks the trial failed
            failures.append(error)
            raise
        finally:
            slowest = max(slowest, time.perf_counter() - started)
            if whole_trials and deadline - time.perf_counter() < slowest:
                study.stop()

    study.optimize(recorded, n_trials=trials, timeout=seconds, catch=(Exception,))
    if not any(trial.state == optuna.trial.TrialState.COMPLETE for trial in study.trials):
        first = failures[0] if failures else None
        cause = f"{type(first).__name__}: {str(first).strip().splitlines()[-1]}" if first else "no trial ran"
        raise XdrecError(f"tune: every {family} trial failed; the first: {cause}") from first
    return study


def _trial_log(family: str, number: int, params: dict[str, Any], value: float, seconds: float) -> None:
    settings = ", ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                         for key, value in params.items())
    log.info(f"{family} trial {number + 1}: {settings} -> {value:.4f} ({seconds:.0f}s)")


def search_als(spark: SparkSession, config: Config, inputs: TrainingInputs, seconds: float) -> tuple[Any, dict]:
    """The ALS search: each trial fits ALS on both domains merged and ranks the validation users. Returns
    the study and the best trial's fit (its settings, model and seconds)."""
    train_rows = training_rows(spark, config, inputs.versions).cache()
    best: dict[str, Any] = {"value": -1.0}  # one model kept in memory, not one per trial

    def objective(trial) -> float:
        started = time.perf_counter()
        als = config.als.model_copy(update=suggest(trial, ALS_SPACE))
        model = factors.fit_factor_model("als_merged", train_rows, config.data.source_domain,
                                         config.data.target_domain, inputs.num_users, inputs.num_items, als)
        seconds = time.perf_counter() - started
        figures = ranking_figures(model, inputs.validation, config.train.validation_k, Collective())
        value = figures[selecting_key(config.train, figures)]
        if value > best["value"]:
            best.update(value=value, als=als, model=model, seconds=seconds)
        _trial_log("als", trial.number, trial.params, value, time.perf_counter() - started)
        return value

    try:
        study = run_search(seeded_study(config.tune.seed), objective, "als", config.tune.als_trials, seconds,
                           first=(inside(ALS_SPACE, config.als.model_dump()),), whole_trials=True)
    finally:
        train_rows.unpersist()
    return study, best


def method_space(has_text: bool) -> dict[str, tuple]:
    """The training settings searched: :data:`METHOD_SPACE`, and :data:`TEXT_SPACE` when the items have text."""
    return {**METHOD_SPACE, **(TEXT_SPACE if has_text else {})}


def first_method_points(space: dict[str, tuple], settings: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """The training trials tried before the sampler's: the config's own ``settings``, then the same with
    the other user encoder, then (where ``space`` searches it) the other item text setting. The encoder is
    the largest choice on the sparse sets, and whether text helps differs from one catalogue to the next
    (docs/methods.md, "Tuning"), so neither is left to the sampler, nor to a budget that the first trial
    could spend alone.

    >>> own = {"learning_rate": 0.01, "embedding_dim": 128, "loss": "sampled_softmax", "table_update": "dense",
    ...        "user_encoder": "history", "init": "als_merged", "item_text": "auto"}
    >>> [(point["user_encoder"], point["item_text"]) for point in first_method_points(method_space(True), own)]
    [('history', 'auto'), ('embedding', 'auto'), ('history', 'off')]
    """
    own = inside(space, settings)
    points = [own]
    for name in ("user_encoder", *TEXT_SPACE):
        if name in space:
            points.append({**own, name: next(choice for choice in space[name] if choice != own.get(name))})
    return tuple(points)


def trial_deadline(number: int, seeded: int, now: float, deadline: float) -> float:
    """When training trial ``number`` (from 0) must stop. The ``seeded`` trials tried first share what is left
    of the search's time equally, so the last of them runs however long the earlier ones take; the trials
    the sampler draws stop at the search's ``deadline``.

    >>> trial_deadline(0, 2, now=0.0, deadline=600.0), trial_deadline(1, 2, now=250.0, deadline=600.0)
    (300.0, 600.0)
    """
    return now + (deadline - now) / (seeded - number) if number < seeded else deadline


def search_method(spark: SparkSession, config: Config, inputs: TrainingInputs, method: str, seconds: float) -> Any:
    """The training-settings search: each trial trains ``method`` through the train stage's launcher and
    loop; its figure is that of the model the run keeps (its last validated phase's best epoch)."""
    import optuna

    curves: list[list[float]] = []  # the finished trials' figures per epoch of the last validated phase
    deadline = time.time() + seconds  # a trial running past it stops after its epoch and keeps its best
    space = method_space(inputs.item_text is not None)
    seeded = first_method_points(space, config.train.model_dump())[:config.tune.method_trials]
    starts: dict[str, Any] = {}  # by train.init: ALS-merged is fitted once, when a trial first starts from it
    checkpoints: dict[int, str] = {}  # by trial number

    def objective(trial) -> float:
        started = time.perf_counter()
        train = config.train.model_copy(update=suggest(trial, space))
        trial_config = config.model_copy(update={"train": train})
        if train.init not in starts:
            starts[train.init] = starting_factors(spark, trial_config, inputs, method)
        data = stage_method_examples(spark, trial_config, method, inputs.versions[tables.TRAINING_EXAMPLES])
        # Where the train stage checkpoints these settings: it goes on from the best trial's epochs.
        checkpoint_dir = checkpoints[trial.number] = checkpoints_of(
            config, method, model_version(method, trial_config, inputs.versions))
        spec = train_spec(trial_config, method, inputs, data, checkpoint_dir, starts[train.init])
        spec.prune_below, spec.prune_after = epoch_medians(curves), config.tune.prune_after_epochs
        spec.deadline = trial_deadline(trial.number, len(seeded), time.time(), deadline)
        spec, history, probe = train_at_best_temperature(spec)
        if probe:
            trial.set_user_attr("temperature", probe["chosen"])
        curve = last_phase_curve(train, history, spec.phases)[1]
        for epoch, figure in enumerate(curve):
            trial.report(figure, epoch)
        _trial_log(method, trial.number, trial.params, max(curve), time.perf_counter() - started)
        if below_median(curve, spec.prune_below, spec.prune_after):
            raise optuna.TrialPruned(f"stopped after epoch {len(curve)}, below the earlier trials' median")
        curves.append(curve)
        return max(curve)

    study = None
    try:
        study = run_search(seeded_study(config.tune.seed + 1), objective, method, config.tune.method_trials,
                           seconds, first=seeded)
    finally:  # only the best trial's checkpoints are kept, for the train stage
        kept = checkpoints.get(study.best_trial.number) if study is not None else None
        for folder in set(checkpoints.values()) - {kept}:
            files.remove(folder)
    return study


def epoch_medians(curves: list[list[float]]) -> list[float]:
    """The median figure per epoch over ``curves`` (each finished run's figures per epoch), for the epochs
    that a run reached: the bar of the median stopping rule (after one finished run, that run's figures)."""
    longest = max((len(curve) for curve in curves), default=0)
    return [float(np.median([curve[epoch] for curve in curves if len(curve) > epoch])) for epoch in range(longest)]


def _trials(study) -> list[dict[str, Any]]:
    return [{"number": trial.number, "params": trial.params, "value": trial.value, "state": trial.state.name,
             **trial.user_attrs} for trial in study.trials]


def run_tune(spark: SparkSession, config: Config) -> dict[str, Any]:
    """Search the ALS and training settings on the validation split and record the best in
    ``<warehouse>/tuning/best.json``; returns that record ({} when ``tune.enabled`` is false)."""
    if not config.tune.enabled:
        log.info("tune.enabled is false: the config's settings are used as they are")
        return {}
    versions = {name: tables.version(spark, config.warehouse, name) for name in INPUT_TABLES}
    method = tuned_method(config)
    # The same search over the same inputs chooses the same: a rerun reuses the record.
    values = config.to_dict()
    search_key = hashlib.sha256(json.dumps(
        {"tune": values["tune"], "als": values["als"], "train": values["train"], "features": values["features"],
         "method": method, "inputs": versions, "code": code_version()}, sort_keys=True).encode()).hexdigest()[:12]
    path = tuning_path(config.warehouse)
    if files.is_file(path):
        previous = files.read_json(path)
        if previous.get("search") == search_key:
            log.info(f"search {search_key} already ran on these inputs, reusing its choice: als "
                     f"{previous['als']}, train {previous['train']}")
            return previous
    started = time.perf_counter()
    budget = config.tune.minutes * 60
    inputs = read_inputs(spark, config)
    record: dict[str, Any] = {"search": search_key, "als": {}, "train": {}, "searches": {}, "inputs": inputs.versions,
                              "selected_on": f"validation {config.train.validation_group}/"
                                             f"{config.train.validation_metric}@{config.train.validation_k}"}
    chosen_als = config  # training trials that start from ALS start from the ALS chosen first
    searches_method = bool(config.tune.method_trials and method is not None)
    if config.tune.als_trials:
        study, best = search_als(spark, config, inputs, budget / 2 if searches_method else budget)
        record["als"] = {name: getattr(best["als"], name) for name in ALS_SPACE}
        record["searches"]["als"] = {"best": study.best_value, "trials": _trials(study)}
        chosen_als = config.model_copy(update={"als": best["als"]})
        # The train stage and the training trials reuse the best trial's fit instead of fitting it again.
        if reused_artifact(chosen_als, "als_merged", model_version("als_merged", chosen_als, inputs.versions)) is None:
            save_factor_model(chosen_als, "als_merged", inputs, best["model"], best["seconds"])
    if searches_method:
        remaining = max(budget - (time.perf_counter() - started), 1.0)
        study = search_method(spark, chosen_als, inputs, method, remaining)
        record["train"] = study.best_params
        record["searches"][method] = {"best": study.best_value, "trials": _trials(study)}
    record["seconds"] = round(time.perf_counter() - started, 1)
    files.write_json(path, record)
    log.info(f"chosen in {record['seconds']:.0f}s on {record['selected_on']}: als {record['als']}, "
             f"train {record['train']} -> {path}")
    return record
