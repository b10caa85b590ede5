"""Configuration: one dataclass per job, YAML files, and `key=value` overrides.

Example:

>>> from kt_pipeline.config import TrainConfig, apply_overrides
>>> cfg = TrainConfig(cache_dir="tfrecords/demo", model_dir="runs/demo")
>>> cfg = apply_overrides(cfg, ["learning_rate=3e-5", "freeze_body=true"])
>>> cfg.learning_rate, cfg.freeze_body
(3e-05, True)
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional

import yaml

from kt_pipeline.errors import ConfigError


# What a classifier's ``fit`` logs (``training.compile_classifier``): the metrics a run may
# monitor for best.keras and a search may take as its objective.
METRICS = ("val_accuracy", "val_loss", "accuracy", "loss")


@dataclasses.dataclass
class TrainConfig:
    """Everything `kt-pipeline train` needs; saved as `config.json` in the model dir."""

    cache_dir: str = "tfrecords/demo"
    model_dir: str = "runs/demo"
    preset: Optional[str] = None  # None = packaged all-MiniLM-L6-v2
    task: str = "classification"
    pooling: str = "cls"  # "cls" | "mean" (masked mean)
    dropout: float = 0.1
    freeze_body: bool = False
    learning_rate: float = 5e-5
    warmup_steps: int = 0  # used when warmup_fraction is None
    warmup_fraction: Optional[float] = None  # e.g. 0.1 = 10% of total steps
    decay: str = "linear"  # "linear" | "cosine" | "constant"
    weight_decay: float = 0.01
    clipnorm: Optional[float] = 1.0
    epochs: int = 3
    batch_size: int = 32
    max_seq_length: int = 128
    # "bucket" | "dynamic" | "fixed". bucket is the fastest on CPU (SST-2, MiniLM, 2 cores:
    # 6-14x the examples/s of fixed 128; docs/readme/train.md). TPUs force fixed.
    padding: str = "bucket"
    max_train_examples: Optional[int] = None  # cap for quick runs
    mixed_precision: bool = False  # bf16 compute, fp32 variables
    # XLA. Off by default: on CPU it cost ~60 s of compiling per bucket shape and gave no
    # steady-state gain (docs/readme/train.md); worth trying on GPU/TPU (bench 6).
    jit_compile: bool = False
    strategy: str = "auto"  # auto|cpu|gpu|mirrored|multiworker|tpu
    seed: int = 42
    monitor: str = "val_accuracy"  # one of METRICS
    early_stopping_patience: Optional[int] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _coerce(value: Any, current: Any, field: dataclasses.Field) -> Any:
    """Parse a string override into the field's type (YAML rules: true, 1e-5, null)."""
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    optional = "Optional" in kind or "None" in kind or "Any" in kind or field.default is None
    if value == "" and kind == "str":
        return ""  # e.g. projection_hidden="" (no hidden layer)
    if isinstance(value, str):
        value = yaml.safe_load(value) if value != "" else None
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{field.name}=null: expected {kind}; give a value or leave it out "
                          f"(default {field.default!r})")
    try:
        if "bool" in kind:
            if isinstance(value, bool):
                return value
            raise ValueError
        if "int" in kind and "float" not in kind:
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if "float" in kind:
            return float(value)
        if "str" in kind:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{field.name}={value!r}: expected {kind.replace('Optional[', '').rstrip(']')}"
        ) from None
    return value


def from_dict(cls, data: dict, source: str = "config", section: str = "",
              not_here: frozenset = frozenset()):
    """Build dataclass `cls` from a dict, rejecting unknown keys with the valid ones.

    Errors start with `source` (the file) and name the key (``section.key`` in a section).
    `not_here`: field names that are set elsewhere, left out of the valid keys listed.
    """
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"{source}{': ' + section if section else ''}: unknown key(s) {', '.join(unknown)}; "
            f"valid keys: {', '.join(sorted(set(names) - set(not_here)))}"
        )
    obj = cls()
    for k, v in data.items():
        try:
            setattr(obj, k, _coerce(v, getattr(obj, k), names[k]))
        except ConfigError as e:  # name the file: "steps='many': expected int" alone is not enough
            raise ConfigError(f"{source}: {section + '.' if section else ''}{e}") from None
    return obj


def apply_overrides(obj, overrides: list[str]):
    """Return a copy of dataclass `obj` with `key=value` strings applied."""
    obj = dataclasses.replace(obj)
    names = {f.name: f for f in dataclasses.fields(obj)}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if key not in names:
            raise ConfigError(
                f"override {key!r}: unknown key; valid keys: {', '.join(sorted(names))}"
            )
        setattr(obj, key, _coerce(value, getattr(obj, key), names[key]))
    return obj


def load_yaml(path: str) -> dict:
    """Read a YAML mapping through tf.io.gfile (local or gs://)."""
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        raise ConfigError(f"config file not found: {path}")
    if tf.io.gfile.isdir(path):
        raise ConfigError(f"config file {path} is a folder; pass a YAML file")
    with tf.io.gfile.GFile(path, "r") as f:
        try:
            data = yaml.safe_load(f.read()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data
