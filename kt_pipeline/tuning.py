"""Hyperparameter search with keras-tuner: the HyperModel, the tuners, the search driver.

:class:`ClassifierHyperModel` builds the classifier in ``build(hp)`` (dropout,
freeze_body, pooling) and chooses ``batch_size`` and ``max_seq_length`` inside
``fit(hp, ...)``, where they only change how the one token-id cache is read (no
re-tokenising). Every trial's learning-rate schedule spans ``tuner.max_epochs`` epochs,
and a Hyperband continuation (``initial_epoch > 0``, weights restored from the earlier
trial) starts its fresh optimizer at step ``initial_epoch * steps_per_epoch``, so warmup
and decay continue instead of restarting. With ``freeze_body`` the trial trains only the
head on pooled encoder outputs cached once by :mod:`kt_pipeline.frozen`.

A trial that runs out of memory or whose loss becomes NaN raises keras-tuner's
``FailedTrialError``: the trial is recorded as FAILED with its reason and the search
goes on (until ``tuner.max_consecutive_failed_trials`` fail in a row). Each attempt of
a trial also writes ``<search_dir>/kt/trial_<id>/attempts/<worker>-<pid>-<t>.json``
(worker, seconds, epochs, status, reason), which the results table reads.

Search dir layout::

    <search_dir>/search_config.yaml     the resolved config
    <search_dir>/kt/                    keras-tuner's project (oracle.json, trial_*/)
    <search_dir>/logs/<trial>/execution0/   TensorBoard scalars + HParams per trial
    <search_dir>/features/              frozen-encoder feature cache
    <search_dir>/results/               trials.csv, trials.md, *.png
    <search_dir>/best.yaml              the best trial's hyperparameters
    <search_dir>/best_model/            --export-best: retrained model + export/

Re-running the same search continues it (keras-tuner reloads the oracle; finished
trials are never repeated, a trial that was running when the process died is run
again); ``restart=True`` starts over.

``task: speaker_clustering`` swaps the HyperModel for
:class:`kt_pipeline.speaker_tuning.SpeakerHyperModel`: the same tuners, attempt
records, resume and results, but each trial trains a speaker model with
``speakers.build_and_fit`` into ``<search_dir>/kt/trial_<id>/model/`` and reports
``val_ari``.

Example:

>>> from kt_pipeline import search_config, tuning
>>> cfg = search_config.load_config("tuning/demo.yaml", ["tuner.max_epochs=2"])  # doctest: +SKIP
>>> summary = tuning.run_search(cfg)                                           # doctest: +SKIP
>>> summary["best"]["hyperparameters"]["learning_rate"]                        # doctest: +SKIP
3.1e-05
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
import warnings
from typing import Optional

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import keras_tuner  # noqa: E402
import tensorflow as tf  # noqa: E402
import yaml  # noqa: E402

from kt_pipeline import frozen, models, optim, training  # noqa: E402
from kt_pipeline.errors import ConfigError, KtError  # noqa: E402
from kt_pipeline.search_config import (  # noqa: E402
    DATA_KEYS, SPEAKER_TASK, SearchConfig, as_number)

PROJECT = "kt"
ATTEMPTS = "attempts"
ROLES = ("chief", "worker")
ENV_TUNER_ID = "KERASTUNER_TUNER_ID"
ENV_ORACLE_IP = "KERASTUNER_ORACLE_IP"
ENV_ORACLE_PORT = "KERASTUNER_ORACLE_PORT"


def atomic_save_json(path: str, obj) -> str:
    """keras-tuner's ``utils.save_json``, written to a temporary file and renamed into place.

    keras-tuner truncates ``oracle.json`` / ``trial.json`` and then writes them, so a
    search killed at that moment left an empty file and the re-run died on
    ``JSONDecodeError`` instead of resuming. Installed over keras-tuner's own function
    when this module is imported.
    """
    text = json.dumps(obj)
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return text


keras_tuner.src.utils.save_json = atomic_save_json


class SearchFailed(KtError):
    """Too many trials failed in a row; the message lists their reasons."""


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def project_dir(search_dir: str) -> str:
    return join(search_dir, PROJECT)


def trial_dir(search_dir: str, trial_id: str) -> str:
    """keras-tuner's directory of one trial (its attempt records; a speaker trial's model)."""
    return join(project_dir(search_dir), f"trial_{trial_id}")


# ------------------------------------------------------------------- HyperModel


class ClassifierHyperModel(keras_tuner.HyperModel):
    """Builds and trains one trial's classifier from a :class:`SearchConfig`.

    ``features`` (a :class:`frozen.FeatureStore`) enables the frozen fast path:
    trials with ``freeze_body`` true train a head on cached pooled features.
    ``last_fit`` describes the latest ``fit`` (epochs, steps, fast path) for the
    attempt records.
    """

    def __init__(self, cfg: SearchConfig, manifest: dict,
                 features: Optional[frozen.FeatureStore] = None):
        super().__init__(name="text_classifier")
        self.cfg = cfg
        self.manifest = manifest
        self.labels = list(manifest.get("labels") or [])
        self.preset = training.resolve_preset(cfg.base_train_config(), manifest)
        self.features = features
        self.last_fit: dict = {}
        self._hidden_dim: Optional[int] = None

    # -- hyperparameters
    def declare_hyperparameters(self, hp):
        for p in self.cfg.space.values():
            p.register(hp)

    def values(self, hp, keys=None) -> dict:
        """Register (if needed) and read the space entries ``keys`` (default: all)."""
        space = self.cfg.space
        return {k: space[k].register(hp) for k in (keys or space) if k in space}

    def train_config(self, hp) -> "training.TrainConfig":
        return self.cfg.base_train_config(**self.values(hp))

    def uses_fast_path(self, cfg) -> bool:
        return bool(cfg.freeze_body) and self.features is not None

    def hidden_dim(self) -> int:
        if self._hidden_dim is None:
            from kt_pipeline import encoders

            self._hidden_dim = int(encoders.load_backbone(self.preset, load_weights=False).hidden_dim)
        return self._hidden_dim

    # -- build / fit
    def build(self, hp):
        model_keys = [k for k in self.cfg.space if k not in DATA_KEYS]
        cfg = self.cfg.base_train_config(**self.values(hp, model_keys))
        seed = self.cfg.tuner.seed
        keras.utils.set_random_seed(seed)
        if self.uses_fast_path(cfg):
            return frozen.build_head(self.hidden_dim(), len(self.labels), cfg.dropout, seed)
        from kt_pipeline import encoders

        backbone = encoders.load_backbone(self.preset)
        model = models.build_classifier(backbone, len(self.labels), cfg.pooling, cfg.dropout,
                                        cfg.freeze_body)
        frozen.init_head(model.get_layer("logits"), seed)
        return model

    def datasets(self, cfg):
        """``(train, validation, steps_per_epoch, validation_steps)`` for this trial."""
        if self.uses_fast_path(cfg):
            d = frozen.head_datasets(self.features, cfg.max_seq_length, cfg.pooling,
                                     cfg.batch_size, cfg.seed, cfg.max_train_examples)
            return d.train, d.validation, d.steps_per_epoch, None
        cfg.max_seq_length = training.effective_max_seq_length(cfg, self.manifest)
        d = training.make_datasets(cfg, self.manifest)
        return d.train, d.validation, d.steps_per_epoch, d.validation_steps

    def fit(self, hp, model, *args, callbacks=None, epochs=None, initial_epoch=0,
            verbose=2, **kwargs):
        # batch_size and max_seq_length only change the dataset: chosen here.
        self.values(hp, DATA_KEYS)
        cfg = self.train_config(hp)
        epochs = int(epochs or self.cfg.tuner.max_epochs)
        initial_epoch = int(initial_epoch or 0)
        train, val, steps, val_steps = self.datasets(cfg)
        # One schedule over the whole budget; continuations pick it up where it was.
        total = steps * int(self.cfg.tuner.max_epochs)
        warmup = optim.resolve_warmup(total, cfg.warmup_steps, cfg.warmup_fraction)
        opt = optim.build_optimizer(cfg.learning_rate, warmup, total, cfg.decay,
                                    cfg.weight_decay, cfg.clipnorm,
                                    initial_step=initial_epoch * steps)
        training.compile_classifier(model, opt)
        self.last_fit = {"initial_epoch": initial_epoch, "epochs": epochs,
                         "steps_per_epoch": steps, "total_steps": total, "warmup_steps": warmup,
                         "fast_path": self.uses_fast_path(cfg), "epochs_run": 0}
        monitor = self.cfg.tuner.objective
        cbs = list(callbacks or [])
        if self.cfg.tuner.early_stopping_patience:
            cbs.append(keras.callbacks.EarlyStopping(
                monitor=monitor, mode=training.monitor_mode(monitor),
                patience=int(self.cfg.tuner.early_stopping_patience)))
        guard = training.NaNGuard(steps)
        cbs += [guard, _FirstLearningRate(self.last_fit)]
        try:
            with warnings.catch_warnings():
                # Keras warns on every pass over a finite validation set.
                warnings.filterwarnings("ignore", message=".*ran out of data.*")
                history = model.fit(train, validation_data=val, epochs=epochs,
                                    initial_epoch=initial_epoch, steps_per_epoch=steps,
                                    validation_steps=val_steps, callbacks=cbs,
                                    verbose=verbose, shuffle=False)  # the datasets shuffle
        except tf.errors.ResourceExhaustedError as e:
            first = (e.message or str(e)).strip().splitlines()[0][:300]
            raise keras_tuner.errors.FailedTrialError(
                f"out of memory (batch_size={cfg.batch_size}, max_seq_length="
                f"{cfg.max_seq_length}): {first}") from None
        self.last_fit["epochs_run"] = len(history.epoch)
        if guard.failed_at:
            epoch, step, loss = guard.failed_at
            raise keras_tuner.errors.FailedTrialError(
                f"loss became {loss} at step {step} (epoch {epoch + 1}) with "
                f"learning_rate={cfg.learning_rate:g}")
        return history


class _FirstLearningRate(keras.callbacks.Callback):
    """Put the learning rate of a fit's first step into ``info["first_learning_rate"]``."""

    def __init__(self, info: dict):
        super().__init__()
        self.info = info

    def on_train_batch_begin(self, batch, logs=None):
        if "first_learning_rate" not in self.info:
            self.info["first_learning_rate"] = training.current_learning_rate(self.model)


# ------------------------------------------------------------------ the tuners


def failure_reason(message: Optional[str]) -> str:
    """The last line of keras-tuner's traceback text, without the exception class.

    >>> failure_reason("Traceback...\\nkeras_tuner.errors.FailedTrialError: loss became nan")
    'loss became nan'
    """
    lines = [ln for ln in (message or "").strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    last = lines[-1]
    head, sep, rest = last.partition(": ")
    return rest if sep and " " not in head else last


FINAL_STATUSES = ("COMPLETED", "FAILED")


def forget_finished_retries(oracle) -> list:
    """Take trials whose own ``trial.json`` says they finished off the retry queue.

    keras-tuner's ``Oracle.end_trial`` writes ``trial.json`` before ``oracle.json``,
    and the ``oracle.json`` it writes still lists the trial as ongoing (the trial
    leaves ``ongoing_trials`` only after the save). A search killed in that window
    would, on reload, send a finished trial back for another run. Returns the ids
    taken off the queue (they go to ``end_order`` as ``end_trial`` would have put them).
    """
    done = [tid for tid in oracle._retry_queue
            if tid in oracle.trials and str(oracle.trials[tid].status) in FINAL_STATUSES]
    if not done:
        return []
    oracle._retry_queue = [tid for tid in oracle._retry_queue if tid not in done]
    oracle.end_order.extend(tid for tid in done if tid not in oracle.end_order)
    oracle.save()
    return done


class _SearchMixin:
    """Our additions to keras-tuner's tuners: attempt records, chief loop, quiet start."""

    def _populate_initial_space(self):
        # Declare the space without building a model (keras-tuner would build one to
        # discover conditional scopes; this space has none).
        hp = self.oracle.get_space()
        self.hypermodel.declare_hyperparameters(hp)
        self.oracle.update_space(hp)

    def _attempt_path(self, trial) -> str:
        return join(trial_dir(self.directory, trial.trial_id), ATTEMPTS, self._attempt_name)

    def run_trial(self, trial, *args, **kwargs):
        # A HyperModel with its own run_trial (the speaker task) trains no Keras model here.
        own = getattr(self.hypermodel, "run_trial", None)
        if own is None:
            return super().run_trial(trial, *args, **kwargs)
        return own(trial, trial_dir(self.directory, trial.trial_id))

    def _write_attempt(self, trial, record: dict) -> None:
        models.write_text(self._attempt_path(trial), json.dumps(record, indent=1))

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        self.hypermodel.last_fit = {}
        self._attempt_name = f"{self.tuner_id}-{os.getpid()}-{uuid.uuid4().hex[:6]}.json"
        self._attempt = {"trial_id": trial.trial_id, "tuner_id": self.tuner_id,
                         "pid": os.getpid(), "started": time.time(), "status": "RUNNING"}
        self._write_attempt(trial, self._attempt)

    def on_trial_end(self, trial):
        ended = time.time()
        fit = dict(self.hypermodel.last_fit)
        record = {**self._attempt, "ended": ended,
                  "seconds": round(ended - self._attempt["started"], 2),
                  "status": str(trial.status), **fit}
        if "epochs_run" in fit:
            record["final_epoch"] = fit["initial_epoch"] + fit["epochs_run"]
        if trial.status != "COMPLETED":
            record["reason"] = failure_reason(trial.message)
            if "FailedTrialError" in (trial.message or ""):
                trial.message = record["reason"]  # our own reason; the traceback adds nothing
            print(f"trial {trial.trial_id} {trial.status}: {record['reason']}", file=sys.stderr)
        self._write_attempt(trial, record)
        super().on_trial_end(trial)

    def reload(self):
        super().reload()
        if not self._is_worker():
            forget_finished_retries(self.oracle)

    def search(self, *args, **kwargs):
        if is_chief():
            self.save()
            serve_chief(self.oracle)
            return
        super().search(*args, **kwargs)


class HyperbandSearch(_SearchMixin, keras_tuner.Hyperband):
    """keras-tuner Hyperband with attempt records."""


class BayesianSearch(_SearchMixin, keras_tuner.BayesianOptimization):
    """keras-tuner Bayesian optimisation with attempt records."""


class RandomSearchTuner(_SearchMixin, keras_tuner.RandomSearch):
    """keras-tuner random search with attempt records."""


def make_tuner(cfg: SearchConfig, hypermodel, overwrite: bool = False):
    """The keras-tuner tuner for ``cfg.tuner`` over ``hypermodel`` in ``cfg.search_dir``."""
    t = cfg.tuner
    objective = keras_tuner.Objective(t.objective, direction=training.monitor_mode(t.objective))
    common = dict(hypermodel=hypermodel, objective=objective, seed=t.seed,
                  directory=cfg.search_dir, project_name=PROJECT, overwrite=overwrite,
                  max_retries_per_trial=t.max_retries_per_trial,
                  max_consecutive_failed_trials=t.max_consecutive_failed_trials)
    try:
        if t.type == "hyperband":
            return HyperbandSearch(max_epochs=t.max_epochs, factor=t.factor,
                                   hyperband_iterations=t.hyperband_iterations, **common)
        if t.type == "bayesian":
            return BayesianSearch(max_trials=t.max_trials, **common)
        return RandomSearchTuner(max_trials=t.max_trials, **common)
    except RuntimeError as e:
        if "reloading" in str(e).lower():
            raise ConfigError(
                f"{project_dir(cfg.search_dir)} holds a search that does not match this "
                f"config ({e}); use another search_dir or --restart to start over") from None
        raise


# --------------------------------------------------------------- chief / worker


def configure_distribution(role: Optional[str], oracle_address: Optional[str],
                           tuner_id: Optional[str]) -> None:
    """Set keras-tuner's chief/worker environment variables for ``--role``.

    >>> configure_distribution("worker", "127.0.0.1:8000", "worker0")
    >>> os.environ["KERASTUNER_TUNER_ID"], os.environ["KERASTUNER_ORACLE_PORT"]
    ('worker0', '8000')
    >>> for k in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
    ...     del os.environ[k]
    """
    if role is None:
        return
    if role not in ROLES:
        raise ConfigError(f"--role {role!r}: expected chief or worker")
    host, sep, port = (oracle_address or "").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(
            f"--oracle-address {oracle_address!r}: expected HOST:PORT of the chief, "
            "e.g. 10.0.0.2:8000 (the chief listens there)")
    if role == "chief":
        tuner_id = "chief"
    elif not tuner_id or "chief" in tuner_id:
        raise ConfigError(
            f"--tuner-id {tuner_id!r}: each worker needs a unique id without 'chief', "
            "e.g. --tuner-id worker0")
    os.environ[ENV_TUNER_ID] = tuner_id
    os.environ[ENV_ORACLE_IP] = host
    os.environ[ENV_ORACLE_PORT] = port


def is_chief() -> bool:
    return ENV_ORACLE_IP in os.environ and "chief" in os.environ.get(ENV_TUNER_ID, "")


def is_worker() -> bool:
    return ENV_ORACLE_IP in os.environ and not is_chief()


def serve_chief(oracle, poll_seconds: float = 0.5) -> None:
    """Serve ``oracle`` to the workers until the search is over and all have left.

    keras-tuner's own ``oracle_chief.start_server`` with a short poll (it re-checks
    every 20 s once the first worker is told to stop); same servicer and protocol.
    """
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    address = f"{os.environ[ENV_ORACLE_IP]}:{os.environ[ENV_ORACLE_PORT]}"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = oracle_chief.OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    if server.add_insecure_port(address) == 0:
        raise ConfigError(f"the chief cannot listen on {address}: is the port in use?")
    server.start()
    print(f"chief: oracle listening on {address}; waiting for workers", file=sys.stderr)
    try:
        while not (servicer.stop_triggered and oracle_chief.exit_chief(oracle)):
            time.sleep(poll_seconds)
    finally:
        server.stop(grace=2)


# ---------------------------------------------------------------- the search


def prepare_cache(cfg: SearchConfig, verbose: bool = True) -> dict:
    """Build (or reuse) the cache named by ``cfg.data``; return its manifest."""
    from kt_pipeline import cache, reader

    d = cfg.data
    if d.input:
        kwargs = dict(text_col=d.text_col, label_col=d.label_col, task=cfg.task,
                      format=d.format, delimiter=d.delimiter, seed=d.seed,
                      max_length=d.max_length)
        if d.labels:
            kwargs["labels"] = tuple(str(x) for x in d.labels)
        if d.ratios:
            kwargs["ratios"] = tuple(d.ratios)
        manifest = cache.ensure_cache(d.input, cfg.cache_dir, preset=cfg.preset,
                                      progress=verbose, **kwargs)
    else:
        manifest = reader.load_manifest(cfg.cache_dir)
        training.check_tokenizer(training.resolve_preset(cfg.base_train_config(), manifest),
                                 manifest, cfg.cache_dir)
    if verbose:
        print(cache.format_summary(manifest), file=sys.stderr)
    if len(manifest.get("labels") or []) < 2:
        raise KtError(f"{cfg.cache_dir}: classification needs at least 2 labels "
                      f"(found {manifest.get('labels')}); check data.label_col")
    if not manifest["counts"]["written"].get("validation"):
        raise KtError(f"{cfg.cache_dir}: the cache has no validation split to score trials "
                      "on; rebuild it with data.ratios giving validation > 0")
    if int(manifest["max_length"]) < max(_lengths(cfg)):
        raise ConfigError(
            f"space.max_seq_length reaches {max(_lengths(cfg))} but cache {cfg.cache_dir} "
            f"stores ids up to {manifest['max_length']} tokens; rebuild it with a larger "
            "data.max_length or drop the longer lengths")
    return manifest


def _lengths(cfg: SearchConfig) -> list:
    p = cfg.space.get("max_seq_length")
    if p is None:
        return [cfg.train.max_seq_length]
    return [p.value] if p.kind == "fixed" else list(p.values or [p.max])


def _may_freeze(cfg: SearchConfig) -> bool:
    p = cfg.space.get("freeze_body")
    if p is None:
        return bool(cfg.train.freeze_body)
    return p.value is True if p.kind == "fixed" else True in (p.values or [])


def clear_results(search_dir: str) -> None:
    """Remove an earlier search's logs, results and best.yaml (the feature cache stays:
    it depends only on the cache and the encoder)."""
    for name in ("logs", "results", "best.yaml"):
        path = join(search_dir, name)
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        elif tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)


# Settings a continued search may change: the budget and the output, not what a trial is.
MAY_CHANGE = ("name", "search_dir", "tuner.max_trials", "tuner.verbose",
              "tuner.max_consecutive_failed_trials", "tuner.max_retries_per_trial")


# Paths compared as absolute paths (the demo passes the sample by its absolute path).
PATH_KEYS = ("preset", "data.input", "data.cache_dir", "cluster.data", "cluster.work_dir")


def _flat(d, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    for k, v in out.items():  # 1e-4 (text in YAML 1.1) and 0.0001 are the same setting
        out[k] = [as_number(x) for x in v] if isinstance(v, list) else as_number(v)
    for k in PATH_KEYS:
        v = out.get(k)
        if isinstance(v, str) and "://" not in v and os.path.exists(v):
            out[k] = os.path.abspath(v)
    return out


def check_same_search(cfg: SearchConfig) -> None:
    """Refuse to continue a search in ``cfg.search_dir`` that was started with another
    config (keras-tuner would reuse its trials and report them as this config's)."""
    path = join(cfg.search_dir, "search_config.yaml")
    if not (tf.io.gfile.exists(path)
            and tf.io.gfile.exists(join(project_dir(cfg.search_dir), "oracle.json"))):
        return
    with tf.io.gfile.GFile(path, "r") as f:
        old = _flat(yaml.safe_load(f.read()) or {})
    new = _flat(yaml.safe_load(yaml.safe_dump(cfg.to_dict())) or {})
    changed = [k for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k) and k not in MAY_CHANGE]
    if changed:
        what = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:5])
        raise ConfigError(
            f"{cfg.search_dir} holds a search started with another config ({what}); run "
            "the same config to continue it, --restart to start over, or use another "
            "search_dir")


def write_config(cfg: SearchConfig) -> str:
    path = join(cfg.search_dir, "search_config.yaml")
    models.write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path


def run_search(cfg: SearchConfig, restart: bool = False, verbose: Optional[int] = None) -> dict:
    """Run (or continue) the search; write results; return the summary.

    Workers (``--role worker``) run trials and return ``{"role": "worker"}``; the
    chief and a single process write the results table, plots and ``best.yaml``.
    """
    from kt_pipeline import tuning_results

    if restart and is_worker():
        raise ConfigError("--restart is for the chief (or a single process), not a worker")
    speaker = cfg.task == SPEAKER_TASK
    if not restart and not is_worker():
        check_same_search(cfg)
    manifest = None if speaker else prepare_cache(cfg)
    if restart:
        clear_results(cfg.search_dir)
    tf.io.gfile.makedirs(cfg.search_dir)
    if not is_worker():
        write_config(cfg)
    verbose = cfg.tuner.verbose if verbose is None else verbose
    features = None
    if speaker:
        from kt_pipeline import speaker_tuning

        hypermodel = speaker_tuning.SpeakerHyperModel(cfg, verbose=verbose)
        fit_kwargs = {"verbose": verbose}
    else:
        if cfg.tuner.frozen_fast_path and _may_freeze(cfg):
            features = frozen.FeatureStore(
                join(cfg.search_dir, "features"), cfg.cache_dir,
                training.resolve_preset(cfg.base_train_config(), manifest), manifest)
        hypermodel = ClassifierHyperModel(cfg, manifest, features)
        tensorboard = keras.callbacks.TensorBoard(log_dir=join(cfg.search_dir, "logs"),
                                                  profile_batch=0)
        fit_kwargs = {"epochs": cfg.tuner.max_epochs, "callbacks": [tensorboard],
                      "verbose": verbose}
    tuner = make_tuner(cfg, hypermodel, overwrite=restart)
    started = time.time()
    failure = None
    try:
        tuner.search(**fit_kwargs)
    except RuntimeError as e:
        if "consecutive failures" not in str(e):
            raise
        failure = e
    except keras_tuner.errors.FatalError as e:
        if isinstance(e.__cause__, KtError):  # bad data or settings: say so, no traceback
            raise e.__cause__ from None
        raise
    if is_worker():
        return {"role": "worker", "tuner_id": tuner.tuner_id, "seconds": time.time() - started}
    results = tuning_results.write_results(cfg, tuner.project_dir)
    results["seconds"] = round(time.time() - started, 1)
    results["frozen_features_computed"] = list(features.computed) if features else []
    rows = results["rows"]
    if failure is None and rows and not results["best"] and all(
            r["status"] in ("FAILED", "INVALID") for r in rows):
        raise SearchFailed(
            f"every trial failed ({len(rows)}). Reasons:\n"
            + tuning_results.format_failures(rows)
            + f"\nSee {results['table_md']}; fix the space and run again")
    if failure is not None:
        raise SearchFailed(
            f"the search stopped: {cfg.tuner.max_consecutive_failed_trials} trials failed in a "
            f"row (tuner.max_consecutive_failed_trials). Reasons:\n"
            + tuning_results.format_failures(results["rows"])
            + f"\nSee {results['table_md']}; fix the space (e.g. lower learning_rate or "
            "batch_size) and run again (finished trials are kept)")
    return results


# ----------------------------------------------------------------- export best


def best_train_config(cfg: SearchConfig, best: dict) -> "training.TrainConfig":
    """The TrainConfig that retrains the best trial: its values, its epoch count."""
    hps = {k: v for k, v in best["hyperparameters"].items() if not k.startswith("tuner/")}
    train_cfg = cfg.base_train_config(**hps)
    train_cfg.epochs = int(best.get("epochs") or cfg.tuner.max_epochs)
    train_cfg.model_dir = join(cfg.search_dir, "best_model")
    return train_cfg


def check_exportable(cfg: SearchConfig) -> None:
    """``--export-best`` retrains a classifier; a speaker search already keeps every
    trial's trained model. Checked before the search starts and again by export_best."""
    if cfg.task == SPEAKER_TASK:
        raise ConfigError(f"--export-best is for classification; a {SPEAKER_TASK} search keeps "
                          "every trial's trained model (best.yaml names the best one's model_dir)")


def export_best(cfg: SearchConfig, best: dict) -> dict:
    """Retrain the best configuration with ``training.train`` and export a SavedModel.

    Reuses an earlier export of the same trial; returns the model dir and export path.
    """
    from kt_pipeline import export

    check_exportable(cfg)
    if not best:
        raise KtError("no completed trial to export; run the search (longer) first")
    train_cfg = best_train_config(cfg, best)
    model_dir = train_cfg.model_dir
    marker = join(model_dir, "best_trial.json")
    want = {"trial": best["trial"], "config": train_cfg.to_dict()}
    export_dir = join(model_dir, export.EXPORT_SUBDIR)
    done = None
    if tf.io.gfile.exists(marker):
        with tf.io.gfile.GFile(marker, "r") as f:
            done = json.load(f)
        if done != want:
            tf.io.gfile.rmtree(model_dir)  # another best trial: start that model over
            done = None
    if done and tf.io.gfile.exists(join(export_dir, "saved_model.pb")):
        return {"model_dir": model_dir, "export_dir": export_dir, "reused": True}
    tf.io.gfile.makedirs(model_dir)
    models.write_text(marker, json.dumps(want, indent=1))
    print(f"export-best: retraining trial {best['trial']} for {train_cfg.epochs} epoch(s) "
          f"into {model_dir}", file=sys.stderr)
    summary = training.train(train_cfg)
    path = export.export_model_dir(model_dir)
    return {"model_dir": model_dir, "export_dir": path, "reused": False,
            "train_summary": summary}
