"""Build the TFRecord split cache: parse, dedupe, split, tokenize once, write shards.

Layout (``schema_version`` 1, see docs/ARCHITECTURE.md)::

    <cache_dir>/manifest.json                                  # the only commit point
    <cache_dir>/data-<build_id>/<split>-<i>-of-<n>.tfrecord     # train|validation|test

Two streaming passes keep memory flat as the input grows:

1. parse every row (:mod:`kt_pipeline.sources`), count skips by reason, and keep only
   compact per-row numpy metadata (row ordinal, line, label index, group id, a 64-bit
   text hash); then choose the label set, drop rows outside it, drop exact duplicate
   texts, and assign splits (stratified by label, or grouped) and shards;
2. re-read the file and stream the kept texts through ``tf.data`` (batched, parallel
   tokenization at ``max_length``), writing unpadded ids into the shards.

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

from kt_pipeline import encoders
from kt_pipeline.errors import ConfigError, DataError
from kt_pipeline.progress import Progress
from kt_pipeline.reader import (
    MANIFEST,
    SCHEMA_VERSION,
    SPLITS,
    CacheError,
    load_manifest,
)
from kt_pipeline.sources import SKIP_REASONS, Source, file_sha256, open_source, skip_error

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
ENCODE_BATCH = 256
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
        fix(self, "ratios", tuple(float(r) for r in self.ratios))
        if self.labels is not None:
            fix(self, "labels", tuple(str(x).strip() for x in self.labels))
        if self.task not in TASKS:
            raise ConfigError(f"--task {self.task!r}: expected one of {', '.join(TASKS)}")
        if self.task == "classification" and not self.label_col:
            raise ConfigError("--task classification needs a label column (--label-col)")
        if self.task == "clustering" and not self.group_col:
            raise ConfigError(
                "--task clustering needs --group-col (splits are grouped by it, e.g. book)"
            )
        r = self.ratios
        if len(r) != 3 or min(r) < 0 or abs(sum(r) - 1.0) > 1e-6 or r[0] <= 0:
            raise ConfigError(
                f"--ratios {','.join(map(str, r))}: expected three non-negative numbers "
                "(train,validation,test) that sum to 1 with train > 0, e.g. 0.8,0.1,0.1"
            )
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


def _text_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


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


def _intern(table: dict, key: Optional[str]) -> int:
    """The index of `key` in `table` (added when new); -1 for None."""
    return -1 if key is None else table.setdefault(key, len(table))


def scan(source: Source, strict: bool = False, progress: bool = True) -> Scan:
    """Pass 1: read all rows, count source-level skips, keep compact metadata."""
    cols = {k: array.array(t) for k, t in
            (("ordinal", "q"), ("line", "q"), ("label", "i"), ("group", "i"), ("hashes", "Q"))}
    labels: dict = {}
    groups: dict = {}
    skipped: collections.Counter = collections.Counter()
    size = _gfile().stat(source.path).length
    rows = 0
    with Progress("pass 1/2: parse", total=size, unit="B", enabled=progress) as bar:
        for rec in source.records(counter=bar):
            rows += 1
            if rec.skip:
                if strict:
                    raise skip_error(source, rec)
                skipped[rec.skip] += 1
                continue
            cols["ordinal"].append(rec.index)
            cols["line"].append(rec.line)
            cols["label"].append(_intern(labels, rec.label))
            cols["group"].append(_intern(groups, rec.group))
            cols["hashes"].append(_text_hash(rec.text))
    arrays = {k: np.frombuffer(v, dtype=v.typecode).copy() if len(v) else np.zeros(0, v.typecode)
              for k, v in cols.items()}
    return Scan(rows, source.blank_lines, skipped, arrays["ordinal"], arrays["line"],
                arrays["label"].astype(np.int32), arrays["group"].astype(np.int32),
                arrays["hashes"].astype(np.uint64), list(labels), list(groups))


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


def split_counts(n: int, ratios: Sequence[float]) -> list:
    """Largest-remainder split of `n` items by `ratios` (exact, deterministic)."""
    exact = [n * r for r in ratios]
    base = [int(math.floor(e + 1e-9)) for e in exact]
    order = sorted(range(len(ratios)), key=lambda i: (-(exact[i] - base[i]), i))
    for i in order[: n - sum(base)]:
        base[i] += 1
    return base


def assign_splits(labels: np.ndarray, groups: Optional[np.ndarray], ratios, seed: int) -> np.ndarray:
    """Split index (0 train, 1 validation, 2 test) per row.

    With ``groups``: whole groups go to the split furthest below its target share
    (relative), in a seeded order, so no group spans two splits. Otherwise rows are
    stratified by ``labels``: each label's rows are shuffled and cut by
    :func:`split_counts`, so per-label proportions are exact.
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
    for rows in np.split(order, starts[1:]):
        rows = rng.permutation(rows)
        bounds = np.cumsum(split_counts(len(rows), ratios))
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


def _example(ids, label: int, group: bytes, extras, extra_cols) -> bytes:
    import tensorflow as tf

    f = tf.train.Feature
    feats = {
        "token_ids": f(int64_list=tf.train.Int64List(value=ids)),
        "length": f(int64_list=tf.train.Int64List(value=[len(ids)])),
        "label": f(int64_list=tf.train.Int64List(value=[label])),
        "group": f(bytes_list=tf.train.BytesList(value=[group])),
    }
    for col, v in zip(extra_cols, extras):
        feats["x_" + col] = f(bytes_list=tf.train.BytesList(value=[v]))
    ex = tf.train.Example(features=tf.train.Features(feature=feats))
    return ex.SerializeToString(deterministic=True)


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


def write_shards(source: Source, sc: Scan, keep: np.ndarray, splits, shards, nshards,
                 data_dir: str, encoding, max_length: int, progress: bool = True) -> list:
    """Pass 2: re-read the source, tokenize kept rows via tf.data, write the shards."""
    import tensorflow as tf

    ordinals = sc.ordinal[keep]
    hashes = sc.hashes[keep]
    labels = sc.label[keep]
    extra_cols = list(source.extra_cols)

    k = len(extra_cols)
    changed: list = []

    def kept_batches():
        """Kept rows in batches (one generator step per batch keeps tf.data fast)."""
        j, batch = 0, []
        for rec in source.records():
            if j < len(ordinals) and rec.index == ordinals[j]:
                if rec.skip or _text_hash(rec.text) != int(hashes[j]):
                    changed.append(rec.line)  # raised below: tf.data would wrap it
                    return
                batch.append(rec)
                j += 1
                if len(batch) == ENCODE_BATCH or j == len(ordinals):
                    sl = slice(j - len(batch), j)
                    yield (np.array([r.text for r in batch], dtype=object), splits[sl], shards[sl],
                           labels[sl], np.array([r.group or "" for r in batch], dtype=object),
                           np.array([list(r.extras) for r in batch], dtype=object).reshape(len(batch), k))
                    batch = []

    @tf.autograph.experimental.do_not_convert
    def encode(texts, *rest):
        return (encoding.encode(texts, max_length), *rest)

    spec = (tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.int8),
            tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None], tf.string), tf.TensorSpec([None, k], tf.string))
    ds = (
        tf.data.Dataset.from_generator(kept_batches, output_signature=spec)
        .map(encode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(2)
    )
    gf = _gfile()
    gf.makedirs(data_dir)
    writers, counts = {}, collections.Counter()
    for s, split in enumerate(SPLITS):
        for i in range(nshards[s]):
            writers[(s, i)] = tf.io.TFRecordWriter(posixpath.join(data_dir, shard_name(split, i, nshards[s])))
    try:
        with Progress("pass 2/2: tokenize+write", total=len(keep), enabled=progress) as bar:
            for b, (ids, sp, sh, lab, grp, ext) in enumerate(ds):
                flat, rs = ids.flat_values.numpy(), ids.row_splits.numpy()
                sp, sh, lab, grp, ext = sp.numpy(), sh.numpy(), lab.numpy(), grp.numpy(), ext.numpy()
                for j in range(len(sp)):
                    key = (int(sp[j]), int(sh[j]))
                    rec = _example(flat[rs[j]:rs[j + 1]].tolist(), int(lab[j]), grp[j], ext[j], extra_cols)
                    writers[key].write(rec)
                    counts[key] += 1
                bar.update(len(sp))
                if b == 0:
                    _maybe_pause()
    finally:
        for w in writers.values():
            w.close()
    if changed or sum(counts.values()) != len(keep):
        where = f" (line {changed[0]})" if changed else ""
        raise DataError(f"{source.path} changed during the build{where}; rerun the build "
                        "once the file is stable")
    base = posixpath.basename(data_dir.rstrip("/"))
    return [
        {"split": split, "path": f"{base}/{shard_name(split, i, nshards[s])}", "records": counts[(s, i)]}
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
    for k, v in settings.to_dict().items():
        if old.get(k) != v:
            diffs.append(f"{k}: {old.get(k)!r} -> {v!r}")
    return diffs


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
    tokenizer, preset = _tokenizer(tokenizer, preset)
    encoding = encoders.TextEncoding(tokenizer)
    sha256 = sha256 or file_sha256(input_path)

    sc = scan(source, st.strict, progress)
    labels, keep = select_rows(sc, st.labels, source, st.strict)
    if not len(keep):
        raise DataError(
            f"{input_path}: no usable rows ({sc.rows_read} read; skipped: "
            f"{_fmt_skips(sc.skipped) or 'none'}). Check --text-col/--label-col/--labels"
        )
    grouped = st.group_col is not None
    splits = assign_splits(sc.label[keep], sc.group[keep] if grouped else None, st.ratios, st.seed)
    shards, nshards = assign_shards(splits, st.seed)

    build_id = _new_build_id()
    _gfile().makedirs(cache_dir)
    shard_list = write_shards(source, sc, keep, splits, shards, nshards,
                              posixpath.join(cache_dir, f"data-{build_id}"), encoding,
                              st.max_length, progress)
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
    if not _gfile().exists(input_path):
        raise DataError(f"input file not found: {input_path}")
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
