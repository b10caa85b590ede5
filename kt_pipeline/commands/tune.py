"""`kt-pipeline tune`: search hyperparameters with keras-tuner from a YAML config.

Settings are applied in this order: the defaults, ``--config file.yaml``, the flags
below, then ``--set section.key=value`` (e.g. ``tuner.max_trials=4``,
``space.learning_rate.max=1e-4``). ``task: speaker_clustering`` (``tuning/pdnc.yaml``)
tunes the speaker model instead, with validation ARI as the objective.
"""

from __future__ import annotations

import argparse
import sys

NAME = "tune"
HELP = "search hyperparameters (Hyperband / Bayesian / random) with keras-tuner; resumable"
EXAMPLES = """
  kt-pipeline tune --config tuning/demo.yaml
  kt-pipeline tune --config tuning/sst2.yaml --tuner random --max-trials 8 \\
      --set space.learning_rate.max=1e-4 --set space.batch_size=[16,32]
  kt-pipeline tune --config tuning/demo.yaml --export-best     # retrain best + SavedModel
  kt-pipeline tune --config tuning/demo.yaml --restart         # forget earlier trials
  # speaker clustering (objective val_ari; fixed settings under cluster:)
  kt-pipeline tune --config tuning/pdnc.yaml --max-trials 4 --set cluster.steps=100 \\
      --set space.window=[0,12]
  # several machines (same --search-dir, e.g. gs://, and the same config):
  kt-pipeline tune --config tuning/sst2.yaml --role chief --oracle-address 10.0.0.2:8000
  kt-pipeline tune --config tuning/sst2.yaml --role worker --oracle-address 10.0.0.2:8000 \\
      --tuner-id worker0
"""

# flag -> (dotted config key, type, help)
FLAGS = {
    "--search-dir": ("search_dir", str, "where trials, logs and results go (local or gs://)"),
    "--preset": ("preset", str, "encoder: KerasHub preset name or checkpoint dir"),
    "--input": ("data.input", str, "CSV/TSV/JSONL file to build the cache from (speaker "
                "task: the PDNC folder or examples CSV, cluster.data)"),
    "--cache": ("data.cache_dir", str, "cache dir (built from --input, or an existing one)"),
    "--tuner": ("tuner.type", str, "hyperband | bayesian | random"),
    "--max-trials": ("tuner.max_trials", int, "trials for random/bayesian"),
    "--max-epochs": ("tuner.max_epochs", int, "epochs per trial (Hyperband: the most)"),
    "--objective": ("tuner.objective", str,
                    "metric to optimise (default val_accuracy; speaker task: val_ari)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="search config YAML (see tuning/*.yaml)")
    for flag, (key, typ, text) in FLAGS.items():
        parser.add_argument(flag, dest=key.replace(".", "__"), type=typ, default=None, help=text)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="any config key, e.g. space.dropout=0.1")
    parser.add_argument("--restart", action="store_true",
                        help="start the search over (default: continue an earlier one)")
    parser.add_argument("--export-best", action="store_true",
                        help="retrain the best configuration and export a SavedModel")
    parser.add_argument("--role", choices=["chief", "worker"], default=None,
                        help="parallel search: the chief serves the oracle, workers run trials")
    parser.add_argument("--oracle-address", default=None, metavar="HOST:PORT",
                        help="the chief's address (with --role)")
    parser.add_argument("--tuner-id", default=None, help="unique worker id (--role worker)")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")


def resolve_config(args):
    """SearchConfig from --config, the flags, then --set."""
    from kt_pipeline.search_config import load_config

    overrides = []
    for flag, (key, _, _) in FLAGS.items():
        value = getattr(args, key.replace(".", "__"), None)
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.quiet:
        overrides.append("tuner.verbose=0")
    return load_config(args.config, overrides + list(args.overrides))


def run(args) -> int:
    from kt_pipeline import tuning, tuning_results

    tuning.configure_distribution(args.role, args.oracle_address, args.tuner_id)
    if args.role is None and (args.oracle_address or args.tuner_id):
        from kt_pipeline.errors import ConfigError

        raise ConfigError("--oracle-address/--tuner-id need --role chief or --role worker")
    cfg = resolve_config(args)
    from kt_pipeline.search_config import config_warnings

    for text in config_warnings(cfg):
        print(f"warning: {text}", file=sys.stderr)
    if args.export_best:
        tuning.check_exportable(cfg)
    results = tuning.run_search(cfg, restart=args.restart)
    if results.get("role") == "worker":
        print(f"worker {results['tuner_id']}: no trials left ({results['seconds']:.0f}s)")
        return 0
    print(tuning_results.format_summary(results))
    if args.export_best:
        out = tuning.export_best(cfg, results["best"])
        state = " (reused)" if out["reused"] else ""
        print(f"best model: {out['model_dir']}; SavedModel: {out['export_dir']}{state}")
    return 0
