"""`kt-pipeline evaluate`: metrics, confusion matrix PNG and results.json for a model dir."""

from __future__ import annotations

import argparse

NAME = "evaluate"
HELP = "evaluate a trained model dir on a cache split (accuracy, macro P/R/F1, ROC-AUC, confusion matrix)"
EXAMPLES = """
  kt-pipeline evaluate --model-dir runs/demo
  kt-pipeline evaluate --model-dir runs/demo --split validation
  kt-pipeline evaluate --model-dir gs://BUCKET/runs/x --cache gs://BUCKET/tfrecords/other
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", required=True, help="model dir written by `train`")
    parser.add_argument("--cache", dest="cache_dir", default=None,
                        help="TFRecord cache (default: the one the model trained on)")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"])
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--max-seq-length", type=int, default=None,
                        help="default: the training max_seq_length")


def run(args) -> int:
    from kt_pipeline import evaluate

    res = evaluate.evaluate(args.model_dir, args.cache_dir, args.split,
                            args.batch_size, args.max_seq_length)
    print(evaluate.format_table(res))
    print(f"wrote {args.model_dir.rstrip('/')}/{evaluate.RESULTS_FILE} and {res['confusion_matrix_png']}")
    return 0
