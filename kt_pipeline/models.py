"""The classifier: backbone -> pooled output (CLS or masked mean) -> dropout -> Dense.

Inputs are ``{"token_ids": int32 [B, L], "padding_mask": bool [B, L]}`` (what
``reader.make_dataset`` yields); the output is float32 logits ``[B, num_classes]``
even under a ``mixed_bfloat16`` policy. Backbones that take ``segment_ids`` (BERT,
ALBERT) get zeros added inside the model; RoBERTa, XLM-R and DistilBERT do not.

Example:

>>> from kt_pipeline import encoders, models
>>> backbone = encoders.load_backbone("/tmp/tiny_bert")             # doctest: +SKIP
>>> model = models.build_classifier(backbone, num_classes=2,
...                                 pooling="mean", freeze_body=True)  # doctest: +SKIP
>>> model({"token_ids": ids, "padding_mask": mask}).shape          # doctest: +SKIP
TensorShape([8, 2])
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
from keras import ops  # noqa: E402

from kt_pipeline import fast_layers  # noqa: E402
from kt_pipeline.errors import ConfigError, KtError  # noqa: E402

POOLINGS = ("cls", "mean")
LABELS_FILE = "labels.json"
BEST_MODEL_FILE = "best.keras"
FINAL_MODEL_FILE = "final.keras"


def pool(sequence_output, padding_mask, pooling: str = "cls"):
    """Reduce ``[B, L, H]`` to ``[B, H]``: first token (``cls``) or masked mean (``mean``).

    The mean ignores padded positions, so extra padding does not change the result.
    """
    if pooling == "cls":
        return sequence_output[:, 0, :]
    if pooling == "mean":
        mask = ops.cast(padding_mask, sequence_output.dtype)[:, :, None]
        total = ops.sum(sequence_output * mask, axis=1)
        count = ops.maximum(ops.sum(mask, axis=1), ops.cast(1.0, mask.dtype))
        return total / count
    raise ConfigError(f"pooling={pooling!r}: expected one of {', '.join(POOLINGS)}")


@keras.saving.register_keras_serializable(package="kt_pipeline")
class Pooling(keras.layers.Layer):
    """Layer wrapper around :func:`pool` so the model saves and reloads as `.keras`."""

    def __init__(self, pooling: str = "cls", **kwargs):
        super().__init__(**kwargs)
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling={pooling!r}: expected one of {', '.join(POOLINGS)}")
        self.pooling = pooling

    def call(self, sequence_output, padding_mask):
        return pool(sequence_output, padding_mask, self.pooling)

    def compute_output_shape(self, sequence_output_shape, padding_mask_shape=None):
        return (sequence_output_shape[0], sequence_output_shape[-1])

    def get_config(self):
        return {**super().get_config(), "pooling": self.pooling}


@keras.saving.register_keras_serializable(package="kt_pipeline")
class ZeroSegments(keras.layers.Layer):
    """``segment_ids`` of zeros shaped like ``token_ids`` (single-segment input)."""

    def call(self, token_ids):
        return ops.zeros_like(token_ids, dtype="int32")

    def compute_output_shape(self, shape):
        return shape


def backbone_input_names(backbone) -> list[str]:
    """Names of the backbone's inputs, e.g. ``["token_ids", "segment_ids", "padding_mask"]``."""
    inputs = backbone.input
    if isinstance(inputs, dict):
        return list(inputs)
    if isinstance(inputs, (list, tuple)):
        return [t.name for t in inputs]
    return [inputs.name]


def _freeze_unused_pooler(backbone) -> None:
    """BERT's own pooler (``pooled_dense``) gets no gradient here; keep it out of training."""
    for layer in getattr(backbone, "layers", []):
        if layer.name == "pooled_dense":
            layer.trainable = False


def _disable_dropout(backbone) -> int:
    """Set every Dropout inside ``backbone`` to rate 0; return how many were changed.

    Keras 3 passes ``training=True`` to every layer of a model in ``fit``, frozen or not,
    so a frozen backbone would still drop activations (a noisier, slower head and
    features that differ from the frozen fast path's cache). A frozen body is meant to
    be a fixed feature extractor, so its dropout goes.
    """
    changed = 0
    for layer in backbone._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.Dropout) and layer.rate > 0:
            layer.rate = 0.0
            changed += 1
    return changed


def build_classifier(
    backbone,
    num_classes: int,
    pooling: str = "cls",
    dropout: float = 0.1,
    freeze_body: bool = False,
) -> keras.Model:
    """Wrap a KerasHub backbone into a text classifier returning float32 logits.

    ``num_classes`` is 2 for binary tasks (softmax over two logits). ``freeze_body``
    makes the backbone non-trainable so only the head learns, and turns its dropout off
    (the body then computes the same features in training and inference).
    """
    if num_classes < 2:
        raise ConfigError(
            f"num_classes={num_classes}: a classifier needs at least 2 labels; check the "
            "cache's label column (manifest 'labels')"
        )
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling={pooling!r}: expected one of {', '.join(POOLINGS)}")
    names = backbone_input_names(backbone)
    unknown = sorted(set(names) - {"token_ids", "padding_mask", "segment_ids"})
    if unknown:
        raise ConfigError(
            f"backbone {type(backbone).__name__} needs inputs {unknown} that this "
            "pipeline does not provide; use a BERT/RoBERTa/XLM-R/DistilBERT/ALBERT encoder"
        )
    backbone.trainable = not freeze_body
    if freeze_body:
        _disable_dropout(backbone)
    _freeze_unused_pooler(backbone)
    if pooling == "cls":  # only the first position of the last layer is read
        fast_layers.install_cls_only(backbone)
    else:  # a backbone reused from a CLS classifier computes every position again
        fast_layers.remove_cls_only(backbone)

    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    padding_mask = keras.Input(shape=(None,), dtype="bool", name="padding_mask")
    backbone_inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
    if "segment_ids" in names:
        backbone_inputs["segment_ids"] = ZeroSegments(name="segment_ids")(token_ids)
    outputs = backbone(backbone_inputs)
    sequence = outputs["sequence_output"] if isinstance(outputs, dict) else outputs
    pooled = Pooling(pooling, name=f"{pooling}_pooling")(sequence, padding_mask)
    x = keras.layers.Dropout(dropout, name="head_dropout")(pooled)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(
        inputs={"token_ids": token_ids, "padding_mask": padding_mask},
        outputs=logits,
        name="text_classifier",
    )


def position_limit(model):
    """The most tokens a backbone (or a classifier's) has positions for (None: unknown)."""
    limits = [int(layer.max_sequence_length) for layer in model._flatten_layers()
              if isinstance(getattr(layer, "max_sequence_length", None), int)]
    return min(limits) if limits else None


def check_position_limit(model, max_seq_length: int, error=ConfigError, why: str = "") -> None:
    """Raise `error` when `max_seq_length` exceeds the encoder's :func:`position_limit`
    (`why`: what a longer length would break, appended to the message)."""
    limit = position_limit(model)
    if limit and max_seq_length > limit:
        raise error(f"max_seq_length={max_seq_length}: the encoder has position embeddings for "
                    f"{limit} tokens{why}; pass --max-seq-length {limit} or less")


def clear_for_overwrite(path: str) -> None:
    """Remove ``path`` before it is rewritten when the filesystem would append instead.

    TensorFlow's ``ram://`` filesystem (the tests' stand-in for ``gs://``) appends
    when a file is opened for writing again; local disk and ``gs://`` replace it.
    """
    import tensorflow as tf

    if path.startswith("ram://") and tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)


def write_text(path: str, text: str) -> None:
    """Write (replace) a small text file through ``tf.io.gfile`` (local, gs://, ram://)."""
    import tensorflow as tf

    parent = path.rsplit("/", 1)[0]
    if parent and not tf.io.gfile.exists(parent):
        tf.io.gfile.makedirs(parent)
    clear_for_overwrite(path)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)


def save_labels(model_dir: str, labels: list) -> str:
    """Write the label vocabulary (index order) to ``<model_dir>/labels.json``."""
    path = f"{model_dir.rstrip('/')}/{LABELS_FILE}"
    write_text(path, json.dumps([str(x) for x in labels], ensure_ascii=False, indent=1))
    return path


def load_labels(model_dir: str) -> list[str]:
    """Read ``<model_dir>/labels.json`` (the label vocabulary in index order)."""
    import tensorflow as tf

    path = f"{model_dir.rstrip('/')}/{LABELS_FILE}"
    if not tf.io.gfile.exists(path):
        raise KtError(f"{path} not found: is {model_dir} a model dir written by `kt-pipeline train`?")
    with tf.io.gfile.GFile(path, "r") as f:
        return json.loads(f.read())


def saved_model_path(model_dir: str) -> str:
    """The best checkpoint (``best.keras``) if present, else ``final.keras``."""
    import tensorflow as tf

    for name in (BEST_MODEL_FILE, FINAL_MODEL_FILE):
        path = f"{model_dir.rstrip('/')}/{name}"
        if tf.io.gfile.exists(path):
            return path
    raise KtError(
        f"no {BEST_MODEL_FILE} or {FINAL_MODEL_FILE} in {model_dir}; train first with "
        f"`kt-pipeline train --model-dir {model_dir} ...`"
    )


def load_classifier(model_dir: str) -> keras.Model:
    """Load the trained classifier from a model dir (local, ``gs://`` or ``ram://``)."""
    import keras_hub  # noqa: F401  (registers the backbone classes)

    from kt_pipeline import batch_split

    model = keras.saving.load_model(saved_model_path(model_dir), compile=False)
    batch_split.install_in(model)  # two-core CPUs: evaluation and prediction in halves
    return model
