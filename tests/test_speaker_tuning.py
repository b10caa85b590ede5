"""`kt-pipeline tune` for the speaker-clustering task: config, a real search, resume, failures.

Reuses test_speakers.py's synthetic books and tiny-BERT ClusterConfig (``base_cfg``).
"""

import dataclasses
import os

import pytest
import yaml

from kt_pipeline import cli, search_config
from kt_pipeline.errors import ConfigError, DataError, KtError
from test_speakers import base_cfg  # noqa: F401  (module fixture; tests/ is on sys.path)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISSUE_KEYS = {"lam", "sigma", "mu_p", "mu_n", "margin", "window", "projection_hidden",
              "embedding_dim", "learning_rate", "positives"}


def cluster_raw(base, search_dir, **sections) -> dict:
    """A speaker search over ``base`` (a ClusterConfig): 4 steps a trial, small space."""
    skip = set(search_config.CLUSTER_OWNED) | set(search_config.CLUSTER_SPACE)
    fixed = {k: v for k, v in dataclasses.asdict(base).items() if k not in skip}
    raw = {
        "name": "spk", "task": "speaker_clustering", "search_dir": str(search_dir),
        "preset": base.preset, "cluster": {**fixed, "steps": 4, "eval_every": 4},
        "tuner": {"type": "random", "max_trials": 2, "seed": 3, "verbose": 0},
        "space": {"window": [0, 2], "projection_hidden": ["16", "16,16", ""],
                  "embedding_dim": [8, 16], "lam": {"min": 0.5, "max": 2.0, "sampling": "log"},
                  "learning_rate": 1e-3},
    }
    for key, value in sections.items():
        raw[key].update(value)
    return raw


def _attempts(search_dir) -> dict:
    from kt_pipeline import tuning, tuning_results

    project = tuning.project_dir(str(search_dir))
    return {n: len(tuning_results.load_attempts(os.path.join(project, n)))
            for n in os.listdir(project) if n.startswith("trial_")}


# ------------------------------------------------------------------ config


def test_shipped_pdnc_config_parses():
    cfg = search_config.load_config(os.path.join(ROOT, "tuning", "pdnc.yaml"))
    assert cfg.task == "speaker_clustering" and cfg.name == "pdnc"
    assert cfg.tuner.objective == "val_ari" and cfg.tuner.type == "bayesian"
    assert ISSUE_KEYS <= set(cfg.space)
    assert cfg.space["projection_hidden"].values == ["1024", "1024,2048", ""]
    assert cfg.cluster.data == "../shared/data/pdnc" and cfg.cluster.monitor == "ari"


def test_defaults_and_hyperband_steps():
    from kt_pipeline import speaker_tuning

    cfg = search_config.build_config({"task": "speaker_clustering", "preset": "p"},
                                     ["cluster.steps=90", "space.lam=[1, 2]"])
    assert (cfg.tuner.type, cfg.tuner.objective) == ("bayesian", "val_ari")
    # the issue's keys plus the batch balancing ones (balance, speaker_power)
    assert set(cfg.space) == ISSUE_KEYS | {"balance", "speaker_power"} and cfg.cluster.preset == "p"
    assert cfg.space["lam"].values == [1.0, 2.0]  # a float field: one type per Choice
    cfg.tuner.max_epochs = 3
    assert speaker_tuning.trial_overrides(cfg, {"lam": 2.0, "tuner/epochs": 1}) == {
        "lam": 2.0, "steps": 30}
    assert speaker_tuning.trial_overrides(cfg, {"tuner/epochs": 3, "steps": 60}) == {"steps": 60}


@pytest.mark.parametrize("override, needle", [
    ("tuner.objective=val_accuracy", "tuner.objective"),
    ("space.sigma.max=2", "space.sigma"),
    ("space.window=[0,1.5]", "space.window"),
    ("space.nope=1", "nope"),
    ("cluster.model_dir=x", "cluster.model_dir"),
    ("cluster.lam=2", "cluster.lam"),
    ("cluster.final=relu", "final"),
    ("data.cache_dir=x", "data.cache_dir"),
])
def test_bad_settings_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        search_config.build_config({"task": "speaker_clustering"}, [override])


def test_export_best_is_refused(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"task": "speaker_clustering", "search_dir": str(tmp_path)}))
    assert cli.main(["tune", "--config", str(path), "--export-best"]) == 2
    assert "--export-best is for classification" in capsys.readouterr().err


# ------------------------------------------------------------------ search


@pytest.fixture(scope="module")
def searched(base_cfg, tmp_path_factory):  # noqa: F811
    from kt_pipeline import tuning

    raw = cluster_raw(base_cfg, tmp_path_factory.mktemp("spk_tune") / "s")
    return raw, tuning.run_search(search_config.build_config(raw))


def test_random_search_writes_table_and_best_yaml(searched):
    from kt_pipeline import tuning_results

    _, results = searched
    rows = results["rows"]
    assert [r["status"] for r in rows] == ["COMPLETED", "COMPLETED"]
    header = open(results["table_csv"]).readline().strip().split(",")
    assert header[:5] == ["trial", "status", "val_ari", "steps", "seconds"]
    assert {"lam", "window", "projection_hidden", "embedding_dim"} <= set(header)
    best = yaml.safe_load(open(results["best_yaml"]))
    assert best["task"] == "speaker_clustering"
    assert best["objective"]["name"] == "val_ari" and best["objective"]["direction"] == "max"
    assert best["objective"]["value"] == pytest.approx(max(r["objective"] for r in rows))
    assert -1.0 <= best["objective"]["value"] <= 1.0
    assert best["steps"] == 4 and best["best_step"] == 4
    assert best["cluster_config"]["monitor"] == "ari"
    assert os.path.exists(os.path.join(best["model_dir"], "best.weights.h5"))
    assert all(os.path.exists(p) for p in results["plots"])
    summary = tuning_results.format_summary(results)
    assert "val_ari=" in summary and "at step 4 of 4" in summary


def test_trial_values_reach_the_cluster_config(searched):
    from kt_pipeline import speaker_tuning, speakers

    _, results = searched
    for row in results["rows"]:
        hp = row["hyperparameters"]
        cfg = speakers.load_config(speaker_tuning.trial_model_dir(results["search_dir"],
                                                                  row["trial"]))
        assert (cfg.window, cfg.embedding_dim) == (hp["window"], hp["embedding_dim"])
        assert cfg.lam == pytest.approx(hp["lam"]) and cfg.sigma == pytest.approx(hp["sigma"])
        assert (cfg.projection_hidden or "") == hp["projection_hidden"]
        assert (cfg.learning_rate, cfg.steps, cfg.monitor) == (1e-3, 4, "ari")


def test_rerun_continues_without_repeating_finished_trials(searched):
    from kt_pipeline import tuning

    raw, _ = searched
    before = _attempts(raw["search_dir"])
    assert sorted(before.values()) == [1, 1]
    tuning.run_search(search_config.build_config(raw))  # finished: nothing runs again
    assert _attempts(raw["search_dir"]) == before
    more = tuning.run_search(search_config.build_config(raw, ["tuner.max_trials=3"]))
    after = _attempts(raw["search_dir"])
    assert len(after) == 3 and all(after[t] == 1 for t in before)  # only the new trial ran
    assert [r["status"] for r in more["rows"]] == ["COMPLETED"] * 3


# ------------------------------------------------------------- failures


def test_failures_restart_and_bad_data(base_cfg, tmp_path, monkeypatch):  # noqa: F811
    """With a stand-in for the training: failed trials, --restart, a fatal data error."""
    from kt_pipeline import speakers, tuning

    calls = []

    def fake_fit(values, base, model_dir, log):
        calls.append(values)
        if len(calls) % 2:
            raise KtError("loss became nan at step 3; lower learning_rate")
        return {"val_ari": 0.25, "val_v_measure": 0.5, "best_step": 4, "model_dir": model_dir}

    monkeypatch.setattr(speakers, "build_and_fit", fake_fit)
    raw = cluster_raw(base_cfg, tmp_path / "s", tuner={"max_trials": 4})
    results = tuning.run_search(search_config.build_config(raw))
    assert [r["status"] for r in results["rows"]] == ["FAILED", "COMPLETED"] * 2
    assert results["rows"][0]["reason"] == "loss became nan at step 3; lower learning_rate"
    assert "loss became nan" in open(results["table_md"]).read()
    assert results["best"]["objective"] == 0.25

    with pytest.raises(tuning.SearchFailed, match="every trial failed"):
        tuning.run_search(search_config.build_config(raw, ["tuner.max_trials=1"]),
                          restart=True)
    assert len(_attempts(raw["search_dir"])) == 1
    assert not os.path.exists(tmp_path / "s" / "best.yaml")  # trial 0 failed: no best

    def bad_data(*args, **kwargs):
        raise DataError("quotes.csv: the validation split has no quotes")

    monkeypatch.setattr(speakers, "build_and_fit", bad_data)
    raw = cluster_raw(base_cfg, tmp_path / "s2")
    with pytest.raises(DataError, match="no quotes"):
        tuning.run_search(search_config.build_config(raw))
