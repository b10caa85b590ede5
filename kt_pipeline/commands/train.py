"""`kt-pipeline train`: fine-tune a classifier on a TFRecord cache into a model dir.

Settings are applied in this order: TrainConfig defaults, ``--config file.yaml``,
the flags below, then ``--set key=value`` (any TrainConfig field).
"""

from __future__ import annotations

import argparse
import sys

NAME = "train"
HELP = "fine-tune a BERT-family classifier on a TFRecord cache (resumable, local or gs://)"
EXAMPLES = """
  kt-pipeline train --cache tfrecords/demo --model-dir runs/demo
  kt-pipeline train --cache tfrecords/sst2 --model-dir runs/sst2 --epochs 2 \\
      --batch-size 32 --max-seq-length 64 --set learning_rate=5e-5 --set pooling=mean
  kt-pipeline train --config train.yaml --model-dir gs://BUCKET/runs/x --strategy tpu
  # a killed run continues at its last finished epoch when started again the same way
"""

# flag -> (TrainConfig field, type, help)
FLAGS = {
    "--preset": ("preset", str, "encoder: KerasHub preset name or checkpoint dir (default: the cache's)"),
    "--epochs": ("epochs", int, "number of epochs"),
    "--batch-size": ("batch_size", int, "global batch size"),
    "--learning-rate": ("learning_rate", float, "peak learning rate (AdamW)"),
    "--max-seq-length": ("max_seq_length", int, "truncate token ids to this length"),
    "--padding": ("padding", str, "bucket | dynamic | fixed"),
    "--pooling": ("pooling", str, "cls | mean"),
    "--warmup-fraction": ("warmup_fraction", float, "warmup as a fraction of all steps"),
    "--max-train-examples": ("max_train_examples", int, "use only the first N train examples"),
    "--strategy": ("strategy", str, "auto | cpu | gpu | mirrored | multiworker | tpu"),
    "--seed": ("seed", int, "random seed"),
}
SWITCHES = {
    "--freeze-body": ("freeze_body", "train only the classification head"),
    "--mixed-precision": ("mixed_precision", "bfloat16 compute (TPU, recent GPUs)"),
    "--jit-compile": ("jit_compile", "compile the train step with XLA"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", dest="cache_dir", help="TFRecord cache dir (from build-tfrecords)")
    parser.add_argument("--model-dir", dest="model_dir", help="output dir (local, gs://)")
    parser.add_argument("--config", help="YAML file with TrainConfig fields")
    for flag, (field, typ, text) in FLAGS.items():
        parser.add_argument(flag, dest=field, type=typ, default=None, help=text)
    for flag, (field, text) in SWITCHES.items():
        parser.add_argument(flag, dest=field, action="store_true", default=None, help=text)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="any TrainConfig field, repeatable")


def resolve_config(args):
    """TrainConfig from defaults, --config, flags and --set (in that order)."""
    from kt_pipeline.config import TrainConfig, apply_overrides, from_dict, load_yaml
    from kt_pipeline.errors import ConfigError

    cfg = from_dict(TrainConfig, load_yaml(args.config), source=args.config) if args.config else TrainConfig()
    fields = ["cache_dir", "model_dir"] + [f for f, *_ in FLAGS.values()] + [f for f, _ in SWITCHES.values()]
    for field in fields:
        value = getattr(args, field, None)
        if value is not None:
            setattr(cfg, field, value)
    cfg = apply_overrides(cfg, args.overrides)
    given = {item.split("=", 1)[0].strip() for item in args.overrides}
    if not args.config and args.cache_dir is None and "cache_dir" not in given:
        raise ConfigError("--cache is required (or give cache_dir in --config)")
    if not args.config and args.model_dir is None and "model_dir" not in given:
        raise ConfigError("--model-dir is required (or give model_dir in --config)")
    return cfg


def run(args) -> int:
    from kt_pipeline import training

    cfg = resolve_config(args)
    summary = training.train(cfg)
    best = summary.get("best") or {}
    monitor = summary["monitor"]
    print(
        f"trained {summary['epochs_run_this_time']} epoch(s) in {summary['seconds']}s; "
        f"best {monitor}={best.get(monitor, float('nan')):.4f} (epoch {best.get('epoch', 0) + 1}); "
        f"model dir {cfg.model_dir}",
        file=sys.stdout,
    )
    return 0
