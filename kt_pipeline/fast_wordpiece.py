"""A faster WordPiece path that gives exactly the ids of KerasHub's WordPiece tokenizer.

KerasHub's ``WordPieceTokenizer`` (``BertTokenizer``, ``DistilBertTokenizer``, ...)
runs several regex ops (CJK spacing, splitting on whitespace/punctuation, case folding
per word) before ``tf_text.FastWordpieceTokenizer``. For most text the same ids come
from one end-to-end ``FastWordpieceTokenizer`` (it splits on whitespace, punctuation
and CJK itself, in C++) applied to the case-folded text, which is several times faster.

The two differ on some characters (control/format characters, no-break spaces, and
characters whose case folding introduces spaces or punctuation such as ``…`` -> ``...``).
So :class:`FastWordPiece` sends a string down the fast path only when every character
is in a *safe set*, and the rest through the KerasHub tokenizer itself. The safe set
is ASCII plus Latin letters, common punctuation, Hangul and CJK ideographs, pruned by a
self-check at construction that tokenises every candidate character both ways; if the
check finds any mismatch on the fixed probe strings, the fast path is switched off.

Anything that is not a plain WordPiece tokenizer (BPE, SentencePiece, special tokens
split from strings, a fixed ``sequence_length``) keeps the KerasHub tokenizer.

Example:

>>> from kt_pipeline import encoders, fast_wordpiece
>>> tok = encoders.load_tokenizer(None)                            # doctest: +SKIP
>>> enc = fast_wordpiece.text_encoding(tok)   # a TextEncoding     # doctest: +SKIP
>>> enc.encode(["A fine film."], 16).to_list()                     # doctest: +SKIP
[[101, 1037, 2986, 2143, 1012, 102]]
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile

from kt_pipeline import encoders

log = logging.getLogger(__name__)

# Candidate non-ASCII code point ranges (inclusive) for the fast path; the self-check
# keeps those whose tokenisation matches KerasHub's on their own and next to letters.
CANDIDATE_RANGES = (
    (0x00C0, 0x024F),  # Latin-1 letters, Latin Extended-A/B
    (0x2010, 0x2027),  # dashes, quotes, bullets, ellipsis (pruned)
    (0x2030, 0x205E),  # per mille, primes, angle quotes, ...
    (0x3001, 0x3011),  # CJK punctuation and brackets
    (0x3131, 0x318E),  # Hangul compatibility jamo
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xAC00, 0xD7A3),  # Hangul syllables
    (0xFF01, 0xFF5E),  # full-width ASCII (pruned)
)
# Fixed probes: the fast path is switched off entirely if any of these differ.
PROBES = (
    "", " ", "Hello, World!", "don't STOP-me now...", "a\tb\nc\rd  e", "[CLS] x [SEP] [UNK] [PAD]",
    "x" * 150, "Ab" * 60 + " tail", "$5.00 & 100% <br /> e-mail U.S.A. C++ ~`^|\\{}",
    "##hash ## #", "Naïve café Ünïcödé STRASSE straße", "“Quoted” — ‘dash’ – …",
    "영화 정말 재밌다ㅋㅋㅋ ㅠㅠ 최고!!", "中文字符测试。日本語", "ＡＢＣ！ｘ", "1234567890 3.14159",
)
_MAX_FAST_CACHE = 8
SELF_CHECK_VERSION = 1
# Where self-check results are kept between processes (per user).
CHECK_DIR = os.environ.get("KT_FAST_WORDPIECE_DIR") or os.path.join(
    tempfile.gettempdir(), f"kt_pipeline-{os.getuid() if hasattr(os, 'getuid') else 'u'}", "fast_wordpiece")
_cache: dict = {}
_encodings: dict = {}


def _ascii_class() -> str:
    return r"\t\n\r\x20-\x7e"


def _ranges(cps) -> list:
    """Sorted code points -> [(lo, hi)] runs."""
    out = []
    for cp in sorted(cps):
        if out and cp == out[-1][1] + 1:
            out[-1][1] = cp
        else:
            out.append([cp, cp])
    return [tuple(r) for r in out]


def _safe_pattern(cps) -> str:
    parts = [_ascii_class()]
    for lo, hi in _ranges(cps):
        parts.append(f"\\x{{{lo:x}}}" if lo == hi else f"\\x{{{lo:x}}}-\\x{{{hi:x}}}")
    return "[" + "".join(parts) + "]*"


def supports(tokenizer) -> bool:
    """True for a KerasHub WordPiece tokenizer whose splitting the fast path mirrors."""
    try:
        from keras_hub.tokenizers import WordPieceTokenizer
    except ImportError:  # pragma: no cover
        return False
    return (
        isinstance(tokenizer, WordPieceTokenizer)
        and getattr(tokenizer, "split", False)
        and not getattr(tokenizer, "special_tokens_in_strings", False)
        and not getattr(tokenizer, "sequence_length", None)
        and "int" in str(getattr(tokenizer, "compute_dtype", "int32"))
        and getattr(tokenizer, "vocabulary", None) is not None
    )


class FastWordPiece:
    """Callable like the KerasHub tokenizer (strings -> ragged int32 ids, no specials).

    Build with :func:`fast_tokenizer` (which runs the self-check and caches the result).
    :meth:`is_safe` / :meth:`is_safe_text` say which strings take the fast path.
    """

    def __init__(self, tokenizer, safe_codepoints=(), wordpiece=None):
        import tensorflow as tf
        import tensorflow_text as tf_text

        self.tokenizer = tokenizer
        self.start_token_id = tokenizer.start_token_id
        self.end_token_id = tokenizer.end_token_id
        self.pad_token_id = tokenizer.pad_token_id
        self.lowercase = bool(tokenizer.lowercase)
        self.strip_accents = bool(tokenizer.strip_accents)
        self._wordpiece = wordpiece or tf_text.FastWordpieceTokenizer(
            vocab=list(tokenizer.get_vocabulary()),
            suffix_indicator=tokenizer.suffix_indicator,
            unknown_token=tokenizer.oov_token,
            token_out_type=tf.int32,
            no_pretokenization=False,
            support_detokenization=False,
        )
        self.safe_codepoints = frozenset(safe_codepoints)
        self.pattern = _safe_pattern(self.safe_codepoints)
        self._py_pattern = None

    def is_safe_text(self, text: str) -> bool:
        """Python twin of :meth:`is_safe` for one string."""
        if self._py_pattern is None:
            import re

            cls = "".join(re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}"
                          for lo, hi in _ranges(self.safe_codepoints))
            self._py_pattern = re.compile(f"[\\t\\n\\r\\x20-\\x7e{cls}]*")
        return self._py_pattern.fullmatch(text) is not None

    def assume_safe(self) -> "_SafeOnly":
        """A tokenizer-like view whose call is the fast path alone (inputs checked safe)."""
        return _SafeOnly(self)

    def _normalize(self, texts):
        """What KerasHub does to a word, applied to whole strings of safe characters."""
        import tensorflow as tf
        import tensorflow_text as tf_text

        if self.strip_accents:
            texts = tf.strings.regex_replace(tf_text.normalize_utf8(texts, "NFD"), r"\p{Mn}", "")
        if self.lowercase:
            texts = tf_text.case_fold_utf8(texts)
        return texts

    def fast_only(self, texts):
        """The fast path alone (for strings known to be safe)."""
        ids = self._wordpiece.tokenize(self._normalize(texts))
        return ids.with_row_splits_dtype("int64")

    def is_safe(self, texts):
        """bool [N]: which strings may take the fast path."""
        import tensorflow as tf

        return tf.strings.regex_full_match(texts, self.pattern)

    def mixed(self, texts):
        """Safe strings via the fast path, the others via the KerasHub tokenizer."""
        import tensorflow as tf

        safe = self.is_safe(texts)
        fast_idx = tf.where(safe)[:, 0]
        slow_idx = tf.where(~safe)[:, 0]
        fast = self.fast_only(tf.gather(texts, fast_idx))
        slow = self.tokenizer(tf.gather(texts, slow_idx))
        if not isinstance(slow, tf.RaggedTensor):  # eager KerasHub returns lists
            slow = tf.ragged.constant(slow, dtype=tf.int32, ragged_rank=1)
        slow = tf.cast(slow, tf.int32).with_row_splits_dtype("int64")
        both = tf.concat([fast, slow], axis=0)
        order = tf.math.invert_permutation(tf.concat([fast_idx, slow_idx], axis=0))
        return tf.gather(both, order)

    def __call__(self, texts):
        import tensorflow as tf

        texts = tf.convert_to_tensor(texts, dtype=tf.string)
        if tf.executing_eagerly():
            all_safe = bool(tf.reduce_all(self.is_safe(texts)))
            return self.fast_only(texts) if all_safe else self.mixed(texts)
        return tf.cond(tf.reduce_all(self.is_safe(texts)),
                       lambda: self.fast_only(texts), lambda: self.mixed(texts))


class _SafeOnly:
    """Tokenizer-like wrapper: the fast path only (every input known to be safe)."""

    def __init__(self, fast: FastWordPiece):
        self.fast = fast
        self.start_token_id = fast.start_token_id
        self.end_token_id = fast.end_token_id
        self.pad_token_id = fast.pad_token_id

    def __call__(self, texts):
        import tensorflow as tf

        return self.fast.fast_only(tf.convert_to_tensor(texts, dtype=tf.string))


def _lists(ids) -> list:
    return [list(map(int, r)) for r in ids.to_list()]


class _Reference:
    """KerasHub's own (graph-mode) tokenisation, traced once."""

    def __init__(self, tokenizer):
        import tensorflow as tf

        self._fn = tf.function(lambda x: tf.cast(tokenizer(x), tf.int32), autograph=False,
                               input_signature=[tf.TensorSpec([None], tf.string)])

    def __call__(self, texts) -> list:
        import tensorflow as tf

        return _lists(self._fn(tf.constant(list(texts), dtype=tf.string)))


def self_check(fast: FastWordPiece, candidates, reference=None) -> set:
    """Candidate code points whose fast tokenisation matches KerasHub's (alone, between
    letters, after an upper-case letter, and repeated), checked in chunks then singly."""
    import tensorflow as tf

    def probes(c):
        return [c, f"a{c}b", f"A{c}", f"{c}{c} {c}!"]

    reference = reference or _Reference(fast.tokenizer)
    fast_fn = tf.function(fast.fast_only, input_signature=[tf.TensorSpec([None], tf.string)],
                          autograph=False)
    cands = sorted(candidates)
    chunks = [cands[i:i + 48] for i in range(0, len(cands), 48)]
    texts = [" ".join(p for c in ch for p in probes(chr(c))) for ch in chunks]
    ok = set()
    if texts:
        want, got = reference(texts), _lists(fast_fn(tf.constant(texts)))
        suspects = []
        for ch, w, g in zip(chunks, want, got):
            (ok.update if w == g else suspects.extend)(ch)
        if suspects:
            singles = [p for c in suspects for p in probes(chr(c))]
            want, got = reference(singles), _lists(fast_fn(tf.constant(singles)))
            for i, c in enumerate(suspects):
                if want[4 * i:4 * i + 4] == got[4 * i:4 * i + 4]:
                    ok.add(c)
    return ok


def _key(tokenizer) -> str:
    """What the verified safe set depends on: vocabulary, settings, library versions."""
    import keras_hub
    import tensorflow as tf
    import tensorflow_text as tf_text

    fp = encoders.tokenizer_fingerprint(tokenizer)
    fp.update(suffix=tokenizer.suffix_indicator, oov=tokenizer.oov_token,
              versions=[tf.__version__, tf_text.__version__, keras_hub.__version__],
              candidates=CANDIDATE_RANGES, probes=PROBES, check=SELF_CHECK_VERSION)
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:24]


def _stored_check(key: str):
    """The safe set saved by an earlier self-check in this user's temp dir, if any."""
    path = os.path.join(CHECK_DIR, f"{key}.json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("key") != key:
            return None
        return data["enabled"], {cp for lo, hi in data["safe_ranges"] for cp in range(lo, hi + 1)}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _store_check(key: str, enabled: bool, safe) -> None:
    try:
        os.makedirs(CHECK_DIR, exist_ok=True)
        tmp = os.path.join(CHECK_DIR, f"{key}.json.tmp-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"key": key, "enabled": enabled, "safe_ranges": _ranges(safe)}, f)
        os.replace(tmp, os.path.join(CHECK_DIR, f"{key}.json"))
    except OSError:  # a read-only temp dir: the check simply runs again next time
        pass


def _run_self_check(tokenizer):
    """(enabled, safe code points): probes must match exactly for the path to be used."""
    import tensorflow as tf

    fast = FastWordPiece(tokenizer)
    reference = _Reference(tokenizer)
    ascii_probes = [p for p in PROBES if p.isascii()]
    if reference(ascii_probes) != _lists(fast.fast_only(tf.constant(ascii_probes))):
        log.warning("fast WordPiece path disabled: self-check mismatch on ASCII probes")
        return False, set(), fast
    cands = [cp for lo, hi in CANDIDATE_RANGES for cp in range(lo, hi + 1)]
    fast = FastWordPiece(tokenizer, self_check(fast, cands, reference), fast._wordpiece)
    if _lists(fast(tf.constant(list(PROBES)))) != reference(PROBES):  # the mixed path
        log.warning("fast WordPiece path disabled: self-check mismatch")
        return False, set(), fast
    return True, fast.safe_codepoints, fast


def fast_tokenizer(tokenizer):
    """A checked :class:`FastWordPiece` for `tokenizer`, or None when not applicable.

    The self-check's result is cached in memory and in ``CHECK_DIR`` (keyed by the
    vocabulary, the tokenizer settings and the library versions).
    """
    if not supports(tokenizer) or not getattr(tokenizer, "split_on_cjk", True):
        return None
    try:
        key = _key(tokenizer)
        hit = _cache.get(key)
        if hit is not None:
            enabled, fast = hit
            if not enabled:
                return None
            return fast if fast.tokenizer is tokenizer else FastWordPiece(
                tokenizer, fast.safe_codepoints, fast._wordpiece)
        stored = _stored_check(key)
        if stored is not None:
            enabled, safe = stored
            fast = FastWordPiece(tokenizer, safe) if enabled else None
        else:
            enabled, safe, fast = _run_self_check(tokenizer)
            _store_check(key, enabled, safe)
    except Exception as e:  # pragma: no cover - an unexpected tokenizer shape
        log.warning("fast WordPiece path disabled: %s", e)
        return None
    if len(_cache) >= _MAX_FAST_CACHE:
        _cache.clear()
    _cache[key] = (enabled, fast)
    return fast if enabled else None


def text_encoding(tokenizer) -> encoders.TextEncoding:
    """``encoders.TextEncoding`` over the fast path when it applies, else the tokenizer.

    The same object is returned for the same tokenizer (so traced functions built on
    it can be reused).
    """
    hit = _encodings.get(id(tokenizer))
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    fast = fast_tokenizer(tokenizer)
    enc = encoders.TextEncoding(fast if fast is not None else tokenizer)
    if len(_encodings) >= _MAX_FAST_CACHE:
        _encodings.clear()
    _encodings[id(tokenizer)] = (tokenizer, enc)
    return enc
