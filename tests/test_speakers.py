"""The speaker model end to end on the tiny BERT and synthetic books (fast)."""

import csv
import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from kt_pipeline import cli, speakers
from kt_pipeline.errors import ConfigError

WORDS = "good great bad awful boring fun love loved hate hated best worst fine ok".split()


def synthetic_csv(path, books=5, speakers_per_book=4, quotes=10, narrative=5, seed=0):
    """Each speaker of a book draws its words from its own small vocabulary."""
    rng = np.random.default_rng(seed)
    rows = []
    for b in range(books):
        for s in range(speakers_per_book):
            start = (s * 3 + b) % (len(WORDS) - 3)
            vocab = WORDS[start:start + 3]
            for q in range(quotes):
                rows.append([f"book{b}", " ".join(rng.choice(vocab, 5)), f"sp{s}", "0",
                             "the story", f"said sp{s}"])
        for q in range(narrative):
            rows.append([f"book{b}", "the plot was " + " ".join(rng.choice(WORDS, 4)), "", "1", "", ""])
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["book", "text", "speaker", "is_narrative", "context_before", "context_after"])
        w.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def base_cfg(tmp_path_factory, tiny_preset):
    d = tmp_path_factory.mktemp("speakers")
    return speakers.ClusterConfig(
        data=synthetic_csv(d / "ex.csv"), work_dir=str(d / "work"), model_dir=str(d / "run"),
        preset=tiny_preset, steps=12, eval_every=6, log_every=100, speakers_per_batch=3,
        quotes_per_speaker=3, narrative_per_batch=2, projection_hidden="32", embedding_dim=16,
        window=2, max_seq_length=32, cache_max_length=64, anchor_every=3, learning_rate=1e-3,
        strategy="cpu", ratios="0.6,0.2,0.2", methods="bisecting_kmeans,hdbscan", seed=1)


@pytest.fixture(scope="module")
def trained(base_cfg):
    logs = []
    summary = speakers.train(base_cfg, log=logs.append)
    return base_cfg, summary, logs


def test_train_writes_model_dir_and_keeps_the_best(trained):
    cfg, summary, logs = trained
    files = set(os.listdir(cfg.model_dir))
    assert {"config.json", "best.weights.h5", "history.json", "train_summary.json",
            "distances.png", "tb"} <= files
    history = json.load(open(os.path.join(cfg.model_dir, "history.json")))
    assert [h["step"] for h in history] == list(range(1, cfg.steps + 1))
    assert all(np.isfinite(h["loss"]) for h in history)
    evals = [h for h in history if "val_v_measure" in h]
    assert [h["step"] for h in evals] == [6, 12]
    best = max(evals, key=lambda h: h["val_v_measure"])
    assert summary["best_step"] == best["step"]
    assert summary["best"]["v_measure"] == pytest.approx(best["val_v_measure"])
    train_books, val_books = summary["books"]["train"], summary["books"]["validation"]
    assert not set(train_books) & set(val_books)  # split by book
    assert any("val ari" in line for line in logs)


def test_evaluate_reports_model_and_both_baselines(trained):
    cfg, _, _ = trained
    res = speakers.evaluate(cfg.model_dir, "test", log=lambda *_: None)
    assert set(res["systems"]) == {"anchor", "untrained", "one_cluster"}
    for system in ("anchor", "untrained"):
        assert set(res["systems"][system]["macro"]) == {"bisecting_kmeans", "hdbscan"}
    one = res["systems"]["one_cluster"]["macro"]["one_cluster"]
    assert one["ari"] == 0.0 and one["v_measure"] == 0.0
    nh = res["narrative_head"]
    assert 0.0 <= nh["accuracy"] <= 1.0 and nh["n"] > 0
    assert os.path.exists(os.path.join(cfg.model_dir, "results_test.json"))
    assert os.path.exists(os.path.join(cfg.model_dir, "pca_test.png"))
    assert os.path.exists(os.path.join(cfg.model_dir, "speaker_shares.png"))


def test_reload_gives_the_same_embeddings(trained):
    cfg, _, _ = trained
    from kt_pipeline import encoders, reader

    manifest = reader.load_manifest(speakers.prepare_cache(cfg)["cache_dir"])
    data = speakers.load_split(manifest["cache_dir"], "validation", cfg.max_seq_length)
    m1 = speakers.build_model(encoders.load_backbone(cfg.preset, load_weights=False), cfg)
    m1.load_weights(os.path.join(cfg.model_dir, "best.weights.h5"))
    m2 = speakers.build_model(encoders.load_backbone(cfg.preset, load_weights=False), cfg)
    m2.load_weights(os.path.join(cfg.model_dir, "best.weights.h5"))
    pad = manifest["tokenizer"]["special_tokens"]["pad"]
    z1, p1 = speakers.embed(m1, data, data.quotes(), pad)
    z2, _ = speakers.embed(m2, data, data.quotes(), pad, batch_size=7)
    np.testing.assert_allclose(z1, z2, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(z1, axis=1), 1.0, atol=1e-5)  # final="l2"
    assert p1.shape == (len(data.quotes()),)


def test_trainer_under_default_strategy_uses_anchors_from_memory(base_cfg):
    """Anchors only (sigma=0) still train once the memory has produced anchors."""
    cfg = dataclasses.replace(base_cfg, sigma=0.0, anchor_every=2, memory_steps=3)
    manifest = speakers.prepare_cache(cfg)
    train, val, _ = speakers._load_splits(cfg, manifest)
    t = speakers.Trainer(cfg, manifest, train, val, tf.distribute.get_strategy(), log=None)
    first = t.step(t.sampler.sample())
    assert first["anchor"] == 0.0  # no anchors yet
    t.memory.maybe_update(2)
    losses_seen = []
    for step in range(2, 12):
        parts = t.step(t.sampler.sample())
        t.memory.maybe_update(step)
        losses_seen.append(parts["anchor"])
    assert len(t.memory._batches) == 3 and t.memory.updates >= 5
    assert max(losses_seen) > 0.0 and all(np.isfinite(losses_seen))


def test_supcon_and_build_and_fit(base_cfg, tmp_path):
    out = speakers.build_and_fit({"loss": "supcon", "window": 0, "projection_hidden": "16,16",
                                  "steps": 4, "eval_every": 4}, base=base_cfg,
                                 model_dir=str(tmp_path / "hp"), log=lambda *_: None)
    assert set(out) >= {"val_ari", "val_v_measure", "best_step"}
    assert -1.0 <= out["val_ari"] <= 1.0 and out["best_step"] == 4
    cfg = speakers.load_config(str(tmp_path / "hp"))
    assert cfg.monitor == "ari" and cfg.window == 0 and cfg.loss == "supcon"


@pytest.mark.parametrize("override", ["final=relu", "monitor=fmi", "sigma=2", "projection_hidden=a,b",
                                      "methods=kmeans", "max_seq_length=999", "k=foo", "k=0",
                                      "k=-2", "dropout=1.5", "narrative_ratio=-1",
                                      "narrative_ratio=.nan", "log_every=0",
                                      "max_eval_quotes=-1", "quote_words=-1"])
def test_bad_settings_are_config_errors(override):
    cfg = speakers.config_from_args(None, [override])
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        speakers.validate(cfg)


@pytest.mark.parametrize("yaml_text, key", [("steps: many\n", "steps"),
                                           ("dropout: [0.1]\n", "dropout")])
def test_config_file_of_the_wrong_type_names_the_file(tmp_path, yaml_text, key):
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        speakers.config_from_args(str(path), [])
    assert str(e.value).startswith(f"{path}: {key}=")


@pytest.mark.parametrize("override", ["k=gold", "k=estimate", "k=3", "dropout=0.0"])
def test_good_settings_pass(override):
    speakers.validate(speakers.config_from_args(None, [override]))


def test_a_failed_retrain_leaves_no_earlier_weights_to_evaluate(base_cfg, tmp_path):
    """Retraining into a model dir stops at a NaN loss before its first checkpoint:
    evaluate must not score the earlier run's weights under the new config."""
    from kt_pipeline.errors import KtError

    cfg = dataclasses.replace(base_cfg, model_dir=str(tmp_path / "m"), steps=2, eval_every=2)
    speakers.train(cfg, log=lambda *_: None, plots=False)
    speakers.evaluate(cfg.model_dir, "test", log=lambda *_: None, plots=False)
    assert os.path.exists(os.path.join(cfg.model_dir, "results_test.json"))
    bad = dataclasses.replace(cfg, learning_rate=1e30)
    with pytest.raises(KtError, match="loss became"):
        speakers.train(bad, log=lambda *_: None, plots=False)
    assert not os.path.exists(os.path.join(cfg.model_dir, "results_test.json"))
    with pytest.raises(KtError, match="no best.weights.h5"):
        speakers.evaluate(cfg.model_dir, "test", log=lambda *_: None, plots=False)


def test_a_split_of_one_speaker_books_is_a_data_error():
    from kt_pipeline.errors import DataError

    data = speakers.SplitData(ids=[np.array([1, 2])] * 5, labels=np.array([0, 0, 1, 1, 2]),
                              groups=np.array([0, 0, 1, 1, 1]), group_names=["A", "B"],
                              narrative=np.array([False, False, False, False, True]))
    with pytest.raises(DataError, match="two or more speakers"):
        speakers.check_scorable(data, "validation")
    two = data._replace(labels=np.array([0, 3, 1, 1, 2]))
    assert speakers.check_scorable(two, "validation") == ["B"]


def test_cli_prepare(tmp_path, capsys):
    from test_pdnc import make_book  # tests/ is on sys.path (rootdir conftest)

    root = make_book(tmp_path / "pdnc")
    out = tmp_path / "q.csv"
    assert cli.main(["cluster", "prepare", "--pdnc", str(root), "--output", str(out)]) == 0
    assert "2 quotes" in capsys.readouterr().out
    assert cli.main(["cluster", "prepare", "--pdnc", str(tmp_path / "nope"), "--output", str(out)]) == 2
    assert cli.main(["cluster", "evaluate", "--model-dir", str(tmp_path / "none")]) == 2


def test_marker_pooling_takes_marker_states_or_falls_back_to_mean():
    layer = speakers._marker_pooling_layer()(7, 8)
    rng = np.random.default_rng(0)
    seq = rng.normal(size=(2, 5, 3)).astype("float32")
    ids = np.array([[2, 7, 4, 8, 3], [2, 4, 4, 3, 0]], "int32")
    mask = ids != 0
    out = np.asarray(layer(seq, ids, mask))
    mean0 = seq[0].mean(axis=0)
    mean1 = seq[1, :4].mean(axis=0)
    np.testing.assert_allclose(out[0], np.concatenate([seq[0, 1], seq[0, 3], mean0]), rtol=1e-5)
    np.testing.assert_allclose(out[1], np.concatenate([mean1, mean1, mean1]), rtol=1e-5)
