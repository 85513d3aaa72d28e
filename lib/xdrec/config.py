"""One typed configuration object, loaded from ``conf/*.yaml`` with ``section.key=value`` overrides.

Every key is checked at load time: an unknown key, a wrong type or a bad value raises
:class:`~xdrec.errors.XdrecError` naming the key and the file it came from.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xdrec.errors import XdrecError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
DEFAULT_CONF = "demo"


@dataclass
class DomainInput:
    """Raw input files of one domain (see README, "Input format")."""

    interactions: str
    items: str | None = None
    format: str = "csv"

    def validate(self, where: str) -> None:
        if self.format not in ("csv", "tsv", "parquet", "json"):
            raise XdrecError(f"{where}.format: expected csv, tsv, parquet or json, got {self.format!r}")


@dataclass
class DataConfig:
    name: str = "movielens-1m"
    source_domain: str = "other"
    target_domain: str = "comedy"
    # Where the raw per-domain files live; ``{raw}`` expands to ``<warehouse>/raw/<name>``.
    domains: dict[str, DomainInput] = field(default_factory=dict)
    # How to materialise the raw files when they are missing: "movielens-1m", "synthetic" or "none".
    fetch: str = "none"
    synthetic_users: int = 400
    synthetic_items: int = 120
    seed: int = 7

    def validate(self, where: str) -> None:
        if self.fetch not in ("movielens-1m", "synthetic", "none"):
            raise XdrecError(f"{where}.fetch: expected movielens-1m, synthetic or none, got {self.fetch!r}")
        if self.source_domain == self.target_domain:
            raise XdrecError(f"{where}.source_domain and target_domain must differ")
        for domain in (self.source_domain, self.target_domain):
            if domain not in self.domains:
                raise XdrecError(f"{where}.domains: no entry for domain {domain!r}")
        for name, domain_input in self.domains.items():
            domain_input.validate(f"{where}.domains.{name}")


@dataclass
class FeaturesConfig:
    # Shares of the users present in both domains whose target interactions are all held out.
    cold_start_valid_share: float = 0.1
    cold_start_test_share: float = 0.1
    # Per-interaction shares of warm users' target interactions held out for validation and test.
    valid_ratio: float = 0.1
    test_ratio: float = 0.1
    negatives: int = 4
    seed: int = 42

    def validate(self, where: str) -> None:
        for name in ("cold_start_valid_share", "cold_start_test_share", "valid_ratio", "test_ratio"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise XdrecError(f"{where}.{name}: expected a share in [0, 1), got {getattr(self, name)}")
        if self.cold_start_valid_share + self.cold_start_test_share >= 1.0:
            raise XdrecError(f"{where}: cold_start_valid_share + cold_start_test_share must be below 1")
        if self.valid_ratio + self.test_ratio >= 1.0:
            raise XdrecError(f"{where}: valid_ratio + test_ratio must be below 1")
        if self.negatives < 1:
            raise XdrecError(f"{where}.negatives: expected at least 1, got {self.negatives}")


METHODS = ("finetune", "target_only")
# Model parts that fine-tuning can freeze (attribute names of xdrec.model.TwoTower).
FREEZABLE = ("user_embedding", "user_tower", "item_embedding", "item_tower", "item_bias")


@dataclass
class TrainConfig:
    # Methods the pipeline trains; the first is the transfer model, "target_only" is the yardstick.
    methods: list[str] = field(default_factory=lambda: ["finetune", "target_only"])
    num_proc: int = 2
    embedding_dim: int = 32
    hidden_dim: int = 64
    batch_size: int = 1024
    learning_rate: float = 0.005
    source_epochs: int = 2
    target_epochs: int = 3
    # Parts of the model kept fixed while fine-tuning on the target domain.
    freeze: list[str] = field(default_factory=lambda: ["user_embedding", "user_tower"])
    seed: int = 1234
    start_timeout: int = 120

    def validate(self, where: str) -> None:
        for method in self.methods:
            if method not in METHODS:
                raise XdrecError(f"{where}.methods: unknown method {method!r} (known: {', '.join(METHODS)})")
        for part in self.freeze:
            if part not in FREEZABLE:
                raise XdrecError(f"{where}.freeze: unknown part {part!r} (known: {', '.join(FREEZABLE)})")
        for name in ("num_proc", "embedding_dim", "hidden_dim", "batch_size", "target_epochs"):
            if getattr(self, name) < 1:
                raise XdrecError(f"{where}.{name}: expected at least 1, got {getattr(self, name)}")
        if self.source_epochs < 0:
            raise XdrecError(f"{where}.source_epochs: expected 0 or more, got {self.source_epochs}")
        if self.learning_rate <= 0:
            raise XdrecError(f"{where}.learning_rate: expected a positive number, got {self.learning_rate}")


@dataclass
class ScoreConfig:
    k: int = 10
    users_per_batch: int = 1024
    exclude_seen: bool = True

    def validate(self, where: str) -> None:
        if self.k < 1 or self.users_per_batch < 1:
            raise XdrecError(f"{where}: k and users_per_batch must be at least 1")


@dataclass
class EvaluateConfig:
    k: int = 10

    def validate(self, where: str) -> None:
        if self.k < 1:
            raise XdrecError(f"{where}.k: expected at least 1, got {self.k}")


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

    def domain_input(self, domain: str) -> DomainInput:
        """The input of ``domain`` with ``{raw}`` expanded."""
        spec = self.data.domains[domain]
        expand = lambda path: path.replace("{raw}", self.raw_dir) if path else path  # noqa: E731
        return DomainInput(expand(spec.interactions), expand(spec.items), spec.format)

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
