"""`tf.data` reader over the TFRecord split cache: truncate, pad, batch, prefetch.

One cache serves every ``max_seq_length`` up to the stored ``max_length``: ids are
stored unpadded with their specials and truncated here, 256 records at a time, with
:func:`kt_pipeline.encoders.truncate_rows` (which keeps the final ``[SEP]``/``</s>``).

Padding modes:

- ``"fixed"``: every batch is ``[batch_size, max_seq_length]`` with static shapes;
  ``drop_remainder`` defaults to True (what TPUs need).
- ``"dynamic"``: each batch is padded to its longest example.
- ``"bucket"`` (default): examples are grouped by length; shuffling happens before
  bucketing. By default the buckets are narrow (one per length up to 32 tokens, then
  about 1/16 of the length wide) and each batch is padded to its longest example, so
  almost nothing is padded; batch widths vary, which costs a TF graph without XLA
  nothing (Keras traces one shape-relaxed step). With ``static_buckets=True`` (what
  ``jit_compile``/XLA wants: one compile per shape) batches are padded to one of a few
  boundaries (16, 24, 32, 40, 48, 64, 96, 128, ... 512, capped at ``max_seq_length``).

Example:

>>> from kt_pipeline import reader
>>> reader.num_examples("tfrecords/demo", "train")                         # doctest: +SKIP
320
>>> ds = reader.make_dataset("tfrecords/demo", "train", batch_size=8,
...                          max_seq_length=64, padding="fixed")           # doctest: +SKIP
>>> features, labels = next(iter(ds))                                      # doctest: +SKIP
>>> features["token_ids"].shape, features["padding_mask"].dtype, labels.shape  # doctest: +SKIP
(TensorShape([8, 64]), tf.bool, TensorShape([8]))
"""

from __future__ import annotations

import json
import posixpath

from kt_pipeline.errors import DataError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "validation", "test")
PADDINGS = ("bucket", "dynamic", "fixed")
# Static buckets (XLA): steps of 8 up to 48 tokens, where most short-text rows fall
# (SST-2 averages 13): less padding than 16/32/64 (1.10-1.15x the examples/s training
# MiniLM on SST-2; BENCHMARKS.md section 3), and still few shapes to compile. Narrow
# buckets pad SST-2 to 13.3 tokens per row on average, these to 19.9 (the peer's
# group_by_length: 13.8); 1.3-1.4x the examples/s without XLA.
BUCKET_SIZES = (16, 24, 32, 40, 48, 64, 96, 128, 192, 256, 384, 512)
SHUFFLE_BUFFER = 10_000
# tf.data's autotuner is off and parallelism is fixed instead. With it on, dropping an
# iterator (the end of every `fit`/`evaluate` call and of every epoch) could block until
# the autotuner's next wake-up; its period doubles, so the wait grows with the iterator's
# age (stalled calls ended 20.5, 41.0 or 82.0 s after the iterator started). 2 of 12
# 15-step `fit` calls took 20.6 s instead of ~10.3 s with it on, 0 of 12 with it off
# (BENCHMARKS.md section 3). The reader still runs >100x faster than training consumes.
PREFETCH_BATCHES = 2
PARSE_BATCH = 256


def _parallelism() -> int:
    import os

    return max(2, min(16, os.cpu_count() or 2))


def data_options():
    """`tf.data.Options` for the training and evaluation pipelines: the autotuner off.

    See the note above ``PREFETCH_BATCHES``. The cache build's pass 2 turns it off too
    (its one iterator, dropped at the end of the build, stalled ~0.15 s in about two
    builds of three with it on).
    """
    import tensorflow as tf

    opts = tf.data.Options()
    opts.autotune.enabled = False
    return opts


class CacheError(DataError):
    """A cache that is missing, incomplete, from another schema or cannot serve a request."""


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def load_manifest(cache_dir: str) -> dict:
    """Read ``<cache_dir>/manifest.json`` and check its shards exist.

    The returned dict has ``cache_dir`` added. Raises :class:`CacheError` if the cache
    is absent, incomplete or from another schema version.
    """
    gf = _gfile()
    cache_dir = cache_dir.rstrip("/")
    path = posixpath.join(cache_dir, MANIFEST)
    build = f"build it with `kt-pipeline build-tfrecords --input FILE --output {cache_dir}`"
    if not gf.exists(path):
        raise CacheError(f"no cache at {cache_dir} (no {MANIFEST}); {build}")
    try:
        with gf.GFile(path, "r") as f:
            m = json.loads(f.read())
        version = m["schema_version"]
        shards = m["shards"]
    except (ValueError, KeyError, TypeError) as e:
        raise CacheError(f"{path} is not a valid cache manifest ({e}); rebuild with --force") from None
    if version != SCHEMA_VERSION:
        raise CacheError(
            f"{path}: cache schema version {version}, this version reads {SCHEMA_VERSION}; "
            "rebuild it with --force"
        )
    dirs = {s["path"].split("/")[0] for s in shards}
    for d in dirs:
        full = posixpath.join(cache_dir, d)
        present = set(n.rstrip("/") for n in gf.listdir(full)) if gf.isdir(full) else set()
        missing = [s["path"] for s in shards if s["path"].split("/")[0] == d
                   and s["path"].split("/", 1)[1] not in present]
        if missing:
            raise CacheError(
                f"cache {cache_dir} is incomplete: {len(missing)} shard(s) missing, e.g. "
                f"{missing[0]}; rebuild it with --force"
            )
    m["cache_dir"] = cache_dir
    return m


def num_examples(cache_dir: str, split: str) -> int:
    """How many examples `split` holds."""
    m = load_manifest(cache_dir)
    _check_split(split)
    return int(m["counts"]["written"].get(split, 0))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise CacheError(f"split {split!r}: expected one of {', '.join(SPLITS)}")


def bucket_boundaries(max_seq_length: int, static: bool = True) -> list:
    """Upper bounds of the ``padding="bucket"`` buckets, ending with the cap.

    ``static``: ``BUCKET_SIZES`` below the cap, and batches are padded to their bound.
    Otherwise every length up to 32, then steps of ``length // 16`` (2 from 32, 4 from
    64, 8 from 128 ...); batches are padded to their longest example.

    >>> bucket_boundaries(100)
    [16, 24, 32, 40, 48, 64, 96, 100]
    >>> bucket_boundaries(80, static=False)[28:]
    [30, 31, 32, 34, 36, 38, 40, 42, 44, 46, 48, 51, 54, 57, 60, 63, 66, 70, 74, 78, 80]
    """
    L = int(max_seq_length)
    if static:
        return [b for b in BUCKET_SIZES if b < L] + [L]
    out, b = [], 2
    while b < L:
        out.append(b)
        b += max(1, b // 16)
    return out + [L]


def _feature_spec(extra_names):
    import tensorflow as tf

    spec = {
        "token_ids": tf.io.RaggedFeature(tf.int64),
        "label": tf.io.FixedLenFeature([], tf.int64),
        "group": tf.io.FixedLenFeature([], tf.string, default_value=b""),
    }
    for name in extra_names:
        spec[name] = tf.io.FixedLenFeature([], tf.string, default_value=b"")
    return spec


def _extra_names(manifest: dict, extras) -> list:
    """Map requested extras ("group", "col" or "x_col") to feature names."""
    cols = manifest["columns"].get("extras") or []
    out = []
    for e in extras:
        name = e if e == "group" or e.startswith("x_") else "x_" + e
        if name != "group" and name[2:] not in cols:
            raise CacheError(
                f"extra {e!r} is not in cache {manifest['cache_dir']}; stored extras: "
                f"{', '.join(['group'] + cols)} (rebuild with --extra-cols to add it)"
            )
        out.append(name)
    return out


def make_dataset(
    cache_dir: str,
    split: str,
    *,
    batch_size: int,
    max_seq_length: int,
    padding: str = "bucket",
    shuffle: bool = False,
    seed: int = 0,
    repeat: bool = False,
    drop_remainder=None,
    take=None,
    extras=(),
    static_buckets: bool = False,
):
    """Batches of ``(features, labels)`` from one split of a cache.

    ``features = {"token_ids": int32 [B, L], "padding_mask": bool [B, L]}`` plus a
    string ``[B]`` entry per name in ``extras`` (``"group"``, or an extra column as
    ``"x_<col>"`` / ``"<col>"``); ``labels`` is int32 ``[B]`` (-1 without labels).
    ``take`` keeps the first N examples (before shuffling), for quick runs.
    ``static_buckets`` pads ``"bucket"`` batches to the few fixed boundaries (for XLA)
    instead of to their longest example.
    """
    import tensorflow as tf

    from kt_pipeline.encoders import truncate_rows

    m = load_manifest(cache_dir)
    _check_split(split)
    if padding not in PADDINGS:
        raise CacheError(f"padding {padding!r}: expected one of {', '.join(PADDINGS)}")
    stored = int(m["max_length"])
    if not 2 <= int(max_seq_length) <= stored:
        raise CacheError(
            f"max_seq_length {max_seq_length}: cache {cache_dir} stores ids up to {stored} "
            f"tokens; use 2..{stored} or rebuild the cache with --max-length {max_seq_length}"
        )
    if int(batch_size) < 1:
        raise CacheError(f"batch_size {batch_size}: expected >= 1")
    L, B = int(max_seq_length), int(batch_size)
    if drop_remainder is None:
        drop_remainder = padding == "fixed"
    pad_id = int(m["tokenizer"]["special_tokens"]["pad"])
    names = _extra_names(m, extras)
    spec = _feature_spec([n for n in names if n != "group"])

    files = [posixpath.join(cache_dir, s["path"]) for s in m["shards"] if s["split"] == split]
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(files, dtype=tf.string))
    if shuffle and len(files) > 1:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    cycle = max(1, min(len(files), 8))
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=cycle,
        num_parallel_calls=min(cycle, _parallelism()),
        deterministic=True,
    )
    if take is not None:
        ds = ds.take(int(take))
    if shuffle:
        n = int(m["counts"]["written"].get(split, 0))
        ds = ds.shuffle(max(1, min(n, SHUFFLE_BUFFER)), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    def parse(records):  # a batch of records: one ParseExample, truncation on all rows
        ex = tf.io.parse_example(records, spec)
        ids = truncate_rows(ex["token_ids"], L)
        feats = {"token_ids": tf.cast(ids.to_tensor(pad_id), tf.int32),
                 "length": tf.cast(ids.row_lengths(), tf.int32)}
        for n in names:
            feats[n] = ex[n]
        return feats, tf.cast(ex["label"], tf.int32)

    def cut(f, y):  # each example back to its own length, as the batching below expects
        return {**f, "token_ids": f["token_ids"][:f["length"]]}, y

    # Parsed PARSE_BATCH records at a time (1.3x the examples/s of one at a time on
    # bucketed SST-2, BENCHMARKS.md section 2), then served one by one, in order.
    ds = (ds.batch(PARSE_BATCH)
          .map(parse, num_parallel_calls=_parallelism(), deterministic=True)
          .unbatch()
          .map(cut))
    shapes = ({"token_ids": [L if padding == "fixed" else None], "length": [],
               **{n: [] for n in names}}, [])
    values = ({"token_ids": tf.constant(pad_id, tf.int32), "length": tf.constant(0, tf.int32),
               **{n: tf.constant(b"") for n in names}}, tf.constant(0, tf.int32))
    if padding == "bucket":
        bounds = bucket_boundaries(L, static_buckets)
        # Bucket i holds lengths in (bounds[i-1], bounds[i]]; static: padded to bounds[i].
        ds = ds.bucket_by_sequence_length(
            lambda f, y: f["length"],
            bucket_boundaries=[b + 1 for b in bounds],
            bucket_batch_sizes=[B] * (len(bounds) + 1),
            padded_shapes=shapes,
            padding_values=values,
            pad_to_bucket_boundary=bool(static_buckets),
            drop_remainder=drop_remainder,
        )
    else:
        ds = ds.padded_batch(B, padded_shapes=shapes, padding_values=values,
                             drop_remainder=drop_remainder)

    def finish(f, y):
        ids = f.pop("token_ids")
        width = ids.shape[1] if ids.shape[1] is not None else tf.shape(ids)[1]
        mask = tf.sequence_mask(f.pop("length"), width)
        return {"token_ids": ids, "padding_mask": mask, **f}, y

    ds = ds.map(finish, num_parallel_calls=_parallelism(), deterministic=True)
    return ds.prefetch(PREFETCH_BATCHES).with_options(data_options())

