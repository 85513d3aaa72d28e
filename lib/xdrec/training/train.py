"""The train stage: Delta tables at pinned versions in, a model artifact (and an MLflow run) out.

For each configured method it pins the versions of the feature tables, stages the training examples
of that version as plain Parquet for Petastorm (Delta's folder also holds files of older versions,
which a Parquet reader would read too), gathers the item text embeddings and the validation split,
launches Horovod inside Spark (or one local process; the processes read users' histories themselves), and
saves the artifact with the versions it was trained on. The model version is a hash of the method, its
settings, those input versions and the modelling and training code, so a rerun with the same inputs and
code resumes or reuses the same run instead of starting another.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import time
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from torch import nn
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

import xdrec
from xdrec import files
from xdrec.config import BASELINES, Config, TrainConfig
from xdrec.data import lineage, tables
from xdrec.errors import XdrecError
from xdrec.logs import get_logger
from xdrec.modeling.methods import Phase, model_options, phases_for
from xdrec.modeling.model import FactorModel, TwoTower
from xdrec.training import artifact, distributed, factors, loop, selection, tracking
from xdrec.training.validation import ValidationSet, ranking_figures

log = get_logger("train")

# A staged file's pairs: 8 MB of them, one Parquet row group under the block size below, so each
# process reads whole files, as many as every other (Petastorm shards by row group).
PAIRS_PER_FILE = 1_000_000
STAGED_BLOCK_BYTES = 64 * 1024 * 1024
INPUT_TABLES = (tables.TRAINING_EXAMPLES, tables.USER_INDEX, tables.ITEM_INDEX, tables.INDEXED_INTERACTIONS)
# When the best of train.temperature is its smallest or largest, how many halvings or doublings past it
# next_temperature tries at most: enough to go 8 times further than the list, at an epoch each.
PROBES_PAST_THE_LIST = 3
# How many of the temperatures that rank best after one epoch are trained to the end, the best kept epoch
# deciding: one epoch favours the temperature that learns fastest, which is not always the one that ends best.
FINALISTS = 2
# The kept finalist's weights tried in the sum of the two finalists' scores (the runner-up has the rest): the
# finalist that validated best always leads, and validation, on a few hundred users, only chooses how much of
# the other to add.
FINALIST_WEIGHTS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
# Train keys that change how a run is watched or launched, not the model it makes.
_NOT_IN_VERSION = ("methods", "factor_models", "ensemble", "blend", "mlflow", "mlflow_tracking_uri",
                   "mlflow_experiment", "mlflow_registered_model", "promote", "start_timeout", "launcher")


@functools.cache
def code_version(package: str = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) -> str:
    """A hash of the package version and of the code that makes and scores models (``xdrec.modeling`` and
    ``xdrec.training`` of the ``package`` folder): a fix there gives every model a new version, so a rerun
    retrains instead of reusing a model of the old code."""
    digest = hashlib.sha256(f"xdrec {xdrec.__version__}\0".encode())
    for folder in ("modeling", "training"):
        for name in sorted(os.listdir(os.path.join(package, folder))):
            if name.endswith(".py"):
                with open(os.path.join(package, folder, name), "rb") as handle:
                    digest.update(f"{folder}/{name}\0".encode() + handle.read())
    return digest.hexdigest()[:12]


def model_version(method: str, config: Config, input_versions: dict[str, int]) -> str:
    """Same method, settings, split, input versions and code -> same version. A method's settings are the
    train section's (and the als section's when it starts from ALS); a factor model's the als section's,
    EASE's the ease section's and how it is validated."""
    values = config.to_dict()
    if method in BASELINES:
        settings = {"als": values["als"]}
    elif method == "ease":
        train = config.train
        settings = {"ease": values["ease"], "validation": [train.validation_group, train.validation_metric,
                                                           train.validation_k, train.validation_max_users, train.seed]}
    else:
        settings = {"train": {key: value for key, value in values["train"].items() if key not in _NOT_IN_VERSION}}
        if starts_from_als(config, method):
            settings["als"] = values["als"]
    settings.update({"method": method, "features": values["features"],
                     "data": [config.data.source_domain, config.data.target_domain], "inputs": input_versions,
                     "code": code_version()})
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def shuffled_for_training(examples: DataFrame, seed: int, parts: int) -> DataFrame:
    """Only what the trainer reads, in ``parts`` partitions of equal size give or take a row, each in a
    seeded pseudo-random order (Petastorm shuffles row groups only), the same rows in the same order on
    every run."""
    order = F.xxhash64("user_idx", "item_idx", F.lit(seed))
    # Sorted after the round robin: a shuffle fetches its blocks in a different order on every run, and a
    # partition's rows would follow it (and with them every batch a seeded epoch draws).
    return (examples.select(F.col("user_idx").cast("int"), F.col("item_idx").cast("int"))
            .withColumn("_order", order).repartition(parts).sortWithinPartitions("_order").drop("_order"))


def stage_examples(spark: SparkSession, config: Config, domain: str, version: int, parts: int) -> distributed.DomainData:
    """Write one domain's training examples at ``version`` as Parquet once; reuse it afterwards. The ``_ROWS``
    marker, written last, says the folder is complete: without it the folder is written again.

    The files are a multiple of ``parts`` (a multiple of the processes), of equal size within a row, each one
    row group: every process's shard then holds the same number of pairs, give or take a row a file. (With
    several row groups a file, a file's short last group fell to the same process every time: one of two
    processes once got 84,486 pairs of 547,030 and went over them five times an epoch.)"""
    folder = files.join(config.warehouse, "staging", tables.TRAINING_EXAMPLES, f"v{version}", domain)
    marker = files.join(folder, "_ROWS")
    if not files.is_file(marker):
        examples = tables.read(spark, config.warehouse, tables.TRAINING_EXAMPLES, version)
        pairs = examples.where(F.col("domain") == domain)
        count = pairs.count()
        file_count = parts * max(1, math.ceil(count / (parts * PAIRS_PER_FILE)))
        (shuffled_for_training(pairs, config.features.seed, file_count).write.mode("overwrite")
         .option("parquet.block.size", STAGED_BLOCK_BYTES).parquet(folder))
        files.write_text(marker, str(count))
    rows = int(files.read_text(marker))
    return distributed.DomainData(url=folder if not files.is_local(folder) else "file://" + folder, rows=rows)


def stage_method_examples(spark: SparkSession, config: Config, method: str, version: int) -> dict[str, distributed.DomainData]:
    """The staged examples ``method``'s processes read (:func:`stage_examples`), by domain: those its phases
    train on, and both domains for a model that reads users' histories (the bridges, the history encoder),
    whose processes read them from these examples."""
    domains = list(dict.fromkeys(domain for phase in phases_for(method, config) for domain in phase.domains))
    options = model_options(method, config.train.user_encoder)
    if options["user_encoder"] == "history" or options["bridge"] != "none":
        domains = list(dict.fromkeys([*domains, config.data.source_domain, config.data.target_domain]))
    return {domain: stage_examples(spark, config, domain, version, config.train.num_proc * 4) for domain in domains}


def validation_users(interactions: DataFrame, target: str, max_users: int, seed: int) -> DataFrame:
    """(user_idx, cold) of the target validation split: at most ``max_users // 2`` warm and as many
    cold-start users, picked by a seeded hash of user_idx."""
    users = (interactions.where((F.col("domain") == target) & (F.col("split") == "valid"))
             .groupBy("user_idx").agg(F.bool_or("cold").alias("cold")))
    draw = F.row_number().over(Window.partitionBy("cold").orderBy(F.xxhash64("user_idx", F.lit(seed)), "user_idx"))
    return users.withColumn("draw", draw).where(F.col("draw") <= max(1, max_users // 2)).drop("draw")


def validation_set(interactions: DataFrame, target: str, candidates: np.ndarray, max_users: int,
                   seed: int) -> ValidationSet:
    """The validation users' held-out and training target items, collected for the workers."""
    users = validation_users(interactions, target, max_users, seed)
    target_rows = interactions.where(F.col("domain") == target).join(users, "user_idx")
    rows = target_rows.select("user_idx", "item_idx", "split").where(F.col("split").isin("valid", "train")).toPandas()
    user_frame = users.toPandas().sort_values("user_idx")
    grouped = {split: rows[rows["split"] == split].groupby("user_idx")["item_idx"]
               .apply(lambda items: np.sort(items.to_numpy(np.int64))).to_dict() for split in ("valid", "train")}
    empty = np.empty(0, dtype=np.int64)
    user_ids = user_frame["user_idx"].to_numpy(np.int64)
    return ValidationSet(users=user_ids, cold=user_frame["cold"].to_numpy(bool),
                         relevant=[grouped["valid"].get(user, empty) for user in user_ids],
                         seen=[grouped["train"].get(user, empty) for user in user_ids],
                         candidates=np.asarray(candidates, dtype=np.int64))


@dataclass
class TrainingInputs:
    """What every method of one train run shares, read once at the pinned input versions."""

    versions: dict[str, int]
    user_index: pd.DataFrame
    item_index: pd.DataFrame
    validation: ValidationSet
    item_text: tuple[np.ndarray, np.ndarray] | None  # (embeddings [num_items, dim], has_text [num_items])

    @property
    def num_users(self) -> int:
        return int(self.user_index["user_idx"].max()) + 1

    @property
    def num_items(self) -> int:
        return int(self.item_index["item_idx"].max()) + 1


def item_text_matrix(embeddings: pd.DataFrame, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(``[num_items, dim]`` float32, has-text mask) from rows of (item_idx, embedding array)."""
    vectors = np.stack(embeddings["embedding"].to_numpy()).astype(np.float32)
    matrix = np.zeros((num_items, vectors.shape[1]), dtype=np.float32)
    has_text = np.zeros(num_items, dtype=bool)
    matrix[embeddings["item_idx"].to_numpy(np.int64)] = vectors
    has_text[embeddings["item_idx"].to_numpy(np.int64)] = True
    return matrix, has_text


def read_item_text(spark: SparkSession, config: Config, num_items: int,
                   versions: dict[str, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """The ``item_embeddings`` table as a dense matrix, or None (with a line saying why) when there is none."""
    if config.train.item_text == "off":
        return None
    if not tables.exists(spark, config.warehouse, tables.ITEM_EMBEDDINGS):
        log.info(f"no {tables.ITEM_EMBEDDINGS} table: items are represented by their ids only")
        return None
    versions[tables.ITEM_EMBEDDINGS] = tables.version(spark, config.warehouse, tables.ITEM_EMBEDDINGS)
    rows = (tables.read(spark, config.warehouse, tables.ITEM_EMBEDDINGS, versions[tables.ITEM_EMBEDDINGS])
            .where((F.col("item_idx") < num_items) & (F.size("embedding") > 0))
            .select("item_idx", "embedding").toPandas())
    if rows.empty:
        log.info(f"{tables.ITEM_EMBEDDINGS} has no embedding of an indexed item: ids only")
        return None
    matrix, has_text = item_text_matrix(rows, num_items)
    log.info(f"item text: {int(has_text.sum()):,} of {num_items:,} items have a "
             f"{matrix.shape[1]}-dimensional text embedding")
    return matrix, has_text


def read_inputs(spark: SparkSession, config: Config) -> TrainingInputs:
    """Pin the input tables' versions and read what the workers need besides the training examples: the
    index tables, item text and the validation users. (The processes read the training pairs themselves.)"""
    versions = {name: tables.version(spark, config.warehouse, name) for name in INPUT_TABLES}

    def read(name: str) -> DataFrame:
        return tables.read(spark, config.warehouse, name, versions[name])

    data, train = config.data, config.train
    user_index, item_index = read(tables.USER_INDEX).toPandas(), read(tables.ITEM_INDEX).toPandas()
    item_text = read_item_text(spark, config, int(item_index["item_idx"].max()) + 1, versions)
    interactions = read(tables.INDEXED_INTERACTIONS)
    candidates = item_index.loc[item_index["domain"] == data.target_domain, "item_idx"].to_numpy(np.int64)
    validation = validation_set(interactions, data.target_domain, candidates, train.validation_max_users, train.seed)
    log.info(f"validation: {len(validation):,} {data.target_domain} users "
             f"({int(validation.cold.sum()):,} cold-start), ranked over {len(candidates):,} items")
    return TrainingInputs(versions, user_index, item_index, validation, item_text)


def train_spec(config: Config, method: str, inputs: TrainingInputs, data: dict[str, distributed.DomainData],
               checkpoint_dir: str, start: FactorModel | None = None) -> distributed.TrainSpec:
    """The workers' spec of one method: model settings, phases, data, what the model carries, and the
    factors its embeddings ``start`` from (:func:`starting_factors`)."""
    train = config.train
    options = model_options(method, train.user_encoder)
    item_text = None if train.item_text == "off" else inputs.item_text  # a tune trial may turn the text off
    text_dim = 0 if item_text is None else item_text[0].shape[1]
    model = TwoTower(inputs.num_users, inputs.num_items, train.embedding_dim, train.hidden_dim, text_dim=text_dim,
                     item_ids_with_text=train.item_ids_with_text, temperature=train.temperature[0],
                     **options).hyperparameters()
    model_data = distributed.ModelData()
    if item_text is not None:
        model_data.item_text, model_data.item_has_text = item_text
    domain_items = {domain: np.sort(inputs.item_index.loc[inputs.item_index["domain"] == domain, "item_idx"]
                                    .to_numpy(np.int64)) for domain in data}
    return distributed.TrainSpec(model=model, phases=phases_for(method, config), data=data,
                                 source_domain=config.data.source_domain, train=train,
                                 checkpoint_dir=checkpoint_dir, model_data=model_data, validation=inputs.validation,
                                 domain_items=domain_items,
                                 start_factors=None if start is None else (
                                     start.user_embedding.weight.numpy(), start.item_embedding.weight.numpy(),
                                     config.als.regularization))


def last_phase_curve(train: TrainConfig, history: list[dict], phases: list[Phase]) -> tuple[str, list[float]]:
    """The figure that selects epochs (its key) and its value per epoch of the last validated phase of a
    run's ``history``: its best is the figure of the model the run keeps. A last phase that keeps the
    weights it started from when no epoch beats them (``keeps_start_if_best``) starts from the best epoch
    of the validated phase before it, so the curve begins with that epoch's figure."""
    validated = [epoch for epoch in history if epoch["validation"]]
    last = {phase.name: phase for phase in phases}[validated[-1]["phase"]]
    last_phase = [epoch["validation"] for epoch in validated if epoch["phase"] == last.name]
    key = loop.selecting_key(train, last_phase[0], last.validation_group)
    curve = [figures[key] for figures in last_phase]
    earlier = [epoch for epoch in validated if epoch["phase"] != last.name]
    if not (last.keeps_start_if_best and earlier):
        return key, curve
    return key, [max(epoch["validation"][key] for epoch in earlier if epoch["phase"] == earlier[-1]["phase"]), *curve]


def checkpoints_of(config: Config, method: str, version: str) -> str:
    """Where the run of ``method``'s model ``version`` checkpoints: a run of the same version, a rerun or
    the tune trial of the same settings, goes on from it."""
    return files.join(config.warehouse, "checkpoints", method, version)


def temperature_dir(checkpoint_dir: str, folder: str, temperature: float) -> str:
    """Where :func:`train_at_best_temperature` checkpoints the run of one temperature: ``folder``
    "temperature" for its whole run, "probe" for the one-epoch run of a method with several phases."""
    return files.join(checkpoint_dir, f"{folder}-{temperature:g}")


def trained_model(spec: distributed.TrainSpec) -> TwoTower:
    """The model ``spec``'s run ended with, from its final weights."""
    weights = torch.load(io.BytesIO(files.read_bytes(files.join(spec.checkpoint_dir, distributed.FINAL_WEIGHTS))),
                         weights_only=True)
    model = TwoTower(**spec.model)
    model.load_state_dict(weights)
    return model.eval()


def with_runner_up(model: TwoTower, spec: distributed.TrainSpec, probe: dict, inputs: TrainingInputs,
                   checkpoint_dir: str) -> tuple[nn.Module, dict]:
    """The kept finalist's ``model`` (of ``spec``, the run :func:`train_at_best_temperature` chose under
    ``checkpoint_dir``), or the weighted sum of its scores and the other finalist's
    (:func:`selection.fit_blend` over :data:`FINALIST_WEIGHTS`) where that validates better; and what was
    chosen (the weight 1.0: the kept finalist alone).

    The two finalists are trained to the end at different temperatures, so they make different mistakes,
    and their sum ranked better than the kept one alone on most datasets measured (docs/methods.md, "The
    finalists together"). It costs no training, only their validation."""
    chosen = probe["chosen"]
    runner_up = next(float(temperature) for temperature in probe["finalists"] if float(temperature) != chosen)
    other = trained_model(replace(spec, model={**spec.model, "temperature": runner_up},
                                  checkpoint_dir=temperature_dir(checkpoint_dir, "temperature", runner_up)))
    blend, ensemble = selection.fit_blend(model, other, inputs.validation, spec.train, inputs.num_users,
                                          inputs.num_items, FINALIST_WEIGHTS)
    ensemble = {"runner_up": runner_up, **ensemble}
    figure = ensemble["validation"][ensemble["weight"]]
    log.info(f"finalists together: {ensemble['weight']:.1f} x temperature {chosen:g} + "
             f"{1 - ensemble['weight']:.1f} x {runner_up:g}, {ensemble['selected_on']} {figure:.4f} "
             f"(the first alone: {ensemble['validation'][1.0]:.4f})")
    return (model if ensemble["weight"] == 1.0 else blend), ensemble


def next_temperature(listed: list[float], after_one_epoch: dict[float, float]) -> float | None:
    """The next temperature of ``listed`` (``train.temperature``) to train one epoch at, given the figures
    ``after_one_epoch`` so far, or None when the search is done. A temperature of 0 (plain dot products) is
    off the scale and tried first. The others are tried from the middle of the list outwards, towards the
    better of its two middle values, while each validates better than the best so far, and past the list's
    end (half its smallest, twice its largest) at most :data:`PROBES_PAST_THE_LIST` times: the figure after
    one epoch rises to one best temperature and falls past it on every dataset measured (docs/methods.md,
    "Choosing the temperature"), so the far side of the best is not tried, and both its neighbours are::

        next_temperature([0.05, 0.1, 0.2, 0.4], {0.1: 0.36, 0.2: 0.37})              # 0.4
        next_temperature([0.05, 0.1, 0.2, 0.4], {0.1: 0.36, 0.2: 0.37, 0.4: 0.34})   # None: 0.05 is not tried
        next_temperature([0.05, 0.1, 0.2, 0.4], {0.1: 0.18, 0.2: 0.12, 0.05: 0.19})  # 0.025, past the list
    """
    pending = [t for t in listed if t <= 0 and t not in after_one_epoch]
    scale = sorted({t for t in listed if t > 0})
    middle = max(0, (len(scale) - 1) // 2)
    pending += [t for t in scale[middle:middle + 2] if t not in after_one_epoch]
    if pending or len(scale) < 2:
        return pending[0] if pending else None
    tried = sorted(t for t in after_one_epoch if t > 0)
    best = max(tried, key=after_one_epoch.get)
    if best not in (tried[0], tried[-1]):
        return None
    further = [t for t in scale if t < best] if best == tried[0] else [t for t in scale if t > best]
    if further:
        return further[-1] if best == tried[0] else further[0]
    past = sum(t < scale[0] or t > scale[-1] for t in tried)
    if past >= PROBES_PAST_THE_LIST:
        return None
    return best / 2 if best == tried[0] else best * 2


def train_at_best_temperature(spec: distributed.TrainSpec) -> tuple[distributed.TrainSpec, list[dict], dict]:
    """Train ``spec`` at the temperature of ``train.temperature`` that validates best; returns the run's spec
    (its temperature, and the checkpoint folder holding its final weights), its history, and what was
    found: ``{"chosen", "selected_on", "validation": {temperature: figure after one epoch}, "finalists":
    {temperature: figure of the kept epoch}}``.

    Every temperature first trains one epoch of every phase, from the same start. With one phase that
    epoch is the first of the temperature's whole run, checkpointed in ``temperature-<temperature>`` of
    the spec's checkpoint folder and paused there; with several it is a run of its own, one epoch a
    phase, in ``probe-<temperature>``. A rerun reuses either. The temperatures are tried in the order
    :func:`next_temperature` gives: from the middle of the list outwards while they validate better, and
    past its ends. The :data:`FINALISTS` best then train to the end (in
    ``temperature-<temperature>``: a paused run goes on from its first epoch), and the one whose kept
    epoch validates best is the model. One temperature: ``spec`` trained as it is, and {}.

    A tune trial past ``spec.deadline`` starts no more probes and trains no finalist further: its figures
    are those after one epoch, and the train stage goes on from its probes (``tune.minutes`` kept).

    A temperature sets how sharply the loss weighs the negatives that score close to the positive, which
    suits one dataset and not another (docs/methods.md, "Choosing the temperature")."""
    temperatures = spec.train.temperature
    if len(temperatures) == 1:
        return spec, distributed.run_spec(spec), {}
    if spec.validation is None or not len(spec.validation):
        raise XdrecError(f"train.temperature lists {len(temperatures)} temperatures to choose from on "
                         "validation, but the split has no target-domain validation users: give one temperature")
    after_one_epoch: dict[float, float] = {}
    probes: dict[float, tuple[distributed.TrainSpec, list[dict]]] = {}

    def out_of_time() -> bool:
        return 0 < spec.deadline <= time.time()

    def at_temperature(temperature: float, folder: str, **changes) -> distributed.TrainSpec:
        return replace(spec, model={**spec.model, "temperature": temperature},
                       checkpoint_dir=temperature_dir(spec.checkpoint_dir, folder, temperature), **changes)

    def probe(temperature: float) -> str:
        """Train one epoch of every phase at ``temperature``, record its figure, return the figure's key."""
        if len(spec.phases) == 1:  # the finalist's own first epoch, which its run then goes on from
            folder, changes = "temperature", {"pause_after": 1}
        else:
            folder, changes = "probe", {"phases": [replace(phase, epochs=1) for phase in spec.phases]}
        run = at_temperature(temperature, folder, prune_after=0, deadline=0.0, **changes)
        probes[temperature] = run, distributed.run_spec(run)
        key, curve = last_phase_curve(spec.train, probes[temperature][1], spec.phases)
        after_one_epoch[temperature] = curve[0]
        log.info(f"temperature {temperature:g}: {key} {curve[0]:.4f} after one epoch")
        return key

    late = False  # whether the probes stopped at the deadline
    while (temperature := next_temperature(temperatures, after_one_epoch)) is not None:
        if late := bool(after_one_epoch) and out_of_time():
            break
        key = probe(temperature)
    # sorted() is stable: on a tie, the first tried goes first.
    finalists = sorted(after_one_epoch, key=after_one_epoch.get, reverse=True)[:FINALISTS]
    runs: dict[float, tuple[distributed.TrainSpec, list[dict]]] = {}
    kept: dict[float, float] = {}
    for temperature in finalists:
        if out_of_time():
            runs[temperature] = probes[temperature]
        else:
            run = at_temperature(temperature, "temperature")
            runs[temperature] = run, distributed.run_spec(run)
        kept[temperature] = max(last_phase_curve(spec.train, runs[temperature][1], spec.phases)[1])
        log.info(f"temperature {temperature:g}: {key} {kept[temperature]:.4f} "
                 + ("at the kept epoch" if runs[temperature] is not probes[temperature]
                    else "after one epoch, trained no further: past the trial's deadline"))
    chosen = max(kept, key=kept.get)  # on a tie, the better after one epoch
    trained = [f"{t:g}" for t in finalists if runs[t] is not probes[t]]
    skipped = [f"{t:g}" for t in temperatures if t not in after_one_epoch]
    log.info(f"temperature {chosen:g} chosen, the best on validation {key} of "
             + ", ".join(f"{temperature:g}" for temperature in after_one_epoch)
             + f" (after one epoch; {' and '.join(trained) or 'none'} trained to the end"
             + (f"; {', '.join(skipped)} not tried, past "
                + ("the trial's deadline" if late else "a temperature that validated lower") if skipped else "")
             + ")")
    return (*runs[chosen], {"chosen": chosen, "selected_on": key,
                            "validation": {f"{t:g}": f for t, f in after_one_epoch.items()},
                            "finalists": {f"{t:g}": f for t, f in kept.items()}})


def reused_artifact(config: Config, method: str, version: str) -> dict | None:
    """The meta of ``method``'s artifact of this ``version`` when one exists (then LATEST points at it), else None."""
    path = files.join(artifact.models_dir(config.warehouse, method), version)
    if not files.is_file(files.join(path, "artifact.json")):
        return None
    log.info(f"{method}: model {version} already trained on these inputs, reusing it")
    artifact.mark_latest(path)
    return {**files.read_json(files.join(path, "artifact.json")), "reused": True}


def artifact_meta(config: Config, method: str, version: str, inputs: TrainingInputs, history: list,
                  seconds: float, run_id: str | None) -> dict:
    """What artifact.json records of a trained model besides the model's own hyperparameters."""
    return {
        "method": method,
        "model_version": version,
        "code_version": code_version(),
        "source_domain": config.data.source_domain,
        "target_domain": config.data.target_domain,
        "inputs": {"warehouse": files.location(config.warehouse), "versions": inputs.versions},
        "config": config.to_dict(),
        "history": history,
        "train_seconds": round(seconds, 1),
        "num_proc": config.train.num_proc if config.train.launcher != "local" and history else 1,
        "mlflow_run_id": run_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def train_method(spark: SparkSession, config: Config, method: str, inputs: TrainingInputs) -> dict:
    """Train one method and save its artifact; skip if that exact version already exists."""
    version = model_version(method, config, inputs.versions)
    path = files.join(artifact.models_dir(config.warehouse, method), version)
    reused = reused_artifact(config, method, version)
    if reused is not None:
        return reused

    data = stage_method_examples(spark, config, method, inputs.versions[tables.TRAINING_EXAMPLES])
    checkpoint_dir = checkpoints_of(config, method, version)
    spec = train_spec(config, method, inputs, data, checkpoint_dir, starting_factors(spark, config, inputs, method))
    plural = "es" if config.train.num_proc > 1 else ""
    processes = {"horovod": f"{config.train.num_proc} Horovod process{plural}",
                 "torch_distributor": f"{config.train.num_proc} TorchDistributor process{plural}",
                 "local": "1 local process"}[config.train.launcher]
    log.info(f"{method}: model {version}, {processes}, phases "
             + ", ".join(f"{phase.name} ({'+'.join(phase.domains)}, {phase.epochs} epochs)" for phase in spec.phases)
             + "; examples " + ", ".join(f"{domain} {staged.rows:,}" for domain, staged in data.items()))
    with tracking.run(config, method, version) as run_id:
        started = time.perf_counter()
        spec, history, probe = train_at_best_temperature(spec)
        model = trained_model(spec)
        if config.train.ensemble_finalists and len(probe.get("finalists", ())) > 1:
            model, probe["ensemble"] = with_runner_up(model, spec, probe, inputs, checkpoint_dir)
        seconds = time.perf_counter() - started
        meta = artifact_meta(config, method, version, inputs, history, seconds, run_id)
        if probe:
            meta["temperature_probe"] = probe
        artifact.save(path, model, meta, inputs.user_index, inputs.item_index)
        tracking.log_training(run_id, config, meta, path)
    log.info(f"{method}: saved {path} ({seconds:.0f}s)")
    return meta


def training_rows(spark: SparkSession, config: Config, versions: dict[str, int]) -> DataFrame:
    """(domain, user_idx, item_idx) of every training interaction at the pinned version: what the factor
    models are fitted on."""
    return (tables.read(spark, config.warehouse, tables.INDEXED_INTERACTIONS, versions[tables.INDEXED_INTERACTIONS])
            .where(F.col("split") == "train").select("domain", "user_idx", "item_idx"))


def fit_factor_model(config: Config, name: str, inputs: TrainingInputs, train_rows: DataFrame) -> dict:
    """Fit one factor model (Spark ALS, EMCDR over ALS, popularity, EASE) on ``train_rows`` and save it as
    an artifact, like a trained method; skip if that exact version already exists."""
    reused = reused_artifact(config, name, model_version(name, config, inputs.versions))
    if reused is not None:
        return reused
    started = time.perf_counter()
    if name == "ease":
        model, chosen = fit_ease(config, inputs, train_rows)
        return save_factor_model(config, name, inputs, model, time.perf_counter() - started, {"ease": chosen})
    model = factors.fit_factor_model(name, train_rows, config.data.source_domain, config.data.target_domain,
                                     inputs.num_users, inputs.num_items, config.als)
    return save_factor_model(config, name, inputs, model, time.perf_counter() - started)


def fit_ease(config: Config, inputs: TrainingInputs, train_rows: DataFrame) -> tuple[FactorModel, dict]:
    """EASE (:func:`factors.ease`) with its regularisation chosen on the validation figure that selects
    models."""
    def validated(scorer: nn.Module) -> float:
        figures = ranking_figures(scorer, inputs.validation, config.train.validation_k, loop.Collective())
        return figures[loop.selecting_key(config.train, figures)]

    return factors.ease(train_rows, inputs.num_users, inputs.num_items, inputs.validation.candidates, config.ease,
                        inputs.validation.users, validated, files.join(config.warehouse, "staging", "ease"))


def save_factor_model(config: Config, name: str, inputs: TrainingInputs, model: FactorModel, seconds: float,
                      chosen: dict | None = None) -> dict:
    """Save factor model ``name``, fitted with ``config``'s settings in ``seconds``, as the artifact of its
    version (which a later fit of the same version reuses), with the settings it chose on validation (``chosen``)."""
    version = model_version(name, config, inputs.versions)
    path = files.join(artifact.models_dir(config.warehouse, name), version)
    with tracking.run(config, name, version) as run_id:
        meta = {**artifact_meta(config, name, version, inputs, [], seconds, run_id), **(chosen or {})}
        artifact.save(path, model, meta, inputs.user_index, inputs.item_index)
        tracking.log_training(run_id, config, meta, path)
    log.info(f"{name}: fitted and saved {path} ({seconds:.0f}s)")
    return meta


def starts_from_als(config: Config, method: str) -> bool:
    """Whether ``method`` starts its embeddings from als_merged: with ``train.init`` "als_merged", every
    method but target_only, whose users must know nothing of the source domain."""
    return config.train.init == "als_merged" and method != "target_only"


def starting_factors(spark: SparkSession, config: Config, inputs: TrainingInputs, method: str) -> FactorModel | None:
    """The als_merged model that ``method`` starts its embeddings from (fitted and saved like the factor
    model, or reused); None when it starts at random (:func:`starts_from_als`)."""
    if not starts_from_als(config, method):
        return None
    meta = fit_factor_model(config, "als_merged", inputs, training_rows(spark, config, inputs.versions))
    return artifact.load(files.join(artifact.models_dir(config.warehouse, "als_merged"), meta["model_version"])).model


def fit_combined_model(config: Config, inputs: TrainingInputs, name: str, components: tuple[str, str],
                       paths: dict[str, str], key: str) -> dict:
    """Blend the two ``components`` (artifact folders in ``paths``) on the validation figure ``key``
    (:func:`selection.fit_blend`) and save the result as the artifact of ``name`` (one of
    :data:`selection.COMBINED`); skip if that exact blend exists."""
    versions = {component: files.basename(paths[component]) for component in components}
    train = config.train
    version = hashlib.sha256(json.dumps(
        {"components": versions, "inputs": inputs.versions, "code": code_version(),
         "validation": [key, train.validation_max_users, train.seed]}, sort_keys=True).encode()).hexdigest()[:12]
    reused = reused_artifact(config, name, version)
    if reused is not None:
        return reused
    path = files.join(artifact.models_dir(config.warehouse, name), version)
    first, second = components
    with tracking.run(config, name, version) as run_id:
        started = time.perf_counter()
        model, chosen = selection.fit_blend(artifact.load(paths[first]).model, artifact.load(paths[second]).model,
                                            inputs.validation, train, inputs.num_users, inputs.num_items)
        seconds = time.perf_counter() - started
        meta = {**artifact_meta(config, name, version, inputs, [], seconds, run_id),
                "blend": {"components": versions, **chosen}}
        artifact.save(path, model, meta, inputs.user_index, inputs.item_index)
        tracking.log_training(run_id, config, meta, path)
    log.info(f"{name}: {chosen['weight']:.1f} x {first} + {1 - chosen['weight']:.1f} x {second} "
             f"({chosen['selected_on']} {chosen['validation'][chosen['weight']]:.4f}), saved {path} ({seconds:.0f}s)")
    return meta


def run_train(spark: SparkSession, config: Config, methods: list[str] | None = None) -> dict:
    """Train every configured method (or ``methods``) and fit the factor models on the current feature
    tables, sum the best two methods (``train.ensemble``) and the best trained and factor models
    (``train.blend``), select the model to serve on validation, and record the run (the pinned input
    versions, and each model's version) in ``runs``. Returns
    ``{"models": {name: artifact meta}, "selected": record}``."""
    started, run_id = time.time(), lineage.new_run_id()
    methods = methods or config.train.methods
    inputs = read_inputs(spark, config)
    models = {method: train_method(spark, config, method, inputs) for method in methods}
    train_rows = training_rows(spark, config, inputs.versions).cache()
    try:
        models.update({name: fit_factor_model(config, name, inputs, train_rows) for name in config.train.factor_models})
    finally:
        train_rows.unpersist()
    paths = {name: files.join(artifact.models_dir(config.warehouse, name), meta["model_version"])
             for name, meta in models.items()}
    figures = selection.validation_figures(paths, inputs.validation, config.train)
    key = loop.selecting_key(config.train, next(iter(figures.values())))
    candidates = selection.served_candidates(config.train, methods)
    for name in [name for name in selection.COMBINED if name in candidates]:
        components = selection.combined_components(name, figures, key, methods, config.train.factor_models)
        models[name] = fit_combined_model(config, inputs, name, components, paths, key)
        paths[name] = files.join(artifact.models_dir(config.warehouse, name), models[name]["model_version"])
        figures.update(selection.validation_figures({name: paths[name]}, inputs.validation, config.train))
    selected = selection.select_model(config.warehouse, config.train, paths, figures)
    tracking.promote(config, selected, inputs.versions)
    lineage.record_run(spark, config.warehouse, "train", run_id, started, inputs.versions, {},
                       summary={**{name: meta["model_version"] for name, meta in models.items()},
                                "selected": selected["method"]})
    return {"models": models, "selected": selected}
