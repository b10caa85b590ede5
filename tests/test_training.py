"""`train` / `evaluate` end to end on the tiny BERT: model dir contents, ram://, resume."""

import csv
import io
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import keras
import tensorflow as tf

from kt_pipeline import cli, evaluate, optim, training
from kt_pipeline.config import TrainConfig, apply_overrides
from kt_pipeline.errors import ConfigError, KtError
from kt_pipeline.strategy import StrategyError

FAST = dict(batch_size=16, max_seq_length=32, learning_rate=3e-3, pooling="mean", strategy="cpu")


def read_history(path):
    with tf.io.gfile.GFile(path) as f:
        return list(csv.DictReader(io.StringIO(f.read())))


def test_train_and_evaluate_on_ram_filesystem(demo_cache, capsys):
    model_dir = "ram://test_training/run1"
    rc = cli.main(["train", "--cache", demo_cache, "--model-dir", model_dir, "--epochs", "2",
                   "--batch-size", "16", "--max-seq-length", "32", "--pooling", "mean",
                   "--strategy", "cpu", "--set", "learning_rate=3e-3", "--set", "warmup_fraction=0.1"])
    assert rc == 0
    files = set(tf.io.gfile.listdir(model_dir))
    assert {"config.json", "labels.json", "best.keras", "history.csv", "train_summary.json"} <= files
    assert "backup" not in files and "backup/" not in files  # removed after a finished run
    assert tf.io.gfile.glob(f"{model_dir}/logs/train/*tfevents*")
    config = json.loads(tf.io.gfile.GFile(f"{model_dir}/config.json").read())
    assert config["learning_rate"] == 3e-3 and config["pooling"] == "mean"
    assert json.loads(tf.io.gfile.GFile(f"{model_dir}/labels.json").read()) == ["negative", "positive"]
    summary = json.loads(tf.io.gfile.GFile(f"{model_dir}/train_summary.json").read())
    assert summary["steps_per_epoch"] == 20 and summary["total_steps"] == 40
    assert summary["warmup_steps"] == 4 and summary["initial_epoch"] == 0
    rows = read_history(f"{model_dir}/history.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert float(rows[1]["loss"]) < float(rows[0]["loss"])  # it learns something
    assert "best val_accuracy=" in capsys.readouterr().out

    rc = cli.main(["evaluate", "--model-dir", model_dir])
    out = capsys.readouterr().out
    assert rc == 0 and "macro_f1" in out and "roc_auc" in out
    results = json.loads(tf.io.gfile.GFile(f"{model_dir}/results.json").read())["test"]
    assert results["examples"] == 40
    assert sum(map(sum, results["confusion_matrix"])) == 40
    assert 0.0 <= results["accuracy"] <= 1.0 and 0.0 <= results["roc_auc"] <= 1.0
    png = tf.io.gfile.GFile(f"{model_dir}/confusion_matrix_test.png", "rb").read()
    assert png.startswith(b"\x89PNG")


KILL_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import keras
    from kt_pipeline import training
    from kt_pipeline.config import TrainConfig

    class KillAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                sys.stdout.flush()
                os._exit(17)  # like a preemption: no cleanup, no on_train_end

    training.train(TrainConfig(**json.loads(sys.argv[1])), extra_callbacks=[KillAfterFirstEpoch()])
""")


def test_killed_run_resumes_at_the_next_epoch(demo_cache, tmp_path):
    model_dir = str(tmp_path / "run")
    cfg = TrainConfig(cache_dir=demo_cache, model_dir=model_dir, epochs=3, warmup_steps=5,
                      max_train_examples=64, **FAST)  # 4 steps per epoch
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, json.dumps(cfg.to_dict())],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 17, proc.stderr[-3000:]
    first = read_history(f"{model_dir}/history.csv")
    assert [int(r["epoch"]) for r in first] == [0]
    assert tf.io.gfile.exists(f"{model_dir}/backup")

    summary = training.train(cfg, verbose=0)
    assert summary["initial_epoch"] == 1 and summary["epochs_run_this_time"] == 2
    rows = read_history(f"{model_dir}/history.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert rows[0] == first[0]  # the killed run's epoch is kept, not redone
    # The optimizer state came back too: after epoch 2 the schedule is at step 2 * 4.
    schedule = optim.WarmupDecay(cfg.learning_rate, 5, 12)
    assert float(rows[1]["lr"]) == pytest.approx(float(schedule(8)), rel=1e-5)
    assert not tf.io.gfile.exists(f"{model_dir}/backup")


def test_tpu_strategy_rejects_local_paths_before_building_anything(demo_cache, tmp_path):
    model_dir = str(tmp_path / "never_created")
    cfg = TrainConfig(cache_dir=demo_cache, model_dir=model_dir, strategy="tpu")
    start = time.time()
    with pytest.raises(StrategyError, match="gs://") as err:
        training.train(cfg)
    assert time.time() - start < 5
    assert "cache_dir" in str(err.value) and "model_dir" in str(err.value)
    assert not os.path.exists(model_dir)


def test_cli_reports_tpu_path_error_without_traceback(demo_cache, tmp_path, capsys):
    rc = cli.main(["train", "--cache", demo_cache, "--model-dir", str(tmp_path / "x"),
                   "--strategy", "tpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err and "gs://" in err and "Traceback" not in err


def test_make_datasets_static_shapes_and_step_counts(demo_cache):
    from kt_pipeline import reader

    manifest = reader.load_manifest(demo_cache)
    cfg = TrainConfig(cache_dir=demo_cache, batch_size=24, max_seq_length=40, padding="bucket")
    data = training.make_datasets(cfg, manifest)
    assert (data.train_examples, data.validation_examples) == (320, 40)
    assert data.steps_per_epoch == 14 and data.validation_steps is None  # ceil(320 / 24)
    fixed = training.make_datasets(cfg, manifest, static_shapes=True)
    assert fixed.steps_per_epoch == 13 and fixed.validation_steps == 1  # full batches only
    for features, labels in fixed.train.take(15):  # repeats past one epoch
        assert features["token_ids"].shape == (24, 40) and labels.shape == (24,)
    capped = training.make_datasets(TrainConfig(cache_dir=demo_cache, batch_size=16,
                                                max_train_examples=50), manifest)
    assert capped.train_examples == 50 and capped.steps_per_epoch == 4


def test_nan_guard_names_the_step_and_the_fixes():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.ones((8, 2), "float32")
    x[5] = np.nan  # batch 3 (of 4) has a NaN
    guard = training.NaNGuard(steps_per_epoch=4)
    model.fit(x, np.zeros(8, "int32"), batch_size=2, epochs=3, callbacks=[guard],
              shuffle=False, verbose=0)
    assert guard.failed_at[:2] == (0, 3)
    msg = guard.message(TrainConfig(learning_rate=1e-4, mixed_precision=True))
    assert "step 3" in msg and "learning_rate" in msg and "clipnorm" in msg and "float32" in msg


def test_bad_settings_fail_before_training(demo_cache):
    with pytest.raises(ConfigError, match="padding"):
        training.train(TrainConfig(cache_dir=demo_cache, padding="ragged"))
    from kt_pipeline import reader

    with pytest.raises(ConfigError, match="batch_size"):  # no full batch for a TPU
        training.make_datasets(TrainConfig(cache_dir=demo_cache, batch_size=1000),
                               reader.load_manifest(demo_cache), static_shapes=True)
    with pytest.raises(KtError, match="not found|manifest"):
        training.train(TrainConfig(cache_dir="/nonexistent/cache", strategy="cpu"))
    with pytest.raises(KtError, match="model dir not found"):
        evaluate.evaluate("/nonexistent/run")


def test_cli_settings_order_defaults_yaml_flags_set(tmp_path):
    from kt_pipeline.commands import train as train_cmd
    import argparse

    yaml_path = tmp_path / "train.yaml"
    yaml_path.write_text("cache_dir: c\nmodel_dir: m\nepochs: 5\nbatch_size: 8\npooling: mean\n")
    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    args = parser.parse_args(["--config", str(yaml_path), "--epochs", "2", "--freeze-body",
                              "--set", "epochs=4", "--set", "dropout=0.2"])
    cfg = train_cmd.resolve_config(args)
    assert (cfg.cache_dir, cfg.epochs, cfg.batch_size, cfg.pooling) == ("c", 4, 8, "mean")
    assert cfg.freeze_body is True and cfg.dropout == 0.2 and cfg.mixed_precision is False
    with pytest.raises(ConfigError, match="--cache"):
        train_cmd.resolve_config(parser.parse_args(["--model-dir", "m"]))


def test_compute_metrics_against_hand_counts():
    res = evaluate.compute_metrics([0, 0, 1, 1, 2], [[.9, .05, .05], [.2, .7, .1], [.1, .8, .1],
                                                     [.3, .6, .1], [.1, .1, .8]], ["a", "b", "c"])
    assert res["accuracy"] == pytest.approx(4 / 5)
    assert res["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]
    assert res["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert res["macro_recall"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert res["roc_auc"] is None  # only for binary tasks
    assert "macro_f1" in evaluate.format_table({**res, "split": "test"})


def test_mixed_precision_run_keeps_float32_logits_and_restores_policy(demo_cache):
    model_dir = "ram://test_training/bf16"
    cfg = TrainConfig(cache_dir=demo_cache, model_dir=model_dir, epochs=1, mixed_precision=True,
                      max_train_examples=32, padding="dynamic", **FAST)
    summary = training.train(cfg, verbose=0)
    assert summary["policy"] == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"  # restored afterwards
    from kt_pipeline import models

    model = models.load_classifier(model_dir)
    ids = np.array([[2, 30, 31, 3, 0]], "int32")
    out = model({"token_ids": ids, "padding_mask": ids != 0})
    assert out.dtype == tf.float32 and np.all(np.isfinite(out.numpy()))


def test_varying_batch_shapes_do_not_retrace_the_train_step(demo_cache, tiny_preset):
    """Bucket/dynamic padding give batches of several widths; the train step must not be
    traced once per width (each trace costs seconds, and with XLA a compile). Nor twice:
    an optimizer built inside the first trace makes tf.function trace again."""
    from kt_pipeline import encoders, models, reader

    cfg = TrainConfig(cache_dir=demo_cache, batch_size=8, max_seq_length=64, padding="bucket")
    data = training.make_datasets(cfg, reader.load_manifest(demo_cache))
    widths = {int(f["token_ids"].shape[1]) for f, _ in data.train.take(data.steps_per_epoch)}
    assert len(widths) >= 4, widths  # several shapes, or the test proves nothing

    model = models.build_classifier(encoders.load_backbone(tiny_preset), 2)
    training.compile_classifier(model, optim.build_optimizer(1e-3, 0, 100))
    traces = []
    step = model.train_step
    model.train_step = lambda batch: traces.append(1) or step(batch)  # runs only when tracing
    model.fit(data.train, steps_per_epoch=data.steps_per_epoch, epochs=1, verbose=0, shuffle=False)
    assert len(traces) == 1, f"{len(traces)} traces for widths {sorted(widths)}"


@pytest.mark.parametrize("override", ["learning_rate=null", "dropout=", "epochs=~"])
def test_null_for_a_required_setting_is_a_user_error(override, tmp_path, capsys):
    with pytest.raises(ConfigError, match=override.split("=")[0] + "=null: expected"):
        apply_overrides(TrainConfig(), [override])
    rc = cli.main(["train", "--cache", str(tmp_path / "c"), "--model-dir", str(tmp_path / "m"),
                   "--set", override])
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err and "Traceback" not in err
    # Optional settings still take null, and a text setting the empty string.
    cfg = apply_overrides(TrainConfig(warmup_fraction=0.1), ["warmup_fraction=null"])
    assert cfg.warmup_fraction is None
    from kt_pipeline import search_config

    pdnc = os.path.join(os.path.dirname(__file__), "..", "tuning", "pdnc.yaml")
    space = search_config.load_config(pdnc).space  # projection_hidden: [..., ""]
    assert "" in space["projection_hidden"].values


def test_unknown_monitor_is_refused_before_training(demo_cache, tmp_path, capsys):
    # A monitor that fit never logs would save no best.keras, print "best val_f1=nan"
    # and exit 0, leaving a model dir that evaluate and export cannot use.
    model_dir = tmp_path / "run"
    rc = cli.main(["train", "--cache", demo_cache, "--model-dir", str(model_dir), "--epochs", "1",
                   "--max-train-examples", "16", "--batch-size", "16", "--strategy", "cpu",
                   "--set", "monitor=val_f1"])
    err = capsys.readouterr().err
    assert rc == 2 and "monitor='val_f1'" in err and "val_accuracy" in err
    assert not model_dir.exists()


def test_resuming_with_other_settings_is_refused(demo_cache, tmp_path):
    # Before: the killed run's weights came back, Keras skipped its optimizer state
    # ("Skipping variable loading for optimizer") and the schedule restarted at step 0.
    model_dir = str(tmp_path / "run")
    cfg = TrainConfig(cache_dir=demo_cache, model_dir=model_dir, epochs=2,
                      max_train_examples=32, **FAST)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, json.dumps(cfg.to_dict())],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 17, proc.stderr[-3000:]
    config_before = tf.io.gfile.GFile(f"{model_dir}/config.json").read()
    other = TrainConfig(**{**cfg.to_dict(), "freeze_body": True, "strategy": "auto"})
    with pytest.raises(ConfigError, match=r"backup.*freeze_body False -> True") as err:
        training.train(other, verbose=0)
    assert "strategy" not in str(err.value)  # where it runs may change
    assert tf.io.gfile.GFile(f"{model_dir}/config.json").read() == config_before
    assert training.train(cfg, verbose=0)["initial_epoch"] == 1  # the same settings resume


def test_evaluate_refuses_a_cache_of_another_tokenizer(demo_cache, sample_csv, tmp_path,
                                                       capsys):
    # Before: the other vocabulary's ids went into the embedding (a GatherV2 traceback when
    # out of range, else metrics computed on meaningless ids).
    from kt_pipeline import cache, hf_fixtures

    model_dir = str(tmp_path / "run")
    training.train(TrainConfig(cache_dir=demo_cache, model_dir=model_dir, epochs=1,
                               max_train_examples=16, **FAST), verbose=0)
    other = str(tmp_path / "roberta_cache")
    preset = hf_fixtures.write_hf_checkpoint(str(tmp_path / "roberta"), "roberta")
    cache.build_cache(sample_csv, other, preset=preset, max_length=32, progress=False)
    rc = cli.main(["evaluate", "--model-dir", model_dir, "--cache", other])
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err and other in err and "--preset" in err
    assert not tf.io.gfile.exists(f"{model_dir}/results.json")
    assert cli.main(["evaluate", "--model-dir", model_dir, "--cache", demo_cache]) == 0


def test_a_cache_with_one_label_names_the_real_flag(sample_csv, tiny_preset, tmp_path, capsys):
    import argparse

    from kt_pipeline import cache
    from kt_pipeline.commands import build_tfrecords

    rows = [line for line in open(sample_csv, encoding="utf-8").read().splitlines()
            if ",negative," in line]
    one = tmp_path / "negative.csv"
    one.write_text("text,label,source\n" + "\n".join(rows) + "\n", encoding="utf-8")
    cache_dir = str(tmp_path / "cache")
    cache.build_cache(str(one), cache_dir, preset=tiny_preset, max_length=32, progress=False)
    rc = cli.main(["train", "--cache", cache_dir, "--model-dir", str(tmp_path / "run"),
                   "--strategy", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "['negative']" in err
    flags = [f for f in err.split() if f.startswith("--")]
    assert flags  # every flag it suggests exists in build-tfrecords
    parser = argparse.ArgumentParser()
    build_tfrecords.add_arguments(parser)
    known = {s for a in parser._actions for s in a.option_strings}
    assert all(f.strip("(),.") in known for f in flags), flags


@pytest.mark.parametrize("value", ["0", "-5"])
def test_max_train_examples_below_one_is_refused(demo_cache, tmp_path, value, capsys):
    # Before: 0 silently trained on every example; -5 blamed batch_size ("larger than
    # the -5 train examples").
    rc = cli.main(["train", "--cache", demo_cache, "--model-dir", str(tmp_path / "run"),
                   "--epochs", "1", "--strategy", "cpu", "--max-train-examples", value])
    err = capsys.readouterr().err
    assert rc == 2 and f"max_train_examples={value}" in err
    assert not (tmp_path / "run").exists()


def test_a_diverged_epoch_saves_no_best_checkpoint(demo_cache, tmp_path):
    # Before: val_accuracy stayed finite (argmax of NaN logits), so best.keras was saved
    # with NaN weights, and evaluate/export then worked from a broken model.
    model_dir = str(tmp_path / "run")
    cfg = TrainConfig(cache_dir=demo_cache, model_dir=model_dir, epochs=1, batch_size=16,
                      max_train_examples=64, max_seq_length=32, strategy="cpu",
                      learning_rate=1e9, clipnorm=None)
    with pytest.raises(training.TrainingDiverged):
        training.train(cfg, verbose=0)
    rows = read_history(f"{model_dir}/history.csv")
    assert rows and not np.isfinite(float(rows[0]["loss"]))  # it did diverge in epoch 1
    assert not tf.io.gfile.exists(f"{model_dir}/best.keras")


def test_evaluate_reports_a_model_with_nan_weights(demo_cache, tmp_path, capsys):
    # Before: a ValueError traceback from scikit-learn's roc_auc ("Input contains NaN"),
    # or (more than two labels) metrics of argmax(NaN) = label 0 for every example.
    model_dir = str(tmp_path / "run")
    training.train(TrainConfig(cache_dir=demo_cache, model_dir=model_dir, epochs=1,
                               max_train_examples=16, **FAST), verbose=0)
    from kt_pipeline import models

    model = models.load_classifier(model_dir)
    logits = model.get_layer("logits")
    kernel, bias = logits.get_weights()
    logits.set_weights([kernel * np.nan, bias])
    os.remove(f"{model_dir}/best.keras")
    model.save(f"{model_dir}/best.keras")
    rc = cli.main(["evaluate", "--model-dir", model_dir])
    err = capsys.readouterr().err
    assert rc == 2 and "NaN" in err and "best.keras" in err and "Traceback" not in err
    assert not tf.io.gfile.exists(f"{model_dir}/results.json")


def test_set_may_give_the_cache_and_model_dir(tmp_path):
    # `--set` takes any TrainConfig field (README); cache_dir/model_dir were refused there.
    import argparse

    from kt_pipeline.commands import train as train_cmd

    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    cfg = train_cmd.resolve_config(parser.parse_args(
        ["--set", "cache_dir=c", "--set", "model_dir=m", "--epochs", "2"]))
    assert (cfg.cache_dir, cfg.model_dir, cfg.epochs) == ("c", "m", 2)
    with pytest.raises(ConfigError, match="--model-dir"):
        train_cmd.resolve_config(parser.parse_args(["--set", "cache_dir=c"]))


@pytest.mark.parametrize("flag,value", [("--batch-size", "0"), ("--max-seq-length", "0"),
                                        ("--max-seq-length", "2")])
def test_evaluate_refuses_sizes_it_cannot_use(flag, value, tmp_path, capsys):
    # Before: 0 silently fell back to the training value, 2 evaluated on [CLS] [SEP] only.
    rc = cli.main(["evaluate", "--model-dir", str(tmp_path), flag, value])
    err = capsys.readouterr().err
    assert rc == 2 and f"{flag} {value}" in err


def test_a_new_run_in_a_model_dir_drops_the_old_runs_evaluation(demo_cache, tmp_path, capsys):
    # Before: results.json and the confusion matrix of the replaced model stayed, as if
    # they described the new one.
    model_dir = str(tmp_path / "run")
    cfg = TrainConfig(cache_dir=demo_cache, model_dir=model_dir, epochs=1,
                      max_train_examples=16, **FAST)
    training.train(cfg, verbose=0)
    assert cli.main(["evaluate", "--model-dir", model_dir, "--split", "validation"]) == 0
    assert tf.io.gfile.exists(f"{model_dir}/confusion_matrix_validation.png")
    training.train(TrainConfig(**{**cfg.to_dict(), "pooling": "cls"}), verbose=0)
    assert not tf.io.gfile.exists(f"{model_dir}/results.json")
    assert not tf.io.gfile.exists(f"{model_dir}/confusion_matrix_validation.png")
    assert "removed the earlier run's" in capsys.readouterr().err


def test_max_seq_length_beyond_the_encoders_positions_is_refused(sample_csv, tiny_preset,
                                                                 tmp_path, capsys):
    # Before: a cache stored with --max-length 1024 trained until the first batch wider
    # than 512 tokens, then failed with "Expected size[0] in [0, 512]" (a traceback).
    from kt_pipeline import cache

    cache_dir = str(tmp_path / "cache")
    cache.build_cache(sample_csv, cache_dir, preset=tiny_preset, max_length=600, progress=False)
    rc = cli.main(["train", "--cache", cache_dir, "--model-dir", str(tmp_path / "run"),
                   "--epochs", "1", "--max-train-examples", "16", "--batch-size", "16",
                   "--strategy", "cpu", "--max-seq-length", "600"])
    err = capsys.readouterr().err
    assert rc == 2 and "max_seq_length=600" in err and "--max-seq-length 512" in err
    assert not tf.io.gfile.exists(str(tmp_path / "run" / "history.csv"))


def test_evaluate_refuses_a_max_seq_length_beyond_the_positions(demo_cache, sample_csv,
                                                                tiny_preset, tmp_path, capsys):
    from kt_pipeline import cache

    model_dir = str(tmp_path / "run")
    training.train(TrainConfig(cache_dir=demo_cache, model_dir=model_dir, epochs=1,
                               max_train_examples=16, **FAST), verbose=0)
    rows = open(sample_csv, encoding="utf-8").read().splitlines()
    long_csv = tmp_path / "long.csv"
    long_rows = [f'"{i} {" ".join(["good film"] * 400)}",positive,x' for i in range(10)]
    long_csv.write_text("\n".join(rows + long_rows) + "\n", encoding="utf-8")
    cache_dir = str(tmp_path / "cache")
    cache.build_cache(str(long_csv), cache_dir, preset=tiny_preset, max_length=1024,
                      ratios=(0.1, 0.0, 0.9), progress=False)
    rc = cli.main(["evaluate", "--model-dir", model_dir, "--cache", cache_dir,
                   "--max-seq-length", "1024"])
    err = capsys.readouterr().err
    assert rc == 2 and "--max-seq-length 512 or less" in err and "Traceback" not in err


def test_model_dir_or_config_of_the_wrong_kind_is_a_user_error(demo_cache, tmp_path, capsys):
    # Before: FailedPreconditionError tracebacks ("is not a directory", "Is a directory").
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    rc = cli.main(["train", "--cache", demo_cache, "--model-dir", str(a_file), "--epochs", "1",
                   "--strategy", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and f"--model-dir {a_file} is a file" in err and "Traceback" not in err
    rc = cli.main(["train", "--config", str(tmp_path), "--epochs", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "is a folder" in err and "Traceback" not in err


def test_evaluate_shows_progress_on_stderr(demo_cache, tmp_path, capsys):
    # The guide: progress on long work. A large split evaluated for minutes in silence.
    model_dir = str(tmp_path / "run")
    training.train(TrainConfig(cache_dir=demo_cache, model_dir=model_dir, epochs=1,
                               max_train_examples=16, **FAST), verbose=0)
    capsys.readouterr()
    assert cli.main(["evaluate", "--model-dir", model_dir, "--split", "validation"]) == 0
    captured = capsys.readouterr()
    assert "evaluate validation: 40/40 examples (100%" in captured.err
    assert "examples (" not in captured.out  # stdout keeps only the table


KILL_AT_FIRST_STEP = textwrap.dedent("""
    import json, os, sys
    import keras
    from kt_pipeline import training
    from kt_pipeline.config import TrainConfig

    class KillAtFirstStep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            os._exit(17)

    training.train(TrainConfig(**json.loads(sys.argv[1])), extra_callbacks=[KillAtFirstStep()])
""")


def test_a_new_run_killed_before_its_first_checkpoint_leaves_no_old_model(demo_cache,
                                                                          tmp_path):
    # Before: the earlier run's best.keras and train_summary.json stayed beside the new
    # run's config.json/labels.json, and export/evaluate used that mix.
    model_dir = str(tmp_path / "run")
    cfg = TrainConfig(cache_dir=demo_cache, model_dir=model_dir, epochs=1,
                      max_train_examples=16, **FAST)
    training.train(cfg, verbose=0)
    assert tf.io.gfile.exists(f"{model_dir}/best.keras")
    second = TrainConfig(**{**cfg.to_dict(), "pooling": "cls", "max_seq_length": 16})
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", KILL_AT_FIRST_STEP, json.dumps(second.to_dict())],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 17, proc.stderr[-3000:]
    assert json.loads(open(f"{model_dir}/config.json").read())["pooling"] == "cls"
    assert not tf.io.gfile.exists(f"{model_dir}/best.keras")
    assert not tf.io.gfile.exists(f"{model_dir}/train_summary.json")


@pytest.mark.parametrize("override", ["warmup_fraction=2", "clipnorm=-1"])
def test_a_refused_setting_leaves_the_model_dir_as_it_was(override, demo_cache, tmp_path):
    # Before: config.json was rewritten with the refused setting before it was checked
    # (and export then read that run's max_seq_length/preset beside the old best.keras).
    model_dir = str(tmp_path / "run")
    cfg = TrainConfig(cache_dir=demo_cache, model_dir=model_dir, epochs=1,
                      max_train_examples=16, **FAST)
    training.train(cfg, verbose=0)
    before = {name: open(f"{model_dir}/{name}", "rb").read()
              for name in ("config.json", "best.keras", "train_summary.json")}
    bad = apply_overrides(TrainConfig(**{**cfg.to_dict(), "max_seq_length": 16}), [override])
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        training.train(bad, verbose=0)
    assert {name: open(f"{model_dir}/{name}", "rb").read() for name in before} == before
