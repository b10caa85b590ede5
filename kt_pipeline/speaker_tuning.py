"""Hyperparameter search for the speaker-clustering task (``task: speaker_clustering``).

:class:`SpeakerHyperModel` declares a space over :class:`kt_pipeline.speakers.ClusterConfig`
fields (loss weights, window, projection sizes, learning rate...) and runs each trial
with :func:`kt_pipeline.speakers.build_and_fit`: the search's fixed ``cluster``
settings plus the trial's values, validation ARI as the checkpoint monitor, and
``<search_dir>/kt/trial_<id>/model/`` as the model directory (``config.json``,
``best.weights.h5``; ``kt-pipeline cluster evaluate --model-dir`` reads it). A trial
reports ``val_ari`` (the objective, maximised) and ``val_v_measure``. The tuners,
attempt records, resume and results are those of :mod:`kt_pipeline.tuning`.

Budget: ``cluster.steps`` per trial. With Hyperband, a trial given ``tuner/epochs`` of
``tuner.max_epochs`` trains ``round(steps * epochs / max_epochs)`` steps, from scratch
(no weights carried between rounds), so Bayesian (the default) or random search is
usually the better use of a small budget.

Failures: a NaN loss or running out of memory fails the trial (recorded with its
reason; the search goes on); bad data or settings stop the search with their message.

Example:

>>> from kt_pipeline import search_config, speaker_tuning
>>> cfg = search_config.build_config({"task": "speaker_clustering", "cluster": {"steps": 300},
...                                   "tuner": {"type": "hyperband", "max_epochs": 3}})
>>> speaker_tuning.trial_overrides(cfg, {"lam": 2.0, "tuner/epochs": 1, "tuner/round": 0})
{'lam': 2.0, 'steps': 100}
>>> from kt_pipeline import tuning
>>> results = tuning.run_search(search_config.load_config("tuning/pdnc.yaml"))  # doctest: +SKIP
>>> results["objective"], results["best_yaml"]                                  # doctest: +SKIP
('val_ari', 'runs/tune/pdnc/best.yaml')
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import keras_tuner  # noqa: E402
import tensorflow as tf  # noqa: E402

from kt_pipeline import speakers, tuning  # noqa: E402
from kt_pipeline.errors import KtError  # noqa: E402

MODEL_SUBDIR = "model"
PLOT_KEYS = ("learning_rate", "lam", "sigma", "window")  # objective_vs_<key>.png


def trial_model_dir(search_dir: str, trial_id: str) -> str:
    return tuning.join(tuning.trial_dir(search_dir, trial_id), MODEL_SUBDIR)


def trial_overrides(cfg, values: dict) -> dict:
    """The ClusterConfig overrides of one trial: its values, and Hyperband's step budget."""
    out = {k: v for k, v in values.items() if not k.startswith("tuner/")}
    epochs = values.get("tuner/epochs")
    if epochs is not None:
        full = int(out.get("steps", cfg.cluster.steps))
        out["steps"] = max(1, round(full * int(epochs) / int(cfg.tuner.max_epochs)))
    return out


class SpeakerHyperModel(keras_tuner.HyperModel):
    """Declares the space; :meth:`run_trial` trains one speaker model and scores it.

    ``last_fit`` describes the latest trial (steps, best_step, val_v_measure, model_dir)
    for the attempt records and the results table.
    """

    def __init__(self, cfg, verbose: int = 1):
        super().__init__(name="speaker_clustering")
        self.cfg, self.verbose = cfg, verbose
        self.last_fit: dict = {}

    def declare_hyperparameters(self, hp):
        for p in self.cfg.space.values():
            p.register(hp)

    def build(self, hp):
        raise NotImplementedError("speaker trials run through run_trial, not build/fit")

    def run_trial(self, trial, trial_dir: str) -> dict:
        values = trial_overrides(self.cfg, trial.hyperparameters.values)
        model_dir = tuning.join(trial_dir, MODEL_SUBDIR)
        self.last_fit = {"steps": int(values.get("steps", self.cfg.cluster.steps)),
                         "model_dir": model_dir}
        log = print if self.verbose else (lambda *_: None)
        keras.backend.clear_session()  # free the previous trial's model and graphs
        try:
            out = speakers.build_and_fit(values, base=self.cfg.cluster, model_dir=model_dir,
                                         log=log)
        except KtError as e:
            if type(e) is KtError:  # the loss became NaN: this trial's values
                raise keras_tuner.errors.FailedTrialError(str(e)) from None
            raise keras_tuner.errors.FatalError(str(e)) from e  # data/settings: every trial
        except tf.errors.ResourceExhaustedError as e:
            first = (e.message or str(e)).strip().splitlines()[0][:300]
            raise keras_tuner.errors.FailedTrialError(f"out of memory: {first}") from None
        self.last_fit.update(best_step=out["best_step"], val_v_measure=out["val_v_measure"])
        return {"val_ari": out["val_ari"], "val_v_measure": out["val_v_measure"]}


def best_doc(cfg, best: dict, direction: str) -> dict:
    """``best.yaml`` of a speaker search: the trial, its scores, model dir and ClusterConfig."""
    model_dir = trial_model_dir(cfg.search_dir, best["trial"])
    try:
        cluster = speakers.load_config(model_dir).to_dict()
    except KtError:
        cluster = None  # the trial's model dir is gone
    return {
        "search": cfg.name,
        "task": cfg.task,
        "trial": best["trial"],
        "objective": {"name": cfg.tuner.objective, "direction": direction,
                      "value": float(best["objective"])},
        "steps": best.get("steps"),
        "best_step": best.get("best_step"),
        "hyperparameters": best["hyperparameters"],
        "model_dir": model_dir,
        "cluster_config": cluster,
    }
