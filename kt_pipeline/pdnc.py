"""Speaker-clustering examples: the PDNC reader, the plain CSV form, and the text window.

An *example* is a dict with ``book``, ``text`` (the quote, or a narrative passage),
``speaker`` (local to the book; ``NARRATIVE`` for narrative rows), ``is_narrative``
(``"1"``/``"0"``) and optionally ``context_before`` / ``context_after`` (the novel text
around it). Two sources produce examples:

- :func:`read_pdnc`: the Project Dialogism Novel Corpus folder layout (one folder per
  novel with ``quotation_info.csv``, ``character_info.csv``, ``novel_text.txt``). A quote
  is its sub-quotations joined; its ``context_after`` starts with the narrative
  *between* its spans (the ``said Elizabeth`` of ``"Yes," said Elizabeth, "I will."``),
  then the text after its last span. Narrative examples are sentences taken from the
  novel text outside every ``quoteByteSpans`` interval.
- :func:`read_examples_csv`: the plain CSV form with columns ``book, text, speaker,
  is_narrative`` and optional ``context_before, context_after``.

:func:`windowed_text` turns an example into the model's input: ``window`` words (or
characters) of context on each side with the quote marked ``« ... »``; ``window=0``
gives the quote alone. :func:`write_cache_csv` writes the CSV the TFRecord cache is
built from (``book`` = group, ``speaker`` = label, ``is_narrative`` = extra column).

Example:

>>> from kt_pipeline import pdnc
>>> ex = {"book": "B", "text": "Yes, I will.", "speaker": "Eliza", "is_narrative": "0",
...       "context_before": "She turned.", "context_after": "said Eliza, and left."}
>>> pdnc.windowed_text(ex, window=2)
'She turned. « Yes, I will. » said Eliza,'
>>> pdnc.windowed_text(ex, window=0)
'Yes, I will.'
"""

from __future__ import annotations

import ast
import csv
import io
import posixpath
import re
from typing import Iterable, Optional, Sequence

import numpy as np

from kt_pipeline.errors import ConfigError, DataError

NARRATIVE = "<narrative>"
COLUMNS = ("book", "text", "speaker", "is_narrative")
CONTEXT_COLUMNS = ("context_before", "context_after")
QUOTE_FILE, CHARACTER_FILE, TEXT_FILE = "quotation_info.csv", "character_info.csv", "novel_text.txt"
UNITS = ("words", "chars")
MARKERS = ("«", "»")
CONTEXT_CHARS = 1500  # stored context per side; windows are cut from it
_SENTENCE = re.compile(r"(?<=[.!?;])\s+")
_SPACE = re.compile(r"\s+")
_QUOTE_MARKS = " \"'`\u201c\u201d\u2018\u2019"


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def _read(path: str) -> str:
    with _gfile().GFile(path, "rb") as f:
        return f.read().decode("utf-8", errors="replace")


def write_text(path: str, text: str) -> None:
    """Write ``text`` atomically (temp file + rename); leave an identical file untouched."""
    import secrets

    gf = _gfile()
    if gf.exists(path) and _read(path) == text:
        return
    tmp = f"{path}.tmp-{secrets.token_hex(4)}"
    with gf.GFile(tmp, "w") as f:
        f.write(text)
    gf.rename(tmp, path, overwrite=True)


def clean(text: str) -> str:
    """Collapse whitespace (newlines included) to single spaces."""
    return _SPACE.sub(" ", text or "").strip()


def list_books(root: str) -> list:
    """Folder names under ``root`` that hold a PDNC novel, sorted."""
    gf = _gfile()
    if not gf.isdir(root):
        raise DataError(f"PDNC folder not found: {root} (expected one folder per novel)")
    books = sorted(n.rstrip("/") for n in gf.listdir(root)
                   if gf.exists(posixpath.join(root, n.rstrip("/"), QUOTE_FILE)))
    if not books:
        if gf.exists(posixpath.join(root, QUOTE_FILE)):  # one novel's folder, not the root
            parent, name = posixpath.split(root.rstrip("/"))
            raise DataError(
                f"{root} is a single novel's folder; pass the folder that holds the novel "
                f"folders and pick novels by name: {parent or '.'} with --books {name} "
                f"(cluster prepare) or --set books={name} (cluster train)")
        raise DataError(f"{root}: no novel folders with {QUOTE_FILE} found")
    return books


def _spans(value: str, path: str, row: int) -> list:
    try:
        spans = ast.literal_eval(value)
        spans = [(int(a), int(b)) for a, b in spans]
    except (ValueError, SyntaxError, TypeError):
        raise DataError(f"{path} row {row}, column 'quoteByteSpans': {value!r} is not a list "
                        "of [start, end] pairs; fix the row") from None
    if not spans:
        raise DataError(f"{path} row {row}, column 'quoteByteSpans': empty; fix the row")
    return sorted(spans)


def _join_subquotes(value: str, fallback: str) -> str:
    try:
        parts = ast.literal_eval(value)
        if isinstance(parts, (list, tuple)) and parts:
            return clean(" ".join(str(p) for p in parts))
    except (ValueError, SyntaxError):
        pass
    return clean(fallback)


def _narrative_chunks(text: str, spans: Sequence, min_words: int = 4, max_chars: int = 400):
    """``(start, end)`` of sentence-like chunks outside every quote span."""
    covered = np.zeros(len(text) + 1, np.int32)
    for a, b in spans:
        covered[max(0, a)] += 1
        covered[min(len(text), b)] -= 1
    inside = np.cumsum(covered)[: len(text)] > 0
    # Gap boundaries: padding both ends as "inside" makes them come in (start, end) pairs.
    edges = np.flatnonzero(np.diff(np.r_[1, inside.astype(np.int8), 1]))
    out = []
    for start, end in zip(edges[::2], edges[1::2]):
        s = int(start)
        for piece in _SENTENCE.split(text[start:end]):
            s = text.find(piece, s)
            body = clean(piece).strip("\"'`- ")
            if len(body.split()) >= min_words and len(body) <= max_chars and '"' not in body:
                out.append((s, s + len(piece)))
            s += len(piece)
    return out


def read_pdnc_book(root: str, book: str, narrative_ratio: float = 0.25, seed: int = 0,
                   context_chars: int = CONTEXT_CHARS) -> list:
    """Examples (quotes, then sampled narrative passages) of one PDNC novel folder."""
    folder = posixpath.join(root, book)
    qpath = posixpath.join(folder, QUOTE_FILE)
    text = _read(posixpath.join(folder, TEXT_FILE))
    rows = list(csv.DictReader(io.StringIO(_read(qpath))))
    need = ("quoteText", "quoteByteSpans", "speaker")
    if rows and any(c not in rows[0] for c in need):
        raise DataError(f"{qpath}: expected columns {', '.join(need)}; found {', '.join(rows[0])}")
    examples, all_spans = [], []
    for i, r in enumerate(rows, start=2):
        spans = _spans(r["quoteByteSpans"], qpath, i)
        all_spans.extend(spans)
        speaker = clean(r["speaker"])
        if not speaker:
            continue
        between = " ".join(text[b:a2] for (_, b), (a2, _) in zip(spans, spans[1:]))
        first, last = spans[0][0], spans[-1][1]
        examples.append({
            "book": book,
            "text": _join_subquotes(r.get("subQuotationList", ""), r["quoteText"]),
            "speaker": speaker,
            "is_narrative": "0",
            "context_before": clean(text[max(0, first - context_chars):first]),
            "context_after": clean(between + " " + text[last:last + context_chars]),
        })
    n_narr = int(round(narrative_ratio * len(examples)))
    if n_narr:
        chunks = _narrative_chunks(text, all_spans)
        rng = np.random.default_rng([seed, len(text)])
        for k in sorted(rng.choice(len(chunks), size=min(n_narr, len(chunks)), replace=False)):
            s, e = chunks[k]
            examples.append({
                "book": book, "text": clean(text[s:e]), "speaker": NARRATIVE, "is_narrative": "1",
                "context_before": clean(text[max(0, s - context_chars):s]),
                "context_after": clean(text[e:e + context_chars]),
            })
    return examples


def read_pdnc(root: str, books: Optional[Iterable[str]] = None, narrative_ratio: float = 0.25,
              seed: int = 0) -> list:
    """Examples of the chosen novels (default: all) under a PDNC folder."""
    if not (isinstance(narrative_ratio, (int, float)) and 0 <= narrative_ratio < float("inf")):
        raise ConfigError(f"narrative_ratio={narrative_ratio!r}: expected a number >= 0 "
                          "(narrative examples per quote, e.g. 0.25)")
    available = list_books(root)
    chosen = list(books) if books else available
    unknown = [b for b in chosen if b not in available]
    if unknown:
        raise DataError(f"{root}: no novel folder(s) {', '.join(unknown)}; available: "
                        f"{', '.join(available)}")
    out = []
    for b in chosen:
        out.extend(read_pdnc_book(root, b, narrative_ratio, seed))
    return out


def read_examples_csv(path: str) -> list:
    """Examples from the plain CSV form (``book, text, speaker, is_narrative[, context_*]``)."""
    if not _gfile().exists(path):
        raise DataError(f"examples file not found: {path}")
    reader = csv.DictReader(io.StringIO(_read(path)))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; the speaker CSV needs "
                        f"{', '.join(COLUMNS)} (and optionally {', '.join(CONTEXT_COLUMNS)})")
    out = []
    for line, r in enumerate(reader, start=2):
        flag = str(r["is_narrative"]).strip().lower()
        if flag not in ("0", "1", "true", "false"):
            raise DataError(f"{path} line {line}, column 'is_narrative': {r['is_narrative']!r}; "
                            "expected 0/1 or true/false")
        narrative = flag in ("1", "true")
        speaker = clean(r["speaker"]) or (NARRATIVE if narrative else "")
        if not speaker:
            raise DataError(f"{path} line {line}, column 'speaker': empty for a quote; fill it in "
                            "or set is_narrative to 1")
        out.append({"book": clean(r["book"]), "text": clean(r["text"]),
                    "speaker": NARRATIVE if narrative else speaker,
                    "is_narrative": "1" if narrative else "0",
                    **{c: clean(r.get(c) or "") for c in CONTEXT_COLUMNS}})
    return out


def write_examples_csv(examples: Sequence[dict], path: str) -> str:
    """Write examples in the plain CSV form (with context columns)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS + CONTEXT_COLUMNS), extrasaction="ignore")
    w.writeheader()
    for ex in examples:
        w.writerow({c: ex.get(c, "") for c in COLUMNS + CONTEXT_COLUMNS})
    write_text(path, buf.getvalue())
    return path


def windowed_text(example: dict, window: int = 0, unit: str = "words",
                  markers: Sequence[str] = MARKERS, quote_words: Optional[int] = None) -> str:
    """The model input: ``window`` words/chars of context each side, quote marked.

    ``quote_words`` keeps only the first N words of a longer quote (with ``...``), so
    the context after it survives truncation to ``max_seq_length``.
    """
    if unit not in UNITS:
        raise ConfigError(f"window_unit={unit!r}: expected one of {', '.join(UNITS)}")
    if int(window) < 0:
        raise ConfigError(f"window={window}: expected >= 0 (0 = the quote alone)")
    text = example["text"]
    if quote_words and len(text.split()) > int(quote_words):
        text = " ".join(text.split()[: int(quote_words)]) + " ..."
    if not window:
        return text
    # The quote's own quotation marks are replaced by the markers.
    before = (example.get("context_before") or "").rstrip(_QUOTE_MARKS)
    after = (example.get("context_after") or "").lstrip(_QUOTE_MARKS)
    if unit == "words":
        before = " ".join(before.split()[-window:])
        after = " ".join(after.split()[:window])
    else:
        before, after = before[-window:], after[:window]
    return clean(f"{before} {markers[0]} {text} {markers[1]} {after}")


def write_cache_csv(examples: Sequence[dict], path: str, window: int = 0,
                    unit: str = "words", quote_words: Optional[int] = None) -> str:
    """Write ``book, text, speaker, is_narrative`` with the windowed text (the cache input)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for ex in examples:
        w.writerow([ex["book"], windowed_text(ex, window, unit, quote_words=quote_words),
                    ex["speaker"], ex["is_narrative"]])
    write_text(path, buf.getvalue())
    return path


def speaker_shares(examples: Sequence[dict]) -> dict:
    """``{book: {speaker: share of the book's quotes}}`` (narrative rows excluded)."""
    out: dict = {}
    for ex in examples:
        if ex["is_narrative"] == "1":
            continue
        out.setdefault(ex["book"], {}).setdefault(ex["speaker"], 0)
        out[ex["book"]][ex["speaker"]] += 1
    return {b: {s: c / sum(d.values()) for s, c in sorted(d.items(), key=lambda kv: -kv[1])}
            for b, d in out.items()}
