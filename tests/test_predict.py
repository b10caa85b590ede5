"""`kt-pipeline predict`: texts from arguments, text files and CSV/TSV columns; a
table or JSON lines; only TensorFlow + TensorFlow Text needed to load the model."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from kt_pipeline import encoders, export, models
from kt_pipeline.cli import main
from kt_pipeline.commands import predict

LABELS = ["neg", "pos"]


@pytest.fixture(scope="module")
def export_dir(tiny_preset, tmp_path_factory):
    model = models.build_classifier(encoders.load_backbone(tiny_preset), 2, pooling="mean")
    path = str(tmp_path_factory.mktemp("predict") / "export")
    return export.export_saved_model(model, encoders.load_tokenizer(tiny_preset), LABELS, 16, path)


@pytest.fixture(scope="module")
def served(export_dir):
    return export.load_exported(export_dir)


def test_read_texts_lines_csv_and_tsv(tmp_path):
    lines = tmp_path / "t.txt"
    lines.write_bytes("first text\r\n\n  \nsecond, with comma\n".encode())
    assert predict.read_texts(str(lines)) == ["first text", "second, with comma"]

    csv_file = tmp_path / "t.csv"
    csv_file.write_text('id,review,label\n1,"good, really",pos\n2,"two\nlines",neg\n')
    assert predict.read_texts(str(csv_file), "review") == ["good, really", "two\nlines"]

    tsv = tmp_path / "t.tsv"
    tsv.write_text("review\tid\nthe film, fine\t1\n")
    assert predict.read_texts(str(tsv), "review") == ["the film, fine"]


def test_read_texts_errors_name_the_file_and_fix(tmp_path):
    csv_file = tmp_path / "t.csv"
    csv_file.write_text("id,review\n1,good\n")
    with pytest.raises(predict.DataError, match=r"no column 'text'.*columns: id, review"):
        predict.read_texts(str(csv_file), "text")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nalso fine\n\xff\xfe broken\n")
    with pytest.raises(predict.DataError, match=r"bad\.txt: line 3 is not UTF-8"):
        predict.read_texts(str(bad))
    with pytest.raises(predict.DataError, match="file not found"):
        predict.read_texts(str(tmp_path / "absent.txt"))


def test_table_output_for_a_text_file(export_dir, served, tmp_path, capsys):
    texts = ["the film was great", "awful , boring", "i loved the music"]
    f = tmp_path / "in.txt"
    f.write_text("\n".join(texts) + "\n")
    assert main(["predict", export_dir, "--input", str(f)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["#", "label", "prob", "p(neg)", "p(pos)", "text"]
    want = served.predict(texts)
    for i, line in enumerate(out[1:]):
        cells = line.split()
        assert cells[0] == str(i + 1) and cells[1] == want["label"][i]
        p = [float(x) for x in cells[3:5]]
        np.testing.assert_allclose(p, want["probabilities"][i], atol=1e-3)
        assert line.endswith(texts[i])
    assert len(out) == 1 + len(texts)


def test_json_lines_for_a_csv_column_plus_arguments(export_dir, served, tmp_path, capsys):
    f = tmp_path / "in.csv"
    f.write_text('id,review\n1,"good, really good"\n2,bad\n')
    assert main(["predict", export_dir, "extra text", "--input", str(f),
                 "--text-col", "review", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    texts = ["extra text", "good, really good", "bad"]
    assert [r["text"] for r in rows] == texts
    want = served.predict(texts)
    for r, label, p in zip(rows, want["label"], want["probabilities"]):
        assert r["label"] == label and r["label_id"] == LABELS.index(label)
        assert list(r["probabilities"]) == LABELS
        np.testing.assert_allclose([r["probabilities"][x] for x in LABELS], p, atol=1e-5)


def test_many_labels_show_only_the_predicted_probability():
    labels = [f"l{i}" for i in range(predict.MAX_PROB_COLUMNS + 1)]
    probs = np.full((1, len(labels)), 0.1, np.float32)
    probs[0, 3] = 0.4
    table = predict.format_table(["x" * 100], {"probabilities": probs, "label_id": np.array([3]),
                                               "label": ["l3"]}, labels)
    header, row = table.splitlines()
    assert header.split() == ["#", "label", "prob", "text"]
    assert row.split()[:3] == ["1", "l3", "0.400"] and row.endswith("…")


def test_predict_errors(export_dir, tmp_path, capsys):
    assert main(["predict", export_dir]) == 2
    assert "nothing to predict" in capsys.readouterr().err
    assert main(["predict", export_dir, "x", "--text-col", "review"]) == 2
    assert "--text-col needs --input" in capsys.readouterr().err
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    models.save_labels(str(run_dir), LABELS)
    assert main(["predict", str(run_dir), "x"]) == 2
    assert "kt-pipeline export --model-dir" in capsys.readouterr().err


def test_predict_loads_without_keras_hub_or_model_code(export_dir, served):
    code = (
        "import json, sys\n"
        "from kt_pipeline.cli import main\n"
        f"rc = main(['predict', {export_dir!r}, 'the film was great', '--json'])\n"
        "heavy = ('keras_hub', 'kt_pipeline.encoders', 'kt_pipeline.models', 'kt_pipeline.training')\n"
        "print(json.dumps({'rc': rc, 'loaded': sorted(m for m in sys.modules if m.startswith(heavy))}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    row, status = [json.loads(x) for x in proc.stdout.strip().splitlines()[-2:]]
    assert status == {"rc": 0, "loaded": []}
    assert row["label"] == served.predict(["the film was great"])["label"][0]


@pytest.mark.parametrize("size", ["0", "-1"])
def test_batch_size_below_one_is_a_user_error(export_dir, size, capsys):
    # Before: range() arg 3 must not be zero / an IndexError, as tracebacks.
    assert main(["predict", export_dir, "a fine film", "--batch-size", size]) == 2
    err = capsys.readouterr().err
    assert f"--batch-size {size}" in err and "Traceback" not in err


def test_a_csv_input_without_text_col_is_refused(tmp_path):
    # Before: each raw line, the header included, was labelled as a text.
    csv_file = tmp_path / "reviews.csv"
    csv_file.write_text('text,label\n"Frankly, no.",negative\n')
    with pytest.raises(predict.DataError, match=r"--text-col.*header: text, label"):
        predict.read_texts(str(csv_file))
    assert predict.read_texts(str(csv_file), "text") == ["Frankly, no."]


def test_a_savedmodel_that_is_not_an_export_is_a_user_error(tmp_path, capsys):
    # Before: KeyError: 'metadata' (a traceback).
    class Doubler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def double(self, x):
            return {"y": x * 2}

    module = Doubler()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures=module.double)
    assert main(["predict", str(tmp_path / "sm"), "a fine film"]) == 2
    err = capsys.readouterr().err
    assert "not a kt-pipeline export" in err and "kt-pipeline export" in err


def test_many_texts_show_progress_on_stderr_only(export_dir, tmp_path, capsys):
    lines = tmp_path / "many.txt"
    lines.write_text("".join(f"text number {i}\n" for i in range(70)), encoding="utf-8")
    assert main(["predict", export_dir, "--input", str(lines), "--batch-size", "32",
                 "--json"]) == 0
    captured = capsys.readouterr()
    assert "predict: 70/70 texts (100%" in captured.err
    assert len(captured.out.strip().splitlines()) == 70  # stdout: the results only
