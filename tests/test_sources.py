"""sources.py: format/delimiter/header detection, encodings, and skip reasons."""

import collections
import csv
import io
import json
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kt_pipeline.errors import DataError
from kt_pipeline.sources import SKIP_REASONS, open_source, skip_error


def write(tmp_path, name, data: bytes) -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def read_all(src):
    recs = list(src.records())
    return recs, collections.Counter(r.skip for r in recs if r.skip)


def test_csv_bom_crlf_and_quoted_newlines(tmp_path):
    data = '\ufefftext,label\r\n"line one\r\nline two, with comma",pos\r\nplain,neg\r\nstray\rcr,neg\r\n'
    src = open_source(write(tmp_path, "a.csv", data.encode("utf-8")), "text", "label")
    assert (src.format, src.delimiter, src.has_header) == ("csv", ",", True)
    assert src.columns_found == ["text", "label"]  # BOM stripped from the first name
    recs, skips = read_all(src)
    assert not skips
    assert recs[0].text == "line one\r\nline two, with comma" and recs[0].label == "pos"
    assert (recs[0].line, recs[1].line) == (2, 4)
    assert recs[1].text == "plain" and recs[1].label == "neg"
    assert recs[2].text == "stray cr"  # a lone CR inside a line reads as a space


def test_tsv_detected_from_content_with_crlf_korean(tmp_path):
    data = "id\tdocument\tlabel\r\n1\t아 더빙.. 진짜 짜증나네요\t0\r\n2\t좋아요\t1\r\n"
    src = open_source(write(tmp_path, "ratings.txt", data.encode()), "document", "label")
    assert src.delimiter == "\t" and src.columns_found == ["id", "document", "label"]
    recs, skips = read_all(src)
    assert [r.text for r in recs] == ["아 더빙.. 진짜 짜증나네요", "좋아요"]
    assert [r.label for r in recs] == ["0", "1"] and not skips


def test_no_header_index_out_of_range_error_does_not_say_pass_no_header(tmp_path):
    path = write(tmp_path, "n.csv", b"a,1\nb,0\n")
    with pytest.raises(DataError) as e:
        open_source(path, "0", "3", header=False)
    assert "'3' not found; columns found: '0', '1'" in str(e.value)
    assert "pass --no-header" not in str(e.value)


def test_quote_slip_within_one_line_reads_as_before(tmp_path):
    # Only a quoted field that runs over lines is malformed; on one line csv's lenient
    # reading stands (the quotes go), as it did before quoting became strict.
    path = write(tmp_path, "q.tsv", b'text\tlabel\nok\t1\n"bad" quote\t0\n')
    recs, skips = read_all(open_source(path, "text", "label"))
    assert [(r.text, r.label) for r in recs] == [("ok", "1"), ("bad quote", "0")] and not skips


def test_delimiter_detected_from_the_header_after_blank_lines(tmp_path):
    data = b"\xef\xbb\xbf\r\n  \r\nid\tdocument\tlabel\r\n1\tgood, fine\t1\r\n"
    src = open_source(write(tmp_path, "r.txt", data), "document", "label")
    assert src.delimiter == "\t" and src.columns_found == ["id", "document", "label"]
    recs, skips = read_all(src)
    assert [(r.text, r.label) for r in recs] == [("good, fine", "1")] and not skips


def test_utf16_gzip_and_xlsx_inputs_are_named(tmp_path):
    import gzip
    import zipfile

    utf16 = "text\tlabel\r\n좋아요\t1\r\n".encode("utf-16")  # Excel's "Unicode Text"
    with pytest.raises(DataError, match=r"u.txt: .*UTF-16.*re-save it as UTF-8"):
        open_source(write(tmp_path, "u.txt", utf16), "text", "label")
    gz = gzip.compress(b"text,label\na,1\n")
    with pytest.raises(DataError, match=r"g.csv.gz: .*gzip.*decompress"):
        open_source(write(tmp_path, "g.csv.gz", gz), "text", "label")
    with zipfile.ZipFile(tmp_path / "w.xlsx", "w") as z:
        z.writestr("xl/workbook.xml", "<workbook/>")
    with pytest.raises(DataError, match=r"w.xlsx: .*ZIP.*CSV"):
        open_source(str(tmp_path / "w.xlsx"), "text", "label")


def test_cr_only_line_endings_are_named(tmp_path):
    # Old Mac / "CSV (Macintosh)" files end lines with CR alone: one line to an LF reader.
    path = write(tmp_path, "mac.csv", b"text,label\rgood film,1\rbad film,0\r")
    with pytest.raises(DataError, match=r"mac.csv: .*CR .*re-save"):
        open_source(path, "text", "label")


def test_no_header_by_index_and_overrides(tmp_path):
    path = write(tmp_path, "x.csv", b"good film;1\nbad film;0\n")
    src = open_source(path, "0", "1", delimiter=";")
    assert src.has_header is False and src.columns_found == ["0", "1"]
    recs, _ = read_all(src)
    assert [(r.text, r.label) for r in recs] == [("good film", "1"), ("bad film", "0")]
    # --header forces the first row to be names even when they look like data.
    src = open_source(path, "good film", "1", delimiter=";", header=True)
    assert [r.text for r in src.records()] == ["bad film"]


def test_missing_column_lists_columns_found(tmp_path):
    path = write(tmp_path, "a.tsv", b"label\tsentence\n1\tfine\n")
    with pytest.raises(DataError) as e:
        open_source(path, "text", "label")
    msg = str(e.value)
    assert "'text'" in msg and "'label', 'sentence'" in msg and "a.tsv" in msg


def test_skip_reasons_with_line_numbers(tmp_path):
    rows = [
        b"text,label,book",
        b"ok row,a,b1",
        b",a,b1",  # empty text
        b"   ,a,b1",  # whitespace-only text
        b"no label,,b1",  # missing label
        b"no group,a,",  # missing group
        b"bad \xff\xfe bytes,a,b1",  # undecodable (line 7)
        b"too,many,fields,here",  # malformed
        b"",  # blank line: not a row
        b"last,b,b2",
    ]
    src = open_source(write(tmp_path, "s.csv", b"\n".join(rows) + b"\n"), "text", "label", "book")
    recs, skips = read_all(src)
    assert skips == {"empty_text": 2, "missing_label": 1, "missing_group": 1,
                     "undecodable": 1, "malformed": 1}
    assert len(recs) == 8 and src.blank_lines == 1
    bad = next(r for r in recs if r.skip == "undecodable")
    assert bad.line == 7 and "line 7" in bad.detail
    assert [r.text for r in recs if not r.skip] == ["ok row", "last"]
    msg = str(skip_error(src, next(r for r in recs if r.skip == "missing_label")))
    assert "s.csv line 5" in msg and "'label'" in msg and "Fix:" in msg


def test_stray_quote_does_not_merge_rows_silently(tmp_path):
    # A TSV (written without quoting) whose text starts with a quote: csv reads a quoted
    # field up to the next quote, lines away. The rows it swallowed must not come out as
    # one good row holding them; the merged row is malformed, the others are read.
    data = 'text\tlabel\n"quoted start\t1\nmiddle row\t0\nend "row\t1\nlast\t0\n'
    src = open_source(write(tmp_path, "q.tsv", data.encode()), "text", "label")
    recs, skips = read_all(src)
    assert [(r.text, r.label) for r in recs if not r.skip] == [("last", "0")]
    bad = [r for r in recs if r.skip]
    assert skips == {"malformed": 1} and bad[0].line == 2 and "lines 2-4" in bad[0].detail
    assert "'\\t' expected" in bad[0].detail  # a TAB in csv's message is shown as \t
    # An unterminated quote at the end of the file is malformed too, not a label "1\n...".
    data = 'text,label\nfine,0\nopen,"1\nrest,0\n'
    recs, skips = read_all(open_source(write(tmp_path, "u.csv", data.encode()), "text", "label"))
    assert [r.text for r in recs if not r.skip] == ["fine"] and skips == {"malformed": 1}


def test_jsonl_rows_and_malformed_lines(tmp_path):
    lines = [
        json.dumps({"text": "first", "label": 1, "book": "b"}),
        "{not json",
        "[1, 2]",
        json.dumps({"text": "", "label": 0}),
        "",
        json.dumps({"text": "second", "label": 0, "book": None}),
    ]
    path = write(tmp_path, "d.jsonl", ("\n".join(lines) + "\n").encode())
    src = open_source(path, "text", "label", extra_cols=["book"])
    assert src.format == "jsonl" and src.columns_found == ["text", "label", "book"]
    recs, skips = read_all(src)
    assert skips == {"malformed": 2, "empty_text": 1}
    ok = [r for r in recs if not r.skip]
    assert [(r.text, r.label, r.extras) for r in ok] == [("first", "1", ("b",)), ("second", "0", ("",))]


def test_malformed_fix_fits_the_format(tmp_path):
    path = write(tmp_path, "m.jsonl", b'{"text": "a", "label": 1}\n{"text": "b", "label"\n')
    src = open_source(path, "text", "label")
    msg = str(skip_error(src, [r for r in src.records() if r.skip][0]))
    assert "m.jsonl line 2" in msg and "JSON object" in msg and "quote fields" not in msg
    path = write(tmp_path, "m.csv", b"text,label\na,1,extra\n")
    src = open_source(path, "text", "label")
    msg = str(skip_error(src, next(src.records())))
    assert "m.csv line 2" in msg and "quote fields" in msg


def test_jsonl_key_absent_from_the_first_object_is_a_missing_value(tmp_path):
    # JSON lines have no header: a key the first object leaves out is found in later ones.
    lines = [{"text": "no label yet"}, {"text": "b", "label": 1},
             {"text": "c", "label": 0, "book": "x"}]
    path = write(tmp_path, "k.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode())
    src = open_source(path, "text", "label", "book")
    assert src.columns_found == ["text", "label", "book"]
    recs, skips = read_all(src)
    assert skips == {"missing_label": 1, "missing_group": 1}
    assert [(r.text, r.label, r.group) for r in recs if not r.skip] == [("c", "0", "x")]
    with pytest.raises(DataError, match="'speaker' not found; columns found: 'text', 'label'"):
        open_source(path, "text", "speaker")


def test_json_array_file_error_says_one_object_per_line(tmp_path):
    data = b'[{"text": "a", "label": 1},\n {"text": "b", "label": 0},\n {"text": "c"}]\n'
    with pytest.raises(DataError) as e:
        open_source(write(tmp_path, "d.json", data), "text", "label")
    assert "d.json" in str(e.value) and "one JSON object per line" in str(e.value)
    assert "empty" not in str(e.value)
    with pytest.raises(DataError, match="empty"):
        open_source(write(tmp_path, "e.jsonl", b""), "text", "label")


def test_jsonl_too_deeply_nested_line_is_malformed(tmp_path):
    deep = b"[" * 100_000 + b"]" * 100_000
    for first in (b"", b'{"text": "first", "label": 1}\n'):  # the deep line opens the file, or not
        data = first + b'{"text": ' + deep + b', "label": 1}\n{"text": "ok", "label": 0}\n'
        recs, skips = read_all(open_source(write(tmp_path, "d.jsonl", data), "text", "label"))
        assert skips == {"malformed": 1} and recs[-1].text == "ok"
        assert "line" in next(r for r in recs if r.skip).detail


def test_shared_data_files_detect_columns(shared_data):
    for path, text, n in [("nsmc/ratings_train.txt", "document", 10000),
                          ("sst2/train.tsv", "sentence", 67349)]:
        src = open_source(str(shared_data / path), text, "label")
        assert src.delimiter == "\t" and src.has_header
        count = sum(1 for r in src.records() if not r.skip)
        assert count == n


# -- property-based: malformed CSV never crashes, every row is accounted for -----------

CELL = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
KINDS = ("ok", "empty_text", "missing_label", "undecodable", "malformed", "blank")


@st.composite
def csv_rows(draw):
    """Rows of known kind, written with real CSV quoting; returns (bytes, expected)."""
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=25))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    w.writerow(["text", "label", "extra"])
    out = [buf.getvalue().encode()]
    expected = collections.Counter()
    for kind in kinds:
        buf.seek(0), buf.truncate()
        text = draw(CELL).strip()
        if not any(not c.isspace() and unicodedata.category(c) not in ("Cc", "Cf") for c in text):
            text += "t"  # only invisible characters (e.g. ESC, U+200B) is an empty text
        label = draw(st.sampled_from(["a", "b", "1", "x y"]))
        if kind == "ok":
            w.writerow([text, label, draw(CELL)])
        elif kind == "empty_text":
            w.writerow([draw(st.sampled_from(["", " ", "\t "])), label, "e"])
        elif kind == "missing_label":
            w.writerow([text, draw(st.sampled_from(["", "  "])), "e"])
        elif kind == "malformed":
            w.writerow([text, label, "e", "extra field"][: draw(st.sampled_from([2, 4]))])
        elif kind == "undecodable":
            w.writerow([text + "\udcff", label, "e"])
        else:
            buf.write(draw(st.sampled_from(["\n", "\r\n", "  \n"])))
        line = buf.getvalue().encode("utf-8", errors="surrogateescape")
        out.append(line)
        if kind != "blank":
            expected[kind] += 1
    return b"".join(out), expected


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=csv_rows(), bom=st.booleans())
def test_property_every_row_counted_by_reason(tmp_path_factory, case, bom):
    data, expected = case
    path = write(tmp_path_factory.mktemp("p"), "p.csv", (b"\xef\xbb\xbf" if bom else b"") + data)
    recs, skips = read_all(open_source(path, "text", "label"))
    assert sum(1 for r in recs if not r.skip) == expected["ok"]
    assert skips == {k: v for k, v in expected.items() if k != "ok"}
    assert set(skips) <= set(SKIP_REASONS)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=300), header=st.sampled_from([b"text,label\n", b"text\tlabel\r\n"]))
def test_property_garbage_never_crashes(tmp_path_factory, body, header):
    path = write(tmp_path_factory.mktemp("g"), "g.csv", header + body)
    try:
        src = open_source(path, "text", "label")
    except DataError:
        return  # e.g. the sniffed delimiter changed: a clear error, not a traceback
    recs = list(src.records())
    assert [r.index for r in recs] == list(range(len(recs)))
    for r in recs:
        assert (r.skip in SKIP_REASONS) if r.skip else (r.text.strip() and r.label)


# -- the plain-line fast path must equal the csv path ---------------------------------


def _csv_only(src):
    """Records as the csv module alone would give them (fast path switched off)."""
    import kt_pipeline.sources as sources

    orig = sources._plain_block
    sources._plain_block = lambda block, delimiter: None
    try:
        return list(src.records())
    finally:
        sources._plain_block = orig


PLAIN_CELL = st.text(st.sampled_from(list('ab é가,\t;"\r\x00\x01¤')), max_size=8)  # ¤: a bad byte


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(PLAIN_CELL, min_size=1, max_size=4), max_size=30),
       delim=st.sampled_from([",", "\t"]), end=st.sampled_from(["\n", "\r\n"]),
       bom=st.booleans(), tail=st.booleans(), big=st.booleans())
def test_property_fast_path_equals_csv(tmp_path_factory, rows, delim, end, bom, tail, big,
                                       monkeypatch):
    import kt_pipeline.sources as sources

    if big:  # blocks of a few bytes: rows straddle block boundaries
        monkeypatch.setattr(sources, "_PLAIN_CHUNK", 7)
    lines = [f"text{delim}label"] + [delim.join(r) for r in rows]
    data = end.join(lines) + (end if tail else "")
    raw = data.encode("utf-8").replace("¤".encode("utf-8"), b"\xff")
    path = write(tmp_path_factory.mktemp("f"), "f.csv", (b"\xef\xbb\xbf" if bom else b"") + raw)
    src = open_source(path, "text", "label", delimiter=delim, header=True)
    fast = list(src.records())
    blank_fast = src.blank_lines
    assert fast == _csv_only(src)
    assert blank_fast == src.blank_lines


def test_fast_path_on_shared_data_equals_csv(shared_data):
    for path, text, label in ((shared_data / "sst2" / "train.tsv", "sentence", "label"),
                              (shared_data / "nsmc" / "ratings_train.txt", "document", "label")):
        src = open_source(str(path), text, label)
        assert list(src.records()) == _csv_only(src)
