"""The hyperparameter-search config: a YAML file in ``tuning/`` plus ``--set`` overrides.

A config names the data (an input file and its columns, or an existing cache), the
encoder, the search space, the tuner and its budget::

    name: demo
    search_dir: runs/tune/demo
    preset: null                      # packaged MiniLM
    data: {input: kt_pipeline/data/sample_reviews.csv, cache_dir: tfrecords/demo,
           text_col: text, label_col: label}
    tuner: {type: hyperband, max_epochs: 3, factor: 3}
    space:
      learning_rate: {min: 5.0e-6, max: 1.0e-4, sampling: log}   # a range
      batch_size: [16, 32]                                        # a choice
      freeze_body: false                                          # a fixed value
    train: {pooling: cls, padding: bucket}                        # fixed TrainConfig fields

Each ``space`` entry is a fixed value (scalar), a choice (list, or ``{values: [...]}``)
or a range (``{min, max}`` with optional ``sampling: linear|log`` and ``step``); ``null``
removes the key. ``warmup_fraction`` (a fraction of the total steps) replaces
``warmup_steps`` when it is set.

Overrides are dotted paths: ``tuner.max_trials=4``, ``space.learning_rate.max=1e-4``,
``space.batch_size=[16,32]``, ``data.cache_dir=tfrecords/x``, ``train.pooling=mean``.

``task: speaker_clustering`` tunes :class:`kt_pipeline.speakers.ClusterConfig` instead:
the fixed settings go under ``cluster:`` (any ClusterConfig field but ``model_dir``,
``monitor`` and ``preset``), the space (default :data:`CLUSTER_SPACE`) names
ClusterConfig fields, the objective is ``val_ari`` and the default tuner is
``bayesian`` (see :mod:`kt_pipeline.speaker_tuning`).

Example:

>>> from kt_pipeline.search_config import SearchConfig, build_config
>>> cfg = build_config({"data": {"cache_dir": "tfrecords/demo"},
...                     "tuner": {"type": "random", "max_trials": 3}},
...                    ["space.learning_rate.max=1e-4", "space.batch_size=[16]"])
>>> cfg.tuner.max_trials, cfg.space["learning_rate"].max, cfg.space["batch_size"].values
(3, 0.0001, [16])
>>> spk = build_config({"task": "speaker_clustering", "cluster": {"steps": 50}},
...                    ["space.window=[0,12]"])
>>> spk.tuner.objective, spk.cluster.steps, spk.space["projection_hidden"].values
('val_ari', 50, ['1024', '1024,2048', ''])
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Optional

import yaml

from kt_pipeline.config import METRICS, TrainConfig, apply_overrides, from_dict, load_yaml
from kt_pipeline.errors import ConfigError

TUNERS = ("hyperband", "bayesian", "random")
SPEAKER_TASK = "speaker_clustering"
TASKS = ("classification", SPEAKER_TASK)
SAMPLINGS = ("linear", "log")

# The default search space (the issue's), in the same form a YAML file uses.
DEFAULT_SPACE: dict = {
    "learning_rate": {"min": 5e-6, "max": 1e-4, "sampling": "log"},
    "warmup_steps": [500, 1000, 1500, 2000],
    "warmup_fraction": None,  # set (e.g. [0.0, 0.1]) to use a fraction instead of steps
    "dropout": {"min": 0.0, "max": 0.5},
    "freeze_body": [True, False],
    "max_seq_length": [64, 128, 256, 512],
    "batch_size": [16, 32, 64],
}
# TrainConfig fields a space may tune (fit-level ones are chosen inside HyperModel.fit).
TUNABLE = (
    "learning_rate", "warmup_steps", "warmup_fraction", "dropout", "freeze_body",
    "max_seq_length", "batch_size", "pooling", "weight_decay", "decay",
)
DATA_KEYS = ("batch_size", "max_seq_length")  # change the dataset: chosen in fit
# TrainConfig fields that the search itself owns (set per trial or from other sections).
NOT_IN_TRAIN = ("cache_dir", "model_dir", "preset", "task", "epochs") + TUNABLE

# The default search space of task speaker_clustering (ClusterConfig fields).
CLUSTER_SPACE: dict = {
    # lam 10 beat lam 1 on held-out PDNC novels (docs/RESULTS.md), hence the wide range
    "lam": {"min": 0.5, "max": 20.0, "sampling": "log"},
    "positives": ["hardest", "each"],
    "sigma": {"min": 0.0, "max": 1.0},
    "mu_p": {"min": 0.0, "max": 1.0},  # 0 (no pull) scored best so far
    "mu_n": {"min": 0.25, "max": 2.0, "sampling": "log"},
    "margin": {"min": 0.1, "max": 1.0},
    "window": [0, 6, 12, 24],
    "projection_hidden": ["1024", "1024,2048", ""],  # "" = no hidden layer
    "embedding_dim": [64, 128, 256],
    "learning_rate": {"min": 1e-5, "max": 2e-4, "sampling": "log"},
    "balance": ["inverse", "none"],  # none scored higher on held-out ARI (docs/RESULTS.md, round 6)
    "speaker_power": {"min": 0.0, "max": 1.0},  # draw speakers ~ n_quotes ** power
}
OBJECTIVES = METRICS  # what a classification trial's fit logs
CLUSTER_OBJECTIVES = ("val_ari",)  # validation adjusted Rand index (maximised)
# ClusterConfig fields the search owns: per-trial dir, the monitor, the top-level preset.
CLUSTER_OWNED = ("model_dir", "monitor", "preset")


@dataclasses.dataclass
class ParamSpec:
    """One search-space entry: ``kind`` is fixed, choice, float or int."""

    name: str
    kind: str
    value: Any = None
    values: Optional[list] = None
    min: Optional[float] = None
    max: Optional[float] = None
    sampling: str = "linear"
    step: Optional[float] = None

    def register(self, hp):
        """Declare this entry on keras-tuner ``hp`` and return its current value."""
        if self.kind == "fixed":
            return hp.Fixed(self.name, self.value)
        if self.kind == "choice":
            if all(isinstance(v, bool) for v in self.values):  # Choice would store 0/1
                if len(set(self.values)) == 1:
                    return hp.Fixed(self.name, bool(self.values[0]))
                return hp.Boolean(self.name)
            return hp.Choice(self.name, self.values)
        if self.kind == "int":
            return hp.Int(self.name, int(self.min), int(self.max),
                          step=int(self.step) if self.step else None, sampling=self.sampling)
        return hp.Float(self.name, float(self.min), float(self.max), step=self.step,
                        sampling=self.sampling)

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"{self.value!r}"
        if self.kind == "choice":
            return "{" + ", ".join(map(str, self.values)) + "}"
        return f"{self.min:g}..{self.max:g} ({self.sampling})"


def as_number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` as a string; turn numeric strings into int/float.

    >>> as_number("1e-4"), as_number("32"), as_number("cls"), as_number(True)
    (0.0001, 32, 'cls', True)
    """
    if not isinstance(value, str):
        return value
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def parse_param(name: str, spec: Any, source: str = "space",
                int_fields: Optional[set] = None) -> Optional[ParamSpec]:
    """A YAML value -> ParamSpec (None when the entry is switched off with null).

    A range is an integer range when both ends are integers and ``name`` is one of
    ``int_fields`` (default: the integer TrainConfig fields).
    """
    where = f"{source}.{name}"
    if spec is None:
        return None
    if isinstance(spec, (list, tuple)):
        spec = {"values": list(spec)}
    if not isinstance(spec, dict):
        return ParamSpec(name, "fixed", value=as_number(spec))
    spec = {k: [as_number(x) for x in v] if isinstance(v, (list, tuple)) else
            v if k == "sampling" else as_number(v) for k, v in spec.items()}
    known = {"value", "fixed", "values", "choice", "min", "max", "sampling", "step"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; use a value, a list, "
            "{values: [...]} or {min: A, max: B, sampling: log}"
        )
    if "value" in spec or "fixed" in spec:
        return ParamSpec(name, "fixed", value=spec.get("value", spec.get("fixed")))
    values = spec.get("values", spec.get("choice"))
    if values is not None:
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"{where}.values: expected a non-empty list, got {values!r}")
        values = list(values)
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numbers) == len(values) and any(isinstance(v, float) for v in numbers):
            values = [float(v) for v in values]  # [0, 0.1]: keras-tuner takes one type only
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{where}.values: {values} has duplicates")
        return ParamSpec(name, "choice", values=values)
    if "min" not in spec or "max" not in spec:
        raise ConfigError(f"{where}: a range needs both min and max (got {spec})")
    lo, hi = spec["min"], spec["max"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)):
        raise ConfigError(f"{where}: min and max must be numbers (got {lo!r}, {hi!r})")
    if not lo < hi:
        raise ConfigError(f"{where}: min {lo} must be < max {hi} (use a single value to fix it)")
    sampling = spec.get("sampling", "linear")
    if sampling not in SAMPLINGS:
        raise ConfigError(f"{where}.sampling={sampling!r}: expected one of {', '.join(SAMPLINGS)}")
    if sampling == "log" and lo <= 0:
        raise ConfigError(f"{where}: log sampling needs min > 0 (got {lo})")
    step = spec.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float))
                             or step <= 0):
        raise ConfigError(f"{where}.step={step!r}: expected a number > 0 (or no step)")
    ints = _INT_FIELDS if int_fields is None else int_fields
    integer = all(isinstance(v, int) for v in (lo, hi)) and name in ints
    return ParamSpec(name, "int" if integer else "float", min=lo, max=hi,
                     sampling=sampling, step=step)


_INT_FIELDS = {f.name for f in dataclasses.fields(TrainConfig) if "int" in str(f.type)
               and "float" not in str(f.type)}


def _check_values(p: ParamSpec) -> None:
    """Catch bad values up front (e.g. dropout 1.5, batch size 0)."""
    vals = p.values if p.kind == "choice" else [p.value] if p.kind == "fixed" else [p.min, p.max]
    checks = {
        "learning_rate": lambda v: isinstance(v, (int, float)) and v > 0,
        "dropout": lambda v: isinstance(v, (int, float)) and 0 <= v < 1,
        "warmup_fraction": lambda v: isinstance(v, (int, float)) and 0 <= v <= 1,
        "warmup_steps": lambda v: isinstance(v, int) and v >= 0,
        "batch_size": lambda v: isinstance(v, int) and v >= 1,
        "max_seq_length": lambda v: isinstance(v, int) and v >= 3,
        "freeze_body": lambda v: isinstance(v, bool),
        "pooling": lambda v: v in ("cls", "mean"),
        "decay": lambda v: v in ("linear", "cosine", "constant"),
        "weight_decay": lambda v: isinstance(v, (int, float)) and v >= 0,
    }
    ok = checks.get(p.name, lambda v: True)
    bad = [v for v in vals if not ok(v) or (isinstance(v, bool) and p.name != "freeze_body")]
    if bad:
        raise ConfigError(f"space.{p.name}: invalid value(s) {bad}")


def parse_space(raw: dict) -> dict:
    """The ``space`` mapping (merged over :data:`DEFAULT_SPACE`) -> {name: ParamSpec}."""
    unknown = sorted(set(raw) - set(TUNABLE))
    if unknown:
        raise ConfigError(
            f"space: unknown key(s) {', '.join(unknown)}; tunable keys: {', '.join(TUNABLE)}"
        )
    space = {}
    for name in TUNABLE:
        p = parse_param(name, raw.get(name))
        if p is not None:
            _check_values(p)
            space[name] = p
    if "warmup_fraction" in space:
        space.pop("warmup_steps", None)
    return space


@dataclasses.dataclass
class DataConfig:
    """Where the examples come from: ``input`` (built into ``cache_dir``) or a cache."""

    input: Optional[str] = None
    cache_dir: Optional[str] = None
    text_col: str = "text"
    label_col: str = "label"
    labels: Optional[list] = None
    format: Optional[str] = None
    delimiter: Optional[str] = None
    ratios: Optional[list] = None  # default 0.8,0.1,0.1
    seed: int = 0
    max_length: int = 512  # stored token length: the largest max_seq_length served
    max_train_examples: Optional[int] = None


@dataclasses.dataclass
class TunerConfig:
    """Which keras-tuner oracle and its budget."""

    type: str = "hyperband"
    max_trials: int = 10  # random/bayesian (Hyperband's budget: max_epochs, factor, iterations)
    max_epochs: int = 3  # hyperband's max epochs; epochs per trial for random/bayesian
    factor: int = 3
    hyperband_iterations: int = 1
    objective: str = "val_accuracy"
    seed: int = 42
    early_stopping_patience: Optional[int] = 1
    max_consecutive_failed_trials: int = 3
    max_retries_per_trial: int = 0
    frozen_fast_path: bool = True  # freeze_body trials train a head on cached features
    verbose: int = 2


@dataclasses.dataclass
class SearchConfig:
    """Everything ``kt-pipeline tune`` needs."""

    name: str = "search"
    search_dir: str = "runs/tune/search"
    preset: Optional[str] = None
    task: str = "classification"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    tuner: TunerConfig = dataclasses.field(default_factory=TunerConfig)
    space: dict = dataclasses.field(default_factory=lambda: parse_space(DEFAULT_SPACE))
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    cluster: Any = None  # speakers.ClusterConfig: the fixed settings (speaker_clustering)
    raw: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def cache_dir(self) -> str:
        return self.data.cache_dir or f"{self.search_dir.rstrip('/')}/cache"

    def base_train_config(self, **values) -> TrainConfig:
        """A TrainConfig with this search's fixed settings and ``values`` applied."""
        cfg = dataclasses.replace(
            self.train, cache_dir=self.cache_dir, preset=self.preset, task=self.task,
            max_train_examples=self.data.max_train_examples, monitor=self.tuner.objective,
            early_stopping_patience=self.tuner.early_stopping_patience,
        )
        for p in self.space.values():
            if p.kind == "fixed":
                setattr(cfg, p.name, p.value)
        if "warmup_fraction" not in self.space:
            cfg.warmup_fraction = None
        for k, v in values.items():
            if k in TUNABLE:
                setattr(cfg, k, bool(v) if k == "freeze_body" else v)
        return cfg

    def to_dict(self) -> dict:
        """The resolved config as plain data (written to the search dir)."""
        return copy.deepcopy(self.raw)


SECTIONS = {"data": DataConfig, "tuner": TunerConfig, "train": TrainConfig}
TOP_LEVEL = ("name", "search_dir", "preset", "task", "data", "tuner", "space", "train", "cluster")


def _set_path(raw: dict, dotted: str, value: Any) -> None:
    """Set ``raw[a][b][c] = value`` for ``a.b.c``; turns a fixed/list space entry into a dict
    when a sub-key (``min``, ``max``, ``values``...) is set."""
    keys = dotted.split(".")
    node = raw
    for i, k in enumerate(keys[:-1]):
        child = node.get(k)
        if child is None or not isinstance(child, dict):
            if keys[0] == "space" and i == 1 and child is not None:
                child = {"values": list(child)} if isinstance(child, list) else {"value": child}
            elif child is not None:
                raise ConfigError(
                    f"override {dotted}: {'.'.join(keys[: i + 1])} is {child!r}, not a mapping"
                )
            else:
                child = {}
            node[k] = child
        node = child
    if keys[0] == "space" and len(keys) == 3 and keys[2] in ("min", "max"):
        node.pop("values", None), node.pop("value", None), node.pop("fixed", None)
    if keys[0] == "space" and len(keys) == 3 and keys[2] == "values":
        for k in ("min", "max", "sampling", "step", "value", "fixed"):
            node.pop(k, None)
    node[keys[-1]] = value


def merge_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key.path=value`` strings (values parsed as YAML) to a raw config dict."""
    raw = copy.deepcopy(raw)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. tuner.max_trials=4)")
        key, text = item.split("=", 1)
        key = key.strip()
        if key.split(".")[0] not in TOP_LEVEL:
            raise ConfigError(
                f"override {key!r}: unknown section; valid: {', '.join(TOP_LEVEL)} "
                "(e.g. tuner.max_trials=4, space.learning_rate.max=1e-4)"
            )
        try:
            value = yaml.safe_load(text) if text != "" else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
        _set_path(raw, key, value)
    return raw


def _merged(raw: Optional[dict], default_space: dict, overrides: Optional[list],
            source: str) -> dict:
    """A copy of ``raw`` with its ``space`` merged over ``default_space`` and the
    ``--set`` overrides applied; unknown top-level keys are an error."""
    raw = copy.deepcopy(raw or {})
    space = copy.deepcopy(default_space)
    if not isinstance(raw.get("space") or {}, dict):
        raise ConfigError(f"{source}: space must be a mapping of key: spec")
    for section in ("data", "tuner", "train", "cluster"):
        if not isinstance(raw.get(section) or {}, dict):
            raise ConfigError(f"{source}: {section} must be a mapping of key: value, "
                              f"got {raw[section]!r}")
    space.update(raw.get("space") or {})
    raw["space"] = space
    raw = merge_overrides(raw, overrides or [])
    unknown = sorted(set(raw) - set(TOP_LEVEL))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(TOP_LEVEL)}"
        )
    return raw


def build_config(raw: dict, overrides: Optional[list] = None, source: str = "config") -> SearchConfig:
    """Raw YAML dict + overrides -> a validated :class:`SearchConfig`."""
    if task_of(raw or {}, overrides) == SPEAKER_TASK:
        return build_cluster_config(raw, overrides, source)
    raw = _merged(raw, DEFAULT_SPACE, overrides, source)
    cfg = SearchConfig()
    try:
        cfg.space = parse_space(raw["space"])
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    for key in ("name", "search_dir", "preset", "task"):
        if raw.get(key) is not None:
            setattr(cfg, key, str(raw[key]))
    if "search_dir" not in raw and "name" in raw:
        cfg.search_dir = f"runs/tune/{cfg.name}"
    if raw.get("cluster") is not None:
        raise ConfigError(f"{source}: cluster: is for task: {SPEAKER_TASK}")
    for section, cls in SECTIONS.items():
        data = raw.get(section) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: {section} must be a mapping, got {data!r}")
        elsewhere = frozenset()
        if section == "train":
            elsewhere = frozenset(set(NOT_IN_TRAIN) - set(TUNABLE) | set(cfg.space))
            owned = sorted(set(data) & elsewhere)
            if owned:
                raise ConfigError(
                    f"{source}: train.{owned[0]} is set elsewhere (keys in the search space "
                    "go under space, the encoder under preset, the cache under "
                    "data.cache_dir, epochs under tuner.max_epochs)"
                )
        try:
            setattr(cfg, section, from_dict(cls, data, source=source, section=section,
                                             not_here=elsewhere))
        except ConfigError as e:
            msg = str(e)
            raise ConfigError(msg if msg.startswith(source) else f"{source}: {section}.{msg}") from None
    validate(cfg, source)
    cfg.raw = raw
    return cfg


def validate(cfg: SearchConfig, source: str = "config") -> None:
    """Reject settings that cannot work, naming the key and the fix."""
    validate_tuner(cfg.tuner, source)
    if not cfg.data.input and not cfg.data.cache_dir:
        raise ConfigError(
            f"{source}: set data.input (a CSV/TSV/JSONL file) or data.cache_dir (an existing "
            "cache from build-tfrecords)"
        )
    if cfg.task not in TASKS:
        raise ConfigError(f"{source}: task={cfg.task!r}: expected one of {', '.join(TASKS)}")
    if cfg.data.max_train_examples is not None and cfg.data.max_train_examples < 1:
        raise ConfigError(f"{source}: data.max_train_examples={cfg.data.max_train_examples}: "
                          "expected >= 1 (null = all)")
    if cfg.tuner.objective not in OBJECTIVES:
        raise ConfigError(f"{source}: tuner.objective={cfg.tuner.objective!r}: expected one of "
                          f"{', '.join(OBJECTIVES)} (the metrics a trial logs)")
    from kt_pipeline import training

    first = {n: _candidates(p)[0] for n, p in cfg.space.items()}
    try:  # the fixed train: settings (the space's own values are checked by parse_space)
        training.validate_config(cfg.base_train_config(**first))
    except ConfigError as e:
        raise ConfigError(f"{source}: train.{e}") from None
    seq = cfg.space.get("max_seq_length")
    if seq is not None:
        longest = seq.value if seq.kind == "fixed" else max(seq.values or [seq.max or 0])
        if longest > cfg.data.max_length:
            raise ConfigError(
                f"{source}: space.max_seq_length reaches {longest} but data.max_length is "
                f"{cfg.data.max_length}; raise data.max_length or drop the longer lengths"
            )


def validate_tuner(t: TunerConfig, source: str = "config") -> None:
    if t.type not in TUNERS:
        raise ConfigError(f"{source}: tuner.type={t.type!r}: expected one of {', '.join(TUNERS)}")
    if t.max_epochs < 1 or (t.max_trials is not None and t.max_trials < 1):
        raise ConfigError(f"{source}: tuner.max_epochs and tuner.max_trials must be >= 1")
    if t.type == "hyperband" and t.factor < 2:
        raise ConfigError(f"{source}: tuner.factor={t.factor}: Hyperband needs factor >= 2")
    bounds = {"hyperband_iterations": (t.hyperband_iterations, 1),  # keras-tuner: 0 = forever
              "max_consecutive_failed_trials": (t.max_consecutive_failed_trials, 1),
              "max_retries_per_trial": (t.max_retries_per_trial, 0),
              "early_stopping_patience": (t.early_stopping_patience or 0, 0)}
    for key, (value, least) in bounds.items():
        if value < least:
            off = " (null turns it off)" if key == "early_stopping_patience" else ""
            raise ConfigError(f"{source}: tuner.{key}={value}: expected >= {least}{off}")


# ------------------------------------------------------- task speaker_clustering


def task_of(raw: dict, overrides: Optional[list] = None) -> str:
    """The task a config names, ``--set task=...`` included (default classification)."""
    task = raw.get("task")
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if sep and key.strip() == "task":
            task = yaml.safe_load(text) if text else None
    return str(task or "classification")


def _section(raw: dict, name: str, source: str) -> dict:
    data = raw.get(name) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {name} must be a mapping, got {data!r}")
    return dict(data)


def _typed(p: ParamSpec, kind: str) -> ParamSpec:
    """Cast a space entry's values to its field's type (a Choice holds one type only)."""
    cast = str if "str" in kind else float if "float" in kind else None
    if cast is not None:
        conv = lambda v: v if v is None or isinstance(v, bool) else cast(v)  # noqa: E731
        if p.kind == "choice":
            p.values = [conv(v) for v in p.values]
        elif p.kind == "fixed":
            p.value = conv(p.value)
    return p


def parse_cluster_space(raw: dict, cluster_cls) -> dict:
    """The ``space`` of a speaker_clustering search -> {ClusterConfig field: ParamSpec}."""
    kinds = {f.name: str(f.type) for f in dataclasses.fields(cluster_cls)}
    tunable = [n for n in kinds if n not in CLUSTER_OWNED + ("data", "work_dir")]
    unknown = sorted(set(raw) - set(tunable))
    if unknown:
        raise ConfigError(f"space: unknown key(s) {', '.join(unknown)}; tunable keys "
                          f"(ClusterConfig fields): {', '.join(tunable)}")
    ints = {n for n, k in kinds.items() if "int" in k and "float" not in k}
    space = {}
    for name, spec in raw.items():
        p = parse_param(name, spec, int_fields=ints)
        if p is not None:
            space[name] = _typed(p, kinds[name])
    return space


def _candidates(p: ParamSpec) -> list:
    return p.values if p.kind == "choice" else [p.value] if p.kind == "fixed" else [p.min, p.max]


def build_cluster_config(raw: dict, overrides: Optional[list] = None,
                         source: str = "config") -> SearchConfig:
    """A ``task: speaker_clustering`` config: ``cluster`` (fixed ClusterConfig fields),
    ``space`` (merged over :data:`CLUSTER_SPACE`), ``tuner`` (objective ``val_ari``)."""
    from kt_pipeline import speakers

    raw = _merged(raw, CLUSTER_SPACE, overrides, source)
    if raw.get("train"):
        raise ConfigError(f"{source}: train: is for classification; task {SPEAKER_TASK} takes "
                          "its fixed settings under cluster:")
    data = _section(raw, "data", source)
    if set(data) - {"input"}:
        raise ConfigError(f"{source}: data.{sorted(set(data) - {'input'})[0]}: task "
                          f"{SPEAKER_TASK} reads cluster.data (data.input, --input, sets it)")
    fixed = _section(raw, "cluster", source)
    owned = sorted(set(fixed) & set(CLUSTER_OWNED))
    if owned:
        raise ConfigError(f"{source}: cluster.{owned[0]} is set by the search (the encoder goes "
                          "under preset; each trial gets its own model_dir; the monitor is ARI)")
    cfg = SearchConfig(task=SPEAKER_TASK)
    for key in ("name", "search_dir", "preset"):
        if raw.get(key) is not None:
            setattr(cfg, key, str(raw[key]))
    if "search_dir" not in raw and "name" in raw:
        cfg.search_dir = f"runs/tune/{cfg.name}"
    if data.get("input"):
        fixed["data"] = data["input"]
    tuner = {"type": "bayesian", "objective": CLUSTER_OBJECTIVES[0],
             **_section(raw, "tuner", source)}
    for name, cls, values in (("cluster", speakers.ClusterConfig, fixed),
                              ("tuner", TunerConfig, tuner)):
        try:
            setattr(cfg, name, from_dict(cls, values, source=source, section=name))
        except ConfigError as e:
            msg = str(e)
            msg = msg if msg.startswith(source) else f"{source}: {name}.{msg}"
            raise ConfigError(msg) from None
    cfg.cluster.preset, cfg.cluster.monitor = cfg.preset, "ari"
    try:
        cfg.space = parse_cluster_space(raw["space"], speakers.ClusterConfig)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    both = [k for k in cfg.space if k in fixed]
    if both:
        raise ConfigError(f"{source}: cluster.{both[0]} is also in the search space; fix it "
                          f"there (space.{both[0]}: VALUE) or remove it (space.{both[0]}: null)")
    validate_cluster(cfg, source)
    cfg.raw = raw
    return cfg


def validate_cluster(cfg: SearchConfig, source: str = "config") -> None:
    """The tuner, the objective, and every fixed/choice value and range end of the space."""
    from kt_pipeline import speakers

    validate_tuner(cfg.tuner, source)
    if cfg.tuner.objective not in CLUSTER_OBJECTIVES:
        raise ConfigError(f"{source}: tuner.objective={cfg.tuner.objective!r}: task {SPEAKER_TASK} "
                          f"optimises {', '.join(CLUSTER_OBJECTIVES)} (validation ARI)")

    def check(start, overrides, where):
        try:
            cluster = apply_overrides(start, overrides)
            speakers.validate(cluster)
        except ConfigError as e:
            raise ConfigError(f"{source}: {where}: {e}") from None
        return cluster

    first = [f"{n}={_candidates(p)[0]}" for n, p in cfg.space.items()]
    base = check(cfg.cluster, first, "cluster (with the first value of each space entry)")
    for name, p in cfg.space.items():
        for v in _candidates(p):
            check(base, [f"{name}={v}"], f"space.{name}={v!r}")


def config_warnings(cfg: SearchConfig) -> list:
    """Settings the user gave that this search will not use (printed, not fatal)."""
    out = []
    if cfg.tuner.type == "hyperband" and "max_trials" in (cfg.raw.get("tuner") or {}):
        out.append(f"tuner.max_trials={cfg.tuner.max_trials} is ignored by hyperband: its "
                   "trials follow from tuner.max_epochs, factor and hyperband_iterations "
                   "(use --tuner random or bayesian for a trial count)")
    return out


def load_config(path: Optional[str], overrides: Optional[list] = None) -> SearchConfig:
    """Read a YAML config (local or gs://) and apply overrides."""
    raw = load_yaml(path) if path else {}
    return build_config(raw, overrides, source=path or "config")


def space_summary(space: dict) -> str:
    """One line per search-space entry, e.g. ``learning_rate: 5e-06..0.0001 (log)``."""
    return "\n".join(f"  {name}: {p.describe()}" for name, p in space.items())
