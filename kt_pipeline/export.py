"""Export a trained classifier as a SavedModel that takes raw strings.

The serving signature ``serving_default`` takes ``text``: a 1-D string tensor. Inside
the graph it tokenizes with the encoder's own KerasHub tokenizer, adds the start/end
tokens, truncates to the trained ``max_seq_length`` (keeping the end token), pads to
the longest text of the batch, runs the classifier and returns

- ``probabilities``: float32 ``[B, num_classes]`` (softmax of the logits),
- ``label_id``: int32 ``[B]`` (argmax),
- ``label``: string ``[B]`` (the label vocabulary entry).

A second signature, ``metadata``, takes nothing and returns ``labels`` and
``max_seq_length``. The same facts are written as JSON under
``<export>/assets.extra/`` (``labels.json``, ``kt_export.json``), the TF Serving
place for files a model does not load itself.

Loading needs only TensorFlow and TensorFlow Text (its ops run the tokenizer)::

    import tensorflow as tf, tensorflow_text  # noqa: F401
    m = tf.saved_model.load("runs/demo/export")
    m.signatures["serving_default"](text=tf.constant(["a fine film"]))

Example:

>>> from kt_pipeline import export
>>> export.export_model_dir("runs/demo")                     # doctest: +SKIP
'runs/demo/export'
>>> served = export.load_exported("runs/demo/export")        # doctest: +SKIP
>>> served.predict(["a fine film"])["label"]                 # doctest: +SKIP
array([b'positive'], dtype=object)
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from kt_pipeline import batch_split  # noqa: E402
from kt_pipeline.errors import KtError  # noqa: E402

EXPORT_SUBDIR = "export"
EXTRA_DIR = "assets.extra"
METADATA_FILE = "kt_export.json"
LABELS_FILE = "labels.json"
SIGNATURE = "serving_default"
METADATA_SIGNATURE = "metadata"
FORMAT_VERSION = 1


class ExportError(KtError):
    """A model dir or export dir that cannot be exported / loaded, and how to fix it."""


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def _write_text(path: str, text: str) -> None:
    import tensorflow as tf

    if tf.io.gfile.exists(path):  # ram:// appends instead of replacing
        tf.io.gfile.remove(path)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)


def _read_json(path: str):
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "r") as f:
        return json.loads(f.read())


# ----------------------------------------------------------------------- export


def make_serving_fn(model, tokenizer, labels, max_seq_length: int):
    """``text [B] -> {"probabilities", "label_id", "label"}``, traceable by tf.function."""
    import tensorflow as tf

    from kt_pipeline.encoders import TextEncoding

    encoding = TextEncoding(tokenizer)
    vocabulary = tf.constant([str(x) for x in labels], dtype=tf.string)

    def serve(text):
        ids = encoding.encode(text, max_seq_length)
        token_ids = ids.to_tensor(default_value=encoding.pad_id)
        padding_mask = tf.ones_like(ids, dtype=tf.bool).to_tensor(default_value=False)
        with batch_split.suspended():  # the SavedModel may be served anywhere: whole batches
            logits = model({"token_ids": token_ids, "padding_mask": padding_mask},
                           training=False)
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
        label_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {
            "probabilities": probabilities,
            "label_id": label_id,
            "label": tf.gather(vocabulary, label_id),
        }

    return serve


def _prepare_output_dir(output_dir: str) -> None:
    """Replace an earlier export; refuse to clobber a folder that is something else."""
    import tensorflow as tf

    if not tf.io.gfile.exists(output_dir):
        return
    if not tf.io.gfile.isdir(output_dir):
        raise ExportError(f"{output_dir} is a file, not a folder; choose another --output")
    entries = tf.io.gfile.listdir(output_dir)
    if not entries:
        return
    if "saved_model.pb" not in entries:
        raise ExportError(
            f"{output_dir} exists and is not an earlier export (no saved_model.pb); "
            "choose another --output or remove it"
        )
    _remove_tree(output_dir)


def _remove_tree(path: str) -> None:
    """``rmtree`` that also works on ``ram://`` (which has no real directories)."""
    import tensorflow as tf

    try:
        tf.io.gfile.rmtree(path)
        return
    except tf.errors.OpError:
        pass
    for folder, _, files in tf.io.gfile.walk(path, topdown=False):
        for name in files:
            tf.io.gfile.remove(_join(folder, name))


def export_saved_model(
    model,
    tokenizer,
    labels,
    max_seq_length: int,
    output_dir: str,
    metadata: dict | None = None,
) -> str:
    """Write a raw-string SavedModel for an in-memory classifier; return ``output_dir``.

    ``model`` takes ``{"token_ids", "padding_mask"}`` and returns logits (what
    ``models.build_classifier`` builds); ``tokenizer`` is the encoder's KerasHub
    tokenizer; ``labels`` the label vocabulary in index order. ``metadata`` (e.g. the
    preset) is added to ``assets.extra/kt_export.json``.
    """
    import keras
    import tensorflow as tf

    from kt_pipeline.encoders import tokenizer_fingerprint

    labels = [str(x) for x in labels]
    if int(model.outputs[0].shape[-1]) != len(labels):
        raise ExportError(
            f"the model has {model.outputs[0].shape[-1]} outputs but there are {len(labels)} "
            f"labels ({labels[:5]}...); check labels.json"
        )
    if max_seq_length < 3:
        raise ExportError(f"max_seq_length={max_seq_length}: needs room for start, text, end")
    from kt_pipeline.models import check_position_limit

    check_position_limit(model, max_seq_length, ExportError,
                         ", so longer texts would fail when served")
    output_dir = output_dir.rstrip("/")
    _prepare_output_dir(output_dir)

    serve = make_serving_fn(model, tokenizer, labels, max_seq_length)
    facts = {"labels": tf.constant(labels), "max_seq_length": tf.constant(int(max_seq_length))}
    archive = keras.export.ExportArchive()
    archive.track(model)
    if not tokenizer.built:  # tokenizers hold tables/resources but no weights
        tokenizer.build(None)
    archive.track(tokenizer)  # lookup tables, SentencePiece model resources
    archive.add_endpoint(
        "serve", serve, input_signature=[tf.TensorSpec([None], tf.string, name="text")]
    )
    archive.add_endpoint(METADATA_SIGNATURE, lambda: dict(facts), input_signature=[])
    archive.write_out(output_dir, verbose=False)

    info = {
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "labels": labels,
        "max_seq_length": int(max_seq_length),
        "signature": {
            "name": SIGNATURE,
            "inputs": {"text": "string [batch]"},
            "outputs": {
                "probabilities": f"float32 [batch, {len(labels)}]",
                "label_id": "int32 [batch]",
                "label": "string [batch]",
            },
        },
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "load": "import tensorflow as tf, tensorflow_text; tf.saved_model.load(PATH)",
        **(metadata or {}),
    }
    tf.io.gfile.makedirs(_join(output_dir, EXTRA_DIR))
    _write_text(_join(output_dir, EXTRA_DIR, LABELS_FILE), json.dumps(labels, ensure_ascii=False))
    _write_text(_join(output_dir, EXTRA_DIR, METADATA_FILE),
                json.dumps(info, indent=2, ensure_ascii=False))
    return output_dir


def run_settings(model_dir: str) -> dict:
    """What training used: ``preset`` and ``max_seq_length`` (from the run's JSON files).

    The preset comes from ``train_summary.json`` (the one actually trained), else
    ``config.json``, else the cache manifest; ``None`` means the default encoder.
    """
    summary = _read_json(_join(model_dir, "train_summary.json")) or {}
    config = _read_json(_join(model_dir, "config.json")) or {}
    manifest = {}
    if config.get("cache_dir"):
        try:
            manifest = _read_json(_join(config["cache_dir"], "manifest.json")) or {}
        except Exception:  # a cache that moved or went away: not needed to export
            manifest = {}
    preset = summary.get("preset") or config.get("preset") or manifest.get("preset")
    if preset == "default":
        preset = None
    return {"preset": preset, "max_seq_length": config.get("max_seq_length"),
            "tokenizer": manifest.get("tokenizer")}


def _load_trained_tokenizer(preset, settings: dict, model_dir: str):
    """The tokenizer of ``preset``, checked against the one the cache was built with."""
    from kt_pipeline import encoders

    try:
        tokenizer = encoders.load_tokenizer(preset)
    except encoders.EncoderError as e:
        raise ExportError(
            f"{e}; pass --preset with the encoder {model_dir} was trained with"
        ) from e
    want = settings.get("tokenizer")
    have = encoders.tokenizer_fingerprint(tokenizer)
    differ = want and encoders.fingerprint_difference(have, want)
    if differ:
        raise ExportError(
            f"the tokenizer of preset {preset!r} differs from the one {model_dir} was trained "
            f"with ({differ}); "
            "pass --preset with the training encoder"
        )
    return tokenizer


def export_model_dir(
    model_dir: str,
    output_dir: str | None = None,
    max_seq_length: int | None = None,
    preset: str | None = None,
) -> str:
    """Export ``<model_dir>/best.keras`` (or ``final.keras``) with ``labels.json``.

    ``output_dir`` defaults to ``<model_dir>/export``; ``max_seq_length`` and ``preset``
    default to what training used.
    """
    import tensorflow as tf

    from kt_pipeline import encoders, models

    model_dir = model_dir.rstrip("/")
    if not tf.io.gfile.isdir(model_dir):
        raise ExportError(f"model dir {model_dir} not found; pass the --model-dir used for `train`")
    model_file = models.saved_model_path(model_dir)  # KtError when training never saved
    labels = models.load_labels(model_dir)
    settings = run_settings(model_dir)
    if max_seq_length is not None and max_seq_length < 3:
        raise ExportError(f"--max-seq-length {max_seq_length}: needs room for start, text, end")
    max_seq_length = int(max_seq_length or settings["max_seq_length"] or 0)
    if not max_seq_length:
        raise ExportError(
            f"{model_dir}/config.json has no max_seq_length; pass --max-seq-length"
        )
    preset = preset or settings["preset"]
    tokenizer = _load_trained_tokenizer(preset, settings, model_dir)
    model = models.load_classifier(model_dir)
    return export_saved_model(
        model, tokenizer, labels, max_seq_length,
        output_dir or _join(model_dir, EXPORT_SUBDIR),
        metadata={"preset": preset or encoders.DEFAULT_PRESET, "model_dir": model_dir,
                  "model_file": model_file},
    )


# ------------------------------------------------------------------------- load


class ExportedClassifier:
    """A loaded export: ``predict(texts)`` and its ``labels`` / ``max_seq_length``.

    Needs only TensorFlow and TensorFlow Text (no Keras, KerasHub or kt_pipeline
    model code).
    """

    def __init__(self, path: str):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (registers the tokenizer ops)

        self.path = path
        self.module = tf.saved_model.load(path)
        missing = {SIGNATURE, METADATA_SIGNATURE} - set(self.module.signatures)
        if missing:
            has = ", ".join(self.module.signatures) or "none"
            raise ExportError(
                f"{path} is a SavedModel but not a kt-pipeline export (no signature "
                f"{', '.join(sorted(missing))}; it has {has}); make one with "
                "`kt-pipeline export --model-dir MODEL_DIR`"
            )
        self.serve = self.module.signatures[SIGNATURE]
        facts = self.module.signatures[METADATA_SIGNATURE]()
        self.labels = [x.decode("utf-8") for x in facts["labels"].numpy()]
        self.max_seq_length = int(facts["max_seq_length"].numpy())

    def predict(self, texts, batch_size: int = 64, progress=None) -> dict:
        """Numpy ``probabilities``, ``label_id`` and ``label`` (str) for a list of texts.

        ``progress``: a :class:`kt_pipeline.progress.Progress` counting texts (closed here).
        """
        import numpy as np
        import tensorflow as tf

        texts = list(texts)
        parts = []
        for i in range(0, len(texts), batch_size):
            out = self.serve(text=tf.constant(texts[i : i + batch_size], dtype=tf.string))
            parts.append({k: v.numpy() for k, v in out.items()})
            if progress is not None:
                progress.update(len(parts[-1]["label_id"]))
        if progress is not None:
            progress.close()
        if not parts:
            return {"probabilities": np.zeros((0, len(self.labels)), np.float32),
                    "label_id": np.zeros((0,), np.int32), "label": []}
        return {
            "probabilities": np.concatenate([p["probabilities"] for p in parts]),
            "label_id": np.concatenate([p["label_id"] for p in parts]),
            "label": [x.decode("utf-8") for p in parts for x in p["label"]],
        }


def find_export(path: str) -> str:
    """``path`` if it is an export, else ``<path>/export``; ExportError otherwise."""
    import tensorflow as tf

    path = path.rstrip("/")
    for candidate in (path, _join(path, EXPORT_SUBDIR)):
        if tf.io.gfile.exists(_join(candidate, "saved_model.pb")):
            return candidate
    hint = (
        f"run `kt-pipeline export --model-dir {path}` first"
        if tf.io.gfile.exists(_join(path, "labels.json"))
        else "pass an export dir (holding saved_model.pb) or a model dir containing export/"
    )
    raise ExportError(f"no SavedModel at {path} or {_join(path, EXPORT_SUBDIR)}; {hint}")


def load_exported(path: str) -> ExportedClassifier:
    """Load an export dir, or the ``export/`` inside a model dir."""
    return ExportedClassifier(find_export(path))


def read_export_info(path: str) -> dict:
    """``assets.extra/kt_export.json`` of an export (labels, max_seq_length, preset...)."""
    info = _read_json(_join(path.rstrip("/"), EXTRA_DIR, METADATA_FILE))
    if info is None:
        raise ExportError(f"{path} has no {EXTRA_DIR}/{METADATA_FILE}: not a kt-pipeline export")
    return info
