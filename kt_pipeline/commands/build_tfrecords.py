"""`kt-pipeline build-tfrecords`: tokenize a CSV/TSV/JSONL file once into split TFRecords.

Example:

    kt-pipeline build-tfrecords --input ../shared/data/sst2/train.tsv \\
        --text-col sentence --label-col label --output tfrecords/sst2
"""

from __future__ import annotations

import argparse
import sys

NAME = "build-tfrecords"
HELP = "Tokenize a CSV/TSV/JSONL file once into train/validation/test TFRecord shards."
EXAMPLES = """
  kt-pipeline build-tfrecords --input ../shared/data/sst2/train.tsv \\
      --text-col sentence --label-col label --output tfrecords/sst2
  kt-pipeline build-tfrecords --input ../shared/data/nsmc/ratings_train.txt \\
      --text-col document --label-col label
  kt-pipeline build-tfrecords --input reviews.csv --labels negative,positive --strict
  kt-pipeline build-tfrecords --input quotes.jsonl --task clustering \\
      --text-col quote --label-col speaker --group-col book --ratios 0.6,0.2,0.2
  kt-pipeline build-tfrecords --input gs://bucket/train.csv --output gs://bucket/cache
"""


def _csv_list(value: str) -> list:
    return [v.strip() for v in value.split(",") if v.strip()]


def _ratios(value: str) -> tuple:
    try:
        r = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected e.g. 0.8,0.1,0.1") from None
    if len(r) != 3:
        raise argparse.ArgumentTypeError(f"{value!r}: expected three numbers, e.g. 0.8,0.1,0.1")
    return r


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="CSV, TSV or JSONL file (local or gs://)")
    p.add_argument("--output", default=None,
                   help="cache directory (default: tfrecords/<input stem>)")
    p.add_argument("--text-col", default="text", help="text column (default: text)")
    p.add_argument("--label-col", default="label",
                   help="label column (default: label; 'none' for no labels with --task clustering)")
    p.add_argument("--group-col", default=None,
                   help="group column (e.g. book): no group spans two splits")
    p.add_argument("--extra-cols", type=_csv_list, default=[],
                   help="comma-separated extra columns stored as x_<col> strings")
    p.add_argument("--labels", type=_csv_list, default=None,
                   help="declared label set in index order, e.g. negative,positive "
                        "(default: inferred; rows with other labels are skipped)")
    p.add_argument("--task", choices=["classification", "clustering"], default="classification",
                   help="clustering: grouped split by --group-col, no stratification")
    p.add_argument("--format", choices=["csv", "tsv", "jsonl"], default=None,
                   help="input format (default: detected from extension/content)")
    p.add_argument("--delimiter", default=None,
                   help="field delimiter, e.g. ',' or 'tab' (default: detected)")
    hdr = p.add_mutually_exclusive_group()
    hdr.add_argument("--header", dest="header", action="store_true", default=None,
                     help="the first row is a header")
    hdr.add_argument("--no-header", dest="header", action="store_false",
                     help="no header row: name columns by 0-based index (--text-col 1)")
    p.add_argument("--ratios", type=_ratios, default=(0.8, 0.1, 0.1),
                   help="train,validation,test fractions (default: 0.8,0.1,0.1)")
    p.add_argument("--seed", type=int, default=0, help="split/shard shuffle seed (default: 0)")
    p.add_argument("--max-length", type=int, default=512,
                   help="stored token length; serves any max_seq_length <= it (default: 512)")
    p.add_argument("--preset", default=None,
                   help="encoder preset whose tokenizer to use (default: packaged MiniLM)")
    p.add_argument("--strict", action="store_true",
                   help="any row that would be skipped is an error naming file/line/column")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--no-rebuild", action="store_true",
                      help="fail (saying what differs) instead of rebuilding a stale cache")
    mode.add_argument("--force", action="store_true", help="rebuild even if the cache matches")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def run(args) -> int:
    from kt_pipeline import cache

    label_col = None if (args.label_col or "").lower() in ("", "none") else args.label_col
    m = cache.ensure_cache(
        args.input,
        args.output,
        text_col=args.text_col,
        label_col=label_col,
        group_col=args.group_col,
        extra_cols=tuple(args.extra_cols),
        labels=tuple(args.labels) if args.labels else None,
        task=args.task,
        format=args.format,
        delimiter=args.delimiter,
        header=args.header,
        ratios=args.ratios,
        seed=args.seed,
        max_length=args.max_length,
        strict=args.strict,
        preset=args.preset,
        force=args.force,
        rebuild=not args.no_rebuild,
        progress=not args.quiet,
    )
    print(cache.format_summary(m), file=sys.stdout)
    return 0
