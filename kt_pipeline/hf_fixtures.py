"""Tiny random Hugging Face checkpoint directories, for tests of `--preset DIR`.

:func:`write_hf_checkpoint` writes what ``transformers`` would save for a BERT,
RoBERTa, XLM-RoBERTa, DistilBERT or ALBERT model: ``config.json`` (with
``model_type``), the tokenizer files, and ``model.safetensors`` holding random
weights under the Hugging Face weight names that KerasHub's converters
(``keras_hub/src/utils/transformers/convert_*.py``) read. ALBERT and XLM-R need a
SentencePiece model; one is trained in-process from a few lines of text.

Example:

>>> from kt_pipeline import encoders, hf_fixtures
>>> path = hf_fixtures.write_hf_checkpoint("/tmp/tiny_roberta", "roberta")  # doctest: +SKIP
>>> tok = encoders.load_tokenizer(path)                                    # doctest: +SKIP
>>> encoders.TextEncoding(tok).encode(["a fine film"], 16)                 # doctest: +SKIP
<tf.RaggedTensor [[0, ..., 2]]>
"""

from __future__ import annotations

import io
import json
import os

import numpy as np

from kt_pipeline.testing import WORDS, tiny_vocabulary

MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "albert")

# Sentences for training tiny SentencePiece models and for tests.
SENTENCES = [
    " ".join(WORDS[i : i + 6]) + (" !" if i % 2 else " .") for i in range(0, len(WORDS), 3)
] + ["The movie was really good .", "I hated the ending , it was boring ."]


# ----------------------------------------------------------------- weight shapes


def _linear(name: str, out_dim: int, in_dim: int) -> dict:
    """A ``torch.nn.Linear``: ``weight`` is ``[out, in]``."""
    return {f"{name}.weight": (out_dim, in_dim), f"{name}.bias": (out_dim,)}


def _norm(name: str, dim: int) -> dict:
    return {f"{name}.weight": (dim,), f"{name}.bias": (dim,)}


def _bert_like_layers(prefix: str, layers: int, hidden: int, inter: int) -> dict:
    """Encoder layers named as in BERT, RoBERTa and XLM-R (``encoder.layer.{i}``)."""
    shapes = {}
    for i in range(layers):
        p = f"{prefix}encoder.layer.{i}"
        for part in ("query", "key", "value"):
            shapes.update(_linear(f"{p}.attention.self.{part}", hidden, hidden))
        shapes.update(_linear(f"{p}.attention.output.dense", hidden, hidden))
        shapes.update(_norm(f"{p}.attention.output.LayerNorm", hidden))
        shapes.update(_linear(f"{p}.intermediate.dense", inter, hidden))
        shapes.update(_linear(f"{p}.output.dense", hidden, inter))
        shapes.update(_norm(f"{p}.output.LayerNorm", hidden))
    return shapes


def _bert_like_shapes(prefix, vocab, positions, type_vocab, layers, hidden, inter) -> dict:
    shapes = {
        f"{prefix}embeddings.word_embeddings.weight": (vocab, hidden),
        f"{prefix}embeddings.position_embeddings.weight": (positions, hidden),
        f"{prefix}embeddings.token_type_embeddings.weight": (type_vocab, hidden),
    }
    shapes.update(_norm(f"{prefix}embeddings.LayerNorm", hidden))
    shapes.update(_bert_like_layers(prefix, layers, hidden, inter))
    shapes.update(_linear(f"{prefix}pooler.dense", hidden, hidden))
    return shapes


def _distilbert_shapes(vocab, positions, layers, hidden, inter) -> dict:
    p = "distilbert."
    shapes = {
        f"{p}embeddings.word_embeddings.weight": (vocab, hidden),
        f"{p}embeddings.position_embeddings.weight": (positions, hidden),
    }
    shapes.update(_norm(f"{p}embeddings.LayerNorm", hidden))
    for i in range(layers):
        lp = f"{p}transformer.layer.{i}"
        for part in ("q_lin", "k_lin", "v_lin", "out_lin"):
            shapes.update(_linear(f"{lp}.attention.{part}", hidden, hidden))
        shapes.update(_norm(f"{lp}.sa_layer_norm", hidden))
        shapes.update(_linear(f"{lp}.ffn.lin1", inter, hidden))
        shapes.update(_linear(f"{lp}.ffn.lin2", hidden, inter))
        shapes.update(_norm(f"{lp}.output_layer_norm", hidden))
    return shapes


def _albert_shapes(vocab, positions, embed, hidden, inter) -> dict:
    p = "albert."
    shapes = {
        f"{p}embeddings.word_embeddings.weight": (vocab, embed),
        f"{p}embeddings.position_embeddings.weight": (positions, embed),
        f"{p}embeddings.token_type_embeddings.weight": (2, embed),
    }
    shapes.update(_norm(f"{p}embeddings.LayerNorm", embed))
    shapes.update(_linear(f"{p}encoder.embedding_hidden_mapping_in", hidden, embed))
    g = f"{p}encoder.albert_layer_groups.0.albert_layers.0"
    for part in ("query", "key", "value", "dense"):
        shapes.update(_linear(f"{g}.attention.{part}", hidden, hidden))
    shapes.update(_norm(f"{g}.attention.LayerNorm", hidden))
    shapes.update(_linear(f"{g}.ffn", inter, hidden))
    shapes.update(_linear(f"{g}.ffn_output", hidden, inter))
    shapes.update(_norm(f"{g}.full_layer_layer_norm", hidden))
    shapes.update(_linear(f"{p}pooler", hidden, hidden))
    return shapes


def random_weights(shapes: dict, seed: int = 0) -> dict:
    """Random float32 tensors: LayerNorm weights 1, biases 0, the rest N(0, 0.02)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        if name.endswith(".bias"):
            out[name] = np.zeros(shape, np.float32)
        elif "norm" in name.lower() and name.endswith(".weight"):
            out[name] = np.ones(shape, np.float32)
        else:
            out[name] = (rng.standard_normal(shape) * 0.02).astype(np.float32)
    return out


# -------------------------------------------------------------------- tokenizers


def bytes_to_unicode() -> dict:
    """GPT-2's reversible byte -> printable unicode character map (byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tiny_bpe() -> tuple[dict, list[str]]:
    """A byte-level BPE vocabulary and merges covering :data:`WORDS` (RoBERTa style)."""
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>"])}
    for ch in bytes_to_unicode().values():
        vocab.setdefault(ch, len(vocab))
    merges = []
    for word in WORDS:
        pieces = list("Ġ" + word)  # "Ġ" is the byte-level form of a leading space
        while len(pieces) > 1:
            merged = pieces[0] + pieces[1]
            if f"{pieces[0]} {pieces[1]}" not in merges:
                merges.append(f"{pieces[0]} {pieces[1]}")
            vocab.setdefault(merged, len(vocab))
            pieces = [merged] + pieces[2:]
    vocab["<mask>"] = len(vocab)
    return vocab, merges


def train_sentencepiece(kind: str, vocab_size: int = 120) -> bytes:
    """Train a tiny SentencePiece model laid out like ALBERT's or XLM-R's; return its bytes."""
    import sentencepiece as spm

    if kind == "albert":  # <pad>=0 <unk>=1 [CLS]=2 [SEP]=3 [MASK]=4
        ids = dict(pad_id=0, unk_id=1, bos_id=-1, eos_id=-1,
                   control_symbols=["[CLS]", "[SEP]", "[MASK]"])
    elif kind == "xlm-roberta":  # <unk>=0 <s>=1 </s>=2 (fairseq adds <pad> and <mask>)
        ids = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    else:
        raise ValueError(f"no SentencePiece layout for {kind!r}")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 4),
        model_writer=buf,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        model_type="unigram",
        character_coverage=1.0,
        minloglevel=2,
        **ids,
    )
    return buf.getvalue()


def _sentencepiece_size(proto: bytes) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=proto).get_piece_size()


# ---------------------------------------------------------------------- writer


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)


def write_hf_checkpoint(
    path: str,
    model_type: str = "bert",
    *,
    hidden: int = 16,
    layers: int = 2,
    heads: int = 2,
    intermediate: int = 32,
    max_positions: int = 64,
    seed: int = 0,
    tokenizer_config="default",
    vocab_txt: bool = True,
    tokenizer_json: bool = False,
    weights: bool = True,
) -> str:
    """Write a tiny random Hugging Face checkpoint directory at ``path``; return it.

    ``tokenizer_config``: ``"default"`` writes a normal ``tokenizer_config.json``; a
    ``dict`` is written as JSON; any other ``str`` is written verbatim (e.g. the
    single-quoted text some checkpoints ship); ``None`` writes no such file.
    ``vocab_txt=False`` leaves out BERT/DistilBERT's ``vocab.txt`` (RoBERTa's
    ``vocab.json``/``merges.txt``); ``tokenizer_json=True`` adds a ``tokenizer.json``
    (the fast-tokenizer file holding the same vocabulary). ``weights=False`` writes
    no ``model.safetensors``.
    """
    from safetensors.numpy import save_file

    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    os.makedirs(path, exist_ok=True)
    base = {
        "model_type": model_type,
        "vocab_size": None,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": intermediate,
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": max_positions,
        "type_vocab_size": 2,
    }
    fast = None  # the tokenizer.json "model" section
    if model_type in ("bert", "distilbert"):
        vocab = tiny_vocabulary()
        if vocab_txt:
            with open(os.path.join(path, "vocab.txt"), "w", encoding="utf-8") as f:
                f.write("\n".join(vocab) + "\n")
        fast = {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                "vocab": {t: i for i, t in enumerate(vocab)}}
        size, tok_cfg = len(vocab), {"do_lower_case": True, "tokenizer_class": "BertTokenizer"}
    elif model_type == "roberta":
        vocab, merges = tiny_bpe()
        if vocab_txt:
            _write_json(os.path.join(path, "vocab.json"), vocab)
            with open(os.path.join(path, "merges.txt"), "w", encoding="utf-8") as f:
                f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
        fast = {"type": "BPE", "vocab": vocab, "merges": merges}
        size, tok_cfg = len(vocab), {"tokenizer_class": "RobertaTokenizer"}
        base["type_vocab_size"] = 1
    else:
        proto = train_sentencepiece(model_type)
        name = "spiece.model" if model_type == "albert" else "sentencepiece.bpe.model"
        with open(os.path.join(path, name), "wb") as f:
            f.write(proto)
        size = _sentencepiece_size(proto) + (2 if model_type == "xlm-roberta" else 0)
        tok_cfg = {"tokenizer_class": "AlbertTokenizer" if model_type == "albert"
                   else "XLMRobertaTokenizer"}
        if model_type == "xlm-roberta":
            base["type_vocab_size"] = 1
    base["vocab_size"] = size

    if model_type in ("roberta", "xlm-roberta"):
        base["max_position_embeddings"] = max_positions + 2  # 2 reserved rows
        shapes = _bert_like_shapes("roberta.", size, max_positions + 2, 1, layers, hidden,
                                   intermediate)
    elif model_type == "bert":
        shapes = _bert_like_shapes("bert.", size, max_positions, 2, layers, hidden, intermediate)
    elif model_type == "distilbert":
        base = {"model_type": model_type, "vocab_size": size, "dim": hidden, "n_layers": layers,
                "n_heads": heads, "hidden_dim": intermediate, "dropout": 0.1,
                "attention_dropout": 0.1, "max_position_embeddings": max_positions}
        shapes = _distilbert_shapes(size, max_positions, layers, hidden, intermediate)
    else:  # albert
        embed = max(8, hidden // 2)
        base.update(embedding_size=embed, num_hidden_groups=1, inner_group_num=1)
        shapes = _albert_shapes(size, max_positions, embed, hidden, intermediate)

    _write_json(os.path.join(path, "config.json"), base)
    if tokenizer_config == "default":
        _write_json(os.path.join(path, "tokenizer_config.json"), tok_cfg)
    elif isinstance(tokenizer_config, dict):
        _write_json(os.path.join(path, "tokenizer_config.json"), tokenizer_config)
    elif isinstance(tokenizer_config, str):
        with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            f.write(tokenizer_config)
    if tokenizer_json and fast is not None:
        normalizer = ({"type": "BertNormalizer", "lowercase": True}
                      if model_type in ("bert", "distilbert") else None)
        _write_json(os.path.join(path, "tokenizer.json"),
                    {"version": "1.0", "normalizer": normalizer, "model": fast})
    if weights:
        save_file(random_weights(shapes, seed), os.path.join(path, "model.safetensors"))
    return path
