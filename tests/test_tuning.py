"""Hyperparameter search: config/overrides, schedule continuation, failed trials, resume.

The helpers at the top (``tiny_cache``, ``search_raw``) are shared with the other
tuning test files.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from kt_pipeline import search_config
from kt_pipeline.errors import ConfigError

ROWS = 60  # 48 train, 6 validation, 6 test


def write_rows(sample_csv, path, n=ROWS):
    with open(sample_csv, encoding="utf-8") as f:
        lines = f.readlines()[: n + 1]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)
    return str(path)


def build_tiny_cache(sample_csv, tiny_preset, root, n=ROWS):
    """A cache of the first ``n`` sample rows tokenised by the tiny BERT."""
    from kt_pipeline import cache

    csv_path = write_rows(sample_csv, root / "rows.csv", n)
    cache.build_cache(csv_path, str(root / "cache"), preset=tiny_preset, max_length=64,
                      progress=False)
    return str(root / "cache")


@pytest.fixture(scope="module")
def tiny_cache(sample_csv, tiny_preset, tmp_path_factory):
    return build_tiny_cache(sample_csv, tiny_preset, tmp_path_factory.mktemp("tune_cache"))


def search_raw(cache_dir, preset, search_dir, **sections) -> dict:
    """A small search config as YAML data: fast path, short lengths, quiet."""
    raw = {
        "name": "t", "search_dir": str(search_dir), "preset": preset,
        "data": {"cache_dir": cache_dir},
        "tuner": {"type": "random", "max_trials": 2, "max_epochs": 1, "verbose": 0, "seed": 7},
        "space": {"max_seq_length": [16, 32], "batch_size": [16], "warmup_steps": None,
                  "warmup_fraction": [0.0, 0.1], "freeze_body": True,
                  "learning_rate": {"min": 1e-3, "max": 1e-2, "sampling": "log"}},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    return raw


# ------------------------------------------------------------------ config


def test_default_space_is_the_issue_space():
    cfg = search_config.build_config({"data": {"input": "x.csv"}})
    s = cfg.space
    assert (s["learning_rate"].min, s["learning_rate"].max, s["learning_rate"].sampling) == (
        5e-6, 1e-4, "log")
    assert s["warmup_steps"].values == [500, 1000, 1500, 2000]
    assert (s["dropout"].min, s["dropout"].max) == (0.0, 0.5)
    assert s["freeze_body"].values == [True, False]
    assert s["max_seq_length"].values == [64, 128, 256, 512]
    assert s["batch_size"].values == [16, 32, 64]
    assert "warmup_fraction" not in s


def test_overrides_flags_and_space_kinds(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"input": "x.csv"}, "space": {"dropout": 0.1}}))
    cfg = search_config.load_config(str(path), [
        "tuner.max_trials=4", "space.learning_rate.max=1e-4", "space.learning_rate.min=1e-5",
        "space.batch_size=[16,32]", "space.warmup_fraction={min: 0.0, max: 0.2}",
        "train.pooling=mean",
    ])
    assert cfg.tuner.max_trials == 4
    assert cfg.space["learning_rate"].max == 1e-4 and cfg.space["learning_rate"].min == 1e-5
    assert cfg.space["batch_size"].values == [16, 32]
    assert cfg.space["dropout"].kind == "fixed"
    assert cfg.space["warmup_fraction"].kind == "float" and "warmup_steps" not in cfg.space
    assert cfg.base_train_config().pooling == "mean"
    assert cfg.base_train_config().dropout == 0.1


@pytest.mark.parametrize("override, needle", [
    ("space.dropout=1.5", "space.dropout"),
    ("space.nope=1", "nope"),
    ("tuner.type=grid", "tuner.type"),
    ("tuner.max_trials=x", "tuner.max_trials="),
    ("space.max_seq_length=[1024]", "data.max_length"),
    ("space.learning_rate={min: 0, max: 1, sampling: log}", "min > 0"),
    ("bogus.key=1", "unknown section"),
    ("space.learning_rate={min: 1.0e-4, max: 1.0e-3, step: 0}", "step"),
    ("space.dropout={min: 0.0, max: 0.3, step: -0.1}", "step"),
    ("train.pooling=max", "train.pooling"),
    ("tuner.objective=val_f1", "tuner.objective"),
    ("tuner.max_consecutive_failed_trials=0", "tuner.max_consecutive_failed_trials"),
    ("tuner.hyperband_iterations=0", "tuner.hyperband_iterations"),
    ("tuner.early_stopping_patience=-1", "tuner.early_stopping_patience"),
    ("tuner.max_retries_per_trial=-1", "tuner.max_retries_per_trial"),
    ("data.max_train_examples=-5", "data.max_train_examples"),
    ("train.padding=none", "train.padding"),
])
def test_bad_settings_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        search_config.build_config({"data": {"input": "x.csv"}}, [override])


def test_unknown_train_key_lists_only_keys_train_accepts():
    raw = {"data": {"input": "x.csv"}, "train": {"bogus": 1}}
    with pytest.raises(ConfigError, match="unknown key") as e:
        search_config.build_config(raw)
    listed = str(e.value).split("valid keys: ")[1].split(", ")
    assert "pooling" in listed
    for key in listed:  # every key it offers is one that train: then takes
        try:
            search_config.build_config({"data": {"input": "x.csv"},
                                        "train": {key: "__probe__"}})
        except ConfigError as err:
            assert "set elsewhere" not in str(err), key


@pytest.mark.parametrize("override", ["space.dropout=[0, 0.1]",
                                      "space.warmup_fraction=[0, 0.1]"])
def test_int_and_float_choices_register(override):
    """[0, 0.1] is a choice of floats (keras-tuner's Choice takes a single type)."""
    import keras_tuner

    cfg = search_config.build_config({"data": {"input": "x.csv"}}, [override])
    hp = keras_tuner.HyperParameters()
    for p in cfg.space.values():
        p.register(hp)
    name = override.split("=")[0].split(".")[1]
    assert hp.get(name) in (0.0, 0.1) and isinstance(hp.get(name), float)


@pytest.mark.parametrize("override, value", [("space.freeze_body=[true]", True),
                                             ("space.freeze_body=[false]", False),
                                             ("space.freeze_body=[true, false]", None)])
def test_boolean_choices_register_as_booleans(override, value):
    """keras-tuner's Choice stores [True] as 1: best.yaml then said freeze_body: 1."""
    import keras_tuner

    cfg = search_config.build_config({"data": {"input": "x.csv"}}, [override])
    hp = keras_tuner.HyperParameters()
    got = cfg.space["freeze_body"].register(hp)
    assert isinstance(got, bool) and isinstance(hp.get("freeze_body"), bool)
    if value is not None:
        assert got is value


@pytest.mark.parametrize("text, needle", [
    ("space: {dropout: {min: 0.1}}", r"c\.yaml: space\.dropout"),
    ("space: {batch_size: [16, 16]}", r"c\.yaml: space\.batch_size"),
    ("tuner: [1]", r"c\.yaml: tuner must be a mapping"),
])
def test_config_file_errors_name_the_file_and_key(tmp_path, text, needle):
    path = tmp_path / "c.yaml"
    path.write_text("data: {input: x.csv}\n" + text + "\n")
    with pytest.raises(ConfigError, match=needle):
        search_config.load_config(str(path), ["tuner.verbose=0"])


def test_max_trials_with_hyperband_is_reported_as_ignored():
    raw = {"data": {"input": "x.csv"}, "tuner": {"type": "hyperband"}}
    assert search_config.config_warnings(search_config.build_config(raw)) == []
    cfg = search_config.build_config(raw, ["tuner.max_trials=2"])
    [text] = search_config.config_warnings(cfg)
    assert "max_trials=2 is ignored by hyperband" in text
    cfg = search_config.build_config(raw, ["tuner.max_trials=2", "tuner.type=random"])
    assert search_config.config_warnings(cfg) == []


def test_shipped_configs_parse():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in ("demo", "sst2", "nsmc"):
        cfg = search_config.load_config(os.path.join(root, "tuning", f"{name}.yaml"))
        assert cfg.name == name and cfg.tuner.type in search_config.TUNERS
    demo = search_config.load_config(os.path.join(root, "tuning", "demo.yaml"))
    assert demo.space["max_seq_length"].values == [32, 64]


# ------------------------------------------------- schedule continuation


def test_hyperband_continuation_continues_the_schedule(tiny_cache, tiny_preset, tmp_path):
    """A continued trial's first step uses the schedule at initial_epoch * steps, not step 0."""
    from kt_pipeline import optim, tuning, tuning_results

    raw = search_raw(tiny_cache, tiny_preset, tmp_path / "s",
                     tuner={"type": "hyperband", "max_epochs": 3, "factor": 3,
                            "early_stopping_patience": None},
                     space={"warmup_fraction": 0.5, "max_seq_length": 16})
    cfg = search_config.build_config(raw)
    tuning.run_search(cfg)
    rows = tuning_results.load_rows(tuning.project_dir(cfg.search_dir))
    continued = [r for r in rows if r["continues"]]
    assert continued, "Hyperband with max_epochs=3, factor=3 continues at least one trial"
    for row in continued:
        [rec] = tuning_results.load_attempts(
            f"{tuning.project_dir(cfg.search_dir)}/trial_{row['trial']}")
        assert rec["initial_epoch"] >= 1
        lr = row["hyperparameters"]["learning_rate"]
        sched = optim.WarmupDecay(lr, rec["warmup_steps"], rec["total_steps"])
        start = rec["initial_epoch"] * rec["steps_per_epoch"]
        assert rec["first_learning_rate"] == pytest.approx(float(sched(start)), rel=1e-5)
        assert rec["first_learning_rate"] != pytest.approx(float(sched(0)), rel=1e-3)
        # the continued trial trained only the remaining epochs
        assert rec["final_epoch"] == row["epochs"]
        # retraining it (best.yaml, --export-best) counts the epochs it continued from
        assert rec["initial_epoch"] < tuning_results.best_epochs(row, 3) <= row["epochs"]


def test_the_table_counts_the_epochs_a_stopped_trial_ran(tiny_cache, tiny_preset, tmp_path):
    """Early stopping ends a flat Hyperband trial before its tuner/epochs."""
    from kt_pipeline import tuning, tuning_results

    raw = search_raw(tiny_cache, tiny_preset, tmp_path / "s",
                     tuner={"type": "hyperband", "max_epochs": 3, "factor": 3,
                            "early_stopping_patience": 1},
                     space={"learning_rate": 1.0e-9, "max_seq_length": 16})
    cfg = search_config.build_config(raw)
    results = tuning.run_search(cfg)
    stopped = 0
    for row in results["rows"]:
        [rec] = tuning_results.load_attempts(
            f"{tuning.project_dir(cfg.search_dir)}/trial_{row['trial']}")
        assert row["epochs"] == rec["final_epoch"]
        stopped += rec["final_epoch"] < rec["epochs"]
    assert stopped, "a flat objective with patience 1 stops some 3-epoch trial early"


# ------------------------------------------------------------ failed trials


def test_failed_trials_are_recorded_and_the_search_goes_on(tiny_cache, tiny_preset, tmp_path):
    from kt_pipeline import tuning, tuning_results

    raw = search_raw(tiny_cache, tiny_preset, tmp_path / "s",
                     tuner={"max_trials": 4, "max_consecutive_failed_trials": 4, "seed": 3},
                     space={"learning_rate": [1e30, 1e-3]})
    cfg = search_config.build_config(raw)
    results = tuning.run_search(cfg)
    rows = results["rows"]
    assert len(rows) == 4
    failed = [r for r in rows if r["status"] == "FAILED"]
    assert failed and len(failed) < 4
    for r in rows:
        if r["hyperparameters"]["learning_rate"] > 1:
            assert r["status"] == "FAILED" and "loss became nan" in r["reason"]
        else:
            assert r["status"] == "COMPLETED" and r["reason"] == ""
    assert results["best"]["hyperparameters"]["learning_rate"] == 1e-3
    table = open(results["table_md"]).read()
    assert "loss became nan" in table
    assert "failed trials" in tuning_results.format_summary(results)


def test_a_search_whose_every_trial_failed_is_an_error(tiny_cache, tiny_preset, tmp_path):
    """Fewer trials than max_consecutive_failed_trials, all failed: not a success (exit 0)."""
    from kt_pipeline import tuning

    raw = search_raw(tiny_cache, tiny_preset, tmp_path / "s",
                     tuner={"max_trials": 2, "max_consecutive_failed_trials": 3},
                     space={"learning_rate": 1e30})
    with pytest.raises(tuning.SearchFailed, match="every trial failed"):
        tuning.run_search(search_config.build_config(raw))
    assert open(tmp_path / "s" / "results" / "trials.csv").read().count("FAILED") == 2


def test_rows_are_in_numeric_trial_order(tmp_path):
    """A search continued with a larger max_trials has ids '8', '9', '10' (then '05'...)."""
    from kt_pipeline import tuning_results

    for tid in ("8", "9", "10", "11"):
        (tmp_path / f"trial_{tid}").mkdir()
        (tmp_path / f"trial_{tid}" / "trial.json").write_text(json.dumps({
            "trial_id": tid, "status": "COMPLETED", "score": 0.5,
            "hyperparameters": {"values": {"dropout": 0.1}}}))
    rows = tuning_results.load_rows(str(tmp_path))
    assert [r["trial"] for r in rows] == ["8", "9", "10", "11"]


def test_summary_without_a_completed_trial_names_no_best_file():
    from kt_pipeline import tuning_results

    rows = [{"trial": "0", "status": "FAILED", "reason": "loss became nan"}]
    text = tuning_results.format_summary({
        "search_dir": "s", "objective": "val_accuracy", "rows": rows, "best": None,
        "table_md": "s/results/trials.md", "table_csv": "s/results/trials.csv",
        "plots": [], "best_yaml": None})
    assert "no completed trial" in text and "trial 0: loss became nan" in text
    assert "None" not in text


def test_too_many_failures_stop_with_reasons(tiny_cache, tiny_preset, tmp_path):
    from kt_pipeline import tuning

    raw = search_raw(tiny_cache, tiny_preset, tmp_path / "s",
                     tuner={"max_trials": 5, "max_consecutive_failed_trials": 2},
                     space={"learning_rate": 1e30})
    with pytest.raises(tuning.SearchFailed, match="loss became nan"):
        tuning.run_search(search_config.build_config(raw))
    csv_text = open(tmp_path / "s" / "results" / "trials.csv").read()
    assert csv_text.count("FAILED") == 2


# ----------------------------------------------------------------- resume


def _finished_trials(project):
    out = set()
    if not os.path.isdir(project):
        return out
    for name in os.listdir(project):
        path = os.path.join(project, name, "trial.json")
        if name.startswith("trial_") and os.path.exists(path):
            try:
                state = json.load(open(path))
            except ValueError:
                continue
            if state["status"] == "COMPLETED":
                out.add(state["trial_id"])
    return out


def _attempts_by_pid(project):
    from kt_pipeline import tuning_results

    by_pid = {}
    for name in os.listdir(project):
        if name.startswith("trial_"):
            for rec in tuning_results.load_attempts(os.path.join(project, name)):
                by_pid.setdefault(rec["pid"], []).append(rec["trial_id"])
    return by_pid


def test_resume_after_kill_never_repeats_a_finished_trial(tiny_cache, tiny_preset, tmp_path):
    raw = search_raw(tiny_cache, tiny_preset, tmp_path / "s", tuner={"max_trials": 5})
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "kt_pipeline.cli", "tune", "--config", str(config), "--quiet"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    project = str(tmp_path / "s" / "kt")

    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(_finished_trials(project)) < 2 and time.time() < deadline:
            assert first.poll() is None, "the search ended before it could be killed"
            time.sleep(0.1)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    done_before = _finished_trials(project)
    assert 2 <= len(done_before) < 5

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stderr[-3000:]
    assert len(_finished_trials(project)) == 5
    by_pid = _attempts_by_pid(project)
    assert first.pid in by_pid and len(by_pid) == 2  # two processes ran trials
    rerun = [t for pid, ts in by_pid.items() if pid != first.pid for t in ts]
    assert not set(rerun) & done_before, "a finished trial ran again"
    assert sorted(set(rerun) | done_before) == sorted(_finished_trials(project))
    assert "best: trial" in second.stdout

    # A finished search started again runs nothing new.
    attempts = sum(len(v) for v in by_pid.values())
    third = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert third.returncode == 0, third.stderr[-3000:]
    assert sum(len(v) for v in _attempts_by_pid(project).values()) == attempts


def test_restart_starts_over(tiny_cache, tiny_preset, tmp_path):
    from kt_pipeline import tuning

    raw = search_raw(tiny_cache, tiny_preset, tmp_path / "s", tuner={"max_trials": 2})
    tuning.run_search(search_config.build_config(raw))
    raw["tuner"]["max_trials"] = 1
    results = tuning.run_search(search_config.build_config(raw), restart=True)
    assert len(results["rows"]) == 1


def test_a_changed_config_is_refused_in_the_same_search_dir(tiny_cache, tiny_preset,
                                                              tmp_path, capsys):
    """The same search_dir with another space would report the old trials as this one's."""
    from kt_pipeline import cli, tuning

    raw = search_raw(tiny_cache, tiny_preset, tmp_path / "s", tuner={"max_trials": 1})
    tuning.run_search(search_config.build_config(raw))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    argv = ["tune", "--config", str(config), "--quiet"]
    assert cli.main(argv + ["--set", "space.learning_rate=[0.5]"]) == 2
    err = capsys.readouterr().err
    assert "space.learning_rate" in err and "--restart" in err
    assert "Traceback" not in err
    kept = yaml.safe_load(open(tmp_path / "s" / "search_config.yaml"))
    assert kept["space"]["learning_rate"] == raw["space"]["learning_rate"]
    # a larger budget continues the same search, the cache named by a relative path too
    relative = os.path.relpath(tiny_cache)
    same_lr = "space.learning_rate={min: 1e-3, max: 1e-2, sampling: log}"  # text in YAML 1.1
    assert cli.main(argv + ["--max-trials", "2", "--cache", relative, "--set", same_lr]) == 0
    assert "2 trial(s)" in capsys.readouterr().out


@pytest.mark.parametrize("root", ["local", "ram"])
def test_keras_tuner_state_files_are_replaced_atomically(tmp_path, root, monkeypatch):
    """A write that dies half-way leaves the previous oracle.json/trial.json intact."""
    import keras_tuner
    import tensorflow as tf

    from kt_pipeline import tuning  # noqa: F401  (installs the atomic writer)

    base = str(tmp_path) if root == "local" else f"ram://atomic-{os.getpid()}"
    tf.io.gfile.makedirs(base)
    path = f"{base}/oracle.json"
    keras_tuner.src.utils.save_json(path, {"trial": 1})
    keras_tuner.src.utils.save_json(path, {"trial": 2})  # replaces (ram:// would append)
    assert keras_tuner.src.utils.load_json(path) == {"trial": 2}

    def dies(self, data):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(tf.io.gfile.GFile, "write", dies)
    with pytest.raises(KeyboardInterrupt):
        keras_tuner.src.utils.save_json(path, {"trial": 3})
    monkeypatch.undo()
    assert keras_tuner.src.utils.load_json(path) == {"trial": 2}


def test_a_trial_killed_after_it_finished_is_not_run_again(tiny_cache, tiny_preset, tmp_path):
    # keras-tuner writes trial.json (COMPLETED) before oracle.json, and that
    # oracle.json still lists the trial as ongoing: a kill in between left the trial
    # to be retried on resume. Recreate that state on disk and resume.
    from kt_pipeline import tuning

    raw = search_raw(tiny_cache, tiny_preset, tmp_path / "s", tuner={"max_trials": 2})
    tuning.run_search(search_config.build_config(raw))
    project = str(tmp_path / "s" / "kt")
    oracle_path = os.path.join(project, "oracle.json")
    state = json.load(open(oracle_path))
    last = state["end_order"].pop()
    state["ongoing_trials"] = {"tuner0": last}
    json.dump(state, open(oracle_path, "w"))
    assert len(_finished_trials(project)) == 2

    raw["tuner"]["max_trials"] = 3
    results = tuning.run_search(search_config.build_config(raw))
    runs = [t for ts in _attempts_by_pid(project).values() for t in ts]
    assert sorted(runs).count(last) == 1, runs
    assert len(runs) == 3 and len(_finished_trials(project)) == 3
    assert len(results["rows"]) == 3
