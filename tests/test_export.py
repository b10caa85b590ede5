"""The exported SavedModel: raw strings in, the in-memory model's probabilities out,
servable from a fresh process that imports only tensorflow and tensorflow_text."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from kt_pipeline import encoders, export, hf_fixtures, models
from kt_pipeline.cli import main

LABELS = ["negative", "neutral", "positive"]
MAX_LEN = 12
TEXTS = [
    "The movie was really good .",
    "i hated the ending",
    "",
    "아주 재밌어요 — très bien",
    " ".join(["the acting was awful"] * 10),  # longer than MAX_LEN tokens
]


def in_memory_probabilities(model, tokenizer, texts, max_len=MAX_LEN):
    """What the model gives for the texts tokenized and padded outside the graph."""
    enc = encoders.TextEncoding(tokenizer)
    ids = enc.encode(texts, max_len)
    token_ids = ids.to_tensor(default_value=enc.pad_id)
    mask = tf.ones_like(ids, dtype=tf.bool).to_tensor(default_value=False)
    logits = model({"token_ids": token_ids, "padding_mask": mask}, training=False)
    return tf.nn.softmax(logits, axis=-1).numpy()


def classifier(preset, num_classes=len(LABELS)):
    # Mean pooling: every kept token (and the truncation point) moves the output.
    return models.build_classifier(encoders.load_backbone(preset), num_classes, pooling="mean")


@pytest.fixture(scope="module")
def exported(tiny_preset, tmp_path_factory):
    tokenizer = encoders.load_tokenizer(tiny_preset)
    model = classifier(tiny_preset)
    path = str(tmp_path_factory.mktemp("export") / "export")
    export.export_saved_model(model, tokenizer, LABELS, MAX_LEN, path,
                              metadata={"preset": tiny_preset})
    return model, tokenizer, path


def test_outputs_equal_the_in_memory_model(exported):
    model, tokenizer, path = exported
    served = export.load_exported(path)
    got = served.predict(TEXTS)
    want = in_memory_probabilities(model, tokenizer, TEXTS)
    np.testing.assert_allclose(got["probabilities"], want, atol=1e-5)
    np.testing.assert_array_equal(got["label_id"], want.argmax(-1))
    assert got["label"] == [LABELS[i] for i in want.argmax(-1)]
    assert served.labels == LABELS and served.max_seq_length == MAX_LEN


def test_texts_are_truncated_to_the_trained_length(exported):
    _, _, path = exported
    served = export.load_exported(path)
    base = " ".join(["the film was fine"] * 5)
    a, b = served.predict([base, base + " but the music was awful and boring"])["probabilities"]
    np.testing.assert_allclose(a, b, atol=1e-6)  # words past MAX_LEN tokens are ignored
    short = served.predict(["the film", "the film was bad"])["probabilities"]
    assert np.abs(short[0] - short[1]).max() > 1e-4  # ...but earlier words count


def test_fresh_process_with_only_tensorflow_and_tensorflow_text(exported):
    model, tokenizer, path = exported
    code = (
        "import json, sys\n"
        "import tensorflow as tf, tensorflow_text\n"
        f"m = tf.saved_model.load({path!r})\n"
        f"out = m.signatures['serving_default'](text=tf.constant({TEXTS!r}))\n"
        "meta = m.signatures['metadata']()\n"
        "print(json.dumps({'probabilities': out['probabilities'].numpy().tolist(),\n"
        "  'label': [x.decode() for x in out['label'].numpy()],\n"
        "  'labels': [x.decode() for x in meta['labels'].numpy()],\n"
        "  'max_seq_length': int(meta['max_seq_length']),\n"
        "  'loaded': sorted(k for k in sys.modules if k.startswith(('keras_hub', 'kt_pipeline')))}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"},
                          cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    want = in_memory_probabilities(model, tokenizer, TEXTS)
    np.testing.assert_allclose(np.array(out["probabilities"]), want, atol=1e-5)
    assert out["label"] == [LABELS[i] for i in want.argmax(-1)]
    assert out["labels"] == LABELS and out["max_seq_length"] == MAX_LEN
    assert out["loaded"] == []


def test_labels_and_max_seq_length_are_written_as_metadata(exported, tiny_preset):
    _, tokenizer, path = exported
    with open(f"{path}/{export.EXTRA_DIR}/{export.LABELS_FILE}") as f:
        assert json.load(f) == LABELS
    info = export.read_export_info(path)
    assert info["labels"] == LABELS and info["max_seq_length"] == MAX_LEN
    assert info["preset"] == tiny_preset
    assert info["tokenizer"] == encoders.tokenizer_fingerprint(tokenizer)


def test_ram_filesystem_output(exported):
    # ram:// stands in for gs://.
    model, tokenizer, _ = exported
    path = "ram://kt-test-export/x/export"
    export.export_saved_model(model, tokenizer, LABELS, MAX_LEN, path)
    export.export_saved_model(model, tokenizer, LABELS, MAX_LEN, path)  # replaces
    got = export.load_exported(path).predict(TEXTS[:2])["probabilities"]
    np.testing.assert_allclose(got, in_memory_probabilities(model, tokenizer, TEXTS[:2]), atol=1e-5)
    assert export.read_export_info(path)["labels"] == LABELS


def test_refuses_to_replace_a_folder_that_is_not_an_export(exported, tmp_path):
    model, tokenizer, _ = exported
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(export.ExportError, match="not an earlier export"):
        export.export_saved_model(model, tokenizer, LABELS, MAX_LEN, str(tmp_path))
    with pytest.raises(export.ExportError, match="outputs but there are 2 labels"):
        export.export_saved_model(model, tokenizer, LABELS[:2], MAX_LEN, str(tmp_path / "x"))


def write_model_dir(model_dir, model, preset, max_len=MAX_LEN):
    """The layout `training.train` writes: best.keras, labels.json, config.json, summary."""
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save(str(model_dir / models.BEST_MODEL_FILE))
    models.save_labels(str(model_dir), LABELS)
    (model_dir / "config.json").write_text(json.dumps({"max_seq_length": max_len, "preset": None,
                                                       "cache_dir": str(model_dir / "nocache")}))
    (model_dir / "train_summary.json").write_text(json.dumps({"preset": preset}))
    return str(model_dir)


def test_export_and_predict_commands_on_a_model_dir(exported, tiny_preset, tmp_path, capsys):
    model, tokenizer, _ = exported
    model_dir = write_model_dir(tmp_path / "run", model, tiny_preset)
    assert main(["export", "--model-dir", model_dir]) == 0
    assert "wrote" in capsys.readouterr().out
    served = export.load_exported(model_dir)  # finds <model_dir>/export
    assert served.path == f"{model_dir}/export"
    np.testing.assert_allclose(served.predict(TEXTS)["probabilities"],
                               in_memory_probabilities(model, tokenizer, TEXTS), atol=1e-5)

    assert main(["predict", model_dir, TEXTS[0], TEXTS[1], "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = in_memory_probabilities(model, tokenizer, TEXTS[:2])
    assert [r["text"] for r in rows] == TEXTS[:2]
    for row, p in zip(rows, want):
        assert row["label"] == LABELS[p.argmax()]
        assert abs(row["probabilities"][row["label"]] - p.max()) < 1e-5


def test_export_command_errors(tmp_path, capsys):
    assert main(["export", "--model-dir", str(tmp_path / "absent")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    assert main(["export", "--model-dir", str(tmp_path / "run")]) == 2
    assert "train first" in capsys.readouterr().err


@pytest.mark.parametrize("model_type", ["roberta", "albert"])
def test_other_tokenizer_families_export(model_type, tmp_path):
    # Byte-level BPE (lookup tables) and SentencePiece (a model resource) in the graph.
    preset = hf_fixtures.write_hf_checkpoint(str(tmp_path / model_type), model_type)
    tokenizer = encoders.load_tokenizer(preset)
    model = classifier(preset, num_classes=2)
    path = export.export_saved_model(model, tokenizer, ["no", "yes"], MAX_LEN,
                                     str(tmp_path / "export"))
    got = export.load_exported(path).predict(TEXTS)["probabilities"]
    np.testing.assert_allclose(got, in_memory_probabilities(model, tokenizer, TEXTS), atol=1e-5)


def test_export_of_a_real_training_run(tiny_preset, sample_csv, tmp_path):
    # The model dir exactly as `training.train` writes it.
    from kt_pipeline import cache, training
    from kt_pipeline.config import TrainConfig

    cache.build_cache(sample_csv, str(tmp_path / "cache"), preset=tiny_preset, progress=False,
                      text_col="text", label_col="label")
    cfg = TrainConfig(cache_dir=str(tmp_path / "cache"), model_dir=str(tmp_path / "run"),
                      epochs=1, batch_size=16, max_seq_length=10, max_train_examples=32)
    training.train(cfg, verbose=0)
    path = export.export_model_dir(cfg.model_dir)
    served = export.load_exported(cfg.model_dir)
    assert served.labels == models.load_labels(cfg.model_dir) and served.max_seq_length == 10
    model = models.load_classifier(cfg.model_dir)
    tokenizer = encoders.load_tokenizer(tiny_preset)
    np.testing.assert_allclose(served.predict(TEXTS)["probabilities"],
                               in_memory_probabilities(model, tokenizer, TEXTS, 10), atol=1e-5)
    assert export.read_export_info(path)["preset"] == tiny_preset

    other = hf_fixtures.write_hf_checkpoint(str(tmp_path / "roberta"), "roberta")
    with pytest.raises(export.ExportError, match="differs from the one"):
        export.export_model_dir(cfg.model_dir, preset=other)
    with pytest.raises(export.ExportError, match="pass --preset"):
        export.export_model_dir(cfg.model_dir, preset=str(tmp_path / "moved"))


def test_max_seq_length_beyond_the_position_embeddings_is_refused(exported, tmp_path):
    # Before: the export succeeded and every text longer than the encoder's positions
    # failed when served ("Expected size[0] in [0, 512]").
    model, tokenizer, _ = exported
    limit = next(layer.max_sequence_length for layer in model.layers
                 if hasattr(layer, "max_sequence_length"))  # the backbone's positions
    with pytest.raises(export.ExportError, match=f"--max-seq-length {limit} or less"):
        export.export_saved_model(model, tokenizer, LABELS, limit + 1, str(tmp_path / "long"))
    assert not tf.io.gfile.exists(str(tmp_path / "long"))


def test_export_command_refuses_max_seq_length_zero(exported, tiny_preset, tmp_path, capsys):
    # Before: 0 was taken as "not given" and the trained length exported instead.
    model, _, _ = exported
    run = tmp_path / "run"
    write_model_dir(run, model, tiny_preset)
    assert main(["export", "--model-dir", str(run), "--max-seq-length", "0"]) == 2
    assert "--max-seq-length 0" in capsys.readouterr().err
    assert not (run / "export").exists()


def test_output_that_is_a_file_is_refused(exported, tmp_path):
    # Before: tf.io.gfile.listdir's NotFoundError ("Could not find directory"), a traceback.
    model, tokenizer, _ = exported
    target = tmp_path / "model.bin"
    target.write_bytes(b"not a folder")
    with pytest.raises(export.ExportError, match="is a file"):
        export.export_saved_model(model, tokenizer, LABELS, MAX_LEN, str(target))
    assert target.read_bytes() == b"not a folder"
