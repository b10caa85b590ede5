"""Small, fast fixtures for tests and docs: a tiny randomly initialised BERT.

Example:

>>> from kt_pipeline.testing import make_tiny_bert_preset
>>> path = make_tiny_bert_preset("/tmp/tiny_bert")       # doctest: +SKIP
>>> from kt_pipeline import encoders
>>> encoders.load_backbone(path).count_params() < 200_000  # doctest: +SKIP
True
"""

from __future__ import annotations

import os
import string

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "the a an and or but not no is was it this that movie film game story plot "
    "good great bad awful boring fun love loved hate hated best worst fine ok "
    "really very quite i you we they he she acting music ending"
).split()


def tiny_vocabulary() -> list[str]:
    """Specials, punctuation, single letters/digits and their ## pieces, some words."""
    chars = list(string.ascii_lowercase + string.digits)
    punct = list(".,!?'\"-:;()")
    pieces = ["##" + c for c in chars]
    vocab = SPECIALS + punct + chars + pieces + WORDS
    seen, out = set(), []
    for t in vocab:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def make_tiny_bert_preset(
    path: str,
    hidden_dim: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_dim: int = 64,
    max_sequence_length: int = 512,
    seed: int = 0,
) -> str:
    """Write a KerasHub preset directory holding a tiny random BERT; return its path."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    vocab = tiny_vocabulary()
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocab, lowercase=True)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocab),
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=intermediate_dim,
        max_sequence_length=max_sequence_length,
    )
    os.makedirs(path, exist_ok=True)
    backbone.save_to_preset(path)
    tokenizer.save_to_preset(path)
    return path
