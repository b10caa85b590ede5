"""The PDNC reader, the plain CSV form and the context window."""

import csv

import pytest

from kt_pipeline import pdnc
from kt_pipeline.errors import ConfigError, DataError

NOVEL = ('The morning was grey and the house was quiet all day long. '
         '"Yes," said Elizabeth, "I will go." She went out into the garden at once. '
         '"Stay," cried Jane. The birds were singing loudly in the old trees. '
         'Nobody answered her for a very long while.')


def span(s):
    a = NOVEL.index(s)
    return [a, a + len(s)]


def make_book(root, name="TinyNovel"):
    d = root / name
    d.mkdir(parents=True)
    (d / "novel_text.txt").write_text(NOVEL)
    rows = [
        ["Q0", "Yes, I will go.", "['Yes,', 'I will go.']", str([span("Yes,"), span("I will go.")]), "Elizabeth"],
        ["Q1", "Stay,", "['Stay,']", str([span("Stay,")]), "Jane"],
    ]
    with open(d / "quotation_info.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["quoteID", "quoteText", "subQuotationList", "quoteByteSpans", "speaker"])
        w.writerows(rows)
    (d / "character_info.csv").write_text("Character ID,Main Name\n0,Elizabeth\n1,Jane\n")
    return root


def test_reader_quotes_contexts_and_narrative(tmp_path):
    root = make_book(tmp_path / "pdnc")
    ex = pdnc.read_pdnc(str(root), narrative_ratio=1.0, seed=0)
    quotes = [e for e in ex if e["is_narrative"] == "0"]
    narr = [e for e in ex if e["is_narrative"] == "1"]
    assert [q["text"] for q in quotes] == ["Yes, I will go.", "Stay,"]
    assert [q["speaker"] for q in quotes] == ["Elizabeth", "Jane"]
    # the narrative between the two spans (the attribution cue) starts the after-context
    assert quotes[0]["context_after"].startswith('" said Elizabeth, "')
    assert quotes[0]["context_before"].endswith('quiet all day long. "')
    assert len(narr) == 2 and all(e["speaker"] == pdnc.NARRATIVE for e in narr)
    for e in narr:  # sentences from outside every quote span
        assert "Yes" not in e["text"] and "Stay" not in e["text"] and len(e["text"].split()) >= 4
        assert e["text"] in pdnc.clean(NOVEL)


@pytest.mark.parametrize("ratio", [-1.0, float("nan"), float("inf")])
def test_a_bad_narrative_ratio_is_a_config_error(tmp_path, ratio):
    root = make_book(tmp_path / "pdnc")
    with pytest.raises(ConfigError, match="narrative_ratio"):
        pdnc.read_pdnc(str(root), narrative_ratio=ratio)


def test_narrative_chunks_never_overlap_spans():
    spans = [span("Yes,"), span("I will go."), span("Stay,")]
    for s, e in pdnc._narrative_chunks(NOVEL, spans, min_words=1):
        assert all(e <= a or s >= b for a, b in spans)


def test_unknown_book_and_missing_folder(tmp_path):
    root = make_book(tmp_path / "pdnc")
    with pytest.raises(DataError, match="Nope"):
        pdnc.read_pdnc(str(root), ["Nope"])
    with pytest.raises(DataError, match="not found"):
        pdnc.read_pdnc(str(tmp_path / "absent"))
    # A novel's own folder instead of the PDNC root: say so and give the fix.
    with pytest.raises(DataError,
                       match=r"single novel.s folder.*--books TinyNovel.*books=TinyNovel"):
        pdnc.read_pdnc(str(root / "TinyNovel"))


def test_window_words_chars_and_quote_only():
    ex = {"text": "Yes, I will go.", "context_before": "one two three four",
          "context_after": '" said Elizabeth, " She went'}
    assert pdnc.windowed_text(ex, 0) == "Yes, I will go."
    assert pdnc.windowed_text(ex, 2) == 'three four « Yes, I will go. » said Elizabeth,'
    assert pdnc.windowed_text(ex, 4, unit="chars") == 'four « Yes, I will go. » said'
    assert pdnc.windowed_text(ex, 0, quote_words=2) == "Yes, I ..."
    with pytest.raises(ConfigError):
        pdnc.windowed_text(ex, 2, unit="lines")
    with pytest.raises(ConfigError):
        pdnc.windowed_text(ex, -1)


def test_plain_csv_round_trip_and_cache_csv(tmp_path):
    root = make_book(tmp_path / "pdnc")
    ex = pdnc.read_pdnc(str(root), narrative_ratio=0.5)
    path = pdnc.write_examples_csv(ex, str(tmp_path / "ex.csv"))
    assert pdnc.read_examples_csv(path) == ex
    out = pdnc.write_cache_csv(ex, str(tmp_path / "cache.csv"), window=3)
    rows = list(csv.DictReader(open(out)))
    assert list(rows[0]) == list(pdnc.COLUMNS)
    assert rows[0]["text"].startswith("all day long. «") and "« Yes, I will go. »" in rows[0]["text"]


def test_plain_csv_errors(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("book,text,speaker\nB,hi,X\n")
    with pytest.raises(DataError, match="is_narrative"):
        pdnc.read_examples_csv(str(p))
    p.write_text("book,text,speaker,is_narrative\nB,hi,X,maybe\n")
    with pytest.raises(DataError, match="line 2"):
        pdnc.read_examples_csv(str(p))
    p.write_text("book,text,speaker,is_narrative\nB,hi,,0\nB,it rained,,1\n")
    with pytest.raises(DataError, match="speaker"):
        pdnc.read_examples_csv(str(p))


def test_speaker_shares():
    ex = [{"book": "B", "speaker": s, "is_narrative": "0"} for s in "aaab"]
    ex.append({"book": "B", "speaker": pdnc.NARRATIVE, "is_narrative": "1"})
    assert pdnc.speaker_shares(ex) == {"B": {"a": 0.75, "b": 0.25}}


@pytest.mark.shared_data
def test_real_pdnc_novel(shared_data):
    root = str(shared_data / "pdnc")
    assert "DaisyMiller" in pdnc.list_books(root)
    ex = pdnc.read_pdnc(root, ["DaisyMiller"], narrative_ratio=0.25)
    quotes = [e for e in ex if e["is_narrative"] == "0"]
    assert len(quotes) == 550  # the corpus README's count for this novel
    assert len(ex) - len(quotes) == round(0.25 * 550)
    assert len({q["speaker"] for q in quotes}) >= 10
    assert sum("said" in pdnc.windowed_text(q, 12) for q in quotes) > 100
