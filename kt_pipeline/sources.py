"""Read CSV / TSV / JSONL rows as a stream, with a reason for every row that is skipped.

Handles UTF-8 with or without a BOM, LF or CRLF line endings, quoted fields with
embedded newlines, and any `tf.io.gfile` path (local, ``gs://``, ``ram://``). Format,
delimiter and header are detected and can be overridden. Columns are chosen by name
(or, with ``header=False``, by 0-based index: ``"0"``, ``"1"``, ...).

Every row the parser reads comes out as one :class:`Record`; a record that cannot be
used carries ``skip`` (one of :data:`SKIP_REASONS`) and a ``detail``. Blank lines are
not rows: they are counted in ``Source.blank_lines``.

Example:

>>> from kt_pipeline.sources import open_source
>>> src = open_source("kt_pipeline/data/sample_reviews.csv", "text", "label")  # doctest: +SKIP
>>> src.format, src.delimiter, src.columns_found                               # doctest: +SKIP
('csv', ',', ['text', 'label', 'source'])
>>> rec = next(src.records())                                                  # doctest: +SKIP
>>> rec.line, rec.label, rec.skip                                              # doctest: +SKIP
(2, 'negative', None)
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import hashlib
import json
import os
import sys
import unicodedata
from typing import Iterator, Optional, Sequence

from kt_pipeline.errors import DataError

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

# Why a row was skipped; the order is the order checks run (and summaries print).
SKIP_REASONS = (
    "undecodable",  # bytes that are not UTF-8
    "malformed",  # wrong field count, broken quoting, invalid JSON, not a JSON object
    "empty_text",  # text missing, empty, or only whitespace/control/format characters
    "missing_label",  # label column empty / missing
    "missing_group",  # group column empty / missing (when a group column is set)
    "label_not_in_set",  # label outside --labels or the inferred set (see cache.py)
    "duplicate_text",  # an earlier row's text, up to whitespace (see cache.py)
)

# How to fix a row skipped for each reason (used in --strict errors).
FIXES = {
    "undecodable": "re-save the file as UTF-8",
    "malformed": "quote fields that contain the delimiter, quotes or newlines "
    "(doubling inner quotes), or check --delimiter/--format",
    "empty_text": "fill in the text or delete the row",
    "missing_label": "fill in the label or delete the row",
    "missing_group": "fill in the group or delete the row",
    "label_not_in_set": "fix the label, or list it in --labels",
    "duplicate_text": "delete the repeated row",
}

# A malformed JSON line is not a quoting problem.
JSONL_FIXES = {**FIXES, "malformed": "write each line as one JSON object (a line break inside "
               "a string as \\n), or check --format"}


def fix_for(reason: str, fmt: str) -> str:
    """How to fix a row of format `fmt` skipped for `reason`."""
    return (JSONL_FIXES if fmt == "jsonl" else FIXES)[reason]


FORMATS = ("csv", "tsv", "jsonl")
_CHUNK = 1 << 20
_PLAIN_CHUNK = 1 << 17  # small: a block's decoded lines are held at once
_SNIFF_DELIMITERS = (",", "\t", ";", "|")


@dataclasses.dataclass
class Record:
    """One row read from the source (``skip`` is None when it is usable)."""

    index: int  # 0-based ordinal among rows (header and blank lines excluded)
    line: int  # 1-based physical line where the row starts
    text: Optional[str] = None
    label: Optional[str] = None
    group: Optional[str] = None
    extras: tuple = ()
    skip: Optional[str] = None
    column: Optional[str] = None  # the column at fault, when there is one
    detail: str = ""


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def file_sha256(path: str) -> str:
    """sha256 of a file read through tf.io.gfile (streamed)."""
    h = hashlib.sha256()
    with _gfile().GFile(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                return h.hexdigest()
            h.update(chunk)


def _byte_lines(path: str, counter=None, on_chunk=None) -> Iterator[bytes]:
    """Physical lines of a file as bytes, each with its line ending (split on LF).

    ``counter.update(n)`` gets the bytes read; ``on_chunk(chunk)`` gets the bytes.
    """
    with _gfile().GFile(path, "rb") as f:
        yield from _lines_of(f, b"", counter, on_chunk)


def _read(f, counter, on_chunk, size: int = _CHUNK) -> bytes:
    chunk = f.read(size)
    if counter is not None:
        counter.update(len(chunk))
    if on_chunk is not None:
        on_chunk(chunk)
    return chunk


def _lines_of(f, rest: bytes, counter=None, on_chunk=None) -> Iterator[bytes]:
    """Lines of `rest` followed by the rest of open file `f` (see :func:`_byte_lines`)."""
    chunk = b""
    while True:
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        for p in parts:
            yield p + b"\n"
        chunk = _read(f, counter, on_chunk)
        if not chunk:
            break
    if rest:
        yield rest


def _plain_block(block: bytes, delimiter: str) -> Optional[list]:
    """The lines of `block` (complete lines, UTF-8) when no CSV quoting, CR or NUL can
    occur in them, so splitting on the delimiter is exactly what ``csv`` would do (a
    quote that does not start a field is an ordinary character to ``csv``)."""
    crlf = b"\r" in block
    if (crlf and block.count(b"\r") != block.count(b"\r\n")) or b"\x00" in block:
        return None  # a lone CR (csv would end a row there) or NUL
    if b'"' in block and (block.startswith(b'"') or b'\n"' in block
                          or (delimiter + '"').encode("utf-8") in block):
        return None
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = (text.replace("\r\n", "\n") if crlf else text).split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


class _DecodedLines:
    """Iterate str lines; remember which lines held invalid UTF-8 (decoded with U+FFFD)."""

    def __init__(self, byte_lines: Iterator[bytes]):
        self._it = byte_lines
        self.num = 0
        self.bad: dict[int, str] = {}
        self.last = ""  # the line returned last

    def __iter__(self):
        return self

    def __next__(self) -> str:
        raw = next(self._it)
        self.num += 1
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.bad[self.num] = f"invalid UTF-8 byte {raw[e.start]:#04x} at byte {e.start}"
            s = raw.decode("utf-8", errors="replace")
        if self.num == 1 and s.startswith("\ufeff"):
            s = s[1:]
        if "\r" in s:  # a stray CR inside a line would end a CSV row: read it as a space
            end = "\r\n" if s.endswith("\r\n") else ("\r" if s.endswith("\r") else "")
            s = s[: len(s) - len(end)].replace("\r", " ") + end
        self.last = s
        return s

    def bad_in(self, first: int, last: int) -> Optional[tuple[int, str]]:
        """The first invalid line in [first, last], forgetting older ones."""
        found = None
        for n in sorted(self.bad):
            if n > last:
                break
            if n >= first and found is None:
                found = (n, self.bad[n])
            del self.bad[n]
        return found


def _is_blank(fields: Sequence[str]) -> bool:
    return not fields or (len(fields) == 1 and not fields[0].strip())


def _value(v) -> Optional[str]:
    """A JSON value as a string (None stays None)."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return json.dumps(v, ensure_ascii=False, sort_keys=True)


def _first_bytes(path: str, n: int = 65536) -> bytes:
    with _gfile().GFile(path, "rb") as f:
        return f.read(n)


def detect_format(path: str, head: bytes) -> str:
    """jsonl for .jsonl/.ndjson/.json or a file starting with ``{``; else csv/tsv."""
    ext = os.path.splitext(path)[1].lower()
    if ext in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if head.lstrip(codecs.BOM_UTF8).lstrip().startswith(b"{"):
        return "jsonl"
    return "tsv" if ext == ".tsv" else "csv"


def detect_delimiter(first_line: str, fmt: str) -> str:
    """The most frequent of , TAB ; | in the header line; the format's default on a tie."""
    default = "\t" if fmt == "tsv" else ","
    counts = {d: first_line.count(d) for d in _SNIFF_DELIMITERS}
    best = max(counts.values())
    if best == 0 or counts[default] == best:
        return default
    return max(_SNIFF_DELIMITERS, key=lambda d: counts[d])


def is_blank_text(text: str) -> bool:
    """True when `text` has nothing a tokenizer keeps: only whitespace, control (Cc) and
    format (Cf, e.g. zero-width space U+200B, BOM) characters, which WordPiece drops, so
    the row would be stored as just [CLS][SEP]."""
    stripped = text.strip()
    if not stripped:
        return True
    if stripped.isprintable():  # the common case, at C speed: a visible character
        return False
    return all(c.isspace() or unicodedata.category(c) in ("Cc", "Cf") for c in stripped)


class Source:
    """An opened input file: detected settings plus a streaming :meth:`records`.

    Build with :func:`open_source`, which checks that the requested columns exist.
    """

    def __init__(self, path, fmt, delimiter, has_header, columns_found, cols):
        self.path = path
        self.format = fmt
        self.delimiter = delimiter
        self.has_header = has_header
        self.columns_found = columns_found
        self.text_col, self.label_col, self.group_col, self.extra_cols = cols
        self.blank_lines = 0

    def describe(self) -> dict:
        """The manifest's ``source`` entry (without sha256)."""
        return {
            "path": self.path,
            "format": self.format,
            "delimiter": self.delimiter,
            "header": self.has_header,
            "columns_found": list(self.columns_found),
        }

    # -- reading -------------------------------------------------------------------

    def records(self, counter=None, on_chunk=None) -> Iterator[Record]:
        """Yield one :class:`Record` per row, in file order.

        ``counter.update(n)`` gets the number of bytes read, ``on_chunk(data)`` the raw
        bytes themselves (e.g. ``hashlib.sha256().update`` to hash what was parsed).
        """
        self.blank_lines = 0
        if self.format == "jsonl":
            yield from self._json_records(_DecodedLines(_byte_lines(self.path, counter, on_chunk)))
        else:
            yield from self._delimited_records(counter, on_chunk)

    def _check(self, rec: Record) -> Record:
        """Fill in ``skip`` for empty text / label / group."""
        if rec.skip:
            return rec
        if rec.text is None or is_blank_text(rec.text):
            rec.skip, rec.column = "empty_text", self.text_col
            rec.detail = (
                "no text" if rec.text is None
                else "the text is empty" if not rec.text.strip()
                else "the text holds only invisible (control/format) characters"
            )
        elif self.label_col is not None and not (rec.label or "").strip():
            rec.skip, rec.column, rec.detail = "missing_label", self.label_col, "no label"
        elif self.group_col is not None and not (rec.group or "").strip():
            rec.skip, rec.column, rec.detail = "missing_group", self.group_col, "no group"
        if rec.label is not None:
            rec.label = rec.label.strip()
        if rec.group is not None:
            rec.group = rec.group.strip()
        return rec

    def _delimited_rows(self, counter=None, on_chunk=None):
        """``(fields, error, first_line, last_line, bad)`` per parsed row (blank rows too).

        Blocks of plain lines (no quotes, CR or NUL; valid UTF-8) are split on the
        delimiter directly; from the first block that is not plain on, rows come from
        ``csv`` (quoted fields may span lines). ``bad`` is (line, why) for invalid UTF-8.
        """
        d = self.delimiter
        line_no = 0
        with _gfile().GFile(self.path, "rb") as f:
            rest, head = b"", True
            while True:
                chunk = _read(f, counter, on_chunk, _PLAIN_CHUNK)
                data = rest + chunk
                cut = len(data) if not chunk else data.rfind(b"\n") + 1
                block, rest = data[:cut], data[cut:]
                if head and block.startswith(codecs.BOM_UTF8):
                    block, head = block[len(codecs.BOM_UTF8):], False
                elif block:
                    head = False
                lines = _plain_block(block, d)
                if lines is None:
                    break
                for ln in lines:
                    line_no += 1
                    yield ln.split(d), None, line_no, line_no, None
                if not chunk:
                    return
            yield from self._csv_rows(_lines_of(f, block + rest, counter, on_chunk), line_no)

    def _csv_rows(self, byte_lines, offset: int = 0):
        """Rows parsed by ``csv`` from `byte_lines` (line numbers start after `offset`)."""
        lines = _DecodedLines(byte_lines)
        lines.num = offset
        # strict: a quoted field that runs on over lines and then breaks (text after its
        # closing quote, or still open at the end of the file) is a malformed row, not one
        # text that swallows the rows it ran over
        reader = csv.reader(lines, delimiter=self.delimiter, quotechar='"', doublequote=True,
                            strict=True)
        prev = offset
        while True:
            try:
                fields = next(reader)
                err = None
            except StopIteration:
                return
            except csv.Error as e:  # e.g. a field over the size limit
                fields, err = None, str(e)
            first, last = prev + 1, offset + reader.line_num
            prev = last
            if err is not None and first == last:  # a quote slip within one line, e.g.
                try:  # '"hi" there': read the line as lenient csv does ('hi there')
                    fields, err = next(csv.reader([lines.last], delimiter=self.delimiter)), None
                except (csv.Error, StopIteration):
                    pass
            yield fields, err, first, last, lines.bad_in(first, last)

    def _delimited_records(self, counter=None, on_chunk=None) -> Iterator[Record]:
        names = None if self.has_header else self.columns_found
        idx = None
        index = 0
        n_names = len(self.columns_found)
        for fields, err, first, last, bad in self._delimited_rows(counter, on_chunk):
            if fields is not None and _is_blank(fields):
                self.blank_lines += 1
                continue
            if names is None:  # the header row
                names = self.columns_found
                continue
            if idx is None:
                idx = [names.index(c) if c is not None else None for c in self._wanted()]
            rec = Record(index=index, line=first)
            index += 1
            if bad:
                rec.skip, rec.detail = "undecodable", f"line {bad[0]}: {bad[1]}"
            elif err is not None:  # csv's message, with a TAB delimiter written as \t
                span = f"line {first}" if first == last else f"lines {first}-{last}"
                rec.skip, rec.detail = "malformed", f"{span}: {err}".replace("\t", "\\t")
            elif len(fields) != n_names:
                span = f"line {first}" if first == last else f"lines {first}-{last}"
                rec.skip = "malformed"
                rec.detail = f"{span}: {len(fields)} fields, expected {n_names}"
            else:
                vals = [fields[i] if i is not None else None for i in idx]
                rec.text, rec.label, rec.group = vals[0], vals[1], vals[2]
                rec.extras = tuple(vals[3:])
            yield self._check(rec)

    def _wanted(self) -> list:
        return [self.text_col, self.label_col, self.group_col, *self.extra_cols]

    def _json_records(self, lines: _DecodedLines) -> Iterator[Record]:
        index = 0
        for line in lines:
            n = lines.num
            bad = lines.bad_in(n, n)
            if not line.strip():
                self.blank_lines += 1
                continue
            rec = Record(index=index, line=n)
            index += 1
            if bad:
                rec.skip, rec.detail = "undecodable", f"line {n}: {bad[1]}"
                yield rec
                continue
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError) as e:  # RecursionError: nested too deeply
                obj, err = None, f"invalid JSON: {e}"
            else:
                err = None if isinstance(obj, dict) else "not a JSON object"
            if err:
                rec.skip, rec.detail = "malformed", f"line {n}: {err}"
                yield rec
                continue
            vals = [_value(obj.get(c)) if c is not None else None for c in self._wanted()]
            rec.text, rec.label, rec.group = vals[0], vals[1], vals[2]
            rec.extras = tuple(v if v is not None else "" for v in vals[3:])
            yield self._check(rec)


def skip_error(source: Source, rec: Record) -> DataError:
    """The --strict error for a skipped record: file, line, column, reason and fix."""
    where = f"{source.path} line {rec.line}"
    if rec.column:
        where += f", column {rec.column!r}"
    return DataError(
        f"{where}: {rec.skip.replace('_', ' ')} ({rec.detail}). Fix: "
        f"{fix_for(rec.skip, source.format)}; "
        "or drop --strict to skip such rows (they are counted)."
    )


def _first_row(path: str, delimiter: str) -> list[str]:
    lines = _DecodedLines(_byte_lines(path))
    for fields in csv.reader(lines, delimiter=delimiter, quotechar='"'):
        if not _is_blank(fields):
            return fields
    return []


def _first_json_keys(path: str, wanted: Sequence[str] = (), max_objects: int = 1000) -> list:
    """Keys of the first JSON objects, in first-seen order: up to `max_objects` of them,
    or fewer once every `wanted` key is seen (a line may leave a key out)."""
    lines = _DecodedLines(_byte_lines(path))
    keys: dict = {}
    objects = 0
    for line in lines:
        if not line.strip() or lines.bad:
            lines.bad.clear()
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict):
            keys.update(dict.fromkeys(obj))
            objects += 1
            if objects >= max_objects or all(c in keys for c in wanted):
                break
    return list(keys)


def normalize_delimiter(delimiter: Optional[str]) -> Optional[str]:
    """``tab`` (or ``TAB``, or backslash-t as typed in a shell) means TAB."""
    return "\t" if delimiter in ("\\t", "tab", "TAB") else delimiter


# Files that are not text at all, by their first bytes: (magic, what it is, the fix).
_NOT_TEXT = (
    ((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE), "UTF-16 text (Excel's 'Unicode Text' "
     "saves this)", "re-save it as UTF-8 (e.g. Excel's 'CSV UTF-8')"),
    ((b"\x1f\x8b",), "gzip-compressed", "decompress it first (gunzip)"),
    ((b"PK\x03\x04",), "a ZIP archive (an .xlsx workbook?)",
     "unzip it, or export the sheet as CSV UTF-8"),
)


def _check_not_binary(path: str, head: bytes) -> None:
    for magics, what, fix in _NOT_TEXT:
        if head.startswith(magics):
            raise DataError(f"{path}: the file is {what}, not UTF-8 CSV/TSV/JSONL; {fix}")


def check_input(path: str) -> None:
    """Raise :class:`DataError` unless `path` is an existing file."""
    gf = _gfile()
    if not gf.exists(path):
        raise DataError(f"input file not found: {path}")
    if gf.isdir(path):
        raise DataError(f"input is a directory, expected a file: {path}")


def open_source(
    path: str,
    text_col: str = "text",
    label_col: Optional[str] = "label",
    group_col: Optional[str] = None,
    extra_cols: Sequence[str] = (),
    format: Optional[str] = None,
    delimiter: Optional[str] = None,
    header: Optional[bool] = None,
) -> Source:
    """Open `path`, detecting format/delimiter/header unless given; check the columns.

    ``header=None`` means: the first row is a header if it holds every requested
    column name; otherwise, if every requested column is a 0-based index, there is no
    header. Raises :class:`DataError` for a missing file or column (listing the
    columns found).
    """
    check_input(path)
    if format is not None and format not in FORMATS:
        raise DataError(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    head = _first_bytes(path)
    _check_not_binary(path, head)
    if b"\n" not in head and b"\r" in head.rstrip(b"\r"):
        raise DataError(
            f"{path}: lines end with CR alone (old Mac line endings), which reads as one "
            "line; re-save the file with LF or CRLF line endings"
        )
    fmt = format or detect_format(path, head)
    wanted = [c for c in (text_col, label_col, group_col, *extra_cols) if c is not None]
    if fmt == "jsonl":
        delimiter, has_header = None, True
        found = _first_json_keys(path, wanted)
        if not found and head.strip(codecs.BOM_UTF8 + b" \t\r\n"):
            raise DataError(
                f"{path}: no line is a JSON object, so no columns were found. JSONL holds one "
                "JSON object per line (a JSON array, or an object spread over several lines, "
                "must be rewritten that way); or pass --format csv/tsv if the file is not JSON"
            )
    else:
        if delimiter is None:
            # the header: the first line that is not blank (blank lines are not rows)
            lines = head.removeprefix(codecs.BOM_UTF8).split(b"\n")
            first_line = next((ln for ln in lines if ln.strip()), b"").decode(
                "utf-8", errors="replace")
            delimiter = detect_delimiter(first_line, fmt)
        else:
            delimiter = normalize_delimiter(delimiter)
        if len(delimiter) != 1:
            raise DataError(f"--delimiter {delimiter!r}: expected one character (or 'tab')")
        row = [f.strip() for f in _first_row(path, delimiter)]
        if header is None:
            header = not (
                not all(c in row for c in wanted)
                and all(c.isdigit() and int(c) < len(row) for c in wanted)
            )
        has_header = bool(header)
        found = row if has_header else [str(i) for i in range(len(row))]
    missing = [c for c in wanted if c not in found]
    if missing:
        hint = (
            "; if the file has no header row, pass --no-header and name columns by "
            "0-based index"
            if fmt != "jsonl" and has_header
            else ""
        )
        shown = ", ".join(repr(c) for c in found) or "(none: is the file empty?)"
        raise DataError(
            f"{path}: column(s) {', '.join(repr(c) for c in missing)} not found; "
            f"columns found: {shown}. Pass --text-col/--label-col/--group-col/--extra-cols "
            f"with names from that list{hint}"
            + (f" (delimiter detected: {delimiter!r}; override with --delimiter)" if delimiter else "")
        )
    return Source(
        path, fmt, delimiter, has_header, found,
        (text_col, label_col, group_col, tuple(extra_cols)),
    )
