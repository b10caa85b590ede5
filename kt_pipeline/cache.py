"""Build the TFRecord split cache: parse, dedupe, split, tokenize once, write shards.

Layout (``schema_version`` 1, see docs/ARCHITECTURE.md)::

    <cache_dir>/manifest.json                                  # the only commit point
    <cache_dir>/data-<build_id>/<split>-<i>-of-<n>.tfrecord     # train|validation|test

Two streaming passes keep memory flat as the input grows:

1. parse every row (:mod:`kt_pipeline.sources`), count skips by reason, and keep only
   compact per-row numpy metadata (row ordinal, line, label index, group id, a 64-bit
   text hash), and copy the candidate rows to a local temp :class:`Spill`. Then choose
   the label set, drop rows outside it, drop duplicate texts (equal once whitespace
   runs and ends are ignored, as the tokenizer does), and assign splits
   (stratified by label, or grouped) and shards;
2. stream the spill back through ``tf.data`` (tokenising at ``max_length``, via
   :mod:`kt_pipeline.fast_wordpiece` when it applies, dropping the rows not kept,
   adding labels and columns, serialising ``tf.train.Example`` records in-graph, one
   batch per core at a time) and write the shards. The source is read once; its
   sha256 is computed from the same bytes.

Writes are atomic: shards go to a fresh ``data-<build_id>/`` and ``manifest.json`` is
written last (temp file + rename). A killed build leaves no loadable cache (or the
previous one); two builds racing both produce complete directories and the manifest
names one of them. Old unreferenced ``data-*`` dirs are deleted by later builds.

Inferred label set (no ``labels=``): every label seen, unless at least 95% of the rows'
labels parse as integers; then only the integer labels form the set (sorted
numerically) and the rest are skipped as ``label_not_in_set``. Non-integer label sets
are sorted as strings.

Example:

>>> from kt_pipeline import cache
>>> m = cache.ensure_cache("kt_pipeline/data/sample_reviews.csv", "tfrecords/demo",
...                        text_col="text", label_col="label")   # doctest: +SKIP
>>> print(cache.format_summary(m))                                # doctest: +SKIP
cache tfrecords/demo: 400 rows read -> 320 train, 40 validation, 40 test ...
"""

from __future__ import annotations

import array
import collections
import dataclasses
import datetime
import hashlib
import json
import math
import os
import posixpath
import secrets
import time
from typing import Optional, Sequence

import numpy as np

from kt_pipeline import encoders, fast_wordpiece
from kt_pipeline.errors import ConfigError, DataError
from kt_pipeline.progress import Progress
from kt_pipeline.reader import (
    MANIFEST,
    SCHEMA_VERSION,
    SPLITS,
    CacheError,
    load_manifest,
)
from kt_pipeline.sources import (
    SKIP_REASONS,
    Source,
    check_input,
    file_sha256,
    fix_for,
    normalize_delimiter,
    open_source,
    skip_error,
)

__all__ = [
    "CacheError",
    "CacheSettings",
    "build_cache",
    "ensure_cache",
    "format_summary",
    "default_cache_dir",
]

TASKS = ("classification", "clustering")
RECORDS_PER_SHARD = 4096
MAX_SHARDS_PER_SPLIT = 64
ENCODE_BATCH = 1024
GC_AGE_SECONDS = 3600
INT_LABEL_SHARE = 0.95
# Test hooks: sleep this many seconds after the first batch is written (after touching
# the marker file, if set), so a test can kill the build mid-way deterministically.
PAUSE_ENV = "KT_TEST_BUILD_PAUSE"
PAUSE_MARKER_ENV = "KT_TEST_BUILD_PAUSE_MARKER"


@dataclasses.dataclass(frozen=True)
class CacheSettings:
    """Everything (besides the source bytes and tokenizer) that shapes a cache."""

    text_col: str = "text"
    label_col: Optional[str] = "label"
    group_col: Optional[str] = None
    extra_cols: tuple = ()
    labels: Optional[tuple] = None  # declared label set, in index order
    task: str = "classification"
    format: Optional[str] = None
    delimiter: Optional[str] = None
    header: Optional[bool] = None
    ratios: tuple = (0.8, 0.1, 0.1)
    seed: int = 0
    max_length: int = 512
    strict: bool = False

    def __post_init__(self):
        fix = object.__setattr__
        fix(self, "extra_cols", tuple(self.extra_cols or ()))
        twice = sorted({c for c in self.extra_cols if self.extra_cols.count(c) > 1})
        if twice:
            raise ConfigError(
                f"--extra-cols {','.join(self.extra_cols)}: {', '.join(map(repr, twice))} "
                "listed more than once (each is stored once as x_<col>); list each column once")
        fix(self, "ratios", tuple(float(r) for r in self.ratios))
        if self.labels is not None:
            fix(self, "labels", tuple(str(x).strip() for x in self.labels))
        if self.task not in TASKS:
            raise ConfigError(f"--task {self.task!r}: expected one of {', '.join(TASKS)}")
        if self.task == "classification" and not self.label_col:
            raise ConfigError("--task classification needs a label column (--label-col)")
        if self.labels is not None and not self.label_col:
            raise ConfigError("--labels needs a label column (--label-col): without one, "
                              "every row would get the first label")
        if self.task == "clustering" and not self.group_col:
            raise ConfigError(
                "--task clustering needs --group-col (splits are grouped by it, e.g. book)"
            )
        r = self.ratios
        if (len(r) != 3 or not all(map(math.isfinite, r)) or min(r) < 0
                or abs(sum(r) - 1.0) > 1e-6 or r[0] <= 0):
            raise ConfigError(
                f"--ratios {','.join(map(str, r))}: expected three non-negative numbers "
                "(train,validation,test) that sum to 1 with train > 0, e.g. 0.8,0.1,0.1"
            )
        if int(self.seed) < 0:
            raise ConfigError(f"--seed {self.seed}: expected a non-negative integer")
        if not 2 <= int(self.max_length) <= 100_000:
            raise ConfigError(f"--max-length {self.max_length}: expected an integer >= 2")
        if self.labels is not None and (not self.labels or len(set(self.labels)) != len(self.labels)):
            raise ConfigError(f"--labels {','.join(self.labels)}: expected distinct labels")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["extra_cols"] = list(self.extra_cols)
        d["ratios"] = list(self.ratios)
        d["labels"] = list(self.labels) if self.labels is not None else None
        return d


def default_cache_dir(input_path: str) -> str:
    """``tfrecords/<input stem>``, e.g. ``tfrecords/train`` for ``data/train.tsv``."""
    stem = os.path.splitext(posixpath.basename(input_path.rstrip("/")))[0]
    return os.path.join("tfrecords", stem or "data")


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


# -- pass 1: scan --------------------------------------------------------------------


@dataclasses.dataclass
class Scan:
    """Pass-1 result: counts plus compact numpy metadata for the candidate rows."""

    rows_read: int
    blank_lines: int
    skipped: collections.Counter
    ordinal: np.ndarray  # int64, row index in the source
    line: np.ndarray  # int64, 1-based line
    label: np.ndarray  # int32, index into seen_labels (-1: no label column)
    group: np.ndarray  # int32, index into groups (-1: no group column)
    hashes: np.ndarray  # uint64 text hash
    seen_labels: list  # label strings in first-seen order
    groups: list  # group strings in first-seen order
    sha256: str = ""  # of the bytes this pass parsed


def _intern(table: dict, key: Optional[str]) -> int:
    """The index of `key` in `table` (added when new); -1 for None."""
    return -1 if key is None else table.setdefault(key, len(table))


def scan(source: Source, strict: bool = False, progress: bool = True,
         spill: Optional["Spill"] = None) -> Scan:
    """Pass 1: read all rows, count source-level skips, keep compact metadata.

    With ``spill``, every candidate row is also copied to it, so pass 2 need not parse
    the source again.
    """
    cols = {k: array.array(t) for k, t in
            (("ordinal", "q"), ("line", "q"), ("label", "i"), ("group", "i"), ("hashes", "Q"))}
    ordinal, line, label, group, hashes = (cols[k].append for k in cols)
    labels: dict = {}
    groups: dict = {}
    skipped: collections.Counter = collections.Counter()
    size = _gfile().stat(source.path).length
    sha = hashlib.sha256()
    blake = hashlib.blake2b
    from_bytes = int.from_bytes
    write = spill.write if spill is not None else None
    rows = 0
    with Progress("pass 1/2: parse", total=size, unit="B", enabled=progress) as bar:
        for rec in source.records(counter=bar, on_chunk=sha.update):
            rows += 1
            if rec.skip:
                if strict:
                    raise skip_error(source, rec)
                skipped[rec.skip] += 1
                continue
            text = rec.text.encode("utf-8")
            ordinal(rec.index)
            line(rec.line)
            label(_intern(labels, rec.label))
            group(_intern(groups, rec.group))
            # whitespace runs and ends do not change the token ids: hash the text without them
            # (printable: the only whitespace is " ", so without "  " only the ends can differ)
            t = rec.text
            if not (t.isprintable() and "  " not in t):
                key = " ".join(t.split()).encode()
            else:
                key = text if t[0] != " " and t[-1] != " " else t.strip().encode()
            hashes(from_bytes(blake(key, digest_size=8).digest(), "little"))
            if write is not None:
                write(text, rec.group, rec.extras)
    arrays = {k: np.frombuffer(v, dtype=v.typecode).copy() if len(v) else np.zeros(0, v.typecode)
              for k, v in cols.items()}
    return Scan(rows, source.blank_lines, skipped, arrays["ordinal"], arrays["line"],
                arrays["label"].astype(np.int32), arrays["group"].astype(np.int32),
                arrays["hashes"].astype(np.uint64), list(labels), list(groups), sha.hexdigest())


def _is_int(s: str) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False


def infer_labels(counts: dict) -> list:
    """The label set for ``{label: rows}`` (see the module docstring for the rule)."""
    total = sum(counts.values())
    ints = [x for x in counts if _is_int(x)]
    if ints and sum(counts[x] for x in ints) >= INT_LABEL_SHARE * total:
        return sorted(ints, key=lambda x: (int(x), x))
    return sorted(counts, key=lambda x: (not _is_int(x), int(x) if _is_int(x) else 0, x))


def select_rows(sc: Scan, declared: Optional[Sequence[str]], source: Source,
                strict: bool = False) -> tuple[list, np.ndarray]:
    """Choose the label set, drop out-of-set labels and duplicate texts.

    Returns ``(labels, keep)`` where ``keep`` indexes the candidate arrays in row
    order; updates ``sc.skipped``. In strict mode the first dropped row is an error.
    """
    n = len(sc.ordinal)
    if sc.seen_labels:
        counts = dict(zip(sc.seen_labels, np.bincount(sc.label, minlength=len(sc.seen_labels)).tolist()))
        labels = list(declared) if declared is not None else infer_labels(counts)
        index = {x: i for i, x in enumerate(labels)}
        remap = np.array([index.get(x, -1) for x in sc.seen_labels], dtype=np.int32)
        original, sc.label = sc.label, remap[sc.label]
        in_set = sc.label >= 0
    else:
        labels, in_set = (list(declared) if declared else []), np.ones(n, bool)
    out = np.flatnonzero(~in_set)
    if len(out):
        if strict:
            i = out[0]
            kind = "--labels" if declared is not None else "the inferred set"
            raise DataError(
                f"{source.path} line {sc.line[i]}, column {source.label_col!r}: label "
                f"{sc.seen_labels[original[i]]!r} is not in {kind} ({', '.join(labels)}). "
                "Fix: fix the label, or list it in --labels; or drop --strict to skip such "
                "rows (they are counted)."
            )
        sc.skipped["label_not_in_set"] += len(out)
    cand = np.flatnonzero(in_set)
    _, first = np.unique(sc.hashes[cand], return_index=True)
    keep = np.sort(cand[first])
    dups = len(cand) - len(keep)
    if dups:
        if strict:
            dup = np.setdiff1d(cand, keep)[0]
            orig = keep[np.flatnonzero(sc.hashes[keep] == sc.hashes[dup])[0]]
            raise DataError(
                f"{source.path} line {sc.line[dup]}, column {source.text_col!r}: duplicate "
                f"text (same as line {sc.line[orig]}). Fix: delete the repeated row; or drop "
                "--strict to skip duplicates (they are counted)."
            )
        sc.skipped["duplicate_text"] += dups
    return labels, keep


# -- splitting -----------------------------------------------------------------------


def split_counts(n: int, ratios: Sequence[float],
                 behind: Optional[Sequence[float]] = None) -> list:
    """Largest-remainder split of `n` items by `ratios` (exact, deterministic).

    Equal remainders go first to the part most `behind` its target (default: the first).
    """
    exact = [n * r for r in ratios]
    base = [int(math.floor(e + 1e-9)) for e in exact]
    behind = behind if behind is not None else [0.0] * len(ratios)
    order = sorted(range(len(ratios)),
                   key=lambda i: (-round(exact[i] - base[i], 9), -behind[i], i))
    for i in order[: n - sum(base)]:
        base[i] += 1
    return base


def assign_splits(labels: np.ndarray, groups: Optional[np.ndarray], ratios, seed: int) -> np.ndarray:
    """Split index (0 train, 1 validation, 2 test) per row.

    With ``groups``: whole groups go to the split furthest below its target share
    (relative), in a seeded order, so no group spans two splits. Otherwise rows are
    stratified by ``labels``: each label's rows are shuffled and cut by
    :func:`split_counts`, so per-label proportions are exact; a remainder tie goes to the
    split furthest behind its share of the labels cut so far (not always to validation).
    """
    rng = np.random.default_rng(seed)
    out = np.zeros(len(labels), np.int8)
    if groups is not None:
        ids, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
        target = np.array(ratios) * len(labels)
        have = np.zeros(3)
        group_split = np.zeros(len(ids), np.int8)
        for k in rng.permutation(len(ids)):
            need = np.where(target > 0, (target - have) / np.maximum(target, 1e-12), -np.inf)
            s = int(np.argmax(need))
            have[s] += sizes[k]
            group_split[k] = s
        return group_split[inverse.reshape(-1)]
    order = np.argsort(labels, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(labels[order]) != 0])
    have, seen = np.zeros(len(ratios)), 0
    for rows in np.split(order, starts[1:]):
        rows = rng.permutation(rows)
        counts = split_counts(len(rows), ratios, np.array(ratios) * seen - have)
        have, seen = have + counts, seen + len(rows)
        bounds = np.cumsum(counts)
        for s, part in enumerate(np.split(rows, bounds[:-1])):
            out[part] = s
    return out


def assign_shards(splits: np.ndarray, seed: int) -> tuple[np.ndarray, list]:
    """Spread each split's rows over its shards in a seeded-shuffled order."""
    rng = np.random.default_rng([seed, 1])
    shard = np.zeros(len(splits), np.int32)
    nshards = []
    for s in range(len(SPLITS)):
        rows = np.flatnonzero(splits == s)
        k = min(MAX_SHARDS_PER_SPLIT, max(1, math.ceil(len(rows) / RECORDS_PER_SHARD))) if len(rows) else 0
        shard[rng.permutation(rows)] = np.arange(len(rows)) % max(k, 1)
        nshards.append(k)
    return shard, nshards


# -- pass 2: tokenize and write ------------------------------------------------------


def _tf_write(writer):
    """The C++ ``write`` of a ``tf.io.TFRecordWriter`` (skips a Python wrapper)."""
    import tensorflow as tf

    return super(tf.io.TFRecordWriter, writer).write


SPILL_PREFIX = "kt-spill-"


def _remove_orphan_spills() -> None:
    """Delete spill dirs left in the temp dir by builds that were killed."""
    import shutil
    import tempfile

    root = tempfile.gettempdir()
    for name in os.listdir(root):
        if not name.startswith(SPILL_PREFIX):
            continue
        pid = name[len(SPILL_PREFIX):].split("-")[0]
        try:
            os.kill(int(pid), 0)  # raises when no such process
            continue
        except ProcessLookupError:
            pass
        except (ValueError, OSError):  # not our naming, or not ours to signal
            continue
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)


class Spill:
    """Pass-1 copy of the candidate rows, in local temp TFRecords, in row order.

    One record per row and column: the text's UTF-8 bytes, then the group and extra
    columns when the cache has them. Pass 2 streams them back through ``tf.data``
    (which tokenises them; see :func:`write_shards`). Use as a context manager; the
    files are deleted on exit.

    Tokenising here instead, in a thread beside the parser, was measured slower: the
    tokenising thread waits for the GIL while the parser holds it, so the two ran one
    after the other (see BENCHMARKS.md, section 1).
    """

    def __init__(self, has_group: bool, extra_cols: Sequence[str]):
        import tempfile

        import tensorflow as tf

        _remove_orphan_spills()
        self.dir = tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{os.getpid()}-")
        self.has_group = has_group
        names = ["text"] + (["group"] if has_group else []) + [f"x{i}" for i in range(len(extra_cols))]
        self.paths = [os.path.join(self.dir, f"{n}.tfrecord") for n in names]
        self._writers = [tf.io.TFRecordWriter(p) for p in self.paths]
        self._closed = False
        text, rest = _tf_write(self._writers[0]), [_tf_write(w) for w in self._writers[1:]]
        if rest:
            def write(text_bytes, group, extras):
                text(text_bytes)
                i = 0
                if has_group:
                    rest[0]((group or "").encode("utf-8"))
                    i = 1
                for j, v in enumerate(extras):
                    rest[i + j]((v or "").encode("utf-8"))
        else:
            def write(text_bytes, group, extras):
                text(text_bytes)
        self.write = write  # write(text_bytes, group, extras): add one candidate row

    def close(self) -> None:
        """Finish the files (idempotent)."""
        if not self._closed:
            self._closed = True
            for w in self._writers:
                w.close()

    def dataset(self):
        """``(text, group, extras[k])`` per candidate row, in pass-1 order."""
        import tensorflow as tf

        self.close()
        parts = [tf.data.TFRecordDataset(p, buffer_size=1 << 20) for p in self.paths]
        return tf.data.Dataset.zip(tuple(parts))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        import shutil

        try:
            self.close()
        except BaseException:
            if exc[0] is None:  # else keep the error that is on its way out
                raise
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _message(kind: str, field: str, value):
    """One field per row: string ``[B]`` of serialised ``tensorflow.<kind>`` messages."""
    import tensorflow as tf

    one = tf.ones([tf.shape(value)[0], 1], tf.int32)
    return tf.io.encode_proto(one, [value[:, None]], [field], f"tensorflow.{kind}")


def _int_feature(values, sizes):
    import tensorflow as tf

    ints = tf.io.encode_proto(sizes[:, None], [values], ["value"], "tensorflow.Int64List")
    return _message("Feature", "int64_list", ints)


def _bytes_feature(v):
    return _message("Feature", "bytes_list", _message("BytesList", "value", v))


def _entries(features: dict):
    """Serialised ``Features`` holding `features` ({key: Feature [B]}) in key order.

    Map entries are a repeated field, so the bytes of two such messages with disjoint,
    ordered keys concatenate into the message holding both.
    """
    import tensorflow as tf

    n = tf.shape(next(iter(features.values())))[0]
    entries = [
        tf.io.encode_proto(tf.fill([n, 2], 1), [tf.fill([n, 1], key), value[:, None]],
                           ["key", "value"], "tensorflow.Features.FeatureEntry")
        for key, value in sorted(features.items())
    ]
    return tf.io.encode_proto(tf.fill([n, 1], len(entries)), [tf.stack(entries, axis=1)],
                              ["feature"], "tensorflow.Features")


def id_entries(ids):
    """The ``length`` and ``token_ids`` entries (adjacent in key order) per row."""
    import tensorflow as tf

    lengths = tf.cast(ids.row_lengths(), tf.int32)
    ones = tf.ones_like(lengths)
    return _entries({"token_ids": _int_feature(tf.cast(ids.to_tensor(), tf.int64), lengths),
                     "length": _int_feature(tf.cast(lengths, tf.int64)[:, None], ones)})


def examples_from_entries(ids_entries, labels, groups, extras, extra_cols: Sequence[str]):
    """Complete ``tf.train.Example`` records from :func:`id_entries` and the rest."""
    import tensorflow as tf

    # Few distinct groups/labels per batch: encode each distinct value once, then gather.
    # (Two single-entry Features messages concatenate into one holding both.)
    g_values, g_index = tf.unique(groups)
    l_values, l_index = tf.unique(labels)
    group_entry = tf.gather(_entries({"group": _bytes_feature(g_values)}), g_index)
    label_entry = tf.gather(_entries({"label": _int_feature(
        tf.cast(l_values, tf.int64)[:, None], tf.ones_like(l_values))}), l_index)
    parts = [group_entry, label_entry, ids_entries]
    if extra_cols:
        parts.append(_entries({"x_" + c: _bytes_feature(extras[:, i]) for i, c in enumerate(extra_cols)}))
    return _message("Example", "features", tf.strings.join(parts))


def serialize_examples(ids, labels, groups, extras, extra_cols: Sequence[str]):
    """A batch of ``tf.train.Example`` records (string ``[B]``), built in-graph.

    Byte-identical to ``tf.train.Example(...).SerializeToString(deterministic=True)``
    with the features of the cache layout (see docs/ARCHITECTURE.md): ``ids`` ragged
    int ``[B, None]``, ``labels`` int ``[B]``, ``groups`` string ``[B]``, ``extras``
    string ``[B, k]``. Map entries are written in sorted key order, as deterministic
    serialisation does (``x_*`` columns sort after ``token_ids``).
    """
    return examples_from_entries(id_entries(ids), labels, groups, extras, extra_cols)


_ID_ENCODERS: dict = {}


class _IdsEncoder:
    """``texts [N] -> id_entries [N]``, traced once per encoding and length.

    With the fast WordPiece path, a batch whose texts are all safe runs a graph without
    the KerasHub fallback (which is costly to trace); the full graph is traced only
    when a batch needs it.
    """

    def __init__(self, tokenizer, max_length: int):
        import tensorflow as tf

        fast = fast_wordpiece.fast_tokenizer(tokenizer)
        sig = [tf.TensorSpec([None], tf.string)]

        def traced(tok):
            enc = encoders.TextEncoding(tok)
            return tf.function(lambda texts: id_entries(enc.encode(texts, max_length)),
                               input_signature=sig, autograph=False)

        self._fast = fast
        self._safe_fn = traced(fast.assume_safe()) if fast is not None else None
        self._full_fn = None
        self._full_tok = fast if fast is not None else tokenizer
        self._traced = traced

    def full(self, texts):
        """Entries through the full tokenizer (the fast path and, for the texts it does
        not take, KerasHub's), its graph traced on first use."""
        if self._full_fn is None:
            self._full_fn = self._traced(self._full_tok)
        return self._full_fn(texts)

    def in_graph(self, texts):
        """``(entries, ok)`` inside a traced function (e.g. a ``tf.data`` map).

        ``ok`` is False when a batch needs the KerasHub fallback, which stays untraced
        until then: its ``entries`` are then placeholders, and the caller must call
        :meth:`full` eagerly on the batch instead.
        """
        import tensorflow as tf

        if self._fast is None:
            return self.full(texts), tf.constant(True)
        ok = tf.reduce_all(self._fast.is_safe(texts))
        entries = tf.cond(ok, lambda: self._safe_fn(texts), lambda: tf.fill(tf.shape(texts), ""))
        return entries, ok


def ids_encoder(tokenizer, max_length: int) -> _IdsEncoder:
    """The (cached) :class:`_IdsEncoder` for `tokenizer` at `max_length`."""
    key = (id(tokenizer), int(max_length))
    hit = _ID_ENCODERS.get(key)
    if hit is None or hit[0] is not tokenizer:
        if len(_ID_ENCODERS) > 8:
            _ID_ENCODERS.clear()
        hit = _ID_ENCODERS[key] = (tokenizer, _IdsEncoder(tokenizer, max_length))
    return hit[1]


def shard_name(split: str, i: int, n: int) -> str:
    return f"{split}-{i:05d}-of-{n:05d}.tfrecord"


def _maybe_pause() -> None:
    secs = os.environ.get(PAUSE_ENV)
    if secs:
        marker = os.environ.get(PAUSE_MARKER_ENV)
        if marker:
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
        time.sleep(float(secs))


_ASSEMBLERS: dict = {}


def _assembler(has_group: bool, extra_cols: tuple):
    """The traced pass-2 batch function (cached: tracing costs more than a small build)."""
    import tensorflow as tf

    key = (has_group, extra_cols)
    if key in _ASSEMBLERS:
        return _ASSEMBLERS[key]
    k = len(extra_cols)
    rows_spec = tuple(tf.TensorSpec([None], tf.string) for _ in range(1 + has_group + k))
    meta_spec = (tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32))

    @tf.function(input_signature=[rows_spec, meta_spec], autograph=False)
    def assemble(rows, meta):
        """Drop rows not kept; Examples from id entries, labels, groups, extras."""
        entries = rows[0]
        n = tf.shape(entries)[0]
        groups = rows[1] if has_group else tf.fill([n], "")
        extras = tf.stack(rows[len(rows) - k:], axis=1) if k else tf.zeros([n, 0], tf.string)
        keys, labels = meta
        kept = keys >= 0
        entries, groups, extras, keys, labels = (
            tf.boolean_mask(x, kept) for x in (entries, groups, extras, keys, labels))
        return examples_from_entries(entries, labels, groups, extras, extra_cols), keys

    if len(_ASSEMBLERS) > 16:
        _ASSEMBLERS.clear()
    _ASSEMBLERS[key] = assemble
    return assemble


def write_shards(spill: Spill, encode_ids: _IdsEncoder, sc: Scan, keep: np.ndarray, splits,
                 shards, nshards, data_dir: str, extra_cols: Sequence[str] = (),
                 progress: bool = True) -> list:
    """Pass 2: stream the spilled rows through tf.data (tokenise, drop the rows not kept,
    add labels and columns, serialise Examples: all in C++, on every core), write the
    shards."""
    import tensorflow as tf

    n_cand = len(sc.ordinal)
    # Per candidate row: shard key (split * MAX + shard; -1 = dropped) and label.
    key = np.full(n_cand, -1, np.int32)
    key[keep] = splits.astype(np.int32) * MAX_SHARDS_PER_SPLIT + shards
    label = np.zeros(n_cand, np.int32)
    label[keep] = sc.label[keep]
    assemble = _assembler(spill.has_group, tuple(extra_cols))
    key_t, label_t = tf.constant(key), tf.constant(label)

    def meta(start, n):  # a batch holds candidate rows [start, start + n)
        s = tf.cast(start, tf.int32)
        return key_t[s:s + n], label_t[s:s + n]

    @tf.autograph.experimental.do_not_convert
    def tokenize_and_assemble(rows, start):
        entries, ok = encode_ids.in_graph(rows[0])
        records, keys = assemble((entries,) + rows[1:], meta(start, tf.shape(rows[0])[0]))
        return records, keys, ok, rows, start

    def fallback(rows, start):  # a batch with texts the fast tokenizer does not take
        entries = encode_ids.full(rows[0])
        return assemble((entries,) + rows[1:], meta(start, tf.shape(rows[0])[0]))

    # tf.data's autotuning is off: on SST-2 it added a ~0.15 s stall to about two builds
    # in three (BENCHMARKS.md, section 1; the iterator's end waits for the autotuner, see
    # reader.PREFETCH_BATCHES); one map call per core instead.
    options = tf.data.Options()
    options.autotune.enabled = False
    ds = (
        tf.data.Dataset.zip((spill.dataset().batch(ENCODE_BATCH),
                             tf.data.Dataset.range(0, max(n_cand, 1), ENCODE_BATCH)))
        .map(tokenize_and_assemble, num_parallel_calls=max(2, os.cpu_count() or 2),
             deterministic=True)
        .prefetch(2)
        .with_options(options)
    )
    gf = _gfile()
    gf.makedirs(data_dir)
    writers = {}
    for s, split in enumerate(SPLITS):
        for i in range(nshards[s]):
            path = posixpath.join(data_dir, shard_name(split, i, nshards[s]))
            writers[s * MAX_SHARDS_PER_SPLIT + i] = tf.io.TFRecordWriter(path)
    write = {kk: _tf_write(w) for kk, w in writers.items()}
    counts = np.zeros(len(SPLITS) * MAX_SHARDS_PER_SPLIT, np.int64)
    try:
        with Progress("pass 2/2: tokenize+write", total=len(keep), enabled=progress) as bar:
            for b, (records, keys, ok, rows, start) in enumerate(ds):
                if not ok:
                    records, keys = fallback(rows, start)
                keys = keys.numpy()
                for rec, kk in zip(records.numpy().tolist(), keys.tolist()):
                    write[kk](rec)
                counts += np.bincount(keys, minlength=len(counts))
                bar.update(len(keys))
                if b == 0:
                    _maybe_pause()
    finally:
        for w in writers.values():
            w.close()
    if counts.sum() != len(keep):  # pragma: no cover - the spill is ours
        raise RuntimeError(f"internal error: wrote {counts.sum()} of {len(keep)} rows")
    base = posixpath.basename(data_dir.rstrip("/"))
    return [
        {"split": split, "path": f"{base}/{shard_name(split, i, nshards[s])}",
         "records": int(counts[s * MAX_SHARDS_PER_SPLIT + i])}
        for s, split in enumerate(SPLITS) for i in range(nshards[s])
    ]


# -- manifest, reuse, garbage collection ---------------------------------------------


def _new_build_id() -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)


def _build_time(build_id: str) -> Optional[float]:
    try:
        t = datetime.datetime.strptime(build_id.split("-")[0], "%Y%m%dT%H%M%SZ")
    except ValueError:
        return None
    return t.replace(tzinfo=datetime.timezone.utc).timestamp()


def _write_manifest(cache_dir: str, manifest: dict) -> None:
    gf = _gfile()
    tmp = posixpath.join(cache_dir, f"{MANIFEST}.tmp-{manifest['build_id']}")
    with gf.GFile(tmp, "w") as f:
        f.write(json.dumps({k: v for k, v in manifest.items() if k != "cache_dir"}, indent=2))
    gf.rename(tmp, posixpath.join(cache_dir, MANIFEST), overwrite=True)


def collect_garbage(cache_dir: str, max_age: float = GC_AGE_SECONDS) -> list:
    """Delete ``data-*`` dirs and temp manifests not named by the manifest and older
    than `max_age` seconds (so builds running right now are left alone)."""
    gf = _gfile()
    try:
        current = load_manifest(cache_dir)["build_id"]
    except CacheError:
        current = None
    removed = []
    for name in gf.listdir(cache_dir):
        name = name.rstrip("/")
        if name.startswith("data-"):
            bid = name[len("data-"):]
        elif name.startswith(MANIFEST + ".tmp-"):
            bid = name[len(MANIFEST + ".tmp-"):]
        else:
            continue
        t = _build_time(bid)
        if bid == current or t is None or time.time() - t < max_age:
            continue
        path = posixpath.join(cache_dir, name)
        try:
            gf.rmtree(path) if gf.isdir(path) else gf.remove(path)
            removed.append(name)
        except Exception:  # another build removed it first
            pass
    return removed


def differences(manifest: dict, settings: CacheSettings, sha256: str, fingerprint: dict) -> list:
    """Why an existing cache does not match these inputs (empty: it can be reused)."""
    diffs = []
    if manifest.get("source", {}).get("sha256") != sha256:
        diffs.append("the input file's content (sha256) changed")
    if manifest.get("tokenizer") != fingerprint:
        diffs.append("the tokenizer differs (other --preset / vocabulary)")
    old = manifest.get("settings") or {}
    # None (detect) and the value detected for this very file are the same setting
    detected = {k: (manifest.get("source") or {}).get(k) for k in ("format", "delimiter", "header")}

    def effective(k, v):
        v = normalize_delimiter(v) if k == "delimiter" else v
        return detected[k] if v is None and k in detected else v

    for k, v in settings.to_dict().items():
        # strict shapes no cache: a strict build that succeeds equals the plain one
        if k != "strict" and effective(k, old.get(k)) != effective(k, v):
            diffs.append(f"{k}: {old.get(k)!r} -> {v!r}")
    skipped = sum((manifest.get("counts") or {}).get("skipped", {}).values())
    if settings.strict and skipped:
        diffs.append(f"--strict, and the cache skipped {skipped:,} row(s)")
    return diffs


def _make_cache_dir(cache_dir: str) -> None:
    """Create `cache_dir` (before any work), or say why it cannot be the cache."""
    import tensorflow as tf

    gf = _gfile()
    if gf.exists(cache_dir) and not gf.isdir(cache_dir):
        raise DataError(f"--output {cache_dir} is a file; the cache is a directory: pass "
                        "a directory path (default: tfrecords/<input stem>)")
    try:
        gf.makedirs(cache_dir)
    except tf.errors.OpError as e:
        raise DataError(f"--output {cache_dir}: cannot create the cache directory "
                        f"({e.message}); pass a writable directory path") from None


def _resolve(settings, kwargs) -> CacheSettings:
    if settings is not None and kwargs:
        settings = dataclasses.replace(settings, **kwargs)
    return settings if settings is not None else CacheSettings(**kwargs)


def _tokenizer(tokenizer, preset):
    """Load the preset's tokenizer unless one is given; name the default preset."""
    if tokenizer is not None:
        return tokenizer, preset  # preset: None when the caller did not say
    return encoders.load_tokenizer(preset), preset if preset is not None else encoders.DEFAULT_PRESET


def build_cache(input_path: str, cache_dir: Optional[str] = None, *,
                settings: Optional[CacheSettings] = None, preset: Optional[str] = None,
                tokenizer=None, progress: bool = True, sha256: Optional[str] = None,
                **kwargs) -> dict:
    """Build a fresh cache (always) and return its manifest (with ``cache_dir`` added).

    Keyword arguments are :class:`CacheSettings` fields (or pass ``settings=``).
    """
    st = _resolve(settings, kwargs)
    cache_dir = (cache_dir or default_cache_dir(input_path)).rstrip("/")
    source = open_source(input_path, st.text_col, st.label_col, st.group_col, st.extra_cols,
                         st.format, st.delimiter, st.header)
    _make_cache_dir(cache_dir)
    tokenizer, preset = _tokenizer(tokenizer, preset)
    encode_ids = ids_encoder(tokenizer, st.max_length)

    with Spill(st.group_col is not None, st.extra_cols) as spill:
        sc = scan(source, st.strict, progress, spill)
        spill.close()
        if sha256 is not None and sha256 != sc.sha256:
            raise DataError(f"{input_path} changed during the build (its sha256 differs from "
                            "the one checked before); rerun the build once the file is stable")
        sha256 = sc.sha256
        labels, keep = select_rows(sc, st.labels, source, st.strict)
        if not len(keep):
            fixes = "; ".join(f"{r.replace('_', ' ')}: {fix_for(r, source.format)}"
                              for r in SKIP_REASONS if sc.skipped.get(r))
            raise DataError(
                f"{input_path}: no usable rows ({sc.rows_read} read; skipped: "
                f"{_fmt_skips(sc.skipped) or 'none'}). "
                + (f"Fix: {fixes}; or check --text-col/--label-col/--labels" if fixes else
                   "The file has no data rows (only a header or blank lines?)")
            )
        grouped = st.group_col is not None
        splits = assign_splits(sc.label[keep], sc.group[keep] if grouped else None, st.ratios, st.seed)
        shards, nshards = assign_shards(splits, st.seed)

        build_id = _new_build_id()
        shard_list = write_shards(spill, encode_ids, sc, keep, splits, shards, nshards,
                                  posixpath.join(cache_dir, f"data-{build_id}"),
                                  st.extra_cols, progress)
    written = {split: int((splits == s).sum()) for s, split in enumerate(SPLITS)}
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "build_id": build_id,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "task": st.task,
        "source": {**source.describe(), "sha256": sha256},
        "columns": {"text": st.text_col, "label": st.label_col, "group": st.group_col,
                    "extras": list(st.extra_cols)},
        "labels": labels,
        "counts": {
            "rows_read": sc.rows_read,
            "written": written,
            "skipped": {r: int(sc.skipped.get(r, 0)) for r in SKIP_REASONS},
            "blank_lines": sc.blank_lines,
        },
        "tokenizer": encoders.tokenizer_fingerprint(tokenizer),
        "preset": preset,
        "ratios": list(st.ratios),
        "seed": st.seed,
        "max_length": st.max_length,
        "settings": st.to_dict(),
        "shards": shard_list,
    }
    c = manifest["counts"]
    if c["rows_read"] != sum(written.values()) + sum(c["skipped"].values()):
        raise RuntimeError(f"internal error: row counts do not add up: {c}")  # pragma: no cover
    _write_manifest(cache_dir, manifest)
    collect_garbage(cache_dir)
    return {**manifest, "cache_dir": cache_dir}


def ensure_cache(input_path: str, cache_dir: Optional[str] = None, *,
                 settings: Optional[CacheSettings] = None, preset: Optional[str] = None,
                 tokenizer=None, force: bool = False, rebuild: bool = True,
                 progress: bool = True, **kwargs) -> dict:
    """Reuse the cache when settings, source sha256 and tokenizer match; else build.

    ``force=True`` always rebuilds; ``rebuild=False`` (``--no-rebuild``) raises
    :class:`CacheError` saying what differs instead of rebuilding. The returned
    manifest has ``reused`` (bool) and ``cache_dir`` added.
    """
    st = _resolve(settings, kwargs)
    cache_dir = (cache_dir or default_cache_dir(input_path)).rstrip("/")
    check_input(input_path)
    tokenizer, preset = _tokenizer(tokenizer, preset)
    sha256 = file_sha256(input_path)
    if not force:
        try:
            old = load_manifest(cache_dir)
            diffs = differences(old, st, sha256, encoders.tokenizer_fingerprint(tokenizer))
        except CacheError as e:
            old, diffs = None, [str(e)]
        if old is not None and not diffs:
            return {**old, "reused": True}
        if not rebuild:
            raise CacheError(
                f"cache {cache_dir} cannot be reused: {'; '.join(diffs)}. Run without "
                "--no-rebuild to rebuild it (or with --force)"
            )
    m = build_cache(input_path, cache_dir, settings=st, preset=preset, tokenizer=tokenizer,
                    progress=progress, sha256=sha256)
    return {**m, "reused": False}


# -- summary -------------------------------------------------------------------------


def _fmt_skips(skipped: dict) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in skipped.items() if v)


def format_summary(manifest: dict) -> str:
    """A short human summary: where the cache is, counts per split, skips by reason."""
    c = manifest["counts"]
    written = c["written"]
    nshards = collections.Counter(s["split"] for s in manifest["shards"])
    where = manifest.get("cache_dir", "?")
    state = " (reused: settings, input and tokenizer match)" if manifest.get("reused") else ""
    lines = [
        f"cache {where}{state}",
        f"  rows read {c['rows_read']:,}: "
        + ", ".join(f"{s} {written.get(s, 0):,} ({nshards[s]} shards)" for s in SPLITS),
        f"  skipped {sum(c['skipped'].values()):,}: {_fmt_skips(c['skipped']) or 'none'}"
        + (f"; blank lines ignored {c['blank_lines']:,}" if c.get("blank_lines") else ""),
    ]
    labels = manifest.get("labels") or []
    if labels:
        shown = ", ".join(map(str, labels[:10])) + (" ..." if len(labels) > 10 else "")
        lines.append(f"  labels ({len(labels)}): {shown}")
    tok = manifest.get("tokenizer", {})
    lines.append(
        f"  tokenizer {tok.get('class', '?')} (vocab {tok.get('vocabulary_size', '?')}, "
        f"preset {manifest.get('preset')}), stored max_length {manifest['max_length']}, "
        f"ratios {'/'.join(str(r) for r in manifest['ratios'])}, seed {manifest['seed']}"
    )
    return "\n".join(lines)
