"""reader.py: truncation, padding modes, shapes, and exactly-once serving."""

import collections
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from kt_pipeline import cache, encoders, reader
from kt_pipeline.testing import WORDS

N = 300


@pytest.fixture(scope="module")
def built(tiny_preset, tmp_path_factory):
    """A cache of N rows with lengths spread from ~3 to ~300 tokens; texts by id."""
    root = tmp_path_factory.mktemp("reader")
    rng = np.random.default_rng(0)
    texts = {}
    rows = ["id,text,label,book"]
    for i in range(N):
        n = int(rng.choice([2, 10, 25, 50, 100, 298])) + int(rng.integers(0, 5))
        texts[str(i)] = " ".join(WORDS[k] for k in rng.integers(len(WORDS), size=n)) + f" {i}"
        rows.append(f"{i},{texts[str(i)]},{'abc'[i % 3]},b{i % 7}")
    (root / "d.csv").write_text("\n".join(rows) + "\n")
    tok = encoders.load_tokenizer(tiny_preset)
    m = cache.build_cache(str(root / "d.csv"), str(root / "cache"), tokenizer=tok,
                          extra_cols=("id",), group_col="book", progress=False)
    return m["cache_dir"], texts, encoders.TextEncoding(tok), m


def ids_served(ds):
    out = []
    for f, y in ds:
        out += [v.decode() for v in f["x_id"].numpy()]
    return out


def test_truncation_keeps_end_token_and_matches_encoding(built):
    cache_dir, texts, enc, _ = built
    ds = reader.make_dataset(cache_dir, "train", batch_size=16, max_seq_length=20,
                             padding="dynamic", extras=("id",))
    checked = 0
    for f, _ in ds:
        ids, mask = f["token_ids"].numpy(), f["padding_mask"].numpy()
        for row, m, key in zip(ids, mask, f["x_id"].numpy()):
            kept = row[m]
            want = enc.encode([texts[key.decode()]], 20)[0].numpy()
            assert kept.tolist() == want.tolist()
            assert kept[0] == enc.start_id and kept[-1] == enc.end_id and len(kept) <= 20
            assert (row[~m] == enc.pad_id).all()
            checked += 1
    assert checked == reader.num_examples(cache_dir, "train")


def test_fixed_padding_has_static_shapes(built):
    cache_dir, _, _, _ = built
    ds = reader.make_dataset(cache_dir, "train", batch_size=16, max_seq_length=64, padding="fixed")
    spec = ds.element_spec
    assert spec[0]["token_ids"].shape.as_list() == [16, 64]
    assert spec[0]["padding_mask"].shape.as_list() == [16, 64]
    assert spec[0]["token_ids"].dtype == tf.int32 and spec[0]["padding_mask"].dtype == tf.bool
    assert spec[1].shape.as_list() == [16] and spec[1].dtype == tf.int32
    n = sum(int(y.shape[0]) for _, y in ds)
    assert n == (reader.num_examples(cache_dir, "train") // 16) * 16  # drop_remainder


def test_narrow_buckets_pad_each_batch_to_its_longest_example(built):
    cache_dir, _, _, _ = built
    L = 100
    bounds = [0] + reader.bucket_boundaries(L, static=False)
    narrow = reader.make_dataset(cache_dir, "train", batch_size=8, max_seq_length=L,
                                 shuffle=True, seed=1)
    pads = {}
    for name, ds in (("narrow", narrow), ("static", reader.make_dataset(
            cache_dir, "train", batch_size=8, max_seq_length=L, shuffle=True, seed=1,
            static_buckets=True))):
        padded = real = 0
        for f, _ in ds:
            lengths = f["padding_mask"].numpy().sum(axis=1)
            width = int(f["token_ids"].shape[1])
            padded, real = padded + lengths.size * width, real + int(lengths.sum())
            if name == "narrow":
                assert width == lengths.max()
                # every length of the batch falls in one bucket
                i = next(i for i in range(1, len(bounds)) if bounds[i - 1] < lengths.max() <= bounds[i])
                assert lengths.min() > bounds[i - 1], (lengths, bounds[i - 1:i + 1])
        pads[name] = padded / real
    assert pads["narrow"] < pads["static"], pads


def test_bucket_shapes_come_from_the_boundary_set(built):
    cache_dir, _, _, _ = built
    for L in (100, 512):
        ds = reader.make_dataset(cache_dir, "train", batch_size=8, max_seq_length=L,
                                 shuffle=True, seed=1, static_buckets=True)
        widths = collections.Counter(int(f["token_ids"].shape[1]) for f, _ in ds)
        assert set(widths) <= set(reader.bucket_boundaries(L)), widths
        assert len(widths) >= 3
    assert reader.bucket_boundaries(100) == [16, 24, 32, 40, 48, 64, 96, 100]
    assert reader.bucket_boundaries(512) == list(reader.BUCKET_SIZES)
    assert reader.bucket_boundaries(16) == [16]
    narrow = reader.bucket_boundaries(300, static=False)
    assert narrow[:31] == list(range(2, 33)) and narrow[-1] == 300
    steps = [b - a for a, b in zip(narrow, narrow[1:-1])]
    assert all(s == max(1, a // 16) for a, s in zip(narrow, steps)), steps


@pytest.mark.parametrize("padding", ["bucket", "dynamic", "fixed"])
def test_autotuner_is_off_so_dropping_an_iterator_does_not_stall(built, padding):
    # With tf.data's autotuner on, the end of each fit/evaluate call waited up to ~10 s
    # for the autotuner thread (BENCHMARKS.md section 3). The reader turns it off and
    # sets its parallelism itself; a later `with_options` must not turn it back on.
    cache_dir = built[0]
    ds = reader.make_dataset(cache_dir, "train", batch_size=7, max_seq_length=32,
                             padding=padding, shuffle=True, repeat=True)
    assert ds.options().autotune.enabled is False
    opts = tf.data.Options()
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    assert ds.with_options(opts).options().autotune.enabled is False
    assert len(list(ds.take(3))) == 3


@pytest.mark.parametrize("padding", ["bucket", "dynamic", "fixed"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_every_example_served_once_per_epoch(built, padding, shuffle):
    cache_dir, texts, _, m = built
    for split in reader.SPLITS:
        ds = reader.make_dataset(cache_dir, split, batch_size=7, max_seq_length=128,
                                 padding=padding, shuffle=shuffle, seed=3,
                                 drop_remainder=False, extras=("x_id",))
        served = ids_served(ds)
        assert len(served) == len(set(served)) == m["counts"]["written"][split]
    all_ids = set()
    for split in reader.SPLITS:
        all_ids |= set(ids_served(reader.make_dataset(
            cache_dir, split, batch_size=50, max_seq_length=16, padding=padding,
            drop_remainder=False, extras=("id",))))
    assert all_ids == set(texts)


def test_shuffle_changes_order_and_is_seeded(built):
    cache_dir, _, _, _ = built
    mk = lambda seed, shuffle=True: ids_served(reader.make_dataset(
        cache_dir, "train", batch_size=10, max_seq_length=32, padding="dynamic",
        shuffle=shuffle, seed=seed, extras=("id",)))
    assert mk(1) == mk(1) != mk(0, shuffle=False)
    assert sorted(mk(1)) == sorted(mk(0, shuffle=False))


def test_take_repeat_labels_and_group(built):
    cache_dir, _, _, m = built
    ds = reader.make_dataset(cache_dir, "validation", batch_size=4, max_seq_length=32,
                             padding="dynamic", take=10, repeat=True, extras=("group",))
    batches = list(ds.take(5))
    assert sum(int(y.shape[0]) for _, y in batches) == 20
    f, y = batches[0]
    assert set(y.numpy().tolist()) <= {0, 1, 2} and f["group"].numpy()[0].startswith(b"b")


def test_errors_are_clear(built, tmp_path):
    cache_dir, _, _, _ = built
    with pytest.raises(reader.CacheError, match="rebuild the cache with --max-length 1024"):
        reader.make_dataset(cache_dir, "train", batch_size=4, max_seq_length=1024)
    with pytest.raises(reader.CacheError, match="stored extras"):
        reader.make_dataset(cache_dir, "train", batch_size=4, max_seq_length=32, extras=("nope",))
    with pytest.raises(reader.CacheError, match="no cache at"):
        reader.load_manifest(str(tmp_path / "absent"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text(
        (pathlib.Path(cache_dir) / "manifest.json").read_text())
    with pytest.raises(reader.CacheError, match="incomplete"):
        reader.load_manifest(str(broken))
