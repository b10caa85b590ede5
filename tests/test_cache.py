"""cache.py: splits, dedupe, manifest, reuse, atomicity (kill / race), gs://-style I/O."""

import collections
import os
import pathlib
import signal
import subprocess
import sys
import time
import tracemalloc
import uuid

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kt_pipeline import cache, reader
from kt_pipeline.cli import main as cli_main
from kt_pipeline.errors import ConfigError, DataError
from kt_pipeline.sources import open_source
from kt_pipeline.testing import WORDS

ROOT = pathlib.Path(__file__).resolve().parents[1]


def make_csv(path, n=120, labels=("neg", "pos", "mid"), groups=None, dupes=0, seed=0):
    """A CSV of `n` distinct texts (+ `dupes` repeats) with id/label(/book) columns."""
    rng = np.random.default_rng(seed)
    rows = ["id,text,label" + (",book" if groups else "")]
    for i in range(n + dupes):
        j = i if i < n else int(rng.integers(n))
        words = " ".join(WORDS[k] for k in np.random.default_rng(j).integers(len(WORDS), size=3 + j % 20))
        text = f"{words} {j}"
        row = f"{i},\"{text}\",{labels[j % len(labels)]}"
        if groups:
            row += f",g{j % groups}"
        rows.append(row)
    pathlib.Path(path).write_text("\n".join(rows) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def tok(tiny_preset):
    from kt_pipeline import encoders

    return encoders.load_tokenizer(tiny_preset)


def read_split(cache_dir, split, extras=("x_id",)):
    ds = reader.make_dataset(cache_dir, split, batch_size=64, max_seq_length=64,
                             padding="dynamic", extras=extras)
    out = collections.defaultdict(list)
    for f, y in ds:
        for k in extras:
            out[k] += [v.decode() for v in f[k].numpy()]
        out["label"] += y.numpy().tolist()
    return out


def test_manifest_counts_and_stratified_exact(tmp_path, tok):
    src = make_csv(tmp_path / "d.csv", n=203, dupes=7)
    m = cache.build_cache(src, str(tmp_path / "c"), tokenizer=tok, extra_cols=("id",), progress=False)
    for key in ("schema_version", "build_id", "created", "task", "source", "columns", "labels",
                "counts", "tokenizer", "preset", "ratios", "seed", "max_length", "shards"):
        assert key in m
    c = m["counts"]
    assert c["rows_read"] == 210 and c["skipped"]["duplicate_text"] == 7
    assert c["rows_read"] == sum(c["written"].values()) + sum(c["skipped"].values())
    assert m["labels"] == ["mid", "neg", "pos"]
    assert m["source"]["sha256"] == cache.file_sha256(src)
    for split in reader.SPLITS:
        assert sum(s["records"] for s in m["shards"] if s["split"] == split) == c["written"][split]
    # Stratified: each label's rows are cut exactly by the largest-remainder rule.
    per_label = collections.Counter(i % 3 for i in range(203))
    got = {s: collections.Counter(read_split(m["cache_dir"], s)["label"]) for s in reader.SPLITS}
    names = {"neg": 1, "pos": 2, "mid": 0}
    for lab, n in per_label.items():
        want = cache.split_counts(n, (0.8, 0.1, 0.1))
        assert [got[s][names[("neg", "pos", "mid")[lab]]] for s in reader.SPLITS] == want
    # Deduped before splitting: ids >= 203 are repeats and never written; no id twice.
    ids = [i for s in reader.SPLITS for i in read_split(m["cache_dir"], s)["x_id"]]
    assert sorted(map(int, ids)) == list(range(203))
    assert "rows read 210" in cache.format_summary(m) and "duplicate_text 7" in cache.format_summary(m)


def test_text_of_only_invisible_characters_is_empty_text(tmp_path, tok):
    # A zero-width space, a BOM or control characters tokenize to nothing: such a row
    # would be stored as just [CLS][SEP], so it is counted as empty_text instead.
    src = tmp_path / "d.csv"
    blanks = ["\u200b", "\ufeff\u200d", "\x01\x02", " \u200c\t"]
    rows = [f"row number {i},pos" for i in range(20)] + [f'"{b}",neg' for b in blanks]
    src.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    m = cache.build_cache(str(src), str(tmp_path / "c"), tokenizer=tok, progress=False)
    c = m["counts"]
    assert c["skipped"]["empty_text"] == len(blanks)
    assert c["rows_read"] == sum(c["written"].values()) + sum(c["skipped"].values())
    assert all(len(ids) > 2 for s in reader.SPLITS for ids in _token_ids(m["cache_dir"], s))
    with pytest.raises(DataError, match="column 'text'.*invisible"):
        cache.build_cache(str(src), str(tmp_path / "s"), tokenizer=tok, strict=True,
                          progress=False)


def test_same_input_same_settings_gives_identical_bytes(tmp_path, tok):
    src = make_csv(tmp_path / "d.csv", n=150)
    a = cache.build_cache(src, str(tmp_path / "a"), tokenizer=tok, seed=3, progress=False)
    b = cache.build_cache(src, str(tmp_path / "b"), tokenizer=tok, seed=3, progress=False)
    c = cache.build_cache(src, str(tmp_path / "c"), tokenizer=tok, seed=4, progress=False)
    files = lambda m: [(s["path"].split("/", 1)[1],
                        (pathlib.Path(m["cache_dir"]) / s["path"]).read_bytes()) for s in m["shards"]]
    assert files(a) == files(b)
    assert files(a) != files(c)


def test_stratified_ties_do_not_favour_validation():
    # 100 labels of 5 rows: each label's 0.5/0.5 remainder tie between validation and
    # test must not go to validation every time (which gave 400/100/0, an empty test).
    labels = np.repeat(np.arange(100), 5)
    splits = cache.assign_splits(labels, None, (0.8, 0.1, 0.1), seed=0)
    assert np.bincount(splits, minlength=3).tolist() == [400, 50, 50]
    for k in range(100):  # each label is still cut by the largest-remainder rule
        assert sorted(np.bincount(splits[labels == k], minlength=3)) == [0, 1, 4]
    labels = np.repeat(np.arange(150), 15)  # 12/1.5/1.5 each: was 1800/300/150
    splits = cache.assign_splits(labels, None, (0.8, 0.1, 0.1), seed=0)
    assert np.bincount(splits, minlength=3).tolist() == [1800, 225, 225]


def test_grouped_split_keeps_groups_whole(tmp_path, tok):
    src = make_csv(tmp_path / "d.csv", n=200, groups=17)
    m = cache.build_cache(src, str(tmp_path / "c"), tokenizer=tok, group_col="book",
                          task="clustering", progress=False)
    seen = {s: set(read_split(m["cache_dir"], s, extras=("group",))["group"]) for s in reader.SPLITS}
    assert all(seen[s] for s in reader.SPLITS)
    assert not (seen["train"] & seen["validation"] or seen["train"] & seen["test"]
                or seen["validation"] & seen["test"])
    assert set().union(*seen.values()) == {f"g{i}" for i in range(17)}
    # Three groups still reach all three splits.
    three = make_csv(tmp_path / "t.csv", n=30, groups=3)
    m = cache.build_cache(three, str(tmp_path / "t"), tokenizer=tok, group_col="book",
                          task="clustering", progress=False)
    assert all(m["counts"]["written"][s] == 10 for s in reader.SPLITS)


def test_label_set_inferred_and_declared(tmp_path, tok):
    rows = ["text,label"] + [f"the film {i},{i % 2}" for i in range(60)] + ["odd one,maybe"]
    src = tmp_path / "l.csv"
    src.write_text("\n".join(rows) + "\n")
    m = cache.build_cache(str(src), str(tmp_path / "c"), tokenizer=tok, progress=False)
    assert m["labels"] == ["0", "1"] and m["counts"]["skipped"]["label_not_in_set"] == 1
    m = cache.build_cache(str(src), str(tmp_path / "d"), tokenizer=tok, labels=("1", "maybe"),
                          progress=False)
    assert m["labels"] == ["1", "maybe"] and m["counts"]["skipped"]["label_not_in_set"] == 30
    assert cache.infer_labels({"pos": 5, "neg": 5}) == ["neg", "pos"]
    assert cache.infer_labels({"10": 50, "2": 50, "x": 1}) == ["2", "10"]


def test_strict_errors_name_file_line_column(tmp_path, tok):
    src = tmp_path / "s.csv"
    src.write_text("text,label\nfine,a\n,a\n")
    with pytest.raises(DataError, match=r"s.csv line 3, column 'text': empty text.*Fix"):
        cache.build_cache(str(src), str(tmp_path / "c"), tokenizer=tok, strict=True, progress=False)
    src.write_text("text,label\nfine,a\nok,b\nfine,b\n")
    with pytest.raises(DataError, match=r"line 4, column 'text': duplicate text \(same as line 2\)"):
        cache.build_cache(str(src), str(tmp_path / "c"), tokenizer=tok, strict=True, progress=False)
    with pytest.raises(DataError, match=r"line 3, column 'label': label 'b' is not in --labels"):
        cache.build_cache(str(src), str(tmp_path / "c"), tokenizer=tok, strict=True,
                          labels=("a",), progress=False)
    assert not (tmp_path / "c" / "manifest.json").exists()


def test_reuse_rebuild_no_rebuild_force(tmp_path, tok, tiny_preset):
    src = make_csv(tmp_path / "d.csv", n=50)
    out = str(tmp_path / "c")
    with pytest.raises(reader.CacheError, match="no cache"):
        cache.ensure_cache(src, out, tokenizer=tok, rebuild=False, progress=False)
    first = cache.ensure_cache(src, out, tokenizer=tok, progress=False)
    assert first["reused"] is False
    again = cache.ensure_cache(src, out, tokenizer=tok, progress=False)
    assert again["reused"] is True and again["build_id"] == first["build_id"]
    with pytest.raises(reader.CacheError, match=r"seed: 0 -> 5.*without --no-rebuild"):
        cache.ensure_cache(src, out, tokenizer=tok, seed=5, rebuild=False, progress=False)
    pathlib.Path(src).write_text(pathlib.Path(src).read_text() + "a new row,pos\n")
    with pytest.raises(reader.CacheError, match="sha256"):
        cache.ensure_cache(src, out, tokenizer=tok, rebuild=False, progress=False)
    rebuilt = cache.ensure_cache(src, out, tokenizer=tok, progress=False)
    assert rebuilt["reused"] is False and rebuilt["counts"]["rows_read"] == 51
    forced = cache.ensure_cache(src, out, tokenizer=tok, force=True, progress=False)
    assert forced["build_id"] != rebuilt["build_id"]
    # Old data dirs are ignored by the reader and collected once old enough.
    dirs = sorted(p.name for p in pathlib.Path(out).glob("data-*"))
    assert len(dirs) == 3
    removed = cache.collect_garbage(out, max_age=-1)
    assert sorted(removed) == sorted(d for d in dirs if d != "data-" + forced["build_id"])
    assert reader.num_examples(out, "train") == forced["counts"]["written"]["train"]


def test_settings_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="ratios"):
        cache.CacheSettings(ratios=(0.5, 0.1, 0.1))
    with pytest.raises(ConfigError, match="group-col"):
        cache.CacheSettings(task="clustering")
    with pytest.raises(ConfigError, match="'id' listed more than once"):
        cache.CacheSettings(extra_cols=("id", "label", "id"))
    assert cache.default_cache_dir("../shared/data/sst2/train.tsv") == os.path.join("tfrecords", "train")


def test_ram_filesystem_round_trip(tok):
    root = f"ram://kt-{uuid.uuid4().hex}"
    src = f"{root}/in/data.csv"
    tf.io.gfile.makedirs(f"{root}/in")
    with tf.io.gfile.GFile(src, "w") as f:
        f.write("text,label\r\n" + "".join(f"\"the movie, {i}\",{'ab'[i % 2]}\r\n" for i in range(40)))
    m = cache.ensure_cache(src, f"{root}/cache", tokenizer=tok, progress=False)
    assert reader.load_manifest(f"{root}/cache")["build_id"] == m["build_id"]
    n = sum(int(y.shape[0]) for _, y in reader.make_dataset(
        f"{root}/cache", "train", batch_size=8, max_seq_length=32, padding="dynamic"))
    assert n == m["counts"]["written"]["train"] == 32
    assert cache.ensure_cache(src, f"{root}/cache", tokenizer=tok, progress=False)["reused"]


# -- atomicity: kill mid-build, concurrent builds --------------------------------------

BUILD = (
    "import sys; from kt_pipeline import cache; "
    "cache.build_cache(sys.argv[1], sys.argv[2], preset=sys.argv[3], progress=False)"
)


def _spawn(src, out, preset, **env):
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **env)
    return subprocess.Popen([sys.executable, "-c", BUILD, src, out, preset], env=e,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)


def _wait_for(path, proc, timeout=120):
    t = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() - t < timeout
        time.sleep(0.1)


def test_killed_build_never_loads_then_rebuild_works(tmp_path, tok, tiny_preset):
    src = make_csv(tmp_path / "d.csv", n=600)
    out = str(tmp_path / "c")
    marker = str(tmp_path / "paused")
    proc = _spawn(src, out, tiny_preset, KT_TEST_BUILD_PAUSE="60", KT_TEST_BUILD_PAUSE_MARKER=marker)
    _wait_for(marker, proc)
    assert list(pathlib.Path(out).glob("data-*/*.tfrecord"))  # mid-way: shards exist
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with pytest.raises(reader.CacheError):
        reader.load_manifest(out)
    good = cache.build_cache(src, out, tokenizer=tok, progress=False)
    # A killed rebuild leaves the previous complete cache loadable.
    os.remove(marker)
    proc = _spawn(src, out, tiny_preset, KT_TEST_BUILD_PAUSE="60", KT_TEST_BUILD_PAUSE_MARKER=marker)
    _wait_for(marker, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    m = reader.load_manifest(out)
    assert m["build_id"] == good["build_id"]
    assert sum(1 for _ in tf.data.TFRecordDataset(
        [os.path.join(out, s["path"]) for s in m["shards"]])) == 600


def test_two_concurrent_builds_leave_a_complete_cache(tmp_path, tok, tiny_preset):
    src = make_csv(tmp_path / "d.csv", n=400)
    out = str(tmp_path / "c")
    marker = str(tmp_path / "paused")
    # The other process pauses mid-build; this one builds the same cache meanwhile.
    proc = _spawn(src, out, tiny_preset, KT_TEST_BUILD_PAUSE="3", KT_TEST_BUILD_PAUSE_MARKER=marker)
    _wait_for(marker, proc)
    mine = cache.build_cache(src, out, tokenizer=tok, progress=False)
    assert proc.poll() is None  # the builds overlapped
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
    m = reader.load_manifest(out)
    assert m["build_id"] != mine["build_id"]  # the later rename won
    assert len(list(pathlib.Path(out).glob("data-*"))) == 2
    assert sum(1 for _ in tf.data.TFRecordDataset(
        [os.path.join(out, s["path"]) for s in m["shards"]])) == 400
    assert sum(reader.num_examples(out, s) for s in reader.SPLITS) == 400


# -- pass 1: invariant and flat memory -------------------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(
    st.tuples(st.sampled_from(["good film", "bad film", "", " ", "x,y", '"q']),
              st.sampled_from(["0", "1", "", "z", "0,0"])).map(lambda t: f"{t[0]},{t[1]}"),
    st.binary(max_size=20).map(lambda b: b.decode("latin-1"))), max_size=40),
    declared=st.sampled_from([None, ("0", "1")]))
def test_property_scan_accounts_for_every_row(tmp_path_factory, lines, declared):
    path = tmp_path_factory.mktemp("s") / "s.csv"
    path.write_bytes(("text,label\n" + "\n".join(lines)).encode("utf-8", errors="replace")
                     + b"\xff\n" * (len(lines) % 2))
    src = open_source(str(path), "text", "label", delimiter=",", header=True)
    sc = cache.scan(src, progress=False)
    labels, keep = cache.select_rows(sc, declared, src)
    assert sc.rows_read == len(keep) + sum(sc.skipped.values())
    assert len(set(sc.hashes[keep].tolist())) == len(keep)


def _scan_peak(path, rows):
    text = "the film was good " * 55  # ~1 KB per row
    with open(path, "w") as f:
        f.write("text,label\n")
        for i in range(rows):
            f.write(f"{text}{i},{i % 2}\n")
    src = open_source(str(path), "text", "label")
    tracemalloc.start()
    sc = cache.scan(src, progress=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(sc.ordinal) == rows
    return peak


def test_pass1_memory_stays_flat(tmp_path):
    small = _scan_peak(tmp_path / "small.csv", 2000)
    big = _scan_peak(tmp_path / "big.csv", 8000)
    # 6 MB more text; only compact per-row metadata (tens of bytes a row) may grow.
    assert big - small < 1_000_000, (small, big)


# -- CLI and real data ----------------------------------------------------------------


def test_cli_build_and_errors(tmp_path, tiny_preset, capsys):
    src = make_csv(tmp_path / "d.csv", n=40)
    out = str(tmp_path / "c")
    args = ["build-tfrecords", "--input", src, "--output", out, "--preset", tiny_preset, "--quiet"]
    assert cli_main(args) == 0
    assert "rows read 40" in capsys.readouterr().out
    assert cli_main(args + ["--no-rebuild"]) == 0
    assert "reused" in capsys.readouterr().out
    assert cli_main(args + ["--no-rebuild", "--seed", "2"]) == 2
    assert "seed: 0 -> 2" in capsys.readouterr().err
    assert cli_main(args + ["--text-col", "body", "--force"]) == 2
    err = capsys.readouterr().err
    assert "'body' not found" in err and "'id', 'text', 'label'" in err


def test_nsmc_builds_with_only_text_and_label_cols(shared_data, tmp_path, tiny_preset, capsys):
    out = str(tmp_path / "nsmc")
    rc = cli_main(["build-tfrecords", "--input", str(shared_data / "nsmc" / "ratings_train.txt"),
                   "--text-col", "document", "--label-col", "label", "--output", out,
                   "--preset", tiny_preset, "--quiet"])
    assert rc == 0, capsys.readouterr().err
    m = reader.load_manifest(out)
    assert m["labels"] == ["0", "1"] and m["source"]["delimiter"] == "\t"
    c = m["counts"]
    assert c["rows_read"] == 10000 == sum(c["written"].values()) + sum(c["skipped"].values())


def test_sst2_scans_with_only_text_and_label_cols(shared_data):
    src = open_source(str(shared_data / "sst2" / "train.tsv"), "sentence", "label")
    sc = cache.scan(src, progress=False)
    labels, keep = cache.select_rows(sc, None, src)
    assert labels == ["0", "1"] and sc.rows_read == 67349
    assert sc.rows_read == len(keep) + sum(sc.skipped.values())


def test_build_shows_progress_without_a_tty(tmp_path, tok, capsys):
    src = make_csv(tmp_path / "d.csv", n=30)
    cache.build_cache(src, str(tmp_path / "c"), tokenizer=tok, progress=True)
    err = capsys.readouterr().err
    assert "pass 1/2: parse: " in err and "(100%" in err
    assert "pass 2/2: tokenize+write: 30/30 rows" in err and "\r" not in err


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(
    st.sampled_from(["good film", "bad film", "", "  ", '"open quote', "a,b", "fine \udcff"]),
    st.sampled_from(["pos", "neg", "", "?"])), min_size=1, max_size=30))
def test_property_cli_build_never_tracebacks(tmp_path_factory, tiny_preset, rows):
    d = tmp_path_factory.mktemp("e2e")
    body = "".join(f"{t}{i},{lab}\n" if t else f",{lab}\n" for i, (t, lab) in enumerate(rows))
    (d / "in.csv").write_bytes(("text,label\n" + body).encode("utf-8", errors="surrogateescape"))
    rc = cli_main(["build-tfrecords", "--input", str(d / "in.csv"), "--output", str(d / "c"),
                   "--preset", tiny_preset, "--quiet"])
    assert rc in (0, 2)  # 2: a KtError such as "no usable rows", never a traceback
    if rc == 0:
        c = reader.load_manifest(str(d / "c"))["counts"]
        assert c["rows_read"] == sum(c["written"].values()) + sum(c["skipped"].values())


# -- pass 2: in-graph Example serialisation, one read of the source ---------------------


def _reference_example(ids, label, group, extras, extra_cols):
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


@pytest.mark.parametrize("extra_cols", [(), ("id", "b", "zz")])
def test_serialize_examples_matches_protobuf(extra_cols):
    rng = np.random.default_rng(1)
    rows = [rng.integers(0, 2**21, size=int(rng.integers(2, 40))).tolist() for _ in range(200)]
    rows[0], rows[1] = [101, 102], [0, 127, 128, 16383, 16384, 2**31 - 1]
    labels = rng.integers(-1, 300, size=200)
    groups = [("g%d é" % i if i % 3 else "").encode() for i in range(200)]
    extras = [[f"{c}{i}".encode() if i % 4 else b"" for c in extra_cols] for i in range(200)]
    got = cache.serialize_examples(
        tf.ragged.constant(rows, dtype=tf.int32), tf.constant(labels, tf.int32), tf.constant(groups),
        tf.constant(extras, tf.string, shape=[200, len(extra_cols)]), extra_cols).numpy().tolist()
    want = [_reference_example(r, int(y), g, e, extra_cols)
            for r, y, g, e in zip(rows, labels, groups, extras)]
    assert got == want


def test_source_changed_after_its_check_is_an_error(tmp_path, tok):
    src = make_csv(tmp_path / "d.csv", n=50)
    with pytest.raises(DataError, match="changed during the build"):
        cache.build_cache(src, str(tmp_path / "c"), tokenizer=tok, progress=False, sha256="0" * 64)
    m = cache.build_cache(src, str(tmp_path / "c"), tokenizer=tok, progress=False)
    from kt_pipeline.sources import file_sha256

    assert m["source"]["sha256"] == file_sha256(src)  # hashed while parsing, same digest


def test_spill_dirs_of_killed_builds_are_removed(tmp_path, tok):
    import tempfile

    orphan = pathlib.Path(tempfile.gettempdir()) / f"{cache.SPILL_PREFIX}999999999-x"
    orphan.mkdir(exist_ok=True)
    cache.build_cache(make_csv(tmp_path / "d.csv", n=30), str(tmp_path / "c"), tokenizer=tok,
                      progress=False)
    assert not orphan.exists()
    assert not list(pathlib.Path(tempfile.gettempdir()).glob(f"{cache.SPILL_PREFIX}{os.getpid()}-*"))


def _records(manifest):
    """{x_id: (token_ids, label, x_note)} of every record the build wrote."""
    out = {}
    for s in manifest["shards"]:
        for raw in tf.data.TFRecordDataset(os.path.join(manifest["cache_dir"], s["path"])):
            f = tf.train.Example.FromString(raw.numpy()).features.feature
            assert f["length"].int64_list.value[0] == len(f["token_ids"].int64_list.value)
            out[f["x_id"].bytes_list.value[0].decode()] = (
                list(f["token_ids"].int64_list.value), f["label"].int64_list.value[0],
                f["x_note"].bytes_list.value[0].decode())
    return out


@pytest.mark.parametrize("model_type", ["tiny-bert", "roberta", "xlm-roberta"])
def test_every_record_holds_the_keras_hub_ids_of_its_text(tmp_path, tok, model_type):
    """Several tokenising batches; with WordPiece one of them holds texts only KerasHub's
    tokenizer takes (the fast path's fallback); BPE and SentencePiece take KerasHub's
    tokenizer inside pass 2's map. Each record's ids are the KerasHub tokenizer's own."""
    from kt_pipeline import encoders, fast_wordpiece, hf_fixtures

    if model_type != "tiny-bert":
        tok = encoders.load_tokenizer(
            hf_fixtures.write_hf_checkpoint(str(tmp_path / model_type), model_type))
    n = cache.ENCODE_BATCH * 2 + 37
    b = cache.ENCODE_BATCH
    unsafe = {b + 5: "no\u00a0break space", b + 9: "ctrl\x01char"}
    fast = fast_wordpiece.fast_tokenizer(tok)
    if model_type == "tiny-bert":
        assert fast is not None and not any(fast.is_safe_text(t) for t in unsafe.values())
    else:
        assert fast is None
    texts = [unsafe.get(i, " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(1 + i % 9))
                        + f" {i}") for i in range(n)]
    lines = ["id,text,label,note"] + [f'{i},"{t}",{"ab"[i % 2]},n{i % 5}'
                                      for i, t in enumerate(texts)]
    src = tmp_path / "d.csv"
    src.write_text("\n".join(lines) + "\n")
    m = cache.build_cache(str(src), str(tmp_path / "c"), tokenizer=tok, progress=False,
                          max_length=12, extra_cols=("id", "note"))
    got = _records(m)
    assert len(got) == n
    want = encoders.TextEncoding(tok).encode(tf.constant(texts), 12).to_list()
    for i, t in enumerate(texts):
        ids, label, note = got[str(i)]
        assert ids == want[i], (i, t)
        assert m["labels"][label] == "ab"[i % 2] and note == f"n{i % 5}"


def test_labels_without_a_label_column_is_a_config_error():
    # It built a cache whose manifest listed the labels and gave every row the first.
    with pytest.raises(ConfigError, match="--labels.*--label-col"):
        cache.CacheSettings(task="clustering", label_col=None, group_col="book",
                            labels=("a", "b"))


def test_bad_seed_or_nan_ratios_are_config_errors_not_tracebacks(tmp_path, tiny_preset, capsys):
    with pytest.raises(ConfigError, match="seed"):
        cache.CacheSettings(seed=-1)
    with pytest.raises(ConfigError, match="ratios"):
        cache.CacheSettings(ratios=(float("nan"), 0.0, 0.0))
    src = make_csv(tmp_path / "d.csv", n=20)
    args = ["build-tfrecords", "--input", src, "--output", str(tmp_path / "c"),
            "--preset", tiny_preset, "--quiet"]
    for bad in (["--seed", "-1"], ["--ratios", "nan,0,0"]):
        assert cli_main(args + bad) == 2
        assert capsys.readouterr().err.startswith("error: --")


def test_input_dir_or_output_file_is_an_error_not_a_traceback(tmp_path, tiny_preset, capsys):
    src = make_csv(tmp_path / "d.csv", n=20)
    base = ["build-tfrecords", "--preset", tiny_preset, "--quiet"]
    assert cli_main(base + ["--input", str(tmp_path), "--output", str(tmp_path / "c")]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert cli_main(base + ["--input", src, "--output", src]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "d.csv" in err and "--output" in err
    assert pathlib.Path(src).read_text().startswith("id,text,label")


def test_no_usable_rows_error_names_the_fix(tmp_path, tok):
    # A Korean file saved as cp949 (common on Windows): every row is undecodable.
    src = tmp_path / "kr.csv"
    src.write_bytes("text,label\n정말 재미있어요,1\n별로예요,0\n".encode("cp949"))
    with pytest.raises(DataError) as e:
        cache.build_cache(str(src), str(tmp_path / "c"), tokenizer=tok, progress=False)
    assert "undecodable 2" in str(e.value) and "UTF-8" in str(e.value)
    src.write_text("text,label\n")
    with pytest.raises(DataError, match="no data rows"):
        cache.build_cache(str(src), str(tmp_path / "c"), tokenizer=tok, progress=False)


def test_texts_differing_only_in_whitespace_are_duplicates(tmp_path, tok):
    # The tokenizer ignores leading, trailing and repeated whitespace: the same ids must
    # not land in two splits.
    src = tmp_path / "w.csv"
    rows = [f"text {i} here,{i % 2}" for i in range(40)]
    rows += ["text 3 here ,1", "  text 3   here,1", '"text 3\there",1']
    src.write_text("text,label\n" + "\n".join(rows) + "\n")
    m = cache.build_cache(str(src), str(tmp_path / "c"), tokenizer=tok, progress=False)
    assert m["counts"]["skipped"]["duplicate_text"] == 3
    assert sum(m["counts"]["written"].values()) == 40
    ids = [tuple(t) for s in reader.SPLITS for t in _token_ids(m["cache_dir"], s)]
    assert len(ids) == len(set(ids)) == 40


def _token_ids(cache_dir, split):
    ds = reader.make_dataset(cache_dir, split, batch_size=64, max_seq_length=64,
                             padding="dynamic")
    for f, _ in ds:
        for row, mask in zip(f["token_ids"].numpy(), f["padding_mask"].numpy()):
            yield row[mask.astype(bool)].tolist()


def test_strict_alone_does_not_make_a_cache_stale(tmp_path, tok):
    # A strict build that succeeds equals the plain build; a plain one with no skips too.
    src = make_csv(tmp_path / "d.csv", n=30)
    out = str(tmp_path / "c")
    first = cache.ensure_cache(src, out, tokenizer=tok, strict=True, progress=False)
    again = cache.ensure_cache(src, out, tokenizer=tok, rebuild=False, progress=False)
    assert again["reused"] and again["build_id"] == first["build_id"]
    assert cache.ensure_cache(src, out, tokenizer=tok, strict=True, rebuild=False,
                              progress=False)["reused"]
    # ... but --strict must not reuse a cache that skipped rows: that is its error.
    pathlib.Path(src).write_text(pathlib.Path(src).read_text() + "99,,neg\n")
    assert cache.ensure_cache(src, out, tokenizer=tok, progress=False)["counts"]["skipped"][
        "empty_text"] == 1
    with pytest.raises(reader.CacheError, match="strict"):
        cache.ensure_cache(src, out, tokenizer=tok, strict=True, rebuild=False, progress=False)
    with pytest.raises(DataError, match="line 32, column 'text': empty text"):
        cache.ensure_cache(src, out, tokenizer=tok, strict=True, progress=False)


def test_detected_format_delimiter_header_given_explicitly_reuse_the_cache(tmp_path, tok):
    src = tmp_path / "d.txt"
    src.write_text("text\tlabel\n" + "".join(f"row {i}\t{i % 2}\n" for i in range(30)))
    out = str(tmp_path / "c")
    first = cache.ensure_cache(str(src), out, tokenizer=tok, progress=False)
    for same in (dict(format="csv"), dict(delimiter="tab"), dict(delimiter="\t"),
                 dict(header=True), dict(format="csv", delimiter="\t", header=True)):
        again = cache.ensure_cache(str(src), out, tokenizer=tok, rebuild=False,
                                   progress=False, **same)
        assert again["build_id"] == first["build_id"], same
    with pytest.raises(reader.CacheError, match="delimiter"):
        cache.ensure_cache(str(src), out, tokenizer=tok, delimiter=";", rebuild=False,
                           progress=False)
