"""Frozen-encoder fast path: pooled encoder outputs computed once, heads trained on them.

With ``freeze_body`` the encoder never changes, so its pooled output for an example is
the same every epoch and every trial. :class:`FeatureStore` computes it once per
(split, max_seq_length, pooling), stores it as ``.npy`` files through ``tf.io.gfile``
(local, ``gs://``, ``ram://``), and later trials load it. A head (dropout + Dense, the
same layers :func:`kt_pipeline.models.build_classifier` puts on top of the encoder)
then trains on the cached features: an epoch costs a few matrix products instead of
a pass through the encoder.

Layout::

    <root>/<key>/<split>-L<max_seq_length>-<pooling>.features.npy   float32 [N, H]
    <root>/<key>/<split>-L<max_seq_length>-<pooling>.labels.npy     int32 [N]

``key`` is a digest of the cache's ``build_id`` and the encoder, so a rebuilt cache or
another encoder never reads stale features. The encoder runs in inference mode
(dropout off), as a frozen encoder should.

Example:

>>> from kt_pipeline import frozen
>>> store = frozen.FeatureStore("runs/tune/demo/features", "tfrecords/demo",
...                             preset=None)                           # doctest: +SKIP
>>> x, y = store.get("train", max_seq_length=64, pooling="cls")        # doctest: +SKIP
>>> head = frozen.build_head(x.shape[1], num_classes=2, dropout=0.1)   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import sys
import time
import uuid
from typing import NamedTuple, Optional

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

HEAD_SEED = 1234
EXTRACT_BATCH = 64


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def head_initializer(seed: int = HEAD_SEED):
    """The seeded kernel initializer both paths give the ``logits`` Dense layer."""
    return keras.initializers.GlorotUniform(seed=seed)


def init_head(dense: keras.layers.Layer, seed: int = HEAD_SEED) -> None:
    """Re-initialise a built Dense layer: seeded Glorot kernel, zero bias.

    Used on the full classifier's ``logits`` layer so the slow path starts from the
    same head as :func:`build_head` (same seed, same shape -> same weights).
    """
    kernel = head_initializer(seed)(dense.kernel.shape, dtype="float32")
    weights = [kernel] + ([np.zeros(dense.bias.shape, "float32")] if dense.use_bias else [])
    dense.set_weights([np.asarray(w) for w in weights])


def build_head(hidden_dim: int, num_classes: int, dropout: float = 0.1,
               seed: int = HEAD_SEED) -> keras.Model:
    """``features [B, H] -> dropout -> Dense(num_classes)`` float32 logits."""
    features = keras.Input(shape=(int(hidden_dim),), dtype="float32", name="features")
    x = keras.layers.Dropout(dropout, name="head_dropout")(features)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits",
                                kernel_initializer=head_initializer(seed))(x)
    return keras.Model(features, logits, name="frozen_head")


def _save_npy(path: str, array: np.ndarray) -> None:
    """Write ``array`` atomically (temp file + rename) so readers never see half a file."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    if path.startswith("ram://"):  # TF's in-memory test filesystem cannot rename
        if tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(buf.getvalue())
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with tf.io.gfile.GFile(tmp, "wb") as f:
        f.write(buf.getvalue())
    tf.io.gfile.rename(tmp, path, overwrite=True)


def _load_npy(path: str) -> np.ndarray:
    with tf.io.gfile.GFile(path, "rb") as f:
        return np.load(io.BytesIO(f.read()), allow_pickle=False)


class FeatureStore:
    """Pooled encoder outputs per (split, max_seq_length, pooling), computed once.

    ``computed`` lists the keys this instance had to compute (the rest were loaded).
    """

    def __init__(self, root: str, cache_dir: str, preset: Optional[str] = None,
                 manifest: Optional[dict] = None, verbose: bool = True):
        from kt_pipeline import reader

        self.cache_dir = cache_dir
        self.manifest = manifest or reader.load_manifest(cache_dir)
        self.preset = preset
        ident = {"build_id": self.manifest.get("build_id"), "preset": preset or "default",
                 "tokenizer": self.manifest.get("tokenizer")}
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
        self.dir = _join(root, digest)
        self.verbose = verbose
        self.computed: list[str] = []
        self._encoders: dict = {}
        self._memory: dict = {}

    def paths(self, split: str, max_seq_length: int, pooling: str) -> tuple[str, str]:
        stem = _join(self.dir, f"{split}-L{int(max_seq_length)}-{pooling}")
        return f"{stem}.features.npy", f"{stem}.labels.npy"

    def get(self, split: str, max_seq_length: int, pooling: str = "cls"):
        """``(features float32 [N, H], labels int32 [N])`` in the cache's record order."""
        key = (split, int(max_seq_length), pooling)
        if key in self._memory:
            return self._memory[key]
        fpath, lpath = self.paths(*key)
        if tf.io.gfile.exists(fpath) and tf.io.gfile.exists(lpath):
            out = (_load_npy(fpath), _load_npy(lpath))
        else:
            started = time.time()
            out = self._compute(*key)
            tf.io.gfile.makedirs(self.dir)
            _save_npy(fpath, out[0])
            _save_npy(lpath, out[1])
            self.computed.append(f"{split}-L{max_seq_length}-{pooling}")
            if self.verbose:
                print(f"frozen features: {split} max_seq_length={max_seq_length} {pooling}: "
                      f"{len(out[1])} examples in {time.time() - started:.1f}s -> {fpath}",
                      file=sys.stderr)
        self._memory[key] = out
        return out

    def _encoder(self, pooling: str) -> keras.Model:
        """``{"token_ids", "padding_mask"} -> pooled [B, H]`` (the backbone loaded once)."""
        if pooling not in self._encoders:
            from kt_pipeline import encoders, models

            if "_backbone" not in self._encoders:
                self._encoders["_backbone"] = encoders.load_backbone(self.preset)
            backbone = self._encoders["_backbone"]
            token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
            mask = keras.Input(shape=(None,), dtype="bool", name="padding_mask")
            inputs = {"token_ids": token_ids, "padding_mask": mask}
            if "segment_ids" in models.backbone_input_names(backbone):
                inputs["segment_ids"] = models.ZeroSegments()(token_ids)
            out = backbone(inputs)
            seq = out["sequence_output"] if isinstance(out, dict) else out
            pooled = models.Pooling(pooling)(seq, mask)
            self._encoders[pooling] = keras.Model({"token_ids": token_ids, "padding_mask": mask},
                                                  pooled)
        return self._encoders[pooling]

    def _compute(self, split: str, max_seq_length: int, pooling: str):
        from kt_pipeline import reader

        encoder = self._encoder(pooling)
        stored = int(self.manifest.get("max_length") or max_seq_length)
        ds = reader.make_dataset(self.cache_dir, split, batch_size=EXTRACT_BATCH,
                                 max_seq_length=min(int(max_seq_length), stored),
                                 padding="dynamic", shuffle=False)

        @tf.function(reduce_retracing=True)
        def run(features):
            return encoder(features, training=False)

        feats, labels = [], []
        for x, y in ds:
            feats.append(run(x).numpy().astype("float32"))
            labels.append(y.numpy().astype("int32"))
        if not feats:
            hidden = int(encoder.output.shape[-1])
            return np.zeros((0, hidden), "float32"), np.zeros((0,), "int32")
        return np.concatenate(feats), np.concatenate(labels)


class HeadData(NamedTuple):
    """What ``fit`` needs to train a head on cached features."""

    train: tf.data.Dataset
    validation: Optional[tf.data.Dataset]
    steps_per_epoch: int
    train_examples: int
    validation_examples: int
    hidden_dim: int


def head_datasets(store: FeatureStore, max_seq_length: int, pooling: str, batch_size: int,
                  seed: int = 42, max_train_examples: Optional[int] = None) -> HeadData:
    """Shuffled, repeated train batches and validation batches of cached features.

    Mirrors ``training.make_datasets``: ``max_train_examples`` keeps the first N train
    examples; an epoch is ``ceil(N / batch_size)`` steps.
    """
    from kt_pipeline import reader
    from kt_pipeline.errors import KtError

    x, y = store.get("train", max_seq_length, pooling)
    if max_train_examples:
        x, y = x[: int(max_train_examples)], y[: int(max_train_examples)]
    if len(y) == 0:
        raise KtError(f"{store.cache_dir}: the cache has no train examples")
    train = (tf.data.Dataset.from_tensor_slices((x, y))
             .shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
             .repeat().batch(batch_size).prefetch(reader.PREFETCH_BATCHES)
             .with_options(reader.data_options()))
    val, n_val = None, int(store.manifest["counts"]["written"].get("validation", 0))
    if n_val:
        vx, vy = store.get("validation", max_seq_length, pooling)
        val = (tf.data.Dataset.from_tensor_slices((vx, vy)).batch(batch_size)
               .prefetch(reader.PREFETCH_BATCHES).with_options(reader.data_options()))
    return HeadData(train, val, math.ceil(len(y) / batch_size), len(y), n_val, int(x.shape[1]))
