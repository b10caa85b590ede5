"""`kt-pipeline predict`: label texts with an exported SavedModel.

Loading the model needs only TensorFlow and TensorFlow Text (no Keras/KerasHub):
the tokenizer runs inside the SavedModel.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys

from kt_pipeline.errors import DataError

NAME = "predict"
HELP = "label texts with an exported SavedModel (or a model dir containing export/)"
EXAMPLES = """
  kt-pipeline predict runs/demo/export "a fine film" "a waste of time"
  kt-pipeline predict runs/demo --input reviews.txt            # one text per line
  kt-pipeline predict runs/demo --input reviews.csv --text-col review --json > out.jsonl
  echo "a fine film" | kt-pipeline predict runs/demo --input -
"""

MAX_TEXT_WIDTH = 60
MAX_PROB_COLUMNS = 6  # more labels than this: show only the predicted label's probability


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help="export dir (holding saved_model.pb) or a model dir with export/")
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="texts to label")
    parser.add_argument("--input", default=None,
                        help="file of texts: one per line, or CSV/TSV with --text-col ('-' = stdin)")
    parser.add_argument("--text-col", default=None,
                        help="column holding the text when --input is CSV/TSV (header row needed)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per text instead of a table")
    parser.add_argument("--batch-size", type=int, default=64)


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        raise DataError(f"--input {path}: file not found")
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"--input {path}: line {line} is not UTF-8; re-save the file as UTF-8") from e


def read_texts(path: str, text_col: str | None = None) -> list[str]:
    """Texts from a file: one per non-blank line, or column ``text_col`` of a CSV/TSV.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "t.csv")
    >>> _ = open(p, "w").write('id,review\\n1,"good, really"\\n2,bad\\n')
    >>> read_texts(p, "review")
    ['good, really', 'bad']
    """
    text = _read(path)
    first = text.split("\n", 1)[0]
    delimiter = "\t" if path.endswith(".tsv") or first.count("\t") > first.count(",") else ","
    if text_col is None:
        if path.lower().endswith((".csv", ".tsv")):
            columns = next(csv.reader([first], delimiter=delimiter), [])
            raise DataError(
                f"--input {path} is a {path[-3:].upper()} file: pass --text-col with the "
                f"column holding the texts (header: {', '.join(columns) or 'none'})"
            )
        return [line.rstrip("\r") for line in text.split("\n") if line.strip()]
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    columns = reader.fieldnames or []
    if text_col not in columns:
        raise DataError(
            f"--input {path}: no column {text_col!r} in the header (columns: "
            f"{', '.join(columns) or 'none'}); pass --text-col with one of them"
        )
    texts = []
    for row in reader:
        value = row.get(text_col)
        if value is None:
            raise DataError(
                f"--input {path}: line {reader.line_num} has no value in column {text_col!r}; "
                "check the quoting and the number of fields"
            )
        texts.append(value)
    return texts


def _clip(text: str, width: int = MAX_TEXT_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(texts, result, labels) -> str:
    """A readable table: label, its probability, per-label probabilities, text."""
    probs = result["probabilities"]
    show_all = len(labels) <= MAX_PROB_COLUMNS
    header = ["#", "label", "prob"] + ([f"p({x})" for x in labels] if show_all else []) + ["text"]
    rows = []
    for i, text in enumerate(texts):
        p = probs[i]
        row = [str(i + 1), result["label"][i], f"{p[result['label_id'][i]]:.3f}"]
        if show_all:
            row += [f"{v:.3f}" for v in p]
        rows.append(row + [_clip(text)])
    widths = [max(len(r[c]) for r in [header] + rows) for c in range(len(header) - 1)]
    lines = []
    for r in [header] + rows:
        cells = [r[c].rjust(widths[c]) if c != 1 else r[c].ljust(widths[c])
                 for c in range(len(widths))]
        lines.append("  ".join(cells + [r[-1]]))
    return "\n".join(lines)


def json_lines(texts, result, labels) -> str:
    out = []
    for i, text in enumerate(texts):
        out.append(json.dumps({
            "text": text,
            "label": result["label"][i],
            "label_id": int(result["label_id"][i]),
            "probabilities": {lab: round(float(p), 6)
                              for lab, p in zip(labels, result["probabilities"][i])},
        }, ensure_ascii=False))
    return "\n".join(out)


def run(args) -> int:
    from kt_pipeline import export

    texts = list(args.texts)
    if args.input:
        texts += read_texts(args.input, args.text_col)
    elif args.text_col:
        raise DataError("--text-col needs --input FILE")
    if args.batch_size < 1:
        raise DataError(f"--batch-size {args.batch_size}: must be >= 1")
    if not texts:
        raise DataError('nothing to predict: pass texts (`predict MODEL "some text"`) or --input FILE')
    from kt_pipeline.progress import Progress

    served = export.load_exported(args.model)
    # more than one batch: count the texts on stderr (stdout holds the results)
    many = len(texts) > args.batch_size
    bar = Progress("predict", total=len(texts), unit="texts") if many else None
    result = served.predict(texts, batch_size=args.batch_size, progress=bar)
    if args.json:
        print(json_lines(texts, result, served.labels))
    else:
        print(format_table(texts, result, served.labels))
    return 0
