"""Evaluate a trained model dir on a cache split: metrics, confusion matrix PNG, results.json.

Metrics: accuracy, macro precision/recall/F1, per-class precision/recall/F1/support, and
ROC-AUC for binary tasks (scikit-learn). ``<model_dir>/results.json`` maps each
evaluated split to its metrics (evaluating another split adds to it), and
``<model_dir>/confusion_matrix_<split>.png`` shows counts with label names.

Example:

>>> from kt_pipeline import evaluate
>>> res = evaluate.evaluate("runs/demo", split="test")        # doctest: +SKIP
>>> print(evaluate.format_table(res))                         # doctest: +SKIP
split test (40 examples)
  accuracy            0.9250
  ...
>>> evaluate.compute_metrics([0, 1, 1], [[.9, .1], [.2, .8], [.6, .4]], ["neg", "pos"])["accuracy"]
0.6666666666666666
"""

from __future__ import annotations

import io
import json
import os
from typing import Optional, Sequence

import numpy as np

from kt_pipeline.errors import KtError

RESULTS_FILE = "results.json"


def compute_metrics(y_true: Sequence[int], probs, labels: Sequence[str]) -> dict:
    """Metrics from true label indices and class probabilities ``[N, num_classes]``."""
    from sklearn import metrics as skm

    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    y_pred = probs.argmax(axis=1)
    idx = list(range(len(labels)))
    p, r, f, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=idx, average=None, zero_division=0
    )
    out = {
        "examples": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "macro_precision": float(np.mean(p)),
        "macro_recall": float(np.mean(r)),
        "macro_f1": float(np.mean(f)),
        "roc_auc": None,
        "per_class": {
            str(name): {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                        "support": int(support[i])}
            for i, name in enumerate(labels)
        },
        "labels": [str(x) for x in labels],
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=idx).tolist(),
    }
    if len(labels) == 2 and len(np.unique(y_true)) == 2:
        out["roc_auc"] = float(skm.roc_auc_score(y_true, probs[:, 1]))
    return out


def plot_confusion_matrix(matrix, labels: Sequence[str], path: str, title: str = "") -> str:
    """Write a confusion-matrix PNG (rows: true label, columns: predicted) via tf.io.gfile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kt_pipeline import models

    m = np.asarray(matrix)
    n = len(labels)
    size = max(4.0, 0.6 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(m, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels=[str(x) for x in labels], rotation=45, ha="right")
    ax.set_yticks(range(n), labels=[str(x) for x in labels])
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title(title or "confusion matrix")
    threshold = m.max() / 2 if m.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(m[i, j])), ha="center", va="center",
                    color="white" if m[i, j] > threshold else "black")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    import tensorflow as tf

    models.clear_for_overwrite(path)
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(buf.getvalue())
    return path


def predict_probabilities(model, dataset, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """(true labels, softmax probabilities) over a ``(features, labels)`` dataset.

    ``progress``: a :class:`kt_pipeline.progress.Progress` counting examples (closed here).
    """
    import tensorflow as tf

    ys, ps = [], []
    for features, labels in dataset:
        logits = model(features, training=False)
        ps.append(tf.nn.softmax(tf.cast(logits, tf.float32)).numpy())
        ys.append(labels.numpy())
        if progress is not None:
            progress.update(len(ys[-1]))
    if progress is not None:
        progress.close()
    if not ys:
        return np.zeros([0], np.int64), np.zeros([0, model.output_shape[-1]])
    return np.concatenate(ys), np.concatenate(ps)


def _read_json(path: str) -> Optional[dict]:
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "r") as f:
        return json.loads(f.read())


def check_tokenizer(model_dir: str, config: dict, cache_dir: str, manifest: dict) -> None:
    """The cache's token ids must come from the tokenizer the model was trained with.

    Compared with the training cache's manifest, else (that cache gone) with the trained
    preset's tokenizer.
    """
    from kt_pipeline import encoders

    have = manifest.get("tokenizer")
    trained_on = (config.get("cache_dir") or "").rstrip("/")
    if not have or not trained_on or trained_on == cache_dir.rstrip("/"):
        return
    try:
        want = (_read_json(f"{trained_on}/manifest.json") or {}).get("tokenizer")
    except Exception:  # a training cache that moved or went away
        want = None
    summary = _read_json(f"{model_dir}/train_summary.json") or {}
    preset = summary.get("preset") or config.get("preset")
    if not want:
        want = encoders.tokenizer_fingerprint(encoders.load_tokenizer(preset))
    differ = encoders.fingerprint_difference(have, want)
    if differ:
        raise KtError(
            f"{cache_dir} was tokenized with another tokenizer than {model_dir} was trained "
            f"with ({differ}); evaluate on a "
            f"cache built with `build-tfrecords --preset {preset or 'default'}`"
        )


def evaluate(
    model_dir: str,
    cache_dir: Optional[str] = None,
    split: str = "test",
    batch_size: Optional[int] = None,
    max_seq_length: Optional[int] = None,
    progress: bool = True,
) -> dict:
    """Evaluate ``model_dir`` on ``split`` of ``cache_dir`` (default: the one it trained on).

    ``progress`` counts the examples on stderr (``evaluate <split>: n/N examples``).
    """
    from kt_pipeline import models, reader
    from kt_pipeline.progress import Progress

    import tensorflow as tf

    if batch_size is not None and batch_size < 1:
        raise KtError(f"--batch-size {batch_size}: must be >= 1")
    if max_seq_length is not None and max_seq_length < 3:
        raise KtError(f"--max-seq-length {max_seq_length}: needs room for [CLS] x [SEP] (>= 3)")
    model_dir = model_dir.rstrip("/")
    if not tf.io.gfile.isdir(model_dir):
        raise KtError(f"model dir not found: {model_dir} (train one with `kt-pipeline train`)")
    config = _read_json(f"{model_dir}/config.json") or {}
    cache_dir = cache_dir or config.get("cache_dir")
    if not cache_dir:
        raise KtError(f"{model_dir}/config.json has no cache_dir; pass --cache")
    labels = models.load_labels(model_dir)
    manifest = reader.load_manifest(cache_dir)
    if list(manifest.get("labels") or []) != labels:
        raise KtError(
            f"label mismatch: {model_dir} was trained on labels {labels} but {cache_dir} has "
            f"{manifest.get('labels')}; evaluate on a cache built with the same labels "
            "(build-tfrecords --labels ...)"
        )
    check_tokenizer(model_dir, config, cache_dir, manifest)
    n = int(manifest["counts"]["written"].get(split, 0))
    if n == 0:
        raise KtError(f"{cache_dir}: split {split!r} is empty; choose another --split "
                      "or rebuild the cache with a nonzero ratio for it")
    model = models.load_classifier(model_dir)
    seq = int(max_seq_length or config.get("max_seq_length") or 128)
    seq = min(seq, int(manifest["max_length"]))
    models.check_position_limit(model, seq, KtError)
    ds = reader.make_dataset(cache_dir, split, batch_size=int(batch_size or config.get("batch_size") or 32),
                             max_seq_length=seq, padding="bucket", drop_remainder=False)
    bar = Progress(f"evaluate {split}", total=n, unit="examples", enabled=progress)
    y_true, probs = predict_probabilities(model, ds, bar)
    if (y_true < 0).any():
        raise KtError(f"{cache_dir}: split {split!r} has no labels; it cannot be evaluated")
    bad = int((~np.isfinite(probs).all(axis=1)).sum())
    if bad:
        raise KtError(
            f"{models.saved_model_path(model_dir)} gives NaN/inf for {bad} of {len(probs)} "
            f"{split} examples: its weights are not finite (a diverged run); retrain with a "
            "lower learning_rate or clipnorm"
        )
    res = compute_metrics(y_true, probs, labels)
    png = f"{model_dir}/confusion_matrix_{split}.png"
    plot_confusion_matrix(res["confusion_matrix"], labels, png,
                          title=f"{os.path.basename(model_dir)} on {split} (n={len(y_true)})")
    res.update({"split": split, "cache_dir": cache_dir, "max_seq_length": seq,
                "confusion_matrix_png": png})
    results_path = f"{model_dir}/{RESULTS_FILE}"
    all_results = _read_json(results_path) or {}
    all_results[split] = res
    models.write_text(results_path, json.dumps(all_results, indent=2))
    return res


def format_table(res: dict) -> str:
    """A short plain-text table of the headline and per-class metrics."""
    lines = [f"split {res.get('split', '?')} ({res['examples']} examples)"]
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "roc_auc"):
        if res.get(key) is not None:
            lines.append(f"  {key:<18}{res[key]:.4f}")
    width = max([len(k) for k in res["per_class"]] + [5])
    lines.append(f"  {'label':<{width}}  precision  recall  f1      support")
    for name, m in res["per_class"].items():
        lines.append(f"  {name:<{width}}  {m['precision']:<9.4f}  {m['recall']:<6.4f}  "
                     f"{m['f1']:<6.4f}  {m['support']}")
    return "\n".join(lines)
