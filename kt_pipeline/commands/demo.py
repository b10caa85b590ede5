"""`kt-pipeline demo`: the whole product on the bundled sample, offline, on a laptop CPU.

Builds the token-id cache from ``kt_pipeline/data/sample_reviews.csv`` (400 reviews)
with the packaged all-MiniLM-L6-v2, runs a small Hyperband search
(``tuning/demo.yaml``), retrains and exports the best configuration as a SavedModel
that takes raw strings, and classifies a few sentences with it. Running it again
continues (or reuses) the earlier run.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

NAME = "demo"
HELP = "end-to-end demo: cache the sample reviews, tune (Hyperband), export the best, predict"
EXAMPLES = """
  kt-pipeline demo                       # what `make demo` runs
  kt-pipeline demo --restart             # forget the earlier search
  kt-pipeline demo --set tuner.max_epochs=2 --set space.batch_size=[32]
"""

PACKAGE = pathlib.Path(__file__).resolve().parents[1]
SAMPLE = PACKAGE / "data" / "sample_reviews.csv"
# inside the package, so a plain (not editable) install has it too; tuning/demo.yaml
# in a checkout is a link to it
DEMO_CONFIG = PACKAGE / "data" / "demo.yaml"
EXAMPLE_TEXTS = [
    "An absolute joy from start to finish. Highly recommended.",
    "The plot is painfully boring and the ending made no sense.",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None,
                        help=f"search config (default: {DEMO_CONFIG.relative_to(PACKAGE.parent)})")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key, e.g. tuner.max_epochs=2")
    parser.add_argument("--restart", action="store_true", help="start the search over")
    parser.add_argument("--cache-only", action="store_true",
                        help="only build the cache and print its summary")


def run(args) -> int:
    from kt_pipeline.errors import ConfigError
    from kt_pipeline.search_config import load_config

    config = args.config or str(DEMO_CONFIG)
    if not pathlib.Path(config).exists() and "://" not in config:
        raise ConfigError(f"demo config not found: {config}; pass --config with a search "
                          f"config YAML (the packaged one: {DEMO_CONFIG})")
    # The bundled sample wherever the package is installed (the YAML path is relative).
    overrides = [f"data.input={SAMPLE}"] if args.config is None else []
    cfg = load_config(config, overrides + list(args.overrides))
    started = time.time()
    if args.cache_only:
        from kt_pipeline import cache

        from kt_pipeline.tuning import prepare_cache

        print(cache.format_summary(prepare_cache(cfg, verbose=False)))
        return 0

    from kt_pipeline import export, tuning, tuning_results

    print(f"demo: step 1/4 cache + step 2/4 search ({cfg.tuner.type}, max {cfg.tuner.max_epochs} "
          f"epochs) in {cfg.search_dir}", file=sys.stderr)
    results = tuning.run_search(cfg, restart=args.restart)
    print(tuning_results.format_summary(results))
    print("demo: step 3/4 retrain + export the best configuration", file=sys.stderr)
    out = tuning.export_best(cfg, results["best"])
    print(f"best model: {out['model_dir']}\nSavedModel: {out['export_dir']}")
    print("demo: step 4/4 predict with the SavedModel", file=sys.stderr)
    served = export.load_exported(out["export_dir"])
    pred = served.predict(EXAMPLE_TEXTS)
    for text, label, probs in zip(EXAMPLE_TEXTS, pred["label"], pred["probabilities"]):
        print(f"  {label:>10} ({max(probs):.2f})  {text}")
    print(f"demo finished in {time.time() - started:.0f}s. TensorBoard (HParams): "
          f"tensorboard --logdir {cfg.search_dir}/logs")
    return 0
