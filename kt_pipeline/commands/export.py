"""`kt-pipeline export`: write a SavedModel that takes raw strings (see kt_pipeline.export)."""

from __future__ import annotations

import argparse

NAME = "export"
HELP = "export a trained model dir as a SavedModel that takes raw strings (tokenizer inside)"
EXAMPLES = """
  kt-pipeline export --model-dir runs/demo                 # writes runs/demo/export
  kt-pipeline export --model-dir runs/x --output gs://BUCKET/serving/x/1
  kt-pipeline predict runs/demo "a fine film" "a waste of time"
  # serve it from any process with only TensorFlow + TensorFlow Text:
  python -c 'import tensorflow as tf, tensorflow_text; m = tf.saved_model.load("runs/demo/export"); print(m.signatures["serving_default"](text=tf.constant(["a fine film"])))'
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", required=True,
                        help="model dir written by `train` (best.keras, labels.json, config.json)")
    parser.add_argument("--output", default=None,
                        help="export dir, local or gs:// (default: MODEL_DIR/export); an "
                             "earlier export there is replaced")
    parser.add_argument("--max-seq-length", type=int, default=None,
                        help="truncate texts to this many tokens (default: the training value)")
    parser.add_argument("--preset", default=None,
                        help="encoder whose tokenizer to embed (default: the one trained)")


def run(args) -> int:
    from kt_pipeline import export

    out = export.export_model_dir(args.model_dir, args.output, args.max_seq_length, args.preset)
    info = export.read_export_info(out)
    print(f"wrote {out}")
    print("  signature serving_default: text (string [batch]) -> probabilities, label_id, label")
    print(f"  labels: {', '.join(info['labels'])}; max_seq_length {info['max_seq_length']}")
    print(f"  try: kt-pipeline predict {out} \"some text\"")
    return 0
