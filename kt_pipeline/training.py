"""Fine-tune a classifier on a TFRecord cache: ``train(cfg)`` writes a model dir.

Model dir layout (local, ``gs://`` or ``ram://``)::

    config.json          the resolved TrainConfig
    labels.json          label vocabulary (index order), from the cache manifest
    best.keras           best checkpoint by cfg.monitor (val_accuracy by default)
    history.csv          one row per epoch (epoch, loss, accuracy, val_*, lr)
    logs/                TensorBoard
    backup/              BackupAndRestore state; deleted when training completes
    train_summary.json   what ran, how long, best/final metrics, weights hash

A run killed mid-way (preemption, Ctrl-C) resumes at the last finished epoch when
started again with the same model dir.

Example:

>>> from kt_pipeline.config import TrainConfig
>>> from kt_pipeline import training
>>> cfg = TrainConfig(cache_dir="tfrecords/demo", model_dir="runs/demo", epochs=1)
>>> summary = training.train(cfg)                     # doctest: +SKIP
>>> summary["best"]["val_accuracy"] > 0.5             # doctest: +SKIP
True
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import sys
import time
import types
import warnings
from typing import NamedTuple, Optional

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kt_pipeline import batch_split, models, optim  # noqa: E402
from kt_pipeline import strategy as strategies  # noqa: E402
from kt_pipeline.config import METRICS as MONITORS  # noqa: E402
from kt_pipeline.config import TrainConfig  # noqa: E402
from kt_pipeline.errors import ConfigError, KtError  # noqa: E402

PADDINGS = ("bucket", "dynamic", "fixed")
HISTORY_FILE = "history.csv"
SUMMARY_FILE = "train_summary.json"
CONFIG_FILE = "config.json"


class TrainingDiverged(KtError):
    """The loss became NaN/inf; the message names the step and the usual fixes."""


def join(base: str, *parts: str) -> str:
    """Join path parts with ``/`` (works for local, ``gs://`` and ``ram://``)."""
    return "/".join([base.rstrip("/"), *parts])


write_text = models.write_text


def validate_config(cfg: TrainConfig) -> None:
    """Reject bad settings before anything is loaded."""
    if cfg.task != "classification":
        raise ConfigError(f"task={cfg.task!r}: `train` supports task=classification only")
    if cfg.pooling not in models.POOLINGS:
        raise ConfigError(f"pooling={cfg.pooling!r}: expected one of {', '.join(models.POOLINGS)}")
    if cfg.decay not in optim.DECAYS:
        raise ConfigError(f"decay={cfg.decay!r}: expected one of {', '.join(optim.DECAYS)}")
    if cfg.padding not in PADDINGS:
        raise ConfigError(f"padding={cfg.padding!r}: expected one of {', '.join(PADDINGS)}")
    strategies.check_name(cfg.strategy)
    if cfg.monitor not in MONITORS:
        raise ConfigError(f"monitor={cfg.monitor!r}: expected one of {', '.join(MONITORS)} "
                          "(the metrics training logs; nothing else could pick best.keras)")
    for name in ("epochs", "batch_size", "max_seq_length"):
        if getattr(cfg, name) is None or getattr(cfg, name) < 1:
            raise ConfigError(f"{name}={getattr(cfg, name)!r}: must be >= 1")
    if cfg.max_train_examples is not None and cfg.max_train_examples < 1:
        raise ConfigError(f"max_train_examples={cfg.max_train_examples}: must be >= 1 "
                          "(or null for all train examples)")
    if cfg.max_seq_length < 3:
        raise ConfigError(f"max_seq_length={cfg.max_seq_length}: needs room for [CLS] x [SEP]")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"dropout={cfg.dropout}: must be within [0, 1)")


# --------------------------------------------------------------------------- data


class TrainData(NamedTuple):
    """Datasets plus the step counts ``fit`` needs (the train set repeats)."""

    train: tf.data.Dataset
    validation: Optional[tf.data.Dataset]
    steps_per_epoch: int
    validation_steps: Optional[int]
    train_examples: int
    validation_examples: int


def effective_max_seq_length(cfg: TrainConfig, manifest: dict) -> int:
    """``cfg.max_seq_length``, capped at the cache's stored ``max_length`` (ids are
    already truncated there, so a larger value would change nothing)."""
    return min(int(cfg.max_seq_length), int(manifest.get("max_length") or cfg.max_seq_length))


def make_datasets(cfg: TrainConfig, manifest: dict, static_shapes: bool = False,
                  distributed: bool = False) -> TrainData:
    """Train/validation datasets from ``cfg.cache_dir`` for ``batch_size``/``max_seq_length``/``padding``.

    The train set is shuffled and repeated, so an epoch is exactly ``steps_per_epoch``
    steps (and the LR schedule's total is exact). ``static_shapes`` (TPU) forces fixed
    padding and full batches. ``distributed`` (several workers) also repeats the
    validation set with a fixed step count so every worker runs the same steps.
    """
    from kt_pipeline import reader

    padding = "fixed" if static_shapes else cfg.padding
    drop = static_shapes or distributed
    n_train = int(manifest["counts"]["written"].get("train", 0))
    if cfg.max_train_examples:
        n_train = min(n_train, int(cfg.max_train_examples))
    if n_train == 0:
        raise KtError(f"{cfg.cache_dir}: the cache has no train examples; rebuild it with data")
    steps = n_train // cfg.batch_size if drop else math.ceil(n_train / cfg.batch_size)
    if steps == 0:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is larger than the {n_train} train examples; "
            "lower batch_size"
        )
    # XLA compiles once per shape: give it the few static bucket widths.
    common = dict(batch_size=cfg.batch_size, padding=padding, static_buckets=bool(cfg.jit_compile),
                  max_seq_length=effective_max_seq_length(cfg, manifest))
    train = reader.make_dataset(
        cfg.cache_dir, "train", shuffle=True, seed=cfg.seed, repeat=True,
        drop_remainder=drop, take=cfg.max_train_examples, **common,
    )
    n_val = int(manifest["counts"]["written"].get("validation", 0))
    val, val_steps = None, None
    if n_val and (not drop or n_val >= cfg.batch_size):
        val = reader.make_dataset(
            cfg.cache_dir, "validation", shuffle=False, repeat=drop, drop_remainder=drop, **common
        )
        val_steps = n_val // cfg.batch_size if drop else None
    if distributed:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        train = train.with_options(options)
        val = val.with_options(options) if val is not None else None
    return TrainData(train, val, steps, val_steps, n_train, n_val)


# ------------------------------------------------------------------------ compile


def compile_classifier(model: keras.Model, optimizer, jit_compile: bool = False) -> keras.Model:
    """Compile with sparse categorical cross-entropy on logits and ``accuracy``.

    The optimizer's variables are built here. Under TensorFlow's default strategy
    (what the CPU uses) Keras would otherwise create them inside the first traced
    train step, and ``tf.function`` then traces the whole step a second time: 12 s
    more before MiniLM's first step (BENCHMARKS.md section 4).
    """
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=bool(jit_compile),
    )
    if (model.jit_compile and batch_split.parts() > 1
            and os.environ.get("TF_NUM_INTRAOP_THREADS") == "1"):
        warnings.warn(
            "jit_compile on a CPU with one TensorFlow intra-op thread (set by "
            "kt_pipeline's batch split on machines with two cores or fewer): XLA then runs "
            "on one core, 1.7x slower than with TF's default threads (BENCHMARKS.md section 3, "
            "stop 21). Start with KT_PIPELINE_BATCH_SPLIT=0 to use XLA here, or leave "
            "jit_compile off (faster on CPUs either way).", stacklevel=2)
    if model.jit_compile and hasattr(optimizer, "table_min_rows"):
        # XLA cannot compile the table update (`DisableCopyOnRead` has no XLA kernel):
        # under `jit_compile` an embedding's sparse gradient takes the dense update.
        optimizer.table_min_rows = math.inf
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    return model


def _symbolic_build_from_local_batch(self, iterator=None, data_batch=None):
    """``Model._maybe_symbolic_build`` for MultiWorkerMirroredStrategy.

    Keras 3 builds the model from one batch that it *all-reduces* across workers,
    which fails for dict inputs under MultiWorkerMirroredStrategy (keras-team/keras
    #20329, #20585: "Attempt to convert a value ({'token_ids': PerReplica ...})").
    Shapes and dtypes are all the build needs, so use this worker's first replica.
    """
    if iterator is not None:
        for _, _, it in iterator:
            batch = next(it)
            local = self.distribute_strategy.experimental_local_results
            data_batch = tf.nest.map_structure(lambda v: local(v)[0], batch)
            break
    type(self)._maybe_symbolic_build(self, data_batch=data_batch)


def _reduce_logs_across_workers(original):
    """Wrap Keras's ``reduce_per_replica`` so scalar logs average across workers."""
    from keras.src.backend.tensorflow import trainer as tf_trainer

    def reduce_per_replica(values, strategy, reduction="auto"):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica.kt_pipeline_fix = True
    return reduce_per_replica


def patch_for_multiworker(model: keras.Model) -> None:
    """Work around two Keras 3 MultiWorkerMirroredStrategy bugs (keras-team/keras #20585).

    1. the model build all-reduces a dict batch (see above): patched on this instance;
    2. the train/test step's logs are reduced with ``strategy.reduce("MEAN", scalar,
       axis=0)``, which fails for scalar metrics ("Invalid reduction dimension 0"):
       Keras's module-level helper is wrapped to average scalars over the replicas
       (axis=None). Only multi-worker strategies take the new path.
    """
    from keras.src.backend.tensorflow import trainer as tf_trainer

    model._maybe_symbolic_build = types.MethodType(_symbolic_build_from_local_batch, model)
    if not getattr(tf_trainer.reduce_per_replica, "kt_pipeline_fix", False):
        tf_trainer.reduce_per_replica = _reduce_logs_across_workers(tf_trainer.reduce_per_replica)


def set_precision(mixed_precision: bool) -> str:
    """Set the global Keras dtype policy: ``mixed_bfloat16`` or ``float32``."""
    policy = "mixed_bfloat16" if mixed_precision else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def weights_sha256(model: keras.Model) -> str:
    """A hash of all weights (order and bytes), to compare runs/workers exactly."""
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------- callbacks


class HistoryFile(keras.callbacks.Callback):
    """CSV history written through ``tf.io.gfile`` (CSVLogger can't write to gs:// or ram://).

    On the first epoch of a run, rows for that epoch and later are dropped, so a
    resumed run continues the file and a fresh run starts it over.
    """

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.rows: list[dict] = []
        self._started = False
        self.first_epoch: Optional[int] = None  # > 0 when this run resumed

    @staticmethod
    def read(path: str) -> list[dict]:
        if not tf.io.gfile.exists(path):
            return []
        with tf.io.gfile.GFile(path, "r") as f:
            return list(csv.DictReader(io.StringIO(f.read())))

    def on_epoch_begin(self, epoch, logs=None):
        if not self._started:
            self._started = True
            self.first_epoch = epoch
            self.rows = [r for r in self.read(self.path) if int(r["epoch"]) < epoch]

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}}
        row["lr"] = current_learning_rate(self.model)
        self.rows.append(row)
        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=keys, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path, out.getvalue())


def current_learning_rate(model) -> float:
    opt = model.optimizer
    lr = opt.learning_rate
    if isinstance(opt._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        lr = opt._learning_rate(opt.iterations)
    return float(keras.ops.convert_to_numpy(lr))


class NaNGuard(keras.callbacks.Callback):
    """Stop at the first NaN/inf loss and remember where (epoch, step)."""

    def __init__(self, steps_per_epoch: int):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0
        self.failed_at: Optional[tuple[int, int, float]] = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            self.failed_at = (self.epoch, self.epoch * self.steps_per_epoch + batch + 1, float(loss))
            self.model.stop_training = True

    def message(self, cfg: TrainConfig) -> str:
        epoch, step, loss = self.failed_at
        tips = [f"lower learning_rate (now {cfg.learning_rate:g}, try {cfg.learning_rate / 3:.1g})"]
        tips.append("set clipnorm=1.0" if not cfg.clipnorm else f"lower clipnorm (now {cfg.clipnorm:g})")
        if cfg.mixed_precision:
            tips.append("train in float32 (mixed_precision=false)")
        if not cfg.warmup_steps and not cfg.warmup_fraction:
            tips.append("add warmup (warmup_fraction=0.1)")
        return (
            f"training diverged: loss={loss} at global step {step} (epoch {epoch + 1}); "
            f"{'; '.join(tips)}. Rerun with a fresh --model-dir or delete its backup/ "
            "folder so it does not resume the diverged state."
        )


class Backup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that also works on ``ram://`` (see ``models.clear_for_overwrite``)."""

    def on_epoch_end(self, epoch, logs=None):
        for path in (self._weights_path, self._training_metadata_path):
            models.clear_for_overwrite(path)
        super().on_epoch_end(epoch, logs)


class BestCheckpoint(keras.callbacks.Callback):
    """Save the whole model (``.keras``) whenever ``monitor`` improves on ``best``."""

    def __init__(self, path: str, monitor: str, best: Optional[float] = None):
        super().__init__()
        self.path, self.monitor, self.best = path, monitor, best
        self.mode = monitor_mode(monitor)
        self.best_epoch: Optional[int] = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(float(value)):
            return
        if not np.isfinite(float((logs or {}).get("loss", 0.0))):
            return  # diverged (NaNGuard stops the run): the weights are NaN, whatever the monitor
        value = float(value)
        better = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
        if better:
            self.best, self.best_epoch = value, epoch
            models.clear_for_overwrite(self.path)
            self.model.save(self.path, overwrite=True)


def best_so_far(history_path: str, monitor: str) -> Optional[float]:
    """Best ``monitor`` value in an existing history file (for a resumed run)."""
    values = [float(r[monitor]) for r in HistoryFile.read(history_path) if r.get(monitor)]
    if not values:
        return None
    return min(values) if monitor_mode(monitor) == "min" else max(values)


def monitor_mode(monitor: str) -> str:
    return "min" if "loss" in monitor else "max"


def standard_callbacks(
    model_dir: str,
    monitor: str = "val_accuracy",
    steps_per_epoch: int = 1,
    early_stopping_patience: Optional[int] = None,
    save_best: bool = True,
    backup: bool = True,
    tensorboard: bool = True,
) -> list:
    """BackupAndRestore, best checkpoint, TensorBoard, history CSV, NaN guard (+ early stop).

    The backup must run before the history writer and the NaN guard (callbacks run in
    list order). The NaN guard is the last element so callers can read it.
    """
    cbs: list = []
    backup_dir = join(model_dir, "backup")
    history_path = join(model_dir, HISTORY_FILE)
    resuming = tf.io.gfile.exists(backup_dir)
    if backup:
        cbs.append(Backup(backup_dir=backup_dir))
    if save_best:
        threshold = best_so_far(history_path, monitor) if resuming else None
        cbs.append(BestCheckpoint(join(model_dir, models.BEST_MODEL_FILE), monitor, threshold))
    if tensorboard:
        cbs.append(keras.callbacks.TensorBoard(log_dir=join(model_dir, "logs"), profile_batch=0))
    cbs.append(HistoryFile(history_path))
    if early_stopping_patience:
        cbs.append(keras.callbacks.EarlyStopping(
            monitor=monitor, mode=monitor_mode(monitor), patience=early_stopping_patience))
    cbs.append(NaNGuard(steps_per_epoch))
    return cbs


# -------------------------------------------------------------------------- train


def resolve_preset(cfg: TrainConfig, manifest: dict) -> Optional[str]:
    """The encoder to fine-tune: ``cfg.preset``, else the one the cache was built with."""
    return cfg.preset or manifest.get("preset") or None


def check_tokenizer(preset, manifest: dict, cache_dir: str) -> None:
    """The cache's token ids must come from this encoder's tokenizer."""
    from kt_pipeline import encoders

    want = manifest.get("tokenizer")
    if not want:
        return
    have = encoders.tokenizer_fingerprint(encoders.load_tokenizer(preset))
    differ = encoders.fingerprint_difference(want, have)
    if differ:
        raise ConfigError(
            f"{cache_dir} was tokenized for preset {manifest.get('preset')!r}, which does not "
            f"match preset {preset!r} ({differ}); rebuild the cache "
            "with this --preset or train with the cache's preset"
        )


# Settings a resumed run may change: where it runs, not what it trains.
RESUME_FREE = ("model_dir", "strategy", "jit_compile")


def check_resume_settings(out: str, cfg: TrainConfig) -> None:
    """A run that resumes from ``backup/`` must have the settings it started with.

    Otherwise Keras restores what still fits (weights) and drops what does not (the
    optimizer state, when ``freeze_body`` changes), and the schedule of one run goes on
    with the step counts of another.
    """
    path = join(out, CONFIG_FILE)
    if not (tf.io.gfile.exists(join(out, "backup")) and tf.io.gfile.exists(path)):
        return
    with tf.io.gfile.GFile(path, "r") as f:
        before = json.loads(f.read())
    now = cfg.to_dict()
    changed = [f"{k} {before[k]!r} -> {now[k]!r}" for k in now
               if k not in RESUME_FREE and k in before and before[k] != now[k]]
    if changed:
        raise ConfigError(
            f"{out} holds an unfinished run (backup/) with other settings: {'; '.join(changed)}. "
            f"Rerun with its settings ({path}) to resume it, or start over in a new "
            f"--model-dir or after deleting {join(out, 'backup')}"
        )


def clear_stale_results(out: str) -> None:
    """A new run (not a resumed one) replaces the earlier run's model: its checkpoint,
    summary and ``evaluate``'s files go now, so that a new run killed before its first
    checkpoint leaves no old model beside the new config.json and labels.json. An
    ``export/`` of it is kept but named (export again)."""
    if tf.io.gfile.exists(join(out, "backup")):
        return
    names = [models.BEST_MODEL_FILE, models.FINAL_MODEL_FILE, SUMMARY_FILE, "results.json"]
    stale = [join(out, n) for n in names] + tf.io.gfile.glob(join(out, "confusion_matrix_*.png"))
    removed = [p for p in stale if tf.io.gfile.exists(p)]
    for path in removed:
        tf.io.gfile.remove(path)
    if removed:
        print(f"note: a new run in {out}: removed the earlier run's "
              f"{', '.join(p.rsplit('/', 1)[-1] for p in removed)}", file=sys.stderr)
    if tf.io.gfile.exists(join(out, "export", "saved_model.pb")):
        print(f"note: {join(out, 'export')} holds an earlier run's model; run `kt-pipeline "
              f"export --model-dir {out}` after this run to replace it", file=sys.stderr)


def output_dir(model_dir: str, chosen) -> str:
    """Non-chief workers of a multi-worker run write under ``<model_dir>/workers/<i>``."""
    return model_dir if chosen.is_chief else join(model_dir, "workers", str(chosen.task_index))


def train(cfg: TrainConfig, extra_callbacks: Optional[list] = None, verbose=None) -> dict:
    """Fine-tune ``cfg.preset`` on ``cfg.cache_dir``; write ``cfg.model_dir``; return the summary.

    ``extra_callbacks`` run after the standard ones (backup, checkpoint, history).
    """
    validate_config(cfg)
    started = time.time()
    cfg = dataclasses.replace(cfg)
    paths = {"cache_dir": cfg.cache_dir, "model_dir": cfg.model_dir}
    chosen = strategies.make_strategy(cfg.strategy, tpu_paths=paths)
    if chosen.static_shapes and cfg.padding != "fixed":
        print(f"note: padding={cfg.padding} -> fixed (TPUs need static shapes)", file=sys.stderr)
        cfg.padding = "fixed"
    keras.utils.set_random_seed(cfg.seed)
    previous_policy = keras.mixed_precision.global_policy()
    policy = set_precision(cfg.mixed_precision)
    try:
        return _train(cfg, chosen, policy, started, extra_callbacks, verbose)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(cfg, chosen, policy, started, extra_callbacks, verbose) -> dict:
    from kt_pipeline import encoders, reader

    if tf.io.gfile.exists(cfg.model_dir) and not tf.io.gfile.isdir(cfg.model_dir):
        raise ConfigError(f"--model-dir {cfg.model_dir} is a file; pass a folder (created if "
                          "missing)")
    manifest = reader.load_manifest(cfg.cache_dir)
    labels = list(manifest.get("labels") or [])
    if len(labels) < 2:
        raise KtError(
            f"{cfg.cache_dir}: the cache has labels {labels}; classification needs a label "
            "column with at least 2 values (rebuild it with build-tfrecords --label-col "
            "COLUMN, from data with 2 or more labels)"
        )
    seq = effective_max_seq_length(cfg, manifest)
    if seq != cfg.max_seq_length:
        print(f"note: max_seq_length={cfg.max_seq_length} -> {seq} (the cache stores ids up "
              f"to {seq} tokens)", file=sys.stderr)
        cfg.max_seq_length = seq
    preset = resolve_preset(cfg, manifest)
    check_tokenizer(preset, manifest, cfg.cache_dir)
    data = make_datasets(cfg, manifest, static_shapes=chosen.static_shapes,
                         distributed=chosen.kind == "multiworker")
    monitor = cfg.monitor
    if data.validation is None and monitor.startswith("val_"):
        print(f"note: no validation split; monitoring {monitor[4:]} instead of {monitor}",
              file=sys.stderr)
        monitor = monitor[4:]

    out = output_dir(cfg.model_dir, chosen)
    check_resume_settings(out, cfg)

    total_steps = data.steps_per_epoch * cfg.epochs
    warmup = optim.resolve_warmup(total_steps, cfg.warmup_steps, cfg.warmup_fraction)
    with chosen.strategy.scope():
        backbone = encoders.load_backbone(preset)
        models.check_position_limit(backbone, cfg.max_seq_length)
        model = models.build_classifier(backbone, len(labels), cfg.pooling, cfg.dropout, cfg.freeze_body)
        opt = optim.build_optimizer(cfg.learning_rate, warmup, total_steps, cfg.decay,
                                    cfg.weight_decay, cfg.clipnorm)
        compile_classifier(model, opt, cfg.jit_compile)
    if chosen.kind == "multiworker":
        patch_for_multiworker(model)
    # Only now, with every setting checked, does the model dir change.
    clear_stale_results(out)
    tf.io.gfile.makedirs(out)
    write_text(join(out, CONFIG_FILE), cfg.to_json())
    models.save_labels(out, labels)

    callbacks = standard_callbacks(out, monitor, data.steps_per_epoch, cfg.early_stopping_patience)
    guard = callbacks[-1]
    history_cb = next(c for c in callbacks if isinstance(c, HistoryFile))
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    print(
        f"train: {data.train_examples} examples, {data.validation_examples} validation, "
        f"{len(labels)} labels, {data.steps_per_epoch} steps/epoch x {cfg.epochs} epochs, "
        f"warmup {warmup} steps, policy {policy}",
        file=sys.stderr,
    )
    with warnings.catch_warnings():
        # Keras warns on every pass over a finite validation set of unknown length.
        warnings.filterwarnings("ignore", message=".*ran out of data.*")
        history = model.fit(
            data.train,
            validation_data=data.validation,
            epochs=cfg.epochs,
            steps_per_epoch=data.steps_per_epoch,
            validation_steps=data.validation_steps,
            callbacks=callbacks + list(extra_callbacks or []),
            shuffle=False,  # the reader shuffles
            verbose=verbose,
        )
    if guard.failed_at:
        raise TrainingDiverged(guard.message(cfg))

    rows = HistoryFile.read(join(out, HISTORY_FILE))
    epochs_run = len(history.epoch)
    best = None
    if rows and rows[0].get(monitor):
        pick = min if monitor_mode(monitor) == "min" else max
        best = pick(rows, key=lambda r: float(r[monitor]))
    summary = {
        "model_dir": cfg.model_dir,
        "output_dir": out,
        "preset": preset,
        "strategy": chosen.description,
        "num_replicas": chosen.num_replicas,
        "policy": policy,
        "labels": labels,
        "train_examples": data.train_examples,
        "validation_examples": data.validation_examples,
        "steps_per_epoch": data.steps_per_epoch,
        "total_steps": total_steps,
        "warmup_steps": warmup,
        "epochs": cfg.epochs,
        "initial_epoch": history_cb.first_epoch,
        "epochs_run_this_time": epochs_run,
        "monitor": monitor,
        "best": {k: _num(v) for k, v in best.items()} if best else None,
        "final": {k: _num(v) for k, v in rows[-1].items()} if rows else None,
        "seconds": round(time.time() - started, 1),
        "weights_sha256": weights_sha256(model),
    }
    write_text(join(out, SUMMARY_FILE), json.dumps(summary, indent=2))
    return summary


def _num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if f.is_integer() and abs(f) < 2**31 else f
